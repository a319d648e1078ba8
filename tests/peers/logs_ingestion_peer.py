"""The Azure Monitor Logs Ingestion API on loopback HTTPS, for tests (stdlib server).

What the `azure-monitor-ingestion` SDK talks to: one data collection rule (DCR) with its stream
declarations, behind a bearer token of the simulated Entra (tests/peers/fake_cloud.py).

  POST /dataCollectionRules/{rule_id}/streams/{stream}?api-version=2023-01-01 -> 204, no body
  anything else -> 404

Checks, in this order (errors are `{"error": {"code", "message"[, "details"]}}` as the service's):
  path and api-version (404) -> bearer token: signature of the simulated cloud, `aud` the
  monitor resource, not expired (401 InvalidToken + WWW-Authenticate) -> the DCR id (404
  NotFound) -> the app (`appid`) holds the role on the DCR (403 OperationFailed, the service's
  message quoted in the SDK's TROUBLESHOOTING.md) -> queued faults (throttle: 429 + Retry-After;
  fail: 500/503) -> the stream is declared (400 InvalidStream) -> Content-Encoding gzip and
  Content-Type JSON (415) -> size, on the wire and gunzipped (413 ContentLengthLimitExceeded) ->
  a JSON array of objects (400 InvalidContent) -> every record against its stream (400
  InvalidContent, one `details` entry per bad record).

Choices (the service documents none of these precisely; each is a test's lever, said here):
  * A request is taken whole or refused whole: a bad record refuses the request and nothing of
    it is stored; `error.message` names the first bad record ("Record 3: column 'SeverityId'
    expects int, got string"), `error.details` lists all, target `records[3].SeverityId`.
    The service is more lenient with types (it may convert or drop a value); the peer is
    strict so that a sink's per-record dead-letter path can be tested at all.
  * Only gzip bodies are taken. The service also takes identity bodies; the peer refuses them
    with 415 (RFC 9110: an unsupported content coding) so a client that stops compressing is
    caught. 415 rather than 400 because the body itself may be fine.
  * `max_body` (default 1 MiB, "Maximum size of API call: 1 MB, compressed and uncompressed" in
    the service limits) applies to the bytes received and to the gunzipped body. The 413's text
    is the service's as reported in JulianHayward/AzADServicePrincipalInsights#30 ("Maximum
    allowed content length: 1048576 bytes (1 MB). Provided content length: ... bytes."); errors
    also carry `x-ms-error-code` (Azure/azure-sdk-for-python#42648 shows it on a 413).
    The SDK (1.1.0 `_split_chunks`) sizes a chunk by its records' JSON alone; the array's
    brackets and ", " separators come on top, so a chunk the SDK filled to the brim is ~2 bytes
    per record over 1 MiB and gets 413 here: a sender must keep its batches below the limit.
  * Faults come after authentication (the service throttles per DCR) and are used up one per
    request that reaches them.

Standalone, for the benchmarks (bench/ship_sentinel.py), in a process of its own:

    python -m tests.peers.logs_ingestion_peer [--port 0] [--count-only] [--ready-file F]

serves a simulated Entra (an MSSP home tenant with one app and a test secret) and this peer with
the streams of the example DCR (tests/connectors/sentinel_dcr.py), both under one CA, until
SIGTERM/SIGINT. It prints one JSON line {endpoint, login, ca_file, tenant_id, client_id, secret,
rule_id, stats_port, pid} and writes it to the ready file when serving. `--count-only` checks every
request and record as usual but keeps neither records nor the request log, only the totals (a long
run does not grow). The totals (`LogsIngestionPeer.stats()`) are served on `stats_port`, a plain
TCP port of this process that is not part of the API: connect, read one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections import deque
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import trustme

from tests.peers.fake_cloud import FakeCloud
from tests.peers.lifecycle import LoopbackPeer
from tests.peers.loopback_http import HOST, LoopbackHTTPServer

API_VERSION = "2023-01-01"
MAX_BODY = 1024 * 1024  # 1 MiB, the documented limit of one API call
PUBLIC_AUDIENCE = "https://monitor.azure.com"  # the resource of scope https://monitor.azure.com/.default
READ_LIMIT = 64 * 1024 * 1024  # a longer body is not read: 413 and the connection closed
DCR_TYPE = "microsoft.insights/datacollectionrules"

Record = dict[str, Any]
STAT_KEYS = ("records", "requests", "bytes", "json_bytes", "rejected")


class IngestionRequest(NamedTuple):
    """One request as the peer saw and answered it."""

    status: int
    stream: str | None  # None when the path is not an ingestion path
    records: int  # records in the body (0 when it did not parse)
    uncompressed_bytes: int  # the body after gunzip (the bytes received when not gzip)
    content_encoding: str | None
    authorization: bool  # an Authorization header was present
    code: str | None = None  # the answer's error.code; None for 204
    app: str | None = None  # who signed in: the valid token's app id (`appid`), None before that


def _app_of(claims: dict[str, Any]) -> str | None:
    """The app (or managed identity) a token was issued to: v1 `appid`, v2 `azp`, else `oid`."""
    return claims.get("appid") or claims.get("azp") or claims.get("oid")


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str, *, details: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return {"error": error}


class _Fault(NamedTuple):
    status: int
    retry_after: int | None


# ---------------------------------------------------------------- schema

def streams_from_template(path: str | Path) -> dict[str, dict[str, str]]:
    """The `streamDeclarations` of the data collection rule(s) of an ARM template:
    stream -> {column: type}. Standard streams (`Microsoft-*`) are not declared in a DCR."""
    template = json.loads(Path(path).read_text(encoding="utf-8"))
    streams: dict[str, dict[str, str]] = {}
    pending = list(template.get("resources", []))
    while pending:
        resource = pending.pop(0)
        pending.extend(resource.get("resources", []))
        if str(resource.get("type", "")).lower() != DCR_TYPE:
            continue
        for name, declaration in resource.get("properties", {}).get("streamDeclarations", {}).items():
            streams[name] = {column["name"]: column["type"].lower() for column in declaration["columns"]}
    if not streams:
        raise ValueError(f"{path}: no Microsoft.Insights/dataCollectionRules with streamDeclarations")
    return streams


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "int", float: "real", str: "string",
               list: "array", dict: "object"}  # what json.loads makes


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str) or not ("T" in value or len(value) == 10):
        return False  # a date, or a date and time; not "2024-01-01 10:00"
    try:
        datetime.fromisoformat(value)  # 3.11+: trailing Z, any fraction of a second, offsets
    except ValueError:
        return False
    return True


def _is_integer(value: Any, bits: int) -> bool:
    return type(value) is int and -2**bits <= value < 2**bits


# Column type -> whether a (non-null) JSON value fits it.
FITS: dict[str, Callable[[Any], bool]] = {
    "string": lambda value: isinstance(value, str),
    "int": lambda value: _is_integer(value, 31),
    "long": lambda value: _is_integer(value, 63),
    "real": lambda value: type(value) in (int, float),
    "boolean": lambda value: isinstance(value, bool),
    "datetime": _is_datetime,
    "dynamic": lambda value: True,
}


def record_problems(record: Any, columns: dict[str, str], stream: str) -> list[tuple[str, str]]:
    """(column or "", problem) for each way `record` does not fit the stream's declaration."""
    if not isinstance(record, dict):
        return [("", f"expects a JSON object, got {_JSON_TYPES[type(record)]}")]
    problems: list[tuple[str, str]] = []
    for column, value in record.items():
        declared = columns.get(column)
        if declared is None:
            problems.append((column, f"column '{column}' is not declared in stream '{stream}'"))
        elif value is not None and not FITS[declared](value):
            got = _JSON_TYPES[type(value)]
            if declared == "datetime" and got == "string":
                got = "a string that is not an ISO 8601 date and time"
            problems.append((column, f"column '{column}' expects {declared}, got {got}"))
    return problems


def _gunzip(body: bytes, limit: int) -> bytes | None:
    """The gunzipped body, None when it is longer than `limit`; ValueError when not gzip."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise ValueError(f"the body is not gzip: {error}") from error
    if len(out) > limit:
        return None
    if not inflater.eof:
        raise ValueError("the gzip stream is truncated")
    return out


# ---------------------------------------------------------------- HTTP server

class _Server(LoopbackHTTPServer):
    def __init__(self, peer: LogsIngestionPeer, port: int, context: ssl.SSLContext) -> None:
        self.peer = peer
        super().__init__(port, _Handler, context)

    def finish_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        self.peer._connected()
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    sys_version = ""
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST

    def _serve(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            length = max(0, int(headers.get("content-length") or 0))
        except ValueError:
            length = 0
        body: bytes | None = None
        if length <= READ_LIMIT:
            body = self.rfile.read(length)
        else:
            self.close_connection = True
        status, payload, extra = self.server.peer._handle(self.command, self.path, headers, body, length)
        self.send_response(status)
        data = b"" if payload is None else json.dumps(payload).encode()
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `LogsIngestionPeer.requests` is the request log."""


# ---------------------------------------------------------------- the peer

class LogsIngestionPeer(LoopbackPeer):
    """One DCR's ingestion endpoint on a loopback port kept across stop()/start().

    Thread-safe; accepted records and the request log survive a restart."""

    def __init__(self, cloud: FakeCloud, *, rule_id: str, streams: dict[str, dict[str, str]],
                 allowed_apps: set[str] | None = None, audience: str = PUBLIC_AUDIENCE,
                 ca: trustme.CA | None = None, port: int = 0, max_body: int = MAX_BODY,
                 count_only: bool = False) -> None:
        for stream, columns in streams.items():
            unknown = {t for t in columns.values() if t not in FITS}
            if unknown:
                raise ValueError(f"stream {stream}: unknown column type(s) {sorted(unknown)}")
        self.cloud = cloud
        self.rule_id = rule_id
        self.streams = {name: dict(columns) for name, columns in streams.items()}
        self.allowed_apps = allowed_apps  # app ids holding the role on the DCR; None: any app
        self.audience = audience
        self.ca = ca or trustme.CA()
        self.max_body = max_body
        self._port = port
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._faults: deque[_Fault] = deque()
        self._refuse: Callable[[Record], bool] | None = None
        self.accepted: list[tuple[str, Record]] = []  # (stream, record), in arrival order
        self._requests: list[IngestionRequest] = []
        # count_only: records and requests are checked and counted, not kept (a benchmark's long run)
        self.count_only = count_only
        self._totals = dict.fromkeys(STAT_KEYS, 0)
        self._connections = 0

    # ---- lifecycle

    @property
    def endpoint(self) -> str:
        """`https://127.0.0.1:<port>`: the DCE (or the DCR's logs ingestion endpoint)."""
        return f"https://{HOST}:{self.port}"

    def write_ca(self, path: str | Path) -> Path:
        """The CA that signed the peer's certificate, as PEM (the SDK's `connection_verify`)."""
        self.ca.cert_pem.write_to_path(str(path))
        return Path(path)

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("LogsIngestionPeer is already running")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(HOST, "localhost").configure_cert(context)
        self._server = _Server(self, self._port, context)
        self._port = self._server.server_address[1]
        self._server.serve_in_background(f"logs-ingestion-peer-{self._port}")
        return self.endpoint

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop_serving()

    # ---- test controls

    def throttle(self, n: int, retry_after: int = 1) -> None:
        """The next `n` requests that pass authentication answer 429 with Retry-After."""
        with self._lock:
            self._faults.extend([_Fault(429, retry_after)] * n)

    def fail(self, n: int, status: int = 500, retry_after: int | None = None) -> None:
        """The next `n` requests that pass authentication answer `status` (500 or 503)."""
        if status not in (500, 503):
            raise ValueError("fail() takes status 500 or 503")
        with self._lock:
            self._faults.extend([_Fault(status, retry_after)] * n)

    def refuse_when(self, predicate: Callable[[Record], bool] | None) -> None:
        """Records for which `predicate` is true are bad records (400) even when the schema
        fits; None clears."""
        with self._lock:
            self._refuse = predicate

    def reset(self) -> None:
        """Forget records, requests, totals, faults and the refusal predicate."""
        with self._lock:
            self.accepted.clear()
            self._requests.clear()
            self._totals = dict.fromkeys(STAT_KEYS, 0)
            self._faults.clear()
            self._refuse = None

    # ---- observation

    @property
    def connections(self) -> int:
        """TCP connections accepted since the peer was made (a client that keeps its connection
        makes one for many requests)."""
        with self._lock:
            return self._connections

    def _connected(self) -> None:
        with self._lock:
            self._connections += 1

    def records(self, stream: str | None = None) -> list[Record]:
        """Accepted records in arrival order, duplicates included (copies)."""
        with self._lock:
            return [dict(record) for name, record in self.accepted if stream is None or name == stream]

    def stats(self) -> dict[str, int]:
        """Totals since start (or reset), kept also with count_only: `records` and `requests`
        accepted (204), their `bytes` as received (gzip) and `json_bytes` gunzipped; `rejected`:
        requests answered otherwise."""
        with self._lock:
            return dict(self._totals)

    @property
    def requests(self) -> list[IngestionRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 10.0, stream: str | None = None) -> list[Record]:
        """At least `count` accepted records (of `stream`, or of any); AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(got := [r for s, r in self.accepted if stream is None or s == stream]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = [(r.status, r.stream, r.records, r.code) for r in self._requests[-10:]]
                    raise AssertionError(f"Logs Ingestion peer holds {len(got)} of {count} record(s) "
                                         f"within {timeout} s; last requests: {last}")
                self._changed.wait(remaining)
            return [dict(record) for record in got]

    # ---- request handling

    def _handle(self, method: str, target: str, headers: dict[str, str], body: bytes | None,
                length: int) -> tuple[int, dict[str, Any] | None, dict[str, str]]:
        seen: dict[str, Any] = {"stream": None, "records": 0, "bytes": length}
        try:
            self._ingest(method, target, headers, body, seen)
            status, payload, extra, code = 204, None, {}, None
        except Exception as error:  # noqa: BLE001 - a bug here or a test hook that raised: the service's 500
            refused = error if isinstance(error, _Refused) else _internal_error()
            status, payload, code = refused.status, refused.body(), refused.code
            extra = {**refused.headers, "x-ms-error-code": refused.code}  # as Azure services add it
        entry = IngestionRequest(status, seen["stream"], seen["records"], seen["bytes"],
                                 headers.get("content-encoding"), "authorization" in headers, code, seen.get("app"))
        with self._lock:
            self._count(entry, length)
            if not self.count_only:
                self._requests.append(entry)
        return status, payload, extra

    def _count(self, entry: IngestionRequest, received: int) -> None:
        totals = self._totals
        if entry.status != 204:
            totals["rejected"] += 1
            return
        totals["requests"] += 1
        totals["records"] += entry.records
        totals["bytes"] += received
        totals["json_bytes"] += entry.uncompressed_bytes

    def _ingest(self, method: str, target: str, headers: dict[str, str], body: bytes | None,
                seen: dict[str, Any]) -> None:
        rule_id, stream = self._route(method, target)
        seen["stream"] = stream
        claims = self._authenticate(headers.get("authorization"))
        seen["app"] = _app_of(claims)
        if rule_id != self.rule_id:
            raise _Refused(404, "NotFound", f"Data collection rule with immutable Id '{rule_id}' not found.")
        self._authorize(claims, rule_id)
        self._take_fault()
        columns = self.streams.get(stream)
        if columns is None:
            raise _Refused(400, "InvalidStream", f"Stream '{stream}' is not declared in the data collection "
                           f"rule with immutable Id '{rule_id}'.")
        text = self._decoded(headers, body, seen)
        records = _parse(text)
        seen["records"] = len(records)
        self._check(records, columns, stream)
        if self.count_only:
            return  # checked and counted (in _handle), not kept
        with self._lock:
            self.accepted.extend((stream, record) for record in records)
            self._changed.notify_all()

    def _route(self, method: str, target: str) -> tuple[str, str]:
        split = urlsplit(target)
        parts = split.path.split("/")
        if (method != "POST" or len(parts) != 5 or parts[0] or parts[1] != "dataCollectionRules"
                or parts[3] != "streams" or not parts[2] or not parts[4]):
            raise _Refused(404, "NotFound", f"The requested resource '{split.path}' was not found.")
        if parse_qs(split.query).get("api-version") != [API_VERSION]:
            raise _Refused(404, "NotFound", f"api-version must be {API_VERSION}.")  # others not served here
        return unquote(parts[2]), unquote(parts[4])

    def _authenticate(self, authorization: str | None) -> dict[str, Any]:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise self._unauthorized("An access token is required (Authorization: Bearer).")
        try:
            return self.cloud.verify_access_token(token.strip(), [self.audience, self.audience + "/"])
        except jwt.ExpiredSignatureError:
            raise self._unauthorized("The access token is expired.") from None
        except jwt.InvalidAudienceError:
            raise self._unauthorized(f"The access token's audience is not {self.audience}.") from None
        except jwt.PyJWTError:
            raise self._unauthorized("The access token is invalid.") from None

    def _unauthorized(self, message: str) -> _Refused:
        challenge = (f'Bearer authorization_uri="{self.cloud.base_url}/common/oauth2/authorize", '
                     f'resource_id="{self.audience}", error="invalid_token"')
        return _Refused(401, "InvalidToken", message, headers={"WWW-Authenticate": challenge})

    def _authorize(self, claims: dict[str, Any], rule_id: str) -> None:
        app = _app_of(claims)
        if self.allowed_apps is not None and app not in self.allowed_apps:
            raise _Refused(403, "OperationFailed", (
                "The authentication token provided does not have access to ingest data for the data "
                f"collection rule with immutable Id '{rule_id}'."))

    def _take_fault(self) -> None:
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        if fault is None:
            return
        headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
        if fault.status == 429:
            raise _Refused(429, "TooManyRequests", "Rate limit of requests per minute for the data "
                           "collection rule exceeded. Retry after the time in Retry-After.", headers=headers)
        if fault.status == 503:
            raise _Refused(503, "ServiceUnavailable", "The service is unavailable. Retry the request.",
                           headers=headers)
        raise _Refused(500, "InternalServerError", "The service encountered an error. Retry the request.",
                       headers=headers)

    def _decoded(self, headers: dict[str, str], body: bytes | None, seen: dict[str, Any]) -> bytes:
        encoding = (headers.get("content-encoding") or "").strip().lower()
        if encoding != "gzip":  # see the module's docstring: the peer insists on compression
            raise _Refused(415, "UnsupportedContentEncoding",
                           f"Content-Encoding must be gzip, got '{encoding or 'identity'}'.")
        content_type = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _Refused(415, "UnsupportedMediaType", f"Content-Type must be application/json, got "
                           f"'{content_type}'.")
        if body is None or len(body) > self.max_body:
            raise self._too_large(seen["bytes"])
        try:
            text = _gunzip(body, self.max_body)
        except ValueError as error:
            raise _Refused(400, "InvalidContent", str(error)) from None
        if text is None:
            seen["bytes"] = self.max_body + 1  # at least; the rest was not inflated
            raise self._too_large(seen["bytes"])
        seen["bytes"] = len(text)
        return text

    def _too_large(self, provided: int) -> _Refused:
        return _Refused(413, "ContentLengthLimitExceeded", f"Maximum allowed content length: "
                        f"{self.max_body} bytes ({self.max_body / 2**20:g} MB). Provided content length: "
                        f"{provided} bytes.")

    def _check(self, records: list[Any], columns: dict[str, str], stream: str) -> None:
        refuse = self._refuse
        details: list[dict[str, str]] = []
        for index, record in enumerate(records):
            problems = record_problems(record, columns, stream)
            if not problems and refuse is not None and refuse(record):
                problems = [("", "refused by the data collection rule")]
            for column, problem in problems:
                target = f"records[{index}].{column}" if column else f"records[{index}]"
                details.append({"code": "InvalidRecord", "message": f"Record {index}: {problem}",
                                "target": target})
        if details:
            more = f" ({len(details) - 1} more in details)" if len(details) > 1 else ""
            raise _Refused(400, "InvalidContent", details[0]["message"] + more, details=details)


def _internal_error() -> _Refused:
    traceback.print_exc()
    return _Refused(500, "InternalServerError", "The service encountered an error. Retry the request.")


def _parse(text: bytes) -> list[Any]:
    try:
        records = json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise _Refused(400, "InvalidContent", f"The body is not JSON: {error}") from None
    if not isinstance(records, list):
        raise _Refused(400, "InvalidContent", "The body must be a JSON array of records.")
    return records


# ---------------------------------------------------------------- standalone mode

# The simulated MSSP home tenant (where the workspace is) and its app: test values, not secrets.
STANDALONE_TENANT = "9a8b7c6d-0000-4000-8000-5e171e1a0001"
STANDALONE_CLIENT_ID = "5e171e1a-0000-4000-8000-00000000be17"
STANDALONE_SECRET = "logs-ingestion-peer-test-secret"
STANDALONE_RULE_ID = "dcr-5f1c0e9a7b2d4c3e8f6a1b0c9d8e7f6a"


def _serve_stats(peer: LogsIngestionPeer, server: socket.socket) -> None:
    """Each connection gets one JSON line of the peer's totals (not part of the API)."""
    while True:
        try:
            sock, _ = server.accept()
        except OSError:
            return
        with sock:
            try:
                sock.sendall(json.dumps(peer.stats()).encode() + b"\n")
            except OSError:
                pass


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.logs_ingestion_peer",
                                     description="Serve a simulated Entra and a Logs Ingestion API peer until "
                                     "SIGTERM/SIGINT.")
    parser.add_argument("--port", type=int, default=0, help="the ingestion endpoint's port; 0: a free port")
    parser.add_argument("--count-only", action="store_true", help="check and count, keep nothing")
    parser.add_argument("--max-body", type=int, default=MAX_BODY)
    parser.add_argument("--ready-file", type=Path, help="JSON written once serving: endpoint, login, ca_file, "
                        "tenant_id, client_id, secret, rule_id, stats_port, pid")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from tests.connectors.sentinel_dcr import declared_streams  # the example DCR; tests import this module

    args = _parse_args(argv)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    cloud = FakeCloud(record_hits=False)
    cloud.add_tenant(STANDALONE_TENANT, client_id=STANDALONE_CLIENT_ID, secret=STANDALONE_SECRET)
    peer = LogsIngestionPeer(cloud, rule_id=STANDALONE_RULE_ID, streams=declared_streams(), ca=cloud.ca,
                             port=args.port, max_body=args.max_body, count_only=args.count_only)
    with cloud, peer:
        stats = socket.create_server((HOST, 0))
        threading.Thread(target=_serve_stats, args=(peer, stats), name="logs-ingestion-peer-stats",
                         daemon=True).start()
        where = args.ready_file.parent if args.ready_file is not None else Path(tempfile.gettempdir())
        ca_file = where / f"logs-ingestion-ca-{os.getpid()}.pem"
        cloud.write_ca(ca_file)  # the peer's certificate comes from the same CA
        info = json.dumps({"endpoint": peer.endpoint, "login": cloud.base_url, "ca_file": str(ca_file),
                           "tenant_id": STANDALONE_TENANT, "client_id": STANDALONE_CLIENT_ID,
                           "secret": STANDALONE_SECRET, "rule_id": STANDALONE_RULE_ID,
                           "stats_port": stats.getsockname()[1], "pid": os.getpid()})
        if args.ready_file is not None:
            # Write-then-rename, so a driver polling for the file never reads half of it.
            partial = args.ready_file.with_name(args.ready_file.name + ".partial")
            partial.write_text(info)
            partial.replace(args.ready_file)
        print(info, flush=True)
        stopping.wait()
        stats.close()
    print(json.dumps(peer.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
