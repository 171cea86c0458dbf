"""WASM transformation plugins (`wasm` processors) end to end, through the real daemon: unmodified
boto3 puts records, SIGTERM drains every buffer, and the lake and the processing-failed error
documents are read back from the file system.

- every example plugin of transforms/ (rename, filter, split, upper, partition_keys) against a
  Python reference of its behaviour, covering the Ok (one piece, several pieces, zero pieces),
  Dropped and ProcessingFailed results, and the plugins' partition keys in S3 prefixes;
- buffer_mib bounding the records of one call; replay through the plugins after a SIGKILL;
- chained plugins: order of application, keys surviving later plugins, a later plugin's failure
  reporting the record as it entered that plugin, metadata_extraction after the plugins;
- every hostile plugin in one daemon, next to a healthy delivery stream that keeps delivering;
- plugins (and wasm options) refused when the configuration is validated or the daemon starts;
- DescribeDeliveryStream's `Lambda` processors.

The generated data is seeded at random per run (printed on failure); set SPILLWAY_TEST_SEED to
replay a run. The plugins are built by transforms/build.sh (run here if one is missing).
"""

from __future__ import annotations

import collections
import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, Spillway, run_validate, split_object
from test_format import put, seed
from test_partitioning import (ERROR_PREFIX, HOUR_DIRS, OBJECT_NAME, config_yaml, describe, encoded,
                               error_types, line_of, objects_under, partition_dirs, processor_types,
                               raw, stream_yaml)
from test_partitioning import start  # noqa: F401  (the fixture: a daemon on a config text)
from test_s3 import firehose_client

BUILD = REPO_ROOT / "transforms" / "build"
WRONG_ABI_WAT = REPO_ROOT / "transforms" / "hostile" / "wrong_abi.wat"
PLUGINS = ["rename", "filter", "split", "upper", "partition_keys", "loop", "alloc_bomb",
           "bad_pointer", "absurd_length", "trap", "bad_ids", "wrong_abi"]
PLUGIN_DOC_FIELDS = {"attemptsMade", "arrivalTimestamp", "errorCode", "errorMessage",
                     "attemptEndingTimestamp", "rawData", "lambdaArn"}
TENANT_KIND_PREFIX = "tenant=!{partitionKeyFromLambda:tenant}/kind=!{partitionKeyFromLambda:kind}/"


@pytest.fixture(scope="session", autouse=True)
def plugins_built():
    if any(not (BUILD / f"{p}.wasm").is_file() for p in PLUGINS):
        subprocess.run([str(REPO_ROOT / "transforms" / "build.sh")], check=True, timeout=600)
    missing = [p for p in PLUGINS if not (BUILD / f"{p}.wasm").is_file()]
    assert not missing, f"transforms/build.sh did not build {missing}"


def module(name: str) -> str:
    return str(BUILD / f"{name}.wasm")


def arn(path: str) -> str:
    return f"wasm:{path}#spillway_transform"


def wasm(name: str, **options) -> str:
    """A `wasm` processor item (YAML flow map) for the plugin `name` (absolute path)."""
    opts = {"module": options.pop("module", module(name)), **options}
    return "wasm: { " + ", ".join(f"{k}: {json.dumps(v)}" for k, v in opts.items()) + " }"


# -- Python references of the example plugins (ports of json_scan.h and the plugins) -------------

WS = b" \t\n\r"
LITERAL = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+-.")


def _ws(d: bytes, i: int) -> int:
    while i < len(d) and d[i] in WS:
        i += 1
    return i


def _string_end(d: bytes, i: int) -> int | None:
    i += 1
    while i < len(d):
        c = d[i]
        if c == 0x22:
            return i + 1
        if c == 0x5C:
            i += 1
            if i == len(d):
                return None
        elif c < 0x20:
            return None
        i += 1
    return None


def _value_end(d: bytes, i: int) -> int | None:
    if i >= len(d):
        return None
    if d[i] not in b"{[":
        if d[i] == 0x22:
            return _string_end(d, i)
        s = i
        while i < len(d) and d[i] in LITERAL:
            i += 1
        return None if i == s else i
    stack = []
    while i < len(d):
        c = d[i]
        if c == 0x22:
            i = _string_end(d, i)
            if i is None:
                return None
            continue
        if c in b"{[":
            if len(stack) == 64:
                return None
            stack.append(b"}" if c == 0x7B else b"]")
        elif c in b"}]":
            if not stack or stack.pop()[0] != c:
                return None
            if not stack:
                return i + 1
        i += 1
    return None


def scan_object(d: bytes):
    """json_scan.h's walk of a top-level object: (members, close) where members are
    (key_token_start, raw_key, raw_value) in order, as far as the walk got, and close is the
    position of the closing brace if the whole input was one object plus whitespace, else None."""
    members = []
    i = _ws(d, 0)
    if i == len(d) or d[i] != 0x7B:
        return members, None
    i += 1
    while True:
        i = _ws(d, i)
        if i < len(d) and d[i] == 0x7D:
            return members, (i if _ws(d, i + 1) == len(d) else None)
        if members:
            if i == len(d) or d[i] != 0x2C:
                return members, None
            i = _ws(d, i + 1)
        if i == len(d) or d[i] != 0x22:
            return members, None
        tok = i
        end = _string_end(d, i)
        if end is None:
            return members, None
        key = d[tok + 1:end - 1]
        i = _ws(d, end)
        if i == len(d) or d[i] != 0x3A:
            return members, None
        i = _ws(d, i + 1)
        vend = _value_end(d, i)
        if vend is None:
            return members, None
        members.append((tok, key, d[i:vend]))
        i = vend


def _unescape(tok: bytes) -> bytes | None:
    """js_unescape of a raw string token (with its quotes); None on a bad escape / lone surrogate."""
    out = bytearray()
    p, e = 1, len(tok) - 1
    simple = {ord('"'): b'"', ord("\\"): b"\\", ord("/"): b"/", ord("b"): b"\b",
              ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t"}

    def hex4(at: int) -> int | None:
        h = tok[at:at + 4]
        return int(h, 16) if len(h) == 4 and all(c in b"0123456789abcdefABCDEF" for c in h) else None

    while p < e:
        if tok[p] != 0x5C:
            out.append(tok[p])
            p += 1
            continue
        if e - p < 2:
            return None
        c = tok[p + 1]
        p += 2
        if c in simple:
            out += simple[c]
        elif c == ord("u"):
            cp = hex4(p) if e - p >= 4 else None
            if cp is None:
                return None
            p += 4
            if 0xDC00 <= cp <= 0xDFFF:
                return None
            if 0xD800 <= cp <= 0xDBFF:
                lo = hex4(p + 2) if e - p >= 6 and tok[p:p + 2] == b"\\u" else None
                if lo is None or not 0xDC00 <= lo <= 0xDFFF:
                    return None
                p += 6
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00)
            out += chr(cp).encode()
        else:
            return None
    return bytes(out)


class Failed(str):
    """A reference's ProcessingFailed result; the string is the error message."""


def rename_ref(d: bytes):
    members, close = scan_object(d)
    if close is None:
        return Failed("record is not a JSON object")
    out = d
    shift = 0
    msg = next((tok for tok, key, _ in members if key == b"msg"), None)
    if msg is not None:
        out = d[:msg] + b'"message"' + d[msg + 5:]
        shift = len(b'"message"') - 5
    close += shift
    return [out[:close] + (b',"enriched":true' if members else b'"enriched":true') + out[close:]]


def filter_ref(d: bytes):
    members, _ = scan_object(d)
    if any(key == b"level" and val == b'"debug"' for _, key, val in members):
        return []  # Dropped
    return [d]


def split_ref(d: bytes):
    pieces, p = [], 0
    while p < len(d):
        nl = d.find(b"\n", p)
        nxt = len(d) if nl < 0 else nl + 1
        if d[p:nxt].strip(b"\r\n"):
            pieces.append(d[p:nxt])
        p = nxt
    return pieces  # Ok, maybe with zero pieces


def upper_ref(d: bytes):
    return Failed("empty record") if not d else [d.upper()]  # bytes.upper(): ASCII only


def tenant_ref(d: bytes):
    """partition_keys' tenant for a record, or Failed with its message."""
    i = _ws(d, 0)
    if i == len(d) or d[i] != 0x7B:
        return Failed("record is not a JSON object")
    members, _ = scan_object(d)
    for _, key, val in members:
        if key != b"tenant" or not val.startswith(b'"'):
            continue
        v = _unescape(val)
        try:
            text = v.decode("utf-8") if v is not None else None
        except UnicodeDecodeError:
            text = None
        if text is None:
            return Failed('bad "tenant" string')
        if not 1 <= len(v) <= 1024:
            return Failed('"tenant" must be 1..1024 bytes')
        return text
    return Failed('no string field "tenant"')


def test_references_agree_with_the_plugin_readmes_table():
    """The references themselves, on the cases transforms/README.md describes."""
    assert rename_ref(b'{"msg":"hi","n":1}') == [b'{"message":"hi","n":1,"enriched":true}']
    assert rename_ref(b' {}\n') == [b' {"enriched":true}\n']
    assert rename_ref(b'{"m\\u0073g":1}') == [b'{"m\\u0073g":1,"enriched":true}']
    assert rename_ref(b"[1]") == Failed("record is not a JSON object")
    assert rename_ref(b'{"a":1}{"b":2}') == Failed("record is not a JSON object")
    assert filter_ref(b'{"level": "debug"}') == [] and filter_ref(b"x") == [b"x"]
    assert split_ref(b"a\n\nb\r\n\r\nc") == [b"a\n", b"b\r\n", b"c"] and split_ref(b"\n\r\n") == []
    assert upper_ref(b"a\xc3\xa9z") == [b"A\xc3\xa9Z"] and upper_ref(b"") == Failed("empty record")
    assert tenant_ref(b'{"tenant":"t\\u00e9\\ud83d\\ude00"}') == "t\u00e9\U0001F600"
    assert tenant_ref(b'{"tenant":"\\ud800"}') == Failed('bad "tenant" string')


# -- reading the lake -----------------------------------------------------------------------------

def object_bytes(daemon: Spillway, top: str) -> bytes:
    """Every object under `top` concatenated (objects in path order)."""
    return b"".join((daemon.lake_dir / p).read_bytes() for p in objects_under(daemon, top))


def delimited(records) -> bytes:
    return b"".join(r + b"\n" for r in records)


def plugin_docs(daemon: Spillway, top: str = "errors/", output_type: str = "processing-failed"
                ) -> list[dict]:
    """The error documents under `<top><output_type>/`, in file order, each checked for Firehose's
    fields plus lambdaArn, under the hourly directories."""
    docs = []
    for p in objects_under(daemon, f"{top}{output_type}/"):
        assert HOUR_DIRS.match(p.parent.relative_to(f"{top}{output_type}").as_posix()), (
            f"error object {p} is not under the hourly yyyy/MM/dd/HH/ directories")
        assert OBJECT_NAME.match(p.name), f"error object name {p.name!r}"
        for line in split_object((daemon.lake_dir / p).read_bytes(), p.as_posix()):
            doc = json.loads(line)
            assert set(doc) == PLUGIN_DOC_FIELDS, f"{p}: {doc}"
            assert doc["attemptEndingTimestamp"] >= doc["arrivalTimestamp"], doc
            docs.append(doc)
    return docs


def failure_rows(docs: list[dict]) -> list[tuple]:
    """(rawData, errorCode, errorMessage, attemptsMade, lambdaArn) of every document, sorted: a
    multiset, so that a record reported twice is caught."""
    return sorted((raw(d), d["errorCode"], d["errorMessage"], d["attemptsMade"], d["lambdaArn"])
                  for d in docs)


def status_failed(rec: bytes, message: str, plugin_module: str) -> tuple:
    """The failure row of a record its plugin returned as ProcessingFailed (one attempt)."""
    return (rec, "Lambda.ProcessingFailedStatus", message, 1, arn(plugin_module))


def check_arrival(docs: list[dict], began: float, ended: float) -> None:
    for d in docs:
        assert int(began * 1000) - 1000 <= d["arrivalTimestamp"] <= int(ended * 1000) + 1000, (
            d, began, ended)


def timed_put(daemon: Spillway, stream: str, records: list[bytes]) -> tuple[float, float]:
    began = time.time()
    put(daemon, stream, records)
    return began, time.time()


def json_records(r: random.Random, n: int, keys=("msg", "level", "tenant", "a", "n")) -> list[bytes]:
    """Random JSON objects with assorted spacing, nesting, key order and escapes."""
    out = []
    for i in range(n):
        obj = {}
        for k in r.sample(list(keys), r.randrange(len(keys) + 1)):
            obj[k] = r.choice([
                f"v{i}", r.randrange(10**6), None, True, {"msg": "nested", "level": "debug"},
                ["msg", {"tenant": "x"}], "debug", "t\u00e9\u20ac", "a\"b\\c\n", "" if k != "n" else 0,
            ])
        obj["seq"] = i
        items = list(obj.items())
        r.shuffle(items)
        sep = r.choice([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
        text = json.dumps(dict(items), separators=sep, ensure_ascii=r.random() < 0.5)
        out.append((r.choice(["", " ", "\n"]) + text + r.choice(["", "\n", " \r\n"])).encode())
    return out


# -- 1. the example plugins ------------------------------------------------------------------------

def single_plugin_stream(name: str, plugin: str, **options) -> str:
    return stream_yaml(name, prefix=f"{name}/",
                       error_prefix=f"{name}-errors/!{{firehose:error-output-type}}/",
                       processing=[wasm(plugin, **options), "append_delimiter: true"])


def run_example(start, plugin: str, records: list[bytes], ref, s: int) -> tuple[Spillway, list, list]:
    """Puts `records` through a stream running `plugin` alone; checks that the delivered bytes are
    `ref` applied to the records in order and that the processing-failed documents are exactly the
    records `ref` fails (with their arrival times). Returns the daemon and the reference's results
    (a list of pieces, or Failed) and the delivered records."""
    daemon = start(config_yaml(single_plugin_stream(plugin, plugin)))
    began, ended = timed_put(daemon, plugin, records)
    daemon.stop()
    results = [ref(rec) for rec in records]
    want_out = [p for res in results if not isinstance(res, Failed) for p in res]
    want_failed = sorted(status_failed(rec, str(res), module(plugin))
                         for rec, res in zip(records, results) if isinstance(res, Failed))
    got = object_bytes(daemon, f"{plugin}/")
    assert got == delimited(want_out), (
        f"seed {s}: {plugin} delivered {split_object(got, plugin)[:8]}... "
        f"want {want_out[:8]}... ({len(want_out)} records)")
    docs = plugin_docs(daemon, f"{plugin}-errors/")
    assert failure_rows(docs) == want_failed, f"seed {s}"
    check_arrival(docs, began, ended)
    assert error_types(daemon, f"{plugin}-errors/") == ({"processing-failed"} if want_failed else set())
    return daemon, results, split_object(got, plugin)


def kinds(results) -> collections.Counter:
    """How many results were ProcessingFailed, empty (Dropped, or Ok without pieces), one piece,
    several pieces."""
    return collections.Counter("failed" if isinstance(r, Failed) else
                               ("empty", "one", "many")[min(len(r), 2)] for r in results)


RENAME_FIXED = [
    b'{"msg":"hello","n":1}', b'{"n":1,"msg":"later"}', b'{}', b' { } ', b'{"a":{"msg":1},"msg":2}',
    b'{"msg":1,"msg":2}', b'{"m\\u0073g":"escaped key"}', b'{"message":"already"}',
    b'{"msg":"trailing newline"}\n', b'{"msg":"x"}  \r\n', b'{"s":"}"}', b'{"s":"\\"msg\\""}',
    b"[1,2]", b'"msg"', b"not json", b"", b'{"a":1}{"b":2}', b'{"a":1', b'{"a":1} x', b"{,}",
]


def test_rename_end_to_end(start):
    """Ok (one piece, "msg" renamed, "enriched" added, other bytes kept) and ProcessingFailed
    ("record is not a JSON object", rawData the record as put)."""
    s = seed()
    records = RENAME_FIXED + json_records(random.Random(s), 300)
    daemon, results, got = run_example(start, "rename", records, rename_ref, s)
    assert kinds(results) == {"one": len(records) - 8, "failed": 8}, kinds(results)
    assert got[:8] == [b'{"message":"hello","n":1,"enriched":true}',
                       b'{"n":1,"message":"later","enriched":true}', b'{"enriched":true}',
                       b' { "enriched":true} ', b'{"a":{"msg":1},"message":2,"enriched":true}',
                       b'{"message":1,"msg":2,"enriched":true}',
                       b'{"m\\u0073g":"escaped key","enriched":true}',
                       b'{"message":"already","enriched":true}']
    rows = failure_rows(plugin_docs(daemon, "rename-errors/"))
    assert status_failed(b"[1,2]", "record is not a JSON object", module("rename")) in rows
    assert status_failed(b"", "record is not a JSON object", module("rename")) in rows


def test_filter_end_to_end(start):
    """Dropped (top-level "level":"debug") and Ok unchanged (everything else, non-JSON too)."""
    s = seed()
    fixed = [b'{"level":"debug"}', b'{"level": "debug", "n": 1}', b'{"n":1,"level":"debug"}',
             b'{"level":"DEBUG"}', b'{"level":"info"}', b'{"a":{"level":"debug"}}',
             b'{"level":["debug"]}', b'{"lev\\u0065l":"debug"}', b'{"level":"debug"', b"not json",
             b"", b'["level","debug"]', b'{"level":"debugx"}']
    records = fixed + json_records(random.Random(s), 300, keys=("level", "level2", "n", "a"))
    daemon, results, got = run_example(start, "filter", records, filter_ref, s)
    k = kinds(results)
    assert k["failed"] == 0 and k["empty"] >= 4 and k["one"] >= 9, k
    assert got[:9] == [b'{"level":"DEBUG"}', b'{"level":"info"}', b'{"a":{"level":"debug"}}',
                       b'{"level":["debug"]}', b'{"lev\\u0065l":"debug"}', b"not json", b"",
                       b'["level","debug"]', b'{"level":"debugx"}']


def test_split_end_to_end(start):
    """Ok with several pieces (one per non-empty line, each keeping its newline), one piece, and
    zero pieces (a blank record delivers nothing and is no failure)."""
    s = seed()
    r = random.Random(s)
    fixed = [b"a\nb\nc", b"one line", b"ends\n", b"\n", b"", b"\r\n\n\r", b"x\r\ny\n\n\nz",
             b"\n\nlead", b'{"json":1}\n{"json":2}\n']
    rand = [b"".join(r.choice([b"\n", b"\r\n", b"w%d" % r.randrange(1000), b" ", b"\r"])
                     for _ in range(r.randrange(12))) for _ in range(300)]
    daemon, results, _ = run_example(start, "split", fixed + rand, split_ref, s)
    k = kinds(results)
    assert k["failed"] == 0 and k["empty"] >= 3 and k["one"] >= 3 and k["many"] >= 3, k
    assert object_bytes(daemon, "split/").startswith(
        b"a\n\nb\n\nc\none line\nends\n\nx\r\n\ny\n\nz\nlead\n"
        b'{"json":1}\n\n{"json":2}\n\n')


def test_upper_rust_plugin_end_to_end(start):
    """The Rust plugin: Ok (ASCII upper-cased, other bytes kept) and ProcessingFailed for empty
    records ("empty record", reported once each)."""
    s = seed()
    r = random.Random(s)
    fixed = [b"hello", b"MiXeD 123 _-", b"caf\xc3\xa9 \xe2\x82\xac", b"", b"\x00\xff\x80az",
             b'{"msg":"x"}', b"\n"]
    records = fixed + [r.randbytes(r.randrange(1, 200)) for _ in range(200)] + [b""]
    daemon, results, got = run_example(start, "upper", records, upper_ref, s)
    assert kinds(results) == {"one": len(records) - 2, "failed": 2}
    assert failure_rows(plugin_docs(daemon, "upper-errors/")) == [
        status_failed(b"", "empty record", module("upper"))] * 2
    assert got[:6] == [b"HELLO", b"MIXED 123 _-", b"CAF\xc3\xa9 \xe2\x82\xac", b"\x00\xff\x80AZ",
                       b'{"MSG":"X"}', b""]


def test_partition_keys_reach_the_prefix(start):
    """Keys tenant (from the record) and kind (the plugin's config) become the S3 prefix, encoded
    as any partition key value; records without a usable tenant are ProcessingFailed."""
    s = seed()
    r = random.Random(s)
    tenants = ["t1", "a/b c", "..", "\u00e9\u20ac", "x=y", "100%", 'q"uote', "new\nline"]
    good = [json.dumps({"tenant": t, "n": i}, ensure_ascii=r.random() < 0.5).encode()
            for i, t in enumerate(tenants * 3)]
    # The last one is malformed after its tenant member: the plugin takes the tenant it found.
    bad = [b'{"n":"no tenant"}', b'{"tenant":5}', b'{"tenant":""}', b'{"tenant":"\\ud800"}',
           b"[1]", b"not json", b'{"a":{"tenant":"nested"}}', b"", b'{"tenant":"x"']
    records = good + bad + [b'{"tenant":"t\\u00e9"}', b' {"tenant" : "t1"} \n']
    r.shuffle(records)
    daemon = start(config_yaml(stream_yaml(
        "keys", prefix=TENANT_KIND_PREFIX,
        processing=[wasm("partition_keys", config="clicks/v1"), "append_delimiter: true"],
        dynamic_partitioning="{ enabled: true }")))
    began, ended = timed_put(daemon, "keys", records)
    daemon.stop()

    want, want_failed = collections.defaultdict(list), []
    for rec in records:
        t = tenant_ref(rec)
        if isinstance(t, Failed):
            want_failed.append(status_failed(rec, str(t), module("partition_keys")))
        else:
            want[f"tenant={encoded(t)}/kind=clicks%2Fv1/"].append(rec)
    assert len(want_failed) == 8 and {"tenant=a%2Fb%20c/kind=clicks%2Fv1/",
                                      "tenant=t%C3%A9/kind=clicks%2Fv1/",
                                      "tenant=x/kind=clicks%2Fv1/"} <= set(want)
    got = {part: b"".join((daemon.lake_dir / p).read_bytes() for p in paths)
           for part, paths in partition_dirs(daemon, "tenant=").items()}
    assert got == {part: delimited(recs) for part, recs in want.items()}, f"seed {s}"
    docs = plugin_docs(daemon)
    assert failure_rows(docs) == sorted(want_failed), f"seed {s}"
    assert status_failed(b'{"tenant":""}', '"tenant" must be 1..1024 bytes',
                         module("partition_keys")) in want_failed
    check_arrival(docs, began, ended)
    assert error_types(daemon) == {"processing-failed"}


def test_a_prefix_key_no_plugin_returns_fails_the_record(start):
    """partition_keys returns tenant and kind; a prefix also naming `region` cannot be rendered:
    the records go to processing-failed (the daemon's business, like Firehose), none delivered."""
    records = [b'{"tenant":"t1","n":1}', b'{"tenant":"t2","n":2}']
    daemon = start(config_yaml(stream_yaml(
        "keys", prefix="tenant=!{partitionKeyFromLambda:tenant}/region=!{partitionKeyFromLambda:region}/",
        processing=[wasm("partition_keys", config="k"), "append_delimiter: true"],
        dynamic_partitioning="{ enabled: true }")))
    put(daemon, "keys", records)
    daemon.stop()
    assert objects_under(daemon, "tenant=") == []
    docs = []
    for p in objects_under(daemon, "errors/processing-failed/"):
        docs.extend(json.loads(line) for line in split_object((daemon.lake_dir / p).read_bytes(), str(p)))
    assert sorted(raw(d) for d in docs) == sorted(records), docs
    assert {d["errorCode"] for d in docs} == {"DynamicPartitioning.PartitionKeyMissing"}, docs


def test_buffer_mib_bounds_the_records_of_a_plugin_call(start):
    """bad_ids in its "count" mode fails every record with the size of the batch it came in:
    with buffer_mib 0.2 (209,715 bytes), 100,000-byte records go two to a call and 60,000-byte
    ones three."""
    big = [bytes([65 + i]) * 100_000 for i in range(6)]
    mid = [bytes([97 + i]) * 60_000 for i in range(6)]
    daemon = start(config_yaml(*(
        stream_yaml(name, prefix=f"{name}/", error_prefix=f"{name}-errors/!{{firehose:error-output-type}}/",
                    processing=[wasm("bad_ids", config="count", buffer_mib=0.2, number_of_retries=0)])
        for name in ("big", "mid"))))
    put(daemon, "big", big)
    put(daemon, "mid", mid)
    daemon.stop()
    big_rows = failure_rows(plugin_docs(daemon, "big-errors/"))
    mid_rows = failure_rows(plugin_docs(daemon, "mid-errors/"))
    assert [(r, c, m, a) for r, c, m, a, _ in big_rows] == [
        (r, "Lambda.ProcessingFailedStatus", "batch of 2 records", 1) for r in big]
    assert [(r, c, m, a) for r, c, m, a, _ in mid_rows] == [
        (r, "Lambda.ProcessingFailedStatus", "batch of 3 records", 1) for r in mid]
    assert objects_under(daemon, "big/") == [] and objects_under(daemon, "mid/") == []


def test_a_record_that_crashes_the_plugin_fails_alone(start):
    """trap "poison" echoes records but traps on any batch holding one that starts with POISON:
    after the batch's retries the host tries each record alone, so only the poison records go to
    processing-failed (with the single call's attempts) and their neighbours are delivered."""
    r = random.Random(seed())
    records = [json.dumps({"i": i, "v": r.random()}).encode() for i in range(300)]
    poison = sorted(r.sample(range(300), 3))
    for i in poison:
        records[i] = b"POISON " + records[i]
    daemon = start(config_yaml(stream_yaml(
        "p", prefix="p/", error_prefix="p-errors/!{firehose:error-output-type}/",
        processing=[wasm("trap", config="poison", number_of_retries=1), "append_delimiter: true"])))
    put(daemon, "p", records)
    daemon.stop()
    assert object_bytes(daemon, "p/") == delimited(
        rec for i, rec in enumerate(records) if i not in poison)
    rows = failure_rows(plugin_docs(daemon, "p-errors/"))
    assert [(raw_, code, attempts) for raw_, code, _, attempts, _ in rows] == sorted(
        (records[i], "Lambda.FunctionError", 2) for i in poison)
    assert all("unreachable" in message for _, _, message, _, _ in rows), rows


def test_plugin_output_is_delivered_once_after_a_crash(start):
    """SIGKILL before anything was delivered: the restarted daemon replays the log through the
    plugins and delivers every transformed record once."""
    s = seed()
    records = json_records(random.Random(s), 400) + [b"not json", b"{}\n{}"]
    daemon = start(config_yaml(stream_yaml(
        "crash", prefix="crash/", error_prefix="crash-errors/!{firehose:error-output-type}/",
        processing=[wasm("split"), wasm("rename"), "append_delimiter: true"])))
    put(daemon, "crash", records)
    daemon.kill()
    assert daemon.lake_objects() == []
    daemon.start()
    daemon.stop()
    pieces = [p for rec in records for p in split_ref(rec)]
    results = [rename_ref(p) for p in pieces]
    want = [r[0] for r in results if not isinstance(r, Failed)]
    assert object_bytes(daemon, "crash/") == delimited(want), f"seed {s}"
    assert failure_rows(plugin_docs(daemon, "crash-errors/")) == sorted(
        status_failed(p, str(r), module("rename")) for p, r in zip(pieces, results)
        if isinstance(r, Failed))


# -- 2. chained plugins -----------------------------------------------------------------------------

def parts(daemon: Spillway, top: str) -> dict[str, bytes]:
    """Partition (path up to the hourly directories) → its objects' bytes concatenated."""
    return {part: b"".join((daemon.lake_dir / p).read_bytes() for p in paths)
            for part, paths in partition_dirs(daemon, top).items()}


def test_chained_plugins_apply_in_order_and_keys_accumulate(start):
    s = seed()
    r = random.Random(s)
    pk = module("partition_keys")
    daemon = start(config_yaml(
        # rename → partition_keys → split → upper: keys taken before upper stay lower case, split
        # pieces share their record's keys, and upper sees the renamed key.
        stream_yaml("chain", prefix="chain/" + TENANT_KIND_PREFIX,
                    processing=[wasm("rename"), wasm("partition_keys", config="k1"), wasm("split"),
                                wasm("upper"), "append_delimiter: true"],
                    dynamic_partitioning="{ enabled: true }",
                    error_prefix="chain-errors/!{firehose:error-output-type}/"),
        # split → rename → filter: rename judges each line alone, and its failure carries the line
        # as split made it; filter drops renamed debug lines.
        stream_yaml("lines", prefix="lines/",
                    processing=[wasm("split"), wasm("rename"), wasm("filter")],
                    error_prefix="lines-errors/!{firehose:error-output-type}/"),
        # Two partition_keys: the later kind replaces the earlier one, tenant stays.
        stream_yaml("twice", prefix="twice/" + TENANT_KIND_PREFIX,
                    processing=[wasm("partition_keys", config="first"),
                                wasm("partition_keys", config="second"), "append_delimiter: true"],
                    dynamic_partitioning="{ enabled: true }",
                    error_prefix="twice-errors/!{firehose:error-output-type}/"),
        # partition_keys → upper → split: upper returns no keys, the earlier ones survive.
        stream_yaml("survive", prefix="survive/" + TENANT_KIND_PREFIX,
                    processing=[wasm("partition_keys", config="kept"), wasm("upper"), wasm("split"),
                                "append_delimiter: true"],
                    dynamic_partitioning="{ enabled: true }",
                    error_prefix="survive-errors/!{firehose:error-output-type}/"),
        # rename → partition_keys → metadata_extraction: the jq query sees the plugins' output
        # ("message"), and the prefix takes keys from both.
        stream_yaml("query", prefix="query/m=!{partitionKeyFromQuery:m}/t=!{partitionKeyFromLambda:tenant}/",
                    processing=[wasm("rename"), wasm("partition_keys", config="q"),
                                "metadata_extraction: { query: '{m: .message}' }",
                                "append_delimiter: true"],
                    dynamic_partitioning="{ enabled: true }",
                    error_prefix="query-errors/!{firehose:error-output-type}/"),
        # rename → trap: the batch failure names trap and carries the records as rename left them.
        stream_yaml("late", prefix="late/",
                    processing=[wasm("rename"), wasm("trap", number_of_retries=0),
                                "append_delimiter: true"],
                    error_prefix="late-errors/!{firehose:error-output-type}/"),
    ))
    chain_in = [b'{"msg":"hi",\n"tenant":"t1"}', b'{"tenant":"t2","msg":"a"}\n',
                b'{"msg":"no tenant"}', b"not json", b'{"tenant":"T1"}']
    chain_in += [json.dumps({"msg": f"m{i}", "tenant": r.choice(["t1", "t2"]), "x": i},
                            indent=r.choice([None, 1])).encode() for i in range(50)]
    lines_in = [b'{"msg":"a"}\n{"level":"debug","msg":"b"}\nnot json\n{"msg":"c"}',
                b"\n\n", b'{"level":"info"}\n[1]\n']
    twice_in = [b'{"tenant":"t1","n":1}', b'{"tenant":"t2","n":2}', b'{"n":3}']
    survive_in = [b'{"tenant":"ab","v":"x\\ny"}\n{"second":"line"}']
    query_in = [b'{"msg":"alpha","tenant":"a"}', b'{"tenant":"b","msg":"beta"}',
                b'{"message":"gamma","tenant":"a"}', b'{"msg":"delta"}']
    late_in = [b'{"msg":"one"}', b'{"msg":"two"}', b"[3]"]
    for name, recs in [("chain", chain_in), ("lines", lines_in), ("twice", twice_in),
                       ("survive", survive_in), ("query", query_in), ("late", late_in)]:
        put(daemon, name, recs)
    daemon.stop()

    # chain: the references applied plugin by plugin.
    want, want_failed = collections.defaultdict(list), []
    for rec in chain_in:
        renamed = rename_ref(rec)
        if isinstance(renamed, Failed):
            want_failed.append(status_failed(rec, str(renamed), module("rename")))
            continue
        (renamed,) = renamed
        tenant = tenant_ref(renamed)
        if isinstance(tenant, Failed):
            want_failed.append(status_failed(renamed, str(tenant), pk))
            continue
        for piece in split_ref(renamed):
            want[f"chain/tenant={encoded(tenant)}/kind=k1/"].append(upper_ref(piece)[0])
    assert want["chain/tenant=t1/kind=k1/"][:2] == [b'{"MESSAGE":"HI",\n',
                                                    b'"TENANT":"T1","ENRICHED":TRUE}']
    assert parts(daemon, "chain/") == {p: delimited(recs) for p, recs in want.items()}, f"seed {s}"
    assert failure_rows(plugin_docs(daemon, "chain-errors/")) == sorted(want_failed)
    assert status_failed(b'{"message":"no tenant","enriched":true}', 'no string field "tenant"',
                         pk) in want_failed

    # lines (no append_delimiter: the pieces keep their own newlines)
    assert object_bytes(daemon, "lines/") == (
        b'{"message":"a","enriched":true}\n{"message":"c","enriched":true}'
        b'{"level":"info","enriched":true}\n')
    assert failure_rows(plugin_docs(daemon, "lines-errors/")) == [
        status_failed(b"[1]\n", "record is not a JSON object", module("rename")),
        status_failed(b"not json\n", "record is not a JSON object", module("rename"))]

    # twice
    assert parts(daemon, "twice/") == {"twice/tenant=t1/kind=second/": b'{"tenant":"t1","n":1}\n',
                                       "twice/tenant=t2/kind=second/": b'{"tenant":"t2","n":2}\n'}
    assert failure_rows(plugin_docs(daemon, "twice-errors/")) == [
        status_failed(b'{"n":3}', 'no string field "tenant"', pk)]

    # survive
    assert parts(daemon, "survive/") == {
        "survive/tenant=ab/kind=kept/": b'{"TENANT":"AB","V":"X\\NY"}\n\n{"SECOND":"LINE"}\n'}
    assert error_types(daemon, "survive-errors/") == set()

    # query
    assert parts(daemon, "query/") == {
        "query/m=alpha/t=a/": b'{"message":"alpha","tenant":"a","enriched":true}\n',
        "query/m=beta/t=b/": b'{"tenant":"b","message":"beta","enriched":true}\n',
        "query/m=gamma/t=a/": b'{"message":"gamma","tenant":"a","enriched":true}\n'}
    assert failure_rows(plugin_docs(daemon, "query-errors/")) == [
        status_failed(b'{"message":"delta","enriched":true}', 'no string field "tenant"', pk)]

    # late: trap's batch failure, with the records as rename left them; rename's own failure
    # is reported by rename.
    assert objects_under(daemon, "late/") == []
    rows = failure_rows(plugin_docs(daemon, "late-errors/"))
    assert [(rec, code, attempts, which) for rec, code, _, attempts, which in rows] == [
        (b"[3]", "Lambda.ProcessingFailedStatus", 1, arn(module("rename"))),
        (b'{"message":"one","enriched":true}', "Lambda.FunctionError", 1, arn(module("trap"))),
        (b'{"message":"two","enriched":true}', "Lambda.FunctionError", 1, arn(module("trap")))]


# -- 3. hostile plugins next to a healthy delivery stream -----------------------------------------

# (case id, plugin, config (mode), expected errorCode, number_of_retries)
# (case id, plugin, config (mode), expected errorCode, number_of_retries, words of the message)
UNKNOWN_ID = str(0xBAD1D0000000BAD1)
HOSTILE = [
    ("loop", "loop", "", "Lambda.FunctionError", 1, ["deadline", "300 ms"]),
    ("alloc_bomb", "alloc_bomb", "", "Lambda.FunctionError", 2, ["trap", "out of bounds"]),
    ("bad_pointer-output", "bad_pointer", "output", "Lambda.JsonProcessingException", 1,
     ["0xffff0000", "outside"]),
    ("bad_pointer-straddle", "bad_pointer", "straddle", "Lambda.JsonProcessingException", 2,
     ["outside"]),
    ("bad_pointer-alloc", "bad_pointer", "alloc", "Lambda.FunctionError", 1,
     ["spillway_alloc", "0xfffffff0", "outside"]),
    ("absurd_length-length", "absurd_length", "length", "Lambda.JsonProcessingException", 2,
     ["2147483647", "7340032"]),
    ("absurd_length-count", "absurd_length", "count", "Lambda.JsonProcessingException", 1,
     ["4294967295"]),
    ("absurd_length-piece", "absurd_length", "piece", "Lambda.JsonProcessingException", 2,
     ["2147483647"]),
    ("absurd_length-extra", "absurd_length", "extra", "Lambda.DuplicatedRecordId", 1,
     ["two results"]),
    ("trap-none", "trap", "", "Lambda.FunctionError", 2, ["unreachable"]),
    ("trap-exit", "trap", "exit", "Lambda.FunctionError", 1, ["proc_exit(3)"]),
    ("trap-no-retries", "trap", "", "Lambda.FunctionError", 0, ["unreachable"]),
    ("bad_ids-dup", "bad_ids", "dup", "Lambda.DuplicatedRecordId", 2, ["two results"]),
    ("bad_ids-missing", "bad_ids", "missing", "Lambda.MissingRecordId", 1, ["no result"]),
    ("bad_ids-unknown", "bad_ids", "unknown", "Lambda.JsonProcessingException", 2, [UNKNOWN_ID]),
    ("bad_ids-mixed", "bad_ids", "", "Lambda.JsonProcessingException", 1, [UNKNOWN_ID]),
]
HOSTILE_RECORDS = 6  # per hostile stream, in one PutRecordBatch (bad_ids needs batches of >= 3)
HEALTHY_RECORDS = 600
HEALTHY_DEADLINE_S = 60.0  # generous: this is not a timing test


def hostile_stream(case_id: str) -> str:
    return "h-" + case_id


def hostile_records(case_id: str) -> list[bytes]:
    return [json.dumps({"case": case_id, "i": i, "msg": "m"}).encode()
            for i in range(HOSTILE_RECORDS)]


def healthy_records(lo: int, hi: int) -> list[bytes]:
    return [json.dumps({"msg": f"healthy {i}", "i": i}).encode() for i in range(lo, hi)]


def run_hostile_daemon(workdir: Path) -> dict:
    """One daemon: a healthy stream running rename (delivering every second) and one stream per
    HOSTILE case. Puts to all of them, requires the healthy stream to deliver everything while
    the hostile ones misbehave and the daemon to keep answering, then drains."""
    streams = [stream_yaml("healthy", prefix="healthy/", error_prefix="healthy-errors/"
                           "!{firehose:error-output-type}/",
                           processing=[wasm("rename"), "append_delimiter: true"],
                           buffering="{ size_mib: 1, interval_s: 1 }")]
    for case_id, plugin, mode, _, retries, _ in HOSTILE:
        name = hostile_stream(case_id)
        streams.append(stream_yaml(
            name, prefix=f"{name}/", error_prefix=f"{name}-errors/!{{firehose:error-output-type}}/",
            processing=[wasm(plugin, config=mode, number_of_retries=retries, timeout_ms=300,
                             memory_mib=16), "append_delimiter: true"]))
    cfg = workdir / "hostile.yaml"
    cfg.write_text(config_yaml(*streams))
    daemon = Spillway(workdir, config=cfg)
    daemon.start()
    run = {"daemon": daemon}
    try:
        fh = firehose_client(daemon)
        began = time.monotonic()
        healthy = healthy_records(0, HEALTHY_RECORDS // 2)
        put(daemon, "healthy", healthy)
        run["put_began"] = time.time()
        for case_id, *_ in HOSTILE:
            put(daemon, hostile_stream(case_id), hostile_records(case_id))
        run["put_ended"] = time.time()
        # The daemon still answers while the hostile plugins are busy failing.
        names = fh.list_delivery_streams(Limit=100)["DeliveryStreamNames"]
        assert sorted(names) == sorted(["healthy"] + [hostile_stream(c) for c, *_ in HOSTILE])
        more = healthy_records(HEALTHY_RECORDS // 2, HEALTHY_RECORDS)
        put(daemon, "healthy", more[:-1])
        resp = fh.put_record(DeliveryStreamName="healthy", Record={"Data": more[-1]})
        assert resp["RecordId"], resp
        healthy += more
        assert fh.describe_delivery_stream(DeliveryStreamName=hostile_stream("loop"))[
            "DeliveryStreamDescription"]["DeliveryStreamStatus"] == "ACTIVE"
        want = delimited(rename_ref(rec)[0] for rec in healthy)
        while True:
            # Objects in path order are not necessarily in delivery order: compare as multisets.
            got = collections.Counter(split_object(b"".join(
                (daemon.lake_dir / p).read_bytes() for p in objects_under(daemon, "healthy/")),
                "healthy/"))
            if got == collections.Counter(split_object(want, "want")):
                break
            assert time.monotonic() - began < HEALTHY_DEADLINE_S, (
                f"the healthy stream delivered {sum(got.values())} of {len(healthy)} records "
                f"within {HEALTHY_DEADLINE_S:.0f}s next to the hostile streams\n"
                f"--- stderr ---\n{daemon.stderr_tail()}")
            time.sleep(0.1)
        run["healthy_s"] = time.monotonic() - began
        # Still answering once the hostile batches have been retried and failed.
        status, body = daemon.put_record_raw(b'{"msg":"last"}', stream="healthy")
        assert status == 200, (status, body)
        run["healthy"] = healthy + [b'{"msg":"last"}']
    finally:
        run["drain_s"] = daemon.stop()
    return run


@pytest.fixture(scope="module")
def hostile_holder(tmp_path_factory):
    holder: dict = {"dir": tmp_path_factory.mktemp("hostile")}
    yield holder
    if "run" in holder:
        holder["run"]["daemon"].kill()


@pytest.fixture
def hostile_run(hostile_holder, aws_env):
    """The one hostile daemon's run, made by the first test that needs it (under aws_env)."""
    if "error" in hostile_holder:
        pytest.fail(f"the hostile daemon's run failed: {hostile_holder['error']}", pytrace=False)
    if "run" not in hostile_holder:
        try:
            hostile_holder["run"] = run_hostile_daemon(hostile_holder["dir"])
        except BaseException as e:
            hostile_holder["error"] = f"{type(e).__name__}: {e}"
            raise
    return hostile_holder["run"]


def test_healthy_stream_delivers_next_to_hostile_plugins(hostile_run):
    daemon = hostile_run["daemon"]
    want = delimited(rename_ref(rec)[0] for rec in hostile_run["healthy"])
    got = object_bytes(daemon, "healthy/")
    assert collections.Counter(split_object(got, "healthy/")) == collections.Counter(
        split_object(want, "want"))
    assert error_types(daemon, "healthy-errors/") == set()
    assert hostile_run["healthy_s"] < HEALTHY_DEADLINE_S


@pytest.mark.parametrize("case_id, plugin, mode, code, retries, words", HOSTILE,
                         ids=[c[0] for c in HOSTILE])
def test_hostile_plugin_records_fail_once_each(hostile_run, case_id, plugin, mode, code, retries,
                                               words):
    """Every record of the hostile stream is in processing-failed exactly once, with the batch's
    error code, attemptsMade = retries + 1, the plugin as lambdaArn and the record as put; nothing
    of it was delivered."""
    daemon = hostile_run["daemon"]
    name = hostile_stream(case_id)
    assert objects_under(daemon, f"{name}/") == [], "nothing of a failed batch may be delivered"
    docs = plugin_docs(daemon, f"{name}-errors/")
    rows = failure_rows(docs)
    assert [(r, c, a, w) for r, c, _, a, w in rows] == [
        (rec, code, retries + 1, arn(module(plugin))) for rec in sorted(hostile_records(case_id))
    ], [row[:4] for row in rows]
    messages = {d["errorMessage"] for d in docs}
    assert len(messages) == 1, messages
    (message,) = messages
    assert all(w in message for w in words), f"{message!r} should mention {words}"
    check_arrival(docs, hostile_run["put_began"], hostile_run["put_ended"])
    assert error_types(daemon, f"{name}-errors/") == {"processing-failed"}


# -- 4. plugins refused when the configuration is loaded --------------------------------------------

def one_stream(processing, prefix="r/", dynamic_partitioning=None, error_prefix=ERROR_PREFIX) -> str:
    return config_yaml(stream_yaml("r", prefix=prefix, processing=processing,
                                   dynamic_partitioning=dynamic_partitioning,
                                   error_prefix=error_prefix))


# name → (config text, [words stderr must contain], marker of the line the error must name or None)
REFUSED = {
    "wrong ABI version": (one_stream([wasm("wrong_abi")]),
                          [f"plugin {arn(module('wrong_abi'))}", "ABI version 99"], None),
    "wrong ABI version, WAT text": (
        one_stream([wasm("wrong_abi", module=str(WRONG_ABI_WAT))]),
        [f"plugin {arn(str(WRONG_ABI_WAT))}", "ABI version 99"], None),
    "init traps": (one_stream([wasm("rename"), wasm("trap", config="init")]),
                   [f"plugin {arn(module('trap'))}", "spillway_init", "unreachable"], None),
    "partition_keys without its kind": (one_stream([wasm("partition_keys")]),
                                        [f"plugin {arn(module('partition_keys'))}",
                                         "spillway_init returned 1"], None),
    "no such transform export": (one_stream([wasm("rename", function="nope")]),
                                 [f"plugin wasm:{module('rename')}#nope", "nope"], None),
    "transform export of the wrong type": (
        one_stream([wasm("split", function="spillway_alloc")]),
        [f"plugin wasm:{module('split')}#spillway_alloc", "type"], None),
    "config for a plugin without spillway_init": (
        one_stream([wasm("rename", config="x")]),
        [f"plugin {arn(module('rename'))}", "spillway_init"], None),
    "missing module file": (one_stream([wasm("rename", module=str(BUILD / "nosuch.wasm"))]),
                            ["delivery_streams[0].processing[0].wasm.module",
                             str(BUILD / "nosuch.wasm"), "cannot read the plugin module"], None),
    "module missing": (one_stream(["wasm: { function: f }"]), ["missing field `module`"], "- wasm"),
    "unknown option": (one_stream([wasm("rename", fuel=1)]), ["unknown field `fuel`"], "- wasm"),
    "wasm after metadata_extraction": (
        one_stream(["metadata_extraction: { query: '{a: .a}' }", wasm("rename")],
                   prefix="a=!{partitionKeyFromQuery:a}/", dynamic_partitioning="{ enabled: true }"),
        ["wasm must come before metadata_extraction"], "processing:"),
    "deaggregate after wasm": (one_stream([wasm("rename"), "deaggregate: { type: json }"]),
                               ["deaggregate must come before wasm"], "processing:"),
    "partitionKeyFromLambda without a plugin": (
        one_stream(["append_delimiter: true"], prefix="t=!{partitionKeyFromLambda:t}/",
                   dynamic_partitioning="{ enabled: true }"),
        ["partitionKeyFromLambda:t", "transformation plugin"], "prefix:"),
    "partitionKeyFromLambda without dynamic partitioning": (
        one_stream([wasm("partition_keys", config="k")], prefix=TENANT_KIND_PREFIX),
        ["dynamic_partitioning"], "prefix:"),
    "partitionKeyFromLambda without an error prefix": (
        one_stream([wasm("partition_keys", config="k")], prefix=TENANT_KIND_PREFIX,
                   dynamic_partitioning="{ enabled: true }", error_prefix=None),
        ["error_output_prefix"], "prefix:"),
}


def test_validate_refuses_plugins_that_cannot_load_and_bad_wasm_configurations(tmp_path):
    failures = []
    for name, (text, words, marker) in REFUSED.items():
        cfg = tmp_path / (name.replace(" ", "-") + ".yaml")
        cfg.write_text(text)
        run = run_validate(cfg, tmp_path)
        err = run.stderr
        if run.returncode != 2:
            failures.append(f"{name}: exit {run.returncode}, want 2; stderr {err!r}")
            continue
        missing = [w for w in words if w not in err]
        if marker is not None and f"{cfg}:{line_of(text, marker)}:" not in err:
            missing.append(f"line {line_of(text, marker)}")
        if missing:
            failures.append(f"{name}: stderr lacks {missing}: {err.strip()!r}")
    assert not failures, "\n".join(failures)


def test_validate_accepts_every_example_and_the_option_boundaries(tmp_path):
    """A baseline for the refusals: the examples with the extreme values of every option, a
    module path relative to the configuration file's directory (not the working directory), and
    the whole processor order."""
    conf = tmp_path / "conf"
    (conf / "plugins").mkdir(parents=True)
    shutil.copy(module("rename"), conf / "plugins" / "rename.wasm")
    text = config_yaml(
        stream_yaml("a", prefix="a/", processing=[
            wasm("rename", module="plugins/rename.wasm", buffer_mib=0.2, number_of_retries=0,
                 timeout_ms=1, memory_mib=16),
            wasm("filter", buffer_mib=3, number_of_retries=300, timeout_ms=300000, memory_mib=4096),
            wasm("split"), wasm("upper"), "append_delimiter: true"]),
        stream_yaml("b", prefix=TENANT_KIND_PREFIX + "q=!{partitionKeyFromQuery:q}/",
                    dynamic_partitioning="{ enabled: true }", processing=[
                        "decompress: gzip", "deaggregate: { type: json }",
                        wasm("partition_keys", config="k"), wasm("rename"),
                        "metadata_extraction: { query: '{q: .q}' }", "append_delimiter: true"]))
    cfg = conf / "ok.yaml"
    cfg.write_text(text)
    run = run_validate(cfg, tmp_path)
    assert run.returncode == 0, run.stderr
    # From the working directory the path would resolve; from the config's directory it does not.
    cfg.write_text(text.replace("plugins/rename.wasm", "conf/plugins/rename.wasm"))
    run = run_validate(cfg, tmp_path)
    assert run.returncode == 2 and f"{conf}/conf/plugins/rename.wasm" in run.stderr, run.stderr


# (option, bad value)
OUT_OF_RANGE = [("buffer_mib", 0.1), ("buffer_mib", 3.5), ("number_of_retries", 301),
                ("number_of_retries", -1), ("timeout_ms", 0), ("timeout_ms", 300001),
                ("memory_mib", 0), ("memory_mib", 4097)]


@pytest.mark.parametrize("option, value", OUT_OF_RANGE, ids=[f"{o}={v}" for o, v in OUT_OF_RANGE])
def test_validate_names_an_out_of_range_option_and_its_line(tmp_path, option, value):
    # Block style, one option a line, so that the line tells the options apart.
    text = config_yaml(stream_yaml("r", prefix="r/", processing=["append_delimiter: true"]))
    block = (f"      - wasm:\n          module: {module('rename')}\n          function: spillway_transform\n"
             f"          {option}: {value}\n          memory_mib: 64\n")
    text = text.replace("    processing:\n", "    processing:\n" + block, 1)
    cfg = tmp_path / "range.yaml"
    cfg.write_text(text)
    run = run_validate(cfg, tmp_path)
    assert run.returncode == 2, run.stderr
    assert f"{cfg}:{line_of(text, f'{option}: {value}')}:" in run.stderr, run.stderr
    assert f"delivery_streams[0].processing[0].wasm.{option}: " in run.stderr, run.stderr
    assert "between" in run.stderr, run.stderr


@pytest.mark.parametrize("plugin, config, words", [
    ("wrong_abi", "", ["ABI version 99"]),
    ("trap", "init", ["spillway_init", "unreachable"]),
    ("partition_keys", "", ["spillway_init returned 1"]),
])
def test_run_does_not_start_with_a_plugin_that_cannot_load(tmp_path, plugin, config, words):
    cfg = tmp_path / "refused.yaml"
    cfg.write_text(config_yaml(
        stream_yaml("fine", prefix="fine/", processing=[wasm("rename")]),
        stream_yaml("refused", prefix="r/", processing=[wasm(plugin, config=config)])))
    daemon = Spillway(tmp_path, config=cfg)
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            daemon.start()
    finally:
        daemon.kill()
    message = str(failed.value)
    assert "exited with code" in message and "before becoming ready" in message, message
    assert daemon.returncode not in (0, None), daemon.returncode
    assert f"plugin {arn(module(plugin))}" in message and all(w in message for w in words), message


# -- 5. DescribeDeliveryStream ---------------------------------------------------------------------

def test_describe_shows_lambda_processors(start, tmp_path):
    (tmp_path / "plugins").mkdir()
    shutil.copy(module("rename"), tmp_path / "plugins" / "rename.wasm")
    daemon = start(config_yaml(stream_yaml(
        "described", prefix=TENANT_KIND_PREFIX, dynamic_partitioning="{ enabled: true }",
        processing=[wasm("rename", module="plugins/rename.wasm", number_of_retries=5,
                         buffer_mib=0.5, timeout_ms=1000, memory_mib=32),
                    wasm("partition_keys", config="k"), "append_delimiter: true"])))
    dest = describe(daemon, "described")
    assert processor_types(dest) == ["Lambda", "Lambda", "AppendDelimiterToRecord"], dest
    lambdas = [p for p in dest["ProcessingConfiguration"]["Processors"] if p["Type"] == "Lambda"]

    def params(arn_value: str, retries: str, buffer: str) -> dict:
        return {"Type": "Lambda", "Parameters": [
            {"ParameterName": "LambdaArn", "ParameterValue": arn_value},
            {"ParameterName": "NumberOfRetries", "ParameterValue": retries},
            {"ParameterName": "BufferSizeInMBs", "ParameterValue": buffer}]}

    assert lambdas == [params("wasm:plugins/rename.wasm#spillway_transform", "5", "0.5"),
                       params(arn(module("partition_keys")), "3", "1")], lambdas
    # The error documents name the plugin the same way (the module path as configured).
    put(daemon, "described", [b"[not an object]", b'{"msg":"x","tenant":"t"}'])
    daemon.stop()
    assert failure_rows(plugin_docs(daemon)) == [
        (b"[not an object]", "Lambda.ProcessingFailedStatus", "record is not a JSON object", 1,
         "wasm:plugins/rename.wasm#spillway_transform")]
    assert parts(daemon, "tenant=") == {
        "tenant=t/kind=k/": b'{"message":"x","tenant":"t","enriched":true}\n'}
