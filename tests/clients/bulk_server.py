"""An in-repo OpenSearch ``_bulk`` server for the OpenSearch destination tests.

It stands in for OpenSearch: no OpenSearch (or Elasticsearch) server can be installed on this
machine, so this server implements the one API the destination uses, following OpenSearch's
documented ``_bulk`` request and response format (NDJSON action/source line pairs in,
``{"took", "errors", "items"}`` out), strictly, and records everything it was sent::

    with BulkServer() as server:                 # 127.0.0.1, a free port, a background thread
        ... point the daemon at server.url ...
        server.documents()                       # {(index, id): document}
        server.attempts                          # every request, in arrival order
        assert server.violations == []           # protocol violations (see below)

Requests. ``POST /_bulk`` with ``Content-Type: application/x-ndjson`` (parameters such as
``charset`` allowed), a body by Content-Length or chunked, optionally ``Content-Encoding: gzip``.
The body is pairs of lines, each ending in ``\\n`` (so the body must end with a newline, and no
line may be empty or hold a ``\\r``): an action line ``{"index": {"_index": ..., "_id": ...,
"_type": ...}}`` -- only the ``index`` action, ``_index`` required (every document names its
index explicitly; it must be a valid OpenSearch index name: lower case, none of ``\\/*?"<>| ,#:``,
not starting with ``_``, ``-`` or ``+``, at most 255 bytes), ``_id`` (1-512 bytes) and ``_type``
optional, no other key -- then the document, a single-line UTF-8 JSON object (no NaN/Infinity).
Anything else (another method or path, a bad line, a wrong Content-Type, ...) is a protocol
violation: it is appended to ``violations`` and the whole request is answered 400 with an
OpenSearch-style error, nothing applied.

Store. ``store`` maps index name -> {id -> document}; a document without ``_id`` gets a generated
20-character id, as OpenSearch does. Indexing an existing id replaces it ("updated", status 200,
``_version`` + 1); a new one is "created" (201). ``versions[(index, id)]`` counts the writes.

Response. ``{"took": ms, "errors": bool, "items": [{"index": {"_index", "_id", "_version",
"result", "_shards", "_seq_no", "_primary_term", "status"}}, ...]}`` in request order (``_type``
echoed when it was sent); a failed item carries ``status`` and ``error: {"type", "reason"}`` and
no ``result``, and is not applied.

Faults, programmable per attempt (a plain attribute each, read when a request comes in):

- ``item_fault``: a callable ``(BulkItem) -> None | status | (status, type, reason)`` deciding per
  document; the item then fails with that status (429 ``es_rejected_execution_exception``, 400
  ``mapper_parsing_exception``, 500 ``exception`` by default). ``BulkItem.try_no`` is 1 the first
  time the document (by index and ``_id``, or by its source without ``_id``) comes in, 2 the
  second, ... so "fail the first try only" is ``lambda it: 429 if it.try_no == 1 else None``.
- ``request_faults``: a list of whole-request faults, one taken per request that passed
  authentication and parsing (first in, first used); when it is empty,
  ``request_fault(attempt_number)`` if set. A fault is one of
    an int status  (429, 503, 413, ...) answered with an OpenSearch error body; nothing applied
    "slow"         sleep ``slow_s`` seconds (or ``("slow", seconds)``), then handle normally --
                   the request still takes effect even if the client gave up meanwhile
    "malformed"    200 with a truncated JSON body; nothing applied
    "short_items"  200 with one item fewer than the request had; nothing applied
    "close"        close the connection without answering; nothing applied
    "close_after"  apply the request, then close without answering (an outcome unknown to the
                   client)

Auth. ``basic_auth=(user, password)``: a request without them gets 401 (recorded in
``auth_failures``; a malformed Basic header is also a violation). ``sigv4=SigV4Expectation(...)``:
the ``Authorization: AWS4-HMAC-SHA256`` header is verified for real -- credential scope (access
key, date = X-Amz-Date's, region, service), ``X-Amz-Date`` within 5 minutes,
``X-Amz-Content-Sha256`` equal to the body's sha256, ``X-Amz-Security-Token`` exactly when a session
token is expected, and the signature recomputed with botocore (``SigV4Auth`` over an
``AWSRequest`` of the request's own signed headers, body and X-Amz-Date); any mismatch is a
violation answered 403.

Every request is recorded in ``attempts`` (an ``Attempt``: number, time, method, path, headers,
body, parsed items with the ids sent and assigned, the fault applied, the status answered)
before it is answered; ``in_flight`` counts requests being handled.
"""

from __future__ import annotations

import base64
import binascii
import collections
import datetime as dt
import gzip
import hashlib
import hmac
import json
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

__all__ = ["BulkServer", "BulkItem", "Attempt", "SigV4Expectation", "parse_bulk", "verify_sigv4"]

HOST = "127.0.0.1"
MAX_ID_BYTES = 512
MAX_INDEX_BYTES = 255
INVALID_INDEX_CHARS = set('\\/*?"<>| ,#:')
ACTION_KEYS = {"_index", "_id", "_type"}
OTHER_ACTIONS = {"create", "update", "delete"}
SIGV4_DATE = "%Y%m%dT%H%M%SZ"
ITEM_ERRORS = {
    429: ("es_rejected_execution_exception",
          "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, "
          "replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1, max_coordinating_and_"
          "primary_bytes=1] (injected)"),
    400: ("mapper_parsing_exception", "failed to parse (injected)"),
    500: ("exception", "internal failure (injected)"),
    409: ("version_conflict_engine_exception", "version conflict (injected)"),
}
REQUEST_ERRORS = {
    400: ("illegal_argument_exception", "the bulk request is malformed (injected)"),
    429: ("es_rejected_execution_exception", "rejected execution of bulk request (injected)"),
    503: ("cluster_block_exception", "blocked by: [SERVICE_UNAVAILABLE/2/no master] (injected)"),
    413: ("content_too_long_exception", "request body is too large (injected)"),
    500: ("exception", "internal failure (injected)"),
}


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _json_loads_strict(raw: bytes) -> Any:
    """JSON from UTF-8 bytes, refusing invalid UTF-8 and NaN / Infinity."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def _auto_id() -> str:
    return secrets.token_urlsafe(15)  # 20 characters of [A-Za-z0-9_-], like OpenSearch's ids


def index_name_problem(name: str) -> str | None:
    if not name:
        return "is empty"
    if name != name.lower():
        return "must be lower case"
    bad = sorted(set(name) & INVALID_INDEX_CHARS)
    if bad:
        return f"must not contain {bad}"
    if name[0] in "_-+":
        return "must not start with '_', '-' or '+'"
    if name in (".", ".."):
        return "must not be '.' or '..'"
    if len(name.encode()) > MAX_INDEX_BYTES:
        return f"is longer than {MAX_INDEX_BYTES} bytes"
    return None


@dataclass
class BulkItem:
    """One action/source pair of a request, and what became of it."""

    index: str | None
    id: str | None  # the _id sent; None when absent
    type: str | None  # the _type sent; None when absent
    raw: bytes  # the source line as sent
    source: dict | None
    line: int  # 1-based line of the action line in the body
    attempt: int = 0  # the request's number
    try_no: int = 0  # 1 the first time this document came in
    status: int | None = None  # the item status answered (None: the request was not answered per item)
    assigned_id: str | None = None  # the id it was (or would have been) stored under
    error: dict | None = None  # the item's error object, as answered

    @property
    def key(self) -> tuple:
        return ("id", self.index, self.id) if self.id is not None else ("source", self.raw)


@dataclass
class Attempt:
    """One request as received, and how it was answered."""

    n: int
    at: float  # time.time() when its head and body had been read
    method: str
    path: str
    headers: dict[str, str]  # lower-case name -> value (the last one if repeated)
    header_list: list[tuple[str, str]]
    body: bytes  # as received (before any Content-Encoding is undone)
    items: list[BulkItem] = field(default_factory=list)
    fault: Any = None
    status: int | None = None  # the HTTP status answered; None if the connection was closed
    response: dict | None = None
    applied: bool = False
    problems: list[str] = field(default_factory=list)

    def ids(self) -> list[str | None]:
        return [it.id for it in self.items]

    def sources(self) -> list[bytes]:
        return [it.raw for it in self.items]


@dataclass
class SigV4Expectation:
    """What a SigV4-signed request must be signed with."""

    access_key: str
    secret_key: str
    region: str
    service: str = "es"
    session_token: str | None = None
    max_skew_s: float = 300.0


def parse_bulk(payload: bytes) -> tuple[list[BulkItem], list[str]]:
    """The items of a ``_bulk`` body and the problems found, strictly (see the module docstring)."""
    problems: list[str] = []
    items: list[BulkItem] = []
    if not payload:
        return items, ["the body is empty"]
    if payload.endswith(b"\n"):
        lines = payload[:-1].split(b"\n")
    else:
        problems.append(f"the body does not end with a newline (last bytes {payload[-40:]!r})")
        lines = payload.split(b"\n")
    if len(lines) % 2:
        problems.append(f"{len(lines)} lines: every action line must be followed by one source line")

    def note(where: int, what: str) -> None:
        if len(problems) < 50:
            problems.append(f"line {where}: {what}")

    for i in range(0, len(lines) - len(lines) % 2, 2):
        action_raw, source_raw = lines[i], lines[i + 1]
        n_action, n_source = i + 1, i + 2
        index = doc_id = doc_type = None
        for n, raw in ((n_action, action_raw), (n_source, source_raw)):
            if b"\r" in raw:
                note(n, f"contains a carriage return: {raw[:80]!r}")
            if not raw.strip():
                note(n, "is empty")
        try:
            action = _json_loads_strict(action_raw)
        except (UnicodeDecodeError, ValueError) as e:
            note(n_action, f"action line is not JSON ({e}): {action_raw[:120]!r}")
            action = None
        if action is not None:
            if not isinstance(action, dict) or len(action) != 1:
                note(n_action, f"action line must be an object with one action: {action_raw[:120]!r}")
            else:
                (verb, meta), = action.items()
                if verb != "index":
                    note(n_action, f"action {verb!r}: only 'index' is expected"
                         + (" (a valid _bulk action, but not one the contract sends)"
                            if verb in OTHER_ACTIONS else ""))
                elif not isinstance(meta, dict):
                    note(n_action, f"'index' must hold an object: {action_raw[:120]!r}")
                else:
                    unknown = sorted(set(meta) - ACTION_KEYS)
                    if unknown:
                        note(n_action, f"unexpected action metadata {unknown}")
                    index, doc_id, doc_type = meta.get("_index"), meta.get("_id"), meta.get("_type")
                    if "_index" not in meta:
                        note(n_action, "no _index: every document must name its index")
                    elif not isinstance(index, str):
                        note(n_action, f"_index is not a string: {index!r}")
                        index = None
                    else:
                        why = index_name_problem(index)
                        if why:
                            note(n_action, f"_index {index!r} {why}")
                    if "_id" in meta:
                        if not isinstance(doc_id, str) or not doc_id:
                            note(n_action, f"_id must be a non-empty string: {doc_id!r}")
                            doc_id = None
                        elif len(doc_id.encode()) > MAX_ID_BYTES:
                            note(n_action, f"_id is longer than {MAX_ID_BYTES} bytes")
                    if "_type" in meta and (not isinstance(doc_type, str) or not doc_type):
                        note(n_action, f"_type must be a non-empty string: {doc_type!r}")
                        doc_type = None
        source = None
        try:
            value = _json_loads_strict(source_raw)
        except UnicodeDecodeError as e:
            note(n_source, f"source is not UTF-8 ({e}): {source_raw[:120]!r}")
        except ValueError as e:
            note(n_source, f"source is not one JSON value ({e}): {source_raw[:120]!r}")
        else:
            if isinstance(value, dict):
                source = value
            else:
                note(n_source, f"source is not a JSON object: {source_raw[:120]!r}")
        items.append(BulkItem(index=index, id=doc_id, type=doc_type, raw=source_raw,
                              source=source, line=n_action))
    if not items and not problems:
        problems.append("no documents")
    return items, problems


def _parse_authorization(value: str) -> tuple[dict[str, str], list[str]]:
    prefix = "AWS4-HMAC-SHA256 "
    if not value.startswith(prefix):
        return {}, [f"Authorization is not AWS4-HMAC-SHA256: {value[:60]!r}"]
    fields: dict[str, str] = {}
    problems = []
    for part in value[len(prefix):].split(","):
        name, sep, v = part.strip().partition("=")
        if not sep or not v:
            problems.append(f"malformed Authorization component {part.strip()!r}")
        fields[name] = v
    missing = sorted({"Credential", "SignedHeaders", "Signature"} - set(fields))
    if missing:
        problems.append(f"Authorization lacks {missing}")
    return fields, problems


def verify_sigv4(exp: SigV4Expectation, method: str, target: str, headers, body: bytes) -> list[str]:
    """Problems with a request's SigV4 signature (empty when it verifies).

    ``headers`` is the request's ``http.client.HTTPMessage`` (case-insensitive, ``get_all``).
    The signature is recomputed with botocore from the request's own signed headers, body and
    X-Amz-Date, and compared with the one sent.
    """
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.compat import HTTPHeaders
    from botocore.credentials import Credentials

    auth = headers.get("Authorization")
    if auth is None:
        return ["no Authorization header (a SigV4 signature is expected)"]
    fields, problems = _parse_authorization(auth)
    if problems:
        return problems
    scope = fields["Credential"].split("/")
    if len(scope) != 5:
        return [f"Credential {fields['Credential']!r} is not key/date/region/service/aws4_request"]
    key, date, region, service, terminator = scope
    want = (exp.access_key, exp.region, exp.service, "aws4_request")
    if (key, region, service, terminator) != want:
        problems.append(f"credential scope {key}/{region}/{service}/{terminator} != "
                        f"{'/'.join(want)} expected")
    amz_date = headers.get("X-Amz-Date")
    if amz_date is None:
        problems.append("no X-Amz-Date header")
    else:
        try:
            when = dt.datetime.strptime(amz_date, SIGV4_DATE).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            problems.append(f"X-Amz-Date {amz_date!r} is not yyyyMMddTHHmmssZ")
        else:
            skew = abs(time.time() - when.timestamp())
            if skew > exp.max_skew_s:
                problems.append(f"X-Amz-Date {amz_date} is {skew:.0f}s away from now")
            if date != amz_date[:8]:
                problems.append(f"credential date {date} != X-Amz-Date's {amz_date[:8]}")
    content_sha = headers.get("X-Amz-Content-Sha256")
    body_sha = hashlib.sha256(body).hexdigest()
    if content_sha is None:
        problems.append("no X-Amz-Content-Sha256 header")
    elif content_sha != body_sha:
        problems.append(f"X-Amz-Content-Sha256 {content_sha} != sha256 of the body {body_sha}")
    signed = fields["SignedHeaders"].split(";")
    if signed != sorted(signed) or any(s != s.lower() or not s for s in signed):
        problems.append(f"SignedHeaders {fields['SignedHeaders']!r} are not sorted lower-case names")
    for required in ("host", "x-amz-date"):
        if required not in signed:
            problems.append(f"{required} is not signed (SignedHeaders {fields['SignedHeaders']})")
    absent = [s for s in signed if headers.get(s) is None]
    if absent:
        problems.append(f"signed header(s) {absent} not in the request")
    token = headers.get("X-Amz-Security-Token")
    if exp.session_token is not None:
        if token != exp.session_token:
            problems.append(f"X-Amz-Security-Token {token!r} != the session token expected")
        elif "x-amz-security-token" not in signed:
            problems.append("X-Amz-Security-Token is not signed")
    elif token is not None:
        problems.append("X-Amz-Security-Token sent, but no session token is in use")
    if problems:
        return problems

    class _AsSigned(SigV4Auth):
        """botocore's SigV4 over exactly the headers the request says it signed."""

        def headers_to_sign(self, request):
            chosen = HTTPHeaders()
            for name in signed:
                for value in request.headers.get_all(name) or []:
                    chosen[name] = value
            return chosen

    pairs = [(name, value) for name in signed for value in headers.get_all(name)]
    request = AWSRequest(method=method, url=f"http://{headers.get('Host')}{target}", data=body)
    for name, value in pairs:
        request.headers[name] = value
    if "X-Amz-Content-SHA256" not in request.headers:  # the payload hash the canonical request uses
        request.headers["X-Amz-Content-SHA256"] = content_sha
    request.context["timestamp"] = amz_date
    signer = _AsSigned(Credentials(exp.access_key, exp.secret_key, exp.session_token),
                       exp.service, exp.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(expected, fields["Signature"]):
        return [f"signature {fields['Signature']} != {expected} recomputed over the canonical "
                f"request:\n{canonical}"]
    return []


def _error_body(status: int, etype: str, reason: str) -> dict:
    return {"error": {"root_cause": [{"type": etype, "reason": reason}], "type": etype,
                      "reason": reason}, "status": status}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "BulkServer/1.0"

    def log_message(self, format, *args):  # noqa: A002 - quiet
        pass

    def _dispatch(self):
        self.server.owner._handle(self)

    do_POST = do_GET = do_PUT = do_DELETE = do_HEAD = do_PATCH = _dispatch


class BulkServer:
    """See the module docstring. ``start()`` / ``stop()``, or use it as a context manager."""

    def __init__(self, *, basic_auth: tuple[str, str] | None = None,
                 sigv4: SigV4Expectation | None = None, slow_s: float = 2.0):
        self.basic_auth = basic_auth
        self.sigv4 = sigv4
        self.slow_s = slow_s
        self.item_fault: Callable[[BulkItem], Any] | None = None
        self.request_faults: list = []
        self.request_fault: Callable[[int], Any] | None = None
        self.store: dict[str, dict[str, dict]] = {}
        self.versions: collections.Counter = collections.Counter()
        self.attempts: list[Attempt] = []
        self.violations: list[str] = []
        self.auth_failures: list[int] = []  # attempt numbers answered 401
        self.in_flight = 0
        self._seen: collections.Counter = collections.Counter()  # BulkItem.key -> times received
        self._seq_no = 0
        self._lock = threading.RLock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> "BulkServer":
        self._httpd = ThreadingHTTPServer((HOST, 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="bulk-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(5)
            self._httpd = None

    def __enter__(self) -> "BulkServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    # -- reading what happened ------------------------------------------------------------------

    def documents(self) -> dict[tuple[str, str], dict]:
        """(index, id) -> document, a snapshot."""
        with self._lock:
            return {(index, doc_id): doc for index, docs in self.store.items()
                    for doc_id, doc in docs.items()}

    def count(self) -> int:
        with self._lock:
            return sum(len(docs) for docs in self.store.values())

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)

    def items(self) -> list[BulkItem]:
        """Every item of every request, in arrival order."""
        with self._lock:
            return [it for a in self.attempts for it in a.items]

    def idle(self) -> bool:
        with self._lock:
            return self.in_flight == 0

    # -- handling a request -----------------------------------------------------------------------

    def _read_body(self, h: BaseHTTPRequestHandler) -> tuple[bytes, str | None]:
        te = h.headers.get("Transfer-Encoding")
        if te is not None:
            if te.strip().lower() != "chunked":
                h.close_connection = True
                return b"", f"unsupported Transfer-Encoding {te!r}"
            chunks = []
            while True:
                line = h.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    h.close_connection = True
                    return b"".join(chunks), f"malformed chunk size line {line[:40]!r}"
                if size == 0:
                    while h.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks), None
                chunks.append(h.rfile.read(size))
                h.rfile.readline(65537)
        length = h.headers.get("Content-Length")
        if length is None:
            if h.command in ("GET", "HEAD", "DELETE"):
                return b"", None
            h.close_connection = True
            return b"", "no Content-Length (and not chunked)"
        try:
            n = int(length)
        except ValueError:
            h.close_connection = True
            return b"", f"bad Content-Length {length!r}"
        return h.rfile.read(n), None

    def _send(self, h: BaseHTTPRequestHandler, attempt: Attempt, status: int, payload: Any,
              extra: tuple = ()) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        attempt.status = status
        if isinstance(payload, dict):
            attempt.response = payload
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json; charset=UTF-8")
            h.send_header("Content-Length", str(len(body)))
            for name, value in extra:
                h.send_header(name, value)
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
            h.wfile.flush()
        except OSError:  # the client went away (e.g. timed out during a slow fault)
            h.close_connection = True

    def _close(self, h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        try:
            h.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _violation(self, attempt: Attempt, problems: list[str]) -> None:
        attempt.problems.extend(problems)
        with self._lock:
            self.violations.extend(f"request {attempt.n} ({attempt.method} {attempt.path}): {p}"
                                   for p in problems)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        began = time.monotonic()
        body, body_problem = self._read_body(h)
        with self._lock:
            attempt = Attempt(n=len(self.attempts) + 1, at=time.time(), method=h.command,
                              path=h.path, headers={k.lower(): v for k, v in h.headers.items()},
                              header_list=list(h.headers.items()), body=body)
            self.attempts.append(attempt)
            self.in_flight += 1
        try:
            self._answer(h, attempt, body, body_problem, began)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h, attempt: Attempt, body: bytes, body_problem: str | None, began: float) -> None:
        if h.command != "POST" or h.path != "/_bulk":
            self._violation(attempt, [f"unexpected request {h.command} {h.path} (only POST /_bulk)"])
            self._send(h, attempt, 400, _error_body(400, "illegal_argument_exception",
                                                    f"no handler for {h.command} {h.path}"))
            return
        problems = [body_problem] if body_problem else []
        ctype = h.headers.get("Content-Type")
        if ctype is None or ctype.split(";", 1)[0].strip().lower() != "application/x-ndjson":
            problems.append(f"Content-Type {ctype!r}, application/x-ndjson expected")
        payload = body
        encoding = (h.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            try:
                payload = gzip.decompress(body)
            except (OSError, EOFError) as e:
                problems.append(f"Content-Encoding gzip, but the body does not gunzip: {e}")
        elif encoding != "identity":
            problems.append(f"unsupported Content-Encoding {encoding!r}")
        items, parse_problems = parse_bulk(payload)
        problems += parse_problems
        with self._lock:
            for it in items:
                it.attempt = attempt.n
                self._seen[it.key] += 1
                it.try_no = self._seen[it.key]
            attempt.items = items
        if problems:
            self._violation(attempt, problems)

        # Authentication is answered first, as OpenSearch's security plugin does.
        if self.basic_auth is not None:
            verdict = self._check_basic(h.headers.get("Authorization"))
            if verdict is not True:
                if verdict:
                    self._violation(attempt, [verdict])
                with self._lock:
                    self.auth_failures.append(attempt.n)
                self._send(h, attempt, 401, b"Unauthorized",
                           (("WWW-Authenticate", 'Basic realm="OpenSearch Security"'),))
                return
        if self.sigv4 is not None:
            sig_problems = verify_sigv4(self.sigv4, h.command, h.path, h.headers, body)
            if sig_problems:
                self._violation(attempt, [f"SigV4: {p}" for p in sig_problems])
                self._send(h, attempt, 403, {"message": "The request signature we calculated does "
                                             "not match the signature you provided."})
                return
        if problems:
            self._send(h, attempt, 400, _error_body(400, "illegal_argument_exception",
                                                    "; ".join(problems)[:2000]))
            return

        fault = self._next_fault(attempt.n)
        attempt.fault = fault
        if isinstance(fault, tuple) and fault and fault[0] == "slow":
            time.sleep(fault[1])
        elif fault == "slow":
            time.sleep(self.slow_s)
        elif isinstance(fault, int):
            etype, reason = REQUEST_ERRORS.get(fault, ("exception", f"status {fault} (injected)"))
            self._send(h, attempt, fault, _error_body(fault, etype, reason))
            return
        elif fault == "malformed":
            self._send(h, attempt, 200, b'{"took":1,"errors":false,"items":[{"index":{"_index":')
            return
        elif fault == "close":
            self._close(h)
            return
        elif fault == "short_items":
            fake = [{"index": {"_index": it.index, "_id": it.id or _auto_id(), "_version": 1,
                               "result": "created", "status": 201}} for it in items[:-1]]
            self._send(h, attempt, 200, {"took": 1, "errors": False, "items": fake})
            return
        elif fault not in (None, "close_after"):
            raise ValueError(f"unknown fault {fault!r}")

        answered = [self._apply(it) for it in items]
        attempt.applied = True
        if fault == "close_after":
            self._close(h)
            return
        took = int((time.monotonic() - began) * 1000)
        self._send(h, attempt, 200, {"took": took, "errors": any(it.error for it in items),
                                     "items": answered})

    def _next_fault(self, n: int):
        with self._lock:
            if self.request_faults:
                return self.request_faults.pop(0)
        return self.request_fault(n) if self.request_fault is not None else None

    def _check_basic(self, header: str | None):
        """True if the credentials are right; else "" (wrong or missing) or a violation text."""
        if header is None:
            return ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return ""
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return f"malformed Basic credentials {header[:60]!r}"
        user, sep, password = decoded.partition(":")
        if not sep:
            return f"Basic credentials without ':' {decoded[:40]!r}"
        return True if (user, password) == tuple(self.basic_auth) else ""

    def _apply(self, it: BulkItem) -> dict:
        with self._lock:
            outcome = self.item_fault(it) if self.item_fault is not None else None
            doc_id = it.id if it.id is not None else _auto_id()
            it.assigned_id = doc_id
            head = {"_index": it.index}
            if it.type is not None:
                head["_type"] = it.type
            head["_id"] = doc_id
            if outcome is not None:
                if isinstance(outcome, tuple):
                    status, etype, reason = outcome
                else:
                    status = int(outcome)
                    etype, reason = ITEM_ERRORS.get(status, ("exception", f"status {status} (injected)"))
                it.status, it.error = status, {"type": etype, "reason": reason}
                return {"index": {**head, "status": status, "error": dict(it.error)}}
            docs = self.store.setdefault(it.index, {})
            created = doc_id not in docs
            docs[doc_id] = it.source
            self.versions[(it.index, doc_id)] += 1
            self._seq_no += 1
            it.status = 201 if created else 200
            return {"index": {**head, "_version": self.versions[(it.index, doc_id)],
                              "result": "created" if created else "updated",
                              "_shards": {"total": 2, "successful": 1, "failed": 0},
                              "_seq_no": self._seq_no, "_primary_term": 1, "status": it.status}}
