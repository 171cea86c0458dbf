"""The S3 destination against a real S3-compatible server (SeaweedFS ``weed mini``, which checks
SigV4), with unmodified boto3 on both sides: Firehose puts in, S3 reads out.

Every test gets its own bucket on one server per module; the daemon reaches the store only through
the standard AWS environment (``AWS_ENDPOINT_URL``, keys, region), as ``config/s3.yaml`` documents.
"""

from __future__ import annotations

import collections
import gzip
import random
import threading
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from conftest import ACCESS_KEY, REGION, SECRET_KEY, STREAM, REPO_ROOT, Spillway
from seaweed import SeaweedS3


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory):
    with SeaweedS3(tmp_path_factory.mktemp("seaweed"), ACCESS_KEY, SECRET_KEY) as server:
        yield server


@pytest.fixture
def s3(seaweed):
    return boto3.client(
        "s3",
        endpoint_url=seaweed.endpoint_url,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(s3={"addressing_style": "path"}),
    )


@pytest.fixture
def bucket(s3):
    name = f"lake-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store_env(seaweed, bucket, monkeypatch):
    """The standard AWS environment pointing at the server, as a user would set it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", seaweed.endpoint_url)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("SPILLWAY_S3_BUCKET", bucket)
    return {"bucket": bucket}


def firehose_client(daemon: Spillway):
    return boto3.client(
        "firehose",
        endpoint_url=daemon.endpoint,
        region_name=REGION,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}, read_timeout=60),
    )


def write_config(tmp_path: Path, *, shards=1, buffering="{ size_mib: 64, interval_s: 900 }",
                 compression="none", extra="", grace=30, request_timeout_s=10) -> Path:
    path = tmp_path / "s3-test.yaml"
    path.write_text(f"""\
listen: ${{SPILLWAY_LISTEN}}
data_dir: ${{SPILLWAY_DATA_DIR}}
shutdown_grace_s: {grace}
delivery_streams:
  - name: {STREAM}
    source: {{ direct_put: {{ shards: {shards} }} }}
    processing: [ {{ append_delimiter: true }} ]
    destination:
      s3:
        url: s3://${{SPILLWAY_S3_BUCKET}}
        force_path_style: true
        buffering: {buffering}
        compression: {compression}
        request_timeout_s: {request_timeout_s}
{extra}""")
    return path


def bucket_contents(s3, bucket: str) -> list[tuple[str, bytes]]:
    """(key, record) for every newline-delimited record of every object (gzip decompressed)."""
    out = []
    for key in bucket_keys(s3, bucket):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        if key.endswith(".gz"):
            body = gzip.decompress(body)
        assert body.endswith(b"\n"), f"{key} does not end with a delimiter"
        out.extend((key, rec) for rec in body[:-1].split(b"\n"))
    return out


def bucket_records(s3, bucket: str) -> list[bytes]:
    """Every record in the bucket."""
    return [rec for _, rec in bucket_contents(s3, bucket)]


def bucket_keys(s3, bucket: str) -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return sorted(keys)


def open_uploads(s3, bucket: str) -> list[dict]:
    return s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def make_records(n: int, tag: str, size: int = 200) -> list[bytes]:
    return [f'{{"tag":"{tag}","i":{i},"pad":"{"x" * max(0, size - 40)}"}}'.encode() for i in range(n)]


def put_all(fh, records: list[bytes]) -> None:
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        resp = fh.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in chunk])
        assert resp["FailedPutCount"] == 0, resp


def assert_exactly(got: list[bytes], want: list[bytes]) -> None:
    g, w = collections.Counter(got), collections.Counter(want)
    missing, extra = w - g, g - w
    assert not missing and not extra and len(got) == len(want), (
        f"{len(got)} records in the bucket, {len(want)} expected; "
        f"{sum(missing.values())} missing, {sum(extra.values())} unexpected or duplicated"
    )


def wait_for(predicate, timeout: float, what: str, daemon: Spillway | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = f"\n--- daemon stderr ---\n{daemon.stderr_tail()}" if daemon else ""
    pytest.fail(f"timed out after {timeout}s waiting for {what}{tail}", pytrace=False)


def test_config_s3_yaml_round_trip(tmp_path, store_env, s3):
    """config/s3.yaml as shipped, configured only through the AWS environment."""
    daemon = Spillway(tmp_path, config=REPO_ROOT / "config" / "s3.yaml")
    daemon.start()
    try:
        records = make_records(500, "s3yaml")
        put_all(firehose_client(daemon), records)
        daemon.stop()
        keys = bucket_keys(s3, store_env["bucket"])
        assert keys and all(k.startswith("events/") and k.endswith(".gz") for k in keys), keys
        assert_exactly(bucket_records(s3, store_env["bucket"]), records)
    finally:
        daemon.kill()


def test_large_objects_are_multipart_uploads_of_several_parts(tmp_path, store_env, s3):
    bucket = store_env["bucket"]
    config = write_config(tmp_path, extra="        part_mib: 5\n")
    daemon = Spillway(tmp_path, config=config)
    daemon.start()
    try:
        records = make_records(24_000, "multipart", size=1000)  # ~24 MiB in one shard
        put_all(firehose_client(daemon), records)
        # Parts go up while the buffer is still open (the interval is 15 minutes away).
        wait_for(lambda: open_uploads(s3, bucket), 30, "a multipart upload in progress", daemon)
        daemon.stop()
        keys = bucket_keys(s3, bucket)
        assert len(keys) == 1, keys
        head = s3.head_object(Bucket=bucket, Key=keys[0])
        parts = int(head["ETag"].strip('"').rsplit("-", 1)[1])
        assert parts >= 4, f"expected several 5 MiB parts, ETag {head['ETag']}"
        assert open_uploads(s3, bucket) == [], "no multipart upload left behind"
        got = bucket_records(s3, bucket)
        assert got == records, "one shard, one object: records byte for byte and in order"
    finally:
        daemon.kill()


def test_wrong_credentials_are_a_clear_error_retried_and_nothing_is_lost(tmp_path, store_env, s3):
    bucket = store_env["bucket"]
    config = write_config(tmp_path, buffering="{ size_mib: 1, interval_s: 0 }", grace=2)
    bad = Spillway(tmp_path, config=config, env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    bad.start()
    try:
        records = make_records(300, "badcreds")
        put_all(firehose_client(bad), records)
        wait_for(lambda: "SignatureDoesNotMatch" in bad.stderr_tail(), 30,
                 "the store's SignatureDoesNotMatch error in the log", bad)
        assert "retrying" in bad.stderr_tail()
        bad.stop()  # the grace period ends the drain; the records stay in the log
        assert bucket_keys(s3, bucket) == []
    finally:
        bad.kill()
    good = Spillway(tmp_path, config=config)
    good.start()
    try:
        good.stop()
        assert_exactly(bucket_records(s3, bucket), records)
    finally:
        good.kill()


def test_multipart_upload_left_by_a_crash_is_aborted_at_start(tmp_path, store_env, s3):
    bucket = store_env["bucket"]
    config = write_config(tmp_path, extra="        part_mib: 5\n")
    daemon = Spillway(tmp_path, config=config)
    daemon.start()
    records = make_records(12_000, "leftover", size=1000)
    try:
        put_all(firehose_client(daemon), records)
        uploads = wait_for(lambda: open_uploads(s3, bucket), 30, "a multipart upload in progress", daemon)
        left = {u["UploadId"] for u in uploads}
    finally:
        daemon.kill()  # kill -9 in the middle of the object
    assert {u["UploadId"] for u in open_uploads(s3, bucket)} == left
    daemon = Spillway(tmp_path, config=config)
    daemon.start()
    try:
        still_open = {u["UploadId"] for u in open_uploads(s3, bucket)} & left
        assert not still_open, f"uploads left by the killed daemon were not aborted: {still_open}"
        daemon.stop()
        assert_exactly(bucket_records(s3, bucket), records)
        assert open_uploads(s3, bucket) == []
    finally:
        daemon.kill()


CRASH_ITERATIONS = 20


def test_kill_9_under_load_against_s3_loses_and_duplicates_nothing(tmp_path, store_env, s3):
    bucket = store_env["bucket"]
    seed = int(time.time() * 1000)
    rng = random.Random(seed)
    variants = [
        ("{ size_mib: 1, interval_s: 0 }", "none", ""),
        ("{ size_mib: 1, interval_s: 1 }", "gzip", ""),
        ("{ size_mib: 8, interval_s: 0 }", "none", "        part_mib: 5\n"),
        ("{ size_mib: 2, interval_s: 900 }", "gzip", ""),
    ]
    acked: list[bytes] = []
    for it in range(CRASH_ITERATIONS):
        buffering, compression, extra = variants[it % len(variants)]
        workdir = tmp_path / f"it{it}"
        workdir.mkdir()
        config = write_config(workdir, shards=2, buffering=buffering, compression=compression, extra=extra)
        daemon = Spillway(workdir, config=config)
        daemon.start()
        stop = threading.Event()
        lock = threading.Lock()
        before = len(acked)

        def client(c: int):
            fh = firehose_client(daemon)
            n = 0
            while not stop.is_set():
                batch = [f'{{"it":{it},"c":{c},"n":{n + i},"pad":"{"p" * 150}"}}'.encode() for i in range(100)]
                try:
                    resp = fh.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in batch])
                except Exception:
                    return  # killed mid-request: not acknowledged
                assert resp["FailedPutCount"] == 0
                with lock:
                    acked.extend(batch)
                n += 100

        threads = [threading.Thread(target=client, args=(c,)) for c in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3 + rng.random() * 1.2)
        daemon.kill()
        stop.set()
        for t in threads:
            t.join()
        assert len(acked) > before, f"iteration {it}: nothing acknowledged before the kill"
        daemon = Spillway(workdir, config=config)
        daemon.start()
        daemon.stop()
        got = collections.Counter(bucket_records(s3, bucket))
        dups = [r for r, n in got.items() if n > 1]
        assert not dups, f"iteration {it} (seed {seed}): {len(dups)} duplicated records, e.g. {dups[:2]}"
        lost = [r for r in acked if r not in got]
        assert not lost, f"iteration {it} (seed {seed}): {len(lost)} of {len(acked)} acknowledged records lost"
        assert open_uploads(s3, bucket) == [], f"iteration {it}: multipart uploads left behind"
