"""`type = "elasticsearch"`: bulk `create` into one data stream per customer, idempotently.

Uses the official async client (`elasticsearch[async]`, pinned 9.x), with its own retries
off: the delivery worker owns retries and backoff, so that one policy and one outbox decide.

Writing: each event is a `create` into `data_stream` (default
`logs-defender_forwarder.alert-{tenant}`; `{tenant}` is the customer label made a valid
namespace: lower case, `-` and `.` as `_`); an incident into `data_stream_incident` (default
`logs-defender_forwarder.incident-{tenant}`, through `pipeline_incident` when set). `_id` is a SHA-256 of the version key, so a
re-send after a crash or a lost response meets a 409 (the document is there) and counts as
delivered: no duplicate document. The document is the event in the sink's format: `ecs` (the
default) as it is; `ocsf` and `cim` with `@timestamp` added (data streams require it);
`raw` and `cef` as `{"@timestamp", "message"}`, the shape Elastic's own m365_defender
integration reads, so `pipeline = "<its ingest pipeline>"` maps it as Elastic does.

Status table
  per item 200/201, or 409 (already indexed under this `_id`)        delivered
  per item 429, 5xx                                                   retry that item only (backoff)
  per item 404 index_not_found (auto-create refused: no template)     the sink stops: run setup
  per item 400 and other 4xx (mapping, parsing, pipeline errors)      dead letter, with ES's reason
  whole request 429, 5xx, connection error, timeout                    retry the batch (backoff)
  whole request 413                                                    halved, the limit kept for the run
                                                                       (connectors.sizes); one document: dead letter
  whole request 401, 403; a certificate that fails verification       the sink stops, clearly
  a server that is not Elasticsearch (product check)                   the sink stops

TLS: the keys of `connectors.tls`, handed to the client's own TLS options (it builds one
context per node: an IP address is not checked as a host name, and an http node takes no TLS
option). `client_cert` and `client_key` are presented for mutual TLS; the client takes no key
password and no other server name, so `client_key_password` and `tls_server_name` are refused.
`setup` (`ElasticsearchConnector.setup`) installs the index template and ILM policy of
`connectors/elasticsearch_setup.py`.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, model_validator

from connectors import elasticsearch_setup
from connectors.base import (
    DELIVERED,
    BatchResults,
    Connector,
    Event,
    EventResult,
    Outcome,
    SetupPlan,
    Shortener,
    SinkConfig,
    SinkFatal,
)
from connectors.elasticsearch_setup import Request
from connectors.sizes import RequestLimit
from connectors.tls import TlsFileError, TlsSinkConfig, certificate_refused, ssl_context
from core.model.durations import Duration
from core.model.neterr import connect_and_read, describe
from core.model.proxy import proxy_for
from core.model.secrets import Secret

log = logging.getLogger("defender_forwarder.elasticsearch")

DEFAULT_DATA_STREAM = "logs-defender_forwarder.alert-{tenant}"
# Incidents in a data stream of their own (as Elastic's m365_defender integration keeps its
# `alert` and `incident` data streams apart): their own fields, mappings and retention.
DEFAULT_INCIDENT_DATA_STREAM = "logs-defender_forwarder.incident-{tenant}"
# Formats whose document is the alert under `message` (what Elastic's integration pipelines read).
MESSAGE_FORMATS = frozenset({"raw", "cef"})
_NAMESPACE_UNSAFE = re.compile(r"[^a-z0-9_]")


class ElasticsearchSinkConfig(TlsSinkConfig):
    tls_unsupported: ClassVar[frozenset[str]] = frozenset({"client_key_password", "tls_server_name"})

    type: str = "elasticsearch"
    format: str = "ecs"
    hosts: list[str] = Field(default_factory=list, description="https://es.example:9200")
    cloud_id: Secret | None = None
    api_key: Secret | None = None
    username: str | None = None
    password: Secret | None = None
    data_stream: str = DEFAULT_DATA_STREAM
    data_stream_incident: str = DEFAULT_INCIDENT_DATA_STREAM
    pipeline: str | None = None
    # Incidents' own ingest pipeline (Elastic's integration has one per data stream), named in
    # each incident's bulk action; default: `pipeline`.
    pipeline_incident: str | None = None
    ssl_assert_fingerprint: str | None = Field(default=None, description="SHA-256 of the server certificate")
    api_compatibility: Literal[8, 9] = Field(default=9, description="the cluster's major version")
    request_timeout: Duration = 60.0

    @model_validator(mode="after")
    def _where_and_who(self) -> ElasticsearchSinkConfig:
        if bool(self.hosts) == (self.cloud_id is not None):
            raise ValueError("set exactly one of hosts or cloud_id")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.api_key is not None and self.username is not None:
            raise ValueError("set api_key or username/password, not both")
        if self.ssl_assert_fingerprint and self.client_cert:
            # A pinned fingerprint is checked on a connection of the client's own, without it.
            raise ValueError("client_cert cannot be used with ssl_assert_fingerprint")
        return self


def namespace(label: str) -> str:
    """A customer label as a data stream namespace: lower case, no `-` (the naming scheme
    `type-dataset-namespace` splits on it)."""
    return _NAMESPACE_UNSAFE.sub("_", label.lower())


def document_id(version_key: str) -> str:
    return hashlib.sha256(version_key.encode()).hexdigest()


def es_url(config: ElasticsearchSinkConfig) -> str:
    """The cluster's first address, for the proxy decision (a cloud_id names its host)."""
    if config.cloud_id is None:
        return config.hosts[0]
    from elastic_transport.client_utils import parse_cloud_id

    host, port = parse_cloud_id(config.cloud_id.get_secret_value()).es_address or ("", 443)
    return f"https://{host}:{port}"


def _node_class(config: ElasticsearchSinkConfig, proxy: str | None) -> type:
    """elastic-transport's httpx node, its client rebuilt with our TLS (connectors/tls.py, end to
    end), a short connect timeout apart from request_timeout (neterr.connect_and_read: the
    default aiohttp node takes one total timeout only, so an unreachable cluster took the whole
    request_timeout to be told), and `proxy` when one is given (the aiohttp node takes none)."""
    import httpx
    from elastic_transport import HttpxAsyncHttpNode, NodeConfig

    try:
        verify = ssl_context(config)
    except TlsFileError as err:
        raise SinkFatal(str(err)) from None
    connect, read = connect_and_read(config.request_timeout)

    class HttpxNode(HttpxAsyncHttpNode):
        def __init__(self, node: NodeConfig) -> None:
            super().__init__(node)
            self.client = httpx.AsyncClient(base_url=self.client.base_url, timeout=httpx.Timeout(read, connect=connect),
                                            limits=httpx.Limits(max_connections=node.connections_per_node),
                                            verify=verify if node.scheme == "https" else False,
                                            proxy=proxy, trust_env=False)

    return HttpxNode


def client_for(config: ElasticsearchSinkConfig, proxy: str | None = None) -> Any:
    """The async client for a sink, its own retries off (the delivery worker retries);
    through `proxy` (what `proxy_for` decided for the cluster) when one is given.

    The httpx node (`_node_class`) carries the timeouts, so none is given per request: a
    request's own timeout would replace the node's (connect included). A pinned
    `ssl_assert_fingerprint` is checked by the aiohttp node only (httpx has no public way to
    check one), so that sink keeps the aiohttp node and its single total request_timeout."""
    from elasticsearch import AsyncElasticsearch

    options: dict[str, Any] = {"max_retries": 0, "retry_on_status": (), "retry_on_timeout": False}
    if config.cloud_id is not None:
        options["cloud_id"] = config.cloud_id.get_secret_value()
    else:
        options["hosts"] = config.hosts
    if config.api_key is not None:
        options["api_key"] = config.api_key.get_secret_value()
    elif config.username is not None and config.password is not None:
        options["basic_auth"] = (config.username, config.password.get_secret_value())
    if config.ssl_assert_fingerprint:
        options["ssl_assert_fingerprint"] = config.ssl_assert_fingerprint
    elif config.ca_file:
        options["ca_certs"] = config.ca_file
    if config.client_cert:
        options["client_cert"] = config.client_cert
        if config.client_key:
            options["client_key"] = config.client_key
    if not config.tls_verify:
        options["verify_certs"] = False
    if config.ssl_assert_fingerprint:
        if proxy is not None:
            # The pinned fingerprint is checked by the aiohttp node only, which takes no proxy.
            raise SinkFatal("ssl_assert_fingerprint cannot be used through a proxy; use ca_file, "
                            "or exempt the cluster with NO_PROXY")
        options["request_timeout"] = config.request_timeout
    else:
        options["node_class"] = _node_class(config, proxy)
    return AsyncElasticsearch(**options)


def compatibility_headers(major: int, body: str = "json") -> dict[str, str]:
    """The media types of REST API compatibility `major` (the client sends its own major, 9,
    unless told otherwise): an 8.x cluster refuses `compatible-with=9`."""
    return {"accept": f"application/vnd.elasticsearch+json; compatible-with={major}",
            "content-type": f"application/vnd.elasticsearch+{body}; compatible-with={major}"}


async def call(client: Any, config: ElasticsearchSinkConfig, method: str, path: str, *, body: Any = None,
               params: dict[str, str] | None = None, ndjson: bool = False) -> Any:
    """One request with the sink's compatibility media types. The client's API methods set
    their own `Accept`/`Content-Type` and rewrite them to its major version, so the request
    goes through `perform_request`, whose explicit headers are sent as given."""
    headers = compatibility_headers(config.api_compatibility, "x-ndjson" if ndjson else "json")
    return await client.perform_request(method, path, params=params or None, headers=headers, body=body)


class ElasticsearchConnector(Connector):
    config_model = ElasticsearchSinkConfig
    config: ElasticsearchSinkConfig

    def __init__(self, name: str, config: ElasticsearchSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self.limit = RequestLimit(None, name, "Elasticsearch", log)  # none known until a 413 says it
        self._client: Any = None
        self._streams: dict[tuple[str, str], bytes] = {}  # (tenant label, kind) -> its data stream, as JSON

    @classmethod
    def setup(cls, config: SinkConfig, options: Mapping[str, str]) -> SetupPlan:
        assert isinstance(config, ElasticsearchSinkConfig)
        return IndexTemplateSetup(config, options["retention"])

    async def open(self) -> None:
        if self._client is None:
            self.config.warn_if_unverified(self.name, log)
            self._client = client_for(self.config, proxy_for(es_url(self.config), self.proxy))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        await self.open()
        results = BatchResults(len(batch))
        operations = [self._operation(event) for event in batch]
        sizes = [len(action) + len(document) + 2 for action, document in operations]  # two lines of NDJSON
        queue = self.limit.requests(range(len(batch)), sizes)
        while queue:
            chunk = queue.pop(0)
            queue[:0] = await self._bulk(chunk, operations, sizes, results)
        return results.final()

    async def _bulk(self, chunk: list[int], operations: list[list[bytes]], sizes: list[int],
                    results: BatchResults) -> list[list[int]]:
        """One `_bulk` request for `chunk`; returns the requests to send next, at once (after a 413)."""
        from elasticsearch import ApiError, TransportError

        try:
            params = {"pipeline": self.config.pipeline} if self.config.pipeline else None
            body = [line for i in chunk for line in operations[i]]
            reply = await call(self._client, self.config, "PUT", "/_bulk", body=body, params=params, ndjson=True)
        except ApiError as err:
            return self._refused(err, chunk, sum(sizes[i] for i in chunk), results)
        except TransportError as err:
            _stop_if_certificate(err)
            results.mark(chunk, EventResult(Outcome.RETRY, describe(err)))
            return []
        for i, item in zip(chunk, reply.body.get("items", ()), strict=False):
            results[i] = self._item_result(item)
        return []

    def _operation(self, event: Event) -> list[bytes]:
        meta = event.meta
        stream = self._streams.get((meta.tenant_label, meta.kind))
        if stream is None:
            stream = self._streams[(meta.tenant_label, meta.kind)] = self._stream(meta.tenant_label, meta.kind)
        action = b'{"create":{"_index":%b,"_id":"%b"}}' % (stream, document_id(meta.version_key).encode())
        return [action, self._document(event)]

    def _stream(self, label: str, kind: str) -> bytes:
        """The data stream of a tenant's events of `kind`, as JSON text (and, for an incident
        with its own pipeline, that pipeline after it, inside the bulk action)."""
        config = self.config
        template = config.data_stream if kind == "alert" else config.data_stream_incident
        stream = orjson.dumps(template.replace("{tenant}", namespace(label)))
        if kind != "alert" and config.pipeline_incident:
            stream += b',"pipeline":' + orjson.dumps(config.pipeline_incident)
        return stream

    def _document(self, event: Event) -> bytes:
        if self.config.format == "ecs":
            return event.body
        stamp = datetime.fromtimestamp(event.meta.time, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        if self.config.format in MESSAGE_FORMATS:
            return orjson.dumps({"@timestamp": stamp, "message": event.body.decode("utf-8", "replace")})
        return b'{"@timestamp":"%b",%b' % (stamp.encode(), event.body[1:])

    def _item_result(self, item: dict[str, Any]) -> EventResult:
        (outcome,) = item.values()
        status = outcome.get("status", 500)
        if status in (200, 201, 409):
            return DELIVERED
        error = outcome.get("error") or {}
        reason = f"{status} {error.get('type', 'error')}: {error.get('reason', '')}"[:2000]
        if status == 429 or status >= 500:
            return EventResult(Outcome.RETRY, reason)
        if status == 404 and error.get("type") == "index_not_found_exception":
            raise SinkFatal(f"Elasticsearch will not create {outcome.get('_index')}: {reason}; "
                            "run `defender-forwarder setup elasticsearch` to install the index template")
        return EventResult(Outcome.PERMANENT, reason)

    def _refused(self, err: Any, chunk: list[int], size: int, results: BatchResults) -> list[list[int]]:
        status = err.meta.status
        reason = f"HTTP {status}: {_error_text(err)}"
        if status in (401, 403):
            raise SinkFatal(f"Elasticsearch refused the credentials ({reason}); check api_key or "
                            "username/password and the create_doc privilege on the data streams") from None
        if status == 413:
            return self.limit.refused(chunk, size, results, EventResult(
                Outcome.PERMANENT, f"document too large for the cluster ({reason})"))
        if status == 429 or status >= 500:
            results.mark(chunk, EventResult(Outcome.RETRY, reason))
            return []
        raise SinkFatal(f"Elasticsearch refused the bulk request ({reason})") from None

    # ---- check --------------------------------------------------------------------------
    def _template_names(self) -> list[str]:
        """The index templates `setup` installs for this sink's data streams (one per kind, or
        one for both when their streams share a pattern)."""
        made = elasticsearch_setup.requests(self.config.data_stream, self.config.format, "1d",
                                            self.config.data_stream_incident)
        return [request.name for request in made if request.kind == "index template"]

    async def probe(self) -> str:
        from elasticsearch import ApiError, NotFoundError, TransportError

        await self.open()
        try:
            info = (await call(self._client, self.config, "GET", "/")).body
            found = []
            for name in self._template_names():
                try:
                    await call(self._client, self.config, "GET", f"/_index_template/{name}")
                    found.append(f"template {name} installed")
                except NotFoundError:
                    found.append(f"template {name} MISSING: run `defender-forwarder setup elasticsearch`")
            template = "; ".join(found)
        except ApiError as err:
            raise SinkFatal(f"HTTP {err.meta.status}: {_error_text(err)}") from None
        except TransportError as err:
            _stop_if_certificate(err)
            raise SinkFatal(describe(err)) from None
        version = info.get("version", {}).get("number", "?")
        return f"cluster {info.get('cluster_name', '?')}, Elasticsearch {version}; {template}"


class IndexTemplateSetup(SetupPlan):
    """`defender-forwarder setup elasticsearch`: the ILM policy and the index template of the
    sink's data streams (`connectors/elasticsearch_setup.py`), each installed only where what
    the cluster has differs (their digests tell)."""

    def __init__(self, config: ElasticsearchSinkConfig, retention: str) -> None:
        self.config = config
        self.requests = elasticsearch_setup.requests(config.data_stream, config.format, retention,
                                                     config.data_stream_incident)

    def describe(self) -> str:
        return elasticsearch_setup.describe(self.requests)

    async def apply(self) -> list[str]:
        client = client_for(self.config, proxy_for(es_url(self.config), self.proxy))
        lines = []
        try:
            for request in self.requests:
                if await self._installed_digest(client, request) == elasticsearch_setup.digest_of(request):
                    lines.append(f"{request.kind} {request.name}: unchanged")
                    continue
                await call(client, self.config, "PUT", request.path, body=request.body)
                lines.append(f"{request.kind} {request.name}: installed")
        finally:
            await client.close()
        return lines

    async def _installed_digest(self, client: Any, request: Request) -> str | None:
        """The digest of what the cluster has under that name, or None when it has nothing."""
        from elasticsearch import NotFoundError

        try:
            body = (await call(client, self.config, "GET", request.path)).body
        except NotFoundError:
            return None
        return elasticsearch_setup.digest_in(request, body)


def _error_text(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return f"{error.get('type', 'error')}: {error.get('reason', '')}"
    return str(getattr(err, "message", err))


def _stop_if_certificate(err: BaseException) -> None:
    """A TLS failure (a certificate that fails verification, a pinned fingerprint that does
    not match) is a configuration problem, not an outage: stop the sink."""
    from aiohttp import ServerFingerprintMismatch
    from elasticsearch import SSLError

    if isinstance(err, SSLError) or certificate_refused(err, also=(ServerFingerprintMismatch,)):
        # describe() adds the host, port and the certificate's names when the chain holds
        # the verification error; a fingerprint mismatch is told by the client's own text.
        why = describe(err)
        if "fails verification" not in why:
            why = f"the cluster's certificate fails verification ({err})"
        raise SinkFatal(f"TLS: {why}; set ca_file or ssl_assert_fingerprint") from None


CONNECTOR = ElasticsearchConnector
