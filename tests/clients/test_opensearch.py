"""The OpenSearch destination end to end, through the real daemon: unmodified boto3 puts records,
the daemon delivers them with `_bulk` requests to ``bulk_server.BulkServer`` (an in-repo stand-in
for OpenSearch that follows its documented `_bulk` format strictly, records every request and
verifies Basic and SigV4 authentication; no OpenSearch server can be installed here), and the
server's index store and the lake's error / backup objects are read back.

- every JSON record indexed exactly once, byte for byte, under distinct ids;
- index rotation: the suffix of every period from the records' arrival time (UTC), and the US-week
  rule of one_week checked against hand-computed dates;
- no_document_id: no `_id` sent, the server's generated ids, `esDocumentId` null;
- per-item 429: only the rejected documents re-sent, with the same ids; per-item 400: to the
  `AmazonOpenSearchService-failed` error output at once, with Firehose's fields, never retried;
- whole-request failures (503, 429, 413, a malformed or short response, a closed connection, a
  timeout) retried with the same ids; constant 429 until retry.duration_s ends in the error output;
- records that are not JSON objects never reach the server; pretty-printed records are sent on one
  line;
- Basic auth (right and wrong password) and SigV4 (service es and aoss, with a session token);
- s3_backup_mode all_documents (every record once under the backup prefix) and
  failed_documents_only (error documents only);
- SIGKILL during a delivery, then a restart: every document indexed under one id only;
- `spillway validate` refusing out-of-range settings; DescribeDeliveryStream's
  AmazonopensearchserviceDestinationDescription.

Each test ends by requiring that the server saw no protocol violation. The generated data is seeded
at random per run (printed on failure); set SPILLWAY_TEST_SEED to replay a run.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import gzip
import hashlib
import http.client
import json
import random
import re
import time

import pytest

from bulk_server import BulkItem, BulkServer, SigV4Expectation
from conftest import REPO_ROOT, Spillway, run_validate, split_object
from test_format import put, seed
from test_partitioning import HOUR_DIRS, OBJECT_NAME, config_yaml, line_of, objects_under, records_under
from test_partitioning import start  # noqa: F401  (the fixture: a daemon on a config text)
from test_s3 import firehose_client

UTC = dt.timezone.utc
INDEX = "logs"
ERROR_TYPE = "AmazonOpenSearchService-failed"
ERROR_PREFIX = "errors/!{firehose:error-output-type}/"
OS_ERROR_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                   "attemptEndingTimestamp", "esDocumentId", "esIndexName", "esTypeName", "rawData"}
# OpenSearch Serverless collections (SigV4 service aoss): Firehose's os* names, no type name.
OS_SERVERLESS_ERROR_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                              "attemptEndingTimestamp", "osDocumentId", "osIndexName", "rawData"}
BASE_ERROR_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                     "attemptEndingTimestamp", "rawData"}
ROTATIONS = {"no_rotation": "NoRotation", "one_hour": "OneHour", "one_day": "OneDay",
             "one_week": "OneWeek", "one_month": "OneMonth"}
OUTCOME_TIMEOUT_S = 20.0
# Credentials the daemon signs its _bulk requests with (SigV4 tests); not the Firehose client's.
OS_ACCESS_KEY = "AKIDOPENSEARCH000001"
OS_SECRET_KEY = "opensearch-test-secret-not-a-real-one"
OS_REGION = "eu-west-3"  # not AWS_DEFAULT_REGION: the configured region must be the one signed
BASIC_USER = "spillway"
BASIC_PASSWORD = "pa:ss w0rd/+=!"  # a ':' in the password: only the first one separates


# -- the server -----------------------------------------------------------------------------------

@pytest.fixture
def bulk():
    """bulk(**kwargs) → a started BulkServer (kwargs as BulkServer's); all stopped at teardown."""
    servers: list[BulkServer] = []

    def _make(**kwargs) -> BulkServer:
        server = BulkServer(**kwargs).start()
        servers.append(server)
        return server

    yield _make
    for server in servers:
        server.stop()


def assert_clean(*servers: BulkServer) -> None:
    """No server saw a protocol violation."""
    found = [v for s in servers for v in s.violations]
    assert not found, f"{len(found)} protocol violation(s), e.g.:\n  " + "\n  ".join(found[:10])


def items_by_source(server: BulkServer) -> dict[bytes, list[BulkItem]]:
    """Source line as sent → every item that carried it, in arrival order."""
    found = collections.defaultdict(list)
    for it in server.items():
        found[it.raw].append(it)
    return found


def attempt_times(server: BulkServer) -> dict[int, float]:
    return {a.n: a.at for a in server.snapshot()}


def canon(doc) -> str:
    return json.dumps(doc, sort_keys=True, ensure_ascii=False)


def assert_store_holds(server: BulkServer, records: list[bytes], indexes: set[str], s: int) -> None:
    """The server's store holds exactly the put records (as JSON), each once, in `indexes`."""
    docs = server.documents()
    got = collections.Counter(canon(doc) for doc in docs.values())
    want = collections.Counter(canon(json.loads(r)) for r in records)
    missing, extra = want - got, got - want
    assert not missing and not extra, (
        f"store: {len(docs)} documents, {len(records)} records put; {sum(missing.values())} missing "
        f"(e.g. {list(missing)[:2]}), {sum(extra.values())} unexpected or duplicated "
        f"(e.g. {list(extra)[:2]}) (seed {s})")
    strays = sorted({index for index, _ in docs} - indexes)
    assert not strays, f"documents in index(es) {strays}, expected only {sorted(indexes)}"


def wait_until(cond, timeout: float = OUTCOME_TIMEOUT_S, step: float = 0.1) -> bool:
    """Poll `cond` until it holds or `timeout` passes; whether it held. Tests then stop the daemon
    and assert, so a timeout shows up as the assertion's detailed message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


# -- configuration --------------------------------------------------------------------------------

def opensearch_yaml(name: str, endpoint: str, *, index: str = INDEX, rotation: str | None = "no_rotation",
                    document_id: str | None = None, type_name: str | None = None,
                    buffering: str | None = "{ size_mib: 5, interval_s: 1 }",
                    request_timeout_s: int | None = 5, retry_s: int | None = 5, auth: str | None = None,
                    backup_mode: str | None = None, processing=(), prefix: str = "backup/",
                    error_prefix: str | None = ERROR_PREFIX,
                    backup_buffering: str = "{ size_mib: 1, interval_s: 1 }",
                    extra=(), s3_extra=(), shards: int = 1) -> str:
    """One delivery stream with an opensearch destination; a None setting is left out (its default
    applies). `processing` items and `extra` / `s3_extra` lines are YAML text."""
    lines = [f"  - name: {name}", f"    source: {{ direct_put: {{ shards: {shards} }} }}"]
    if processing:
        lines += ["    processing:"] + [f"      - {p}" for p in processing]
    lines += ["    destination:", "      opensearch:", f"        endpoint: {endpoint}",
              f"        index: {json.dumps(index)}"]
    settings = [("index_rotation", rotation), ("type_name", type_name), ("document_id", document_id),
                ("buffering", buffering), ("request_timeout_s", request_timeout_s),
                ("retry", None if retry_s is None else f"{{ duration_s: {retry_s} }}"),
                ("auth", auth), ("s3_backup_mode", backup_mode)]
    lines += [f"        {key}: {value}" for key, value in settings if value is not None]
    lines += [f"        {line}" for line in extra]
    lines += ["        s3:", "          url: file://${SPILLWAY_LAKE}", f"          prefix: '{prefix}'"]
    if error_prefix is not None:
        lines.append(f"          error_output_prefix: '{error_prefix}'")
    lines += [f"          buffering: {backup_buffering}", "          compression: none"]
    lines += [f"          {line}" for line in s3_extra]
    return "\n".join(lines) + "\n"


def basic_yaml(user: str, password: str) -> str:
    return f"{{ basic: {{ username: {json.dumps(user)}, password: {json.dumps(password)} }} }}"


def sigv4_yaml(region: str, service: str) -> str:
    return f"{{ sigv4: {{ region: {region}, service: {service} }} }}"


# -- records --------------------------------------------------------------------------------------

WORDS = ["alpha", "beta", "ünïcödé", "日本語のテキスト", "emoji 🚀✨", 'a "quote" and a \\ backslash',
         "tab\tinside", "an escaped\nnewline", "", "x" * 200]


def json_records(r: random.Random, n: int, tag: str, first: int = 0) -> list[bytes]:
    """`n` distinct single-line JSON objects (field `seq` from `first`), with varied spacing,
    escapes and non-ASCII text."""
    out = []
    for seq in range(first, first + n):
        obj = {"seq": seq, "tag": tag, "word": r.choice(WORDS), "n": r.randrange(-10**9, 10**9),
               "x": round(r.uniform(-1e4, 1e4), 6), "ok": r.random() < 0.5, "none": None,
               "tags": [r.choice(WORDS) for _ in range(r.randrange(4))],
               "nested": {"a": r.randrange(100), "b": [1, {"c": r.choice(WORDS)}], "d": {}}}
        if r.random() < 0.3:
            del obj["nested"]
        seps = r.choice([(",", ":"), (", ", ": ")])
        out.append(json.dumps(obj, ensure_ascii=r.random() < 0.3, separators=seps).encode())
    return out


def put_timed(daemon: Spillway, stream: str, records: list[bytes]) -> tuple[float, float]:
    """put() the records; the wall-clock window (began, ended) their arrival times fall in."""
    began = time.time()
    put(daemon, stream, records)
    return began, time.time()


# -- index rotation -------------------------------------------------------------------------------

def us_week(d: dt.date) -> int:
    """Week of the year, US style: weeks start on Sunday and week 1 is the one holding January 1 --
    also in late December, when that January 1 is the next year's (Java's ``ww`` in the US locale)."""
    sunday = d - dt.timedelta(days=(d.weekday() + 1) % 7)
    saturday = sunday + dt.timedelta(days=6)
    jan1 = dt.date(saturday.year, 1, 1)  # a week holding a January 1 ends in that January
    week1 = jan1 - dt.timedelta(days=(jan1.weekday() + 1) % 7)
    return (sunday - week1).days // 7 + 1


def index_suffix(rotation: str, when: float | dt.datetime) -> str:
    """The index name suffix for an arrival time (epoch seconds or an aware datetime), in UTC."""
    t = when if isinstance(when, dt.datetime) else dt.datetime.fromtimestamp(when, UTC)
    t = t.astimezone(UTC)
    if rotation == "no_rotation":
        return ""
    if rotation == "one_hour":
        return t.strftime("-%Y-%m-%d-%H")
    if rotation == "one_day":
        return t.strftime("-%Y-%m-%d")
    if rotation == "one_week":
        return f"-{t.year:04d}-w{us_week(t.date()):02d}"  # yyyy: the calendar year
    if rotation == "one_month":
        return t.strftime("-%Y-%m")
    raise ValueError(rotation)


def suffixes_between(rotation: str, began: float, ended: float, slack_s: float = 1.0) -> set[str]:
    """The suffixes an arrival time in [began, ended] (± slack) can have. The window is far shorter
    than an hour, so it holds at most one boundary: either end's suffix."""
    return {index_suffix(rotation, began - slack_s), index_suffix(rotation, ended + slack_s)}


def test_index_suffix_rule_matches_hand_computed_dates():
    def at(text: str) -> dt.datetime:
        return dt.datetime.fromisoformat(text).replace(tzinfo=UTC)

    weeks = {
        "2024-01-01T00:00:00": "-2024-w01",  # Monday; the week began on Sunday 2023-12-31
        "2024-01-06T23:59:59": "-2024-w01",  # Saturday
        "2024-01-07T00:00:00": "-2024-w02",  # Sunday starts week 2
        "2024-02-29T12:00:00": "-2024-w09",
        "2024-12-28T23:59:59": "-2024-w52",  # Saturday
        "2024-12-29T00:00:00": "-2024-w01",  # Sunday of the week holding 2025-01-01; calendar yyyy
        "2024-12-31T12:00:00": "-2024-w01",
        "2025-01-01T00:00:00": "-2025-w01",
        "2023-01-01T00:00:00": "-2023-w01",  # a Sunday January 1
        "2022-12-31T23:59:59": "-2022-w53",  # 2022 began on a Saturday: its week 1 began 2021-12-26
        "2021-01-02T00:00:00": "-2021-w01",  # Saturday; 2021-01-01 was a Friday
        "2021-01-03T00:00:00": "-2021-w02",
        "2020-12-31T00:00:00": "-2020-w01",  # Thursday, in the week holding 2021-01-01
    }
    for text, want in weeks.items():
        assert index_suffix("one_week", at(text)) == want, text
    t = at("2024-03-10T14:05:09")
    assert [index_suffix(p, t) for p in ROTATIONS] == [
        "", "-2024-03-10-14", "-2024-03-10", "-2024-w11", "-2024-03"]
    # UTC, whatever the offset of the time given.
    local = dt.datetime(2024, 3, 10, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert index_suffix("one_hour", local) == "-2024-03-11-04"
    assert index_suffix("one_day", 1710028800.0) == "-2024-03-10"  # 2024-03-10T00:00:00Z
    assert index_suffix("one_day", 1710028799.999) == "-2024-03-09"
    # Against strftime's %U (Sunday weeks, days before the first Sunday in week 0): the same numbering
    # shifted by one unless January 1 is a Sunday, except in the last days of December that already
    # belong to the week holding the next January 1.
    d = dt.date(2000, 1, 1)
    while d < dt.date(2036, 1, 1):
        saturday = d + dt.timedelta(days=(5 - d.weekday()) % 7)
        if saturday.year > d.year:
            assert us_week(d) == 1, d
        else:
            offset = 0 if dt.date(d.year, 1, 1).weekday() == 6 else 1
            assert us_week(d) == int(d.strftime("%U")) + offset, d
        d += dt.timedelta(days=1)


# -- reading the lake -----------------------------------------------------------------------------

def raw_data(doc: dict) -> bytes:
    return base64.b64decode(doc["rawData"], validate=True)


def os_error_docs(daemon: Spillway, top: str = "errors/", stream: str = "events",
                  serverless: bool = False) -> list[dict]:
    """The AmazonOpenSearchService-failed documents under `<top>AmazonOpenSearchService-failed/`,
    each object checked for its place and name and each document for Firehose's fields (those of
    a Serverless collection with `serverless`)."""
    es = "os" if serverless else "es"
    base = f"{top}{ERROR_TYPE}"
    docs = []
    for p in objects_under(daemon, base + "/"):
        hour = p.parent.as_posix()[len(base) + 1:]
        assert HOUR_DIRS.match(hour), f"error object {p} is not under {base}/yyyy/MM/dd/HH/"
        name = OBJECT_NAME.match(p.name)
        assert name and name["stream"] == stream and name["ext"] == "", f"error object name {p.name!r}"
        for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
            doc = json.loads(line)
            want = OS_SERVERLESS_ERROR_FIELDS if serverless else OS_ERROR_FIELDS
            assert set(doc) == want, f"{p}: fields {sorted(doc)}"
            assert isinstance(doc["attemptsMade"], int) and doc["attemptsMade"] >= 1, doc
            assert isinstance(doc["errorCode"], str) and doc["errorCode"], doc
            assert isinstance(doc["errorMessage"], str) and doc["errorMessage"], doc
            assert isinstance(doc[f"{es}IndexName"], str), doc
            assert serverless or isinstance(doc["esTypeName"], str), doc
            assert doc[f"{es}DocumentId"] is None or isinstance(doc[f"{es}DocumentId"], str), doc
            assert doc["attemptEndingTimestamp"] >= doc["arrivalTimestamp"], doc
            raw_data(doc)
            docs.append(doc)
    return docs


def error_count(daemon: Spillway, top: str = "errors/") -> int:
    return len(records_under(daemon, f"{top}{ERROR_TYPE}/"))


def describe_opensearch(daemon: Spillway, stream: str) -> dict:
    d = firehose_client(daemon).describe_delivery_stream(DeliveryStreamName=stream)
    dest = d["DeliveryStreamDescription"]["Destinations"][0]
    assert "AmazonopensearchserviceDestinationDescription" in dest, dest
    return dest["AmazonopensearchserviceDestinationDescription"]


# -- 0. the server itself, without the daemon -----------------------------------------------------

def ndjson(pairs) -> bytes:
    """A _bulk body from (index metadata, source dict) pairs."""
    return b"".join(json.dumps({"index": meta}).encode() + b"\n" + json.dumps(src).encode() + b"\n"
                    for meta, src in pairs)


def post(server: BulkServer, body: bytes, headers: dict | None = None, *, path: str = "/_bulk",
         method: str = "POST", chunked: bool = False):
    """(status, JSON body or raw bytes, response headers) of one request on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        sent = {"Content-Type": "application/x-ndjson", **(headers or {})}
        if chunked:
            parts = [body[:len(body) // 2], body[len(body) // 2:]]
            conn.request(method, path, body=iter(parts), headers=sent, encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        data = resp.read()
        try:
            decoded = json.loads(data)
        except ValueError:
            decoded = data
        return resp.status, decoded, dict(resp.getheaders())
    finally:
        conn.close()


def sigv4_signed(url: str, body: bytes, *, key: str, secret: str, region: str, service: str,
                 token: str | None = None, payload_sha: str | None = None) -> dict:
    """Headers of a POST <url>/_bulk signed by botocore, as an AWS SDK would sign it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    req = AWSRequest(method="POST", url=url + "/_bulk", data=body, headers={
        "Content-Type": "application/x-ndjson",
        "X-Amz-Content-Sha256": payload_sha or hashlib.sha256(body).hexdigest()})
    SigV4Auth(Credentials(key, secret, token), service, region).add_auth(req)
    return dict(req.headers.items())


def test_bulk_server_follows_the_format(bulk):
    # 1. A good request: explicit ids, a generated one, a _type; then an update.
    server = bulk()
    good = ndjson([({"_index": "logs-2024", "_id": "a"}, {"n": 1}),
                   ({"_index": "logs-2024"}, {"n": 2, "s": "ü 日本"}),
                   ({"_index": "other", "_id": "b", "_type": "_doc"}, {"n": 3})])
    status, resp, headers = post(server, good)
    assert status == 200 and headers["Content-Type"].startswith("application/json"), resp
    assert resp["errors"] is False and isinstance(resp["took"], int) and len(resp["items"]) == 3
    items = [i["index"] for i in resp["items"]]
    assert [(i["_index"], i["result"], i["status"], i["_version"]) for i in items] == [
        ("logs-2024", "created", 201, 1), ("logs-2024", "created", 201, 1), ("other", "created", 201, 1)]
    assert items[0]["_id"] == "a" and items[2]["_id"] == "b" and items[2]["_type"] == "_doc"
    assert "_type" not in items[0] and all(i["_shards"]["successful"] == 1 for i in items)
    generated = items[1]["_id"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{20}", generated), generated
    assert server.documents() == {("logs-2024", "a"): {"n": 1},
                                  ("logs-2024", generated): {"n": 2, "s": "ü 日本"},
                                  ("other", "b"): {"n": 3}}
    status, resp, _ = post(server, ndjson([({"_index": "logs-2024", "_id": "a"}, {"n": 10})]),
                           chunked=True)
    assert status == 200 and resp["items"][0]["index"]["result"] == "updated", resp
    assert resp["items"][0]["index"]["status"] == 200 and resp["items"][0]["index"]["_version"] == 2
    status, resp, _ = post(server, gzip.compress(ndjson([({"_index": "z"}, {"gz": True})])),
                           {"Content-Encoding": "gzip"})
    assert status == 200 and resp["items"][0]["index"]["status"] == 201, resp
    attempts = server.snapshot()
    assert [a.n for a in attempts] == [1, 2, 3] and attempts[0].ids() == ["a", None, "b"]
    assert attempts[1].items[0].try_no == 2 and attempts[1].items[0].id == "a"
    assert attempts[0].items[1].assigned_id == generated and attempts[0].headers["content-type"] == (
        "application/x-ndjson")
    assert server.versions[("logs-2024", "a")] == 2
    assert_clean(server)

    # 2. Protocol violations: answered 400 as a whole, recorded, nothing applied.
    before = server.documents()
    bad = {
        "no trailing newline": (good[:-1], {}),
        "no _index": (b'{"index":{"_id":"x"}}\n{"n":1}\n', {}),
        "create action": (b'{"create":{"_index":"i","_id":"x"}}\n{"n":1}\n', {}),
        "source not an object": (b'{"index":{"_index":"i"}}\n[1,2]\n', {}),
        "source over two lines": (b'{"index":{"_index":"i"}}\n{"n":\n1}\n', {}),
        "carriage returns": (b'{"index":{"_index":"i"}}\r\n{"n":1}\r\n', {}),
        "upper-case index": (b'{"index":{"_index":"Logs"}}\n{"n":1}\n', {}),
        "unexpected metadata": (b'{"index":{"_index":"i","pipeline":"p"}}\n{"n":1}\n', {}),
        "NaN": (b'{"index":{"_index":"i"}}\n{"n":NaN}\n', {}),
        "not UTF-8": (b'{"index":{"_index":"i"}}\n{"n":"\xff"}\n', {}),
        "empty line": (b'{"index":{"_index":"i"}}\n\n', {}),
        "empty body": (b"", {}),
        "wrong content type": (good, {"Content-Type": "application/json"}),
    }
    for name, (body, extra) in bad.items():
        seen = len(server.violations)
        status, resp, _ = post(server, body, extra)
        assert status == 400 and resp["error"]["type"] == "illegal_argument_exception", (name, resp)
        assert len(server.violations) > seen, f"{name}: no violation recorded"
    seen = len(server.violations)
    status, _, _ = post(server, b"", method="GET", path="/")
    assert status == 400 and len(server.violations) == seen + 1
    status, _, _ = post(server, good, path="/_bulk?refresh=true")
    assert status == 400 and len(server.violations) == seen + 2
    assert server.documents() == before
    assert any("carriage return" in v for v in server.violations), server.violations

    # 3. Per-item faults: only the failed items are not applied; the statuses in request order.
    server = bulk()
    server.item_fault = lambda it: {1: 429, 2: 400, 3: 500}.get(it.source["n"]) if it.try_no == 1 else None
    body = ndjson([({"_index": "i", "_id": f"d{n}"}, {"n": n}) for n in range(5)])
    status, resp, _ = post(server, body)
    assert status == 200 and resp["errors"] is True, resp
    items = [i["index"] for i in resp["items"]]
    assert [i["status"] for i in items] == [201, 429, 400, 500, 201]
    assert [i["_id"] for i in items] == [f"d{n}" for n in range(5)]
    assert [i.get("error", {}).get("type") for i in items] == [
        None, "es_rejected_execution_exception", "mapper_parsing_exception", "exception", None]
    assert all("result" not in i and i["error"]["reason"] for i in items[1:4])
    assert sorted(server.documents()) == [("i", "d0"), ("i", "d4")]
    status, resp, _ = post(server, body)
    assert [i["index"]["status"] for i in resp["items"]] == [200, 201, 201, 201, 200], resp
    assert resp["errors"] is False and server.count() == 5
    assert [it.try_no for it in server.snapshot()[1].items] == [2] * 5
    assert_clean(server)

    # 4. Whole-request faults, one per request in order.
    server = bulk(slow_s=0.3)
    faults = [503, 429, 413, "malformed", "short_items", "close", "slow", "close_after"]
    server.request_faults = list(faults)
    two = ndjson([({"_index": "w", "_id": "x"}, {"n": 1}), ({"_index": "w", "_id": "y"}, {"n": 2})])
    for code, etype in [(503, "cluster_block_exception"), (429, "es_rejected_execution_exception"),
                        (413, "content_too_long_exception")]:
        status, resp, _ = post(server, two)
        assert status == code and resp["status"] == code and resp["error"]["type"] == etype, resp
    status, resp, _ = post(server, two)
    assert status == 200 and isinstance(resp, bytes), resp  # "malformed": not JSON
    status, resp, _ = post(server, two)
    assert status == 200 and len(resp["items"]) == 1, resp  # "short_items"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        post(server, two)  # "close"
    assert server.count() == 0
    began = time.monotonic()
    status, resp, _ = post(server, two)  # "slow": late, but applied
    assert status == 200 and time.monotonic() - began >= 0.3 and resp["took"] >= 300, resp
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
        post(server, ndjson([({"_index": "w", "_id": "z"}, {"n": 3})]))  # "close_after": applied
    assert sorted(server.documents()) == [("w", "x"), ("w", "y"), ("w", "z")]
    attempts = server.snapshot()
    assert [a.fault for a in attempts] == faults
    assert [a.status for a in attempts] == [503, 429, 413, 200, 200, None, 200, None]
    assert [a.applied for a in attempts] == [False] * 6 + [True, True]
    assert wait_until(server.idle, 5) and server.request_faults == []
    server.request_fault = lambda n: 503 if n % 2 else None
    assert [post(server, two)[0] for _ in range(2)] == [503, 200]  # attempts 9 and 10
    assert_clean(server)

    # 5. Basic auth.
    server = bulk(basic_auth=(BASIC_USER, BASIC_PASSWORD))

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    one = ndjson([({"_index": "b", "_id": "1"}, {"n": 1})])
    assert post(server, one, basic(BASIC_USER, BASIC_PASSWORD))[0] == 200
    status, body, headers = post(server, one, basic(BASIC_USER, "wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic"), body
    assert post(server, one)[0] == 401
    assert server.auth_failures == [2, 3] and server.count() == 1
    assert_clean(server)
    assert post(server, one, {"Authorization": "Basic %%%not-base64"})[0] == 401
    assert len(server.violations) == 1 and "malformed Basic" in server.violations[0]

    # 6. SigV4, verified by recomputing the signature.
    signer = dict(key=OS_ACCESS_KEY, secret=OS_SECRET_KEY, region=OS_REGION, service="es")
    server = bulk(sigv4=SigV4Expectation(OS_ACCESS_KEY, OS_SECRET_KEY, OS_REGION, "es"))
    status, resp, _ = post(server, one, sigv4_signed(server.url, one, **signer))
    assert status == 200, (resp, server.violations)
    assert_clean(server)
    refused = {
        "wrong secret": (one, sigv4_signed(server.url, one, **{**signer, "secret": "other"}), "signature"),
        "wrong region": (one, sigv4_signed(server.url, one, **{**signer, "region": "us-east-1"}),
                         "credential scope"),
        "wrong service": (one, sigv4_signed(server.url, one, **{**signer, "service": "aoss"}),
                          "credential scope"),
        "body changed after signing": (one.replace(b"1", b"2"), sigv4_signed(server.url, one, **signer),
                                       "X-Amz-Content-Sha256"),
        "payload hash of another body": (one, sigv4_signed(server.url, one, **signer,
                                                           payload_sha=hashlib.sha256(b"x").hexdigest()),
                                         "X-Amz-Content-Sha256"),
        "unsigned": (one, {}, "no Authorization"),
        "unexpected session token": (one, sigv4_signed(server.url, one, **signer, token="t"),
                                     "X-Amz-Security-Token"),
    }
    for name, (body, headers, why) in refused.items():
        seen = len(server.violations)
        status, _, _ = post(server, body, headers)
        assert status == 403, name
        assert len(server.violations) == seen + 1 and why in server.violations[-1], (
            name, server.violations[seen:])
    assert server.count() == 1
    server = bulk(sigv4=SigV4Expectation(OS_ACCESS_KEY, OS_SECRET_KEY, OS_REGION, "aoss", "tok/en+="))
    aoss = {**signer, "service": "aoss"}
    assert post(server, one, sigv4_signed(server.url, one, **aoss, token="tok/en+="))[0] == 200
    assert_clean(server)
    assert post(server, one, sigv4_signed(server.url, one, **aoss))[0] == 403
    assert "X-Amz-Security-Token" in server.violations[-1]


# -- 1. every record indexed once ------------------------------------------------------------------

def test_every_json_record_is_indexed_once_with_distinct_ids(start, bulk):
    s = seed()
    server = bulk()
    records = json_records(random.Random(s), 600, "once")
    daemon = start(config_yaml(opensearch_yaml("events", server.url, rotation="one_day")))
    began, _ = put_timed(daemon, "events", records[:300])
    _, ended = put_timed(daemon, "events", records[300:])
    wait_until(lambda: server.count() >= len(records))
    daemon.stop()

    indexes = {INDEX + sfx for sfx in suffixes_between("one_day", began, ended)}
    assert_store_holds(server, records, indexes, s)
    items = server.items()
    assert sorted(it.raw for it in items) == sorted(records), (
        f"the source lines sent are not the records put, each once, byte for byte (seed {s})")
    ids = [it.id for it in items]
    assert all(ids) and len(set(ids)) == len(ids), f"ids not distinct or missing: {ids[:5]}"
    assert all(v == 1 for v in server.versions.values()), "a document was indexed twice"
    assert all(it.type is None for it in items), "_type sent although type_name is unset"
    assert daemon.lake_objects() == [], "no failure, failed_documents_only: the lake stays empty"
    assert_clean(server)


# -- 2. index rotation ---------------------------------------------------------------------------

def test_index_rotation_suffix_follows_the_arrival_time(start, bulk):
    s = seed()
    r = random.Random(s)
    server = bulk()
    streams = {p: f"rot-{p.replace('_', '-')}" for p in ROTATIONS}  # stream name = index name
    daemon = start(config_yaml(*(opensearch_yaml(name, server.url, index=name, rotation=p)
                                 for p, name in streams.items())))
    for p, name in streams.items():
        assert describe_opensearch(daemon, name)["IndexRotationPeriod"] == ROTATIONS[p]
    windows, records = {}, {}
    for p, name in streams.items():
        records[p] = json_records(r, 40, name)
        windows[p] = put_timed(daemon, name, records[p])
    wait_until(lambda: server.count() >= 40 * len(streams))
    daemon.stop()

    by_tag = collections.defaultdict(list)
    for it in server.items():
        by_tag[it.source["tag"]].append(it)
    for p, name in streams.items():
        allowed = {name + sfx for sfx in suffixes_between(p, *windows[p])}
        got = collections.Counter(it.index for it in by_tag[name])
        assert set(got) <= allowed and sum(got.values()) == 40, (
            f"{p}: documents sent to {dict(got)}, expected {sorted(allowed)} (put between "
            f"{dt.datetime.fromtimestamp(windows[p][0], UTC)} and "
            f"{dt.datetime.fromtimestamp(windows[p][1], UTC)})")
        stored = {canon(doc) for (index, _), doc in server.documents().items() if index in allowed}
        assert stored == {canon(json.loads(rec)) for rec in records[p]}, f"{p} (seed {s})"
    assert_clean(server)


# -- 3. no_document_id -----------------------------------------------------------------------------

def test_no_document_id_lets_the_server_generate_ids(start, bulk):
    s = seed()
    records = json_records(random.Random(s), 200, "noid")
    failing = {records[i] for i in (3, 77, 150)}
    server = bulk()
    server.item_fault = lambda it: 400 if it.raw in failing else None
    daemon = start(config_yaml(opensearch_yaml("events", server.url, document_id="no_document_id")))
    assert describe_opensearch(daemon, "events")["DocumentIdOptions"] == {
        "DefaultDocumentIdFormat": "NO_DOCUMENT_ID"}
    put(daemon, "events", records)
    wait_until(lambda: server.count() >= len(records) - len(failing) and error_count(daemon) >= len(failing))
    daemon.stop()

    items = server.items()
    assert all(it.id is None for it in items), "an _id was sent with no_document_id"
    good = [rec for rec in records if rec not in failing]
    assert_store_holds(server, good, {INDEX}, s)
    stored_ids = [doc_id for _, doc_id in server.documents()]
    assert sorted(stored_ids) == sorted(it.assigned_id for it in items if it.status in (200, 201))
    docs = os_error_docs(daemon)
    assert sorted(raw_data(d) for d in docs) == sorted(failing)
    for d in docs:
        assert d["esDocumentId"] is None and d["esTypeName"] == "" and d["esIndexName"] == INDEX, d
        assert d["errorCode"] == "400" and d["attemptsMade"] == 1, d
    assert_clean(server)


# -- 4. per-item failures --------------------------------------------------------------------------

@pytest.mark.parametrize("status", [429, 500, 503])
def test_item_429_and_5xx_resend_only_the_rejected_documents_with_their_ids(start, bulk, status):
    s = seed()
    r = random.Random(s)
    records = json_records(r, 300, f"item{status}")
    rejected = set(r.sample(records, 60))
    server = bulk()
    server.item_fault = lambda it: status if it.try_no == 1 and it.raw in rejected else None
    daemon = start(config_yaml(opensearch_yaml("events", server.url)))
    put(daemon, "events", records)
    wait_until(lambda: server.count() >= len(records))
    daemon.stop()

    assert_store_holds(server, records, {INDEX}, s)
    sent = items_by_source(server)
    assert set(sent) == set(records)
    for rec, its in sent.items():
        tries = [(it.status, it.id, it.index) for it in its]
        if rec in rejected:
            assert [t[0] for t in tries] == [status, 201] and len({t[1:] for t in tries}) == 1, (
                f"rejected document {rec[:60]!r}: {tries} (want {status} then 201 under one id) (seed {s})")
        else:
            assert [t[0] for t in tries] == [201], f"accepted document re-sent: {tries} (seed {s})"
    retries = [a for a in server.snapshot() if any(it.try_no > 1 for it in a.items)]
    assert retries, "no retry request"
    assert all(it.try_no > 1 for a in retries for it in a.items), (
        "a retry request also held documents that had been accepted")
    assert sorted(it.raw for a in retries for it in a.items) == sorted(rejected), (
        "the retries do not hold exactly the rejected documents")
    assert all(v == 1 for v in server.versions.values())
    assert daemon.lake_objects() == []
    assert_clean(server)


def test_item_400_goes_to_the_error_output_at_once(start, bulk):
    """A permanent item failure: never retried; an error document with the spec's fields, under the
    default error prefix (<s3.prefix>AmazonOpenSearchService-failed/yyyy/MM/dd/HH/); with the default
    s3_backup_mode (failed_documents_only) nothing else is written."""
    s = seed()
    r = random.Random(s)
    records = json_records(r, 200, "item400")
    refused = set(r.sample(records, 15))
    server = bulk()
    server.item_fault = lambda it: 400 if it.raw in refused else None
    daemon = start(config_yaml(opensearch_yaml("events", server.url, rotation="one_hour",
                                               type_name="_doc", error_prefix=None)))
    began, ended = put_timed(daemon, "events", records)
    wait_until(lambda: server.count() >= len(records) - len(refused)
               and error_count(daemon, "backup/") >= len(refused))
    daemon.stop()
    done = time.time()

    assert_store_holds(server, [rec for rec in records if rec not in refused],
                       {INDEX + sfx for sfx in suffixes_between("one_hour", began, ended)}, s)
    sent = items_by_source(server)
    assert all(len(its) == 1 for its in sent.values()), "a document was sent more than once"
    assert all(it.type == "_doc" for its in sent.values() for it in its), "_type _doc not sent"
    docs = os_error_docs(daemon, top="backup/")
    assert sorted(raw_data(d) for d in docs) == sorted(refused), f"seed {s}"
    for d in docs:
        it = sent[raw_data(d)][0]
        assert it.status == 400 and d["errorCode"] == "400", d
        assert json.loads(d["errorMessage"]) == it.error, (d["errorMessage"], it.error)
        assert d["esDocumentId"] == it.id and d["esTypeName"] == "_doc", d
        assert d["esIndexName"] == it.index == INDEX + index_suffix("one_hour", d["arrivalTimestamp"] / 1000), d
        assert d["attemptsMade"] == 1, d
        assert (began - 1) * 1000 <= d["arrivalTimestamp"] <= (ended + 1) * 1000, d
        assert d["attemptEndingTimestamp"] <= (done + 1) * 1000, d
    others = [p for p in daemon.lake_objects()
              if not p.as_posix().startswith(f"backup/{ERROR_TYPE}/")]
    assert others == [], f"objects besides the error documents: {others}"
    assert_clean(server)


# -- 5. whole-request failures ---------------------------------------------------------------------

WHOLE_REQUEST_FAULTS = [503, 429, "malformed", "short_items", "close", "close_after", "slow"]


def test_whole_request_failures_are_retried_with_the_same_ids(start, bulk):
    """Each fault on the first request of its own stream (and server); everything is delivered on
    a later attempt, every document under one id. "slow" answers after the request timeout (1 s),
    "close_after" never answers: both took effect, so the re-sent documents replace themselves."""
    s = seed()
    r = random.Random(s)
    cases = {}
    for fault in WHOLE_REQUEST_FAULTS:
        name = f"whole-{str(fault).replace('_', '-')}"
        server = bulk(slow_s=2.5)
        server.request_faults = [fault]
        cases[name] = (fault, server, json_records(r, 50, name))
    daemon = start(config_yaml(*(
        opensearch_yaml(name, server.url, index=name, request_timeout_s=1 if fault == "slow" else 5,
                        prefix=f"backup-{name}/",
                        error_prefix=f"errors-{name}/!{{firehose:error-output-type}}/")
        for name, (fault, server, _) in cases.items())))
    for name, (_, _, records) in cases.items():
        put(daemon, name, records)
    wait_until(lambda: all(server.count() >= len(records) and server.idle()
                           for _, server, records in cases.values()))
    daemon.stop()

    for name, (fault, server, records) in cases.items():
        assert_store_holds(server, records, {name}, s)
        attempts = server.snapshot()
        assert attempts[0].fault == fault and len(attempts) >= 2, (name, [a.fault for a in attempts])
        first = set(attempts[0].sources())
        resent = {src for a in attempts[1:] for src in a.sources()}
        assert first <= resent, f"{name}: {len(first - resent)} documents of the failed request not re-sent"
        for src, its in items_by_source(server).items():
            assert len({(it.index, it.id) for it in its}) == 1, (
                f"{name}: one document sent under several ids: {[(it.index, it.id) for it in its]}")
        assert max(server.versions.values()) <= 2, name
        assert not objects_under(daemon, f"errors-{name}/"), f"{name}: error output written"
        assert_clean(server)


@pytest.mark.parametrize("status", [400, 413])
def test_a_request_refused_as_malformed_or_too_large_is_sent_again_in_halves(start, bulk, status):
    """Sending the same body again cannot help, so the batch goes again at once (no backoff) in
    requests of at most half the size; here they are taken and everything is indexed once."""
    s = seed()
    records = json_records(random.Random(s), 40, f"half{status}")
    server = bulk()
    server.request_faults = [status]
    daemon = start(config_yaml(opensearch_yaml("events", server.url, retry_s=60)))
    put(daemon, "events", records)
    wait_until(lambda: server.count() >= len(records))
    daemon.stop()

    assert_store_holds(server, records, {INDEX}, s)
    attempts = server.snapshot()
    assert attempts[0].fault == status and len(attempts[0].items) == len(records), (
        [(a.fault, len(a.items)) for a in attempts])
    halves = attempts[1:]
    # Requests of at most half the bytes each (greedy packing: two or three of them).
    assert len(halves) in (2, 3) and sum(len(a.items) for a in halves) == len(records), (
        [(a.fault, len(a.items)) for a in attempts])
    assert all(len(a.body) <= len(attempts[0].body) / 2 + 1 for a in halves)
    assert halves[0].at - attempts[0].at < 0.8, "the halves waited for a backoff"
    assert error_count(daemon) == 0
    assert_clean(server)


def all_to_errors(start, bulk, tag: str, n: int, retry_s: int, **faults):
    """Puts `n` records through one stream whose server has `faults` (its attributes, e.g.
    item_fault) until every record is in the error output; (seed, records, server, daemon)."""
    s = seed()
    records = json_records(random.Random(s), n, tag)
    server = bulk()
    for name, fault in faults.items():
        setattr(server, name, fault)
    daemon = start(config_yaml(opensearch_yaml("events", server.url, retry_s=retry_s)))
    put(daemon, "events", records)
    wait_until(lambda: error_count(daemon) >= len(records))
    daemon.stop()
    return s, records, server, daemon


def test_a_request_refused_as_too_large_down_to_single_documents_fails_them(start, bulk):
    """A cluster that refuses every request: halving reaches single documents, and each is then
    an error document with the 413 and its attempts; none waits for a backoff."""
    s, records, server, daemon = all_to_errors(start, bulk, "always413", 12, 60,
                                               request_fault=lambda n: 413)

    attempts = server.snapshot()
    assert server.count() == 0 and all(a.fault == 413 for a in attempts)
    singles = collections.Counter(a.sources()[0] for a in attempts if len(a.items) == 1)
    assert sorted(singles) == sorted(records) and set(singles.values()) == {1}, (
        [len(a.items) for a in attempts])
    assert attempts[-1].at - attempts[0].at < 5, "a halving round waited for a backoff"
    docs = os_error_docs(daemon)
    assert sorted(raw_data(d) for d in docs) == sorted(records), f"seed {s}"
    for d in docs:
        assert d["errorCode"] == "413" and d["attemptsMade"] >= 2, d
        assert "failed with 413" in d["errorMessage"], d
    assert_clean(server)


def test_a_zero_retry_duration_makes_one_attempt(start, bulk):
    s, records, server, daemon = all_to_errors(start, bulk, "retry0", 30, 0,
                                               item_fault=lambda it: 429)

    assert len(server.snapshot()) == 1
    docs = os_error_docs(daemon)
    assert sorted(raw_data(d) for d in docs) == sorted(records), f"seed {s}"
    assert all(d["attemptsMade"] == 1 and d["errorCode"] == "429" for d in docs)
    assert_clean(server)


def test_constant_429_ends_in_the_error_output_when_retries_run_out(start, bulk):
    """retry.duration_s 2: attempts at ~0 s and ~1 s (backoff 1 s ±15 %), none after 2 s; then every
    document is an error document, with as many attempts as the server saw."""
    s = seed()
    r = random.Random(s)
    whole, item = bulk(), bulk()
    whole.request_fault = lambda n: 429
    item.item_fault = lambda it: 429
    cases = {"always-request": whole, "always-item": item}
    records = {name: json_records(r, 80, name) for name in cases}
    daemon = start(config_yaml(*(
        opensearch_yaml(name, server.url, retry_s=2, prefix=f"backup-{name}/",
                        error_prefix=f"errors-{name}/!{{firehose:error-output-type}}/")
        for name, server in cases.items())))
    for name in cases:
        put(daemon, name, records[name])
    wait_until(lambda: all(error_count(daemon, f"errors-{name}/") >= len(records[name]) for name in cases))
    daemon.stop()

    for name, server in cases.items():
        assert server.count() == 0
        docs = os_error_docs(daemon, top=f"errors-{name}/", stream=name)
        assert sorted(raw_data(d) for d in docs) == sorted(records[name]), f"{name} (seed {s})"
        sent, times = items_by_source(server), attempt_times(server)
        for d in docs:
            its = sent[raw_data(d)]
            assert d["attemptsMade"] == len(its) >= 2, (name, d["attemptsMade"], len(its))
            assert len({(it.index, it.id) for it in its}) == 1, name
            assert d["esDocumentId"] == its[0].id and d["esIndexName"] == its[0].index == INDEX, d
            assert d["esTypeName"] == "", d
            span = times[its[-1].attempt] - times[its[0].attempt]
            assert span < 2.5, f"{name}: an attempt began {span:.2f}s after the first (retry 2 s)"
            if server is item:
                assert d["errorCode"] == "429", d
                assert json.loads(d["errorMessage"]) == its[-1].error, d
            else:
                assert d["errorCode"] == "429" or d["errorCode"].startswith("OpenSearch."), d
        assert_clean(server)


# -- 6. record shapes -----------------------------------------------------------------------------

NOT_JSON_OBJECTS = [b"not json", b"", b"[1, 2, 3]", b'"a string"', b"42", b"null", b"true",
                    b'{"a": 1', b'{"a": 1}{"b": 2}', b'{"a": 1}\n{"b": 2}\n', b'{"n": NaN}',
                    b'\xff\xfe{"a": 1}', b'{"s": "\xc3"}', b"{'single': 'quotes'}"]


def test_records_that_are_not_json_objects_never_reach_the_server(start, bulk):
    s = seed()
    good = json_records(random.Random(s), 60, "shapes")
    server = bulk()
    daemon = start(config_yaml(opensearch_yaml("events", server.url)))
    mixed = good[:30] + NOT_JSON_OBJECTS + good[30:]
    put(daemon, "events", mixed)

    def error_raws() -> list[bytes]:
        out = []
        for p in objects_under(daemon, "errors/"):
            out += [raw_data(json.loads(line)) for line in
                    split_object((daemon.lake_dir / p).read_bytes(), p.as_posix())]
        return out

    wait_until(lambda: server.count() >= len(good) and len(error_raws()) >= len(NOT_JSON_OBJECTS))
    daemon.stop()

    assert_store_holds(server, good, {INDEX}, s)
    assert sorted(it.raw for it in server.items()) == sorted(good), "a non-object reached the server"
    assert sorted(error_raws()) == sorted(NOT_JSON_OBJECTS), "each refused record once in the errors"
    for p in objects_under(daemon, "errors/"):
        kind = p.relative_to("errors").parts[0]
        for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
            doc = json.loads(line)
            want = OS_ERROR_FIELDS if kind == ERROR_TYPE else BASE_ERROR_FIELDS
            assert want <= set(doc), f"{p}: fields {sorted(doc)}"
            assert doc["errorCode"] and doc["errorMessage"], doc
    assert_clean(server)


def test_pretty_printed_records_are_sent_on_one_line(start, bulk):
    s = seed()
    r = random.Random(s)
    records = []
    for i, rec in enumerate(json_records(r, 80, "pretty")):
        text = json.dumps(json.loads(rec), indent=r.choice([1, 2, 4, "\t"]), ensure_ascii=False)
        if i % 3 == 0:
            text = text.replace("\n", "\r\n")
        if i % 4 == 0:
            text = "\n  " + text + "\n"
        records.append(text.encode())
    assert all(b"\n" in rec for rec in records)
    server = bulk()
    daemon = start(config_yaml(opensearch_yaml("events", server.url)))
    put(daemon, "events", records)
    wait_until(lambda: server.count() >= len(records))
    daemon.stop()

    assert_store_holds(server, records, {INDEX}, s)
    for it in server.items():
        assert b"\n" not in it.raw and b"\r" not in it.raw, it.raw[:80]
    sent = sorted(canon(it.source) for it in server.items())
    assert sent == sorted(canon(json.loads(rec)) for rec in records), f"seed {s}"
    assert_clean(server)  # includes: every source line one JSON object, no CR


# -- 7. authentication -----------------------------------------------------------------------------

def test_basic_auth_right_is_indexed_and_wrong_ends_in_the_error_output(start, bulk):
    s = seed()
    r = random.Random(s)
    right, wrong = bulk(basic_auth=(BASIC_USER, BASIC_PASSWORD)), bulk(basic_auth=(BASIC_USER, BASIC_PASSWORD))
    ok_records, bad_records = json_records(r, 100, "basic-ok"), json_records(r, 40, "basic-bad")
    daemon = start(config_yaml(
        opensearch_yaml("basic-ok", right.url, auth=basic_yaml(BASIC_USER, BASIC_PASSWORD),
                        prefix="ok/", error_prefix="ok-errors/!{firehose:error-output-type}/"),
        opensearch_yaml("basic-bad", wrong.url, auth=basic_yaml(BASIC_USER, "not-the-password"),
                        retry_s=2, backup_mode="failed_documents_only", prefix="bad/", error_prefix=None)))
    put(daemon, "basic-ok", ok_records)
    put(daemon, "basic-bad", bad_records)
    wait_until(lambda: right.count() >= len(ok_records) and error_count(daemon, "bad/") >= len(bad_records))
    daemon.stop()

    assert_store_holds(right, ok_records, {INDEX}, s)
    want = "Basic " + base64.b64encode(f"{BASIC_USER}:{BASIC_PASSWORD}".encode()).decode()
    assert all(a.headers.get("authorization") == want for a in right.snapshot())
    assert right.auth_failures == []
    assert not [p for p in daemon.lake_objects() if p.as_posix().startswith("ok")]

    assert wrong.count() == 0 and wrong.auth_failures == [a.n for a in wrong.snapshot()]
    docs = os_error_docs(daemon, top="bad/", stream="basic-bad")
    assert sorted(raw_data(d) for d in docs) == sorted(bad_records)
    sent = items_by_source(wrong)
    for d in docs:
        assert d["attemptsMade"] == len(sent[raw_data(d)]) >= 2, d
        assert d["errorCode"] == "401" or d["errorCode"].startswith("OpenSearch."), d
    others = [p for p in daemon.lake_objects() if not p.as_posix().startswith(("bad/" + ERROR_TYPE + "/"))]
    assert others == [], f"failed_documents_only wrote more than the error documents: {others}"
    assert_clean(right, wrong)


@pytest.mark.parametrize("service,token", [("es", None), ("aoss", "IQoJb3JpZ2luX2VjEXAMPLE/+token=")])
def test_sigv4_signed_bulk_requests_verify(start, bulk, service, token):
    s = seed()
    r = random.Random(s)
    records = json_records(r, 150, "sigv4")
    refused = set(r.sample(records, 5))
    server = bulk(sigv4=SigV4Expectation(OS_ACCESS_KEY, OS_SECRET_KEY, OS_REGION, service, token))
    server.item_fault = lambda it: 400 if it.raw in refused else None
    env = {"AWS_ACCESS_KEY_ID": OS_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": OS_SECRET_KEY}
    if token:
        env["AWS_SESSION_TOKEN"] = token
    daemon = start(config_yaml(opensearch_yaml("events", server.url, auth=sigv4_yaml(OS_REGION, service))),
                   env=env)
    put(daemon, "events", records)
    wait_until(lambda: (server.count() >= len(records) - len(refused)
                        and error_count(daemon) >= len(refused)) or bool(server.violations))
    daemon.stop()

    assert_clean(server)  # every request's signature recomputed and matched
    assert_store_holds(server, [rec for rec in records if rec not in refused], {INDEX}, s)
    # A collection's error documents name osDocumentId / osIndexName, a domain's es*.
    docs = os_error_docs(daemon, serverless=service == "aoss")
    assert sorted(raw_data(d) for d in docs) == sorted(refused), f"seed {s}"
    es = "os" if service == "aoss" else "es"
    sent = items_by_source(server)
    for d in docs:
        assert d[f"{es}IndexName"] == INDEX and d[f"{es}DocumentId"] == sent[raw_data(d)][0].id, d
    for a in server.snapshot():
        assert a.headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={OS_ACCESS_KEY}/")
        assert a.headers["x-amz-content-sha256"] == hashlib.sha256(a.body).hexdigest()
        assert a.headers.get("x-amz-security-token") == token


# -- 8. backup modes -------------------------------------------------------------------------------

def test_all_documents_backup_holds_every_record_once(start, bulk):
    s = seed()
    records = json_records(random.Random(s), 400, "backup")
    server = bulk()
    daemon = start(config_yaml(opensearch_yaml("events", server.url, backup_mode="all_documents",
                                               processing=["append_delimiter: true"])))
    began, _ = put_timed(daemon, "events", records[:200])
    _, ended = put_timed(daemon, "events", records[200:])
    wait_until(lambda: server.count() >= len(records)
               and len(records_under(daemon, "backup/")) >= len(records))
    daemon.stop()

    assert_store_holds(server, records, {INDEX}, s)
    # The record as the destination got it ends with the delimiter; sent, it became a space.
    assert sorted(it.raw for it in server.items()) == sorted(rec + b" " for rec in records)
    backed = records_under(daemon, "backup/")
    assert sorted(backed) == sorted(records), (
        f"backup: {len(backed)} records for {len(records)} put (seed {s})")
    for p in objects_under(daemon, "backup/"):
        assert HOUR_DIRS.match(p.parent.as_posix()[len("backup/"):]), p
        assert OBJECT_NAME.match(p.name)["stream"] == "events", p
    assert not objects_under(daemon, "errors/")
    assert_clean(server)


# -- 9. a crash during delivery --------------------------------------------------------------------

def test_kill_during_delivery_then_restart_indexes_every_document_under_one_id(start, bulk):
    """SIGKILL while the first _bulk request is in the server (which applies it 3 s later, after the
    daemon is gone): the restarted daemon re-sends what it cannot know was indexed, under the same
    ids, so the store holds exactly the put set; the all_documents backup holds each record once."""
    s = seed()
    r = random.Random(s)
    first, second = json_records(r, 300, "crash-a"), json_records(r, 300, "crash-b", first=300)
    records = first + second
    server = bulk(slow_s=3.0)
    server.request_faults = ["slow"]
    daemon = start(config_yaml(opensearch_yaml("events", server.url, request_timeout_s=10,
                                               backup_mode="all_documents",
                                               processing=["append_delimiter: true"])))
    put(daemon, "events", first)
    assert wait_until(lambda: len(server.snapshot()) >= 1, 15), "no _bulk request arrived"
    put(daemon, "events", second)
    daemon.kill()
    daemon.start()
    wait_until(lambda: server.count() >= len(records) and server.idle())
    daemon.stop()

    assert_store_holds(server, records, {INDEX}, s)
    sent = items_by_source(server)
    assert sorted(sent) == sorted(rec + b" " for rec in records)
    under_two = {src: {(it.index, it.id) for it in its} for src, its in sent.items()
                 if len({(it.index, it.id) for it in its}) > 1}
    assert not under_two, f"{len(under_two)} documents sent under several ids, e.g. {list(under_two.items())[:2]}"
    interrupted = set(server.snapshot()[0].sources())
    resent = {src for src, its in sent.items() if len(its) > 1}
    assert interrupted <= resent, (
        f"{len(interrupted - resent)} documents of the interrupted request were not re-sent after the "
        f"restart (their outcome was unknown to the daemon)")
    assert sorted(records_under(daemon, "backup/")) == sorted(records), (
        f"the all_documents backup does not hold every record exactly once (seed {s})")
    assert not objects_under(daemon, "errors/")
    assert_clean(server)


# -- 10. spillway validate -------------------------------------------------------------------------

VALID = dict(index="a" * 80, rotation="one_month", buffering="{ size_mib: 100, interval_s: 900 }",
             retry_s=7200, request_timeout_s=3600)
BOTH_AUTH = ("{ basic: { username: u, password: p }, sigv4: { region: us-east-1, service: es } }")

# name → (opensearch_yaml overrides, [(words any of which the message must contain, line marker)]).
INVALID = {
    "index of 81 chars": (dict(index="a" * 81), [(("index",), "index:")]),
    "empty index": (dict(index=""), [(("index",), "index:")]),
    "size_mib 101": (dict(buffering="{ size_mib: 101, interval_s: 1 }"), [(("size_mib",), "buffering:")]),
    "size_mib 0": (dict(buffering="{ size_mib: 0, interval_s: 1 }"), [(("size_mib",), "buffering:")]),
    "interval_s 901": (dict(buffering="{ size_mib: 5, interval_s: 901 }"), [(("interval_s",), "buffering:")]),
    "duration_s 7201": (dict(retry_s=7201), [(("duration_s",), "retry:")]),
    "request_timeout_s 0": (dict(request_timeout_s=0), [(("request_timeout_s",), "request_timeout_s:")]),
    "request_timeout_s 3601": (dict(request_timeout_s=3601), [(("request_timeout_s",), "request_timeout_s:")]),
    "unknown index_rotation": (dict(rotation="one_year"), [(("index_rotation", "one_year"), "index_rotation:")]),
    "unknown document_id": (dict(document_id="random"), [(("document_id", "random"), "document_id:")]),
    "endpoint not http(s)": (dict(endpoint="ftp://127.0.0.1:9200"), [(("endpoint",), "endpoint:")]),
    "http_endpoint's backup mode": (dict(backup_mode="all_data"), [(("s3_backup_mode", "all_data"), "s3_backup_mode:")]),
    "unknown field": (dict(extra=["pipeline: ingest"]), [(("pipeline",), "pipeline:")]),
    "two auth methods": (dict(auth=BOTH_AUTH), [(("auth", "basic", "sigv4"), "auth:")]),
    "dynamic partitioning in the s3 section": (
        dict(s3_extra=["dynamic_partitioning: { enabled: true }"]),
        [(("dynamic_partitioning",), "dynamic_partitioning:")]),
}


def test_validate_refuses_out_of_range_opensearch_settings(tmp_path):
    def validate(name: str, overrides: dict):
        settings = {**VALID, **overrides}
        endpoint = settings.pop("endpoint", "http://127.0.0.1:9200")
        text = config_yaml(opensearch_yaml("events", endpoint, **settings))
        cfg = tmp_path / (re.sub(r"\W+", "-", name) + ".yaml")
        cfg.write_text(text)
        return text, cfg, run_validate(cfg, tmp_path)

    valid = [("boundaries", {}), ("lower boundaries", dict(index="a", buffering="{ size_mib: 1, interval_s: 0 }",
                                                         retry_s=0, request_timeout_s=1)),
             ("https endpoint", dict(endpoint="https://search.example.com:443")),
             ("every setting", dict(type_name="_doc", document_id="no_document_id",
                                    backup_mode="all_documents",
                                    auth=basic_yaml(BASIC_USER, BASIC_PASSWORD))),
             ("firehose_default ids, sigv4", dict(document_id="firehose_default", auth=sigv4_yaml(OS_REGION, "es"),
                                                 backup_mode="failed_documents_only")),
             ("defaults", dict(rotation=None, buffering=None, retry_s=None, request_timeout_s=None))]
    valid += [(f"rotation {p}", dict(rotation=p)) for p in ROTATIONS]
    for name, overrides in valid:
        _, _, run = validate(name, overrides)
        assert run.returncode == 0, f"{name}: refused: {run.stderr}"
    failures = []
    for name, (overrides, places) in INVALID.items():
        text, cfg, run = validate(name, overrides)
        err = run.stderr
        if run.returncode != 2:
            failures.append(f"{name}: exit {run.returncode}, want 2; stderr {err!r}")
            continue
        ok = any(f"{cfg}:{line_of(text, marker)}:" in err and any(w in err for w in words)
                 for words, marker in places) and "delivery_streams[0].destination.opensearch" in err
        if not ok:
            want = " or ".join(f"line {line_of(text, marker)} naming {'/'.join(words)}"
                               for words, marker in places)
            failures.append(f"{name}: want {want} and delivery_streams[0].destination.opensearch; "
                            f"got {err.strip()!r}")
    assert not failures, "\n".join(failures)


# -- 11. DescribeDeliveryStream --------------------------------------------------------------------

def test_describe_delivery_stream_shows_the_opensearch_destination(start, bulk):
    server = bulk()
    daemon = start(config_yaml(
        opensearch_yaml("full", server.url, type_name="_doc", rotation="one_week",
                        document_id="no_document_id", buffering="{ size_mib: 3, interval_s: 7 }",
                        retry_s=17, backup_mode="all_documents",
                        auth=basic_yaml(BASIC_USER, BASIC_PASSWORD)),
        opensearch_yaml("defaults", server.url, index="plain", rotation=None, buffering=None,
                        retry_s=None, request_timeout_s=None, prefix="backup-defaults/")))
    full = describe_opensearch(daemon, "full")
    assert full["ClusterEndpoint"] == server.url and full["IndexName"] == INDEX, full
    assert full["TypeName"] == "_doc" and full["IndexRotationPeriod"] == "OneWeek", full
    assert full["BufferingHints"] == {"SizeInMBs": 3, "IntervalInSeconds": 7}, full
    assert full["RetryOptions"] == {"DurationInSeconds": 17}, full
    assert full["S3BackupMode"] == "AllDocuments", full
    assert full["DocumentIdOptions"] == {"DefaultDocumentIdFormat": "NO_DOCUMENT_ID"}, full
    assert full["S3DestinationDescription"].get("Prefix") == "backup/", full
    defaults = describe_opensearch(daemon, "defaults")
    assert defaults["IndexName"] == "plain" and defaults["IndexRotationPeriod"] == "OneDay", defaults
    assert defaults["BufferingHints"] == {"SizeInMBs": 5, "IntervalInSeconds": 300}, defaults
    assert defaults["RetryOptions"] == {"DurationInSeconds": 300}, defaults
    assert defaults["S3BackupMode"] == "FailedDocumentsOnly", defaults
    assert defaults["DocumentIdOptions"] == {"DefaultDocumentIdFormat": "FIREHOSE_DEFAULT"}, defaults
    assert defaults["S3DestinationDescription"].get("Prefix") == "backup-defaults/", defaults
    daemon.stop()
    assert server.snapshot() == [], "requests sent without any record put"


def test_config_opensearch_yaml_runs_as_is(bulk, tmp_path):
    """The repository's example, unchanged but for the cluster's URL and credentials."""
    server = bulk(basic_auth=("spillway", "s3cret"))
    daemon = Spillway(tmp_path, config=REPO_ROOT / "config" / "opensearch.yaml",
                      env={"SPILLWAY_OPENSEARCH_URL": server.url, "SPILLWAY_OPENSEARCH_USER": "spillway",
                           "SPILLWAY_OPENSEARCH_PASSWORD": "s3cret"})
    daemon.start()
    try:
        records = [json.dumps({"n": i, "level": "info"}).encode() for i in range(300)]
        put(daemon, "logs", records)
        daemon.stop()
    finally:
        daemon.kill()
    assert_clean(server)
    docs = server.documents()
    assert sorted(json.dumps(d).encode() for d in docs.values()) == sorted(records)
    assert all(index.startswith("logs-") and len(index) == len("logs-2026-12-02") for index, _ in docs)
    assert daemon.lake_objects() == []
