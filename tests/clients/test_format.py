"""Record format conversion end to end: unmodified boto3 puts JSON records, the daemon writes Parquet
or ORC into the lake, and independent readers open every file: Apache Arrow's C++ Parquet and ORC
readers (pyarrow) and DuckDB's own Parquet reader. DuckDB has no ORC reader, so ORC files are read
by pyarrow only (and queried in DuckDB from the Arrow table pyarrow read).

The value test is a property test: records are generated at random (every type, nulls, missing keys,
nesting, every timestamp form the OpenX SerDe reads), the expected row of each is computed here from
the record alone, and each reader must return exactly those rows. The seed is random per run and
printed on failure; set SPILLWAY_TEST_SEED to replay one.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import os
import random
import struct
import time
from pathlib import Path

import duckdb
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest

from conftest import STREAM, Spillway
from test_s3 import (bucket_keys, firehose_client, open_uploads, put_all)

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


def write_config(tmp_path: Path, streams: dict[str, str], *, url="file://${SPILLWAY_LAKE}",
                 extra_s3="", shards=1, size_mib=64) -> Path:
    """A config with one delivery stream per entry: name → format_conversion YAML (a flow map)."""
    text = "listen: ${SPILLWAY_LISTEN}\ndata_dir: ${SPILLWAY_DATA_DIR}\ndelivery_streams:\n"
    for name, fc in streams.items():
        text += f"""\
  - name: {name}
    source: {{ direct_put: {{ shards: {shards} }} }}
    destination:
      s3:
        url: {url}
        prefix: {name}/
        buffering: {{ size_mib: {size_mib}, interval_s: 900 }}
{extra_s3}        format_conversion: {fc}
"""
    path = tmp_path / "format.yaml"
    path.write_text(text)
    return path


def objects(daemon: Spillway, under: str, suffix: str) -> list[Path]:
    return [daemon.lake_dir / p for p in daemon.lake_objects()
            if p.as_posix().startswith(under) and p.name.endswith(suffix)]


def error_docs(daemon: Spillway, stream: str) -> list[dict]:
    docs = []
    for p in daemon.lake_objects():
        if p.as_posix().startswith(f"{stream}/format-conversion-failed/"):
            docs.extend(json.loads(line) for line in (daemon.lake_dir / p).read_text().splitlines())
    return docs


def put(daemon: Spillway, stream: str, records: list[bytes]) -> None:
    fh = firehose_client(daemon)
    for i in range(0, len(records), 500):
        chunk = records[i:i + 500]
        resp = fh.put_record_batch(DeliveryStreamName=stream, Records=[{"Data": r} for r in chunk])
        assert resp["FailedPutCount"] == 0, resp


def parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def duckdb_rows(path: Path) -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute("SELECT * FROM read_parquet(?)", [str(path)]).to_arrow_table().to_pylist()


# -- the generated records and the rows they must become ------------------------------------------

FULL_SCHEMA = [
    ("id", "bigint"), ("name", "string"), ("code", "varchar(4)"), ("qty", "int"),
    ("small", "tinyint"), ("mid", "smallint"), ("ratio", "double"), ("f", "float"),
    ("price", "decimal(12,3)"), ("ok", "boolean"), ("ts", "timestamp"), ("day", "date"),
    ("raw", "binary"), ("tags", "array<string>"),
    ("geo", "struct<city:string,zip:int,points:array<double>>"),
    ("counts", "map<string,bigint>"),
    ("events", "array<struct<kind:string,at:timestamp>>"),
]
FLAT = {"id", "name", "code", "qty", "small", "mid", "ratio", "f", "ok", "ts", "day", "raw"}


def schema_yaml(columns) -> str:
    return "{ columns: [ " + ", ".join(f"{{ name: {n}, type: '{t}' }}" for n, t in columns) + " ] }"


class Gen:
    """Random JSON records and the row each must convert to (OpenX JSON SerDe, default options)."""

    def __init__(self, seed: int):
        self.r = random.Random(seed)

    def maybe(self, make, p_null=0.15):
        """(json value or MISSING/None, expected) with some nulls and missing keys."""
        x = self.r.random()
        if x < p_null / 2:
            return None, None
        if x < p_null:
            return MISSING, None
        return make()

    def text(self, n=12):
        alphabet = "abcXYZ09 _-\"\\/\n\té€😀"
        return "".join(self.r.choice(alphabet) for _ in range(self.r.randrange(n)))

    def timestamp(self):
        micros = self.r.randrange(946_684_800_000_000, 4_102_444_800_000_000)  # 2000..2100
        t = EPOCH + dt.timedelta(microseconds=micros)
        form = self.r.randrange(5)
        if form == 0:  # yyyy-MM-dd HH:mm:ss.ffffff
            return t.strftime("%Y-%m-%d %H:%M:%S.%f"), t
        if form == 1:  # yyyy-MM-dd'T'HH:mm:ss.SSS'Z'
            t = t.replace(microsecond=t.microsecond // 1000 * 1000)
            return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z", t
        if form == 2:  # epoch seconds
            t = t.replace(microsecond=0)
            return int((t - EPOCH).total_seconds()), t
        if form == 3:  # epoch milliseconds
            t = t.replace(microsecond=t.microsecond // 1000 * 1000)
            return (t - EPOCH) // dt.timedelta(milliseconds=1), t
        # yyyy-M-d HH:mm:ss with nanoseconds (truncated to microseconds)
        nanos = t.microsecond * 1000 + self.r.randrange(1000)
        return f"{t.year}-{t.month}-{t.day} {t:%H:%M:%S}.{nanos:09d}", t

    def record(self, flat: bool) -> tuple[dict, dict]:
        r = self.r
        gens = {
            "id": lambda: (v := r.randrange(-2**63, 2**63), v),
            "name": lambda: (v := self.text(), v),
            "code": lambda: (v := self.text(8), v[:4]),
            "qty": lambda: (v := r.randrange(-2**31, 2**31), v),
            "small": lambda: (v := r.randrange(-128, 128), v),
            "mid": lambda: (v := r.randrange(-2**15, 2**15), v),
            "ratio": lambda: (v := r.uniform(-1e12, 1e12), v),
            "f": lambda: (v := r.uniform(-1e6, 1e6), struct.unpack("f", struct.pack("f", v))[0]),
            "price": lambda: (v := f"{r.randrange(-10**9 + 1, 10**9)}.{r.randrange(1000):03d}",
                              decimal.Decimal(v)),
            "ok": lambda: (v := r.random() < 0.5, v),
            "ts": self.timestamp,
            "day": self.day,
            "raw": self.raw,
            "tags": lambda: self.list(lambda: (v := self.text(), v)),
            "geo": self.geo,
            "counts": self.counts,
            "events": lambda: self.list(self.event),
        }
        record, row = {}, {}
        for name, _ in FULL_SCHEMA:
            if flat and name not in FLAT:
                continue
            value, expected = self.maybe(gens[name])
            if value is not MISSING:
                record[name] = value
            row[name] = expected
        return record, row

    def day(self):
        d = dt.date(2000, 1, 1) + dt.timedelta(days=self.r.randrange(40000))
        return d.isoformat(), d

    def raw(self):
        b = self.r.randbytes(self.r.randrange(20))
        return base64.b64encode(b).decode(), b

    def list(self, item):
        values, expected = [], []
        for _ in range(self.r.randrange(4)):
            v, e = self.maybe(item)
            v = None if v is MISSING else v
            values.append(v)
            expected.append(e)
        return values, expected

    def geo(self):
        record, row = {}, {}
        for name, make in [("city", lambda: (v := self.text(), v)),
                           ("zip", lambda: (v := self.r.randrange(100000), v)),
                           ("points", lambda: self.list(lambda: (v := self.r.uniform(-90, 90), v)))]:
            v, e = self.maybe(make)
            if v is not MISSING:
                record[name] = v
            row[name] = e
        return record, row

    def counts(self):
        keys = {f"k{self.r.randrange(1000)}" for _ in range(self.r.randrange(4))}
        values = {k: self.r.randrange(-2**40, 2**40) for k in keys}
        return values, list(values.items())

    def event(self):
        kind, at = self.maybe(lambda: (v := self.text(6), v)), self.maybe(self.timestamp)
        record = {}
        if kind[0] is not MISSING:
            record["kind"] = kind[0]
        if at[0] is not MISSING:
            record["at"] = at[0]
        return record, {"kind": kind[1], "at": at[1]}


MISSING = object()


def seed() -> int:
    return int(os.environ.get("SPILLWAY_TEST_SEED") or random.randrange(2**32))


def assert_rows_equal(got: list[dict], want: list[dict], reader: str, s: int) -> None:
    assert len(got) == len(want), f"{reader}: {len(got)} rows, want {len(want)} (seed {s})"
    for i, (g, w) in enumerate(zip(got, want)):
        for k in w:
            gv, wv = g[k], w[k]
            if isinstance(gv, list) and gv and isinstance(gv[0], tuple):
                gv = sorted(gv)
                wv = sorted(wv) if wv is not None else wv
            assert gv == wv, f"{reader}: row {i} column {k}: read {gv!r}, put {wv!r} (seed {s})"


def test_every_type_reads_back_equal_in_pyarrow_and_duckdb(tmp_path):
    s = seed()
    gen = Gen(s)
    pairs = [gen.record(flat=False) for _ in range(1500)]
    # The edges: an empty object, every column null, empty collections, nested nulls.
    pairs.append(({}, {n: None for n, _ in FULL_SCHEMA}))
    nulls = {n: None for n, _ in FULL_SCHEMA}
    pairs.append((nulls, dict(nulls)))
    pairs.append(({"tags": [], "counts": {}, "events": [], "geo": {}},
                  {**nulls, "tags": [], "counts": [], "events": [],
                   "geo": {"city": None, "zip": None, "points": None}}))
    cfg = write_config(tmp_path, {
        "pq": f"{{ output: parquet, schema: {schema_yaml(FULL_SCHEMA)} }}",
        "pqv2": f"{{ output: parquet, schema: {schema_yaml(FULL_SCHEMA)}, parquet: {{ compression: zstd, writer_version: v2, dictionary: false, block_mib: 1, page_kib: 64 }} }}",
        "orc": f"{{ output: orc, schema: {schema_yaml([c for c in FULL_SCHEMA if c[0] in FLAT])} }}",
    })
    daemon = Spillway(tmp_path, config=cfg)
    daemon.start()
    try:
        records = [json.dumps(rec).encode() for rec, _ in pairs]
        put(daemon, "pq", records)
        put(daemon, "pqv2", records)
        flat_pairs = [gen.record(flat=True) for _ in range(1500)]
        put(daemon, "orc", [json.dumps(rec).encode() for rec, _ in flat_pairs])
    finally:
        daemon.stop()
    want = [row for _, row in pairs]
    for stream in ("pq", "pqv2"):
        files = objects(daemon, f"{stream}/", ".parquet")
        assert len(files) == 1, files
        assert_rows_equal(parquet_rows(files[0]), want, f"pyarrow {stream}", s)
        assert_rows_equal(duckdb_rows(files[0]), want, f"duckdb {stream}", s)
        assert error_docs(daemon, stream) == []
    meta = pq.ParquetFile(objects(daemon, "pqv2/", ".parquet")[0]).metadata
    assert meta.num_row_groups >= 1 and meta.row_group(0).column(0).compression == "ZSTD"

    files = objects(daemon, "orc/", ".orc")
    assert len(files) == 1, files
    table = orc.read_table(files[0])
    want = [row for _, row in flat_pairs]
    assert_rows_equal(table.to_pylist(), want, "pyarrow orc", s)
    con = duckdb.connect()
    con.register("t", table)
    assert con.execute("SELECT count(*), count(id), count(ts) FROM t").fetchone() == (
        len(want), sum(r["id"] is not None for r in want), sum(r["ts"] is not None for r in want))


def test_serde_options_and_timestamp_forms(tmp_path):
    one = lambda cols: schema_yaml(cols)  # noqa: E731
    cfg = write_config(tmp_path, {
        "default": f"{{ output: parquet, schema: {one([('name', 'string'), ('qty', 'int'), ('ts', 'timestamp')])} }}",
        "cased": f"{{ output: parquet, schema: {one([('name', 'string')])}, deserializer: {{ openx: {{ case_insensitive: false }} }} }}",
        "dots": f"{{ output: parquet, schema: {one([('geo_city', 'string'), ('geo', 'struct<city:string>')])}, deserializer: {{ openx: {{ convert_dots_in_json_keys_to_underscores: true }} }} }}",
        "mapped": f"{{ output: parquet, schema: {one([('ts', 'timestamp'), ('kind', 'string')])}, deserializer: {{ openx: {{ column_to_json_key_mappings: {{ ts: '@timestamp', kind: 'event.kind' }} }} }} }}",
        "hive": f"{{ output: parquet, schema: {one([('qty', 'int'), ('ts', 'timestamp')])}, deserializer: {{ hive: {{}} }} }}",
        "hivefmt": f"{{ output: orc, schema: {one([('ts', 'timestamp')])}, deserializer: {{ hive: {{ timestamp_formats: [ millis, \"dd/MM/yyyy HH:mm:ss\" ] }} }} }}",
    })
    t = lambda *a: dt.datetime(*a, tzinfo=UTC)  # noqa: E731
    cases = {
        "default": [
            (b'{"NAME":"a","Qty":"7","ts":"2024-01-02T03:04:05.678Z"}', {"name": "a", "qty": 7, "ts": t(2024, 1, 2, 3, 4, 5, 678000)}),
            (b'{"name":"b","qty":1,"ts":"2024-1-2 03:04:05.123456789"}', {"name": "b", "qty": 1, "ts": t(2024, 1, 2, 3, 4, 5, 123456)}),
            (b'{"ts":1700000000}', {"name": None, "qty": None, "ts": t(2023, 11, 14, 22, 13, 20)}),
            (b'{"ts":1700000000123}', {"name": None, "qty": None, "ts": t(2023, 11, 14, 22, 13, 20, 123000)}),
            (b'{"ts":1700000000.5, "name": {"x": [1]}}', {"name": '{"x":[1]}', "qty": None, "ts": t(2023, 11, 14, 22, 13, 20, 500000)}),
            (b'{"qty":"seven"}', None),
            (b'{"qty":2147483648}', None),
            (b'[{"qty":1}]', None),
            (b'{"ts":"yesterday"}', None),
        ],
        "cased": [
            (b'{"Name":"upper"}', {"name": None}),
            (b'{"name":"lower"}', {"name": "lower"}),
        ],
        "dots": [
            (b'{"geo.city":"Oslo","geo":{"city":"Bergen"}}', {"geo_city": "Oslo", "geo": {"city": "Bergen"}}),
        ],
        "mapped": [
            (b'{"@timestamp":"2024-05-06 07:08:09","event.kind":"click"}', {"ts": t(2024, 5, 6, 7, 8, 9), "kind": "click"}),
        ],
        "hive": [
            (b'{"qty":3,"ts":"2024-05-06 07:08:09.25"}', {"qty": 3, "ts": t(2024, 5, 6, 7, 8, 9, 250000)}),
            (b'{"qty":"3"}', None),  # Hive rejects numbers given as strings
            (b'{"ts":"2024-05-06T07:08:09Z"}', None),
        ],
        "hivefmt": [
            (b'{"ts":1700000000123}', {"ts": t(2023, 11, 14, 22, 13, 20, 123000)}),
            (b'{"ts":"31/12/2023 23:59:58"}', {"ts": t(2023, 12, 31, 23, 59, 58)}),
            (b'{"ts":"2023-12-31"}', None),
        ],
    }
    daemon = Spillway(tmp_path, config=cfg)
    daemon.start()
    try:
        for stream, rows in cases.items():
            put(daemon, stream, [r for r, _ in rows])
    finally:
        daemon.stop()
    for stream, rows in cases.items():
        want = [w for _, w in rows if w is not None]
        bad = [r for r, w in rows if w is None]
        suffix = ".orc" if stream == "hivefmt" else ".parquet"
        files = objects(daemon, f"{stream}/", suffix)
        assert len(files) == 1, (stream, daemon.lake_objects())
        got = orc.read_table(files[0]).to_pylist() if suffix == ".orc" else parquet_rows(files[0])
        assert_rows_equal(got, want, stream, 0)
        if suffix == ".parquet":
            assert_rows_equal(duckdb_rows(files[0]), want, f"duckdb {stream}", 0)
        docs = error_docs(daemon, stream)
        assert sorted(base64.b64decode(d["rawData"]) for d in docs) == sorted(bad), stream
        for d in docs:
            assert set(d) == {"attemptsMade", "arrivalTimestamp", "ErrorCode", "ErrorMessage",
                              "attemptEndingTimestamp", "rawData", "sequenceNumber",
                              "subSequenceNumber", "dataCatalogTable"}, d
            assert d["ErrorCode"].startswith("DataFormatConversion."), d
            assert d["ErrorMessage"], d


def test_bad_schema_is_rejected_by_validate_with_its_line(tmp_path):
    import subprocess
    from conftest import spillway_bin
    cfg = write_config(tmp_path, {"s": "{ output: parquet, schema: { columns: [ { name: a, type: 'map<int>' } ] } }"})
    run = subprocess.run([str(spillway_bin()), "validate", "--config", str(cfg)],
                         capture_output=True, text=True,
                         env={**os.environ, "SPILLWAY_LISTEN": "127.0.0.1:0", "SPILLWAY_DATA_DIR": str(tmp_path),
                              "SPILLWAY_LAKE": str(tmp_path)})
    assert run.returncode == 2, run
    assert f"{cfg}:11:" in run.stderr and "map<int>" in run.stderr, run.stderr
    cfg = write_config(tmp_path, {"s": "{ output: orc, schema: { columns: [ { name: p, type: 'decimal(9,2)' } ] } }"})
    run = subprocess.run([str(spillway_bin()), "validate", "--config", str(cfg)],
                         capture_output=True, text=True,
                         env={**os.environ, "SPILLWAY_LISTEN": "127.0.0.1:0", "SPILLWAY_DATA_DIR": str(tmp_path),
                              "SPILLWAY_LAKE": str(tmp_path)})
    assert run.returncode == 2 and "use output: parquet" in run.stderr, run.stderr


def test_inferred_schema_is_pinned_once_and_kept_across_restarts(tmp_path):
    """`schema: { infer: … }`: the first records give the schema, which is persisted before the
    first object; every later object, after a restart too, has it (a later field is ignored), and
    the pinned file is a schema file `validate` accepts."""
    from conftest import run_validate
    cfg = write_config(tmp_path, {
        "inferred": "{ output: parquet, schema: { infer: { sample_records: 3 } } }",
        "flat": "{ output: orc, schema: { infer: {} } }",
    })
    first = [
        b'{"id":1,"Name":"a","tags":["x","y"],"geo":{"lat":1.5}}',
        b'{"id":2,"name":"b","price":2.5,"geo":{"lat":2,"lon":3}}',
        b'{"id":3.5,"name":null,"tags":[]}',
        b'{"id":4,"late":true}',  # after the sample: not a column
        b'[1]',                    # not an object: an error document
    ]
    daemon = Spillway(tmp_path, config=cfg)
    daemon.start()
    try:
        put(daemon, "inferred", first)
        put(daemon, "flat", first[:3])
    finally:
        daemon.stop()
    pinned = daemon.data_dir / "schemas" / "inferred.json"
    assert json.loads(pinned.read_text()) == {"columns": [
        {"name": "id", "type": "double"}, {"name": "name", "type": "string"},
        {"name": "tags", "type": "array<string>"},
        {"name": "geo", "type": "struct<lat:double,lon:bigint>"},
        {"name": "price", "type": "double"},
    ]}
    want = [
        {"id": 1.0, "name": "a", "tags": ["x", "y"], "geo": {"lat": 1.5, "lon": None}, "price": None},
        {"id": 2.0, "name": "b", "tags": None, "geo": {"lat": 2.0, "lon": 3}, "price": 2.5},
        {"id": 3.5, "name": None, "tags": [], "geo": None, "price": None},
        {"id": 4.0, "name": None, "tags": None, "geo": None, "price": None},
    ]
    [file] = objects(daemon, "inferred/", ".parquet")
    assert parquet_rows(file) == want
    assert duckdb_rows(file) == want
    assert [base64.b64decode(d["rawData"]) for d in error_docs(daemon, "inferred")] == [b"[1]"]
    [flat] = objects(daemon, "flat/", ".orc")
    assert orc.read_table(flat).to_pylist() == [
        {"id": 1.0, "name": "a", "tags": '["x","y"]', "geo": '{"lat":1.5}', "price": None},
        {"id": 2.0, "name": "b", "tags": None, "geo": '{"lat":2,"lon":3}', "price": 2.5},
        {"id": 3.5, "name": None, "tags": "[]", "geo": None, "price": None},
    ]

    # A restart reads the pin back: records with another shape keep the pinned schema.
    daemon.start()
    try:
        put(daemon, "inferred", [b'{"late":1,"id":9,"extra":{"a":1}}'])
    finally:
        daemon.stop()
    files = objects(daemon, "inferred/", ".parquet")
    assert len(files) == 2
    schemas = {str(pq.read_schema(f)) for f in files}
    assert len(schemas) == 1, schemas
    later = [r for f in files for r in parquet_rows(f) if r["id"] == 9.0]
    assert later == [{"id": 9.0, "name": None, "tags": None, "geo": None, "price": None}]

    # The pinned file serves as a schema file.
    frozen = write_config(tmp_path, {"s": f"{{ output: parquet, schema: {{ file: '{pinned}' }} }}"})
    run = run_validate(frozen, tmp_path)
    assert run.returncode == 0, run.stderr


def vm_hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_conversion_streams_row_groups_with_bounded_memory(tmp_path):
    """~100 MiB of JSON into one Parquet object with 1 MiB row groups: the daemon's peak RSS stays
    far below the object's size, and the file holds many row groups."""
    cfg = write_config(tmp_path, {
        "big": "{ output: parquet, schema: { columns: [ { name: i, type: bigint }, { name: s, type: string } ] }, parquet: { compression: uncompressed, block_mib: 1 } }",
    }, size_mib=128)
    daemon = Spillway(tmp_path, config=cfg)
    daemon.start()
    r = random.Random(7)
    total = 0
    try:
        for batch in range(220):
            records = [json.dumps({"i": batch * 500 + j, "s": r.randbytes(480).hex()}).encode()
                       for j in range(500)]
            total += sum(map(len, records))
            put(daemon, "big", records)
        time.sleep(1)  # let delivery catch up with the last batch
        peak = vm_hwm_mib(daemon.proc.pid)
    finally:
        daemon.stop()
    files = objects(daemon, "big/", ".parquet")
    meta = pq.ParquetFile(files[0]).metadata
    assert sum(pq.ParquetFile(f).metadata.num_rows for f in files) == 110_000
    assert meta.num_row_groups > 50, meta.num_row_groups
    assert total > 100 << 20
    assert peak < 96, f"peak RSS {peak:.0f} MiB while converting {total >> 20} MiB into one object"


def test_parquet_streams_into_a_multipart_upload_on_s3(tmp_path, store_env, s3):
    bucket = store_env["bucket"]
    cfg = write_config(tmp_path, {
        STREAM: "{ output: parquet, schema: { columns: [ { name: i, type: bigint }, { name: s, type: string } ] }, parquet: { compression: uncompressed, block_mib: 1 } }",
    }, url="s3://${SPILLWAY_S3_BUCKET}", extra_s3="        force_path_style: true\n        part_mib: 5\n")
    daemon = Spillway(tmp_path, config=cfg)
    daemon.start()
    r = random.Random(11)
    try:
        fh = firehose_client(daemon)
        for batch in range(60):
            put_all(fh, [json.dumps({"i": batch * 500 + j, "s": r.randbytes(300).hex()}).encode()
                         for j in range(500)])
    finally:
        daemon.stop()
    keys = [k for k in bucket_keys(s3, bucket) if k.endswith(".parquet")]
    assert len(keys) == 1, bucket_keys(s3, bucket)
    head = s3.head_object(Bucket=bucket, Key=keys[0])
    assert head["ContentLength"] > 15 << 20
    assert "-" in head["ETag"], "a multipart upload's ETag has a part count"
    body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()
    path = tmp_path / "got.parquet"
    path.write_bytes(body)
    ids = pq.read_table(path, columns=["i"]).column("i").to_pylist()
    assert ids == list(range(30_000))
    con = duckdb.connect()
    assert con.execute("SELECT count(*), count(DISTINCT i) FROM read_parquet(?)", [str(path)]).fetchone() == (30_000, 30_000)
    assert open_uploads(s3, bucket) == []


# The S3 fixtures, shared with test_s3.py.
from test_s3 import bucket, s3, seaweed, store_env  # noqa: E402,F401


def test_config_parquet_yaml_runs_as_is_and_duckdb_queries_the_lake(tmp_path):
    """config/parquet.yaml (schema file beside it) with benches/gen.py's clickstream records."""
    import subprocess
    import sys
    from conftest import REPO_ROOT
    data = tmp_path / "clicks.ndjson"
    subprocess.run([sys.executable, str(REPO_ROOT / "benches/gen.py"), "20000", str(data)], check=True)
    lines = data.read_bytes().splitlines()
    daemon = Spillway(tmp_path, config=REPO_ROOT / "config/parquet.yaml")
    daemon.start()
    try:
        put(daemon, "clicks", lines + [b'{"qty": "many"}'])
    finally:
        daemon.stop()
    files = objects(daemon, "clicks/", ".parquet")
    assert files, daemon.lake_objects()
    records = [json.loads(line) for line in lines]
    con = duckdb.connect()
    glob = str(daemon.lake_dir / "clicks" / "**" / "*.parquet")
    count, qty, amount, tags, countries = con.execute(
        "SELECT count(*), sum(qty), sum(amount), sum(len(tags)), count(DISTINCT geo.country) "
        "FROM read_parquet(?)", [glob]).fetchone()
    assert count == len(records)
    assert qty == sum(r["qty"] for r in records)
    assert amount == sum(decimal.Decimal(str(r["amount"])) for r in records if r["amount"] is not None)
    assert tags == sum(len(r["tags"]) for r in records)
    assert countries == len({r["geo"]["country"] for r in records})
    first = con.execute("SELECT event_id, epoch_ms(ts) FROM read_parquet(?) ORDER BY ts, event_id LIMIT 1",
                        [glob]).fetchone()
    want = min(records, key=lambda r: (r["ts"], r["event_id"]))
    at = dt.datetime.strptime(want["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert first == (want["event_id"], (at - EPOCH) // dt.timedelta(milliseconds=1))
    errors = [p for p in daemon.lake_objects() if p.as_posix().startswith("clicks-errors/format-conversion-failed/")]
    assert len(errors) == 1, daemon.lake_objects()
