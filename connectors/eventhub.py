"""`type = "eventhub"`: Azure Event Hubs, with the official `azure-eventhub` async producer.

Auth is a connection string, or the namespace + hub with an Entra app (azure-identity, a
certificate or a secret from secret references), so that the MSSP app that reads Graph can
write the hub too.

Events: the body is the alert in the sink's format (default `ocsf`); `message_id` is the
version key (a consumer can dedupe on it); application properties carry the tenant id,
customer label, the event's `kind` (`alert` or `incident`), its id (`alert_id`, or
`incident_id` for an incident), severity, format and schema version; the partition key is the tenant
id (`partition_key`), so each customer's alerts stay in order on one partition.
`envelope = "records"` wraps each alert as `{"records": [{"time", "tenantId",
"operationName": "Publish", "category": "DefenderForwarder-Alert", "properties": <alert>}]}`,
the shape Defender's own streaming API writes, which Elastic's azure-eventhub input and
Splunk's add-on for Microsoft Cloud Services split into records; one alert per event keeps
the message id and properties true to the alert. `envelope = "single"` sends the alert as it is.

Batching: `create_batch` per partition key, filled up to the hub's maximum message size
(what the hub announces: Standard 1 MB, Basic 256 KB). An event that does not fit even an
empty batch goes to the dead letters with the sizes: it is never sent cut.

Status table
  send_batch returned                                           its events delivered
  server busy, timeouts, connection lost, other EventHubErrors  retry (the SDK retries first,
                                                                 then the worker backs off)
  AuthenticationError (a refused token or key)                  the sink stops, clearly
  the hub does not exist                                        the sink stops
  an event larger than the hub's maximum                        dead letter

TLS: the AMQP connection is the SDK's own; of the keys of `connectors.tls` only `ca_file`
applies: to the Entra login host (`authority`, azure-identity's `connection_verify`) and to the
hub (the SSL context of connectors.tls: `ca_file` instead of the system store, as for every
sink; a TLS-inspecting proxy re-signs both). The others are refused.

Proxy: AMQP (5671) cannot cross an HTTP proxy, so through one the SDK speaks AMQP over
WebSockets (wss, port 443), tunnelled by CONNECT. `custom_endpoint_address` (the SDK's own
option: an application gateway or other address in front of the namespace) is where the
connection then goes (AMQP over TLS on its port, 5671 by default, or WebSockets on 443 by
default); the proxy is decided for that host. `transport = "websockets"` speaks AMQP over
WebSockets without a proxy too (a firewall that lets only 443 out).
"""
from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal
from urllib.parse import unquote, urlsplit

import orjson
from pydantic import Field, model_validator

from connectors.base import DELIVERED, BatchResults, Connector, Event, EventResult, Outcome, Shortener, SinkFatal
from connectors.entra import EntraAppConfig, credential_for
from connectors.tls import TLS_KEYS, TlsFileError, ssl_context
from core.model.durations import Duration
from core.model.neterr import describe
from core.model.proxy import proxy_for, redacted
from core.model.schema import SCHEMA_VERSION
from core.model.secrets import Secret

log = logging.getLogger("defender_forwarder.eventhub")

RECORD_CATEGORY = "DefenderForwarder-Alert"
INCIDENT_RECORD_CATEGORY = "DefenderForwarder-Incident"
EVENTHUBS_SCOPE = "https://eventhubs.azure.net/.default"
AMQPS_PORT = 5671
WEBSOCKET_PORT = 443


class EventHubSinkConfig(EntraAppConfig):
    tls_unsupported: ClassVar[frozenset[str]] = frozenset(TLS_KEYS) - {"ca_file"}

    type: str = "eventhub"
    format: str = "ocsf"
    connection_string: Secret | None = None
    fully_qualified_namespace: str | None = Field(default=None, description="mssp.servicebus.windows.net")
    eventhub_name: str | None = Field(default=None, description="required unless the connection string has "
                                      "EntityPath")
    authority: str | None = Field(default=None, description="login host; default: the public cloud's")
    ca_file: str | None = Field(default=None, description="the CA to trust for the login host and the hub "
                                "(a TLS-inspecting proxy); default: the system store")
    custom_endpoint_address: str | None = Field(
        default=None, description="https://host[:port] to connect to instead of the namespace (an application "
        "gateway in front of it); its port defaults to 5671 (AMQP), 443 over WebSockets")
    transport: Literal["amqp", "websockets"] = Field(
        default="amqp", description="websockets: AMQP over WebSockets on port 443 (a firewall that lets only 443 "
        "out); through a proxy it is always websockets")
    envelope: Literal["single", "records"] = "single"
    partition_key: str | None = Field(default="{tenant_id}", description="templates: {tenant_id}, {tenant}; "
                                      "empty: let the hub spread events")
    retry_total: int = Field(default=3, ge=0, description="the SDK's own retries before the worker backs off")
    send_timeout: Duration = 60.0

    @model_validator(mode="after")
    def _one_way_in(self) -> EventHubSinkConfig:
        entra = self.fully_qualified_namespace is not None
        if (self.connection_string is None) == (not entra):
            raise ValueError("set connection_string, or fully_qualified_namespace with an Entra app")
        if entra:
            if not (self.tenant_id and self.client_id and self.eventhub_name):
                raise ValueError("fully_qualified_namespace needs tenant_id, client_id and eventhub_name")
            problem = self.entra_app_problem()
            if problem:
                raise ValueError(problem)
        return self


def namespace_url(config: EventHubSinkConfig) -> str:
    """Where the connection goes, as an https URL, for the proxy decision (AMQP over
    WebSockets is HTTPS): the custom endpoint when there is one, else the namespace."""
    if config.custom_endpoint_address:
        parts = urlsplit(config.custom_endpoint_address if "//" in config.custom_endpoint_address
                         else f"https://{config.custom_endpoint_address}")
        return f"https://{parts.netloc}"
    if config.fully_qualified_namespace is not None:
        return f"https://{config.fully_qualified_namespace}"
    assert config.connection_string is not None
    found = re.search(r"(?i)endpoint=sb://([^/;]+)", config.connection_string.get_secret_value())
    return f"https://{found.group(1) if found else ''}"


def proxy_options(proxy: str | None) -> dict[str, Any]:
    """The producer's options for a proxy: plain AMQP (port 5671) cannot cross an HTTP proxy,
    so the SDK speaks AMQP over WebSockets (port 443), tunnelled by CONNECT."""
    if proxy is None:
        return {}
    from azure.eventhub import TransportType

    parts = urlsplit(proxy)
    # The async WebSocket transport hands aiohttp f"{proxy_hostname}:{proxy_port}" as the
    # proxy URL, which aiohttp refuses without a scheme (azure-eventhub 5.15): so it is given one.
    http_proxy: dict[str, Any] = {"proxy_hostname": f"{parts.scheme}://{parts.hostname}", "proxy_port": parts.port}
    if parts.username is not None:
        http_proxy |= {"username": unquote(parts.username), "password": unquote(parts.password or "")}
    return {"transport_type": TransportType.AmqpOverWebsocket, "http_proxy": http_proxy}


def tls_options(config: EventHubSinkConfig) -> dict[str, Any]:
    """The producer's TLS options: with `ca_file`, the SSL context every sink builds from its
    TLS keys (`ca_file` trusted instead of the system store, as for the other sinks and the
    login host); without, the SDK's default (certifi's public roots)."""
    if not config.ca_file:
        return {}
    try:
        return {"ssl_context": ssl_context(config)}
    except TlsFileError as err:
        raise SinkFatal(str(err)) from None


def _is_connect_failure(err: Exception) -> bool:
    """An AuthenticationError that is a connection not made: with a custom endpoint the
    WebSocket transport reports a refused connect (to the endpoint or the proxy) as one
    (azure-eventhub 5.15, pyamqp `_transport_async.py`, this text only there). Retried, not a
    refused credential."""
    return "Failed to authenticate the connection due to exception" in str(err)


def _is_unknown_hub(err: Exception) -> bool:
    """The namespace answered amqp:not-found (the SDK's documented `error` condition; its
    message spells it ErrorCondition.NotFound). Not the digits of the text: a refused
    connection to port 40403 is a hub down, to be retried."""
    return getattr(err, "error", None) == "not-found" or "ErrorCondition.NotFound" in str(err)


class EventHubConnector(Connector):
    config_model = EventHubSinkConfig
    config: EventHubSinkConfig

    def __init__(self, name: str, config: EventHubSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self._producer: Any = None
        self._credential: Any = None
        self._proxy: str | None = None  # the proxy the producer goes through, if one applies

    async def open(self) -> None:
        if self._producer is not None:
            return
        from azure.eventhub.aio import EventHubProducerClient

        config = self.config
        self._proxy = proxy_for(namespace_url(config), self.proxy)
        options = {"retry_total": config.retry_total, **proxy_options(self._proxy), **tls_options(config)}
        if config.transport == "websockets":
            from azure.eventhub import TransportType

            options["transport_type"] = TransportType.AmqpOverWebsocket
        if config.custom_endpoint_address:
            options["custom_endpoint_address"] = config.custom_endpoint_address
        if config.connection_string is not None:
            self._producer = EventHubProducerClient.from_connection_string(
                config.connection_string.get_secret_value(), eventhub_name=config.eventhub_name, **options)
        else:
            self._credential = credential_for(config, self.proxy)
            self._producer = EventHubProducerClient(config.fully_qualified_namespace, config.eventhub_name,
                                                    self._credential, **options)

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.close()
            self._producer = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

    def _where(self) -> str:
        """host:port the producer connects to: the custom endpoint, else the namespace; on its
        port over AMQP (5671 unless the endpoint names one), on 443 over WebSockets (a proxy
        or `transport = "websockets"`; the SDK ignores a namespace's port then). Never the
        connection string's key."""
        config = self.config
        websockets = self._proxy is not None or config.transport == "websockets"
        default_port = WEBSOCKET_PORT if websockets else AMQPS_PORT
        if config.custom_endpoint_address:
            parts = urlsplit(namespace_url(config))
            return f"{parts.hostname}:{parts.port or default_port}"
        if config.connection_string is not None:
            fields = dict(part.split("=", 1) for part in config.connection_string.get_secret_value().split(";")
                          if "=" in part)
            parts = urlsplit(fields.get("Endpoint", ""))
            return f"{parts.hostname}:{default_port if websockets else parts.port or AMQPS_PORT}"
        return f"{config.fully_qualified_namespace}:{default_port}"

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        from azure.eventhub.exceptions import AuthenticationError, EventHubError

        await self.open()
        results = BatchResults(len(batch))
        try:
            for key, indexes in self._by_partition_key(batch).items():
                await self._send_key(key, indexes, batch, results)
        except AuthenticationError as err:
            if not _is_connect_failure(err):
                raise SinkFatal(f"Event Hubs refused our credentials: {err}; check connection_string, or the "
                                "app's \"Azure Event Hubs Data Sender\" role on the hub") from None
            through = f" (through proxy {redacted(self._proxy)})" if self._proxy else ""
            return results.final(EventResult(Outcome.RETRY, describe(err, self._where()) + through))
        except EventHubError as err:
            if _is_unknown_hub(err):
                raise SinkFatal(f"Event Hubs: {err}; check eventhub_name") from None
            # A failure through a proxy names it (password masked): the proxy may be what refused.
            through = f" (through proxy {redacted(self._proxy)})" if self._proxy else ""
            return results.final(EventResult(Outcome.RETRY, describe(err, self._where()) + through))
        return results.final()

    def _by_partition_key(self, batch: list[Event]) -> dict[str | None, list[int]]:
        template = self.config.partition_key or None
        groups: dict[str | None, list[int]] = {}
        for index, event in enumerate(batch):
            key = None if template is None else (
                template.replace("{tenant_id}", event.meta.tenant_id).replace("{tenant}", event.meta.tenant_label))
            groups.setdefault(key, []).append(index)
        return groups

    async def _send_key(self, key: str | None, indexes: list[int], batch: list[Event],
                        results: BatchResults) -> None:
        """Fill batches of one partition key; a batch's events are delivered once it is sent."""
        from azure.eventhub import EventData

        pending: list[int] = []
        data_batch = await self._producer.create_batch(partition_key=key)
        for index in indexes:
            data = self._event_data(batch[index], EventData)
            try:
                data_batch.add(data)
            except ValueError:
                if not pending:  # it does not fit even an empty batch
                    results[index] = _too_large(batch[index], data_batch.max_size_in_bytes)
                    continue
                await self._send_batch(data_batch, pending, results)
                pending = []
                data_batch = await self._producer.create_batch(partition_key=key)
                try:
                    data_batch.add(data)
                except ValueError:
                    results[index] = _too_large(batch[index], data_batch.max_size_in_bytes)
                    continue
            pending.append(index)
        if pending:
            await self._send_batch(data_batch, pending, results)

    async def _send_batch(self, data_batch: Any, indexes: list[int], results: BatchResults) -> None:
        await self._producer.send_batch(data_batch, timeout=self.config.send_timeout)
        results.mark(indexes, DELIVERED)

    def _event_data(self, event: Event, event_data: Any) -> Any:
        meta = event.meta
        data = event_data(self._body(event))
        data.message_id = meta.version_key
        data.content_type = "text/plain" if self.config.format == "cef" and self.config.envelope == "single" \
            else "application/json"
        # `kind` keeps alerts and incidents apart for a consumer that reads neither body (a
        # Stream Analytics filter, a Function trigger); the id is named after its kind.
        incident = meta.kind != "alert"
        data.properties = {"tenant_id": meta.tenant_id, "customer": meta.tenant_label, "kind": meta.kind,
                           "incident_id" if incident else "alert_id": meta.alert_id,
                           "severity": meta.severity.name, "format": self.config.format,
                           "schema_version": SCHEMA_VERSION}
        return data

    def _body(self, event: Event) -> bytes:
        if self.config.envelope == "single":
            return event.body
        meta = event.meta
        alert = event.body if self.config.format != "cef" else orjson.dumps(event.body.decode("utf-8", "replace"))
        head = orjson.dumps({"time": datetime.fromtimestamp(meta.time, UTC).isoformat().replace("+00:00", "Z"),
                             "tenantId": meta.tenant_id, "operationName": "Publish",
                             "category": RECORD_CATEGORY if meta.kind == "alert" else INCIDENT_RECORD_CATEGORY})
        return b'{"records":[' + head[:-1] + b',"properties":' + alert + b"}]}"

    # ---- check --------------------------------------------------------------------------
    async def probe(self) -> str:
        from azure.eventhub.exceptions import AuthenticationError, EventHubError

        await self.open()
        try:
            properties = await self._producer.get_eventhub_properties()
        except AuthenticationError as err:
            if _is_connect_failure(err):
                through = f" (through proxy {redacted(self._proxy)})" if self._proxy else ""
                raise SinkFatal(f"Event Hubs: {describe(err, self._where())}{through}") from None
            raise SinkFatal(f"Event Hubs refused our credentials: {err}") from None
        except EventHubError as err:
            raise SinkFatal(f"Event Hubs: {type(err).__name__}: {err}") from None
        finally:
            await self.close()
        partitions = ", ".join(properties["partition_ids"])
        return f"hub {properties['eventhub_name']}: partitions {partitions}; nothing sent"


def _too_large(event: Event, maximum: int) -> EventResult:
    return EventResult(Outcome.PERMANENT, f"{len(event.body)} bytes: larger than the hub's maximum message size "
                       f"({maximum} bytes for a whole batch); never sent cut")


CONNECTOR = EventHubConnector
