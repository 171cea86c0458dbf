"""boto3 against a real Spillway daemon: round trips, describe/list, and the
Direct PUT limits at their exact edges. Every test starts its own daemon, stops
it with SIGTERM (which must flush everything) and then checks the lake byte for
byte, so a partial write of a rejected request shows up as an extra record.

botocore validates only the *minimum* constraints of the Firehose model
client-side (Records >= 1, DeliveryStreamName >= 1 char), never the maxima, so
oversized records and 501-record batches really reach the daemon. Retries are
disabled (``total_max_attempts=1``) so a request is never sent twice.
"""

from __future__ import annotations

import json
import re

import pytest
from botocore.exceptions import ClientError

from conftest import (
    MAX_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    MAX_RECORD_BYTES,
    STREAM,
    assert_lake_holds,
)


def json_records(n: int, size: int = 200, tag: str = "b3") -> list[bytes]:
    """``n`` distinct JSON documents of exactly ``size`` bytes, no newlines."""
    out = []
    for i in range(n):
        head = json.dumps({"tag": tag, "seq": i, "id": f"{tag}-{i:05d}", "pad": ""})
        pad = "x" * (size - len(head))
        rec = json.dumps({"tag": tag, "seq": i, "id": f"{tag}-{i:05d}", "pad": pad}).encode()
        assert len(rec) == size and b"\n" not in rec
        out.append(rec)
    assert len(set(out)) == n
    return out


def blob(size: int, seed: int) -> bytes:
    """Deterministic binary data of ``size`` bytes covering 0x00..0xFF except '\\n'."""
    if size == 0:
        return b""
    pattern = bytes(b for b in range(256) if b != 0x0A)
    start = seed % len(pattern)
    pattern = pattern[start:] + pattern[:start]
    reps = size // len(pattern) + 1
    data = (pattern * reps)[:size]
    # Make records with different seeds differ at the very start too.
    data = bytes([0x41 + seed % 26]) + data[1:]
    assert len(data) == size and b"\n" not in data
    return data


def expect_error(call, code: str, status: int = 400) -> ClientError:
    try:
        resp = call()
    except ClientError as e:
        err = e.response.get("Error", {})
        got_status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        assert err.get("Code") == code, f"expected error {code}, got {err.get('Code')!r}: {err}"
        assert got_status == status, f"expected HTTP {status} for {code}, got {got_status}"
        assert err.get("Message"), f"{code} came back without a message: {e.response}"
        return e
    resp.pop("ResponseMetadata", None)
    pytest.fail(f"expected {code} (HTTP {status}), but the request succeeded: {str(resp)[:300]}")


def assert_batch_ok(resp: dict, n: int) -> list[str]:
    assert resp.get("FailedPutCount") == 0, f"FailedPutCount should be 0: {resp.get('FailedPutCount')!r}"
    assert resp.get("Encrypted") is False, f"Encrypted should be false: {resp.get('Encrypted')!r}"
    responses = resp.get("RequestResponses")
    assert isinstance(responses, list) and len(responses) == n, (
        f"expected {n} RequestResponses, got "
        f"{len(responses) if isinstance(responses, list) else responses!r}"
    )
    bad = [r for r in responses if not r.get("RecordId") or "ErrorCode" in r]
    assert not bad, f"{len(bad)} RequestResponses lack a RecordId or carry an error: {bad[:3]}"
    ids = [r["RecordId"] for r in responses]
    assert len(set(ids)) == n, f"RecordIds are not unique: {n - len(set(ids))} duplicates"
    return ids


def test_put_record_batch_500_round_trip(spillway, firehose):
    records = json_records(500)
    resp = firehose.put_record_batch(
        DeliveryStreamName=STREAM, Records=[{"Data": r} for r in records]
    )
    assert_batch_ok(resp, 500)
    spillway.stop()
    assert_lake_holds(spillway, records)


def test_put_record_round_trip(spillway, firehose):
    record = json.dumps({"single": True, "text": "caf\u00e9 \u2603"}, ensure_ascii=False).encode()
    resp = firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": record})
    assert isinstance(resp.get("RecordId"), str) and resp["RecordId"], f"no RecordId: {resp}"
    assert resp.get("Encrypted") is False, f"Encrypted should be false: {resp}"
    spillway.stop()
    assert_lake_holds(spillway, [record])


def test_list_and_describe_delivery_streams(spillway, firehose):
    listed = firehose.list_delivery_streams()
    assert STREAM in listed.get("DeliveryStreamNames", []), f"'{STREAM}' not listed: {listed}"
    assert listed.get("HasMoreDeliveryStreams") is False, f"unexpected paging: {listed}"

    desc = firehose.describe_delivery_stream(DeliveryStreamName=STREAM)
    d = desc.get("DeliveryStreamDescription", {})
    assert d.get("DeliveryStreamName") == STREAM, f"wrong name: {d}"
    assert d.get("DeliveryStreamStatus") == "ACTIVE", f"wrong status: {d}"
    assert d.get("DeliveryStreamType") == "DirectPut", f"wrong type: {d}"

    expect_error(
        lambda: firehose.describe_delivery_stream(DeliveryStreamName="no-such-stream"),
        "ResourceNotFoundException",
    )
    spillway.stop()
    assert_lake_holds(spillway, [])


def test_record_size_limit_edges(spillway, firehose):
    at_limit = blob(MAX_RECORD_BYTES, seed=1)
    resp = firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": at_limit})
    assert resp.get("RecordId"), f"1,024,000-byte record not accepted: {resp}"

    over = blob(MAX_RECORD_BYTES + 1, seed=2)
    expect_error(
        lambda: firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": over}),
        "InvalidArgumentException",
    )
    # In a batch, one oversized record rejects the whole request: nothing of it is written.
    small = b"small-record-next-to-an-oversized-one"
    expect_error(
        lambda: firehose.put_record_batch(
            DeliveryStreamName=STREAM, Records=[{"Data": small}, {"Data": over}]
        ),
        "InvalidArgumentException",
    )
    # Exactly at the limit inside a batch is fine.
    at_limit_2 = blob(MAX_RECORD_BYTES, seed=3)
    assert_batch_ok(
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": at_limit_2}]), 1
    )
    spillway.stop()
    assert_lake_holds(spillway, [at_limit, at_limit_2])


def test_batch_record_count_edges(spillway, firehose):
    five_hundred = [f"count-ok-{i:04d}".encode() for i in range(MAX_BATCH_RECORDS)]
    assert_batch_ok(
        firehose.put_record_batch(
            DeliveryStreamName=STREAM, Records=[{"Data": r} for r in five_hundred]
        ),
        MAX_BATCH_RECORDS,
    )
    five_hundred_one = [f"count-over-{i:04d}".encode() for i in range(MAX_BATCH_RECORDS + 1)]
    expect_error(
        lambda: firehose.put_record_batch(
            DeliveryStreamName=STREAM, Records=[{"Data": r} for r in five_hundred_one]
        ),
        "InvalidArgumentException",
    )
    spillway.stop()
    assert_lake_holds(spillway, five_hundred)


def _batch_totalling(total: int, seed: int) -> list[bytes]:
    """Records of 838,860 bytes (each under the per-record limit) plus a remainder."""
    chunk = 838_860
    sizes = [chunk] * (total // chunk)
    if total % chunk:
        sizes.append(total % chunk)
    records = [blob(size, seed=seed + i) for i, size in enumerate(sizes)]
    assert sum(len(r) for r in records) == total
    assert all(len(r) <= MAX_RECORD_BYTES for r in records)
    return records


def test_batch_total_size_edges(spillway, firehose):
    exact = _batch_totalling(MAX_BATCH_BYTES, seed=0)  # 5 x 838,860 + 4 = 4,194,304
    assert [len(r) for r in exact] == [838_860] * 5 + [4]
    assert_batch_ok(
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in exact]),
        len(exact),
    )
    over = _batch_totalling(MAX_BATCH_BYTES + 1, seed=10)  # 5 x 838,860 + 5 = 4,194,305
    assert [len(r) for r in over] == [838_860] * 5 + [5]
    expect_error(
        lambda: firehose.put_record_batch(
            DeliveryStreamName=STREAM, Records=[{"Data": r} for r in over]
        ),
        "InvalidArgumentException",
    )
    spillway.stop()
    assert_lake_holds(spillway, exact)


def test_empty_record_accepted(spillway, firehose):
    resp = firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": b""})
    assert resp.get("RecordId"), f"0-byte record not accepted: {resp}"
    batch = [b"before-empty", b"", b"after-empty"]
    assert_batch_ok(
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in batch]),
        3,
    )
    spillway.stop()
    # A 0-byte record is delivered as an empty line.
    assert_lake_holds(spillway, [b"", b"before-empty", b"", b"after-empty"])


def test_unknown_stream_is_resource_not_found(spillway, firehose):
    expect_error(
        lambda: firehose.put_record(DeliveryStreamName="nope", Record={"Data": b"lost-1"}),
        "ResourceNotFoundException",
    )
    expect_error(
        lambda: firehose.put_record_batch(
            DeliveryStreamName="nope", Records=[{"Data": b"lost-2"}, {"Data": b"lost-3"}]
        ),
        "ResourceNotFoundException",
    )
    # 64 characters is a valid name, so this is "not found", not "invalid".
    expect_error(
        lambda: firehose.put_record(DeliveryStreamName="a" * 64, Record={"Data": b"lost-4"}),
        "ResourceNotFoundException",
    )
    kept = b"delivered-after-unknown-stream"
    firehose.put_record(DeliveryStreamName=STREAM, Record={"Data": kept})
    spillway.stop()
    assert_lake_holds(spillway, [kept])


OBJECT_PATH = re.compile(
    r"^\d{4}/\d{2}/\d{2}/\d{2}/"
    r"events-1-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-[0-9A-Fa-f-]{32,36}$"
)


def test_lake_object_layout(spillway, firehose):
    records = json_records(20, tag="layout")
    assert_batch_ok(
        firehose.put_record_batch(DeliveryStreamName=STREAM, Records=[{"Data": r} for r in records]),
        20,
    )
    spillway.stop()
    objects = spillway.lake_objects()
    assert objects, "no object delivered to the lake after stop"
    for rel in objects:
        m = OBJECT_PATH.match(rel.as_posix())
        assert m, (
            f"lake object {rel.as_posix()!r} does not look like "
            f"YYYY/MM/dd/HH/events-1-YYYY-MM-dd-HH-MM-SS-<uuid>"
        )
    assert_lake_holds(spillway, records)
