"""The S3 destination behind a misbehaving network path: the daemon talks to a real SeaweedFS server
through ``faultproxy.FaultProxy``, which answers 500/503, resets connections before and after the
request took effect, stalls past the daemon's request timeout and trickles bodies. Whatever the path
does, every acknowledged record must reach the bucket exactly once and no multipart upload may be
left behind.

The fault seed is printed; set ``SPILLWAY_FAULT_SEED`` to reuse one (the sequence of fault draws is
then the same; which request gets which draw still depends on timing).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import os
import threading
import time
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import ACCESS_KEY, REGION, SECRET_KEY, STREAM, Spillway
from faultproxy import FAULT_KINDS, FaultProxy
from test_s3 import bucket, bucket_contents, bucket_keys, firehose_client, open_uploads, s3, seaweed, store_env, write_config  # noqa: F401

REQUEST_TIMEOUT_S = 2
STALL_S = 4.0  # > REQUEST_TIMEOUT_S: the daemon gives up on a stalled request first
GRACE_S = 60
LOAD_S = 20.0
FAULT_RATE = 0.25
CLIENT_THREADS = 4
# Ingest caps (MiB/s). Uncompressed, the clients' own pace (~7 MiB/s) is the limit: delivery falls
# behind whenever a fault delays it, so objects fill up to the 8 MiB size hint and go up as multipart
# uploads. The debug build's gzip delivers ~3 MiB/s, so gzip ingest is held below that.
LOAD_MIB_S = {"none": 10.0, "gzip": 2.0}
BATCH_RECORDS = 250
# Peak RSS (VmHWM) of the debug daemon under this load, with its 8 MiB buffers and 5 MiB parts:
# measured 29.6-32.8 MiB over several runs (printed by the test; see it with -s or -rP). The bound
# is about twice that: room for allocator variance, not for a leak growing with the ingested volume.
RSS_BOUND_MIB = 64


def fault_seed() -> int:
    raw = os.environ.get("SPILLWAY_FAULT_SEED")
    return int(raw) if raw else time.time_ns() % 1_000_000_007


@pytest.fixture
def proxy(seaweed):
    seed = fault_seed()
    print(f"\nfault proxy seed {seed} (SPILLWAY_FAULT_SEED={seed} to reuse it)")
    with FaultProxy(seaweed.endpoint_url, seed=seed, stall_s=STALL_S) as p:
        yield p


def write_fault_config(workdir: Path, compression: str, buffering="{ size_mib: 8, interval_s: 1 }") -> Path:
    return write_config(workdir, shards=2, buffering=buffering, compression=compression,
                        extra="        part_mib: 5\n", grace=GRACE_S, request_timeout_s=REQUEST_TIMEOUT_S)


def start_daemon(workdir: Path, config: Path, proxy: FaultProxy) -> Spillway:
    """The daemon, reaching the store only through the proxy."""
    daemon = Spillway(workdir, config=config, env={"AWS_ENDPOINT_URL": proxy.url})
    daemon.start()
    return daemon


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def stop_daemon(daemon: Spillway, proxy: FaultProxy, timeout: float = GRACE_S + 10) -> float:
    """SIGTERM and wait for a clean exit (the drain may take up to the grace period); seconds taken."""
    return daemon.stop(timeout=timeout, context=f"proxy {proxy.counters()}")


class Load:
    """Client threads putting batches of unique, poorly compressible records until stopped, at
    ``mib_per_s`` in all: a rate the debug daemon delivers comfortably even through the faults, so
    the drain after SIGTERM stays short (unthrottled, ingest outruns gzip delivery several times).

    A record is acknowledged when its PutRecordBatch call returned and its entry has no ErrorCode;
    records of calls that failed outright are "uncertain" (they may or may not have been taken).
    """

    def __init__(self, daemon: Spillway, threads: int, tag: str, mib_per_s: float):
        self.daemon, self.tag = daemon, tag
        self.thread_bytes_per_s = mib_per_s * (1 << 20) / threads
        self.acked: list[bytes] = []
        self.uncertain: set[bytes] = set()
        self.rejected: list[bytes] = []
        self.errors: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(threads)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        for t in self.threads:
            t.join(90)
            assert not t.is_alive(), "a client thread is stuck in PutRecordBatch"

    def _run(self, c: int) -> None:
        fh = firehose_client(self.daemon)
        n = sent = 0
        began = time.monotonic()
        while not self.stopping.is_set():
            ahead = sent / self.thread_bytes_per_s - (time.monotonic() - began)
            if ahead > 0:
                self.stopping.wait(ahead)
                continue
            batch = []
            for _ in range(BATCH_RECORDS):
                pad = base64.b64encode(os.urandom(450)).decode()  # ~1/4 of it survives gzip
                batch.append(f'{{"t":"{self.tag}","c":{c},"n":{n},"pad":"{pad}"}}'.encode())
                n += 1
            try:
                sent += sum(map(len, batch))
                resp = fh.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in batch])
            except Exception as e:  # not acknowledged; may or may not be in the log
                with self.lock:
                    self.uncertain.update(batch)
                    self.errors[type(e).__name__] += 1
                time.sleep(0.2)
                continue
            with self.lock:
                for rec, entry in zip(batch, resp["RequestResponses"]):
                    if entry.get("ErrorCode"):
                        self.rejected.append(rec)
                        self.errors[entry["ErrorCode"]] += 1
                    else:
                        self.acked.append(rec)

    def count(self) -> int:
        with self.lock:
            return len(self.acked)


def check_exactly_once(s3, bucket: str, load: Load, proxy: FaultProxy, daemon: Spillway) -> int:
    """Every acknowledged record exactly once, nothing else but uncertain records at most once."""
    contents = bucket_contents(s3, bucket)
    where = collections.defaultdict(list)
    for key, rec in contents:
        where[rec].append(key)
    acked = set(load.acked)
    assert len(acked) == len(load.acked), "the load generator produced a duplicate record"
    dups = {r: keys for r, keys in where.items() if len(keys) > 1}
    lost = [r for r in load.acked if r not in where]
    strangers = [r for r in where if r not in acked and r not in load.uncertain]
    problems = []
    if dups:
        problems.append(
            f"{len(dups)} records duplicated, e.g. "
            + "; ".join(f"{r[:40]!r} in {keys}" for r, keys in list(dups.items())[:3])
        )
    if lost:
        problems.append(f"{len(lost)} of {len(load.acked)} acknowledged records lost, e.g. "
                        + ", ".join(repr(r[:40]) for r in lost[:3]))
    if strangers:
        problems.append(f"{len(strangers)} records never acknowledged nor sent, e.g. {strangers[0][:60]!r}")
    assert not problems, (
        "exactly-once violated under faults:\n  " + "\n  ".join(problems)
        + f"\nobjects: {len(bucket_keys(s3, bucket))}, records in the bucket: {len(contents)}"
        + f"\nproxy: {proxy.counters()}\n--- daemon stderr ---\n{daemon.stderr_tail()}"
    )
    return len(contents)


def assert_no_uploads_left(s3, bucket: str, proxy: FaultProxy, daemon: Spillway) -> None:
    """No multipart upload left open; if some are, show what the proxy did to their keys' requests."""
    uploads = open_uploads(s3, bucket)
    if not uploads:
        return
    lines = []
    for key in sorted({u["Key"] for u in uploads}):
        ids = [u["UploadId"] for u in uploads if u["Key"] == key]
        parts = [len(s3.list_parts(Bucket=bucket, Key=key, UploadId=i).get("Parts", [])) for i in ids]
        lines.append(f"{key}: open upload(s) {ids} holding {parts} part(s)")
        for t, op, target, kind in proxy.events_for(key.rsplit("/", 1)[-1]):
            if op != "UploadPart" or kind != "ok":
                lines.append(f"    t={t:7.3f}s {op:24} {kind:12} {target.split(key, 1)[-1]}")
    pytest.fail(
        f"{len(uploads)} multipart upload(s) left behind (seed {proxy.seed}):\n"
        + "\n".join(lines)
        + f"\nproxy: {proxy.counters()}\n--- daemon stderr ---\n{daemon.stderr_tail()}",
        pytrace=False,
    )


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_fault_kind_under_load_loses_and_duplicates_nothing(tmp_path, store_env, s3, proxy, compression):
    began = time.monotonic()
    bucket = store_env["bucket"]
    daemon = start_daemon(tmp_path, write_fault_config(tmp_path, compression), proxy)
    try:
        proxy.kinds = set(FAULT_KINDS)
        proxy.fault_rate = FAULT_RATE
        with Load(daemon, CLIENT_THREADS, f"faults-{compression}", LOAD_MIB_S[compression]) as load:
            time.sleep(LOAD_S)
            # Faults are drawn at random per request: keep the load on until every kind has come
            # up (a slow run may make few requests), within a bound.
            deadline = time.monotonic() + 2 * LOAD_S
            while (time.monotonic() < deadline
                   and any(not proxy.counters()["injected"].get(k) for k in FAULT_KINDS)):
                time.sleep(0.5)
        proxy.fault_rate = 0
        load_s = time.monotonic() - began
        rss = peak_rss_mib(daemon.proc.pid)
        drain_s = stop_daemon(daemon, proxy)
        counters = proxy.counters()
        mib = sum(map(len, load.acked)) / (1 << 20)
        print(f"\n[{compression}] acknowledged {len(load.acked)} records ({mib:.1f} MiB) in {load_s:.1f}s, "
              f"client errors {dict(load.errors)}; drain after SIGTERM {drain_s:.1f}s; "
              f"peak RSS (VmHWM) {rss:.1f} MiB")
        print(f"[{compression}] proxy: {counters}")

        assert load.acked, f"nothing acknowledged; client errors {dict(load.errors)}"
        missing = [k for k in FAULT_KINDS if not counters["injected"].get(k)]
        assert not missing, f"fault kinds never injected: {missing}; proxy {counters}"
        assert rss < RSS_BOUND_MIB, f"daemon peak RSS {rss:.1f} MiB >= {RSS_BOUND_MIB} MiB"
        n = check_exactly_once(s3, bucket, load, proxy, daemon)
        total = time.monotonic() - began
        print(f"[{compression}] {n} records in the bucket, exactly once; test body {total:.1f}s")
        assert total < 90, f"the test took {total:.0f}s"
        assert_no_uploads_left(s3, bucket, proxy, daemon)
    finally:
        daemon.kill()


def test_unreachable_store_heals_and_everything_arrives_once(tmp_path, store_env, s3, proxy):
    began = time.monotonic()
    bucket = store_env["bucket"]
    daemon = start_daemon(tmp_path, write_fault_config(tmp_path, "gzip"), proxy)
    try:
        with Load(daemon, 2, "outage", LOAD_MIB_S["gzip"]) as load:
            time.sleep(1)  # some objects delivered normally first
            proxy.kinds = {"reset_before"}
            proxy.fault_rate = 1.0
            outage_began = load.count()
            time.sleep(5)
            acked_during = load.count() - outage_began
            refused = proxy.counters()["injected"].get("reset_before", 0)
            proxy.fault_rate = 0
            time.sleep(2)
        assert refused > 0, f"the outage refused nothing: {proxy.counters()}"
        assert acked_during > 0, "ingest must go on while the store is unreachable"
        drain_s = stop_daemon(daemon, proxy)
        n = check_exactly_once(s3, bucket, load, proxy, daemon)
        assert_no_uploads_left(s3, bucket, proxy, daemon)
        print(f"\noutage: {refused} requests refused, {acked_during} records acknowledged during the outage, "
              f"{n} in the bucket; drain {drain_s:.1f}s; test body {time.monotonic() - began:.1f}s")
    finally:
        daemon.kill()


# -- the proxy itself --------------------------------------------------------------------------------


def test_fault_proxy_forwards_injects_and_rejects(seaweed, bucket):
    """Each fault kind as a plain boto3 client (no retries) sees it, and what reached the store."""
    with FaultProxy(seaweed.endpoint_url, seed=7, stall_s=2.5, slow_chunk=64, slow_interval=0.05) as proxy:
        c = boto3.client(
            "s3", endpoint_url=proxy.url, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1},
                          read_timeout=1, connect_timeout=2),
        )

        def exists(key):
            try:
                c.head_object(Bucket=bucket, Key=key)
                return True
            except c.exceptions.ClientError:
                return False

        # Keep-alive, signatures intact, HEAD and GET relayed.
        for i in range(5):
            c.put_object(Bucket=bucket, Key=f"plain/{i}", Body=b"x" * 1000)
        assert c.get_object(Bucket=bucket, Key="plain/3")["Body"].read() == b"x" * 1000
        assert c.head_object(Bucket=bucket, Key="plain/3")["ContentLength"] == 1000

        body = os.urandom(1 << 20)
        md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        expected = {  # kind -> (error the client sees, whether the object was written)
            "error_500": ("InternalError", False),
            "slowdown_503": ("SlowDown", False),
            "reset_before": ("ConnectionClosedError", False),
            "reset_after": ("ConnectionClosedError", True),
            "stall": ("ReadTimeoutError", False),
            "slow_body": (None, True),
        }
        for kind, (error, written) in expected.items():
            proxy.kinds, proxy.fault_rate = {kind}, 1.0
            try:
                c.put_object(Bucket=bucket, Key=f"fault/{kind}", Body=body, ContentMD5=md5)
                seen = None
            except c.exceptions.ClientError as e:
                seen = e.response["Error"]["Code"]
            except Exception as e:
                seen = type(e).__name__
            proxy.fault_rate = 0
            assert (seen, exists(f"fault/{kind}")) == (error, written), kind
            assert proxy.injected[kind] == 1

        # Permanent rejections, before any random fault.
        rule = proxy.reject(path_contains="/rejected/", method="PUT", status=400, code="InvalidArgument")
        with pytest.raises(c.exceptions.ClientError) as e:
            c.put_object(Bucket=bucket, Key="rejected/a", Body=b"r")
        assert e.value.response["Error"]["Code"] == "InvalidArgument"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert not exists("rejected/a")  # HEAD does not match the rule: forwarded
        c.put_object(Bucket=bucket, Key="accepted/a", Body=b"a")
        assert rule.hits == 1 and proxy.injected["reject"] == 1
        proxy.clear_rejections()
        c.put_object(Bucket=bucket, Key="rejected/a", Body=b"r")
        assert exists("rejected/a")
        assert proxy.upstream_errors == 0
