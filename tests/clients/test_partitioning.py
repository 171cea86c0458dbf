"""Dynamic partitioning and record processors end to end, through the real daemon: unmodified boto3
puts records, SIGTERM drains every buffer, and the lake is read back from the file system (and by
DuckDB's hive-partitioned JSON reader).

- partitioned lake: jq metadata extraction → `customer_id=/year=/month=` directories that DuckDB
  reads with hive partitioning; counts per partition equal what was put, no object mixes partitions;
- KPL deaggregation with records made by the reference aggregator (aws_kinesis_agg);
- CloudWatch Logs subscription envelopes: decompress + message extraction;
- JSON and delimited deaggregation;
- the 501st partition of a shard goes to `activePartitionExceeded`;
- partition key encoding, and records without a usable key;
- `spillway validate` refusing every inconsistent partitioning / processing configuration;
- `custom_time_zone` and `file_extension` (prefix and extension; and, as Firehose documents, the
  object name's time and DescribeDeliveryStream's CustomTimeZone / FileExtension).

The generated data is seeded at random per run (printed on failure); set SPILLWAY_TEST_SEED to
replay a run.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import gzip
import json
import random
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pytest

from conftest import Spillway, run_validate, split_object
from test_format import put, seed
from test_s3 import firehose_client

UTC = dt.timezone.utc
ERROR_PREFIX = "errors/!{firehose:error-output-type}/"
ERROR_DOC_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                    "attemptEndingTimestamp", "rawData"}
# <stream>-1-<yyyy-MM-dd-HH-mm-ss>-<uuid>, then the extension (none with compression: none).
OBJECT_NAME = re.compile(
    r"(?P<stream>[A-Za-z0-9_.-]+?)-1-(?P<at>\d{4}-\d\d-\d\d-\d\d-\d\d-\d\d)-"
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}(?P<ext>.*)$")
HOUR_DIRS = re.compile(r"^\d{4}/\d\d/\d\d/\d\d$")
# The daemon's host time zone in tests that check times: far from UTC and from Asia/Tokyo, so that
# a daemon using local time instead of UTC (or of the configured zone) is caught.
HOST_TZ = {"TZ": "America/New_York"}
CUSTOMER_QUERY = '{customer_id: .customer_id}'
CUSTOMER_PREFIX = "customer_id=!{partitionKeyFromQuery:customer_id}/"
MONTHLY_QUERY = ('{customer_id: .customer_id, year: (.ts|strftime("%Y")), '
                 'month: (.ts|strftime("%m"))}')
MONTHLY_PREFIX = ("customer_id=!{partitionKeyFromQuery:customer_id}/"
                  "year=!{partitionKeyFromQuery:year}/month=!{partitionKeyFromQuery:month}/")


# -- configuration --------------------------------------------------------------------------------

def stream_yaml(name: str, *, prefix: str, processing=(), shards=1,
                error_prefix: str | None = ERROR_PREFIX, dynamic_partitioning: str | None = None,
                buffering="{ size_mib: 64, interval_s: 900 }", extra=()) -> str:
    """One delivery stream; `processing` items and `extra` destination lines are YAML text."""
    text = f"""\
  - name: {name}
    source: {{ direct_put: {{ shards: {shards} }} }}
"""
    if processing:
        text += "    processing:\n" + "".join(f"      - {p}\n" for p in processing)
    text += f"""\
    destination:
      s3:
        url: file://${{SPILLWAY_LAKE}}
        prefix: '{prefix}'
"""
    if error_prefix is not None:
        text += f"        error_output_prefix: '{error_prefix}'\n"
    if dynamic_partitioning is not None:
        text += f"        dynamic_partitioning: {dynamic_partitioning}\n"
    text += f"        buffering: {buffering}\n        compression: none\n"
    text += "".join(f"        {line}\n" for line in extra)
    return text


def config_yaml(*streams: str) -> str:
    return ("listen: ${SPILLWAY_LISTEN}\ndata_dir: ${SPILLWAY_DATA_DIR}\ndelivery_streams:\n"
            + "".join(streams))


@pytest.fixture
def start(tmp_path):
    """start(config_text, env) → a running daemon on that config (with `env` added to its
    environment); every daemon is killed at teardown (tests drain with daemon.stop() before
    reading the lake)."""
    started: list[Spillway] = []

    def _start(text: str, env: dict[str, str] | None = None) -> Spillway:
        cfg = tmp_path / f"partitioning-{len(started)}.yaml"
        cfg.write_text(text)
        daemon = Spillway(tmp_path, config=cfg, env=env)
        started.append(daemon)
        daemon.start()
        return daemon

    yield _start
    for daemon in started:
        daemon.kill()


# -- reading the lake -----------------------------------------------------------------------------

def objects_under(daemon: Spillway, top: str) -> list[Path]:
    return [p for p in daemon.lake_objects() if p.as_posix().startswith(top)]


def records_under(daemon: Spillway, top: str) -> list[bytes]:
    """The records of every object under `top`, objects in path order, records in file order."""
    out: list[bytes] = []
    for p in objects_under(daemon, top):
        out.extend(split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()))
    return out


def error_docs(daemon: Spillway, output_type: str, top: str = "errors/") -> list[dict]:
    """The error documents under `<top><output_type>/`, each checked for Firehose's fields."""
    docs = []
    for p in objects_under(daemon, f"{top}{output_type}/"):
        assert HOUR_DIRS.match(p.parent.relative_to(f"{top}{output_type}").as_posix()), (
            f"error object {p} is not under the hourly yyyy/MM/dd/HH/ directories")
        for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
            doc = json.loads(line)
            assert set(doc) == ERROR_DOC_FIELDS, f"{p}: {doc}"
            assert doc["attemptsMade"] >= 1 and doc["errorMessage"], doc
            assert doc["attemptEndingTimestamp"] >= doc["arrivalTimestamp"], doc
            docs.append(doc)
    return docs


def raw(doc: dict) -> bytes:
    return base64.b64decode(doc["rawData"])


def error_types(daemon: Spillway, top: str = "errors/") -> set[str]:
    return {p.relative_to(top).parts[0] for p in objects_under(daemon, top)}


def partition_dirs(daemon: Spillway, top: str = "customer_id=") -> dict[str, list[Path]]:
    """Data objects by their partition (the path up to the hourly directories)."""
    found = collections.defaultdict(list)
    for p in objects_under(daemon, top):
        parent = p.parent.as_posix()
        partition, hour = parent[:-len("yyyy/MM/dd/HH")], parent[-len("yyyy/MM/dd/HH"):]
        assert HOUR_DIRS.match(hour) and partition.endswith("/"), (
            f"{p} is not <partition>/yyyy/MM/dd/HH/<name>")
        assert OBJECT_NAME.match(p.name), f"object name {p.name!r}"
        found[partition].append(p)
    return found


def assert_same(got: list[bytes], want: list[bytes], what: str) -> None:
    g, w = collections.Counter(got), collections.Counter(want)
    missing, extra = w - g, g - w
    assert not missing and not extra, (
        f"{what}: {len(got)} records, {len(want)} expected; missing {list(missing)[:5]}, "
        f"unexpected or duplicated {list(extra)[:5]}")


def describe(daemon: Spillway, stream: str) -> dict:
    d = firehose_client(daemon).describe_delivery_stream(DeliveryStreamName=stream)
    return d["DeliveryStreamDescription"]["Destinations"][0]["ExtendedS3DestinationDescription"]


def processor_types(dest: dict) -> list[str]:
    assert dest["ProcessingConfiguration"]["Enabled"] is True, dest
    return [p["Type"] for p in dest["ProcessingConfiguration"]["Processors"]]


def processor_param(dest: dict, kind: str, name: str) -> str:
    for p in dest["ProcessingConfiguration"]["Processors"]:
        if p["Type"] == kind:
            for param in p["Parameters"]:
                if param["ParameterName"] == name:
                    return param["ParameterValue"]
    raise AssertionError(f"no {kind}.{name} in {dest['ProcessingConfiguration']}")


def utc_hour_dirs(*epochs: float) -> set[str]:
    return {dt.datetime.fromtimestamp(t, UTC).strftime("%Y/%m/%d/%H") for t in epochs}


# -- 1. a partitioned lake that DuckDB reads with hive partitioning ------------------------------

def monthly_records(s: int, n=5000) -> list[dict]:
    r = random.Random(s)
    customers = [f"c{i:02d}" for i in range(20)]
    months = [(y, m) for y in (2024, 2025) for m in (1, 2, 3, 6, 11, 12)]
    out = []
    for i in range(n):
        y, m = r.choice(months)
        start = dt.datetime(y, m, 1, tzinfo=UTC)
        end = dt.datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=UTC)
        edge = r.random()
        if edge < 0.05:
            ts = int(start.timestamp())  # first second of the month
        elif edge < 0.1:
            ts = int(end.timestamp()) - 1  # last second of the month
        else:
            ts = r.randrange(int(start.timestamp()), int(end.timestamp()))
        if r.random() < 0.1:
            ts = ts + r.choice([0.25, 0.5, 0.999])  # strftime takes the whole seconds
        out.append({"customer_id": r.choice(customers), "ts": ts, "seq": i,
                    "v": r.randbytes(r.randrange(24)).hex()})
    return out


def utc_month(ts: float) -> tuple[str, str]:
    """jq's strftime("%Y") / ("%m") of epoch seconds: gmtime of the whole seconds."""
    t = time.gmtime(int(ts))
    return time.strftime("%Y", t), time.strftime("%m", t)


def test_partitioned_lake_reads_back_per_partition_in_duckdb(start):
    s = seed()
    records = monthly_records(s)
    daemon = start(config_yaml(stream_yaml(
        "events", prefix=MONTHLY_PREFIX, shards=2,
        processing=[f"metadata_extraction: {{ query: '{MONTHLY_QUERY}' }}",
                    "append_delimiter: true"],
        dynamic_partitioning="{ enabled: true, max_active_partitions: 500 }",
        buffering="{ size_mib: 64, interval_s: 60 }")), env=HOST_TZ)
    dest = describe(daemon, "events")
    assert processor_types(dest) == ["MetadataExtraction", "AppendDelimiterToRecord"], dest
    assert processor_param(dest, "MetadataExtraction", "MetadataExtractionQuery") == MONTHLY_QUERY
    assert dest["DynamicPartitioningConfiguration"]["Enabled"] is True, dest
    assert dest["Prefix"] == MONTHLY_PREFIX and dest["ErrorOutputPrefix"] == ERROR_PREFIX, dest
    began = time.time()
    put(daemon, "events", [json.dumps(rec).encode() for rec in records])
    ended = time.time()
    daemon.stop()

    want = collections.Counter((rec["customer_id"], *utc_month(rec["ts"])) for rec in records)
    con = duckdb.connect()
    glob = str(daemon.lake_dir / "customer_id=*" / "**" / "*")
    rows = con.execute(
        "SELECT customer_id, year, month, count(*) FROM "
        "read_ndjson(?, hive_partitioning = true, hive_types_autocast = false) "
        "GROUP BY ALL", [glob]).fetchall()
    got = {(c, y, m): n for c, y, m, n in rows}
    assert got == dict(want), (
        f"per-partition counts differ (seed {s}): "
        f"missing {sorted(set(want) - set(got))[:5]}, unexpected {sorted(set(got) - set(want))[:5]}, "
        f"wrong {[(k, got[k], want[k]) for k in got if k in want and got[k] != want[k]][:5]}")
    assert sum(got.values()) == len(records)

    # Every object sits in its partition's hourly directory of the arrival time, and every line
    # of it belongs to that partition; together the objects hold exactly the records put.
    hours = utc_hour_dirs(began, ended)
    seen = []
    for partition, paths in partition_dirs(daemon).items():
        m = re.fullmatch(r"customer_id=([^/]+)/year=(\d{4})/month=(\d\d)/", partition)
        assert m, partition
        for p in paths:
            assert p.parent.as_posix()[len(partition):] in hours, (p, hours)
            for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
                rec = json.loads(line)
                assert (rec["customer_id"], *utc_month(rec["ts"])) == m.groups(), (
                    f"{p} (partition {m.groups()}) holds {rec} (seed {s})")
                seen.append(line)
    assert_same(seen, [json.dumps(rec).encode() for rec in records], f"partitioned lake (seed {s})")
    assert objects_under(daemon, "errors/") == []
    # One object per partition and shard at most (nothing was due before the drain).
    assert sum(map(len, partition_dirs(daemon).values())) <= 2 * len(want)


# -- 2. KPL aggregated records ------------------------------------------------------------------

def kpl_blobs(r: random.Random, user_records: list[tuple[str, bytes]], per_blob: int) -> list[bytes]:
    from aws_kinesis_agg.aggregator import RecordAggregator
    blobs = []
    agg = RecordAggregator()
    for i, (pk, data) in enumerate(user_records):
        ehk = str(r.randrange(2**128)) if i % 7 == 0 else None
        full = agg.add_user_record(pk, data, ehk)
        assert full is None, "the aggregator filled up; make the records smaller"
        if agg.get_num_user_records() == per_blob:
            _pk, _ehk, blob = agg.clear_and_get().get_contents()
            blobs.append(blob)
    if agg.get_num_user_records():
        blobs.append(agg.clear_and_get().get_contents()[2])
    return blobs


def test_kpl_aggregated_records_are_deaggregated(start):
    s = seed()
    r = random.Random(s)
    users = [(f"pk-{r.randrange(50)}", f"user-{i}-{r.randbytes(r.randrange(1, 40)).hex()}".encode())
             for i in range(1200)]
    blobs = kpl_blobs(r, users, per_blob=40)
    one = kpl_blobs(r, [("solo", b"the only user record")], per_blob=1)
    assert blobs[0][:4] == b"\xf3\x89\x9a\xc2" and len(blobs) == 30
    corrupted = bytearray(kpl_blobs(r, [("x", b"lost-1"), ("y", b"lost-2")], per_blob=2)[0])
    corrupted[-1] ^= 0xFF  # the last byte of the MD5 trailer
    corrupted = bytes(corrupted)
    plain = b"a plain record, not aggregated"

    daemon = start(config_yaml(stream_yaml(
        "kpl", prefix="data/",
        processing=["deaggregate: { type: kpl }", "append_delimiter: true"])))
    dest = describe(daemon, "kpl")
    assert processor_types(dest) == ["RecordDeAggregation", "AppendDelimiterToRecord"], dest
    assert processor_param(dest, "RecordDeAggregation", "SubRecordType") == "KPL"
    put(daemon, "kpl", blobs[:15] + [plain, corrupted] + blobs[15:] + one)
    daemon.stop()

    want = [data for _, data in users] + [plain, b"the only user record"]
    assert_same(records_under(daemon, "data/"), want, f"deaggregated KPL records (seed {s})")
    docs = error_docs(daemon, "processing-failed")
    assert [(d["errorCode"], raw(d)) for d in docs] == [("KPL.ChecksumMismatch", corrupted)], docs
    assert error_types(daemon) == {"processing-failed"}


# -- 3. CloudWatch Logs subscription records ------------------------------------------------------

def cloudwatch_record(events: list[str], start_ms: int, message_type="DATA_MESSAGE") -> bytes:
    """A record as a CloudWatch Logs subscription filter delivers it to Firehose: gzip of JSON."""
    envelope = {
        "messageType": message_type,
        "owner": "123456789012",
        "logGroup": "/aws/lambda/x",
        "logStream": "2026/12/01/[$LATEST]abc",
        "subscriptionFilters": ["f"],
        "logEvents": [
            {"id": str(37000000000000000000000000000000000000000000000000000000 + start_ms + i),
             "timestamp": start_ms + i, "message": m}
            for i, m in enumerate(events)],
    }
    if message_type == "CONTROL_MESSAGE":
        envelope.update(owner="CloudwatchLogs", logGroup="", logStream="", subscriptionFilters=[])
    return gzip.compress(json.dumps(envelope, separators=(",", ":")).encode())


def test_cloudwatch_logs_messages_are_extracted(start):
    r = random.Random(seed())
    batches = [
        ["START RequestId: 1f0c Version: $LATEST",
         '{"level":"info","msg":"json in a message","n":1}',
         "tab\there, quote \" and backslash \\ and unicode é€😀",
         "END RequestId: 1f0c"],
        ["only one event"],
        [f"event {i} {r.randbytes(8).hex()}" for i in range(300)],
    ]
    base_ms = 1796150000000
    data_records = [cloudwatch_record(b, base_ms + 1000 * i) for i, b in enumerate(batches)]
    control = cloudwatch_record(["CWL CONTROL MESSAGE: Checking health of destination Firehose."],
                                base_ms, "CONTROL_MESSAGE")
    not_gzip = b'{"messageType":"DATA_MESSAGE","logEvents":[]} (not compressed)'
    not_envelope = gzip.compress(b"gzip, but not a CloudWatch Logs envelope")

    daemon = start(config_yaml(stream_yaml(
        "logs", prefix="data/",
        processing=["decompress: gzip", "cloudwatch_logs: { message_extraction: true }",
                    "append_delimiter: true"])))
    dest = describe(daemon, "logs")
    assert processor_types(dest) == ["Decompression", "CloudWatchLogProcessing",
                                     "AppendDelimiterToRecord"], dest
    assert processor_param(dest, "Decompression", "CompressionFormat") == "GZIP"
    assert processor_param(dest, "CloudWatchLogProcessing", "DataMessageExtraction") == "true"
    put(daemon, "logs", [data_records[0], control, not_gzip, data_records[1], not_envelope,
                         data_records[2]])
    daemon.stop()

    data = objects_under(daemon, "data/")
    assert len(data) == 1, data
    want = b"".join(m.encode() + b"\n" for batch in batches for m in batch)
    got = (daemon.lake_dir / data[0]).read_bytes()
    assert got == want, (
        f"{len(split_object(got, 'data'))} lines, want {sum(map(len, batches))}; "
        f"first lines {split_object(got, 'data')[:5]}")
    docs = error_docs(daemon, "decompression-failed")
    assert [raw(d) for d in docs] == [not_gzip], docs
    assert docs[0]["errorCode"].startswith("Decompression."), docs
    failed = error_docs(daemon, "processing-failed")
    assert len(failed) == 1 and failed[0]["errorCode"].startswith("CloudWatchLogs."), failed
    assert error_types(daemon) == {"decompression-failed", "processing-failed"}


# -- 4. JSON and delimited deaggregation ----------------------------------------------------------

def test_json_and_delimited_deaggregation(start):
    daemon = start(config_yaml(
        stream_yaml("json", prefix="json/", error_prefix="json-errors/!{firehose:error-output-type}/",
                    processing=["deaggregate: { type: json }", "append_delimiter: true"]),
        stream_yaml("delim", prefix="delim/",
                    error_prefix="delim-errors/!{firehose:error-output-type}/",
                    processing=['deaggregate: { type: delimited, delimiter: "####" }',
                                "append_delimiter: true"]),
    ))
    dest = describe(daemon, "delim")
    assert processor_param(dest, "RecordDeAggregation", "SubRecordType") == "DELIMITED"
    assert processor_param(dest, "RecordDeAggregation", "Delimiter") == base64.b64encode(b"####").decode()

    five_hundred = b"".join(b'{"i":%d}' % i for i in range(500))
    five_hundred_one = b"".join(b'{"j":%d}' % i for i in range(501))
    json_in = [
        (b'{"a":1}{"b":2}{"c":{"d":[1,2,{"e":"}{\\"]"}]}}',
         [b'{"a":1}', b'{"b":2}', b'{"c":{"d":[1,2,{"e":"}{\\"]"}]}}']),
        (b'{"x":1}\n{"y":"two"}\n\n  {"z":3}  \r\n', [b'{"x":1}', b'{"y":"two"}', b'{"z":3}']),
        (b'{"solo":true}', [b'{"solo":true}']),
        (b'{"u":"\xc3\xa9\xf0\x9f\x98\x80"}{"v":null}', [b'{"u":"\xc3\xa9\xf0\x9f\x98\x80"}', b'{"v":null}']),
        (five_hundred, [b'{"i":%d}' % i for i in range(500)]),
        (five_hundred_one, [five_hundred_one]),  # more than 500 sub-records: passed on whole
    ]
    json_bad = [b'[{"a":1},{"b":2}]', b'{"ok":1}{"broken":', b'{"ok":1} trailing text',
                b'{"ok":1}[2]', b"not json at all"]
    delim_in = [
        (b"a####b####c", [b"a", b"b", b"c"]),
        (b"one####", [b"one"]),
        (b"no delimiter here", [b"no delimiter here"]),
        (b'{"json":"is just text"}####x#y##z###', [b'{"json":"is just text"}', b"x#y##z###"]),
    ]
    put(daemon, "json", [r for r, _ in json_in[:3]] + json_bad[:2] + [r for r, _ in json_in[3:]]
        + json_bad[2:])
    put(daemon, "delim", [r for r, _ in delim_in])
    daemon.stop()

    assert records_under(daemon, "json/") == [x for _, out in json_in for x in out]
    docs = error_docs(daemon, "processing-failed", top="json-errors/")
    assert sorted(raw(d) for d in docs) == sorted(json_bad), docs
    for d in docs:
        assert d["errorCode"].startswith("Deaggregation."), d
    assert error_types(daemon, "json-errors/") == {"processing-failed"}
    assert records_under(daemon, "delim/") == [x for _, out in delim_in for x in out]
    assert objects_under(daemon, "delim-errors/") == []


# -- 5. the 501st active partition of a shard -----------------------------------------------------

def test_the_501st_partition_goes_to_active_partition_exceeded(start):
    daemon = start(config_yaml(stream_yaml(
        "events", prefix=CUSTOMER_PREFIX, shards=1,
        processing=[f"metadata_extraction: {{ query: '{CUSTOMER_QUERY}' }}",
                    "append_delimiter: true"],
        dynamic_partitioning="{ enabled: true }",
        buffering="{ size_mib: 64, interval_s: 900 }")))
    customers = [f"cust-{i:03d}" for i in range(501)]
    # Round robin: the first 500 records open partitions cust-000..cust-499; cust-500 comes next
    # and every one of its records finds 500 partitions active.
    records = [json.dumps({"customer_id": c, "round": n}).encode()
               for n in range(3) for c in customers]
    put(daemon, "events", records)
    daemon.stop()

    parts = partition_dirs(daemon)
    assert sorted(parts) == [f"customer_id={c}/" for c in customers[:500]], sorted(parts)[-3:]
    for partition, paths in parts.items():
        c = partition[len("customer_id="):-1]
        got = [rec for p in paths
               for rec in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix())]
        assert got == [json.dumps({"customer_id": c, "round": n}).encode() for n in range(3)], (
            partition, got)
    docs = error_docs(daemon, "activePartitionExceeded")
    assert [raw(d) for d in docs] == [json.dumps({"customer_id": "cust-500", "round": n}).encode()
                                      for n in range(3)], docs
    assert {d["errorCode"] for d in docs} == {"DynamicPartitioning.ActivePartitionExceeded"}
    assert error_types(daemon) == {"activePartitionExceeded"}


# -- 6. partition key values in keys --------------------------------------------------------------

S3_SAFE = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!-_.*'()")


def encoded(value: str) -> str:
    """A key value as it must appear in the key: bytes outside S3's safe set percent-encoded,
    dots too when the value is nothing but dots (so that no value is a `.` or `..` segment)."""
    only_dots = set(value) == {"."}
    return "".join(chr(b) if b in S3_SAFE and not (only_dots and b == ord(".")) else f"%{b:02X}"
                   for b in value.encode())


def test_partition_key_values_are_encoded_and_unusable_ones_fail(start):
    daemon = start(config_yaml(stream_yaml(
        "events", prefix=CUSTOMER_PREFIX,
        processing=[f"metadata_extraction: {{ query: '{CUSTOMER_QUERY}' }}",
                    "append_delimiter: true"],
        dynamic_partitioning="{ enabled: true }")))
    values = ["a/b c", "..", ".", "a.b", "x=y", "é/€", "*'()!-_", "100%", "~tilde", "A+B&C?",
              "back\\slash", "new\nline"]
    good = [json.dumps({"customer_id": v, "n": i}).encode() for i, v in enumerate(values)]
    scalars = [(b'{"customer_id": 42}', "42"), (b'{"customer_id": true}', "true")]
    bad = [b'{"customer_id": ""}', b'{"n": "no customer_id"}', b'{"customer_id": null}',
           b'{"customer_id": ["a"]}', b"not json"]
    put(daemon, "events", good[:6] + bad[:2] + good[6:] + [r for r, _ in scalars] + bad[2:])
    daemon.stop()

    assert encoded("a/b c") == "a%2Fb%20c" and encoded("..") == "%2E%2E"
    want = {f"customer_id={encoded(v)}/": [rec] for v, rec in zip(values, good)}
    want.update({f"customer_id={v}/": [rec] for rec, v in scalars})
    got = {part: [rec for p in paths
                  for rec in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix())]
           for part, paths in partition_dirs(daemon).items()}
    assert got == want
    assert "customer_id=a%2Fb%20c/" in got and "customer_id=%2E%2E/" in got
    # DuckDB's hive partitioning decodes the values again.
    con = duckdb.connect()
    decoded = con.execute(
        "SELECT DISTINCT customer_id FROM read_ndjson(?, hive_partitioning = true, "
        "hive_types_autocast = false, columns = {n: 'BIGINT'}) WHERE n IS NOT NULL",
        [str(daemon.lake_dir / "customer_id=*" / "**" / "*")]).fetchall()
    assert {"a/b c", ".."} <= {v for (v,) in decoded}, decoded

    docs = error_docs(daemon, "processing-failed")
    assert sorted(raw(d) for d in docs) == sorted(bad), docs
    for d in docs:
        assert d["errorCode"].startswith("DynamicPartitioning."), d
    by_raw = {raw(d): d["errorCode"] for d in docs}
    assert by_raw[b'{"customer_id": ""}'] == "DynamicPartitioning.PartitionKeyEmpty", by_raw
    assert by_raw[b'{"n": "no customer_id"}'] == "DynamicPartitioning.PartitionKeyMissing", by_raw
    assert error_types(daemon) == {"processing-failed"}


# -- 7. spillway validate ---------------------------------------------------------------------------

def line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing `needle`."""
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in the config")


VALID = dict(
    prefix=MONTHLY_PREFIX,
    processing=[f"metadata_extraction: {{ query: '{MONTHLY_QUERY}' }}", "append_delimiter: true"],
    dynamic_partitioning="{ enabled: true, max_active_partitions: 500 }",
    buffering="{ size_mib: 64, interval_s: 60 }",
)

FULL_CHAIN = ["decompress: gzip", "cloudwatch_logs: { message_extraction: true }",
              "deaggregate: { type: json }",
              f"metadata_extraction: {{ query: '{MONTHLY_QUERY}' }}", "append_delimiter: true"]

# name → (stream_yaml overrides, [(words any of which the message must contain, line marker)]).
# The message must name the field (one of the words) and the line of that field.
INVALID = {
    "partition key without dynamic partitioning": (
        dict(dynamic_partitioning=None),
        [(("dynamic_partitioning", "prefix"), "prefix:")]),
    "dynamic partitioning without key expressions": (
        dict(prefix="plain/"),
        [(("prefix",), "prefix:"), (("dynamic_partitioning",), "dynamic_partitioning:")]),
    "partitionKeyFromQuery without metadata_extraction": (
        dict(processing=["append_delimiter: true"]),
        [(("metadata_extraction",), "prefix:"), (("metadata_extraction",), "processing:")]),
    "interval 0 with dynamic partitioning": (
        dict(buffering="{ size_mib: 64, interval_s: 0 }"),
        [(("interval_s", "buffering"), "buffering:")]),
    "deaggregate before decompress": (
        dict(processing=["deaggregate: { type: json }", "decompress: gzip"] + VALID["processing"]),
        [(("decompress", "processing"), "processing:"), (("decompress",), "- decompress")]),
    "cloudwatch_logs without decompress": (
        dict(processing=["cloudwatch_logs: { message_extraction: true }"] + VALID["processing"]),
        [(("decompress", "cloudwatch_logs"), "processing:"), (("cloudwatch_logs",), "- cloudwatch")]),
    "bad jq query": (
        dict(processing=["metadata_extraction: { query: '{customer_id: .customer_id | nosuchfn}' }",
                         "append_delimiter: true"]),
        [(("nosuchfn", "query"), "nosuchfn")]),
    "max_active_partitions 0": (
        dict(dynamic_partitioning="{ enabled: true, max_active_partitions: 0 }"),
        [(("max_active_partitions", "between 1 and 5000"), "max_active_partitions")]),
    "max_active_partitions 5001": (
        dict(dynamic_partitioning="{ enabled: true, max_active_partitions: 5001 }"),
        [(("max_active_partitions", "between 1 and 5000"), "max_active_partitions")]),
    "bad custom_time_zone": (
        dict(extra=["custom_time_zone: Mars/Olympus_Mons"]),
        [(("custom_time_zone",), "custom_time_zone")]),
    "bad file_extension": (
        dict(extra=["file_extension: json"]),
        [(("file_extension",), "file_extension")]),
    "dynamic partitioning disabled with partition keys": (
        dict(dynamic_partitioning="{ enabled: false }"),
        [(("dynamic_partitioning", "prefix"), "prefix:")]),
    "delimited deaggregation without a delimiter": (
        dict(processing=["deaggregate: { type: delimited }"] + VALID["processing"]),
        [(("delimiter",), "processing:"), (("delimiter",), "- deaggregate")]),
    "upper-case file_extension": (
        dict(extra=["file_extension: .JSON"]),
        [(("file_extension",), "file_extension")]),
}


def test_validate_rejects_inconsistent_partitioning_and_processing(tmp_path):
    def validate(name: str, overrides: dict):
        text = config_yaml(stream_yaml("events", **{**VALID, **overrides}))
        cfg = tmp_path / (re.sub(r"\W+", "-", name) + ".yaml")
        cfg.write_text(text)
        return text, cfg, run_validate(cfg, tmp_path)

    for name, overrides in [("valid", {}), ("full chain", dict(processing=FULL_CHAIN)),
                            ("max_active_partitions 1",
                             dict(dynamic_partitioning="{ enabled: true, max_active_partitions: 1 }")),
                            ("max_active_partitions 5000",
                             dict(dynamic_partitioning="{ enabled: true, max_active_partitions: 5000 }")),
                            ("time zone and extension",
                             dict(extra=["custom_time_zone: America/New_York",
                                         "file_extension: .json"]))]:
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
                 for words, marker in places)
        if not ok:
            want = " or ".join(f"line {line_of(text, marker)} naming {'/'.join(words)}"
                               for words, marker in places)
            failures.append(f"{name}: want {want}; got {err.strip()!r}")
    assert not failures, "\n".join(failures)


# -- 8. custom_time_zone and file_extension -------------------------------------------------------

def test_custom_time_zone_and_file_extension(start):
    tokyo = ZoneInfo("Asia/Tokyo")
    daemon = start(config_yaml(
        stream_yaml("tz", prefix="tz=!{timestamp:yyyy-MM-dd-HH}/",
                    processing=["append_delimiter: true"],
                    extra=["custom_time_zone: Asia/Tokyo", "file_extension: .json"]),
        stream_yaml("parts", prefix="p/" + CUSTOMER_PREFIX + "!{timestamp:HH}/",
                    error_prefix="perr/!{firehose:error-output-type}/",
                    processing=[f"metadata_extraction: {{ query: '{CUSTOMER_QUERY}' }}"],
                    dynamic_partitioning="{ enabled: true }",
                    extra=["custom_time_zone: Asia/Tokyo", "file_extension: .ndjson.x"]),
    ), env=HOST_TZ)
    began = time.time()
    put(daemon, "tz", [b'{"n":1}', b'{"n":2}'])
    put(daemon, "parts", [b'{"customer_id":"c1"}', b'{"customer_id":"c2"}'])
    ended = time.time()
    daemon.stop()

    def tokyo_fmt(t: float, f: str) -> str:
        return dt.datetime.fromtimestamp(t, tokyo).strftime(f)

    # Only if the put straddled an hour boundary may the directory be the later of two hours.
    hours = {tokyo_fmt(t, "%Y-%m-%d-%H") for t in (began, ended)}
    objs = objects_under(daemon, "tz=")
    assert len(objs) == 1, daemon.lake_objects()
    assert objs[0].parent.as_posix() in {f"tz={h}" for h in hours}, (objs[0], hours)
    utc_hour = dt.datetime.fromtimestamp(began, UTC).hour
    tokyo_hour = int(objs[0].parent.as_posix()[-2:])
    assert tokyo_hour in {(utc_hour + 9) % 24, (utc_hour + 10) % 24}, (objs[0], utc_hour)
    m = OBJECT_NAME.match(objs[0].name)
    assert m and m["stream"] == "tz" and m["ext"] == ".json", objs[0].name
    assert records_under(daemon, "tz=") == [b'{"n":1}', b'{"n":2}']

    parts = objects_under(daemon, "p/")
    hh = {tokyo_fmt(t, "%H") for t in (began, ended)}
    assert sorted(p.parent.as_posix()[:-3] for p in parts) == ["p/customer_id=c1",
                                                               "p/customer_id=c2"], parts
    for p in parts:
        assert p.parent.name in hh, (p, hh)
        assert p.name.endswith(".ndjson.x") and OBJECT_NAME.match(p.name)["ext"] == ".ndjson.x", p
    assert objects_under(daemon, "errors/") == [] and objects_under(daemon, "perr/") == []


def test_custom_time_zone_names_objects_and_is_described(start):
    """Firehose: "By default, the time zone used for time prefix and suffix is in UTC, but you can
    change it to a time zone that you prefer" (Developer Guide, "Configure Amazon S3 object name
    format"): the <yyyy-MM-dd-HH-mm-ss> of the object name is in the custom time zone too. And
    DescribeDeliveryStream's ExtendedS3DestinationDescription has CustomTimeZone and FileExtension."""
    tokyo = ZoneInfo("Asia/Tokyo")
    daemon = start(config_yaml(stream_yaml(
        "tz", prefix="tz=!{timestamp:yyyy-MM-dd-HH}/", processing=["append_delimiter: true"],
        extra=["custom_time_zone: Asia/Tokyo", "file_extension: .json"])), env=HOST_TZ)
    dest = describe(daemon, "tz")
    began = time.time()
    put(daemon, "tz", [b'{"n":1}'])
    ended = time.time()
    daemon.stop()
    (obj,) = objects_under(daemon, "tz=")
    name_at = OBJECT_NAME.match(obj.name)["at"]
    seconds = {dt.datetime.fromtimestamp(t, tokyo).strftime("%Y-%m-%d-%H-%M-%S")
               for t in range(int(began), int(ended) + 2)}
    problems = []
    if name_at not in seconds:
        problems.append(f"object name time {name_at} is not the arrival time in Asia/Tokyo "
                        f"({sorted(seconds)}): {obj}")
    described = {k: dest.get(k) for k in ("CustomTimeZone", "FileExtension")}
    if described != {"CustomTimeZone": "Asia/Tokyo", "FileExtension": ".json"}:
        problems.append(f"DescribeDeliveryStream shows {described}")
    assert not problems, "\n".join(problems)


# -- config/partitioned.yaml, as shipped --------------------------------------------------------

def test_config_partitioned_yaml_runs_as_is_and_duckdb_reads_the_partitions(tmp_path):
    """The example runs unchanged: concatenated JSON records are deaggregated, partitioned by
    customer and month, gzip-compressed, and DuckDB's hive partitioning reads the counts back."""
    from conftest import REPO_ROOT
    s = seed()
    records = monthly_records(s, n=2000)
    lines = [json.dumps(rec).encode() for rec in records]
    # Producers batch: every third record carries three JSON objects, concatenated.
    batched = [b"".join(lines[i:i + 3]) if i % 9 == 0 else lines[i] for i in range(0, len(lines))
               if i % 9 == 0 or i % 9 >= 3]
    daemon = Spillway(tmp_path, config=REPO_ROOT / "config/partitioned.yaml")
    daemon.start()
    try:
        put(daemon, "events", batched + [b'{"ts": 1}', b"not json"])
    finally:
        daemon.stop()
    con = duckdb.connect()
    glob = str(daemon.lake_dir / "customer_id=*" / "**" / "*.gz")
    rows = con.execute(
        "SELECT customer_id, year, month, count(*) FROM "
        "read_ndjson(?, hive_partitioning = true, hive_types_autocast = false) GROUP BY ALL",
        [glob]).fetchall()
    want = collections.Counter((rec["customer_id"], *utc_month(rec["ts"])) for rec in records)
    assert {(c, y, m): n for c, y, m, n in rows} == dict(want), f"seed {s}"
    # The example's error prefix has a daily timestamp: errors/processing-failed/yyyy/MM/dd/.
    failed = [json.loads(line) for p in objects_under(daemon, "errors/processing-failed/")
              for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix())]
    assert sorted(raw(d) for d in failed) == [b"not json", b'{"ts": 1}'], failed
    assert {d["errorCode"] for d in failed} == {
        "DynamicPartitioning.PartitionKeyMissing", "Deaggregation.NotJsonObject"}, failed
