"""The HTTP endpoint destination end to end, through the real daemon: unmodified boto3 puts records,
the daemon delivers them with Firehose's HTTP endpoint delivery protocol (1.0) to strict in-process
receivers (``firehose_receiver.FirehoseReceiver``, which checks every header and body of every
request and answers as each test scripts it), and the error documents and backups are read back
from the lake directory.

- every header and the body exact: access key, common attributes, gzip on and off, source ARN,
  user agent, request ids unique per batch;
- one shard: every record delivered exactly once, in order; at most 10,000 records per request;
- a 500 retried under the same request id (backoff, a new timestamp); a 413 never retried, its
  records in `http-endpoint-failed` error documents at the default error prefix;
- retry.duration_s running out under every failure kind (503, connection refused, timeout, a body
  that is not JSON, another requestId, a body > 1 MiB), each with its error code;
- bad success responses (not JSON, another requestId, > 1 MiB, a redirect, a closed connection)
  retried until a real success; a response slower than request_timeout_s retried under the same id;
  a receiver refusing connections and then back;
- kill -9 while a request is in flight, then a restart on the same data: every record delivered at
  least once, and a batch sent again carries the same request id and the same records;
- s3_backup_mode all_data (every record once under `backup/`, not in the error prefix) and
  failed_data_only (only error documents; retry duration 0 = one attempt);
- `spillway validate` refusing out-of-range or inconsistent http_endpoint settings, accepting the
  boundaries;
- DescribeDeliveryStream's HttpEndpointDestinationDescription (and no access key in it);
- one log record deaggregated into 25,000 pieces: three requests within the 10,000-record limit;
- HTTPS behind a throwaway CA (trustme): delivered with `ca_file`, refused at the handshake
  without it; and config/http_endpoint.yaml run as-is;
- and, without a daemon, the receiver's own verdicts on good and bad requests and its faults.

The generated data is seeded at random per run (printed on failure); set SPILLWAY_TEST_SEED to
replay a run.
"""

from __future__ import annotations

import base64
import collections
import gzip
import http.client
import json
import random
import threading
import time
import tomllib
import uuid
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Spillway, run_validate, split_object
from firehose_receiver import (MAX_RECORDS, MAX_RESPONSE_BYTES, Attempt, FirehoseReceiver, array, close,
                               malformed, mismatched, oversized, slow, status)
from test_format import put, seed
from test_partitioning import HOUR_DIRS, OBJECT_NAME, config_yaml, line_of, objects_under
from test_partitioning import start  # noqa: F401  (the fixture: a daemon on a config text)
from test_s3 import firehose_client

STREAM = "events"
PATH = "/firehose/v1/ingest"
FAILED = "http-endpoint-failed"
HTTP_ERROR_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                     "attemptEndingTimestamp", "rawData", "subsequenceNumber", "dataId"}
VERSION = tomllib.loads((REPO_ROOT / "Cargo.toml").read_text())["package"]["version"]
USER_AGENT = f"spillway/{VERSION}"
# The first backoff is 1 s ± 15 %; a little less for the receiver's view of the timing.
MIN_FIRST_BACKOFF_S = 0.8
WAIT_S = 30.0  # bound of every poll for something the daemon does within a few seconds


# -- receivers and configuration ------------------------------------------------------------------

@pytest.fixture
def receivers():
    """receivers(stream=..., **expectations) → a started FirehoseReceiver at PATH, expecting
    User-Agent spillway/<Cargo.toml version>; every receiver is stopped at teardown."""
    made: list[FirehoseReceiver] = []

    def _make(stream: str = STREAM, **kw) -> FirehoseReceiver:
        r = FirehoseReceiver(stream=stream, path=PATH, user_agent=USER_AGENT, **kw)
        made.append(r)
        return r.start()

    yield _make
    for r in made:
        r.stop()


@pytest.fixture
def receiver(receivers):
    return receivers()


def endpoint_yaml(name: str, url: str, *, endpoint_name: str | None = None,
                  access_key: str | None = None, common_attributes: dict[str, str] | None = None,
                  content_encoding: str | None = None,
                  buffering: str | None = "{ size_mib: 1, interval_s: 1 }",
                  request_timeout_s: int | None = 5, retry_s: int | None = 10,
                  backup_mode: str | None = None, processing=(), shards: int = 1,
                  s3_prefix: str = "backup/", error_prefix: str | None = None,
                  s3_buffering: str = "{ size_mib: 1, interval_s: 1 }", s3_extra=(), extra=(),
                  omit_s3: bool = False) -> str:
    """One delivery stream with an http_endpoint destination (YAML text). Strings are written as
    JSON (a YAML flow scalar); `processing`, `extra` (http_endpoint lines) and `s3_extra` (lines of
    its s3 section) are YAML text."""
    q = json.dumps
    text = f"  - name: {name}\n    source: {{ direct_put: {{ shards: {shards} }} }}\n"
    if processing:
        text += "    processing:\n" + "".join(f"      - {p}\n" for p in processing)
    text += f"    destination:\n      http_endpoint:\n        url: {q(url)}\n"
    if endpoint_name is not None:
        text += f"        name: {q(endpoint_name)}\n"
    if access_key is not None:
        text += f"        access_key: {q(access_key)}\n"
    if common_attributes is not None:
        text += f"        common_attributes: {q(common_attributes)}\n"
    if content_encoding is not None:
        text += f"        content_encoding: {content_encoding}\n"
    if buffering is not None:
        text += f"        buffering: {buffering}\n"
    if request_timeout_s is not None:
        text += f"        request_timeout_s: {request_timeout_s}\n"
    if retry_s is not None:
        text += f"        retry: {{ duration_s: {retry_s} }}\n"
    if backup_mode is not None:
        text += f"        s3_backup_mode: {backup_mode}\n"
    text += "".join(f"        {line}\n" for line in extra)
    if not omit_s3:
        text += f"        s3:\n          url: file://${{SPILLWAY_LAKE}}\n          prefix: {q(s3_prefix)}\n"
        if error_prefix is not None:
            text += f"          error_output_prefix: {q(error_prefix)}\n"
        text += f"          buffering: {s3_buffering}\n          compression: none\n"
        text += "".join(f"          {line}\n" for line in s3_extra)
    return text


def http_stream(receiver: FirehoseReceiver, **options) -> str:
    """The stream `receiver.stream` delivering to `receiver`, whose expectations (access key,
    common attributes, gzip) are set from the same options, so that both sides agree."""
    receiver.access_key = options.get("access_key")
    receiver.common_attributes = options.get("common_attributes")
    receiver.gzip = options.get("content_encoding") == "gzip"
    return endpoint_yaml(receiver.stream, receiver.url, **options)


def http_config(receiver: FirehoseReceiver, **options) -> str:
    return config_yaml(http_stream(receiver, **options))


# -- data, waits, the lake ------------------------------------------------------------------------

def make_records(r: random.Random, n: int, tag: str, *, size=(0, 300), binary=False) -> list[bytes]:
    """`n` distinct records `<tag>-<i>-...`: random bytes (binary) or JSON text of random sizes."""
    out = []
    for i in range(n):
        k = r.randrange(*size)
        if binary:
            out.append(f"{tag}-{i:06d}-".encode() + r.randbytes(k))
        else:
            out.append(json.dumps({"tag": tag, "i": i, "v": r.choice("abcdef") * k}).encode())
    return out


def first_attempt_fails(action):
    """A responder answering `action` to the first attempt of every request id (then the default)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def responder(attempt: Attempt):
        with lock:
            if attempt.request_id in seen:
                return None
            seen.add(attempt.request_id)
        return action

    return responder


def stderr_of(daemon: Spillway):
    return lambda: f"--- daemon stderr ---\n{daemon.stderr_tail()}"


def wait_until(predicate, timeout: float, what: str, diagnostics=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    if not predicate():
        pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnostics()}", pytrace=False)


def assert_no_violations(*receivers: FirehoseReceiver) -> None:
    for r in receivers:
        assert not r.violations, (f"the daemon broke the HTTP endpoint protocol ({r.stream}):\n  "
                                  + "\n  ".join(r.violations[:20]) + f"\n{r.summary()}")


def http_error_docs(daemon: Spillway, top: str = "backup/", stream: str = STREAM) -> list[dict]:
    """The http-endpoint-failed documents under `<top>http-endpoint-failed/yyyy/MM/dd/HH/`, each
    object named like a Firehose object of `stream` and each document checked for its fields."""
    base = f"{top}{FAILED}/"
    docs = []
    for p in objects_under(daemon, base):
        assert HOUR_DIRS.match(p.parent.relative_to(base).as_posix()), (
            f"error object {p} is not under {base}yyyy/MM/dd/HH/")
        m = OBJECT_NAME.match(p.name)
        assert m and m["stream"] == stream and m["ext"] == "", f"error object name {p.name!r}"
        for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
            doc = json.loads(line)
            assert set(doc) == HTTP_ERROR_FIELDS, f"{p}: fields {sorted(doc)}"
            assert type(doc["attemptsMade"]) is int and doc["attemptsMade"] >= 1, doc
            assert isinstance(doc["errorMessage"], str) and doc["errorMessage"], doc
            assert type(doc["arrivalTimestamp"]) is int, doc
            assert type(doc["attemptEndingTimestamp"]) is int, doc
            assert doc["attemptEndingTimestamp"] >= doc["arrivalTimestamp"], doc
            assert type(doc["subsequenceNumber"]) is int, doc
            assert isinstance(doc["dataId"], str) and doc["dataId"], doc
            base64.b64decode(doc["rawData"], validate=True)
            docs.append(doc)
    return docs


def raw(doc: dict) -> bytes:
    return base64.b64decode(doc["rawData"])


def backup_objects(daemon: Spillway, prefix: str = "backup/") -> list[Path]:
    """all_data backup objects: directly under `<prefix>yyyy/MM/dd/HH/`."""
    return [p for p in objects_under(daemon, prefix)
            if HOUR_DIRS.match(p.parent.relative_to(prefix).as_posix())]


def read_objects(daemon: Spillway, paths: list[Path]) -> list[bytes]:
    out: list[bytes] = []
    for p in paths:
        out.extend(split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()))
    return out


def count_error_docs(daemon: Spillway, top: str = "backup/", stream: str = STREAM) -> int:
    return len(http_error_docs(daemon, top, stream))


def ids_of(receiver: FirehoseReceiver, records: list[bytes]) -> dict[str, list[Attempt]]:
    """request id → its attempts, for the attempts carrying any of `records`."""
    wanted = set(records)
    out: dict[str, list[Attempt]] = collections.defaultdict(list)
    for a in receiver.attempts():
        if a.records and wanted.intersection(a.records):
            out[a.request_id].append(a)
    return out


# -- 0. the receiver itself (no daemon) -----------------------------------------------------------

def _request(receiver: FirehoseReceiver, records: list[bytes], rid: str | None = None):
    rid = rid or str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "X-Amz-Firehose-Protocol-Version": "1.0",
        "X-Amz-Firehose-Request-Id": rid,
        "X-Amz-Firehose-Source-Arn": receiver.source_arn,
        "User-Agent": USER_AGENT,
    }
    if receiver.access_key is not None:
        headers["X-Amz-Firehose-Access-Key"] = receiver.access_key
    if receiver.common_attributes is not None:
        headers["X-Amz-Firehose-Common-Attributes"] = json.dumps(
            {"commonAttributes": receiver.common_attributes})
    body = {"requestId": rid, "timestamp": time.time_ns() // 1_000_000,
            "records": [{"data": base64.b64encode(r).decode()} for r in records]}
    return headers, body


def _send(receiver: FirehoseReceiver, headers: dict, body, *, method="POST", path=None,
          compress: bool | None = None, timeout=10.0):
    """(status, response headers, response body); body may be a dict (JSON) or bytes."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = dict(headers)
    if compress if compress is not None else receiver.gzip:
        data = gzip.compress(data)
        headers["Content-Encoding"] = "gzip"
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=timeout)
    try:
        conn.request(method, path or PATH, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_receiver_rejects_protocol_violations(receivers):
    """Without a daemon: the receiver takes a well-formed request, answers 400 and records a
    violation for each broken rule, plays every fault action, folds duplicates, refuses
    connections while stopped, and checks gzip / access key / attributes when expected."""
    rcv = receivers()
    recs = [b"hello", b"", bytes(range(256)), b"\n"]
    headers, body = _request(rcv, recs)
    code, _, answer = _send(rcv, headers, body)
    assert code == 200, answer
    reply = json.loads(answer)
    assert reply["requestId"] == body["requestId"] and type(reply["timestamp"]) is int, reply
    assert rcv.violations == [] and rcv.delivered().records == recs

    def broken(**changes):
        h, b = _request(rcv, [b"x", b"yz"])
        for k, v in changes.pop("headers", {}).items():
            if v is None:
                h.pop(k, None)
            else:
                h[k] = v
        for k, v in changes.pop("body", {}).items():
            if v is None:
                b.pop(k, None)
            else:
                b[k] = v
        return h, b

    rid = str(uuid.uuid4())
    cases = {
        "no protocol version": (broken(headers={"X-Amz-Firehose-Protocol-Version": None}), {},
                                "Protocol-Version"),
        "protocol version 2.0": (broken(headers={"X-Amz-Firehose-Protocol-Version": "2.0"}), {},
                                 "Protocol-Version"),
        "upper-case GUID": (broken(headers={"X-Amz-Firehose-Request-Id": rid.upper()},
                                   body={"requestId": rid.upper()}), {}, "GUID"),
        "body requestId differs": (broken(body={"requestId": rid}), {}, "requestId"),
        "extra body key": (broken(body={"extra": 1}), {}, "body keys"),
        "no timestamp": (broken(body={"timestamp": None}), {}, "timestamp"),
        "timestamp in seconds": (broken(body={"timestamp": int(time.time())}), {}, "timestamp"),
        "float timestamp": (broken(body={"timestamp": time.time() * 1000}), {}, "timestamp"),
        "bad base64": (broken(body={"records": [{"data": "!!!!"}]}), {}, "base64"),
        "non-canonical base64": (broken(body={"records": [{"data": "QR=="}]}), {}, "base64"),
        "record with extra key": (broken(body={"records": [{"data": "QQ==", "id": 1}]}), {},
                                  "records[0]"),
        "no records": (broken(body={"records": []}), {}, "records"),
        "10,001 records": (broken(body={"records": [{"data": ""}] * (MAX_RECORDS + 1)}), {},
                           "records"),
        "wrong source arn": (broken(headers={"X-Amz-Firehose-Source-Arn": "arn:aws:firehose:x"}),
                             {}, "Source-Arn"),
        "unexpected access key": (broken(headers={"X-Amz-Firehose-Access-Key": "k"}), {},
                                  "Access-Key"),
        "unexpected attributes": (broken(headers={"X-Amz-Firehose-Common-Attributes": "{}"}), {},
                                  "Common-Attributes"),
        "unknown firehose header": (broken(headers={"X-Amz-Firehose-Other": "1"}), {},
                                    "unexpected header"),
        "gzip not configured": (broken(), {"compress": True}, "Content-Encoding"),
        "content type": (broken(headers={"Content-Type": "text/plain"}), {}, "Content-Type"),
        "user agent": (broken(headers={"User-Agent": "curl/8"}), {}, "User-Agent"),
        "GET": (broken(), {"method": "GET"}, "method"),
        "wrong path": (broken(), {"path": PATH + "/x"}, "path"),
    }
    failures = []
    for name, ((h, b), kw, word) in cases.items():
        code, _, answer = _send(rcv, h, b, **kw)
        got = rcv.clear_violations()
        if code != 400 or not any(word in v for v in got):
            failures.append(f"{name}: status {code}, violations {got}")
    # Duplicate keys and bytes that are not UTF-8 need raw bodies.
    h, b = _request(rcv, [b"x"])
    dup = json.dumps(b)[:-1] + f', "requestId": "{b["requestId"]}"}}'
    for name, data, word in [("duplicate key", dup.encode(), "duplicate"),
                             ("not UTF-8", b'{"requestId": "\xff"}', "UTF-8"),
                             ("not JSON", b"requestId=1", "JSON")]:
        code, _, _ = _send(rcv, h, data)
        got = rcv.clear_violations()
        if code != 400 or not any(word in v for v in got):
            failures.append(f"{name}: status {code}, violations {got}")
    assert not failures, "\n".join(failures)
    assert rcv.delivered().commits == 1, "a rejected request was taken"

    # The fault actions, in script order.
    rcv.script(status(503), status(302), status(413, "too large"), malformed(), mismatched(),
               oversized(), close(), slow(0.3))
    seen = []
    for _ in range(7):
        h, b = _request(rcv, [b"fault"])
        try:
            code, rh, answer = _send(rcv, h, b)
        except (http.client.RemoteDisconnected, ConnectionResetError):
            seen.append("closed")
            continue
        if code == 200 and len(answer) > MAX_RESPONSE_BYTES:
            assert json.loads(answer)["requestId"] == b["requestId"]
            seen.append("oversized")
        elif code == 200:
            try:
                other = json.loads(answer)["requestId"]
                seen.append("mismatched" if other != b["requestId"] else "ok")
            except ValueError:
                seen.append("malformed")
        elif code == 302:
            assert "redirected-must-not-be-followed" in rh["Location"], rh
            seen.append("302")
        else:
            seen.append(str(code) + (":" + answer.decode() if code == 413 else ""))
    assert seen == ["503", "302", "413:too large", "malformed", "mismatched", "oversized",
                    "closed"], seen
    h, b = _request(rcv, [b"slow"])
    began = time.monotonic()
    code, _, answer = _send(rcv, h, b)
    assert code == 200 and time.monotonic() - began >= 0.3
    assert rcv.delivered().records == recs + [b"slow"], "only ok and slow attempts take a batch"

    # Duplicates fold by request id; a re-sent id with other records is an error.
    rcv.responder = lambda a: status(500) if a.records == [b"refuse me"] else None
    code, _, _ = _send(rcv, *_request(rcv, [b"refuse me"]))
    assert code == 500
    rcv.responder = None
    h, b = _request(rcv, [b"dup1", b"dup2"])
    assert _send(rcv, h, b)[0] == 200 and _send(rcv, h, b)[0] == 200
    d = rcv.delivered()
    assert d.records == recs + [b"slow", b"dup1", b"dup2"] and d.duplicates == 1, d
    assert d.batch_sizes == [4, 1, 2] and d.commits == 4, d
    h2, b2 = _request(rcv, [b"other"], rid=b["requestId"])
    assert _send(rcv, h2, b2)[0] == 200
    with pytest.raises(AssertionError, match="different records"):
        rcv.delivered()
    assert rcv.violations == []

    # Stopped, the port refuses connections; started again, the same port serves.
    port = rcv.port
    rcv.stop()
    with pytest.raises(ConnectionRefusedError):
        _send(rcv, *_request(rcv, [b"x"]))
    rcv.start()
    assert rcv.port == port and _send(rcv, *_request(rcv, [b"back"]))[0] == 200

    # gzip, an access key and common attributes expected.
    strict = receivers(stream="other", access_key="k3y \"q\"",
                       common_attributes={"env": "prod", "e": ""}, gzip=True)
    h, b = _request(strict, [b"z" * 1000])
    assert _send(strict, h, b)[0] == 200 and strict.violations == []
    assert strict.attempts()[0].body_bytes < strict.attempts()[0].decoded_bytes
    for name, (hh, kw), word in [
            ("not compressed", (h, {"compress": False}), "Content-Encoding"),
            ("no access key", ({k: v for k, v in h.items() if "Access-Key" not in k}, {}), "Access-Key"),
            ("other access key", ({**h, "X-Amz-Firehose-Access-Key": "k3y"}, {}), "Access-Key"),
            ("other attributes", ({**h, "X-Amz-Firehose-Common-Attributes":
                                   '{"commonAttributes":{"env":"prod"}}'}, {}), "Common-Attributes"),
            ("attributes not wrapped", ({**h, "X-Amz-Firehose-Common-Attributes":
                                         '{"env":"prod","e":""}'}, {}), "Common-Attributes")]:
        code, _, _ = _send(strict, hh, b, **kw)
        got = strict.clear_violations()
        assert code == 400 and any(word in v for v in got), f"{name}: {code} {got}"
    headers_gz = {**h, "Content-Encoding": "gzip"}
    code, _, _ = _send(strict, headers_gz, b"not gzip at all", compress=False)
    assert code == 400 and any("gzip" in v for v in strict.clear_violations())


# -- 1. headers and body ---------------------------------------------------------------------------

ACCESS_KEY_VALUE = 'k3y/with "quotes", spaces + symbols =:;!~'
LONG_ACCESS_KEY = "".join(random.Random(7).choice("ABCDEFabcdef0123456789-_") for _ in range(4095)) + "Z"
ATTRIBUTES = {"env": "prod", "team name": 'say "hi" \\ back', "empty": "", "a" * 256: "v" * 1024}


def test_headers_and_body_are_exact(start, receivers):
    """Three streams: nothing optional; access key + attributes + gzip; a 4,096-character key +
    attributes + content_encoding none. Every request must satisfy its strict receiver; the
    records arrive as put."""
    r = random.Random(seed())
    variants = {
        "plain": {},
        "zipped": dict(access_key=ACCESS_KEY_VALUE, common_attributes=ATTRIBUTES,
                       content_encoding="gzip"),
        "keyed": dict(access_key=LONG_ACCESS_KEY, common_attributes={"only": "one"},
                      content_encoding="none"),
    }
    rcvs = {name: receivers(stream=name) for name in variants}
    daemon = start(config_yaml(*(http_stream(rcvs[name], **opts) for name, opts in variants.items())))
    records = {name: make_records(r, 300, name, size=(0, 400)) for name in variants}
    began_ms = time.time_ns() // 1_000_000
    for name in variants:
        put(daemon, name, records[name])
    for name, rcv in rcvs.items():
        rcv.wait_records(len(records[name]), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(*rcvs.values())
    for name, rcv in rcvs.items():
        opts = variants[name]
        d = rcv.delivered()
        assert d.records == records[name], f"{name}: delivered records differ from those put"
        attempts = rcv.attempts()
        assert all(a.answered == 200 for a in attempts), rcv.summary()
        assert len({a.request_id for a in attempts}) == len(attempts), (
            f"{name}: a request id was used for two batches without a failure\n{rcv.summary()}")
        for a in attempts:
            assert a.header("User-Agent") == USER_AGENT, a.headers
            assert a.header("X-Amz-Firehose-Source-Arn") == (
                f"arn:aws:firehose:local:000000000000:deliverystream/{name}")
            assert a.header("X-Amz-Firehose-Access-Key") == opts.get("access_key"), name
            attrs = a.header("X-Amz-Firehose-Common-Attributes")
            if "common_attributes" in opts:
                assert json.loads(attrs) == {"commonAttributes": opts["common_attributes"]}, attrs
            else:
                assert attrs is None, attrs
            if opts.get("content_encoding") == "gzip":
                assert a.header("Content-Encoding") == "gzip"
                assert a.body_bytes < a.decoded_bytes, "a gzip body no smaller than its JSON"
            else:
                assert a.header("Content-Encoding") is None and a.body_bytes == a.decoded_bytes
            assert began_ms - 1000 <= a.body_timestamp <= int(a.arrived * 1000) + 1000, (
                a.body_timestamp, a.arrived)
    assert daemon.lake_objects() == [], "nothing failed, nothing is backed up"


def test_describe_shows_http_endpoint_destination(start, receiver):
    daemon = start(http_config(
        receiver, endpoint_name="collector", access_key="do-not-show-me-4f2a",
        common_attributes={"env": "prod", "team": "data"}, content_encoding="gzip",
        buffering="{ size_mib: 2, interval_s: 1 }", retry_s=7, backup_mode="all_data"))
    d = firehose_client(daemon).describe_delivery_stream(DeliveryStreamName=STREAM)
    dest = d["DeliveryStreamDescription"]["Destinations"][0]
    assert "ExtendedS3DestinationDescription" not in dest, dest
    h = dest["HttpEndpointDestinationDescription"]
    assert h["EndpointConfiguration"] == {"Url": receiver.url, "Name": "collector"}, h
    assert h["BufferingHints"] == {"SizeInMBs": 2, "IntervalInSeconds": 1}, h
    rc = h["RequestConfiguration"]
    assert rc["ContentEncoding"] == "GZIP", rc
    assert sorted((a["AttributeName"], a["AttributeValue"]) for a in rc["CommonAttributes"]) == [
        ("env", "prod"), ("team", "data")], rc
    assert h["RetryOptions"] == {"DurationInSeconds": 7}, h
    assert h["S3BackupMode"] == "AllData", h
    assert h["S3DestinationDescription"]["Prefix"] == "backup/", h
    assert "do-not-show-me-4f2a" not in json.dumps(d, default=str), "the access key is shown"
    daemon.stop()

    plain = start(http_config(receiver))
    h = firehose_client(plain).describe_delivery_stream(DeliveryStreamName=STREAM)[
        "DeliveryStreamDescription"]["Destinations"][0]["HttpEndpointDestinationDescription"]
    assert h["RequestConfiguration"]["ContentEncoding"] == "NONE", h
    assert h["S3BackupMode"] == "FailedDataOnly", h
    plain.stop()


# -- 2. delivery: once, in order, at most 10,000 records a request ---------------------------------

def test_one_shard_delivers_every_record_once_in_order(start, receiver):
    s = seed()
    r = random.Random(s)
    records = make_records(r, 2000, "ord", size=(0, 600), binary=True)
    for i in r.sample(range(len(records)), 15):  # a few large ones: several 1 MiB batches
        records[i] += r.randbytes(r.randrange(50_000, 200_000))
    daemon = start(http_config(receiver, buffering="{ size_mib: 1, interval_s: 1 }"))
    put(daemon, STREAM, records)
    receiver.wait_records(len(records), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()
    assert d.duplicates == 0 and d.commits == len(receiver.attempts()), receiver.summary()
    assert len(d.records) == len(records), f"{len(d.records)} delivered, {len(records)} put (seed {s})"
    first_diff = next((i for i, (a, b) in enumerate(zip(d.records, records)) if a != b), None)
    assert first_diff is None, f"record {first_diff} differs or is out of order (seed {s})"
    assert len(d.request_ids) > 1, "3.5 MB with a 1 MiB size hint went in one request"
    biggest = max(map(len, records))
    by_id = {b.request_id: b.records for b in receiver.batches()}
    for rid in d.request_ids:
        size = sum(map(len, by_id[rid]))
        assert size <= (1 << 20) + biggest, f"request {rid} holds {size} bytes of records"
    assert daemon.lake_objects() == []


def test_a_request_holds_at_most_10000_records(start, receiver):
    """25,000 small records under a 64 MiB size hint: they fit one buffer, not one request."""
    r = random.Random(seed())
    records = [f"{i:05d}".encode() + r.randbytes(r.randrange(3, 12)) for i in range(25_000)]
    daemon = start(http_config(receiver, buffering="{ size_mib: 64, interval_s: 60 }"))
    put(daemon, STREAM, records)
    daemon.stop()  # the drain sends every buffered record

    assert_no_violations(receiver)
    d = receiver.delivered()
    assert d.records == records, f"{len(d.records)} records delivered of {len(records)}, or out of order"
    assert max(d.batch_sizes) <= MAX_RECORDS and len(d.batch_sizes) >= 3, d.batch_sizes
    assert d.duplicates == 0


# -- 3. retries and the error output ---------------------------------------------------------------

def test_a_500_is_retried_with_the_same_request_id(start, receiver):
    receiver.responder = first_attempt_fails(status(500))
    records = make_records(random.Random(seed()), 50, "r500")
    daemon = start(http_config(receiver))
    put(daemon, STREAM, records)
    receiver.wait_records(len(records), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()
    assert d.records == records and d.duplicates == 0, receiver.summary()
    for rid in d.request_ids:
        first, second, *more = receiver.attempts_for(rid)
        assert not more, f"{rid}: more than 2 attempts\n{receiver.summary()}"
        assert (first.answered, second.answered) == (500, 200), receiver.summary()
        assert first.records == second.records
        assert second.arrived - first.arrived >= MIN_FIRST_BACKOFF_S, (
            f"retried {second.arrived - first.arrived:.3f}s after the 500 (backoff 1 s ± 15 %)")
        assert second.body_timestamp - first.body_timestamp >= MIN_FIRST_BACKOFF_S * 1000, (
            "the body timestamp is the time of the attempt", first.body_timestamp,
            second.body_timestamp)
    assert daemon.lake_objects() == []


def test_a_413_is_not_retried_and_its_records_go_to_the_error_output(start, receiver):
    """413 is permanent: one attempt, and the batch's records in http-endpoint-failed documents at
    the default error prefix `<s3.prefix>http-endpoint-failed/yyyy/MM/dd/HH/`; later batches are
    delivered as usual."""
    r = random.Random(seed())
    refused = make_records(r, 40, "big")
    later = make_records(r, 30, "later")
    receiver.responder = lambda a: (status(413, "payload too large: receiver-413-marker")
                                    if any(x in refused for x in a.records) else None)
    daemon = start(http_config(receiver, retry_s=60))
    began_ms = time.time_ns() // 1_000_000
    put(daemon, STREAM, refused)
    put_ms = time.time_ns() // 1_000_000
    receiver.wait_for(lambda: any(a.answered == 413 for a in receiver.attempts()), WAIT_S,
                      "the 413", stderr_of(daemon))
    put(daemon, STREAM, later)
    receiver.wait_records(len(later), WAIT_S, stderr_of(daemon))
    wait_until(lambda: count_error_docs(daemon) >= len(refused), WAIT_S,
               "the error documents of the 413 batch", stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    assert receiver.delivered().records == later
    batches = ids_of(receiver, refused)
    for rid, attempts in batches.items():
        assert len(attempts) == 1 and attempts[0].answered == 413, (
            f"a 413 was retried\n{receiver.summary()}")
    docs = http_error_docs(daemon)
    assert sorted(map(raw, docs)) == sorted(refused), "error documents ≠ the refused records"
    last_attempt_ms = max(int(a[0].arrived * 1000) for a in batches.values())
    for doc in docs:
        assert doc["errorCode"] == "HttpEndpoint.DestinationException", doc
        assert "413" in doc["errorMessage"] and "receiver-413-marker" in doc["errorMessage"], doc
        assert doc["attemptsMade"] == 1, doc
        assert began_ms - 1000 <= doc["arrivalTimestamp"] <= put_ms + 1000, doc
        assert doc["attemptEndingTimestamp"] >= last_attempt_ms - 1000, doc
    others = [p for p in daemon.lake_objects() if not p.as_posix().startswith(f"backup/{FAILED}/")]
    assert others == [], f"failed_data_only wrote more than error documents: {others}"


# kind → (the receiver's answer (None: the receiver is down), errorCode, words of errorMessage)
EXHAUSTED = {
    "refused": (None, "HttpEndpoint.ConnectionFailed", ()),
    "s503": (status(503, "unavailable-503-marker"), "HttpEndpoint.DestinationException",
             ("503", "unavailable-503-marker")),
    "timeout": (slow(2.5, commits=False), "HttpEndpoint.RequestTimeout", ()),
    "notjson": (malformed(), "HttpEndpoint.InvalidResponseFromDestination", ()),
    "otherid": (mismatched(), "HttpEndpoint.InvalidResponseFromDestination", ()),
    "array": (array(), "HttpEndpoint.InvalidResponseFromDestination", ("not a JSON object",)),
    "toolarge": (oversized(), "HttpEndpoint.ResponseTooLarge", ()),
    # The endpoint's errorMessage is cut to Firehose's 8,192 characters.
    "longmsg": (status(500, json.dumps({"requestId": "r", "timestamp": 0, "errorMessage": "m" * 20000})),
                "HttpEndpoint.DestinationException", ("500", "m" * 8000)),
}
MAX_ERROR_MESSAGE = 8192
EXHAUST_RETRY_S = 3


def test_each_failure_kind_exhausts_its_retries_into_error_documents(start, receivers):
    """One stream per failure kind, each answered that way on every attempt, retry duration 3 s
    and request timeout 1 s: more than one attempt, all under one request id, backing off, none
    started 3 s or more after the first; then every record in an error document with the kind's
    errorCode and attemptsMade equal to the attempts the receiver saw."""
    r = random.Random(seed())
    rcvs = {}
    for kind, (answer, _, _) in EXHAUSTED.items():
        rcv = receivers(stream=kind)
        if answer is None:
            rcv.stop()  # its port now refuses connections
        else:
            rcv.default = answer
        rcvs[kind] = rcv
    daemon = start(config_yaml(*(
        http_stream(rcvs[kind], s3_prefix=f"{kind}/", request_timeout_s=1, retry_s=EXHAUST_RETRY_S)
        for kind in EXHAUSTED)))
    records = {kind: make_records(r, 20, kind) for kind in EXHAUSTED}
    for kind in EXHAUSTED:
        put(daemon, kind, records[kind])
    wait_until(lambda: all(count_error_docs(daemon, f"{k}/", k) >= 20 for k in EXHAUSTED), WAIT_S,
               "every stream's error documents",
               lambda: "\n".join(r.summary() for r in rcvs.values()) + stderr_of(daemon)())
    daemon.stop()

    assert_no_violations(*rcvs.values())
    failures = []
    for kind, (answer, code, words) in EXHAUSTED.items():
        rcv = rcvs[kind]
        docs = http_error_docs(daemon, f"{kind}/", kind)
        if sorted(map(raw, docs)) != sorted(records[kind]):
            failures.append(f"{kind}: error documents hold {len(docs)} records, not the 20 put")
            continue
        if rcv.batches():
            failures.append(f"{kind}: the receiver took a batch")
        attempts_by_id = ids_of(rcv, records[kind])
        if answer is None and rcv.attempts():
            failures.append(f"{kind}: a stopped receiver got requests")
        for doc in docs:
            if doc["errorCode"] != code or not all(w in doc["errorMessage"] for w in words):
                failures.append(f"{kind}: {doc['errorCode']} {doc['errorMessage']!r}, want {code} "
                                f"with {words}")
                break
            if doc["attemptsMade"] < 2:
                failures.append(f"{kind}: attemptsMade {doc['attemptsMade']} in {EXHAUST_RETRY_S} s")
                break
            if len(doc["errorMessage"]) > MAX_ERROR_MESSAGE + 200:
                failures.append(f"{kind}: an errorMessage of {len(doc['errorMessage'])} characters")
                break
            if answer is not None:
                rid, attempts = next((rid, a) for rid, a in attempts_by_id.items()
                                     if raw(doc) in a[0].records)
                if doc["attemptsMade"] != len(attempts):
                    failures.append(f"{kind}: attemptsMade {doc['attemptsMade']}, the receiver saw "
                                    f"{len(attempts)} attempts of {rid}")
                    break
                if doc["attemptEndingTimestamp"] < int(attempts[-1].arrived * 1000) - 5:
                    failures.append(f"{kind}: attemptEndingTimestamp before the last attempt")
                    break
        for rid, attempts in attempts_by_id.items():
            if any(a.records != attempts[0].records for a in attempts):
                failures.append(f"{kind}: {rid} re-sent with other records")
            # Firehose's rule: only the waits between attempts count toward retry.duration_s,
            # not the time spent awaiting responses; and a wait is never cut short, so the waits
            # (gap between one attempt's end and the next one's start) add up to at most it.
            ends = [a.finished if answer.kind != "slow" else a.arrived + 1.0 for a in attempts]
            waited = sum(b.arrived - e for e, b in zip(ends, attempts[1:]))
            if waited > EXHAUST_RETRY_S + 0.5:
                failures.append(f"{kind}: {waited:.2f}s of waits between attempts, with "
                                f"retry.duration_s {EXHAUST_RETRY_S} (attempts at "
                                f"{[round(x.arrived - attempts[0].arrived, 2) for x in attempts]} s)")
            ends = [a.finished if answer.kind != "slow" else a.arrived + 1.0 for a in attempts]
            gaps = [b.arrived - e for e, b in zip(ends, attempts[1:])]
            if gaps and min(gaps) < MIN_FIRST_BACKOFF_S - 0.1:
                failures.append(f"{kind}: {rid} retried after {min(gaps):.2f}s, want ≥ 1 s backoff")
    assert not failures, "\n".join(failures) + "\n" + "\n".join(r.summary() for r in rcvs.values())


BAD_SUCCESS = {
    "notjson": malformed(),
    "otherid": mismatched(),
    "array": array(),
    "toolarge": oversized(),
    "redirect": status(302),
    "closed": close(),
}


def test_bad_success_responses_are_retried_until_a_real_success(start, receivers):
    """Each request id's first attempt gets a bad answer (200 with a body that is not JSON, with
    another requestId or larger than 1 MiB; a 302 whose Location must not be followed; the
    connection closed without a response); the second attempt, same id, is answered properly."""
    r = random.Random(seed())
    rcvs = {}
    for kind, action in BAD_SUCCESS.items():
        rcvs[kind] = receivers(stream=kind)
        rcvs[kind].responder = first_attempt_fails(action)
    daemon = start(config_yaml(*(http_stream(rcvs[k], s3_prefix=f"{k}/") for k in BAD_SUCCESS)))
    records = {kind: make_records(r, 30, kind) for kind in BAD_SUCCESS}
    for kind in BAD_SUCCESS:
        put(daemon, kind, records[kind])
    for kind, rcv in rcvs.items():
        rcv.wait_records(len(records[kind]), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(*rcvs.values())  # a followed redirect would be a wrong path
    for kind, rcv in rcvs.items():
        d = rcv.delivered()
        assert d.records == records[kind] and d.duplicates == 0, f"{kind}\n{rcv.summary()}"
        for rid in d.request_ids:
            attempts = rcv.attempts_for(rid)
            assert [str(a.action) for a in attempts] == [str(BAD_SUCCESS[kind]), "ok"], (
                f"{kind}: {rid}\n{rcv.summary()}")
            assert attempts[1].arrived - attempts[0].finished >= MIN_FIRST_BACKOFF_S - 0.1
    assert daemon.lake_objects() == []


def test_a_slow_response_is_retried_under_the_same_request_id(start, receiver):
    """request_timeout_s 1: the first attempt of each batch is answered after 2.5 s, too late; the
    receiver did take it, so the retry is a duplicate that must carry the same id and records."""
    receiver.responder = first_attempt_fails(slow(2.5))
    records = make_records(random.Random(seed()), 20, "slow")
    daemon = start(http_config(receiver, request_timeout_s=1, retry_s=30))
    put(daemon, STREAM, records)
    receiver.wait_records(len(records), WAIT_S, stderr_of(daemon))
    receiver.wait_for(lambda: receiver.in_flight() == 0, WAIT_S, "the slow answers")
    daemon.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()  # asserts that duplicates carry the same records
    assert d.records == records, receiver.summary()
    assert d.duplicates == len(d.request_ids), f"each batch taken twice\n{receiver.summary()}"
    for rid in d.request_ids:
        first, second, *more = receiver.attempts_for(rid)
        assert not more and str(first.action) == "slow 2.5s" and second.action.kind == "ok", (
            receiver.summary())
        assert second.arrived - first.arrived >= 1.0 + MIN_FIRST_BACKOFF_S - 0.1, (
            f"retried {second.arrived - first.arrived:.2f}s after a request with a 1 s timeout")
    assert daemon.lake_objects() == []


def test_connection_refused_until_the_endpoint_is_back(start, receiver):
    records = make_records(random.Random(seed()), 60, "down")
    receiver.stop()
    daemon = start(http_config(receiver, retry_s=60))
    put(daemon, STREAM, records)
    time.sleep(2.5)  # the outage: the daemon's first attempts find the port closed
    assert receiver.attempts() == []
    receiver.start()
    receiver.wait_records(len(records), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()
    assert d.records == records and d.duplicates == 0, receiver.summary()
    assert daemon.lake_objects() == [], "records went to the error output within the retry duration"


# -- 4. crash and restart --------------------------------------------------------------------------

def test_kill_9_during_delivery_then_restart_resends_under_the_same_request_id(start, receiver):
    """The first request is held (8 s) and the daemon SIGKILLed while it waits; the restarted
    daemon (same data directory, same configuration) must deliver every record at least once, and
    whatever it sends again must go under the request id, and with the records, it had before."""
    s = seed()
    records = make_records(random.Random(s), 1200, "crash", size=(900, 1500))
    receiver.script(slow(8.0))
    text = http_config(receiver, request_timeout_s=30, retry_s=60)
    daemon = start(text)
    put(daemon, STREAM, records)
    receiver.wait_for(lambda: receiver.attempts() and receiver.attempts()[0].finished is None
                      and receiver.attempts()[0].action is not None, WAIT_S,
                      "the first request, held", stderr_of(daemon))
    held = receiver.attempts()[0]
    daemon.kill()
    killed_at = time.time()
    again = start(text)
    wanted = set(records)
    receiver.wait_for(lambda: wanted <= {x for b in receiver.batches() for x in b.records}, WAIT_S,
                      f"every record delivered after the restart (seed {s})", stderr_of(again))
    again.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()  # re-sent ids carried the same records
    assert set(d.records) == wanted
    ids_by_record = collections.defaultdict(set)
    records_by_id = {}
    for a in receiver.attempts():
        if a.records is None:
            continue
        assert records_by_id.setdefault(a.request_id, a.records) == a.records, (
            f"request id {a.request_id} sent with different records (seed {s})")
        for x in a.records:
            ids_by_record[x].add(a.request_id)
    twice = {x: ids for x, ids in ids_by_record.items() if len(ids) > 1}
    assert not twice, (f"{len(twice)} records sent under more than one request id, e.g. "
                       f"{next(iter(twice.values()))} (seed {s})\n{receiver.summary()}")
    resent = [a for a in receiver.attempts() if a.arrived > killed_at and a.request_id == held.request_id]
    assert resent, (f"the batch in flight at the kill ({held.request_id}) was not sent again "
                    f"under its id\n{receiver.summary()}")
    assert again.lake_objects() == []


# -- 5. backup modes -------------------------------------------------------------------------------

def test_all_data_backs_up_every_record_once(start, receiver):
    """all_data: every record, as the endpoint got it (append_delimiter: ending with a newline), is
    written once under `backup/yyyy/MM/dd/HH/`, even though each batch's first attempt failed."""
    records = make_records(random.Random(seed()), 400, "copy")
    receiver.responder = first_attempt_fails(status(500))
    daemon = start(http_config(receiver, backup_mode="all_data", processing=["append_delimiter: true"]))
    put(daemon, STREAM, records)
    receiver.wait_records(len(records), WAIT_S, stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    assert receiver.delivered().records == [x + b"\n" for x in records]
    backups = backup_objects(daemon)
    assert backups, f"no backup objects; lake: {daemon.lake_objects()}"
    for p in backups:
        m = OBJECT_NAME.match(p.name)
        assert m and m["stream"] == STREAM and m["ext"] == "", p
    got = read_objects(daemon, backups)
    assert len(got) == len(records) and collections.Counter(got) == collections.Counter(records), (
        f"backup holds {len(got)} records for {len(records)} put (each exactly once)")
    assert http_error_docs(daemon) == []
    stray = sorted(set(daemon.lake_objects()) - set(backups))
    assert stray == [], f"objects besides the backups: {stray}"


def test_failed_data_only_writes_only_error_documents(start, receiver):
    """failed_data_only with retry duration 0: a delivered batch leaves nothing in the lake; a
    batch answered 503 gets exactly one attempt and its records become error documents (here at
    an explicit error prefix); no backup object is written."""
    r = random.Random(seed())
    good = make_records(r, 50, "good")
    bad = make_records(r, 50, "bad")
    receiver.responder = lambda a: status(503) if any(x in bad for x in a.records) else None
    daemon = start(http_config(receiver, retry_s=0, backup_mode="failed_data_only",
                               error_prefix="errors/!{firehose:error-output-type}/"))
    put(daemon, STREAM, good)
    receiver.wait_records(len(good), WAIT_S, stderr_of(daemon))
    put(daemon, STREAM, bad)
    wait_until(lambda: count_error_docs(daemon, "errors/") >= len(bad), WAIT_S,
               "the error documents", stderr_of(daemon))
    daemon.stop()

    assert_no_violations(receiver)
    assert receiver.delivered().records == good
    for rid, attempts in ids_of(receiver, bad).items():
        assert len(attempts) == 1, f"retry duration 0 made {len(attempts)} attempts of {rid}"
    docs = http_error_docs(daemon, "errors/")
    assert sorted(map(raw, docs)) == sorted(bad)
    assert all(d["attemptsMade"] == 1 and d["errorCode"] == "HttpEndpoint.DestinationException"
               and "503" in d["errorMessage"] for d in docs), docs[:3]
    assert backup_objects(daemon) == [] and objects_under(daemon, "backup/") == []
    stray = [p for p in daemon.lake_objects() if not p.as_posix().startswith(f"errors/{FAILED}/")]
    assert stray == [], stray


# -- 6. configuration ------------------------------------------------------------------------------

VALID_URL = "http://127.0.0.1:9/ingest"
BOUNDARIES = dict(url="https://collector.example.com:8443/v1/ingest?token=1", endpoint_name="n" * 256,
                  access_key="k" * 4096, common_attributes={f"a{i:02d}": "v" * 1024 for i in range(50)},
                  content_encoding="gzip", buffering="{ size_mib: 64, interval_s: 0 }",
                  request_timeout_s=3600, retry_s=7200, backup_mode="all_data")

# name → (endpoint_yaml overrides, line marker (None: any line of the destination), words that
# must all be in the error)
REFUSED = {
    "size_mib 65": (dict(buffering="{ size_mib: 65, interval_s: 1 }"), "buffering:",
                    ["http_endpoint.buffering.size_mib"]),
    "size_mib 0": (dict(buffering="{ size_mib: 0, interval_s: 1 }"), "buffering:",
                   ["http_endpoint.buffering.size_mib"]),
    "interval_s 901": (dict(buffering="{ size_mib: 1, interval_s: 901 }"), "buffering:",
                       ["http_endpoint.buffering.interval_s"]),
    "duration_s 7201": (dict(retry_s=7201), "retry:", ["http_endpoint.retry.duration_s"]),
    "request_timeout_s 0": (dict(request_timeout_s=0), "request_timeout_s:",
                            ["http_endpoint.request_timeout_s"]),
    "51 common attributes": (dict(common_attributes={f"a{i:02d}": "v" for i in range(51)}),
                             "common_attributes:", ["http_endpoint.common_attributes"]),
    "attribute value 1025": (dict(common_attributes={"a": "v" * 1025}), "common_attributes:",
                             ["http_endpoint.common_attributes"]),
    "access_key 4097": (dict(access_key="k" * 4097), "access_key:", ["http_endpoint.access_key"]),
    "ftp url": (dict(url="ftp://127.0.0.1:9/ingest"), "url:", ["http_endpoint.url"]),
    "url without scheme": (dict(url="127.0.0.1:9/ingest"), "url:", ["http_endpoint.url"]),
    "url 1001 chars": (dict(url="http://127.0.0.1:9/" + "p" * 982), "url:", ["http_endpoint.url"]),
    "name 257 chars": (dict(endpoint_name="n" * 257), "name: \"n", ["http_endpoint.name"]),
    "content_encoding br": (dict(content_encoding="br"), "content_encoding:",
                            ["http_endpoint.content_encoding"]),
    "backup mode all_documents": (dict(backup_mode="all_documents"), "s3_backup_mode:",
                                  ["http_endpoint.s3_backup_mode"]),
    "unknown field": (dict(extra=["retries: 3"]), "retries:", ["http_endpoint", "retries"]),
    "missing s3 section": (dict(omit_s3=True), None, ["destination", "http_endpoint", "s3"]),
    "dynamic partitioning in s3": (dict(s3_extra=["dynamic_partitioning: { enabled: true }"]),
                                   "dynamic_partitioning:", ["http_endpoint", "dynamic_partitioning"]),
}


def test_validate_accepts_boundaries_and_refuses_out_of_range_http_endpoint_settings(tmp_path):
    def validate(name: str, overrides: dict):
        options = {"url": VALID_URL, **overrides}
        text = config_yaml(endpoint_yaml(STREAM, options.pop("url"), **options))
        cfg = tmp_path / (name.replace(" ", "-") + ".yaml")
        cfg.write_text(text)
        return text, cfg, run_validate(cfg, tmp_path)

    for name, overrides in [("minimal", dict(buffering=None, request_timeout_s=None, retry_s=None)),
                            ("boundaries", BOUNDARIES),
                            ("retry 0, interval 0, timeout 1",
                             dict(retry_s=0, request_timeout_s=1, buffering="{ size_mib: 1, interval_s: 0 }",
                                  backup_mode="failed_data_only", content_encoding="none")),
                            ("processing", dict(processing=["append_delimiter: true"]))]:
        _, _, run = validate(name, overrides)
        assert run.returncode == 0, f"{name}: refused: {run.stderr}"
    failures = []
    for name, (overrides, marker, words) in REFUSED.items():
        text, cfg, run = validate(name, overrides)
        err = run.stderr
        if run.returncode != 2:
            failures.append(f"{name}: exit {run.returncode}, want 2; stderr {err!r}")
            continue
        if marker is None:
            first = line_of(text, "destination:")
            lines = range(first, len(text.splitlines()) + 2)
        else:
            lines = [line_of(text, marker)]
        if not any(f"{cfg}:{n}:" in err for n in lines):
            failures.append(f"{name}: no {cfg}:<line {list(lines)[0]}"
                            f"{'..' + str(list(lines)[-1]) if len(lines) > 1 else ''}>: in {err.strip()!r}")
            continue
        missing = [w for w in ["delivery_streams[0]."] + words if w not in err]
        if missing:
            failures.append(f"{name}: stderr lacks {missing}: {err.strip()[:300]!r}")
    assert not failures, "\n".join(failures)


def test_config_http_endpoint_yaml_runs_as_is(receivers, tmp_path):
    """The repository's example, unchanged but for the endpoint's URL and access key."""
    rcv = receivers(access_key="example-key", common_attributes={"environment": "dev"}, gzip=True)
    daemon = Spillway(tmp_path, config=REPO_ROOT / "config" / "http_endpoint.yaml",
                      env={"SPILLWAY_HTTP_ENDPOINT_URL": rcv.url, "SPILLWAY_HTTP_ACCESS_KEY": "example-key"})
    daemon.start()
    try:
        records = [json.dumps({"n": i, "msg": "hello"}).encode() for i in range(300)]
        put(daemon, STREAM, records)
        daemon.stop()  # the drain sends what is buffered
    finally:
        daemon.kill()
    assert_no_violations(rcv)
    got = rcv.delivered().records
    assert sorted(got) == sorted(r + b"\n" for r in records), f"{len(got)} of {len(records)} delivered"
    assert daemon.lake_objects() == [], "failed_data_only and nothing failed: no objects"


def test_one_log_record_of_more_than_10000_pieces_is_sent_as_several_requests(start, receiver):
    """A batch closes only between log records, so one record that deaggregates into 25,000 goes
    past the 10,000-record limit: it is sent as several requests within the limit, the first
    with the batch's id, the others with ids derived from it (stable across retries)."""
    pieces = [json.dumps({"piece": i}).encode() for i in range(25_000)]
    daemon = start(http_config(receiver, buffering="{ size_mib: 64, interval_s: 60 }",
                               processing=["deaggregate: { type: json, max_records: 100000 }"]))
    put(daemon, STREAM, [b"".join(pieces)])
    daemon.stop()

    assert_no_violations(receiver)
    d = receiver.delivered()
    assert d.records == pieces, f"{len(d.records)} pieces delivered of {len(pieces)}, or out of order"
    assert sorted(d.batch_sizes) == [5_000, 10_000, 10_000], d.batch_sizes
    assert len(set(d.request_ids)) == 3 and d.duplicates == 0
    for rid in d.request_ids:
        uuid.UUID(rid)  # each is a GUID


def test_https_with_a_private_certificate_authority(start, receivers, tmp_path):
    """HTTPS (rustls): an endpoint whose certificate is signed by the CA in `ca_file` gets every
    record; the same endpoint without `ca_file` is refused at the TLS handshake (unknown issuer),
    and its records become error documents after the retries."""
    import ssl

    import trustme

    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "private-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    trusted = receivers(stream="trusted", ssl_context=context)
    untrusted = receivers(stream="untrusted", ssl_context=context)
    assert trusted.url.startswith("https://")
    daemon = start(config_yaml(
        http_stream(trusted, extra=[f"ca_file: {json.dumps(str(ca_file))}"]),
        http_stream(untrusted, retry_s=0)))
    records = [json.dumps({"tls": i}).encode() for i in range(50)]
    put(daemon, "trusted", records)
    put(daemon, "untrusted", records)
    trusted.wait_records(len(records), WAIT_S, stderr_of(daemon))
    wait_until(lambda: count_error_docs(daemon, stream="untrusted") >= len(records), WAIT_S,
               "error documents of the untrusted endpoint")
    daemon.stop()

    assert_no_violations(trusted)
    assert trusted.delivered().records == records
    assert untrusted.attempts() == [], "a request went through without a trusted certificate"
    docs = http_error_docs(daemon, stream="untrusted")
    assert sorted(raw(d) for d in docs) == sorted(records)
    assert {d["errorCode"] for d in docs} == {"HttpEndpoint.ConnectionFailed"}, docs[0]
    assert "certificate" in docs[0]["errorMessage"].lower(), docs[0]["errorMessage"]
