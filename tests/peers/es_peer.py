"""An Elasticsearch 9 cluster on loopback, for tests and benchmarks (stdlib server + trustme).

No Elasticsearch can run here (it needs more memory and a JVM than a test may take), so this peer answers the way
Elasticsearch 9.1 does, over real sockets, for the APIs a log forwarder and its set-up command
use: HTTPS with a certificate from a trustme CA by default (`ca_file` for `ca_certs=`,
`fingerprint` for `ssl_assert_fingerprint=`; with `client_ca=` a client certificate that CA
signed is required), plain HTTP on request; HTTP/1.1 keep-alive;
Nagle off (without it every answer waits ~40 ms for the client's delayed ACK).

  GET|HEAD        /                               cluster info (version.number VERSION)
  PUT|POST        /_bulk, /{index}/_bulk          create / index / update / delete
  PUT|POST|GET|HEAD|DELETE /_index_template/{name}      composable index templates
  PUT|POST|GET|HEAD|DELETE /_component_template/{name}  component templates
  PUT|GET|DELETE  /_ilm/policy/{name}             ILM policies
  PUT|GET|DELETE  /_ingest/pipeline/{id}          ingest pipelines (stored, never run)
  GET             /_index_template, /_component_template, /_ilm/policy, /_ingest/pipeline
  GET             /_peer/stats                    not ES: {"documents": n, "requests": m}

Every answer carries `X-Elastic-Product: Elasticsearch` (attribute `product_header`; without it
elasticsearch-py raises UnsupportedProductError on its first 2xx answer) and no Server or Date
header. What a request goes through, in ES's order (bodies are ES's, built by `es_error`):
  body over `max_content_length` (100 MiB, checked on the wire and after gunzip) -> 413, empty
  body, connection closed (Netty's HttpObjectAggregator) -> compatibility headers (below) ->
  Content-Type of a body: none -> 406 {"error":"Content-Type header is missing","status":406},
  not json / x-ndjson (plain or vnd.elasticsearch+) -> 406 "Content-Type header [..] is not
  supported" -> route: a known path with another method -> 405 "Incorrect HTTP method for uri
  [..] and method [..], allowed: [..]" with Allow; unknown -> 400 "no handler found for uri [..]
  and method [..]" -> authentication (when `api_key` or `basic` is set): 401 security_exception
  with ES's WWW-Authenticate challenges -> authorization: an action in `forbidden_actions` ->
  403 security_exception "action [<action>] is unauthorized for user [..] ..." -> the API.

Compatibility (RestCompatibleVersionHelper, elastic/elasticsearch): a `compatible-with=N` in
Accept or Content-Type must be in `compatible_versions` (default {8, 9}: ES 9 serves REST API
compatibility for the previous major only, so 7 is refused; elasticsearch-py 8.x sends 8 and
9.x sends 9); with a body both headers must carry the same N or neither. Else 400
media_type_header_exception "Invalid media-type value on headers [Accept, Content-Type]" whose
caused_by is a status_exception "Accept version must be either version 9 or 8, but found 7.
Accept=<header>" (or the Content-Type / "must match" variants). Answers are
`application/vnd.elasticsearch+json;compatible-with=N` when the request asked for N, else
`application/json`, as ES negotiates (`response_content_type` forces one, e.g. to test a
client against `text/plain`). Answers are gzipped when the client accepts gzip and
`http_compression` is on (None = ES's default: on for HTTP, off for HTTPS).

_bulk (Elasticsearch's bulk API documentation). Whole-request answers: `reject_requests()` -> 429
es_rejected_execution_exception (503 cluster_block_exception; other statuses a generic
status_exception); no body -> 400 parse_exception "request body is required"; gzip that does
not gunzip -> 400 parse_exception; a body not ending in "\\n" -> 400 illegal_argument_exception
"The bulk request must be terminated by a newline [\\\\n]"; a bad action line -> 400
illegal_argument_exception "Malformed action/metadata line [n], ..." / "Action/metadata line [n]
contains an unknown parameter [..]"; an update body that is not an object -> 400; missing index,
missing _id for update/delete, empty or >512-byte _id -> 400 action_request_validation_exception
"Validation Failed: 1: index is missing;...". Otherwise 200 {"errors", "took", "items"}, one item
per action in order, keyed by the op, and per item, in this order:
  `always_fail` id -> its status/type/reason; `reject_once` id -> 429
  es_rejected_execution_exception (503 unavailable_shards_exception) once; bad index name ->
  400 invalid_index_name_exception; no such index and none can be made (`require_template` and
  no matching template) -> 404 index_not_found_exception; target is a data stream and the op is
  not create -> 400 illegal_argument_exception "only write ops with an op_type of create are
  allowed in data streams"; source not a JSON object -> 400 document_parsing_exception; data
  stream doc without a valid `@timestamp` -> 400 document_parsing_exception "[1:n] failed to
  parse: data stream timestamp field [@timestamp] is missing" (or "failed to parse field
  [@timestamp] of type [date]"); pipeline (action's `pipeline`, else `?pipeline=`, else the
  index's `index.default_pipeline`; "_none" = none) not defined and `require_pipelines` -> 400
  illegal_argument_exception "pipeline with id [x] does not exist"; then the op:
  create of an existing _id -> 409 version_conflict_engine_exception "[id]: version conflict,
  document already exists (current version [v])", else 201 "created"; index -> 201 "created" or
  200 "updated" (version + 1); update -> merges `doc` (200 "updated", or "noop" when nothing
  changes), `upsert`/`doc_as_upsert` -> 201 "created", missing -> 404 document_missing_exception;
  delete -> 200 "deleted", or 404 "not_found" (not an error: `errors` stays false).
An item's `_index` is the backing index for a data stream (`.ds-<name>-<yyyy.MM.dd>-000001`, as
ES answers) and the index name otherwise; success items carry _version, result, _shards
(total 2, successful 1: one node, one replica), _seq_no (per index), _primary_term 1.
An index or data stream is created on the first item that targets it (kept even if that item
then fails, as ES auto-creates before indexing). The highest-priority template whose
index_patterns match decides: with `data_stream` -> data stream, else a plain index. With
`stack_templates` (ES's `stack.templates.enabled`, default on) the built-in templates logs
(logs-*-*), metrics (metrics-*-*), traces (traces-*-*) and synthetics (synthetics-*-*),
priority 100, exist: so `logs-x-y` is a data stream but `logs-x` is a plain index, as in ES.
Without any template an index is auto-created unless `require_template` (ES with
`action.auto_create_index: false`; data streams from a template are still created).

Templates and ILM: PUT answers {"acknowledged": true}. An index template needs index_patterns,
only known top-level fields, existing component templates (the stack's built-in ones count, and
`ignore_missing_component_templates`), and no same-priority overlap with another template
(built-ins included; ES's "multiple index templates may not match" 400). GET answers ES's shapes:
{"index_templates": [{"name", "index_template"}]}, {"component_templates": [...]},
{name: {"version", "modified_date", "policy", "in_use_by"}} for ILM (version bumps only when the
policy changes, like ES's no-op check), {id: body} for pipelines; missing -> 404
resource_not_found_exception (a pipeline: 404 with body {}), HEAD -> 200/404 without a body.
`puts` counts every PUT per (kind, name), `changes` only those that changed what was stored, so a
test can prove that running set-up twice changes nothing.

Deliberately not implemented: searching, GET/_count of documents, refresh (accepted and
ignored), routing and shards, if_seq_no/version concurrency, scripts in updates (400), running
ingest pipelines (the pipeline a document would go through is recorded), mappings (only
@timestamp is checked), rollover (one backing index per data stream), ILM execution, the
`filter_path` and `error_trace` parameters, any API not listed above (400 "no handler found").

Every request is logged (`requests`, EsRequest: method, path, query, lower-case headers with
Accept / Content-Type / Authorization, bytes on the wire and decoded, gzip, status, items, lost).
Stored documents and templates survive stop() and restart() on the same port.

Standalone, for benchmarks (the peer in its own process); serves until SIGTERM/SIGINT, prints one
JSON line {"url", "ca_file", "fingerprint", "pid"} and writes it to the ready file when given;
`--count-only` parses every action and answers every item as above (201/409...) but keeps only
the ids, no sources, and logs no requests, so memory stays small; GET /_peer/stats gives totals:
  python -m tests.peers.es_peer --port 0 [--http] [--count-only] [--api-key K] [--ready-file F]
"""
from __future__ import annotations

import argparse
import base64
import binascii
import copy
import hashlib
import json
import os
import re
import secrets
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import uuid
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache, lru_cache
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trustme

from tests.peers.lifecycle import CaSignedPeer
from tests.peers.loopback_http import LoopbackHTTPServer
from tests.peers.mutual_tls import require_client_certificate

HOST = "127.0.0.1"
MIB = 1024 * 1024
DEFAULT_MAX_CONTENT_LENGTH = 100 * MIB  # http.max_content_length
DRAIN_LIMIT = 256 * MIB  # an over-long body up to this is read and dropped before the 413

VERSION = "9.1.0"
LUCENE_VERSION = "10.2.2"
DEFAULT_COMPATIBLE_VERSIONS = frozenset({8, 9})  # ES 9: current major and the previous one
PRODUCT = "Elasticsearch"
TAGLINE = "You Know, for Search"
VND_JSON = "application/vnd.elasticsearch+json;compatible-with={}"
MAX_ID_BYTES = 512
DATE_FORMAT = "strict_date_optional_time||epoch_millis"
PEER_USER = "forwarder"  # the user an API key belongs to, in 403 texts
PEER_ROLES = "viewer"

WWW_AUTHENTICATE = ['Basic realm="security", charset="UTF-8"', 'Bearer realm="security"', "ApiKey"]
BULK_ACTION = "indices:data/write/bulk"
BULK_PRIVILEGES = "create_doc,create,delete,index,write,all"

# Built-in templates of an ES 9 cluster with stack.templates.enabled (x-pack stack plugin).
BUILTIN_INDEX_TEMPLATES: dict[str, dict[str, Any]] = {
    kind: {
        "index_patterns": [f"{kind}-*-*"],
        "composed_of": [f"{kind}@mappings", f"{kind}@settings", f"{kind}@custom", "ecs@mappings"],
        "priority": 100, "version": 15, "allow_auto_create": True,
        "_meta": {"description": f"default {kind} template installed by x-pack", "managed": True},
        "data_stream": {"hidden": False, "allow_custom_routing": False},
        "ignore_missing_component_templates": [f"{kind}@custom"],
    }
    for kind in ("logs", "metrics", "traces", "synthetics")
}
BUILTIN_COMPONENT_TEMPLATES = frozenset(
    {f"{kind}@{part}" for kind in ("logs", "metrics", "traces", "synthetics") for part in ("mappings", "settings")}
    | {"ecs@mappings", "data-streams@mappings", "metrics@tsdb-settings"})

INDEX_TEMPLATE_FIELDS = frozenset({"index_patterns", "template", "composed_of", "priority", "version", "_meta",
                                   "data_stream", "allow_auto_create", "ignore_missing_component_templates",
                                   "deprecated"})
COMPONENT_TEMPLATE_FIELDS = frozenset({"template", "version", "_meta", "deprecated"})
ILM_PHASES = frozenset({"hot", "warm", "cold", "frozen", "delete"})
BULK_OPS = ("create", "delete", "index", "update")
ACTION_PARAMETERS = frozenset({"_index", "_id", "routing", "if_seq_no", "if_primary_term", "version", "version_type",
                               "pipeline", "require_alias", "require_data_stream", "retry_on_conflict",
                               "dynamic_templates", "_source", "list_executed_pipelines"})
CONTENT_SUBTYPES = frozenset({"json", "x-ndjson", "vnd.elasticsearch+json", "vnd.elasticsearch+x-ndjson"})
_BAD_INDEX_CHARS = frozenset(' "*\\<|,>/?#:')


# ---------------------------------------------------------------- ES-shaped bodies

def es_error(status: int, type_: str, reason: str, *, caused_by: dict[str, Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    """A whole-request error body as ES writes it: root_cause, type, reason, status."""
    cause = {"type": type_, "reason": reason, **extra}
    error: dict[str, Any] = {"root_cause": [dict(cause)], **cause}
    if caused_by is not None:
        error["caused_by"] = caused_by
    return {"error": error, "status": status}


def simple_error(status: int, message: str) -> dict[str, Any]:
    """ES's bare error body for REST-layer failures (406, 405, no handler)."""
    return {"error": message, "status": status}


def _rejection_reason(operation: str, size: int) -> str:
    return (f"rejected execution of {operation} operation [coordinating_and_primary_bytes=0, replica_bytes=0, "
            f"all_bytes=0, {operation}_operation_bytes={size}, max_coordinating_and_primary_bytes=53687091]")


def _java_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(values) + "]"


# ---------------------------------------------------------------- public model

@dataclass(frozen=True)
class EsRequest:
    """One request as the peer saw it and answered it."""

    number: int  # 1-based over every request since the peer was built; stored docs carry it
    method: str
    path: str  # without the query, percent-decoded
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-case names
    status: int | None  # None: lost (answered by closing the connection)
    content_length: int  # bytes received (compressed when gzip)
    body_length: int  # bytes after gunzip
    gzip: bool
    items: int = 0  # bulk actions in the request
    lost: bool = False
    t: float = 0.0

    @property
    def accept(self) -> str | None:
        return self.headers.get("accept")

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Answer:
    status: int
    body: Any  # a JSON value; None: empty body
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False
    lost: bool = False  # close the connection without answering
    items: int = 0
    media: str | None = None  # the response content type


@dataclass
class _Request:
    method: str
    path: str
    uri: str  # as sent, with the query: ES quotes it in messages
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes | None  # None: over max_content_length
    wire_length: int
    number: int = 0
    body_length: int = 0
    compat: int | None = None  # the Accept header's compatible-with, once validated

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None


@dataclass
class _Index:
    name: str
    kind: str  # "data_stream" or "index"
    write_index: str  # the backing index of a data stream; the name itself otherwise
    uuid: str
    template: str | None
    settings: dict[str, Any]  # flattened index settings from the template
    seq_no: int = -1

    def next_seq_no(self) -> int:
        self.seq_no += 1
        return self.seq_no


@dataclass
class _Fault:
    status: int
    type: str
    reason: str
    remaining: int | None = None  # None: forever


@dataclass
class _Action:
    op: str
    meta: dict[str, Any]
    source: Any  # parsed source / update body; _UNPARSEABLE when it did not parse
    line: int  # 1-based line of the action
    source_text: str = ""


_UNPARSEABLE = object()


# ---------------------------------------------------------------- helpers

def parse_media_type(value: str | None) -> tuple[str, dict[str, str]] | None:
    """("type/subtype", params) of the first media type in a header; None when it does not parse."""
    if value is None:
        return None
    first = value.split(",")[0]
    parts = [part.strip() for part in first.split(";")]
    mime = parts[0].lower()
    if mime.count("/") != 1 or not all(mime.split("/")):
        return None
    params: dict[str, str] = {}
    for part in parts[1:]:
        if part:
            key, sep, val = part.partition("=")
            if not sep:
                return None
            params[key.strip().lower()] = val.strip().strip('"')
    return mime, params


def _compat_version(media: tuple[str, dict[str, str]] | None) -> int | str | None:
    if media is None or "compatible-with" not in media[1]:
        return None
    raw = media[1]["compatible-with"]
    try:
        return int(raw)
    except ValueError:
        return raw


@lru_cache(maxsize=4096)
def _pattern(glob: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in glob.split("*")), re.DOTALL)


def simple_match(glob: str, name: str) -> bool:
    """ES's Regex.simpleMatch: `*` is the only wildcard."""
    return _pattern(glob).fullmatch(name) is not None


def patterns_overlap(a: str, b: str) -> bool:
    """True when some name matches both `*`-globs."""
    @cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "*":
            return meet(i + 1, j) or (j < len(b) and meet(i, j + 1))
        if j < len(b) and b[j] == "*":
            return meet(i, j + 1) or (i < len(a) and meet(i + 1, j))
        return i < len(a) and j < len(b) and a[i] == b[j] and meet(i + 1, j + 1)
    return meet(0, 0)


def invalid_index_name(name: str) -> str | None:
    """ES's reason an index name is refused (MetadataCreateIndexService.validateIndexOrAliasName)."""
    if name != name.lower():
        return f"Invalid index name [{name}], must be lowercase"
    if name in (".", ".."):
        return f"Invalid index name [{name}], must not be '.' or '..'"
    if name[:1] in ("_", "-", "+"):
        return f"Invalid index name [{name}], must not start with '_', '-', or '+'"
    if any(ch in _BAD_INDEX_CHARS for ch in name):
        return (f"Invalid index name [{name}], must not contain the following characters "
                "[' ','\"','*',',','/','<','>','?','\\','|']")
    if len(name.encode()) > 255:
        return f"Invalid index name [{name}], index name is too long, (" + str(len(name.encode())) + " > 255)"
    return None


def flatten_settings(settings: Any, prefix: str = "") -> dict[str, Any]:
    """{"index": {"default_pipeline": "p"}} and {"index.default_pipeline": "p"} alike; keys get
    the `index.` prefix ES adds."""
    flat: dict[str, Any] = {}
    if isinstance(settings, dict):
        for key, value in settings.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                flat.update(flatten_settings(value, name + "."))
            else:
                flat[name if name.startswith("index.") else f"index.{name}"] = value
    return flat


def valid_timestamp(value: Any) -> bool:
    """A value ES's `date` field with strict_date_optional_time||epoch_millis accepts."""
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    if not isinstance(value, str) or not value:
        return False
    if re.fullmatch(r"-?\d+(\.\d+)?", value):
        return True
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def merge_doc(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """An update's partial doc merged into the source, objects recursively (ES's XContentHelper.update)."""
    merged = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_doc(merged[key], value)
        else:
            merged[key] = value
    return merged


def gunzip(data: bytes, limit: int) -> bytes | None:
    """Every gzip member of `data`; None when over `limit` bytes; ValueError when not gzip."""
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
        if not data:
            return bytes(out)


def _auto_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(15)).decode()  # 20 characters, like ES's


# ---------------------------------------------------------------- HTTP server

class _Server(LoopbackHTTPServer):
    def __init__(self, peer: EsPeer, port: int, context: ssl.SSLContext | None) -> None:
        self.peer = peer
        super().__init__(port, _Handler, context)

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each answer waits ~40 ms for a delayed ACK
    server: _Server

    def _serve(self) -> None:
        peer = self.server.peer
        headers = {name.lower(): value for name, value in self.headers.items()}
        body, wire_length = self._read_body(headers, peer.max_content_length)
        split = urlsplit(self.path)
        request = _Request(self.command, unquote(split.path), self.path,
                           parse_qs(split.query, keep_blank_values=True), headers, body, wire_length)
        answer = peer._handle(request)
        if answer.lost:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)  # the client sees the connection drop
            except OSError:
                pass
            return
        self._answer(answer, headers)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _serve

    def _answer(self, answer: _Answer, request_headers: dict[str, str]) -> None:
        peer = self.server.peer
        payload = b"" if answer.body is None else json.dumps(answer.body, separators=(",", ":")).encode()
        compress = (payload and peer.compresses_responses
                    and "gzip" in request_headers.get("accept-encoding", "").lower())
        if compress:
            payload = _gzip(payload)
        self.send_response_only(answer.status)  # ES sends neither Server nor Date
        if peer.product_header:
            self.send_header("X-elastic-product", PRODUCT)
        if answer.body is not None:
            self.send_header("content-type", peer.response_content_type or answer.media or "application/json")
        if compress:
            self.send_header("content-encoding", "gzip")
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("content-length", "0" if self.command == "HEAD" else str(len(payload)))
        if answer.close:
            self.send_header("connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _read_body(self, headers: dict[str, str], limit: int) -> tuple[bytes | None, int]:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return self._read_chunked(limit)
        try:
            length = max(0, int(headers.get("content-length") or 0))
        except ValueError:
            length = 0
        if length <= limit:
            return self.rfile.read(length), length
        if length <= DRAIN_LIMIT:
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
                    pass
                break
            chunk = self.rfile.read(size)
            self.rfile.readline(8)
            total += size
            if total <= limit:
                chunks.append(chunk)
        return (b"".join(chunks) if total <= limit else None), total

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `EsPeer.requests` is the request log."""


def _gzip(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


# ---------------------------------------------------------------- routes

@dataclass(frozen=True)
class _Route:
    pattern: re.Pattern[str]
    methods: dict[str, tuple[str, str]]  # method -> (handler name, ES action for authorization)


def _route(regex: str, **methods: tuple[str, str]) -> _Route:
    return _Route(re.compile(regex), methods)


_NAME = r"([^/]+)"
ROUTES: tuple[_Route, ...] = (
    _route(r"/", GET=("_main", "cluster:monitor/main"), HEAD=("_main", "cluster:monitor/main")),
    _route(r"/_bulk", PUT=("_bulk", BULK_ACTION), POST=("_bulk", BULK_ACTION)),
    _route(r"/_index_template", GET=("_get_index_templates", "indices:admin/index_template/get")),
    _route(rf"/_index_template/{_NAME}",
           PUT=("_put_index_template", "indices:admin/index_template/put"),
           POST=("_put_index_template", "indices:admin/index_template/put"),
           GET=("_get_index_templates", "indices:admin/index_template/get"),
           HEAD=("_get_index_templates", "indices:admin/index_template/get"),
           DELETE=("_delete_index_template", "indices:admin/index_template/delete")),
    _route(r"/_component_template", GET=("_get_component_templates", "cluster:admin/component_template/get")),
    _route(rf"/_component_template/{_NAME}",
           PUT=("_put_component_template", "cluster:admin/component_template/put"),
           POST=("_put_component_template", "cluster:admin/component_template/put"),
           GET=("_get_component_templates", "cluster:admin/component_template/get"),
           HEAD=("_get_component_templates", "cluster:admin/component_template/get"),
           DELETE=("_delete_component_template", "cluster:admin/component_template/delete")),
    _route(r"/_ilm/policy", GET=("_get_policies", "cluster:admin/ilm/get")),
    _route(rf"/_ilm/policy/{_NAME}", PUT=("_put_policy", "cluster:admin/ilm/put"),
           GET=("_get_policies", "cluster:admin/ilm/get"), DELETE=("_delete_policy", "cluster:admin/ilm/delete")),
    _route(r"/_ingest/pipeline", GET=("_get_pipelines", "cluster:admin/ingest/pipeline/get")),
    _route(rf"/_ingest/pipeline/{_NAME}", PUT=("_put_pipeline", "cluster:admin/ingest/pipeline/put"),
           GET=("_get_pipelines", "cluster:admin/ingest/pipeline/get"),
           DELETE=("_delete_pipeline", "cluster:admin/ingest/pipeline/delete")),
    _route(r"/([^/_][^/]*)/_bulk", PUT=("_bulk", BULK_ACTION), POST=("_bulk", BULK_ACTION)),
)
STATS_PATH = "/_peer/stats"


# ---------------------------------------------------------------- the peer

class EsPeer(CaSignedPeer):
    """An Elasticsearch 9 node on one loopback port that stays the same across `restart()`.

    Thread-safe: tests may change attributes and call the fault controls while clients are being
    served. Documents, indices, templates, policies, pipelines and the request log survive
    stop() and restart(); the TLS certificate (and so `fingerprint`) stays the same too."""

    def __init__(self, *, tls: bool = True, ca: trustme.CA | None = None, port: int = 0,
                 api_key: str | None = None, basic: tuple[str, str] | None = None,
                 compatible_versions: Iterable[int] = DEFAULT_COMPATIBLE_VERSIONS,
                 require_template: bool = False, stack_templates: bool = True,
                 require_pipelines: bool = True, count_only: bool = False,
                 max_content_length: int = DEFAULT_MAX_CONTENT_LENGTH,
                 http_compression: bool | None = None, response_content_type: str | None = None,
                 cluster_name: str = "es-peer", client_ca: trustme.CA | None = None) -> None:
        self.tls = tls
        self.ca = ca or trustme.CA()
        self.client_ca = client_ca  # when set: mutual TLS, a client certificate it signed required
        self.api_key = api_key  # when set, "Authorization: ApiKey <api_key>" is accepted
        self.basic = basic  # when set, Basic auth with (user, password) is accepted
        self.compatible_versions = frozenset(compatible_versions)
        self.require_template = require_template  # action.auto_create_index: false
        self.stack_templates = stack_templates  # stack.templates.enabled
        self.require_pipelines = require_pipelines  # a named pipeline must have been PUT
        self.count_only = count_only  # keep ids, not sources; log no requests
        self.max_content_length = max_content_length
        self.http_compression = http_compression  # None: ES's default (on for HTTP, off for HTTPS)
        self.response_content_type = response_content_type  # None: negotiated like ES
        self.product_header = True  # X-Elastic-Product: Elasticsearch on every answer
        self.forbidden_actions: set[str] = set()  # ES action names answered with 403
        self.cluster_name = cluster_name
        self.cluster_uuid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.node_name = f"{cluster_name}-node-0"
        self._port = port
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when documents are stored
        self._reset_state()
        self._index_templates: dict[str, dict[str, Any]] = {}
        self._component_templates: dict[str, dict[str, Any]] = {}
        self._policies: dict[str, dict[str, Any]] = {}
        self._pipelines: dict[str, dict[str, Any]] = {}
        self._puts: Counter[tuple[str, str]] = Counter()
        self._changes: Counter[tuple[str, str]] = Counter()
        self._request_count = 0
        self._leaf = self.ca.issue_cert(HOST, "localhost")
        der = ssl.PEM_cert_to_DER_cert(self._leaf.cert_chain_pems[0].bytes().decode())
        self._fingerprint = hashlib.sha256(der).hexdigest()
        self._write_ca("es-peer-")

    def _reset_state(self) -> None:
        self._docs: dict[tuple[str, str], dict[str, Any]] = {}
        self._indices: dict[str, _Index] = {}
        self._requests: list[EsRequest] = []
        self._fail: dict[str, _Fault] = {}
        self._whole_rejections: deque[int] = deque()
        self._lose = 0
        self._bulk_count = 0

    # ---- lifecycle

    @property
    def url(self) -> str:
        """`https://127.0.0.1:<port>` (http with tls=False); known from the first start on."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the server certificate (DER), lower-case hex without colons, as
        elasticsearch-py's `ssl_assert_fingerprint` takes it."""
        return self._fingerprint

    @property
    def compresses_responses(self) -> bool:
        return (not self.tls) if self.http_compression is None else self.http_compression

    @property
    def forbidden(self) -> bool:
        """True when _bulk is refused with 403 (a user without write privileges)."""
        return BULK_ACTION in self.forbidden_actions

    @forbidden.setter
    def forbidden(self, value: bool) -> None:
        if value:
            self.forbidden_actions.add(BULK_ACTION)
        else:
            self.forbidden_actions.discard(BULK_ACTION)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("EsPeer is already running")
        context: ssl.SSLContext | None = None
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._leaf.configure_cert(context)
            require_client_certificate(context, self.client_ca)
        self._server = _Server(self, self._port, context)
        self._port = self._server.server_address[1]
        self._server.serve_in_background(f"es-peer-{self._port}")
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop_serving()

    # ---- test controls

    def reject_once(self, ids: Iterable[str], status: int = 429) -> None:
        """The next action on each _id fails once: 429 es_rejected_execution_exception (indexing
        pressure), or 503 unavailable_shards_exception; nothing is stored for it."""
        with self._lock:
            for _id in ids:
                self._fail[_id] = _Fault(status, *_transient_item_error(status), remaining=1)

    def unavailable_once(self, ids: Iterable[str]) -> None:
        """reject_once(ids, 503): the primary shard was not active."""
        self.reject_once(ids, status=503)

    def always_fail(self, ids: Iterable[str], status: int = 400, type: str = "document_parsing_exception",
                    reason: str = "[1:2] failed to parse field [severity] of type [long] in document") -> None:
        """Every action on these _ids fails with this status and error; nothing is stored."""
        with self._lock:
            for _id in ids:
                self._fail[_id] = _Fault(status, type, reason)

    def clear_failures(self) -> None:
        with self._lock:
            self._fail.clear()

    def reject_requests(self, n: int = 1, status: int = 429) -> None:
        """The next `n` _bulk requests get a whole-request error with `status` (429:
        es_rejected_execution_exception, 503: cluster_block_exception) and store nothing."""
        with self._lock:
            self._whole_rejections.extend([status] * n)

    def lose_responses(self, n: int = 1) -> None:
        """The next `n` _bulk requests are applied (documents stored) but never answered: the
        connection is closed instead, as when a proxy or the network drops the response."""
        with self._lock:
            self._lose += n

    def reset(self) -> None:
        """Forget documents, indices, the request log and pending faults; templates, policies and
        pipelines stay (they are set-up, not data)."""
        with self._lock:
            self._reset_state()

    # ---- observation

    def documents(self, index: str | None = None) -> list[dict[str, Any]]:
        """Stored documents (copies), oldest write first: index (the data stream or index name),
        backing_index, _id, source (None in count_only), pipeline, request, version, seq_no."""
        with self._lock:
            return [copy.deepcopy(doc) for doc in self._docs.values() if index is None or doc["index"] == index]

    def document(self, index: str, _id: str) -> dict[str, Any] | None:
        with self._lock:
            doc = self._docs.get((index, _id))
            return copy.deepcopy(doc) if doc is not None else None

    def indices(self) -> set[str]:
        """Names of the indices and data streams that exist (created by a write)."""
        with self._lock:
            return set(self._indices)

    def kind(self, name: str) -> str | None:
        """"data_stream", "index", or None when it does not exist."""
        with self._lock:
            target = self._indices.get(name)
            return target.kind if target else None

    def count(self, index: str | None = None) -> int:
        with self._lock:
            if index is None:
                return len(self._docs)
            return sum(1 for doc in self._docs.values() if doc["index"] == index)

    @property
    def requests(self) -> list[EsRequest]:
        with self._lock:
            return list(self._requests)

    @property
    def bulk_requests(self) -> list[EsRequest]:
        with self._lock:
            return [r for r in self._requests if r.path.endswith("/_bulk")]

    def stats(self) -> dict[str, int]:
        """Documents stored and _bulk requests served (answered or lost) since start or reset()."""
        with self._lock:
            return {"documents": len(self._docs), "requests": self._bulk_count}

    def index_templates(self) -> dict[str, dict[str, Any]]:
        """The templates PUT by clients (not the built-in ones), as stored."""
        with self._lock:
            return copy.deepcopy(self._index_templates)

    def component_templates(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._component_templates)

    def ilm_policies(self) -> dict[str, dict[str, Any]]:
        """name -> {"version", "modified_date", "policy"}."""
        with self._lock:
            return copy.deepcopy(self._policies)

    def pipelines(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return copy.deepcopy(self._pipelines)

    @property
    def puts(self) -> Counter[tuple[str, str]]:
        """PUTs received per (kind, name); kinds: index_template, component_template, ilm_policy,
        ingest_pipeline."""
        with self._lock:
            return Counter(self._puts)

    @property
    def changes(self) -> Counter[tuple[str, str]]:
        """PUTs that changed what was stored, per (kind, name)."""
        with self._lock:
            return Counter(self._changes)

    def wait_for(self, count: int, timeout: float = 10.0, index: str | None = None) -> list[dict[str, Any]]:
        """At least `count` stored documents (in `index`, or in any); AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(got := [d for d in self._docs.values() if index is None or d["index"] == index]) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = [(r.number, r.method, r.path, r.status, r.items) for r in self._requests[-10:]]
                    raise AssertionError(f"ES peer stored {len(got)} of {count} document(s) in "
                                         f"{index or 'any index'} within {timeout} s; last requests "
                                         f"(number, method, path, status, items): {last}")
                self._changed.wait(remaining)
            return copy.deepcopy(got)

    # ---- request dispatch

    def _handle(self, request: _Request) -> _Answer:
        with self._lock:
            self._request_count += 1
            request.number = self._request_count
        try:
            answer = self._dispatch(request)
        except Exception:  # noqa: BLE001 - a bug in the peer: ES's 500 shape
            traceback.print_exc()
            answer = _Answer(500, es_error(500, "exception", "peer failure (see the test's stderr)"))
        self._record(request, answer)
        return answer

    def _record(self, request: _Request, answer: _Answer) -> None:
        if self.count_only:
            return
        entry = EsRequest(
            number=request.number, method=request.method, path=request.path, query=request.query,
            headers=dict(request.headers), status=None if answer.lost else answer.status,
            content_length=request.wire_length, body_length=request.body_length, gzip=_is_gzip(request.headers),
            items=answer.items, lost=answer.lost, t=time.time())
        with self._lock:
            self._requests.append(entry)

    def _dispatch(self, request: _Request) -> _Answer:
        if request.path == STATS_PATH and request.method == "GET":
            return _Answer(200, self.stats())
        if request.body is None:
            return _Answer(413, None, close=True)
        body = self._decoded_body(request)
        if isinstance(body, _Answer):
            return body
        request.body = body
        request.body_length = len(body)
        problem = self._check_media_types(request)
        if problem is not None:
            return problem
        media = VND_JSON.format(request.compat) if request.compat is not None else "application/json"
        answer = self._routed(request)
        answer.media = answer.media or media
        return answer

    def _decoded_body(self, request: _Request) -> bytes | _Answer:
        assert request.body is not None
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("", "identity"):
            return request.body
        try:
            if encoding == "gzip":
                body = gunzip(request.body, self.max_content_length)
            elif encoding == "deflate":
                body = zlib.decompress(request.body)
            else:
                return _Answer(400, es_error(400, "illegal_argument_exception",
                                             f"Unsupported Content-Encoding [{encoding}]"))
        except (ValueError, zlib.error):
            return _Answer(400, es_error(400, "parse_exception", "failed to decompress the request body"))
        if body is None or len(body) > self.max_content_length:
            return _Answer(413, None, close=True)
        return body

    def _check_media_types(self, request: _Request) -> _Answer | None:
        accept_raw = request.headers.get("accept")
        type_raw = request.headers.get("content-type")
        accept = parse_media_type(accept_raw) if accept_raw else None
        content_type = parse_media_type(type_raw) if type_raw else None
        bad = [name for name, raw, parsed in (("Accept", accept_raw, accept), ("Content-Type", type_raw, content_type))
               if raw and parsed is None]
        if bad:
            reason = f"Invalid media-type value on headers {_java_list(bad)}"
            return _Answer(400, es_error(400, "media_type_header_exception", reason))
        has_body = bool(request.body)
        problem = self._compat_problem(accept_raw, type_raw, _compat_version(accept), _compat_version(content_type),
                                       has_body)
        if problem is not None:
            reason = "Invalid media-type value on headers [Accept, Content-Type]"
            return _Answer(400, es_error(400, "media_type_header_exception", reason,
                                         caused_by={"type": "status_exception", "reason": problem}))
        version = _compat_version(accept)
        request.compat = version if isinstance(version, int) else None
        if has_body:
            if content_type is None:
                return _Answer(406, simple_error(406, "Content-Type header is missing"))
            mime = content_type[0]
            if not mime.startswith("application/") or mime.split("/", 1)[1] not in CONTENT_SUBTYPES:
                return _Answer(406, simple_error(406, f"Content-Type header [{type_raw}] is not supported"))
        return None

    def _compat_problem(self, accept_raw: str | None, type_raw: str | None, accept: int | str | None,
                        content: int | str | None, has_body: bool) -> str | None:
        """RestCompatibleVersionHelper.getCompatibleVersion's checks; the reason, or None."""
        current, minimum = max(self.compatible_versions), min(self.compatible_versions)
        allowed = f"either version {current} or {minimum}"
        accept_version = current if accept is None else accept
        if accept_version not in self.compatible_versions:
            return f"Accept version must be {allowed}, but found {accept_version}. Accept={accept_raw}"
        if has_body:
            content_version = current if content is None else content
            if content_version not in self.compatible_versions:
                return (f"Content-Type version must be {allowed}, but found {content_version}. "
                        f"Content-Type={type_raw}")
            if content_version != accept_version:
                return ("A compatible version is required on both Content-Type and Accept headers if either one "
                        "has requested a compatible version and the compatible versions must match. "
                        f"Accept={accept_raw}, Content-Type={type_raw}")
            if (accept is None) != (content is None):
                return ("A compatible version is required on both Content-Type and Accept headers if either one "
                        f"has requested a compatible version. Accept={accept_raw}, Content-Type={type_raw}")
        return None

    def _routed(self, request: _Request) -> _Answer:
        path = request.path.rstrip("/") or "/"
        for route in ROUTES:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            target = route.methods.get(request.method)
            if target is None:
                allowed = ", ".join(sorted(route.methods))
                return _Answer(405, simple_error(405, f"Incorrect HTTP method for uri [{request.uri}] and method "
                                                      f"[{request.method}], allowed: [{allowed}]"),
                               headers=[("Allow", ",".join(sorted(route.methods)))])
            handler_name, action = target
            refused = self._authenticate(request) or self._authorize(request, action)
            if refused is not None:
                return refused
            handler: Callable[..., _Answer] = getattr(self, handler_name)
            return handler(request, *match.groups())
        return _Answer(400, simple_error(400, f"no handler found for uri [{request.uri}] and method "
                                              f"[{request.method}]"))

    # ---- security

    def _principal(self, request: _Request) -> str:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "apikey":
            return f"API key id [{_api_key_id(value)}] of user [{PEER_USER}]"
        if scheme.lower() == "basic":
            user = _basic_credentials(value)
            return f"user [{user[0] if user else PEER_USER}]"
        return "user [_anonymous]"

    def _authenticate(self, request: _Request) -> _Answer | None:
        if self.api_key is None and self.basic is None:
            return None  # security off
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        value = value.strip()
        scheme = scheme.lower()
        if scheme == "apikey" and value:
            if self.api_key is not None and value == self.api_key:
                return None
            return _unauthorized("unable to authenticate with provided credentials and anonymous access is not "
                                 "allowed for this request",
                                 additional_unsuccessful_credentials=f"API key: unable to find apikey with id "
                                                                     f"{_api_key_id(value)}")
        if scheme == "basic" and value:
            credentials = _basic_credentials(value)
            if credentials is not None and self.basic is not None and credentials == tuple(self.basic):
                return None
            user = credentials[0] if credentials else ""
            return _unauthorized(f"unable to authenticate user [{user}] for REST request [{request.uri}]")
        return _unauthorized(f"missing authentication credentials for REST request [{request.uri}]")

    def _authorize(self, request: _Request, action: str) -> _Answer | None:
        if action not in self.forbidden_actions:
            return None
        privileges = BULK_PRIVILEGES if action == BULK_ACTION else "all"
        scope = "index" if action.startswith("indices:") else "cluster"
        reason = (f"action [{action}] is unauthorized for {self._principal(request)} with effective roles "
                  f"[{PEER_ROLES}], this action is granted by the {scope} privileges [{privileges}]")
        return _Answer(403, es_error(403, "security_exception", reason))

    # ---- APIs: main

    def _main(self, request: _Request) -> _Answer:
        return _Answer(200, {
            "name": self.node_name, "cluster_name": self.cluster_name, "cluster_uuid": self.cluster_uuid,
            "version": {"number": VERSION, "build_flavor": "default", "build_type": "docker",
                        "build_hash": "0" * 40, "build_date": "2025-07-24T10:00:00.000000000Z",
                        "build_snapshot": False, "lucene_version": LUCENE_VERSION,
                        "minimum_wire_compatibility_version": "8.19.0",
                        "minimum_index_compatibility_version": "8.0.0"},
            "tagline": TAGLINE})

    # ---- APIs: _bulk

    def _bulk(self, request: _Request, default_index: str | None = None) -> _Answer:
        started = time.monotonic()
        with self._lock:
            self._bulk_count += 1
            rejection = self._whole_rejections.popleft() if self._whole_rejections else None
        if rejection is not None:
            return _Answer(rejection, _whole_rejection(rejection, request.body_length))
        parsed = self._parse_bulk(request, default_index)
        if isinstance(parsed, _Answer):
            return parsed
        pipeline = request.param("pipeline")
        items: list[dict[str, Any]] = []
        with self._lock:
            for action in parsed:
                outcome = self._apply(action, default_index, pipeline, request.number)
                items.append({action.op: outcome})
            lost = self._lose > 0
            if lost:
                self._lose -= 1
            self._changed.notify_all()
        errors = any("error" in next(iter(item.values())) for item in items)
        took = int((time.monotonic() - started) * 1000)
        return _Answer(200, {"errors": errors, "took": took, "items": items}, lost=lost, items=len(items))

    def _parse_bulk(self, request: _Request, default_index: str | None) -> list[_Action] | _Answer:
        body = request.body or b""
        if not body:
            return _Answer(400, es_error(400, "parse_exception", "request body is required"))
        if not body.endswith(b"\n"):
            return _bad_request("illegal_argument_exception", "The bulk request must be terminated by a newline [\\n]")
        lines = body.decode("utf-8", "replace").split("\n")[:-1]
        actions: list[_Action] = []
        problems: list[str] = []
        i = 0
        while i < len(lines):
            number = i + 1
            text = lines[i].strip()
            i += 1
            if not text:
                continue  # ES skips empty lines between actions
            try:
                header = json.loads(text)
            except ValueError:
                return _bad_request("illegal_argument_exception",
                                    f"Malformed action/metadata line [{number}], expected START_OBJECT or "
                                    "END_OBJECT but found [VALUE_STRING]")
            if not isinstance(header, dict) or len(header) != 1:
                expected, found = (("START_OBJECT", _token(header)) if not isinstance(header, dict)
                                   else ("FIELD_NAME", "END_OBJECT") if not header else ("END_OBJECT", "FIELD_NAME"))
                return _bad_request("illegal_argument_exception",
                                    f"Malformed action/metadata line [{number}], expected {expected} but found "
                                    f"[{found}]")
            op, meta = next(iter(header.items()))
            if op not in BULK_OPS:
                return _bad_request("illegal_argument_exception",
                                    f"Malformed action/metadata line [{number}], expected field [create], [delete], "
                                    f"[index] or [update] but found [{op}]")
            if not isinstance(meta, dict):
                return _bad_request("illegal_argument_exception",
                                    f"Malformed action/metadata line [{number}], expected START_OBJECT but found "
                                    f"[{_token(meta)}]")
            unknown = [key for key in meta if key not in ACTION_PARAMETERS]
            if unknown:
                return _bad_request("illegal_argument_exception",
                                    f"Action/metadata line [{number}] contains an unknown parameter [{unknown[0]}]")
            action = _Action(op, meta, None, number)
            if op != "delete":
                if i >= len(lines):
                    return _bad_request("illegal_argument_exception",
                                        f"Malformed action/metadata line [{number}], expected a source line after it")
                action.source_text = lines[i]
                i += 1
                try:
                    action.source = json.loads(action.source_text)
                except ValueError:
                    action.source = _UNPARSEABLE
                if op == "update" and not isinstance(action.source, dict):
                    return _bad_request("x_content_parse_exception",
                                        f"[1:1] Malformed update request body on line [{number + 1}]")
            problems.extend(_validate_action(action, default_index))
            actions.append(action)
        if not actions:
            problems.append("no requests added")
        if problems:
            reason = "Validation Failed: " + "".join(f"{n}: {p};" for n, p in enumerate(problems, 1))
            return _bad_request("action_request_validation_exception", reason)
        return actions

    def _apply(self, action: _Action, default_index: str | None, request_pipeline: str | None,
               request_number: int) -> dict[str, Any]:
        """Under the lock: one action's item."""
        index = str(action.meta.get("_index") or default_index)
        _id = action.meta.get("_id")
        if _id is None:
            _id = _auto_id()
        _id = str(_id)
        item: dict[str, Any] = {"_index": index, "_id": _id}
        fault = self._fail.get(_id)
        if fault is not None:
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    del self._fail[_id]
            return _item_error(item, fault.status, {"type": fault.type, "reason": fault.reason})
        reason = invalid_index_name(index)
        if reason is not None:
            return _item_error(item, 400, {"type": "invalid_index_name_exception", "reason": reason,
                                           "index_uuid": "_na_", "index": index})
        target = self._indices.get(index) or self._create_index(index)
        if target is None:
            return _item_error(item, 404, {
                "type": "index_not_found_exception",
                "reason": f"no such index [{index}] and [action.auto_create_index] is [false]",
                "resource.type": "index_expression", "resource.id": index, "index_uuid": "_na_", "index": index})
        item["_index"] = target.write_index

        def shard_error(status: int, type_: str, reason: str, **extra: Any) -> dict[str, Any]:
            return _item_error(item, status, {"type": type_, "reason": reason, **extra,
                                              "index_uuid": target.uuid, "shard": "0", "index": target.write_index})

        if target.kind == "data_stream" and action.op != "create":
            return _item_error(item, 400, {"type": "illegal_argument_exception",
                                           "reason": "only write ops with an op_type of create are allowed in "
                                                     "data streams"})
        if action.op in ("create", "index"):
            problem = _source_problem(action, target, _id)
            if problem is not None:
                return shard_error(400, "document_parsing_exception", **problem)
        pipeline = action.meta.get("pipeline") or request_pipeline or target.settings.get("index.default_pipeline")
        if pipeline == "_none":
            pipeline = None
        if (pipeline is not None and action.op in ("create", "index") and self.require_pipelines
                and pipeline not in self._pipelines):
            return _item_error(item, 400, {"type": "illegal_argument_exception",
                                           "reason": f"pipeline with id [{pipeline}] does not exist"})
        key = (target.name, _id)
        existing = self._docs.get(key)
        if action.op == "create" and existing is not None:
            return shard_error(409, "version_conflict_engine_exception",
                               f"[{_id}]: version conflict, document already exists (current version "
                               f"[{existing['version']}])")
        if action.op in ("create", "index"):
            return self._write(item, target, key, action.op, action.source, pipeline, request_number, existing)
        if action.op == "update":
            return self._update(item, target, key, action, request_number, existing, shard_error)
        return self._delete(item, target, key, existing)

    def _write(self, item: dict[str, Any], target: _Index, key: tuple[str, str], op: str, source: Any,
               pipeline: str | None, request_number: int, existing: dict[str, Any] | None) -> dict[str, Any]:
        version = existing["version"] + 1 if existing else 1
        seq_no = target.next_seq_no()
        if existing is not None:
            del self._docs[key]  # re-inserted: documents() lists by last write
        self._docs[key] = {"index": target.name, "backing_index": target.write_index, "_id": key[1],
                           "source": None if self.count_only else source, "pipeline": pipeline,
                           "request": request_number, "version": version, "seq_no": seq_no, "op": op}
        return _item_ok(item, version, "updated" if existing else "created", seq_no, 200 if existing else 201)

    def _update(self, item: dict[str, Any], target: _Index, key: tuple[str, str], action: _Action,
                request_number: int, existing: dict[str, Any] | None,
                shard_error: Callable[..., dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = action.source
        if "script" in body:
            return _item_error(item, 400, {"type": "illegal_argument_exception",
                                           "reason": "the ES peer does not run update scripts"})
        doc = body.get("doc")
        if existing is None:
            upsert = doc if body.get("doc_as_upsert") else body.get("upsert")
            if not isinstance(upsert, dict):
                return shard_error(404, "document_missing_exception", f"[{key[1]}]: document missing")
            return self._write(item, target, key, "update", upsert, None, request_number, None)
        if not isinstance(doc, dict):
            return _item_error(item, 400, {"type": "action_request_validation_exception",
                                           "reason": "Validation Failed: 1: script or doc is missing;"})
        if self.count_only:
            merged = None
        else:
            merged = merge_doc(existing["source"], doc)
            if merged == existing["source"] and body.get("detect_noop", True):
                item.update(_version=existing["version"], result="noop",
                            _shards={"total": 0, "successful": 0, "failed": 0},
                            _seq_no=existing["seq_no"], _primary_term=1, status=200)
                return item
        return self._write(item, target, key, "update", merged, existing["pipeline"], request_number, existing)

    def _delete(self, item: dict[str, Any], target: _Index, key: tuple[str, str],
                existing: dict[str, Any] | None) -> dict[str, Any]:
        seq_no = target.next_seq_no()
        if existing is None:
            return _item_ok(item, 1, "not_found", seq_no, 404)
        del self._docs[key]
        return _item_ok(item, existing["version"] + 1, "deleted", seq_no, 200)

    def _create_index(self, name: str) -> _Index | None:
        """Under the lock: auto-create `name` from its template; None when that is not allowed."""
        template_name, template = self._matching_template(name)
        if template is None and self.require_template:
            return None
        if template is not None and template.get("allow_auto_create") is False:
            return None
        settings = flatten_settings((template or {}).get("template", {}).get("settings", {}))
        is_stream = template is not None and "data_stream" in template
        write_index = f".ds-{name}-{datetime.now(UTC):%Y.%m.%d}-000001" if is_stream else name
        target = _Index(name, "data_stream" if is_stream else "index", write_index,
                        base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="), template_name, settings)
        self._indices[name] = target
        return target

    def _all_index_templates(self) -> dict[str, dict[str, Any]]:
        templates = dict(BUILTIN_INDEX_TEMPLATES) if self.stack_templates else {}
        templates.update(self._index_templates)
        return templates

    def _matching_template(self, name: str) -> tuple[str | None, dict[str, Any] | None]:
        best: tuple[int, str, dict[str, Any]] | None = None
        for template_name, template in self._all_index_templates().items():
            if any(simple_match(p, name) for p in template["index_patterns"]):
                priority = template.get("priority") or 0
                if best is None or priority > best[0]:
                    best = (priority, template_name, template)
        return (best[1], best[2]) if best else (None, None)

    # ---- APIs: index and component templates

    def _count_put(self, kind: str, name: str, changed: bool) -> None:
        """Under the lock."""
        self._puts[(kind, name)] += 1
        if changed:
            self._changes[(kind, name)] += 1

    def _put_index_template(self, request: _Request, name: str) -> _Answer:
        body = _json_body(request)
        if isinstance(body, _Answer):
            return body
        unknown = [key for key in body if key not in INDEX_TEMPLATE_FIELDS]
        if unknown:
            return _bad_request("x_content_parse_exception", f"[1:2] [index_template] unknown field [{unknown[0]}]")
        patterns = body.get("index_patterns")
        if isinstance(patterns, str):
            patterns = [patterns]
        if not patterns or not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            return _bad_request("action_request_validation_exception",
                                "Validation Failed: 1: index patterns are missing;")
        template = {**body, "index_patterns": patterns}
        if isinstance(template.get("data_stream"), dict):
            template["data_stream"] = {"hidden": False, "allow_custom_routing": False, **template["data_stream"]}
        with self._lock:
            problem = self._index_template_problem(name, template, request.param("create") == "true")
            changed = problem is None and self._index_templates.get(name) != template
            self._count_put("index_template", name, changed)
            if problem is not None:
                return problem
            self._index_templates[name] = template
        return _Answer(200, {"acknowledged": True})

    def _index_template_problem(self, name: str, template: dict[str, Any], create: bool) -> _Answer | None:
        """Under the lock: why ES would refuse this template, or None."""
        if create and name in self._index_templates:
            return _bad_request("illegal_argument_exception", f"index template [{name}] already exists")
        ignored = set(template.get("ignore_missing_component_templates") or ())
        missing = [c for c in template.get("composed_of") or () if c not in self._component_templates
                   and not (self.stack_templates and c in BUILTIN_COMPONENT_TEMPLATES) and c not in ignored]
        if missing:
            reason = (f"index_template [{name}] invalid, cause [index template [{name}] specifies component "
                      f"templates {_java_list(missing)} that do not exist]")
            return _bad_request("invalid_index_template_exception", reason, name=name)
        priority = template.get("priority") or 0
        clashes: dict[str, list[str]] = {}
        for other_name, other in self._all_index_templates().items():
            if other_name == name or (other.get("priority") or 0) != priority:
                continue
            if any(patterns_overlap(a, b) for a in template["index_patterns"] for b in other["index_patterns"]):
                clashes[other_name] = other["index_patterns"]
        if clashes:
            details = ",".join(f"{n} => {_java_list(p)}" for n, p in sorted(clashes.items()))
            reason = (f"index template [{name}] has index patterns {_java_list(template['index_patterns'])} "
                      f"matching patterns from existing templates [{','.join(sorted(clashes))}] with patterns "
                      f"({details}) that have the same priority [{priority}], multiple index templates may not "
                      "match during index creation, please use a different priority")
            return _bad_request("illegal_argument_exception", reason)
        return None

    def _get_index_templates(self, request: _Request, name: str | None = None) -> _Answer:
        with self._lock:
            templates = self._all_index_templates()
            found = [(n, t) for n, t in sorted(templates.items()) if name is None or simple_match(name, n)]
        if name is not None and not found:
            if request.method == "HEAD":
                return _Answer(404, None)
            return _Answer(404, es_error(404, "resource_not_found_exception",
                                         f"index template matching [{name}] not found"))
        shaped = [{"name": n, "index_template": {"composed_of": [], **copy.deepcopy(t)}} for n, t in found]
        return _Answer(200, None if request.method == "HEAD" else {"index_templates": shaped})

    def _delete_index_template(self, request: _Request, name: str) -> _Answer:
        with self._lock:
            if name not in self._index_templates:
                return _Answer(404, es_error(404, "index_template_missing_exception",
                                             f"index_template [{name}] missing"))
            streams = sorted(i.name for i in self._indices.values() if i.kind == "data_stream" and i.template == name)
            if streams:
                return _bad_request("illegal_argument_exception",
                                    f"unable to remove composable templates [{name}] as they are in use by a data "
                                    f"streams {_java_list(streams)}")
            del self._index_templates[name]
        return _Answer(200, {"acknowledged": True})

    def _put_component_template(self, request: _Request, name: str) -> _Answer:
        body = _json_body(request)
        if isinstance(body, _Answer):
            return body
        unknown = [key for key in body if key not in COMPONENT_TEMPLATE_FIELDS]
        if unknown:
            return _bad_request("x_content_parse_exception",
                                f"[1:2] [component_template] unknown field [{unknown[0]}]")
        if not isinstance(body.get("template"), dict):
            return _bad_request("x_content_parse_exception", "[1:2] Required [template]")
        with self._lock:
            if request.param("create") == "true" and name in self._component_templates:
                self._count_put("component_template", name, False)
                return _bad_request("illegal_argument_exception", f"component template [{name}] already exists")
            self._count_put("component_template", name, self._component_templates.get(name) != body)
            self._component_templates[name] = body
        return _Answer(200, {"acknowledged": True})

    def _get_component_templates(self, request: _Request, name: str | None = None) -> _Answer:
        with self._lock:
            found = [(n, copy.deepcopy(t)) for n, t in sorted(self._component_templates.items())
                     if name is None or simple_match(name, n)]
        if name is not None and not found:
            if request.method == "HEAD":
                return _Answer(404, None)
            return _Answer(404, es_error(404, "resource_not_found_exception",
                                         f"component template matching [{name}] not found"))
        shaped = [{"name": n, "component_template": t} for n, t in found]
        return _Answer(200, None if request.method == "HEAD" else {"component_templates": shaped})

    def _delete_component_template(self, request: _Request, name: str) -> _Answer:
        with self._lock:
            if name not in self._component_templates:
                return _Answer(404, es_error(404, "resource_not_found_exception",
                                             f"component_template [{name}] not found"))
            users = sorted(n for n, t in self._index_templates.items() if name in (t.get("composed_of") or ()))
            if users:
                return _bad_request("illegal_argument_exception",
                                    f"component templates [{name}] cannot be removed as they are still in use by "
                                    f"index templates {_java_list(users)}")
            del self._component_templates[name]
        return _Answer(200, {"acknowledged": True})

    # ---- APIs: ILM

    def _put_policy(self, request: _Request, name: str) -> _Answer:
        body = _json_body(request)
        if isinstance(body, _Answer):
            return body
        policy = body.get("policy")
        if not isinstance(policy, dict):
            return _bad_request("x_content_parse_exception", "[1:2] Required [policy]")
        phases = policy.get("phases", {})
        if not isinstance(phases, dict):
            return _bad_request("x_content_parse_exception", "[1:2] [lifecycle_policy] failed to parse field [phases]")
        unsupported = [phase for phase in phases if phase not in ILM_PHASES]
        if unsupported:
            return _bad_request("illegal_argument_exception",
                                f"Timeseries lifecycle does not support phase [{unsupported[0]}]")
        with self._lock:
            existing = self._policies.get(name)
            changed = existing is None or existing["policy"] != policy
            self._count_put("ilm_policy", name, changed)
            if changed:
                self._policies[name] = {
                    "version": existing["version"] + 1 if existing else 1,
                    "modified_date": datetime.now(UTC).isoformat(timespec="milliseconds").replace(
                        "+00:00", "Z"),
                    "policy": policy}
        return _Answer(200, {"acknowledged": True})

    def _get_policies(self, request: _Request, name: str | None = None) -> _Answer:
        with self._lock:
            names = [name] if name is not None else sorted(self._policies)
            if name is not None and name not in self._policies:
                return _Answer(404, es_error(404, "resource_not_found_exception",
                                             f"Lifecycle policy not found: [{name}]"))
            return _Answer(200, {n: {**copy.deepcopy(self._policies[n]), "in_use_by": self._policy_users(n)}
                                 for n in names})

    def _policy_users(self, name: str) -> dict[str, list[str]]:
        """Under the lock: ILM's in_use_by."""
        templates = sorted(n for n, t in self._index_templates.items()
                           if flatten_settings(t.get("template", {}).get("settings", {})).get(
                               "index.lifecycle.name") == name)
        users = [i for i in self._indices.values() if i.settings.get("index.lifecycle.name") == name]
        return {"indices": sorted(i.write_index for i in users),
                "data_streams": sorted(i.name for i in users if i.kind == "data_stream"),
                "composable_templates": templates}

    def _delete_policy(self, request: _Request, name: str) -> _Answer:
        with self._lock:
            if name not in self._policies:
                return _Answer(404, es_error(404, "resource_not_found_exception",
                                             f"Lifecycle policy not found: {name}"))
            indices = self._policy_users(name)["indices"]
            if indices:
                return _bad_request("illegal_argument_exception",
                                    f"Cannot delete policy [{name}]. It is in use by one or more indices: "
                                    f"{_java_list(indices)}")
            del self._policies[name]
        return _Answer(200, {"acknowledged": True})

    # ---- APIs: ingest pipelines

    def _put_pipeline(self, request: _Request, pipeline_id: str) -> _Answer:
        body = _json_body(request)
        if isinstance(body, _Answer):
            return body
        if not isinstance(body.get("processors"), list):
            return _bad_request("parse_exception", "[processors] required property is missing",
                                processor_type=None)
        with self._lock:
            self._count_put("ingest_pipeline", pipeline_id, self._pipelines.get(pipeline_id) != body)
            self._pipelines[pipeline_id] = body
        return _Answer(200, {"acknowledged": True})

    def _get_pipelines(self, request: _Request, pipeline_id: str | None = None) -> _Answer:
        with self._lock:
            found = {i: copy.deepcopy(p) for i, p in sorted(self._pipelines.items())
                     if pipeline_id is None or simple_match(pipeline_id, i)}
        if pipeline_id is not None and not found:
            return _Answer(404, {})  # ES answers a missing pipeline with 404 and an empty object
        return _Answer(200, found)

    def _delete_pipeline(self, request: _Request, pipeline_id: str) -> _Answer:
        with self._lock:
            if pipeline_id not in self._pipelines:
                return _Answer(404, es_error(404, "resource_not_found_exception",
                                             f"pipeline [{pipeline_id}] is missing"))
            del self._pipelines[pipeline_id]
        return _Answer(200, {"acknowledged": True})


# ---------------------------------------------------------------- item and error helpers

def _item_ok(item: dict[str, Any], version: int, result: str, seq_no: int, status: int) -> dict[str, Any]:
    item.update(_version=version, result=result, _shards={"total": 2, "successful": 1, "failed": 0},
                _seq_no=seq_no, _primary_term=1, status=status)
    return item


def _item_error(item: dict[str, Any], status: int, error: dict[str, Any]) -> dict[str, Any]:
    item.update(status=status, error=error)
    return item


def _transient_item_error(status: int) -> tuple[str, str]:
    if status == 503:
        return "unavailable_shards_exception", ("[0] primary shard is not active Timeout: [1m], request: "
                                                "[BulkShardRequest [[0]] containing [1] requests]")
    if status == 429:
        return "es_rejected_execution_exception", _rejection_reason("primary", 1024)
    return "status_exception", f"rejected by the ES peer with status {status}"


def _whole_rejection(status: int, size: int) -> dict[str, Any]:
    if status == 429:
        return es_error(429, "es_rejected_execution_exception", _rejection_reason("coordinating", size))
    if status == 503:
        return es_error(503, "cluster_block_exception",
                        "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];")
    return es_error(status, "status_exception", f"rejected by the ES peer with status {status}")


def _unauthorized(reason: str, **extra: Any) -> _Answer:
    body = es_error(401, "security_exception", reason, header={"WWW-Authenticate": WWW_AUTHENTICATE}, **extra)
    return _Answer(401, body, headers=[("WWW-Authenticate", value) for value in WWW_AUTHENTICATE])


def _bad_request(type_: str, reason: str, **extra: Any) -> _Answer:
    return _Answer(400, es_error(400, type_, reason, **extra))


def _json_body(request: _Request) -> dict[str, Any] | _Answer:
    if not request.body:
        return _Answer(400, es_error(400, "parse_exception", "request body is required"))
    try:
        body = json.loads(request.body)
    except ValueError as error:
        return _bad_request("x_content_parse_exception", f"[1:1] Unexpected character: {error}")
    if not isinstance(body, dict):
        return _bad_request("x_content_parse_exception", "[1:1] Expected START_OBJECT")
    return body


def _validate_action(action: _Action, default_index: str | None) -> list[str]:
    problems = []
    if not (action.meta.get("_index") or default_index):
        problems.append("index is missing")
    _id = action.meta.get("_id")
    if _id is None and action.op in ("update", "delete"):
        problems.append("id is missing")
    if _id is not None:
        text = str(_id)
        if not text:
            problems.append("if _id is specified it must not be empty")
        elif len(text.encode()) > MAX_ID_BYTES:
            problems.append(f"id [{text}] is too long, must be no longer than {MAX_ID_BYTES} bytes but was: "
                            f"{len(text.encode())}")
    return problems


def _source_problem(action: _Action, target: _Index, _id: str) -> dict[str, Any] | None:
    """Why the shard would refuse an index/create source, as document_parsing_exception fields."""
    end = f"[1:{len(action.source_text.strip())}]"
    if not isinstance(action.source, dict):
        return {"reason": "[1:1] failed to parse: Malformed content, must start with an object",
                "caused_by": {"type": "illegal_argument_exception",
                              "reason": "Malformed content, must start with an object"}}
    if target.kind != "data_stream":
        return None
    if "@timestamp" not in action.source:
        return {"reason": f"{end} failed to parse: data stream timestamp field [@timestamp] is missing",
                "caused_by": {"type": "illegal_argument_exception",
                              "reason": "data stream timestamp field [@timestamp] is missing"}}
    value = action.source["@timestamp"]
    if not valid_timestamp(value):
        return {"reason": f"[1:15] failed to parse field [@timestamp] of type [date] in document with id '{_id}'. "
                          f"Preview of field's value: '{value}'",
                "caused_by": {"type": "illegal_argument_exception",
                              "reason": f"failed to parse date field [{value}] with format [{DATE_FORMAT}]"}}
    return None


def _token(value: Any) -> str:
    if isinstance(value, dict):
        return "START_OBJECT"
    if isinstance(value, list):
        return "START_ARRAY"
    if isinstance(value, str):
        return "VALUE_STRING"
    if value is None:
        return "VALUE_NULL"
    if isinstance(value, bool):
        return "VALUE_BOOLEAN"
    return "VALUE_NUMBER"


def _api_key_id(encoded: str) -> str:
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return encoded.strip()[:20]


def _basic_credentials(encoded: str) -> tuple[str, str] | None:
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return (user, password) if sep else None


def _is_gzip(headers: dict[str, str]) -> bool:
    return headers.get("content-encoding", "").strip().lower() == "gzip"


# ---------------------------------------------------------------- standalone mode

def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.es_peer",
                                     description="Serve an Elasticsearch 9 peer until SIGTERM/SIGINT.")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--http", action="store_true", help="plain HTTP instead of HTTPS")
    parser.add_argument("--count-only", action="store_true", help="answer every item, keep only the ids")
    parser.add_argument("--api-key", help="require Authorization: ApiKey <this>")
    parser.add_argument("--require-template", action="store_true", help="no index auto-creation without a template")
    parser.add_argument("--ready-file", type=Path, help="JSON written once serving: url, ca_file, fingerprint, pid")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    peer = EsPeer(tls=not args.http, port=args.port, api_key=args.api_key, count_only=args.count_only,
                  require_template=args.require_template)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    peer.start()
    info = json.dumps({"url": peer.url, "ca_file": str(peer.ca_file), "fingerprint": peer.fingerprint,
                       "pid": os.getpid()})
    if args.ready_file is not None:
        partial = args.ready_file.with_name(args.ready_file.name + ".partial")
        partial.write_text(info)
        partial.replace(args.ready_file)  # a driver polling for the file never reads half of it
    print(info, flush=True)
    stopping.wait()
    peer.stop()
    print(json.dumps(peer.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
