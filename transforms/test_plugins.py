#!/usr/bin/env python3
"""Verification harness for Spillway's transformation-plugin ABI, version 1.

It implements the HOST side of the ABI (transforms/README.md) on top of the PyPI
`wasmtime` package, builds the plugins with build.sh, and checks that every example
plugin behaves as documented and that every hostile plugin misbehaves the way its
name says -- and is contained by the host rules.

Requires wasmtime==50.0.1 from PyPI (the version this was verified with):
    python3 -m venv /work/scratch-wasm/.venv
    /work/scratch-wasm/.venv/bin/pip install wasmtime==50.0.1
Run:
    /work/scratch-wasm/.venv/bin/python transforms/test_plugins.py [-k SUBSTRING] [--no-build]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field

import wasmtime
from wasmtime import Config, Engine, Linker, Module, Store, WasiConfig

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "build")

# ---- ABI constants (mirror include/spillway_plugin.h) ---------------------------
ABI_VERSION = 1
BATCH_MAGIC = b"SPW1"
OUTPUT_MAGIC = b"SPR1"
OK, DROPPED, FAILED = 0, 1, 2
MAX_OUTPUT_BYTES = 7 * 1024 * 1024
MAX_KEYS = 50
MAX_KEY_BYTES = 256
MAX_VALUE_BYTES = 1024
MAX_ERROR_BYTES = 1024
MIN_RESULT_BYTES = 8 + 1 + 4 + 2  # id, result, piece_count, key_count

# Batch-level error codes (README "Error codes").
FUNCTION_ERROR = "Lambda.FunctionError"
JSON_PROCESSING = "Lambda.JsonProcessingException"
DUPLICATED_ID = "Lambda.DuplicatedRecordId"
MISSING_ID = "Lambda.MissingRecordId"

WASI_MODULE = "wasi_snapshot_preview1"


class PluginRejected(Exception):
    """The module cannot be used at all (load-time check, ABI version, init failure)."""


class BatchFailed(Exception):
    """The whole batch failed; every record goes to processing-failed with `code`."""

    def __init__(self, code: str, message: str, trap: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.trap = code, message, trap


@dataclass
class Result:
    id: int
    status: int
    pieces: list[bytes] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        if self.status != FAILED or not self.pieces:
            return None
        return self.pieces[0][:MAX_ERROR_BYTES].decode("utf-8", "replace")


def encode_batch(records: list[tuple[int, int, bytes]]) -> bytes:
    parts = [BATCH_MAGIC, struct.pack("<I", len(records))]
    for rid, arrival_ms, data in records:
        parts.append(struct.pack("<QqI", rid, arrival_ms, len(data)))
        parts.append(data)
    return b"".join(parts)


def _utf8(b: bytes, what: str) -> str:
    try:
        return b.decode("utf-8")
    except UnicodeDecodeError:
        raise BatchFailed(JSON_PROCESSING, f"{what} is not valid UTF-8")


def decode_output(buf: bytes, input_ids: list[int]) -> list[Result]:
    """Parses and validates an output buffer against the host rules."""
    bad = lambda msg: BatchFailed(JSON_PROCESSING, msg)  # noqa: E731
    n = len(buf)
    if n < 8 or buf[:4] != OUTPUT_MAGIC:
        raise bad("output does not start with magic SPR1")
    (count,) = struct.unpack_from("<I", buf, 4)
    if count > (n - 8) // MIN_RESULT_BYTES:
        raise bad(f"result_count {count} cannot fit in {n} output bytes")
    pos, results = 8, []

    def take(k: int, what: str) -> int:
        nonlocal pos
        if n - pos < k:
            raise bad(f"output truncated in {what} (result {len(results)})")
        at = pos
        pos += k
        return at

    for _ in range(count):
        rid, status, npieces = struct.unpack_from("<QBI", buf, take(13, "result header"))
        if status not in (OK, DROPPED, FAILED):
            raise bad(f"record {rid}: result byte {status} is not 0, 1 or 2")
        if npieces > (n - pos) // 4:
            raise bad(f"record {rid}: piece_count {npieces} cannot fit")
        pieces = []
        for _ in range(npieces):
            (plen,) = struct.unpack_from("<I", buf, take(4, "piece length"))
            at = take(plen, f"piece of {plen} bytes")
            pieces.append(bytes(buf[at:at + plen]))
        (nkeys,) = struct.unpack_from("<H", buf, take(2, "key_count"))
        if nkeys > MAX_KEYS:
            raise bad(f"record {rid}: {nkeys} partition keys (max {MAX_KEYS})")
        keys: dict[str, str] = {}
        for _ in range(nkeys):
            (klen,) = struct.unpack_from("<H", buf, take(2, "key length"))
            if not 1 <= klen <= MAX_KEY_BYTES:
                raise bad(f"record {rid}: key length {klen} not in 1..{MAX_KEY_BYTES}")
            k = _utf8(buf[take(klen, "key"):pos], f"record {rid}: key")
            (vlen,) = struct.unpack_from("<H", buf, take(2, "value length"))
            if vlen > MAX_VALUE_BYTES:
                raise bad(f"record {rid}: value length {vlen} > {MAX_VALUE_BYTES}")
            v = _utf8(buf[take(vlen, "value"):pos], f"record {rid}: value of {k!r}")
            if k in keys:
                raise bad(f"record {rid}: partition key {k!r} twice")
            keys[k] = v
        if status == DROPPED and (pieces or keys):
            raise bad(f"record {rid}: Dropped with pieces or keys")
        if status == FAILED and (len(pieces) > 1 or keys):
            raise bad(f"record {rid}: ProcessingFailed with >1 piece or with keys")
        results.append(Result(rid, status, pieces, keys))
    if pos != n:
        raise bad(f"{n - pos} trailing bytes after the last result")

    wanted = set(input_ids)
    seen: set[int] = set()
    dup = None
    for r in results:
        if r.id not in wanted:
            raise bad(f"unknown record id {r.id:#x}")
        if r.id in seen and dup is None:
            dup = r.id
        seen.add(r.id)
    if dup is not None:
        raise BatchFailed(DUPLICATED_ID, f"record id {dup:#x} returned more than once")
    missing = wanted - seen
    if missing:
        raise BatchFailed(MISSING_ID, f"{len(missing)} record id(s) missing, e.g. {min(missing):#x}")
    return results


class Plugin:
    """A compiled plugin plus the host's resource policy."""

    def __init__(self, name: str, *, wat: str | None = None, memory_limit: int = 64 << 20,
                 fuel: int | None = None, deadline_s: float | None = 10.0):
        cfg = Config()
        cfg.consume_fuel = fuel is not None
        cfg.epoch_interruption = deadline_s is not None
        self.engine = Engine(cfg)
        if wat is not None:
            self.module = Module(self.engine, wat)
        else:
            self.module = Module.from_file(self.engine, os.path.join(BUILD, name + ".wasm"))
        self.memory_limit, self.fuel, self.deadline_s = memory_limit, fuel, deadline_s
        self.has_init = self._validate()

    @classmethod
    def from_wat(cls, wat: str, **kw) -> "Plugin":
        return cls("<inline>", wat=wat, **kw)

    def _validate(self) -> bool:
        """Load-time checks: nothing runs before these pass."""
        for imp in self.module.imports:
            if imp.module != WASI_MODULE or not isinstance(imp.type, wasmtime.FuncType):
                raise PluginRejected(f"import {imp.module}.{imp.name}: only {WASI_MODULE} functions may be imported")
        exports = {e.name: e.type for e in self.module.exports}
        mem = exports.get("memory")
        if not isinstance(mem, wasmtime.MemoryType) or mem.is_64 or mem.is_shared:
            raise PluginRejected("no exported 32-bit, non-shared memory named \"memory\"")
        sigs = {
            "spillway_abi_version": ([], ["i32"], True),
            "spillway_alloc": (["i32"], ["i32"], True),
            "spillway_transform": (["i32", "i32"], ["i64"], True),
            "spillway_init": (["i32", "i32"], ["i32"], False),
            "_initialize": ([], [], False),
        }
        for name, (params, results, required) in sigs.items():
            t = exports.get(name)
            if t is None:
                if required:
                    raise PluginRejected(f"missing export {name}")
                continue
            if not isinstance(t, wasmtime.FuncType) or [str(p) for p in t.params] != params \
                    or [str(r) for r in t.results] != results:
                raise PluginRejected(f"export {name} must be ({', '.join(params)}) -> ({', '.join(results)})")
        return "spillway_init" in exports

    def instantiate(self, config: bytes = b"") -> "Instance":
        return Instance(self, config)


class Instance:
    """One instance: Store + WASI + the ABI's call sequence. Single-threaded."""

    def __init__(self, plugin: Plugin, config: bytes):
        self.plugin = plugin
        self.poisoned: str | None = None
        self.log = bytearray()
        self.store = Store(plugin.engine)
        self.store.set_limits(memory_size=plugin.memory_limit)
        wasi = WasiConfig()  # no preopens, no env, no args, no stdin; clocks + random only
        wasi.stdout_custom = self._log
        wasi.stderr_custom = self._log
        self.store.set_wasi(wasi)
        linker = Linker(plugin.engine)
        linker.define_wasi()
        try:
            self.instance = self._guard(lambda: linker.instantiate(self.store, plugin.module))
            ex = self.instance.exports(self.store)
            self.memory = ex["memory"]
            self.fn = {k: ex[k] for k in ("spillway_abi_version", "spillway_alloc", "spillway_transform")}
            if "_initialize" in ex:
                self._guard(lambda: ex["_initialize"](self.store))
            version = self._guard(lambda: self.fn["spillway_abi_version"](self.store))
            if version != ABI_VERSION:
                raise PluginRejected(f"plugin ABI version {version}, host supports {ABI_VERSION}")
            if plugin.has_init:
                ptr = self._put(config) if config else 0
                rc = self._guard(lambda: ex["spillway_init"](self.store, ptr, len(config)))
                if rc != 0:
                    raise PluginRejected(f"spillway_init returned {rc}")
            elif config:
                raise PluginRejected("a config was given but the plugin has no spillway_init")
        except BatchFailed as e:
            err = PluginRejected(f"instantiation failed: {e.message}")
            err.log = bytes(self.log)
            raise err from e
        except PluginRejected as e:
            e.log = bytes(self.log)
            raise

    def _log(self, b: bytes) -> None:
        self.log += b[: max(0, 65536 - len(self.log))]  # bounded, like the daemon's log capture

    def _guard(self, call):
        """Runs one guest call under the fuel budget and the wall-clock (epoch) deadline."""
        p = self.plugin
        timer = None
        if p.fuel is not None:
            self.store.set_fuel(p.fuel)
        if p.deadline_s is not None:
            self.store.set_epoch_deadline(1)
            timer = threading.Timer(p.deadline_s, p.engine.increment_epoch)
            timer.daemon = True
            timer.start()
        try:
            return call()
        except wasmtime.ExitTrap as e:
            self.poisoned = f"proc_exit({e.code})"
            raise BatchFailed(FUNCTION_ERROR, f"plugin called proc_exit({e.code})", "exit")
        except wasmtime.Trap as e:
            kind = {wasmtime.TrapCode.OUT_OF_FUEL: "out_of_fuel",
                    wasmtime.TrapCode.INTERRUPT: "timeout"}.get(e.trap_code, str(e.trap_code))
            self.poisoned = kind
            raise BatchFailed(FUNCTION_ERROR, f"plugin trapped: {kind}", kind)
        except wasmtime.WasmtimeError as e:
            self.poisoned = "error"
            raise BatchFailed(FUNCTION_ERROR, f"plugin failed: {str(e).splitlines()[0]}", "error")
        finally:
            if timer:
                timer.cancel()

    def _put(self, data: bytes) -> int:
        """spillway_alloc + bounds check + copy in. Returns the guest pointer."""
        ptr = self._guard(lambda: self.fn["spillway_alloc"](self.store, len(data))) & 0xFFFFFFFF
        if ptr == 0:
            raise BatchFailed(FUNCTION_ERROR, f"spillway_alloc({len(data)}) failed")
        if ptr + len(data) > self.memory.data_len(self.store):
            self.poisoned = "bad alloc"
            raise BatchFailed(FUNCTION_ERROR, f"spillway_alloc returned {ptr:#x}, outside guest memory")
        self.memory.write(self.store, data, ptr)
        return ptr

    def transform_raw(self, records: list[tuple[int, int, bytes]]) -> bytes:
        if self.poisoned:
            raise BatchFailed(FUNCTION_ERROR, f"instance unusable after {self.poisoned}")
        batch = encode_batch(records)
        ptr = self._put(batch)
        packed = self._guard(lambda: self.fn["spillway_transform"](self.store, ptr, len(batch)))
        packed &= 0xFFFFFFFFFFFFFFFF
        if packed == 0:
            raise BatchFailed(FUNCTION_ERROR, "plugin reported that the batch failed")
        out_ptr, out_len = packed >> 32, packed & 0xFFFFFFFF
        if out_len > MAX_OUTPUT_BYTES:
            raise BatchFailed(JSON_PROCESSING, f"output length {out_len} exceeds {MAX_OUTPUT_BYTES}")
        size = self.memory.data_len(self.store)
        if out_ptr + out_len > size:
            raise BatchFailed(JSON_PROCESSING,
                              f"output [{out_ptr:#x}, +{out_len}) outside guest memory ({size} bytes)")
        return bytes(self.memory.read(self.store, out_ptr, out_ptr + out_len))

    def transform(self, records) -> list[Result]:
        """records: list of bytes (ids 1..n) or (id, arrival_ms, data) tuples."""
        recs = [r if isinstance(r, tuple) else (i + 1, 1_700_000_000_000 + i, r) for i, r in enumerate(records)]
        return decode_output(self.transform_raw(recs), [r[0] for r in recs])

    def memory_bytes(self) -> int:
        return self.memory.data_len(self.store)


# ---- checks ----------------------------------------------------------------------

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


def expect_fail(fn, code: str, contains: str = "", trap: str | None = None) -> BatchFailed:
    try:
        fn()
    except BatchFailed as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        assert contains in e.message, f"expected {contains!r} in {e.message!r}"
        if trap is not None:
            assert e.trap == trap, f"expected trap {trap}, got {e.trap}"
        return e
    raise AssertionError(f"expected the batch to fail with {code}")


def expect_rejected(fn, contains: str) -> PluginRejected:
    try:
        fn()
    except PluginRejected as e:
        assert contains in str(e), f"expected {contains!r} in {str(e)!r}"
        return e
    raise AssertionError("expected the plugin to be rejected")


def ok1(r: Result) -> bytes:
    assert r.status == OK and len(r.pieces) == 1, r
    return r.pieces[0]


# -- rename
@check
def rename_basic():
    inst = Plugin("rename").instantiate()
    cases = [
        (b'{"msg":"hi","a":1}', b'{"message":"hi","a":1,"enriched":true}'),
        (b'{}', b'{"enriched":true}'),
        (b'{"a":1}\n', b'{"a":1,"enriched":true}\n'),
        (b'  { "x" : [1, {"msg": "nested"}], "msg" : "top" }\r\n',
         b'  { "x" : [1, {"msg": "nested"}], "message" : "top" ,"enriched":true}\r\n'),
        (b'{"note":"say \\"msg\\"","x":"}"}', b'{"note":"say \\"msg\\"","x":"}","enriched":true}'),
        (b'{"msg":{"msg":1}}', b'{"message":{"msg":1},"enriched":true}'),
    ]
    res = inst.transform([c for c, _ in cases])
    for (src, want), r in zip(cases, res):
        got = ok1(r)
        assert got == want, f"{src!r}: got {got!r}, want {want!r}"
        json.loads(got)


@check
def rename_not_object_is_processing_failed():
    inst = Plugin("rename").instantiate()
    bad = [b"", b"not json", b"[1,2]", b'"str"', b'{"a":1', b'{"a":1} x', b'{"a" 1}', b'{"a":}',
           b'{,}', b'{"a":1,}', b'{"a":[1}', b'{"a":"\x01"}', b"\xff\xfe"]
    res = inst.transform(bad + [b'{"msg":1}'])
    for src, r in zip(bad, res):
        assert r.status == FAILED and r.error == "record is not a JSON object" and not r.keys, (src, r)
    assert ok1(res[-1]) == b'{"message":1,"enriched":true}'


@check
def rename_ids_arrival_and_order():
    inst = Plugin("rename").instantiate()
    ids = [0, 2**64 - 1, 42, 2**63]
    recs = [(rid, -5 if i % 2 else 2**62, b'{"msg":%d}' % i) for i, rid in enumerate(ids)]
    res = decode_output(inst.transform_raw(recs), ids)
    assert [r.id for r in res] == ids


@check
def rename_big_batch_and_big_record():
    inst = Plugin("rename").instantiate()
    recs = [b'{"msg":"%s","i":%d}' % (b"x" * (i % 300), i) for i in range(5000)]
    res = inst.transform(recs)
    assert all(r.status == OK for r in res) and len(res) == 5000
    big = b'{"msg":"' + b"y" * (3 << 20) + b'"}'
    (r,) = inst.transform([big])
    assert ok1(r) == b'{"message":"' + b"y" * (3 << 20) + b'","enriched":true}'


@check
def rename_output_over_limit_fails_the_batch():
    # the helpers refuse to build an output over SPW_MAX_OUTPUT_BYTES and return 0
    inst = Plugin("rename").instantiate()
    huge = b'{"msg":"' + b"z" * (MAX_OUTPUT_BYTES - 20) + b'"}'
    expect_fail(lambda: inst.transform([huge]), FUNCTION_ERROR, "plugin reported that the batch failed")
    assert ok1(inst.transform([b'{"msg":1}'])[0]) == b'{"message":1,"enriched":true}'  # still usable


@check
def rename_empty_batch():
    inst = Plugin("rename").instantiate()
    assert inst.transform([]) == []


@check
def rename_no_leak_over_many_batches():
    inst = Plugin("rename").instantiate()
    recs = [b'{"msg":"%d"}' % i for i in range(200)]
    for _ in range(20):
        inst.transform(recs)
    base = inst.memory_bytes()
    for _ in range(500):
        inst.transform(recs)
    assert inst.memory_bytes() == base, f"memory grew {base} -> {inst.memory_bytes()}"


# -- filter
@check
def filter_drops_debug():
    inst = Plugin("filter").instantiate()
    cases = [
        (b'{"level":"debug","m":1}', DROPPED),
        (b'{ "a": 1, "level" : "debug" }\n', DROPPED),
        (b'{"level":"info"}', OK),
        (b'{"level":"DEBUG"}', OK),
        (b'{"level":"debugger"}', OK),
        (b'{"x":{"level":"debug"}}', OK),
        (b'{"lvl":"debug","msg":"\\"level\\":\\"debug\\""}', OK),
        (b'not json "level":"debug"', OK),
        (b'', OK),
    ]
    res = inst.transform([c for c, _ in cases])
    for (src, want), r in zip(cases, res):
        assert r.status == want, (src, r)
        if want == OK:
            assert r.pieces == [src] and not r.keys, (src, r)
        else:
            assert r.pieces == [] and not r.keys


# -- partition_keys
@check
def partition_keys_tenant_and_kind():
    inst = Plugin("partition_keys").instantiate(b"orders")
    recs = [b'{"tenant":"acme","n":1}', b'{"n":2,"tenant":"a\\u00e9\\"b\\ud83d\\ude00"}',
            b'{"tenant":"caf\xc3\xa9"}']
    res = inst.transform(recs)
    for src, r in zip(recs, res):
        assert r.pieces == [src], r
    assert res[0].keys == {"tenant": "acme", "kind": "orders"}, res[0].keys
    assert res[1].keys == {"tenant": 'a\u00e9"b\U0001F600', "kind": "orders"}, res[1].keys
    assert res[2].keys["tenant"] == "caf\u00e9"


@check
def partition_keys_failures():
    inst = Plugin("partition_keys").instantiate(b"k")
    cases = [
        (b'{"n":1}', 'no string field "tenant"'),
        (b'{"tenant":7}', 'no string field "tenant"'),
        (b'{"tenant":""}', '"tenant" must be 1..1024 bytes'),
        (b'{"tenant":"' + b"t" * 1025 + b'"}', '"tenant" must be 1..1024 bytes'),
        (b'{"tenant":"\\ud800"}', 'bad "tenant" string'),
        (b'{"tenant":"\xff"}', 'bad "tenant" string'),
        (b"[]", "record is not a JSON object"),
    ]
    res = inst.transform([c for c, _ in cases])
    for (src, msg), r in zip(cases, res):
        assert r.status == FAILED and r.error == msg and not r.keys, (src, r)


@check
def partition_keys_init_requires_config():
    e = expect_rejected(lambda: Plugin("partition_keys").instantiate(b""), "spillway_init returned 1")
    # what the plugin wrote to stderr reached the host's log capture
    assert b"config must be 1..1024 bytes" in e.log, e.log


# -- split
@check
def split_lines():
    inst = Plugin("split").instantiate()
    cases = [
        (b"a\nb\nc", [b"a\n", b"b\n", b"c"]),
        (b"one line\n", [b"one line\n"]),
        (b"x\r\n\r\ny\n\n", [b"x\r\n", b"y\n"]),
        (b"\n\n", []),
        (b"", []),
        (b"single", [b"single"]),
    ]
    res = inst.transform([c for c, _ in cases])
    for (src, want), r in zip(cases, res):
        assert r.status == OK and r.pieces == want and not r.keys, (src, r)
    many = b"".join(b"line %d\n" % i for i in range(100_000))
    (r,) = inst.transform([many])
    assert len(r.pieces) == 100_000 and b"".join(r.pieces) == many


# -- upper (Rust)
@check
def upper_rust_plugin():
    inst = Plugin("upper").instantiate()
    res = inst.transform([b"abc\xc3\xa9", b"", b"MiXeD 123"])
    assert ok1(res[0]) == b"ABC\xc3\xa9"
    assert res[1].status == FAILED and res[1].error == "empty record"
    assert ok1(res[2]) == b"MIXED 123"
    for _ in range(300):
        inst.transform([b"x" * 1000] * 50)


# -- randomized, against Python references
def _rand_str(rng: random.Random) -> str:
    alphabet = "abcxyz \"\\/\n\t\u00e9\u4e2d\U0001F600"
    return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def _rand_value(rng: random.Random, depth: int = 0):
    k = rng.randrange(6 if depth < 3 else 4)
    if k == 0:
        return rng.randrange(-10**6, 10**6)
    if k == 1:
        return rng.choice([True, False, None, 1.5e-3])
    if k in (2, 3):
        return _rand_str(rng)
    if k == 4:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_rand_str(rng): _rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}


def _rand_record(rng: random.Random) -> tuple[bytes, dict | None]:
    if rng.random() < 0.15:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40))), None
    d = {}
    for _ in range(rng.randrange(6)):
        d[rng.choice(["msg", "level", "tenant", "a", _rand_str(rng)])] = _rand_value(rng)
    if rng.random() < 0.3:
        d["level"] = rng.choice(["debug", "info"])
    if rng.random() < 0.5:
        d["tenant"] = _rand_str(rng) or "t"
    d.pop("message", None)
    d.pop("enriched", None)
    kw = rng.choice([{}, {"separators": (",", ":")}, {"ensure_ascii": False}, {"indent": 1}])
    return json.dumps(d, **kw).encode(), d


@check
def randomized_examples_match_reference():
    rng = random.Random(1234)
    rename, filt = Plugin("rename").instantiate(), Plugin("filter").instantiate()
    keys, split = Plugin("partition_keys").instantiate(b"kind-x"), Plugin("split").instantiate()
    for _ in range(20):
        recs = [_rand_record(rng) for _ in range(200)]
        datas = [r for r, _ in recs]
        for (data, d), r in zip(recs, rename.transform(datas)):
            if d is None:
                assert r.status in (OK, FAILED)
                continue
            want = {("message" if k == "msg" else k): v for k, v in d.items()}
            want["enriched"] = True
            assert json.loads(ok1(r)) == want, (data, r)
        for (data, d), r in zip(recs, filt.transform(datas)):
            debug = d is not None and d.get("level") == "debug"
            assert r.status == (DROPPED if debug else OK) and r.pieces == ([] if debug else [data]), (data, r)
        for (data, d), r in zip(recs, keys.transform(datas)):
            t = d.get("tenant") if d else None
            if isinstance(t, str) and 0 < len(t.encode()) <= 1024:
                assert r.status == OK and r.keys == {"tenant": t, "kind": "kind-x"}, (data, r)
            elif d is not None:
                assert r.status == FAILED, (data, r)
        for data, r in zip(datas, split.transform(datas)):
            lines = [ln for ln in _split_nl(data) if ln.strip(b"\r\n")]
            assert r.status == OK and r.pieces == lines, (data, r)


def _split_nl(data: bytes) -> list[bytes]:
    out, start = [], 0
    while start < len(data):
        i = data.find(b"\n", start)
        end = len(data) if i < 0 else i + 1
        out.append(data[start:end])
        start = end
    return out


# -- hostile plugins
@check
def hostile_loop_stopped_by_fuel():
    inst = Plugin("loop", fuel=50_000_000, deadline_s=None).instantiate()
    t = time.monotonic()
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "out_of_fuel", trap="out_of_fuel")
    assert time.monotonic() - t < 10
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "instance unusable")


@check
def hostile_loop_stopped_by_epoch_deadline():
    inst = Plugin("loop", fuel=None, deadline_s=0.3).instantiate()
    t = time.monotonic()
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "timeout", trap="timeout")
    took = time.monotonic() - t
    assert 0.25 < took < 3, f"took {took:.2f}s"


@check
def hostile_alloc_bomb_hits_memory_limit():
    limit = 32 << 20
    inst = Plugin("alloc_bomb", memory_limit=limit).instantiate()
    start = inst.memory_bytes()
    e = expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, trap=str(wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS))
    size = inst.memory_bytes()
    assert limit - (1 << 20) < size <= limit, f"memory {size} (started at {start}, limit {limit}): {e}"


@check
def hostile_bad_pointer_output():
    for mode in (b"", b"output", b"straddle"):
        inst = Plugin("bad_pointer").instantiate(mode)
        expect_fail(lambda: inst.transform([b"x"]), JSON_PROCESSING, "outside guest memory")


@check
def hostile_bad_pointer_alloc():
    inst = Plugin("bad_pointer").instantiate(b"alloc")
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "spillway_alloc returned 0xfffffff0")


@check
def hostile_absurd_length():
    recs = [b"a", b"bb", b"ccc"]
    inst = Plugin("absurd_length").instantiate(b"length")
    expect_fail(lambda: inst.transform(recs), JSON_PROCESSING, "output length 2147483647 exceeds")
    inst = Plugin("absurd_length").instantiate(b"count")
    expect_fail(lambda: inst.transform(recs), JSON_PROCESSING, "result_count 4294967295 cannot fit")
    inst = Plugin("absurd_length").instantiate(b"piece")
    expect_fail(lambda: inst.transform(recs), JSON_PROCESSING, "truncated in piece of 2147483647 bytes")
    inst = Plugin("absurd_length").instantiate(b"extra")
    expect_fail(lambda: inst.transform(recs), DUPLICATED_ID, "0x1 returned more than once")


@check
def hostile_trap():
    inst = Plugin("trap").instantiate()
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, trap=str(wasmtime.TrapCode.UNREACHABLE))
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "instance unusable")
    expect_rejected(lambda: Plugin("trap").instantiate(b"init"), "instantiation failed: plugin trapped")
    inst = Plugin("trap").instantiate(b"exit")
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "proc_exit(3)", trap="exit")


@check
def hostile_bad_ids():
    recs = [b"a", b"b", b"c", b"d"]
    for mode, code, msg in [(b"", JSON_PROCESSING, "unknown record id 0xbad1d0000000bad1"),
                            (b"mixed", JSON_PROCESSING, "unknown record id"),
                            (b"dup", DUPLICATED_ID, "0x1 returned more than once"),
                            (b"missing", MISSING_ID, "1 record id(s) missing, e.g. 0x4"),
                            (b"unknown", JSON_PROCESSING, "unknown record id 0xbad1d0000000bad1")]:
        inst = Plugin("bad_ids").instantiate(mode)
        expect_fail(lambda: inst.transform(recs), code, msg)


@check
def hostile_wrong_abi_rejected_before_init():
    p = Plugin("wrong_abi")
    e = expect_rejected(lambda: p.instantiate(b"cfg"), "plugin ABI version 99, host supports 1")
    assert "trapped" not in str(e)


# -- host load-time rules, on inline modules
GOOD_REST = """
  (func (export "spillway_abi_version") (result i32) (i32.const 1))
  (func (export "spillway_alloc") (param i32) (result i32) (i32.const 1024))
"""


@check
def host_rejects_malformed_modules():
    cases = [
        ("(module " + GOOD_REST + """(func (export "spillway_transform") (param i32 i32) (result i64) (i64.const 0)))""",
         'no exported 32-bit, non-shared memory named "memory"'),
        ("""(module (memory (export "memory") 1)""" + GOOD_REST +
         """(func (export "spillway_transform") (param i32 i32) (result i32) (i32.const 0)))""",
         "export spillway_transform must be (i32, i32) -> (i64)"),
        ("""(module (import "env" "now" (func)) (memory (export "memory") 1)""" + GOOD_REST +
         """(func (export "spillway_transform") (param i32 i32) (result i64) (i64.const 0)))""",
         "import env.now"),
        ("""(module (memory (export "memory") 1)""" + GOOD_REST + ")", "missing export spillway_transform"),
    ]
    for wat, msg in cases:
        expect_rejected(lambda: Plugin.from_wat(wat), msg)
    # a config for a plugin without spillway_init is refused rather than ignored
    ok = ("""(module (memory (export "memory") 1)""" + GOOD_REST +
          """(func (export "spillway_transform") (param i32 i32) (result i64) (i64.const 0)))""")
    expect_rejected(lambda: Plugin.from_wat(ok).instantiate(b"x"), "no spillway_init")
    inst = Plugin.from_wat(ok).instantiate()
    expect_fail(lambda: inst.transform([b"x"]), FUNCTION_ERROR, "plugin reported that the batch failed")


@check
def host_rejects_start_function_loop():
    # code that runs at instantiation (a start function) is under the same deadline
    wat = ("""(module (memory (export "memory") 1) (func $s (loop (br 0))) (start $s)""" + GOOD_REST +
           """(func (export "spillway_transform") (param i32 i32) (result i64) (i64.const 0)))""")
    expect_rejected(lambda: Plugin.from_wat(wat, deadline_s=0.2).instantiate(), "timeout")


@check
def throughput_rename_info():
    inst = Plugin("rename").instantiate()
    recs = [b'{"msg":"hello world %d","level":"info","tenant":"acme","n":12345}' % i for i in range(10_000)]
    size = sum(map(len, recs))
    inst.transform(recs)
    t = time.monotonic()
    for _ in range(5):
        inst.transform(recs)
    dt = (time.monotonic() - t) / 5
    print(f"    (rename: {len(recs)} records / {size / 1e6:.2f} MB per batch in {dt * 1000:.1f} ms "
          f"incl. Python-side encode/decode)")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-k", default="", help="run only checks whose name contains this")
    ap.add_argument("--no-build", action="store_true", help="do not run build.sh first")
    args = ap.parse_args()
    if not args.no_build:
        subprocess.run(["bash", os.path.join(HERE, "build.sh")], check=True)
    passed = failed = 0
    for fn in CHECKS:
        if args.k not in fn.__name__:
            continue
        t = time.monotonic()
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
        else:
            passed += 1
            print(f"PASS {fn.__name__} ({time.monotonic() - t:.2f}s)")
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter finalization: wasmtime-py 50's WASI tokio worker thread can panic
    # ("panic in a function that cannot unwind") while the process tears down.
    os._exit(code)
