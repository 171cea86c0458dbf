"""A strict Amazon Data Firehose HTTP endpoint receiver, for tests.

It implements the receiving side of AWS's documented HTTP endpoint delivery request and response
specification (protocol version 1.0), and stands in for any consumer of Firehose's HTTP endpoint
destination. It lives in the repository because no third-party receiver can be installed here.

It runs in a background thread of the test process (``http.server.ThreadingHTTPServer`` on
127.0.0.1, a free port) and checks EVERY request, strictly:

- method ``POST``, and the path (and query) of the configured URL;
- ``Host`` (once, the receiver's address), ``Content-Type: application/json``,
  ``X-Amz-Firehose-Protocol-Version: 1.0``, ``X-Amz-Firehose-Request-Id`` (a lowercase GUID
  8-4-4-4-12), ``X-Amz-Firehose-Source-Arn`` (``arn:aws:firehose:local:000000000000:
  deliverystream/<stream>``), ``X-Amz-Firehose-Access-Key`` (exactly the expected value, or absent
  when none is expected), ``X-Amz-Firehose-Common-Attributes`` (``{"commonAttributes": {...}}``,
  exactly the expected attributes, or absent), ``Content-Encoding: gzip`` if and only if gzip is
  expected, ``User-Agent`` (``spillway/<version>``); each of them at most once, and no other
  ``X-Amz-Firehose-*`` header;
- the body, after decompression at most 64 MiB, is UTF-8 JSON (no duplicate keys, no NaN) that is
  exactly ``{"requestId": <the header's id>, "timestamp": <int ms since epoch, close to now>,
  "records": [1..10,000 × {"data": <canonical base64, at most 1,365,336 chars>}]}`` and nothing
  else.

A request that breaks any rule is a protocol violation: its description is appended to
``violations`` (tests assert the list is empty) and it is answered 400 with a JSON body carrying an
``errorMessage``. A valid request is answered as the fault script says (see below); by default
``200`` with ``{"requestId": <same id>, "timestamp": <now ms>}``.

Every request is recorded as an ``Attempt`` (arrival time, headers, request id, body timestamp,
decoded records, what was answered); every batch the receiver took (it "commits" a batch when it
answers success -- including a ``slow`` success the daemon may no longer be waiting for) as a
``Batch``. ``delivered()`` folds the batches by request id: the records once per id, in commit
order, asserting that every re-sent id carried identical records, plus counts.

Fault injection, per attempt (valid requests only; violations are always answered 400)::

    receiver.script(status(500), ok())           # the next two requests: 500, then success
    receiver.responder = lambda attempt: status(503) if attempt.records[0].startswith(b"X") else None
    receiver.default = status(503)               # what the rest get (default: ok())

The script is consumed first, then ``responder(attempt)`` (``None`` falls through), then
``default``. Actions:

    ok()                200 with the matching JSON body
    status(n, body)     status n (500, 503, 413, 302 with a Location the daemon must not follow, ...)
    slow(s)             wait s seconds, then commit and answer 200 (a timeout case; commits=False:
                        the late success does not count as taken)
    malformed()         200 with a body that is not JSON
    mismatched()        200 with another requestId
    array()             200 with a JSON array holding the requestId (not the object the protocol
                        asks for, though a lax JSON-to-struct reader would take it as one)
    oversized(n)        200 with a valid, matching JSON body padded with spaces to n > 1 MiB bytes
    close()             close the connection without any response

``stop()`` closes the listening socket and every open connection, so that the daemon sees
connection refused; ``start()`` again listens on the same port.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import http.server
import json
import re
import socket
import ssl
import threading
import time
import uuid
import zlib
from typing import Callable, NamedTuple

PROTOCOL_VERSION = "1.0"
MAX_RECORDS = 10_000
MAX_DATA_CHARS = 1_365_336
MAX_BODY_BYTES = 64 * 1024 * 1024  # before compression
MAX_RESPONSE_BYTES = 1024 * 1024  # a larger success body is a failure to the daemon
SOURCE_ARN = "arn:aws:firehose:local:000000000000:deliverystream/{stream}"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")
USER_AGENT = re.compile(r"^spillway/\S+$")
# Headers of the spec, each allowed at most once (lower case).
SPEC_HEADERS = ("host", "content-type", "content-length", "transfer-encoding", "content-encoding",
                "user-agent", "x-amz-firehose-protocol-version", "x-amz-firehose-request-id",
                "x-amz-firehose-source-arn", "x-amz-firehose-access-key",
                "x-amz-firehose-common-attributes")
FIREHOSE_HEADERS = {h for h in SPEC_HEADERS if h.startswith("x-amz-firehose-")}
TIMESTAMP_PAST_S = 30.0  # how far before its arrival a request's body timestamp may be
TIMESTAMP_FUTURE_S = 2.0  # and after


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# -- fault actions ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Action:
    """What to answer a valid request. ``commits``: the receiver takes the batch (a ``Batch`` is
    recorded) -- a real consumer stores the data before it answers success."""
    kind: str
    status: int = 200
    body: bytes | None = None
    delay_s: float = 0.0
    size: int = 0
    commits: bool = False

    def __str__(self) -> str:
        extra = {"status": f" {self.status}", "slow": f" {self.delay_s}s",
                 "oversized": f" {self.size}B"}.get(self.kind, "")
        return self.kind + extra


def ok() -> Action:
    return Action("ok", commits=True)


def status(code: int, body: bytes | str = b"") -> Action:
    if isinstance(body, str):
        body = body.encode()
    if code == 200:
        raise ValueError("status(200) would be a success; use ok(), malformed() or mismatched()")
    return Action("status", status=code, body=body)


def slow(seconds: float, commits: bool = True) -> Action:
    """Answer 200 after ``seconds``; ``commits``: the batch counts as taken (as a consumer that
    stored it before answering), so a retry by a daemon that timed out is a duplicate."""
    return Action("slow", delay_s=seconds, commits=commits)


def malformed() -> Action:
    return Action("malformed")


def mismatched() -> Action:
    return Action("mismatched")


def array() -> Action:
    return Action("array")


def oversized(size: int = MAX_RESPONSE_BYTES + 1) -> Action:
    return Action("oversized", size=size)


def close() -> Action:
    return Action("close", status=0)


# -- what was received -----------------------------------------------------------------------------

@dataclasses.dataclass
class Attempt:
    """One request as received. ``records`` is None when the body could not be decoded."""
    index: int
    arrived: float  # time.time() once the request head was read
    method: str
    path: str
    headers: list[tuple[str, str]]
    request_id: str | None = None
    body_timestamp: int | None = None
    records: list[bytes] | None = None
    body_bytes: int = 0  # as sent (compressed with gzip)
    decoded_bytes: int = 0  # after decompression
    violations: list[str] = dataclasses.field(default_factory=list)
    action: Action | None = None  # None: a violation, answered 400
    answered: int | None = None  # status sent; 0 for a closed connection
    finished: float | None = None
    committed: bool = False

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None


@dataclasses.dataclass(frozen=True)
class Batch:
    """A batch the receiver took."""
    request_id: str
    records: list[bytes]
    headers: list[tuple[str, str]]
    arrived: float
    attempt: int  # Attempt.index


class Delivery(NamedTuple):
    records: list[bytes]  # each request id's records once, ids in order of first commit
    request_ids: list[str]  # distinct ids, in order of first commit
    batch_sizes: list[int]  # records per distinct id, same order
    commits: int  # batches taken, re-sent ones included
    duplicates: int  # commits of an id already taken


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, address, handler, receiver: "FirehoseReceiver"):
        self.receiver = receiver
        self.connections: set[socket.socket] = set()
        self.conn_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        with self.conn_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self.conn_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # the daemon hung up, was killed, ...
        pass

    def drop_connections(self) -> None:
        with self.conn_lock:
            conns = list(self.connections)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "firehose-receiver/1"
    sys_version = ""

    def log_message(self, format, *args):  # quiet
        pass

    def __getattr__(self, name: str):
        # Any method other than POST (GET, PUT, HEAD, ...) is recorded as a violation too.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def do_POST(self):
        self._serve()

    def _serve(self) -> None:
        self.server.receiver._handle(self)

    # -- helpers used by the receiver --

    def read_body(self, problems: list[str], limit: int) -> bytes | None:
        """The request body (Content-Length or chunked); None when it cannot be read whole."""
        te = self.headers.get_all("Transfer-Encoding") or []
        cl = self.headers.get_all("Content-Length") or []
        if te and cl:
            problems.append("both Transfer-Encoding and Content-Length")
            self.close_connection = True
            return None
        if te:
            if [t.strip().lower() for t in te] != ["chunked"]:
                problems.append(f"Transfer-Encoding {te!r} (only chunked is readable)")
                self.close_connection = True
                return None
            out = bytearray()
            while True:
                line = self.rfile.readline(1024)
                try:
                    n = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    problems.append(f"bad chunk size line {line[:40]!r}")
                    self.close_connection = True
                    return None
                if n == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(out)
                if len(out) + n > limit:
                    problems.append(f"body larger than {limit} bytes")
                    self.close_connection = True
                    return None
                out += self.rfile.read(n)
                self.rfile.readline(3)
        if len(cl) != 1 or not cl[0].strip().isdigit():
            problems.append(f"no usable Content-Length (got {cl!r}) and not chunked")
            self.close_connection = True
            return None
        n = int(cl[0])
        if n > limit:
            problems.append(f"Content-Length {n} > {limit}")
            self.close_connection = True
            return None
        data = self.rfile.read(n)
        if len(data) != n:
            problems.append(f"body cut short: {len(data)} of {n} bytes")
            self.close_connection = True
            return None
        return data

    def answer(self, code: int, body: bytes, extra: dict[str, str] | None = None) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except OSError:  # the daemon gave up on this request (timeout) or died
            self.close_connection = True


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"duplicate JSON keys {sorted(dup)}")
    return dict(pairs)


def _no_constants(name):
    raise ValueError(f"non-JSON constant {name}")


def strict_json(text: str):
    return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)


class FirehoseReceiver:
    """A Firehose HTTP endpoint on 127.0.0.1 (see the module docstring).

    The expectations (``stream``, ``path``, ``access_key``, ``common_attributes``, ``gzip``,
    ``user_agent``) are plain attributes: set them before the daemon sends anything.
    """

    def __init__(self, *, stream: str = "events", path: str = "/", access_key: str | None = None,
                 common_attributes: dict[str, str] | None = None, gzip: bool = False,
                 user_agent: str | re.Pattern = USER_AGENT, port: int = 0,
                 ssl_context: "ssl.SSLContext | None" = None):
        self.stream = stream
        self.path = path
        self.access_key = access_key
        self.common_attributes = common_attributes
        self.gzip = gzip
        self.user_agent = user_agent
        self.ssl_context = ssl_context  # serve HTTPS with it (url then starts with https://)
        self.default: Action = ok()
        self.responder: Callable[[Attempt], Action | None] | None = None
        self._script: list[Action] = []
        self._lock = threading.Lock()
        self._attempts: list[Attempt] = []
        self._batches: list[Batch] = []
        self._violations: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.port = port

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> "FirehoseReceiver":
        assert self._server is None, "receiver already running"
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), _Handler, self)
        if self.ssl_context is not None:
            self._server.socket = self.ssl_context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"firehose-receiver-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop every open connection (the port then refuses connections)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.drop_connections()
        self._thread.join(10)

    @property
    def running(self) -> bool:
        return self._server is not None

    def __enter__(self) -> "FirehoseReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self.port, "start() the receiver first"
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}{self.path}"

    @property
    def source_arn(self) -> str:
        return SOURCE_ARN.format(stream=self.stream)

    # -- fault script ----------------------------------------------------------------------------

    def script(self, *actions: Action) -> None:
        """Answer the next valid requests with these actions, in order (then responder/default)."""
        with self._lock:
            self._script.extend(actions)

    def scripted_left(self) -> int:
        with self._lock:
            return len(self._script)

    def _decide(self, attempt: Attempt) -> Action:
        with self._lock:
            if self._script:
                return self._script.pop(0)
        if self.responder is not None:
            chosen = self.responder(attempt)
            if chosen is not None:
                return chosen
        return self.default

    # -- what was received -----------------------------------------------------------------------

    @property
    def violations(self) -> list[str]:
        with self._lock:
            return list(self._violations)

    def clear_violations(self) -> list[str]:
        with self._lock:
            out, self._violations = self._violations, []
            return out

    def attempts(self) -> list[Attempt]:
        with self._lock:
            return list(self._attempts)

    def attempts_for(self, request_id: str) -> list[Attempt]:
        return [a for a in self.attempts() if a.request_id == request_id]

    def batches(self) -> list[Batch]:
        with self._lock:
            return list(self._batches)

    def in_flight(self) -> int:
        """Requests received and not answered yet."""
        with self._lock:
            return sum(1 for a in self._attempts if a.finished is None)

    def delivered(self) -> Delivery:
        """The batches taken, folded by request id; asserts a re-sent id carried the same records."""
        batches = self.batches()
        first: dict[str, list[bytes]] = {}
        order: list[str] = []
        duplicates = 0
        for b in batches:
            if b.request_id in first:
                duplicates += 1
                assert b.records == first[b.request_id], (
                    f"request id {b.request_id} was taken twice with different records: "
                    f"{len(first[b.request_id])} records first, {len(b.records)} in attempt "
                    f"{b.attempt}; first differing index "
                    f"{next((i for i, (x, y) in enumerate(zip(first[b.request_id], b.records)) if x != y), min(len(b.records), len(first[b.request_id])))}")
            else:
                first[b.request_id] = b.records
                order.append(b.request_id)
        return Delivery(records=[r for i in order for r in first[i]], request_ids=order,
                        batch_sizes=[len(first[i]) for i in order], commits=len(batches),
                        duplicates=duplicates)

    def summary(self) -> str:
        """One line per attempt, for failure messages."""
        lines = []
        for a in self.attempts()[-40:]:
            n = "?" if a.records is None else len(a.records)
            lines.append(f"  #{a.index} t={a.arrived:.3f} id={a.request_id} records={n} "
                         f"action={a.action} answered={a.answered}"
                         + (f" VIOLATIONS {a.violations}" if a.violations else ""))
        return f"receiver {self.url}: {len(self.attempts())} attempts\n" + "\n".join(lines)

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str,
                 diagnostics: Callable[[], str] | None = None) -> None:
        """Poll ``predicate`` every 50 ms; AssertionError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.05)
        if predicate():
            return
        extra = f"\n{diagnostics()}" if diagnostics else ""
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.summary()}"
                             f"\nviolations: {self.violations}{extra}")

    def wait_records(self, n: int, timeout: float, diagnostics: Callable[[], str] | None = None) -> Delivery:
        """Wait until at least ``n`` distinct-id records were taken."""
        self.wait_for(lambda: len(self.delivered().records) >= n, timeout,
                      f"{n} records delivered (have {len(self.delivered().records)})", diagnostics)
        return self.delivered()

    # -- the protocol ----------------------------------------------------------------------------

    def _check_headers(self, h, problems: list[str]) -> None:
        names = [k.lower() for k in h.keys()]
        for name in SPEC_HEADERS:
            if names.count(name) > 1:
                problems.append(f"header {name} sent {names.count(name)} times")
        for name in set(names):
            if name.startswith("x-amz-firehose-") and name not in FIREHOSE_HEADERS:
                problems.append(f"unexpected header {name}")

        def value(name: str) -> str | None:
            v = h.get(name)
            return None if v is None else v.strip(" \t")

        def exact(name: str, want: str) -> None:
            got = value(name)
            if got != want:
                problems.append(f"{name}: {got!r}, want {want!r}")

        def absent(name: str, why: str) -> None:
            if value(name) is not None:
                problems.append(f"{name} sent ({value(name)[:80]!r}) but {why}")

        exact("Host", f"127.0.0.1:{self.port}")
        exact("Content-Type", "application/json")
        exact("X-Amz-Firehose-Protocol-Version", PROTOCOL_VERSION)
        rid = value("X-Amz-Firehose-Request-Id")
        if rid is None or not GUID.match(rid):
            problems.append(f"X-Amz-Firehose-Request-Id {rid!r} is not a lowercase 8-4-4-4-12 GUID")
        exact("X-Amz-Firehose-Source-Arn", self.source_arn)
        if self.access_key is None:
            absent("X-Amz-Firehose-Access-Key", "no access key is configured")
        else:
            exact("X-Amz-Firehose-Access-Key", self.access_key)
        attrs = value("X-Amz-Firehose-Common-Attributes")
        if self.common_attributes is None:
            absent("X-Amz-Firehose-Common-Attributes", "no common attributes are configured")
        elif attrs is None:
            problems.append("X-Amz-Firehose-Common-Attributes missing")
        else:
            try:
                parsed = strict_json(attrs)
            except ValueError as e:
                problems.append(f"X-Amz-Firehose-Common-Attributes is not JSON ({e}): {attrs[:200]!r}")
            else:
                want = {"commonAttributes": dict(self.common_attributes)}
                if parsed != want:
                    problems.append(f"X-Amz-Firehose-Common-Attributes {parsed!r}, want {want!r}")
        if self.gzip:
            exact("Content-Encoding", "gzip")
        else:
            absent("Content-Encoding", "content_encoding is none")
        ua = value("User-Agent")
        if isinstance(self.user_agent, str):
            if ua != self.user_agent:
                problems.append(f"User-Agent {ua!r}, want {self.user_agent!r}")
        elif ua is None or not self.user_agent.match(ua):
            problems.append(f"User-Agent {ua!r} does not match {self.user_agent.pattern}")

    def _check_body(self, attempt: Attempt, raw: bytes, problems: list[str]) -> None:
        if self.gzip:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = d.decompress(raw, MAX_BODY_BYTES + 1)
            except zlib.error as e:
                problems.append(f"body is not gzip ({e})")
                return
            if len(body) > MAX_BODY_BYTES:
                problems.append(f"body larger than {MAX_BODY_BYTES} bytes before compression")
                return
            if not d.eof or d.unused_data or d.unconsumed_tail:
                problems.append("body is not exactly one complete gzip stream")
                return
        else:
            body = raw
            if len(body) > MAX_BODY_BYTES:
                problems.append(f"body of {len(body)} bytes > {MAX_BODY_BYTES}")
                return
        attempt.decoded_bytes = len(body)
        try:
            doc = strict_json(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            problems.append(f"body is not UTF-8 JSON ({e}): {body[:120]!r}")
            return
        if not isinstance(doc, dict):
            problems.append(f"body is a JSON {type(doc).__name__}, not an object")
            return
        if set(doc) != {"requestId", "timestamp", "records"}:
            problems.append(f"body keys {sorted(doc)}, want exactly requestId, timestamp, records")
        rid = doc.get("requestId")
        header_rid = attempt.request_id
        if not isinstance(rid, str) or rid != header_rid:
            problems.append(f"body requestId {rid!r} != header X-Amz-Firehose-Request-Id {header_rid!r}")
        ts = doc.get("timestamp")
        if type(ts) is not int:
            problems.append(f"timestamp {ts!r} is not an integer (ms since epoch)")
        else:
            attempt.body_timestamp = ts
            lo = int((attempt.arrived - TIMESTAMP_PAST_S) * 1000)
            hi = int((time.time() + TIMESTAMP_FUTURE_S) * 1000)
            if not lo <= ts <= hi:
                problems.append(f"timestamp {ts} is not close to now ({now_ms()}; arrival "
                                f"{int(attempt.arrived * 1000)})")
        records = doc.get("records")
        if not isinstance(records, list):
            problems.append(f"records is {type(records).__name__}, not a list")
            return
        if not 1 <= len(records) <= MAX_RECORDS:
            problems.append(f"{len(records)} records, want 1..{MAX_RECORDS}")
        decoded = []
        bad = []
        for i, rec in enumerate(records):
            if not isinstance(rec, dict) or set(rec) != {"data"}:
                bad.append(f"records[{i}] is {rec!r:.80} (want exactly {{\"data\": ...}})")
                continue
            data = rec["data"]
            if not isinstance(data, str):
                bad.append(f"records[{i}].data is a {type(data).__name__}")
                continue
            if len(data) > MAX_DATA_CHARS:
                bad.append(f"records[{i}].data has {len(data)} chars > {MAX_DATA_CHARS}")
                continue
            try:
                if len(data) % 4 or not BASE64.match(data):
                    raise binascii.Error("not base64 alphabet / length")
                value = base64.b64decode(data, validate=True)
                if base64.b64encode(value).decode() != data:
                    raise binascii.Error("non-canonical padding bits")
            except binascii.Error as e:
                bad.append(f"records[{i}].data {data[:40]!r} is not valid base64 ({e})")
                continue
            decoded.append(value)
        if bad:
            problems.append(f"{len(bad)} bad records, e.g. " + "; ".join(bad[:3]))
        else:
            attempt.records = decoded

    def _handle(self, req: _Handler) -> None:
        arrived = time.time()
        with self._lock:
            attempt = Attempt(index=len(self._attempts), arrived=arrived, method=req.command,
                              path=req.path, headers=list(req.headers.items()))
            self._attempts.append(attempt)
        problems = attempt.violations
        if req.command != "POST":
            problems.append(f"method {req.command}, want POST")
        if req.path != self.path:
            problems.append(f"path {req.path!r}, want {self.path!r}")
        self._check_headers(req.headers, problems)
        rid = req.headers.get("X-Amz-Firehose-Request-Id")
        attempt.request_id = rid.strip(" \t") if rid is not None else None
        raw = req.read_body(problems, MAX_BODY_BYTES + (1 << 20))
        if raw is not None:
            attempt.body_bytes = len(raw)
            self._check_body(attempt, raw, problems)
        if problems:
            with self._lock:
                self._violations.extend(f"attempt #{attempt.index} (id {attempt.request_id}): {p}"
                                        for p in problems)
            body = json.dumps({"requestId": attempt.request_id or "", "timestamp": now_ms(),
                               "errorMessage": "protocol violation: " + "; ".join(problems)}).encode()
            req.answer(400, body)
            self._finish(attempt, 400)
            return
        action = self._decide(attempt)
        attempt.action = action
        self._respond(req, attempt, action)

    def _commit(self, attempt: Attempt) -> None:
        with self._lock:
            attempt.committed = True
            self._batches.append(Batch(request_id=attempt.request_id, records=attempt.records,
                                       headers=attempt.headers, arrived=attempt.arrived,
                                       attempt=attempt.index))

    def _finish(self, attempt: Attempt, answered: int) -> None:
        with self._lock:
            attempt.answered = answered
            attempt.finished = time.time()

    def _success_body(self, request_id: str) -> bytes:
        return json.dumps({"requestId": request_id, "timestamp": now_ms()},
                          separators=(",", ":")).encode()

    def _respond(self, req: _Handler, attempt: Attempt, action: Action) -> None:
        rid = attempt.request_id
        kind = action.kind
        if kind == "slow":
            self._stopping.wait(action.delay_s)
        if action.commits:
            self._commit(attempt)
        if kind in ("ok", "slow"):
            req.answer(200, self._success_body(rid))
            self._finish(attempt, 200)
        elif kind == "status":
            body = action.body or json.dumps({"requestId": rid, "timestamp": now_ms(),
                                              "errorMessage": f"injected {action.status}"}).encode()
            extra = {}
            if 300 <= action.status < 400:
                # A redirect the daemon must not follow: this path is not the receiver's, so
                # following it would be recorded as a violation.
                extra["Location"] = f"http://127.0.0.1:{self.port}/redirected-must-not-be-followed"
            req.answer(action.status, body, extra)
            self._finish(attempt, action.status)
        elif kind == "malformed":
            req.answer(200, b"<html>this is not JSON</html>")
            self._finish(attempt, 200)
        elif kind == "mismatched":
            other = str(uuid.uuid4())
            assert other != rid
            req.answer(200, json.dumps({"requestId": other, "timestamp": now_ms()}).encode())
            self._finish(attempt, 200)
        elif kind == "array":
            req.answer(200, json.dumps([rid, None]).encode())
            self._finish(attempt, 200)
        elif kind == "oversized":
            body = self._success_body(rid)
            body += b" " * max(0, action.size - len(body))
            req.answer(200, body)
            self._finish(attempt, 200)
        elif kind == "close":
            req.close_connection = True
            try:
                req.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._finish(attempt, 0)
        else:  # pragma: no cover
            raise ValueError(f"unknown action {action}")
