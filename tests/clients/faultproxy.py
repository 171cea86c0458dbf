"""A fault-injecting HTTP/1.1 reverse proxy in front of an S3 server, for tests.

It stands in for a misbehaving network path to S3: the S3 server behind it is real (SeaweedFS in the
tests), only the path in between fails. Point the daemon's S3 endpoint at ``proxy.url``::

    with FaultProxy(seaweed.endpoint_url, seed=1234) as proxy:
        proxy.fault_rate = 0.25                        # share of requests that get a fault
        proxy.kinds = {"error_500", "reset_after"}     # or {"stall": 2, "error_500": 1} (weights)
        ...
        proxy.fault_rate = 0                           # heal
        assert proxy.injected["reset_after"] > 0

Requests are parsed (request line, headers, body by Content-Length or chunked; keep-alive with any
number of requests per connection) and forwarded *byte for byte* -- same request line, same Host and
other headers, same body -- so SigV4 signatures stay valid. Each client connection gets its own
upstream connection. Responses (status, headers, body by Content-Length, chunked, or until close;
interim 1xx responses are skipped) are relayed unchanged.

For every request a fault is drawn with a seeded RNG: with probability ``fault_rate`` one of
``kinds`` is injected -- given as a dict, drawn by weight; as a set, dealt from a shuffled deck, so
every kind comes up once in each run of ``len(kinds)`` faults (a short test still sees them all). The seed makes the *sequence* of draws
reproducible; which request gets which draw still depends on the order the requests arrive in.

    error_500     answer 500 InternalError (S3 XML error body); the request is not forwarded
    slowdown_503  answer 503 SlowDown; not forwarded
    reset_before  reset the client connection (RST, SO_LINGER 0) right after the request head;
                  not forwarded
    reset_after   forward the request (it takes effect at the store), then reset the client
                  connection instead of relaying the response: the client sees a failure for a
                  request that succeeded -- the exactly-once case
    stall         read the request, then say nothing for ``stall_s`` seconds (longer than the
                  client's timeout), then close; not forwarded
    slow_body     read the request body slowly (``slow_request``: ``slow_request_chunk`` bytes
                  every ``slow_request_interval`` s), forward it, then relay the response head at
                  once and its body ``slow_chunk`` bytes every ``slow_interval`` s

``proxy.reject(path_contains=..., method=..., status=400, code="InvalidArgument")`` adds a rule for
permanent rejections: matching requests are answered with that S3 error without being forwarded,
before any random fault is drawn. ``rule.hits`` counts them (also ``proxy.injected["reject"]``);
``proxy.clear_rejections()`` removes all rules.

Counters (read them from any thread): ``injected`` (fault kind -> count), ``by_op``
(``(S3 operation, fault kind or "ok")`` -> count), ``requests``, ``upstream_errors`` (requests that
could not be forwarded or whose response could not be read: the client connection is reset), and
``events``, the latest requests as ``(seconds since start, S3 operation, target, fault or "ok")``;
``events_for(text)`` lists those whose target contains ``text`` (e.g. an object key).
Settings are plain attributes, read once per request, so they can be changed while it runs.

The proxy runs its own asyncio loop in a background thread and listens on a free port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import parse_qs, urlsplit

__all__ = ["FaultProxy", "RejectRule", "FAULT_KINDS", "s3_operation"]

FAULT_KINDS = ("error_500", "slowdown_503", "reset_before", "reset_after", "stall", "slow_body")

HOST = "127.0.0.1"
HEAD_LIMIT = 1 << 20  # longest request/response head accepted


class ProtocolError(Exception):
    """Malformed HTTP from either side: the connection is dropped."""


@dataclass
class RejectRule:
    """Answer matching requests with a permanent S3 error, without forwarding them."""

    path_contains: str | None = None
    method: str | None = None
    status: int = 400
    code: str = "InvalidArgument"
    message: str = "Rejected by the fault proxy"
    hits: int = 0

    def matches(self, method: str, target: str) -> bool:
        path = target.split("?", 1)[0]
        return (self.method is None or self.method.upper() == method) and (
            self.path_contains is None or self.path_contains in path
        )


def s3_operation(method: str, target: str) -> str:
    """The S3 operation a path-style request stands for (for counters and logs)."""
    path, _, query = target.partition("?")
    q = parse_qs(query, keep_blank_values=True)
    object_request = path.strip("/").count("/") >= 1
    if method == "PUT":
        if "partNumber" in q:
            return "UploadPart"
        return "PutObject" if object_request else "CreateBucket"
    if method == "POST":
        if "uploads" in q:
            return "CreateMultipartUpload"
        if "uploadId" in q:
            return "CompleteMultipartUpload"
        return "DeleteObjects" if "delete" in q else "POST"
    if method == "DELETE":
        if "uploadId" in q:
            return "AbortMultipartUpload"
        return "DeleteObject" if object_request else "DeleteBucket"
    if method == "HEAD":
        return "HeadObject" if object_request else "HeadBucket"
    if method == "GET":
        if "uploads" in q:
            return "ListMultipartUploads"
        if "uploadId" in q:
            return "ListParts"
        return "GetObject" if object_request else "ListObjects"
    return method


class _Message:
    """A parsed request or response head plus its raw bytes."""

    def __init__(self, raw: bytes):
        self.raw = raw
        try:
            lines = raw[:-4].decode("latin-1").split("\r\n")
            self.start = lines[0].split(" ", 2)
            self.headers = []
            for line in lines[1:]:
                name, value = line.split(":", 1)
                self.headers.append((name.strip().lower(), value.strip()))
        except ValueError as e:
            raise ProtocolError(f"malformed head {raw[:200]!r}") from e
        if len(self.start) < 2:
            raise ProtocolError(f"malformed start line {lines[0]!r}")

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def has_token(self, name: str, token: str) -> bool:
        return any(k == name and token in v.lower() for k, v in self.headers)


async def _read_head(reader: asyncio.StreamReader) -> bytes | None:
    """One message head up to and including the blank line; None at a clean end of stream."""
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise ProtocolError("connection closed in the middle of a message head") from e
        return None
    except asyncio.LimitOverrunError as e:
        raise ProtocolError("message head too long") from e


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, raw (chunk sizes, extensions and trailers included)."""
    out = bytearray()
    while True:
        line = await reader.readuntil(b"\r\n")
        out += line
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError as e:
            raise ProtocolError(f"bad chunk size line {line!r}") from e
        if size == 0:
            break
        out += await reader.readexactly(size + 2)
    while True:  # trailers, up to the blank line
        line = await reader.readuntil(b"\r\n")
        out += line
        if line == b"\r\n":
            return bytes(out)


def _content_length(msg: _Message) -> int:
    value = msg.header("content-length")
    try:
        n = int(value) if value is not None else 0
    except ValueError as e:
        raise ProtocolError(f"bad Content-Length {value!r}") from e
    if n < 0:
        raise ProtocolError(f"bad Content-Length {value!r}")
    return n


async def _read_request_body(reader, msg: _Message, chunk: int | None = None, interval: float = 0.0) -> bytes:
    """The request body; with ``chunk``, read ``chunk`` bytes at a time, ``interval`` s apart."""
    if msg.has_token("transfer-encoding", "chunked"):
        return await _read_chunked(reader)
    n = _content_length(msg)
    if not chunk:
        return await reader.readexactly(n)
    parts = []
    while n > 0:
        part = await reader.readexactly(min(chunk, n))
        parts.append(part)
        n -= len(part)
        if n:
            await asyncio.sleep(interval)
    return b"".join(parts)


async def _read_response(reader, method: str) -> tuple[_Message, bytes, bool]:
    """(head, body, keep_alive) of the final response to a ``method`` request."""
    while True:
        raw = await _read_head(reader)
        if raw is None:
            raise ProtocolError("upstream closed the connection before responding")
        msg = _Message(raw)
        try:
            status = int(msg.start[1])
        except ValueError as e:
            raise ProtocolError(f"bad status line {msg.start!r}") from e
        if 100 <= status < 200:
            continue  # interim (100 Continue): the client already got ours
        break
    keep_alive = msg.start[0] == "HTTP/1.1" and not msg.has_token("connection", "close")
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif msg.has_token("transfer-encoding", "chunked"):
        body = await _read_chunked(reader)
    elif msg.header("content-length") is not None:
        body = await reader.readexactly(_content_length(msg))
    else:
        body = await reader.read()  # delimited by the end of the connection
        keep_alive = False
    return msg, body, keep_alive


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: SO_LINGER 0 makes close() send RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


def _error_response(method: str, target: str, status: int, code: str, message: str, request_id: str) -> bytes:
    reason = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 409: "Conflict",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    resource = target.split("?", 1)[0]
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
    ).encode()
    if method == "HEAD":  # S3 sends no body with a HEAD error
        body = b""
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Server: faultproxy\r\n"
        "\r\n"
    ).encode()
    return head + body


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        seed: int = 0,
        fault_rate: float = 0.0,
        kinds: Iterable[str] | dict[str, float] = FAULT_KINDS,
        stall_s: float = 4.0,
        slow_chunk: int = 16,
        slow_interval: float = 0.2,
        slow_request: bool = True,
        slow_request_chunk: int = 256 * 1024,
        slow_request_interval: float = 0.05,
    ):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"upstream must be http://host:port, not {upstream!r}")
        self.upstream = (parts.hostname, parts.port)
        self.seed = seed
        self.fault_rate = fault_rate
        self.kinds = kinds
        self.stall_s = stall_s
        self.slow_chunk = slow_chunk
        self.slow_interval = slow_interval
        self.slow_request = slow_request
        self.slow_request_chunk = slow_request_chunk
        self.slow_request_interval = slow_request_interval

        self.injected: collections.Counter[str] = collections.Counter()
        self.by_op: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests = 0
        self.upstream_errors = 0
        self.events: collections.deque[tuple[float, str, str, str]] = collections.deque(maxlen=100_000)
        self._t0 = time.monotonic()
        self._rules: list[RejectRule] = []
        self._rng = random.Random(seed)
        self._deck: list[str] = []
        self._deck_kinds: list[str] = []
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self.port: int | None = None

    # -- configuration and counters (any thread) -------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def reject(self, path_contains: str | None = None, method: str | None = None, status: int = 400,
               code: str = "InvalidArgument", message: str = "Rejected by the fault proxy") -> RejectRule:
        rule = RejectRule(path_contains, method, status, code, message)
        with self._lock:
            self._rules.append(rule)
        return rule

    def clear_rejections(self) -> None:
        with self._lock:
            self._rules.clear()

    def counters(self) -> dict:
        """A consistent snapshot of the counters, for messages."""
        with self._lock:
            return {
                "seed": self.seed,
                "requests": self.requests,
                "injected": dict(self.injected),
                "upstream_errors": self.upstream_errors,
                "by_op": {f"{op}/{kind}": n for (op, kind), n in sorted(self.by_op.items())},
            }

    def events_for(self, text: str) -> list[tuple[float, str, str, str]]:
        with self._lock:
            return [e for e in self.events if text in e[2]]

    def _choose(self, method: str, target: str) -> tuple[str | None, RejectRule | None]:
        op = s3_operation(method, target)
        with self._lock:
            self.requests += 1
            for rule in self._rules:
                if rule.matches(method, target):
                    rule.hits += 1
                    self.injected["reject"] += 1
                    self.by_op[(op, "reject")] += 1
                    self.events.append((round(time.monotonic() - self._t0, 3), op, target, "reject"))
                    return "reject", rule
            rate, kinds = self.fault_rate, self.kinds
            kind = None
            if rate > 0 and kinds and self._rng.random() < rate:
                if isinstance(kinds, dict):
                    names = sorted(kinds)
                    kind = self._rng.choices(names, [kinds[k] for k in names])[0]
                else:  # deal from a shuffled deck: every kind comes up once per len(kinds) faults
                    names = sorted(kinds)
                    if names != self._deck_kinds or not self._deck:
                        self._deck_kinds, self._deck = names, list(names)
                        self._rng.shuffle(self._deck)
                    kind = self._deck.pop()
                if kind not in FAULT_KINDS:
                    raise ValueError(f"unknown fault kind {kind!r}")
                self.injected[kind] += 1
            self.by_op[(op, kind or "ok")] += 1
            self.events.append((round(time.monotonic() - self._t0, 3), op, target, kind or "ok"))
            return kind, None

    # -- lifecycle --------------------------------------------------------------------------------

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "FaultProxy":
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="faultproxy", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0, limit=HEAD_LIMIT)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Stop listening, drop every connection, end the thread. Safe to call twice."""
        if self._loop is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()
            self._loop = None

    async def _shutdown(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- one client connection ------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        up: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                raw = await _read_head(reader)
                if raw is None:
                    break
                req = _Message(raw)
                method, target = req.start[0].upper(), req.start[1]
                kind, rule = self._choose(method, target)
                if kind == "reset_before":
                    _reset(writer)
                    return
                if req.has_token("expect", "100-continue"):
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                slow = kind == "slow_body" and self.slow_request
                body = await _read_request_body(
                    reader, req,
                    self.slow_request_chunk if slow else None, self.slow_request_interval,
                )
                client_keep_alive = req.start[2:] == ["HTTP/1.1"] and not req.has_token("connection", "close")
                request_id = f"faultproxy-{next(self._ids)}"

                if kind in ("error_500", "slowdown_503", "reject"):
                    if kind == "error_500":
                        status, code, msg = 500, "InternalError", "We encountered an internal error. Please try again."
                    elif kind == "slowdown_503":
                        status, code, msg = 503, "SlowDown", "Please reduce your request rate."
                    else:
                        status, code, msg = rule.status, rule.code, rule.message
                    writer.write(_error_response(method, target, status, code, msg, request_id))
                    await writer.drain()
                    if not client_keep_alive:
                        break
                    continue
                if kind == "stall":
                    await asyncio.sleep(self.stall_s)
                    break  # then close (FIN), never having answered

                # Forward (no fault, reset_after, slow_body).
                try:
                    if up is None:
                        up = await asyncio.open_connection(*self.upstream, limit=HEAD_LIMIT)
                    up[1].write(raw + body)
                    await up[1].drain()
                    resp, resp_body, up_keep_alive = await _read_response(up[0], method)
                except (OSError, asyncio.IncompleteReadError, ProtocolError):
                    with self._lock:
                        self.upstream_errors += 1
                    _reset(writer)
                    return
                if not up_keep_alive:
                    up[1].close()
                    up = None
                if kind == "reset_after":
                    _reset(writer)
                    return
                if kind == "slow_body":  # the head at once (a client's first-byte timeout is met)
                    writer.write(resp.raw)
                    for i in range(0, len(resp_body), self.slow_chunk):
                        await writer.drain()
                        await asyncio.sleep(self.slow_interval)
                        writer.write(resp_body[i:i + self.slow_chunk])
                else:
                    writer.write(resp.raw + resp_body)
                await writer.drain()
                if not (client_keep_alive and up_keep_alive):
                    break
        except (OSError, asyncio.IncompleteReadError, ProtocolError):
            _reset(writer)  # the client went away or spoke nonsense
        except asyncio.CancelledError:
            _reset(writer)
        finally:
            if up is not None:
                up[1].close()
            if not writer.transport.is_closing():
                writer.close()
            self._tasks.discard(task)
