"""A Splunk HTTP Event Collector on loopback, for tests and benchmarks (stdlib server).

No Splunk can run here (no package of it can be installed here), so this peer answers the way
Splunk's HEC is documented to (Splunk's HTTP Event Collector docs), over real sockets: HTTPS with a
certificate from a trustme CA by default (`ca_file` for clients; with `client_ca=` a client
certificate that CA signed is required), plain HTTP on request; HTTP/1.1 keep-alive; Nagle
off (without it every answer waits ~40 ms for the client's delayed ACK).

  POST /services/collector/event    (also /services/collector and /services/collector/event/1.0)
  POST /services/collector/ack      indexer acknowledgement status
  GET  /services/collector/health   (also /services/collector/health/1.0)
  GET  /stats                       not Splunk: {"events": n, "requests": m} for benchmarks

What it checks, in this order, for an event request (codes and texts in HEC_CODES):
  body size -> forced answer (force()) -> Authorization -> channel -> busy -> Content-Encoding
  -> the envelopes one by one, stopping at the first bad one (its 0-based index is the
  answer's `invalid-event-number`):
     not JSON / not an object / rejected by `reject_events` -> 6; no `event` -> 12;
     `event` "" / null / {} -> 13; `event` neither string nor object -> 6;
     host/source/sourcetype/index not a string -> 6; index not allowed for the token -> 7;
     `fields` not a flat object of strings or lists of strings -> 15;
     `time` not a number or numeric string -> 6.  No envelope at all -> 5.
Every stored event is a dict: index (the token's default when the envelope has none),
sourcetype, source, host (None when absent: a test sees what the client sent, not Splunk's
defaults), time (float or None), fields, event (as parsed), raw (the envelope's bytes as
received), channel, request (the number of the request that carried it).

Choices where Splunk's documentation is silent (each is a constructor argument or
documented here, so a test can see what it relies on):
  * Events before a bad one in a rejected request: stored when `partial_accept` (default, what
    Splunk is suspected to do), not stored otherwise.
  * `max_content_length` (default 800 MiB, Splunk 6.5+) is checked on the bytes received AND on
    the gunzipped body; over it -> 413 `{"text":"Content too large","code":413}`. Splunk's own
    answer is unverified; 413 is not a HEC code, so the body's code repeats the HTTP status and
    a client must classify by status, as it must for a proxy's 413. Public reports
    (open-telemetry/opentelemetry-collector-contrib#13995) suggest Splunk limits only the bytes
    on the wire, so for gzip bodies this peer is stricter than Splunk.
  * Busy (`busy()`) is checked after authentication and channel, before the body is parsed;
    the 503 carries no Retry-After. Health answers 18 while busy.
  * With useACK the events are stored when the request is answered; the ackId turns true
    `ack_delay` seconds later. After an ackId is reported true it is forgotten (false after).
    A restart forgets every channel (Splunk keeps ack state in memory) but keeps stored events.
  * A channel must be a GUID (8-4-4-4-12 hex); a channel that is given is checked even for a
    token without useACK. The header wins over `?channel=`.
  * `event` of another JSON type (number, list, bool) -> 6, as Vector's HEC emulation does
    (vectordotdev/vector src/sources/splunk_hec/mod.rs); `{}` -> 13 likewise.
  * A gzip body that does not gunzip -> 400 code 6 with invalid-event-number 0; a
    Content-Encoding other than gzip/identity -> 415 with an empty body (Vector's emulation).
  * Health checks a token only when one is given (header `Splunk <t>` or `?token=`): unknown
    -> 400 code 21, disabled -> 400 code 22 (Vector notes Splunk 8.2.4 ignored it in practice).
  * Unknown paths -> 404 `{"text":"The requested URL was not found on this server.","code":404}`.
  * An exception inside the peer (e.g. a `reject_events` predicate that raises) -> 500 code 8.
Deliberately not implemented: /services/collector/raw, Basic auth and query-string token auth
(a `?token=` without an Authorization header gets 400 code 16, "not enabled", as on a default
token), per-event size limits (maxEventSize), ack-service health (codes 19/20 only via force()),
index-time processing of any kind.

Envelopes are parsed with the stdlib json module (NaN/Infinity rejected). When orjson is
importable (a dependency of the project), one envelope per line is tried first with it, 5x
faster; any line it cannot parse sends the whole body through the stdlib parser, which decides.

Standalone, for benchmarks (the peer in its own process, not sharing the client's GIL); serves
until SIGTERM/SIGINT, prints one JSON line {"url", "ca_file", "pid"} and writes it to the ready
file when given; `--count-only` validates every envelope but stores nothing and logs no
requests, so memory stays flat; GET /stats gives the totals:
  python -m tests.peers.hec_peer --port 0 --token T [--ack] [--http] [--ready-file F] [--count-only]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import ssl
import sys
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import trustme

from tests.peers.lifecycle import CaSignedPeer
from tests.peers.loopback_http import LoopbackHTTPServer
from tests.peers.mutual_tls import require_client_certificate

try:
    import orjson as _orjson
except ImportError:  # the stdlib parser alone is correct, only slower
    _orjson = None

HOST = "127.0.0.1"
MIB = 1024 * 1024
DEFAULT_MAX_CONTENT_LENGTH = 800 * MIB  # limits.conf [http_input] max_content_length, Splunk 6.5+
DRAIN_LIMIT = 64 * MIB  # an over-long body up to this is read and dropped, keeping the connection

# HEC code -> (HTTP status, text): Splunk's "Possible error codes" table, as reproduced by
# gjanders/SplunkAdmins lookups/splunkadmins_hec_reply_code_lookup.csv.
HEC_CODES: dict[int, tuple[int, str]] = {
    0: (200, "Success"),
    1: (403, "Token disabled"),
    2: (401, "Token is required"),
    3: (401, "Invalid authorization"),
    4: (403, "Invalid token"),
    5: (400, "No data"),
    6: (400, "Invalid data format"),
    7: (400, "Incorrect index"),
    8: (500, "Internal server error"),
    9: (503, "Server is busy"),
    10: (400, "Data channel is missing"),
    11: (400, "Invalid data channel"),
    12: (400, "Event field is required"),
    13: (400, "Event field cannot be blank"),
    14: (400, "ACK is disabled"),
    15: (400, "Error in handling indexed fields"),
    16: (400, "Query string authorization is not enabled"),
    17: (200, "HEC is healthy"),
    18: (503, "HEC is unhealthy, queues are full"),
    19: (503, "HEC is unhealthy, ack service unavailable"),
    20: (503, "HEC is unhealthy, queues are full, ack service unavailable"),
    21: (400, "Invalid token"),
    22: (400, "Token disabled"),
}
# Codes that point at one envelope; their answers carry `invalid-event-number`.
EVENT_NUMBER_CODES = frozenset({6, 7, 12, 13, 15})
TOO_LARGE_STATUS, TOO_LARGE_TEXT = 413, "Content too large"
NOT_FOUND_TEXT = "The requested URL was not found on this server."

EVENT_PATHS = frozenset({"/services/collector", "/services/collector/event", "/services/collector/event/1.0"})
ACK_PATH = "/services/collector/ack"
HEALTH_PATHS = frozenset({"/services/collector/health", "/services/collector/health/1.0"})
STATS_PATH = "/stats"

_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_NUMERIC = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_JSON_SPACE = re.compile(r"[ \t\r\n]*")  # only JSON's own whitespace may separate envelopes
_METADATA_KEYS = ("host", "source", "sourcetype", "index")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # json would otherwise accept NaN and Infinity


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_INVALID = object()  # a top-level value that does not parse


# ---------------------------------------------------------------- public model

@dataclass
class TokenSettings:
    """One HEC token as configured in Splunk; attributes may be changed while the peer runs."""

    indexes: set[str] | None = None  # allowed indexes; None = any
    use_ack: bool = False
    disabled: bool = False
    default_index: str = "main"

    def allows(self, index: str) -> bool:
        return self.indexes is None or index in self.indexes


@dataclass(frozen=True)
class HecRequest:
    """One request as the peer saw it and answered it."""

    number: int  # 1-based, over every request since the peer was built; events carry it
    method: str
    path: str  # without the query
    status: int
    code: int | None  # the answer's `code` (413/404 for those answers; None for 415 and /stats)
    events: int  # events stored from this request
    gzip: bool
    channel: str | None
    content_length: int  # bytes received (compressed when gzip)
    authorization: str | None  # the Authorization header exactly as sent
    ack_id: int | None = None
    invalid_event_number: int | None = None
    lost: bool = False  # its ackId was dropped by drop_acks(): events gone, never acknowledged
    t: float = 0.0


@dataclass
class _Answer:
    status: int
    body: dict[str, Any] | None  # None: empty body
    code: int | None = None
    events: int = 0
    ack_id: int | None = None
    invalid_event_number: int | None = None
    lost: bool = False
    close: bool = False  # the body was not read: the connection cannot be reused


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    body: bytes | None  # None: longer than the limit, not kept
    wire_length: int
    number: int = 0


@dataclass
class _Pending:
    """An ackId not yet reported true."""

    ready_at: float  # time.monotonic() from which it reads true
    lost: bool = False  # never true


@dataclass
class _Channel:
    next_ack_id: int = 0
    pending: dict[int, _Pending] = field(default_factory=dict)


def _hec(code: int, **extra: Any) -> _Answer:
    status, text = HEC_CODES[code]
    return _Answer(status, {"text": text, "code": code, **extra}, code=code)


def _bad_event(code: int, number: int) -> _Answer:
    answer = _hec(code, **{"invalid-event-number": number})
    answer.invalid_event_number = number
    return answer


def _too_large(close: bool = False) -> _Answer:
    return _Answer(TOO_LARGE_STATUS, {"text": TOO_LARGE_TEXT, "code": TOO_LARGE_STATUS}, code=TOO_LARGE_STATUS,
                   close=close)


# ---------------------------------------------------------------- parsing and validation

def split_envelopes(body: bytes) -> Iterator[tuple[Any, bytes]]:
    """(value, raw bytes) per top-level JSON value of a HEC body, in order; after a value that
    does not parse (value `_INVALID`) nothing more is yielded."""
    if _orjson is not None:
        fast = _split_lines(body)
        if fast is not None:
            return iter(fast)
    return _split_stream(body)


def _split_lines(body: bytes) -> list[tuple[Any, bytes]] | None:
    # Raw newlines cannot occur inside a JSON string, so for the usual one-envelope-per-line
    # body each line is one value. None: some line is not exactly one value; let stdlib decide.
    assert _orjson is not None
    values: list[tuple[Any, bytes]] = []
    for line in body.split(b"\n"):
        line = line.strip(b" \t\r")
        if line:
            try:
                values.append((_orjson.loads(line), line))
            except _orjson.JSONDecodeError:
                return None
    return values


def _split_stream(body: bytes) -> Iterator[tuple[Any, bytes]]:
    # surrogateescape keeps invalid UTF-8 visible: such an envelope fails its strict re-encode.
    text = body.decode("utf-8", "surrogateescape")
    position = _JSON_SPACE.match(text).end()  # type: ignore[union-attr]
    while position < len(text):
        try:
            value, end = _DECODER.raw_decode(text, position)
            raw = text[position:end].encode("utf-8")
        except (ValueError, UnicodeEncodeError):
            yield _INVALID, b""
            return
        yield value, raw
        position = _JSON_SPACE.match(text, end).end()  # type: ignore[union-attr]


def parse_time(value: Any) -> float | None:
    """Epoch seconds from a JSON number or numeric string; None if it is neither."""
    if isinstance(value, bool):
        return None  # bool is an int to Python, not a number to JSON
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and _NUMERIC.fullmatch(value.strip()):
        return float(value)
    return None


def _flat_fields(fields: Any) -> bool:
    if not isinstance(fields, dict):
        return False
    return all(isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
               for value in fields.values())


def check_envelope(envelope: Any, token: TokenSettings,
                   reject: Callable[[dict[str, Any]], bool] | None = None) -> int:
    """The HEC code one envelope earns: 0 when it would be indexed."""
    if envelope is _INVALID or not isinstance(envelope, dict):
        return 6
    if reject is not None and reject(envelope):
        return 6
    if "event" not in envelope:
        return 12
    event = envelope["event"]
    if event is None or event == "" or event == {}:
        return 13
    if not isinstance(event, (str, dict)):
        return 6
    if any(key in envelope and not isinstance(envelope[key], str) for key in _METADATA_KEYS):
        return 6
    if "index" in envelope and not (envelope["index"] and token.allows(envelope["index"])):
        return 7
    if "fields" in envelope and not _flat_fields(envelope["fields"]):
        return 15
    if "time" in envelope and parse_time(envelope["time"]) is None:
        return 6
    return 0


def gunzip(data: bytes, limit: int) -> bytes | None:
    """The gunzipped body (every gzip member), None when it exceeds `limit` bytes; ValueError
    when it is not gzip. Decompression stops at the limit, so a gzip bomb costs nothing."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(data, limit + 1 - len(out))
        except zlib.error as error:
            raise ValueError(f"not gzip: {error}") from error
        if len(out) > limit:
            return None
        if not inflater.eof:
            raise ValueError("gzip stream is truncated")
        data = inflater.unused_data
        if not data.strip(b"\0"):  # trailing zero padding is tolerated, like gzip.decompress
            return bytes(out)


# ---------------------------------------------------------------- HTTP server

class _Server(LoopbackHTTPServer):
    def __init__(self, peer: HecPeer, port: int, context: ssl.SSLContext | None) -> None:
        self.peer = peer
        super().__init__(port, _Handler, context)

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Splunk and every HEC client use it
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK
    server_version = "Splunkd"
    sys_version = ""
    server: _Server

    def do_GET(self) -> None:
        self._serve(read_body=False)

    def do_POST(self) -> None:
        self._serve(read_body=True)

    def _serve(self, read_body: bool) -> None:
        peer = self.server.peer
        headers = {name.lower(): value for name, value in self.headers.items()}
        body, wire_length = self._read_body(headers, peer.max_content_length) if read_body else (b"", 0)
        split = urlsplit(self.path)
        request = _Request(self.command, split.path, parse_qs(split.query), headers, body, wire_length)
        answer = peer._handle(request)
        payload = b"" if answer.body is None else json.dumps(answer.body, separators=(",", ":")).encode()
        self.send_response(answer.status)
        if answer.body is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        if answer.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(payload)

    def _read_body(self, headers: dict[str, str], limit: int) -> tuple[bytes | None, int]:
        """The body and its length on the wire; body None when longer than `limit` (then it is
        read and dropped up to DRAIN_LIMIT, so the connection stays usable, else it is closed)."""
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = max(0, int(headers.get("content-length") or 0))
        except ValueError:
            length = 0
        if length <= limit:
            return self.rfile.read(length), length
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return None, length
        # Closing with unread bytes would make the kernel send RST, and the client could lose
        # the 413 before reading it; reading them keeps the exchange clean.
        remaining = length
        while remaining > 0 and (chunk := self.rfile.read(min(remaining, MIB))):
            remaining -= len(chunk)
        return None, length

    def _read_chunked(self, limit: int) -> tuple[bytes | None, int]:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                break
            chunk = self.rfile.read(size)
            self.rfile.readline(8)  # the CRLF after the chunk
            total += size
            if total <= limit:
                chunks.append(chunk)
        return (b"".join(chunks) if total <= limit else None), total

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `HecPeer.requests` is the request log."""


# ---------------------------------------------------------------- the peer

class HecPeer(CaSignedPeer):
    """A Splunk HEC on one loopback port that stays the same across `restart()`.

    Thread-safe: tests may change tokens and attributes and call the fault controls while
    clients are being served. Stored events and the request log survive stop() and restart()."""

    def __init__(self, tokens: dict[str, TokenSettings] | None = None, *, tls: bool = True,
                 ca: trustme.CA | None = None, port: int = 0, partial_accept: bool = True,
                 ack_delay: float = 0.0, max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
                 count_only: bool = False, client_ca: trustme.CA | None = None) -> None:
        self.tokens: dict[str, TokenSettings] = dict(tokens or {})
        self.tls = tls
        self.ca = ca or trustme.CA()
        self.client_ca = client_ca  # when set: mutual TLS, a client certificate it signed required
        self.partial_accept = partial_accept  # store the events before a rejected one
        self.ack_delay = ack_delay  # seconds from a request's answer until its ackId reads true
        self.max_content_length = max_content_length
        self.count_only = count_only  # validate, count, store nothing, log no requests
        self._port = port
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when events are stored
        self._events: list[dict[str, Any]] = []
        self._requests: list[HecRequest] = []
        self._channels: dict[str, _Channel] = {}
        self._forced: deque[int] = deque()
        self._busy_requests = 0
        self._busy_until = 0.0
        self._drop_acks = 0
        self._reject: Callable[[dict[str, Any]], bool] | None = None
        self._request_count = 0
        self._event_request_count = 0
        self._event_count = 0
        self._write_ca("hec-peer-")

    # ---- lifecycle

    @property
    def url(self) -> str:
        """`https://127.0.0.1:<port>` (http with tls=False); known from the first start on,
        also while the peer is stopped."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("HecPeer is already running")
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert(HOST, "localhost").configure_cert(context)
            require_client_certificate(context, self.client_ca)
        self._server = _Server(self, self._port, context)
        self._port = self._server.server_address[1]
        self._server.serve_in_background(f"hec-peer-{self._port}")
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop_serving()

    def _while_down(self) -> None:
        """Stored events are kept; ack state is lost, as when splunkd restarts."""
        with self._lock:
            self._channels.clear()

    # ---- test controls

    def busy(self, requests: int | None = None, seconds: float | None = None) -> None:
        """The next `requests` event requests, and/or every one for `seconds`, get 503 code 9
        and store nothing; health says code 18 meanwhile."""
        if requests is None and seconds is None:
            raise ValueError("busy() needs requests or seconds")
        with self._lock:
            self._busy_requests = requests or 0
            self._busy_until = time.monotonic() + seconds if seconds else 0.0

    def force(self, code: int, times: int = 1) -> None:
        """The next `times` event requests get HEC_CODES[code] (status and body; codes that name
        an event add invalid-event-number 0) and store nothing. force(0) only uses up a turn:
        that request is handled normally. Checked before authentication."""
        if code not in HEC_CODES:
            raise ValueError(f"unknown HEC code {code}; one of 0-22")
        with self._lock:
            self._forced.extend([code] * times)

    def drop_acks(self, n: int) -> None:
        """The next `n` ackIds issued are lost inside "Splunk": the client gets 200 + ackId, but
        the events are not stored and the ackId never reads true."""
        with self._lock:
            self._drop_acks = n

    def reject_events(self, predicate: Callable[[dict[str, Any]], bool] | None) -> None:
        """Envelopes for which `predicate` is true get 400 code 6, as if unparseable; None clears."""
        with self._lock:
            self._reject = predicate

    def reset(self) -> None:
        """Forget events, requests, channels and pending faults (tokens and settings stay)."""
        with self._lock:
            self._events.clear()
            self._requests.clear()
            self._channels.clear()
            self._forced.clear()
            self._busy_requests, self._busy_until, self._drop_acks = 0, 0.0, 0
            self._reject = None
            self._event_request_count = self._event_count = 0

    # ---- observation

    def events(self, index: str | None = None) -> list[dict[str, Any]]:
        """Stored events in arrival order (copies: a test cannot change what was stored)."""
        with self._lock:
            return [dict(event) for event in self._events if index is None or event["index"] == index]

    def indexes(self) -> set[str]:
        with self._lock:
            return {event["index"] for event in self._events}

    @property
    def requests(self) -> list[HecRequest]:
        with self._lock:
            return list(self._requests)

    def stats(self) -> dict[str, int]:
        """Events stored (or counted, count_only) and event requests served, since start or reset()."""
        with self._lock:
            return {"events": self._event_count, "requests": self._event_request_count}

    def wait_for(self, count: int, timeout: float = 10.0, index: str | None = None) -> list[dict[str, Any]]:
        """At least `count` stored events (in `index`, or in any); AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(got := [e for e in self._events if index is None or e["index"] == index]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = [(r.number, r.path, r.status, r.code, r.events) for r in self._requests[-10:]]
                    raise AssertionError(f"HEC peer stored {len(got)} of {count} event(s) in "
                                         f"{index or 'any index'} within {timeout} s; last requests "
                                         f"(number, path, status, code, events): {last}")
                self._changed.wait(remaining)
            return got

    # ---- request dispatch

    def _handle(self, request: _Request) -> _Answer:
        with self._lock:
            self._request_count += 1
            request.number = self._request_count
        try:
            answer = self._route(request)
        except Exception:  # noqa: BLE001 - a bug here, or a test hook that raised: Splunk's 500
            traceback.print_exc()
            answer = _hec(8)
        self._record(request, answer)
        return answer

    def _route(self, request: _Request) -> _Answer:
        path = request.path.rstrip("/") or "/"
        if request.method == "POST" and path in EVENT_PATHS:
            return self._event(request)
        if request.method == "POST" and path == ACK_PATH:
            return self._ack(request)
        if request.method == "GET" and path in HEALTH_PATHS:
            return self._health(request)
        if request.method == "GET" and path == STATS_PATH:
            return _Answer(200, self.stats())
        return _Answer(404, {"text": NOT_FOUND_TEXT, "code": 404}, code=404)

    def _record(self, request: _Request, answer: _Answer) -> None:
        if self.count_only:
            return  # a benchmark run would otherwise grow the log without bound
        entry = HecRequest(
            number=request.number, method=request.method, path=request.path, status=answer.status,
            code=answer.code, events=answer.events, gzip=_is_gzip(request.headers),
            channel=_channel(request), content_length=request.wire_length,
            authorization=request.headers.get("authorization"), ack_id=answer.ack_id,
            invalid_event_number=answer.invalid_event_number, lost=answer.lost, t=time.time())
        with self._lock:
            self._requests.append(entry)

    def _authenticate(self, request: _Request) -> TokenSettings | _Answer:
        header = request.headers.get("authorization")
        if header is None:
            return _hec(16) if "token" in request.query else _hec(2)
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme != "Splunk" or not token:
            return _hec(3)
        settings = self.tokens.get(token)
        if settings is None:
            return _hec(4)
        if settings.disabled:
            return _hec(1)
        return settings

    def _check_channel(self, request: _Request, required: bool) -> _Answer | None:
        channel = _channel(request)
        if channel is None:
            return _hec(10) if required else None
        return None if _GUID.fullmatch(channel) else _hec(11)

    def _event(self, request: _Request) -> _Answer:
        with self._lock:
            self._event_request_count += 1
        if request.body is None:
            return _too_large(close=request.wire_length > DRAIN_LIMIT)
        with self._lock:
            forced = self._forced.popleft() if self._forced else 0
        if forced:  # a forced 0 only used up its turn: this request goes on as usual
            return _bad_event(forced, 0) if forced in EVENT_NUMBER_CODES else _hec(forced)
        token = self._authenticate(request)
        if isinstance(token, _Answer):
            return token
        if (problem := self._check_channel(request, required=token.use_ack)) is not None:
            return problem
        if self._take_busy():
            return _hec(9)
        body = self._decoded_body(request)
        if isinstance(body, _Answer):
            return body
        return self._index(request, token, body)

    def _take_busy(self) -> bool:
        with self._lock:
            if self._busy_requests > 0:
                self._busy_requests -= 1
                return True
            return time.monotonic() < self._busy_until

    def _is_busy(self) -> bool:
        with self._lock:
            return self._busy_requests > 0 or time.monotonic() < self._busy_until

    def _decoded_body(self, request: _Request) -> bytes | _Answer:
        assert request.body is not None
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return request.body
        if encoding != "gzip":
            return _Answer(415, None)
        try:
            body = gunzip(request.body, self.max_content_length)
        except ValueError:
            return _bad_event(6, 0)
        return _too_large() if body is None else body

    def _index(self, request: _Request, token: TokenSettings, body: bytes) -> _Answer:
        reject = self._reject
        accepted: list[tuple[dict[str, Any], bytes]] = []
        failure: _Answer | None = None
        for number, (envelope, raw) in enumerate(split_envelopes(body)):
            code = check_envelope(envelope, token, reject)
            if code:
                failure = _bad_event(code, number)
                break
            accepted.append((envelope, raw))
        if failure is None and not accepted:
            return _hec(5)
        keep = accepted if failure is None or self.partial_accept else []
        with self._lock:
            answer = failure or _hec(0)
            if failure is None and token.use_ack:
                answer.ack_id, answer.lost = self._issue_ack(_channel(request) or "")
                answer.body["ackId"] = answer.ack_id  # type: ignore[index]
            if not answer.lost:
                answer.events = self._store(keep, token, request)
        return answer

    def _issue_ack(self, channel_id: str) -> tuple[int, bool]:
        """Under the lock: the channel's next ackId, and whether drop_acks() takes it."""
        channel = self._channels.setdefault(channel_id, _Channel())
        ack_id = channel.next_ack_id
        channel.next_ack_id += 1
        lost = self._drop_acks > 0
        if lost:
            self._drop_acks -= 1
        channel.pending[ack_id] = _Pending(time.monotonic() + self.ack_delay, lost)
        return ack_id, lost

    def _store(self, accepted: list[tuple[dict[str, Any], bytes]], token: TokenSettings,
               request: _Request) -> int:
        """Under the lock."""
        self._event_count += len(accepted)
        if not self.count_only and accepted:
            channel = _channel(request)
            for envelope, raw in accepted:
                self._events.append({
                    "index": envelope.get("index") or token.default_index,
                    "sourcetype": envelope.get("sourcetype"), "source": envelope.get("source"),
                    "host": envelope.get("host"),
                    "time": parse_time(envelope["time"]) if "time" in envelope else None,
                    "fields": envelope.get("fields"), "event": envelope["event"], "raw": raw,
                    "channel": channel, "request": request.number})
            self._changed.notify_all()
        return len(accepted)

    def _ack(self, request: _Request) -> _Answer:
        if request.body is None:
            return _too_large(close=request.wire_length > DRAIN_LIMIT)
        token = self._authenticate(request)
        if isinstance(token, _Answer):
            return token
        if not token.use_ack:
            return _hec(14)
        if (problem := self._check_channel(request, required=True)) is not None:
            return problem
        try:
            query = json.loads(request.body)
            ack_ids = query["acks"]
            if not isinstance(ack_ids, list) or not all(type(i) is int and i >= 0 for i in ack_ids):
                raise ValueError("acks must be a list of ackIds")
        except (ValueError, KeyError, TypeError):
            return _hec(6)
        now = time.monotonic()
        statuses: dict[str, bool] = {}
        with self._lock:
            channel = self._channels.get(_channel(request) or "", _Channel())
            for ack_id in ack_ids:
                pending = channel.pending.get(ack_id)
                done = pending is not None and not pending.lost and now >= pending.ready_at
                if done:
                    del channel.pending[ack_id]  # reported true once, then forgotten
                statuses[str(ack_id)] = done
        return _Answer(200, {"acks": statuses})

    def _health(self, request: _Request) -> _Answer:
        header = request.headers.get("authorization")
        token: str | None = None
        if header is not None:
            scheme, _, token = header.partition(" ")
            token = token.strip() if scheme == "Splunk" else ""
        elif "token" in request.query:
            token = request.query["token"][0]
        if token is not None:
            settings = self.tokens.get(token)
            if settings is None:
                return _hec(21)
            if settings.disabled:
                return _hec(22)
        return _hec(18) if self._is_busy() else _hec(17)


def _channel(request: _Request) -> str | None:
    header = request.headers.get("x-splunk-request-channel")
    if header is not None:
        return header.strip()
    values = request.query.get("channel")
    return values[0] if values else None


def _is_gzip(headers: dict[str, str]) -> bool:
    return headers.get("content-encoding", "").strip().lower() == "gzip"


# ---------------------------------------------------------------- standalone mode

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.hec_peer",
                                     description="Serve a Splunk HEC peer until SIGTERM/SIGINT.")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--token", action="append", required=True, help="a valid token (repeatable)")
    parser.add_argument("--ack", action="store_true", help="the tokens use indexer acknowledgement")
    parser.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    parser.add_argument("--count-only", action="store_true", help="validate and count, store nothing")
    parser.add_argument("--max-content-length", type=int, default=DEFAULT_MAX_CONTENT_LENGTH)
    parser.add_argument("--ready-file", type=Path, help="JSON written once serving: url, ca_file, pid")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    peer = HecPeer({token: TokenSettings(use_ack=args.ack) for token in args.token}, tls=not args.http,
                   port=args.port, max_content_length=args.max_content_length, count_only=args.count_only)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    peer.start()
    info = json.dumps({"url": peer.url, "ca_file": str(peer.ca_file), "pid": os.getpid()})
    if args.ready_file is not None:
        # Write-then-rename, so a driver polling for the file never reads half of it.
        partial = args.ready_file.with_name(args.ready_file.name + ".partial")
        partial.write_text(info)
        partial.replace(args.ready_file)
    print(info, flush=True)
    stopping.wait()
    peer.stop()
    print(json.dumps(peer.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
