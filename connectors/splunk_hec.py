"""`type = "splunk_hec"`: Splunk's HTTP Event Collector, with optional indexer acknowledgement.

Each event is one JSON envelope; a request carries many, concatenated, to
`/services/collector/event`, gzip-compressed by default, over one keep-alive httpx pool, with
`Authorization: Splunk <token>` and this sink's channel GUID in `X-Splunk-Request-Channel`
(required by tokens with indexer acknowledgement).

Envelope: `time` (the version's lastUpdateDateTime, epoch seconds with milliseconds), `host`,
`source`, `sourcetype`, `index` (templates: `{tenant}` the customer label, `{tenant_id}`),
indexed `fields` (tenant_id, customer, severity, version_key, kind) and `event` (the alert in
the sink's format: a JSON object, or a string for CEF). Incidents keep apart from alerts:
their own sourcetype (`sourcetype_incident`; raw: `ms365:defender:incident`, as Splunk's
add-on names them) and, when set, their own index (`index_incident`).

Sizes: a request holds at most `batch_max_bytes` of envelopes (uncompressed) and never more
than `max_content_length`; a 413 from the server halves the limit for the rest of the run
(the server has told us its own; `connectors.sizes`). One envelope over the limit goes to the
dead letters.

Acknowledgement (`ack = true`): every 200 carries an `ackId`; the connector polls
`/services/collector/ack` until Splunk says true, and only then reports the events
delivered, so their outbox rows are released. An ackId still false after `ack_timeout` (Splunk
advises five minutes) means the events may be lost inside Splunk: they are sent again.

Status table: `HEC_CODES` below, every documented reply code with what this connector does
(`Action`), then `NO_CODE_OUTCOMES` for replies without a HEC code; `markdown_table()`
renders both for the docs. A `SPLIT` code names the bad event (`invalid-event-number`): the
events before it count as delivered, it goes to the dead letters with Splunk's text, and the
rest is sent again at once.

TLS: `connectors.tls` (a client certificate is presented when `client_cert` is set;
`tls_server_name` is the name sent and checked instead of the URL's host).
"""
from __future__ import annotations

import asyncio
import enum
import gzip
import logging
import socket
import ssl
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from pydantic import Field, field_validator, model_validator

from connectors.base import DELIVERED, BatchResults, Connector, Event, EventResult, Outcome, Shortener, SinkFatal
from connectors.sizes import RequestLimit
from connectors.splunk_events import EventPlacement, SplunkEventSettings
from connectors.tls import TlsFileError, TlsSinkConfig, certificate_refused, ssl_context
from core.model.durations import Duration
from core.model.neterr import connect_and_read, describe
from core.model.proxy import proxy_for
from core.model.secrets import Secret

log = logging.getLogger("defender_forwarder.splunk_hec")

EVENT_PATH = "/services/collector/event"
ACK_PATH = "/services/collector/ack"
HEALTH_PATH = "/services/collector/health"
FIRST_ACK_POLL = 0.01  # seconds between the first two ack queries of a batch


class Action(enum.Enum):
    DELIVERED = "delivered"
    RETRY = "retry"  # the whole request, after a backoff
    SPLIT = "split"  # `invalid-event-number` names the one bad event
    STOP = "stop"  # a configuration problem: the sink stops, its outbox waits


# What each action means for the events, as the docs' status table says it.
OUTCOMES: dict[Action, str] = {
    Action.DELIVERED: "delivered (with `ack`: once acknowledged)",
    Action.RETRY: "retry with backoff",
    Action.SPLIT: "split at `invalid-event-number`: the events before it delivered, it to the dead letters "
                  "with Splunk's text, the rest sent again at once",
    Action.STOP: "the sink stops with the remedy; its outbox waits",
}


@dataclass(frozen=True)
class HecCode:
    status: int
    text: str
    action: Action


# Splunk's documented reply codes, each with what this connector does.
HEC_CODES: dict[int, HecCode] = {
    0: HecCode(200, "Success", Action.DELIVERED),
    1: HecCode(403, "Token disabled", Action.STOP),
    2: HecCode(401, "Token is required", Action.STOP),
    3: HecCode(401, "Invalid authorization", Action.STOP),
    4: HecCode(403, "Invalid token", Action.STOP),
    5: HecCode(400, "No data", Action.STOP),  # we never send an empty request: something rewrote it
    6: HecCode(400, "Invalid data format", Action.SPLIT),
    7: HecCode(400, "Incorrect index", Action.SPLIT),
    8: HecCode(500, "Internal server error", Action.RETRY),
    9: HecCode(503, "Server is busy", Action.RETRY),
    10: HecCode(400, "Data channel is missing", Action.STOP),
    11: HecCode(400, "Invalid data channel", Action.STOP),
    12: HecCode(400, "Event field is required", Action.SPLIT),
    13: HecCode(400, "Event field cannot be blank", Action.SPLIT),
    14: HecCode(400, "ACK is disabled", Action.STOP),
    15: HecCode(400, "Error in handling indexed fields", Action.SPLIT),
    16: HecCode(400, "Query string authorization is not enabled", Action.STOP),
    # A health reply to an event request: not an acceptance; something answers in HEC's place.
    17: HecCode(200, "HEC is healthy", Action.STOP),
    18: HecCode(503, "HEC is unhealthy, queues are full", Action.RETRY),
    19: HecCode(503, "HEC is unhealthy, ack service unavailable", Action.RETRY),
    20: HecCode(503, "HEC is unhealthy, queues are full, ack service unavailable", Action.RETRY),
    21: HecCode(400, "Invalid token", Action.STOP),
    22: HecCode(400, "Token disabled", Action.STOP),
}
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# What a request may fail with: httpx's errors, and an SSLError that httpcore lets through
# unwrapped when it comes on a read (a server refusing our session after the handshake).
TRANSPORT_ERRORS = (httpx.HTTPError, ssl.SSLError)
# Replies without a HEC code (a proxy, a load balancer, a wrong URL): (statuses, outcome).
NO_CODE_OUTCOMES: tuple[tuple[str, str], ...] = (
    (", ".join(map(str, sorted(RETRY_STATUSES))), "retry with backoff"),
    ("413", "halved, and the smaller limit kept for the run; one event too large: dead letter"),
    ("other 4xx", "the sink stops"),
)
REMEDIES = {
    1: "enable the token in Splunk (Settings > Data inputs > HTTP Event Collector)",
    2: "set `token`",
    3: "the token is sent as `Authorization: Splunk <token>`: is a proxy rewriting it?",
    4: "check `token`: Splunk does not know it",
    10: "the token requires indexer acknowledgement: set ack = true",
    11: "the channel is refused: is a proxy rewriting X-Splunk-Request-Channel?",
    14: "the token has indexer acknowledgement disabled: set ack = false, or enable it on the token",
    16: "the token is sent in a header, never in the query string: is a proxy rewriting it?",
    17: "a health reply to an event request: does `url` point at the HEC endpoint itself?",
    21: "check `token`: Splunk does not know it",
    22: "enable the token in Splunk",
}



def markdown_table() -> str:
    """The status table as the docs show it, from `HEC_CODES` and `NO_CODE_OUTCOMES`: one row
    per code, then the replies without one."""
    lines = ["| HEC code | HTTP | Splunk's text | outcome |", "|---|---|---|---|"]
    lines += [f"| {code} | {hec.status} | {hec.text} | {OUTCOMES[hec.action]} |" for code, hec in HEC_CODES.items()]
    lines += [f"| none | {statuses} | | {outcome} |" for statuses, outcome in NO_CODE_OUTCOMES]
    return "\n".join(lines)

class SplunkHecSinkConfig(TlsSinkConfig, SplunkEventSettings):
    type: str = "splunk_hec"
    format: str = "raw"
    url: str = Field(description="https://splunk.example:8088")
    token: Secret
    compress: bool = True
    compression_level: int = Field(default=6, ge=1, le=9)
    batch_max_bytes: int = Field(default=1_000_000, ge=1024, description="uncompressed envelopes per request")
    max_content_length: int | None = Field(default=None, ge=1024, description="the server's limit, if known")
    ack: bool = False
    ack_timeout: Duration = Field(default=300.0, gt=0)
    ack_poll_interval: Duration = Field(default=1.0, gt=0, description="the longest pause between ack queries")
    request_timeout: Duration = 60.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        url = httpx.URL(value)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("expected http(s)://host:port of the HEC endpoint")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_needs_https(self) -> SplunkHecSinkConfig:
        tls_only = self.tls_keys_set("client_cert", "tls_server_name")
        if self.url.startswith("http:") and tls_only:
            raise ValueError(f"{', '.join(tls_only)} need an https url")
        return self

    @property
    def request_limit(self) -> int:
        return min(self.batch_max_bytes, self.max_content_length or self.batch_max_bytes)


class HecRefused(Exception):
    """A reply that stops the sink; its message is the clear error `run` and `check` print."""


class SplunkHecConnector(Connector):
    config_model = SplunkHecSinkConfig
    config: SplunkHecSinkConfig

    def __init__(self, name: str, config: SplunkHecSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self.channel = str(uuid.uuid4())
        self.limit = RequestLimit(config.request_limit, name, "Splunk", log)
        self._client: httpx.AsyncClient | None = None
        self._envelopes = _EnvelopeWriter(config)
        # The name the server's certificate must carry (and SNI), when it is not the URL's host.
        self._extensions = {"sni_hostname": config.tls_server_name} if config.tls_server_name else {}

    async def open(self) -> None:
        if self._client is not None:
            return
        config = self.config
        config.warn_if_unverified(self.name, log)
        if config.url.startswith("http:"):
            log.warning("sink %s: %s is plain HTTP: the token travels unencrypted", self.name, config.url)
        headers = {"Authorization": f"Splunk {config.token.get_secret_value()}",
                   "X-Splunk-Request-Channel": self.channel, "Content-Type": "application/json"}
        # trust_env off: proxy_for has read the proxy variables already (NO_PROXY included).
        self._client = httpx.AsyncClient(base_url=config.url, headers=headers, verify=self._tls(),
                                         proxy=proxy_for(config.url, self.proxy), trust_env=False,
                                         timeout=httpx.Timeout(config.request_timeout,
                                                               connect=connect_and_read(config.request_timeout)[0]),
                                         limits=httpx.Limits(max_connections=2, max_keepalive_connections=2))

    def _tls(self) -> ssl.SSLContext:
        try:
            return ssl_context(self.config)
        except TlsFileError as err:
            raise SinkFatal(str(err)) from None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        await self.open()
        results = BatchResults(len(batch))
        envelopes = [self._envelopes.write(event) for event in batch]
        for index, envelope in enumerate(envelopes):
            if len(envelope) > self.limit.bytes:
                results[index] = EventResult(Outcome.PERMANENT, f"{len(envelope)} bytes: larger than a request "
                                             f"may be ({self.limit.bytes} bytes)")
        pending_acks: dict[int, list[int]] = {}
        try:
            await self._send_all(results.unsettled(), envelopes, results, pending_acks)
        except HecRefused as err:
            raise SinkFatal(str(err)) from None
        if pending_acks:
            await self._await_acks(pending_acks, results)
        return results.final()

    async def _send_all(self, waiting: list[int], envelopes: list[bytes], results: BatchResults,
                        pending_acks: dict[int, list[int]]) -> None:
        """Send `waiting` (indexes into the batch) in requests within the size limit; a failure
        marks the unsent rest for a retry, and what was accepted stays accepted."""
        queue = self.limit.requests(waiting, [len(envelope) for envelope in envelopes])
        while queue:
            chunk = queue.pop(0)
            try:
                reply = await self._post(b"".join(envelopes[i] for i in chunk))
            except TRANSPORT_ERRORS as err:
                refused = certificate_refused(err)
                if refused:
                    raise HecRefused(f"TLS: {describe(err)}; set ca_file to the CA that signed it") from None
                results.mark([i for part in [chunk, *queue] for i in part], EventResult(Outcome.RETRY, describe(err)))
                return
            queue[:0] = self._settle(chunk, reply, envelopes, results, pending_acks)

    def _settle(self, chunk: list[int], reply: httpx.Response, envelopes: list[bytes],
                results: BatchResults, pending_acks: dict[int, list[int]]) -> list[list[int]]:
        """Record what one reply means for `chunk`; returns the requests to send next, at once."""
        body = _json(reply)
        code = body.get("code") if isinstance(body.get("code"), int) else None
        known = HEC_CODES.get(code) if code is not None else None
        text = str(body.get("text") or reply.reason_phrase)
        if known is not None and known.action is Action.STOP:
            raise HecRefused(f"Splunk HEC refused the request: HTTP {reply.status_code}, code {code} "
                             f"\"{text}\"; {REMEDIES.get(code, 'check the sink settings')}")
        if known is not None and known.action is Action.SPLIT:
            return self._split(chunk, body, text, code, results)
        if reply.status_code == 200:
            if self.config.ack:
                ack_id = body.get("ackId")
                if not isinstance(ack_id, int):
                    raise HecRefused("ack = true but Splunk's reply has no ackId: does this token use "
                                     "indexer acknowledgement? set ack = false")
                pending_acks[ack_id] = chunk
            else:
                results.mark(chunk, DELIVERED)
            return []
        if reply.status_code == 413:
            size = sum(len(envelopes[i]) for i in chunk)
            return self.limit.refused(chunk, size, results, EventResult(
                Outcome.PERMANENT, f"Splunk refused {size} bytes as too large (413)"))
        if (known is not None and known.action is Action.RETRY) or reply.status_code in RETRY_STATUSES:
            results.mark(chunk, EventResult(Outcome.RETRY, f"HTTP {reply.status_code}: {text}"))
            return []
        raise HecRefused(f"Splunk HEC answered HTTP {reply.status_code} ({text}) at {self.config.url}{EVENT_PATH}: "
                         "is `url` the HEC endpoint (port 8088)?")

    def _split(self, chunk: list[int], body: dict[str, Any], text: str, code: int | None,
               results: BatchResults) -> list[list[int]]:
        bad = body.get("invalid-event-number")
        if not isinstance(bad, int) or not 0 <= bad < len(chunk):
            if len(chunk) == 1:
                bad = 0
            else:  # Splunk did not say which: halve until it does, or one event is left
                half = len(chunk) // 2
                return [chunk[:half], chunk[half:]]
        results.mark(chunk[:bad], DELIVERED)
        results[chunk[bad]] = EventResult(Outcome.PERMANENT, f"Splunk HEC code {code}: {text}")
        return [chunk[bad + 1:]] if bad + 1 < len(chunk) else []

    async def _post(self, body: bytes) -> httpx.Response:
        assert self._client is not None
        headers = {}
        if self.config.compress:
            body = gzip.compress(body, self.config.compression_level, mtime=0)
            headers["Content-Encoding"] = "gzip"
        return await self._client.post(EVENT_PATH, content=body, headers=headers, extensions=self._extensions)

    # ---- indexer acknowledgement ------------------------------------------------------------
    async def _await_acks(self, pending: dict[int, list[int]], results: BatchResults) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.ack_timeout
        pause = 0.0
        while pending and loop.time() < deadline:
            await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
            # At once, then after 10 ms, doubling up to ack_poll_interval: a quick indexer is
            # heard from at once, a slow one is not asked more than every ack_poll_interval.
            pause = min(max(pause * 2, FIRST_ACK_POLL), self.config.ack_poll_interval)
            for ack_id in await self._acknowledged(list(pending)):
                results.mark(pending.pop(ack_id), DELIVERED)
        for chunk in pending.values():
            results.mark(chunk, EventResult(Outcome.RETRY, f"no indexer acknowledgement within "
                                            f"{self.config.ack_timeout:g}s: sending again"))

    async def _acknowledged(self, ack_ids: list[int]) -> list[int]:
        assert self._client is not None
        try:
            reply = await self._client.post(ACK_PATH, content=orjson.dumps({"acks": ack_ids}),
                                            extensions=self._extensions)
        except TRANSPORT_ERRORS as err:
            log.warning("sink %s: ack query failed (%s); asking again", self.name, describe(err))
            return []
        body = _json(reply)
        if reply.status_code != 200:
            code = body.get("code")
            if HEC_CODES.get(code, HecCode(0, "", Action.RETRY)).action is Action.STOP:
                raise SinkFatal(f"Splunk HEC refused the ack query: code {code} \"{body.get('text')}\"; "
                                f"{REMEDIES.get(code, 'check the sink settings')}")
            return []
        acks = body.get("acks") if isinstance(body.get("acks"), dict) else {}
        return [ack_id for ack_id in ack_ids if acks.get(str(ack_id)) is True]

    # ---- check --------------------------------------------------------------------------
    async def probe(self) -> str:
        await self.open()
        assert self._client is not None
        try:
            health = await self._client.get(HEALTH_PATH, extensions=self._extensions)
        except TRANSPORT_ERRORS as err:
            refused = certificate_refused(err)
            raise SinkFatal(f"TLS: {describe(err)}; set ca_file" if refused else describe(err)) from None
        health_body = _json(health)
        if health.status_code in (400, 401, 403):
            code = health_body.get("code")
            raise SinkFatal(f"HEC health: code {code} \"{health_body.get('text')}\"; "
                            f"{REMEDIES.get(code, 'check token and url')}")
        state = health_body.get("text") or f"HTTP {health.status_code}"
        # A zero-event batch: a good token gets "No data" (code 5), a bad one its refusal.
        empty = _json(await self._client.post(EVENT_PATH, content=b"", extensions=self._extensions))
        code = empty.get("code")
        if code in (5, 0):
            return f"{self.config.url}: {state}; token accepted (a zero-event batch got \"{empty.get('text')}\")"
        raise SinkFatal(f"zero-event batch: code {code} \"{empty.get('text')}\"; "
                        f"{REMEDIES.get(code, 'check the sink settings')}")


class _EnvelopeWriter:
    """One event -> its HEC envelope, with `event` last so the body is spliced in as it is."""

    def __init__(self, config: SplunkHecSinkConfig) -> None:
        self.json_body = config.format != "cef"
        self.placement = EventPlacement(config, config.host or socket.gethostname() or "defender-forwarder")

    def write(self, event: Event) -> bytes:
        meta = event.meta
        fields = {"tenant_id": meta.tenant_id, "customer": meta.tenant_label,
                  "severity": meta.severity.name, "version_key": meta.version_key, "kind": meta.kind}
        metadata = self.placement.of(meta.tenant_id, meta.tenant_label, meta.kind)
        head = orjson.dumps({"time": round(meta.time, 3), **metadata, "fields": fields})
        body = event.body if self.json_body else orjson.dumps(event.body.decode("utf-8", "replace"))
        return head[:-1] + b',"event":' + body + b"}"


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        body = orjson.loads(reply.content)
    except orjson.JSONDecodeError:
        return {}
    return body if isinstance(body, dict) else {}


CONNECTOR = SplunkHecConnector
