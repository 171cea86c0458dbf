"""Raw HTTP (http.client) against a real Spillway daemon: malformed and invalid
requests that no SDK would send. Each case gets its own daemon and checks that

* the status and ``__type`` are the documented ones and ``message`` is a
  non-empty string,
* the daemon keeps serving (a valid PutRecord afterwards succeeds),
* after SIGTERM the lake holds only the valid record: a rejected request wrote
  nothing, not even the valid records that came before the fault.

Requests are SigV4-signed with dummy credentials like an SDK's would be (the
signature covers the exact body bytes, so invalid bodies are signed too).
"""

from __future__ import annotations

import base64
import json

import pytest

from conftest import MAX_BODY_BYTES, STREAM, TARGET_PREFIX, assert_lake_holds


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def put_record_body(data_value, stream=STREAM) -> bytes:
    return json.dumps({"DeliveryStreamName": stream, "Record": {"Data": data_value}}).encode()


def put_batch_body(data_values, stream=STREAM) -> bytes:
    return json.dumps(
        {"DeliveryStreamName": stream, "Records": [{"Data": d} for d in data_values]}
    ).encode()


def padded_batch_body(records: list[bytes], total_size: int) -> bytes:
    """A valid PutRecordBatch body of exactly ``total_size`` bytes (JSON whitespace padding)."""
    head = json.dumps(
        {"DeliveryStreamName": STREAM, "Records": [{"Data": b64(r)} for r in records]}
    ).encode()
    assert head.endswith(b"}")
    body = head[:-1] + b" " * (total_size - len(head)) + b"}"
    assert len(body) == total_size
    json.loads(body)  # still valid JSON
    return body


PR = TARGET_PREFIX + "PutRecord"
PRB = TARGET_PREFIX + "PutRecordBatch"

SER = "SerializationException"
INV = "InvalidArgumentException"
UNK = "UnknownOperationException"

# (id, target, body, expected status, expected __type). Bodies carry "lost-*" records
# that must never reach the lake.
CASES = [
    (
        "malformed-json",
        PR,
        b'{"DeliveryStreamName": "events", "Record": {"Data": "' + b64(b"lost-a").encode() + b'"}',
        400,
        SER,
    ),
    ("not-json-at-all", PR, b"this is not json", 400, SER),
    ("empty-body", PR, b"", 400, SER),
    ("json-array-body", PRB, json.dumps([{"Data": b64(b"lost-b")}]).encode(), 400, SER),
    ("invalid-base64", PR, put_record_body("!!!not*base64!!!"), 400, SER),
    (
        "invalid-base64-second-record-of-batch",
        PRB,
        put_batch_body([b64(b"lost-c"), "%%%%"]),
        400,
        SER,
    ),
    ("data-is-a-number", PR, put_record_body(12345), 400, SER),
    ("data-is-an-object", PRB, put_batch_body([b64(b"lost-d"), {"x": 1}]), 400, SER),
    (
        "records-is-an-object",
        PRB,
        json.dumps({"DeliveryStreamName": STREAM, "Records": {"Data": b64(b"lost-e")}}).encode(),
        400,
        SER,
    ),
    (
        "stream-name-is-a-number",
        PR,
        json.dumps({"DeliveryStreamName": 7, "Record": {"Data": b64(b"lost-f")}}).encode(),
        400,
        SER,
    ),
    ("missing-records", PRB, json.dumps({"DeliveryStreamName": STREAM}).encode(), 400, SER),
    ("missing-record", PR, json.dumps({"DeliveryStreamName": STREAM}).encode(), 400, SER),
    (
        "missing-data",
        PRB,
        json.dumps({"DeliveryStreamName": STREAM, "Records": [{"Data": b64(b"lost-g")}, {}]}).encode(),
        400,
        SER,
    ),
    (
        "missing-stream-name",
        PR,
        json.dumps({"Record": {"Data": b64(b"lost-h")}}).encode(),
        400,
        SER,
    ),
    ("unknown-target", TARGET_PREFIX + "DeleteEverything", put_record_body(b64(b"lost-i")), 400, UNK),
    ("missing-target", None, put_record_body(b64(b"lost-j")), 400, UNK),
    ("bad-stream-name", PR, put_record_body(b64(b"lost-k"), stream="bad name!"), 400, INV),
    (
        "bad-stream-name-batch",
        PRB,
        put_batch_body([b64(b"lost-l")], stream="bad name!"),
        400,
        INV,
    ),
    ("stream-name-65-chars", PR, put_record_body(b64(b"lost-m"), stream="a" * 65), 400, INV),
    ("empty-stream-name", PR, put_record_body(b64(b"lost-n"), stream=""), 400, INV),
    ("zero-records", PRB, put_batch_body([]), 400, INV),
    (
        "body-over-8-MiB",
        PRB,
        padded_batch_body([b"lost-o", b"lost-p"], MAX_BODY_BYTES + 1),
        413,
        INV,
    ),
]


def assert_error(status: int, raw: bytes, want_status: int, want_type: str, case: str) -> None:
    try:
        body = json.loads(raw)
    except ValueError:
        raise AssertionError(f"[{case}] error body is not JSON (status {status}): {raw[:300]!r}")
    assert status == want_status, f"[{case}] expected HTTP {want_status}, got {status}: {body}"
    assert isinstance(body, dict), f"[{case}] error body is not a JSON object: {body!r}"
    assert body.get("__type") == want_type, (
        f"[{case}] expected __type {want_type!r}, got {body.get('__type')!r}: {body}"
    )
    msg = body.get("message")
    assert isinstance(msg, str) and msg.strip(), f"[{case}] missing/empty message: {body}"


def put_valid_record(spillway, data: bytes) -> None:
    status, body = spillway.put_record_raw(data)
    assert status == 200, (
        f"a valid PutRecord after the rejected request failed with {status}: {body}"
        f"\n--- stderr ---\n{spillway.stderr_tail()}"
    )
    assert isinstance(body.get("RecordId"), str) and body["RecordId"], f"no RecordId: {body}"
    assert body.get("Encrypted") is False, f"Encrypted should be false: {body}"


@pytest.mark.parametrize(
    "target,body,want_status,want_type",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_rejected_request(spillway, request, target, body, want_status, want_type):
    case = request.node.callspec.id
    status, raw = spillway.raw_request(body, target)
    assert_error(status, raw, want_status, want_type, case)

    valid = f"valid-after-{case}".encode()
    put_valid_record(spillway, valid)
    spillway.stop()
    assert_lake_holds(spillway, [valid])


def test_all_rejections_on_one_daemon(spillway):
    """The same faults back to back on a single daemon, interleaved with valid
    records: it keeps serving throughout and only the valid records land."""
    valid = []
    for i, (case, target, body, want_status, want_type) in enumerate(CASES):
        status, raw = spillway.raw_request(body, target)
        assert_error(status, raw, want_status, want_type, case)
        record = f"interleaved-valid-{i:02d}".encode()
        put_valid_record(spillway, record)
        valid.append(record)
    spillway.stop()
    assert_lake_holds(spillway, valid)


def test_body_of_exactly_8_mib_is_accepted(spillway):
    """8 MiB is the largest allowed body ("larger than 8 MiB" is rejected)."""
    records = [b"exact-8MiB-body-1", b"exact-8MiB-body-2"]
    status, raw = spillway.raw_request(padded_batch_body(records, MAX_BODY_BYTES), PRB)
    assert status == 200, f"8,388,608-byte body rejected with {status}: {raw[:300]!r}"
    body = json.loads(raw)
    assert body.get("FailedPutCount") == 0, f"FailedPutCount should be 0: {body}"
    assert len(body.get("RequestResponses", [])) == 2, f"expected 2 RequestResponses: {body}"
    spillway.stop()
    assert_lake_holds(spillway, records)


def test_unknown_stream_raw(spillway):
    status, raw = spillway.raw_request(put_record_body(b64(b"lost-q"), stream="unknown_stream"), PR)
    assert_error(status, raw, 400, "ResourceNotFoundException", "unknown-stream")
    put_valid_record(spillway, b"valid-after-unknown-stream")
    spillway.stop()
    assert_lake_holds(spillway, [b"valid-after-unknown-stream"])
