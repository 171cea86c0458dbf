"""Shared fixtures for the Spillway client test suite.

Every test gets its own freshly started daemon (``spillway`` fixture): a free
loopback port, fresh temporary data and lake directories, and the repository's
``config/local.yaml`` which reads ``SPILLWAY_LISTEN``, ``SPILLWAY_DATA_DIR`` and
``SPILLWAY_LAKE`` from the environment.

The binary is taken from ``$SPILLWAY_BIN`` (default: ``target/debug/spillway``
relative to the repository root; ``$SPILLWAY_CONFIG`` can likewise replace
``config/local.yaml``). A missing binary is a test failure, not a
skip: these tests exist to exercise it.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

STREAM = "events"
TARGET_PREFIX = "Firehose_20150804."
REGION = "us-east-1"
ACCESS_KEY = "AKIDSPILLWAYTEST0000"
SECRET_KEY = "spillway-test-secret-key-not-a-real-one"

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
START_ATTEMPTS = 3  # only retried when the chosen port was taken in between

MAX_RECORD_BYTES = 1_024_000
MAX_BATCH_RECORDS = 500
MAX_BATCH_BYTES = 4 * 1024 * 1024  # 4,194,304
MAX_BODY_BYTES = 8 * 1024 * 1024  # 8,388,608


def spillway_bin() -> Path:
    raw = os.environ.get("SPILLWAY_BIN", "target/debug/spillway")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def config_path() -> Path:
    """``config/local.yaml`` of the repo (``$SPILLWAY_CONFIG`` may point elsewhere)."""
    raw = os.environ.get("SPILLWAY_CONFIG", "config/local.yaml")
    path = Path(raw)
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, limit: int = 8000) -> str:
    try:
        data = path.read_bytes()
    except OSError as e:  # pragma: no cover - diagnostics only
        return f"<could not read {path}: {e}>"
    text = data[-limit:].decode("utf-8", errors="replace")
    return text if text.strip() else "<empty>"


def split_object(content: bytes, where: str) -> list[bytes]:
    """Split one newline-delimited object into its records.

    Each record is its bytes followed by b"\\n", so a non-empty object must
    end with b"\\n"; a 0-byte record is the line b"\\n" and comes back as b"".
    """
    if content == b"":
        return []
    assert content.endswith(b"\n"), (
        f"lake object {where} does not end with a newline "
        f"(last bytes: {content[-40:]!r}); every record must be followed by '\\n'"
    )
    return content[:-1].split(b"\n")


def _short(rec: bytes, limit: int = 60) -> str:
    if len(rec) <= limit:
        return repr(rec)
    return f"{rec[:limit]!r}... ({len(rec)} bytes)"


def assert_lake_holds(daemon: "Spillway", expected: list[bytes]) -> None:
    """After stop(): the lake holds exactly ``expected`` (count and multiset)."""
    actual = daemon.read_lake_records()
    want = collections.Counter(expected)
    got = collections.Counter(actual)
    missing = want - got
    extra = got - want
    problems = []
    if len(actual) != len(expected):
        problems.append(f"record count {len(actual)} != expected {len(expected)}")
    if missing:
        problems.append(
            f"{sum(missing.values())} expected record(s) missing from the lake, e.g. "
            + ", ".join(f"{_short(r)} x{n}" for r, n in list(missing.items())[:5])
        )
    if extra:
        problems.append(
            f"{sum(extra.values())} unexpected record(s) in the lake (partial write "
            f"of a rejected request? duplicate?), e.g. "
            + ", ".join(f"{_short(r)} x{n}" for r, n in list(extra.items())[:5])
        )
    assert not problems, (
        "lake contents differ from the accepted records:\n  "
        + "\n  ".join(problems)
        + f"\nobjects: {[p.as_posix() for p in daemon.lake_objects()]}"
    )


class Spillway:
    """A running daemon plus helpers to talk to it and to read its lake."""

    def __init__(self, workdir: Path, config: Path | None = None, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.config_override = config
        self.extra_env = dict(env or {})
        self.data_dir = workdir / "data"
        self.lake_dir = workdir / "lake"
        self.stderr_path = workdir / "spillway.stderr"
        self.stdout_path = workdir / "spillway.stdout"
        self.binary = spillway_bin()
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.returncode: int | None = None

    # -- lifecycle ---------------------------------------------------------

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        assert self.binary.is_file() and os.access(self.binary, os.X_OK), (
            f"spillway binary not found or not executable at {self.binary} "
            f"(set SPILLWAY_BIN or build target/debug/spillway)"
        )
        self.config = self.config_override or config_path()
        self.returncode = None
        assert self.config.is_file(), f"config file missing: {self.config}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lake_dir.mkdir(parents=True, exist_ok=True)

        last_error = ""
        for _attempt in range(START_ATTEMPTS):
            self.port = free_loopback_port()
            env = dict(os.environ)
            env.update(
                SPILLWAY_LISTEN=f"{self.host}:{self.port}",
                SPILLWAY_DATA_DIR=str(self.data_dir),
                SPILLWAY_LAKE=str(self.lake_dir),
            )
            env.update(self.extra_env)
            with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
                self.proc = subprocess.Popen(
                    [str(self.binary), "run", "--config", str(self.config)],
                    cwd=self.workdir,  # so any stray relative path stays in the temp dir
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            outcome = self._wait_ready()
            if outcome == "ready":
                return
            # The daemon exited before becoming ready.
            last_error = _tail(self.stderr_path)
            self.returncode = self.proc.returncode
            lowered = last_error.lower()
            if "in use" in lowered or "addrinuse" in lowered:
                continue  # someone grabbed the port between probe and bind; retry
            break
        pytest.fail(
            f"spillway exited with code {self.returncode} before becoming ready "
            f"on {self.endpoint}.\n--- stderr ---\n{last_error}",
            pytrace=False,
        )

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + READY_TIMEOUT_S
        last = "no attempt yet"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return "exited"
            conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
            try:
                conn.request("GET", "/healthz")
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    return "ready"
                last = f"GET /healthz returned {resp.status}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            finally:
                conn.close()
            time.sleep(0.05)
        self.kill()
        pytest.fail(
            f"spillway did not become ready on {self.endpoint} within "
            f"{READY_TIMEOUT_S:.0f}s (last probe: {last}).\n--- stderr ---\n"
            f"{_tail(self.stderr_path)}",
            pytrace=False,
        )

    def stop(self, timeout: float = STOP_TIMEOUT_S, context: str = "") -> float:
        """SIGTERM the daemon and require a clean exit (code 0) within ``timeout`` seconds;
        returns the seconds the drain took. ``context`` is added to failure messages."""
        if self.returncode is not None:
            return 0.0
        assert self.proc is not None, "daemon was never started"
        extra = f"; {context}" if context else ""
        if self.proc.poll() is not None:
            self.returncode = self.proc.returncode
            pytest.fail(
                f"spillway had already exited (code {self.returncode}) before stop(){extra}."
                f"\n--- stderr ---\n{_tail(self.stderr_path)}",
                pytrace=False,
            )
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(
                f"spillway did not exit within {timeout:.0f}s of SIGTERM{extra}."
                f"\n--- stderr ---\n{_tail(self.stderr_path)}",
                pytrace=False,
            )
        self.returncode = self.proc.returncode
        assert self.returncode == 0, (
            f"spillway exited with code {self.returncode} after SIGTERM, expected 0{extra}."
            f"\n--- stderr ---\n{_tail(self.stderr_path)}"
        )
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
        if self.proc is not None and self.returncode is None:
            self.returncode = self.proc.returncode

    def stderr_tail(self) -> str:
        return _tail(self.stderr_path)

    # -- lake --------------------------------------------------------------

    def lake_objects(self) -> list[Path]:
        """Delivered object files, relative to the lake, in sorted order.

        Any path with a component starting with '.' (temporary files such as
        ``.spillway-tmp/``) is not a delivered object and is skipped.
        """
        found = []
        for dirpath, dirnames, filenames in os.walk(self.lake_dir):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if name.startswith("."):
                    continue
                found.append(Path(dirpath, name).relative_to(self.lake_dir))
        return sorted(found, key=lambda p: p.as_posix())

    def read_lake_records(self) -> list[bytes]:
        """All records in the lake, objects in sorted path order, records in file order."""
        records: list[bytes] = []
        for rel in self.lake_objects():
            records.extend(split_object((self.lake_dir / rel).read_bytes(), rel.as_posix()))
        return records

    # -- raw HTTP ----------------------------------------------------------

    def raw_request(
        self,
        body: bytes,
        target: str | None,
        *,
        sign: bool = True,
        extra_headers: dict[str, str] | None = None,
        timeout: float = 60.0,
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``/`` over a fresh connection; return (status, body).

        The request is SigV4-signed with dummy credentials (as any AWS SDK
        would) unless ``sign`` is False. ``target`` None omits X-Amz-Target.
        """
        headers = {"Content-Type": "application/x-amz-json-1.1"}
        if target is not None:
            headers["X-Amz-Target"] = target
        if extra_headers:
            headers.update(extra_headers)
        if sign:
            headers = sigv4_headers(self.endpoint, body, headers)
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            send_error = None
            try:
                conn.request("POST", "/", body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError) as e:
                # The server may answer (e.g. 413) before reading a huge body;
                # the response can still be readable.
                send_error = e
            try:
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                raise AssertionError(
                    f"no HTTP response readable from spillway "
                    f"(send error: {send_error!r}; read error: {e!r}). "
                    f"--- stderr ---\n{self.stderr_tail()}"
                ) from e
            return resp.status, data
        finally:
            conn.close()

    def call(self, op: str, payload: dict) -> tuple[int, dict]:
        """Signed JSON call of a Firehose op; returns (status, decoded JSON body)."""
        status, data = self.raw_request(json.dumps(payload).encode(), TARGET_PREFIX + op)
        try:
            decoded = json.loads(data) if data else {}
        except ValueError:
            raise AssertionError(f"{op} returned non-JSON body (status {status}): {data[:300]!r}")
        return status, decoded

    def put_record_raw(self, data: bytes, stream: str = STREAM) -> tuple[int, dict]:
        return self.call(
            "PutRecord",
            {"DeliveryStreamName": stream, "Record": {"Data": base64.b64encode(data).decode()}},
        )


def run_validate(config: Path, workdir: Path) -> subprocess.CompletedProcess:
    """``spillway validate --config <config>`` with the variables configs interpolate set
    (``SPILLWAY_LISTEN``, ``SPILLWAY_DATA_DIR``, ``SPILLWAY_LAKE`` pointing into ``workdir``);
    returns the finished process (text output) for the caller to check."""
    env = dict(os.environ)
    env.update(
        SPILLWAY_LISTEN="127.0.0.1:0",
        SPILLWAY_DATA_DIR=str(workdir / "data"),
        SPILLWAY_LAKE=str(workdir / "lake"),
    )
    return subprocess.run(
        [str(spillway_bin()), "validate", "--config", str(config)],
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )


def sigv4_headers(endpoint: str, body: bytes, headers: dict[str, str]) -> dict[str, str]:
    """Return ``headers`` plus a SigV4 signature (service firehose) over ``body``."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=endpoint + "/", data=body, headers=dict(headers))
    SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "firehose", REGION).add_auth(req)
    return {k: v for k, v in req.headers.items()}


@pytest.fixture(autouse=True)
def aws_env(monkeypatch, tmp_path_factory):
    """Dummy credentials/region; keep host AWS config and endpoint overrides out."""
    cfg_dir = tmp_path_factory.mktemp("awscfg")
    (cfg_dir / "config").write_text("")
    (cfg_dir / "credentials").write_text("")
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg_dir / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(cfg_dir / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_PAGER", "")


@pytest.fixture
def spillway(tmp_path, aws_env):
    daemon = Spillway(tmp_path)
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.kill()


@pytest.fixture
def firehose(spillway):
    """A boto3 Firehose client for the fixture's daemon, with no client-side retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "firehose",
        endpoint_url=spillway.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(
            retries={"mode": "standard", "total_max_attempts": 1},
            connect_timeout=5,
            read_timeout=60,
        ),
    )
