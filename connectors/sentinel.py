"""`type = "sentinel"`: Microsoft Sentinel (a Log Analytics workspace) through Azure Monitor's
Logs Ingestion API, with the official `azure-monitor-ingestion` async client.

No log-forwarder VM: rows go straight to a data collection rule (DCR) through its endpoint,
signed in as the MSSP's Entra app (certificate or secret, `connectors.entra`) or the managed
identity of the machine the forwarder runs on, which needs the "Monitoring Metrics Publisher"
role on the DCR. `examples/sentinel/azuredeploy.json` creates the tables, the endpoint, the
DCR and that role assignment.

Landing shapes (`format`):
  sentinel            a row of `DefenderAlerts_CL` (stream `Custom-DefenderAlerts_CL`) per alert
                      version, of `DefenderIncidents_CL` (`Custom-DefenderIncidents_CL`) per
                      incident version: typed columns + the whole event as a dynamic column
  commonsecuritylog   a `CommonSecurityLog` row (stream `Custom-DefenderCommonSecurityLog`, which the
                      DCR sends to its `Microsoft-CommonSecurityLog` output stream) built from the
                      CEF format's fields: Sentinel's CEF content works unchanged

Batching: the SDK splits a batch into requests of at most 1 MB of JSON, gzipped. An event counts
as delivered once the API accepted (204) the request that carried it; `on_error` names the
records of each refused request, and those are handled as `INGESTION_STATUSES` says.

Idempotency: the API takes no id, so a row sent again is a second row. A crash between the
API's 204 and the outbox's commit sends that batch again (at most `batch_max_events` rows a
sink a crash); so does a 5xx or a timeout on a request the service did take. Every row carries
`VersionKey` (and `AlertId` + `Version`): docs/sinks/sentinel.md gives the KQL that removes them.
"""
from __future__ import annotations

import gzip
import io
import logging
from typing import Any, ClassVar, Literal, NamedTuple

import orjson
from pydantic import Field, model_validator

from connectors.base import DELIVERED, BatchResults, Connector, Event, EventResult, Outcome, Shortener, SinkFatal
from connectors.entra import CLOUDS, EntraAppConfig, credential_for, managed_identity_credential
from connectors.sizes import RequestLimit
from connectors.tls import TLS_KEYS, TlsFileError, ssl_context
from core.model.durations import Duration
from core.model.neterr import address, describe
from core.model.proxy import proxy_for, redacted

log = logging.getLogger("defender_forwarder.sentinel")

ALERTS_STREAM = "Custom-DefenderAlerts_CL"
INCIDENTS_STREAM = "Custom-DefenderIncidents_CL"
# The DCR's declared stream of CommonSecurityLog rows; its data flow's outputStream is
# `Microsoft-CommonSecurityLog` (examples/sentinel/azuredeploy.json).
CEF_STREAM = "Custom-DefenderCommonSecurityLog"
# format -> (stream of alerts, stream of incidents) when the sink's table names none.
DEFAULT_STREAMS = {"sentinel": (ALERTS_STREAM, INCIDENTS_STREAM), "commonsecuritylog": (CEF_STREAM, CEF_STREAM)}
# The API takes 1 MiB a request. The SDK fills its chunks up to 1 MiB counting each record's
# JSON alone, not the array's brackets and ", " between them, so a chunk it fills to the brim is
# over the limit by about 2 bytes a record (azure-monitor-ingestion 1.1, `_split_chunks`), and it
# writes `json.dumps`'s spaces and \u escapes too. So the sink hands it groups of rows that stay
# well under (their orjson bytes), which the SDK sends in one request each; a 413 still halves.
REQUEST_BUDGET = 900_000


class SentinelSinkConfig(EntraAppConfig):
    tls_unsupported: ClassVar[frozenset[str]] = frozenset(TLS_KEYS) - {"ca_file"}

    type: str = "sentinel"
    format: Literal["sentinel", "commonsecuritylog"] = "sentinel"
    endpoint: str = Field(description="the data collection endpoint's logs ingestion URL (or the DCR's own "
                          "ingestion endpoint): https://<dce>.<region>.ingest.monitor.azure.com")
    rule_id: str = Field(description="the DCR's immutable id: dcr-<32 hex digits>")
    stream: str | None = Field(default=None, description="the DCR stream alerts go to; default by format: "
                               f"{ALERTS_STREAM} (sentinel), {CEF_STREAM} (commonsecuritylog)")
    incident_stream: str | None = Field(default=None, description="the DCR stream incidents go to; default by "
                                        f"format: {INCIDENTS_STREAM} (sentinel), the alerts' stream "
                                        "(commonsecuritylog)")
    cloud: Literal["public", "usgov", "china"] = Field(default="public", description="the Azure cloud of the "
                                                       "workspace: its login host and ingestion scope")
    managed_identity: bool = Field(default=False, description="sign in as the managed identity of the VM or "
                                   "pod instead of an Entra app")
    managed_identity_client_id: str | None = Field(default=None, description="a user-assigned identity's "
                                                   "client id; default: the system-assigned one")
    ca_file: str | None = Field(default=None, description="the CA to trust for the login host and the "
                                "endpoint (a TLS-inspecting proxy); default: the system store")
    retry_total: int = Field(default=3, ge=0, description="the SDK's own retries of 429/5xx (it waits what "
                             "Retry-After says), and azure-identity's of reaching a managed identity "
                             "endpoint, before the worker backs off")
    upload_timeout: Duration = Field(default=60.0, gt=0, description="longest wait for one request's answer")

    @model_validator(mode="after")
    def _one_way_in(self) -> SentinelSinkConfig:
        if not self.endpoint.startswith("https://"):
            raise ValueError("endpoint must be an https:// URL (the API takes a bearer token over TLS only)")
        if self.managed_identity:
            if self.client_secret is not None or self.certificate is not None:
                raise ValueError("managed_identity = true takes no client_secret or certificate")
            return self
        problem = self.entra_app_problem()
        if problem:
            raise ValueError(f"{problem} (or managed_identity = true)")
        return self

    def streams(self) -> tuple[str, str]:
        """(the stream of alerts, the stream of incidents)."""
        alerts, incidents = DEFAULT_STREAMS[self.format]
        alerts = self.stream or alerts
        return alerts, self.incident_stream or (alerts if self.format == "commonsecuritylog" else incidents)


# --------------------------------------------------------------------------- the status table


class Handling(NamedTuple):
    action: Literal["deliver", "bisect", "shrink", "retry", "stop"]
    meaning: str


# The API's answer to one request -> what happens to the records it carried. An answer not
# in the table is retried (a new status is never a reason to drop an alert).
INGESTION_STATUSES: dict[int, Handling] = {
    204: Handling("deliver", "accepted: every record of the request is delivered"),
    400: Handling("bisect", "a record does not fit the stream's declaration: the request is halved until the "
                  "record is alone, which goes to the dead letters with the API's message (an undeclared "
                  "stream stops the sink)"),
    401: Handling("stop", "the token was refused: check tenant_id, client_id and the secret or certificate, "
                  "and `cloud`"),
    403: Handling("stop", "the app lacks the \"Monitoring Metrics Publisher\" role on the DCR (or the DCR is "
                  "not the one `rule_id` names)"),
    404: Handling("stop", "no such DCR at this endpoint: check rule_id (the DCR's immutable id) and endpoint"),
    413: Handling("shrink", "larger than the API takes: the request is halved and later ones stay under half "
                  "its size; one record too large alone is a dead letter"),
    429: Handling("retry", "throttled: the SDK waits Retry-After and tries again (`retry_total`), then the "
                  "worker backs off"),
    500: Handling("retry", "the service failed: retried"),
    502: Handling("retry", "the service failed: retried"),
    503: Handling("retry", "unavailable: the SDK waits Retry-After and tries again, then the worker backs off"),
    504: Handling("retry", "the service timed out: retried"),
}
RETRY_UNKNOWN = Handling("retry", "an answer the table does not know: retried")
# 400 codes that say the request went to the wrong place, not that a record is bad.
WRONG_PLACE_CODES = frozenset({"InvalidStream", "InvalidDataCollectionRule", "InvalidDcrImmutableId"})


class _Failure(NamedTuple):
    handling: Handling
    message: str  # the API's message (or the network failure), never the token


def _failure(err: BaseException, where: str) -> _Failure:
    """What an upload error means: by the HTTP status the API answered, else a network failure
    (retried) or a credential the login service refused (the sink stops)."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    text = str(err)
    if isinstance(err, ClientAuthenticationError) and ("AADSTS" in text or "invalid_client" in text):
        # The login service refused the app (azure-identity's error, with the login's status): no API answer.
        return _Failure(Handling("stop", "the login service refused the app: check tenant_id, client_id and "
                                 "the secret or certificate"), _first_aadsts(text))
    status = getattr(err, "status_code", None)
    if isinstance(err, ClientAuthenticationError) and status is not None and not _answered_by(err, where):
        # The token source answered, not the API (a managed identity endpoint: App Service's 400
        # "Unable to load the proper Managed Identity." for an identity the machine lacks): its
        # status must not be read as the API's (a 400 would dead-letter every row).
        message = f"{address(str(err.response.request.url))} answered {status}: {_api_message(err).partition(': ')[2]}"
        if status == 429 or status >= 500:
            return _Failure(RETRY_UNKNOWN._replace(meaning="signing in failed"), message)
        return _Failure(Handling("stop", "signing in was refused: with managed_identity, check "
                                 "managed_identity_client_id (a user-assigned identity assigned to this "
                                 "machine; without it, the machine's system-assigned identity must be on)"), message)
    if isinstance(err, HttpResponseError) and status is not None:
        code = getattr(getattr(err, "error", None), "code", None)
        message = _api_message(err)
        if status == 400 and code in WRONG_PLACE_CODES:
            return _Failure(Handling("stop", "the stream is not declared in the DCR: check stream / incident_stream "
                                     "against the DCR's streamDeclarations"), message)
        return _Failure(INGESTION_STATUSES.get(status, RETRY_UNKNOWN), message)
    if isinstance(err, ClientAuthenticationError):
        # No answer from the login service (it could not be reached): retried.
        return _Failure(RETRY_UNKNOWN._replace(meaning="signing in failed"), describe(err, where))
    return _Failure(RETRY_UNKNOWN._replace(meaning="not reached"), describe(err, where))


def _answered_by(err: Any, where: str) -> bool:
    """Whether the error is the answer of `where` (host:port), the API, rather than of the token source."""
    request = getattr(getattr(err, "response", None), "request", None)
    return request is None or address(str(request.url)) == where


def _first_aadsts(text: str) -> str:
    """The login service's own words (`AADSTS<code>: ...`, up to its trace id), else the error's first line."""
    start = text.find("AADSTS")
    if start < 0:
        return text.splitlines()[0]
    end = text.find(" Trace ID:", start)
    return text[start:end if end > 0 else None].splitlines()[0]


def _api_message(err: Any) -> str:
    """The API's own error code and message (the ODataV4 body azure-core parsed), one line."""
    error = getattr(err, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if message:
        return f"{err.status_code} {code}: {message}" if code else f"{err.status_code}: {message}"
    return f"{err.status_code} {getattr(err, 'reason', '') or ''}".strip()


class _Stop(Exception):
    """Raised from `on_error` to end an upload whose remaining requests cannot succeed now."""


# --------------------------------------------------------------------------- the connector


class SentinelConnector(Connector):
    config_model = SentinelSinkConfig
    config: SentinelSinkConfig

    def __init__(self, name: str, config: SentinelSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self._client: Any = None
        self._credential: Any = None
        self._where = address(config.endpoint)
        self._proxy: str | None = None
        self._limit = RequestLimit(REQUEST_BUDGET, name, "the Logs Ingestion API", log)

    async def open(self) -> None:
        if self._client is not None:
            return
        from azure.monitor.ingestion.aio import LogsIngestionClient

        config = self.config
        cloud = CLOUDS[config.cloud]
        if config.managed_identity:
            # An endpoint not there is the worker's to retry (it backs off), as the API's is.
            self._credential = managed_identity_credential(config.managed_identity_client_id,
                                                           retry_connect=config.retry_total)
        else:
            self._credential = credential_for(config, self.proxy, cloud.login)
        options: dict[str, Any] = {"credential_scopes": [cloud.monitor_scope], "retry_total": config.retry_total,
                                   "logging_enable": False, "transport": self._transport()}
        self._proxy = proxy_for(config.endpoint, self.proxy)
        if self._proxy:
            options["proxies"] = {"https": self._proxy, "http": self._proxy}
        self._client = LogsIngestionClient(config.endpoint, self._credential, **options)

    def _transport(self) -> Any:
        """azure-core's aiohttp transport over one session with one SSL context (the system store,
        or `ca_file`): given `connection_verify` as a file, azure-core builds a new context per
        request, and aiohttp, which pools connections by context, then opens a new TLS
        connection for every upload. The proxy is the one `proxy_for` decided (`proxies`), so the
        session reads no proxy variables of its own."""
        import aiohttp
        from azure.core.pipeline.transport import AioHttpTransport

        try:
            context = ssl_context(self.config)
        except TlsFileError as err:
            raise SinkFatal(str(err)) from None
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), trust_env=False,
                                        cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
        return AioHttpTransport(session=session, session_owner=True)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
        if self._credential is not None:
            await self._credential.close()
            self._credential = None

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        await self.open()
        results = BatchResults(len(batch))
        records: list[Any] = [None] * len(batch)
        by_stream: dict[str, list[int]] = {}
        alerts_stream, incidents_stream = self.config.streams()
        for index, event in enumerate(batch):
            try:
                records[index] = orjson.loads(event.body)
            except orjson.JSONDecodeError as err:
                results[index] = EventResult(Outcome.PERMANENT, f"not a JSON row ({err}): format "
                                             f"{self.config.format!r} expected")
                continue
            stream = alerts_stream if event.meta.kind == "alert" else incidents_stream
            by_stream.setdefault(stream, []).append(index)
        sizes = [len(event.body) for event in batch]
        for stream, indexes in by_stream.items():
            stop = await self._send_stream(stream, indexes, records, sizes, results)
            if stop is not None:
                if stop.handling.action == "stop":
                    raise SinkFatal(f"Logs Ingestion API, stream {stream}: {stop.message}; "
                                    f"{stop.handling.meaning}")
                break  # a retry: the rest of the batch waits for the worker's backoff
        return results.final()

    async def _send_stream(self, stream: str, indexes: list[int], records: list[Any], sizes: list[int],
                           results: BatchResults) -> _Failure | None:
        """Upload the records of one stream; each refused request is handled as its status says.
        Returns the failure that ended the sending (retry or stop), None when all were settled."""
        pending = self._limit.requests(indexes, sizes)
        while pending:
            part = pending.pop(0)
            failures, stop = await self._upload(stream, part, records, results)
            for failure, failed in failures:
                action = failure.handling.action
                if action == "bisect":
                    if len(failed) == 1:
                        results[failed[0]] = EventResult(Outcome.PERMANENT, f"the API refused the row: "
                                                         f"{failure.message}")
                    else:
                        half = len(failed) // 2
                        pending[:0] = [failed[:half], failed[half:]]
                elif action == "shrink":
                    too_large = EventResult(Outcome.PERMANENT, f"{sizes[failed[0]]} bytes: larger than the Logs "
                                            f"Ingestion API takes in one request ({failure.message}); never sent cut")
                    pending[:0] = self._limit.refused(failed, sum(sizes[i] for i in failed), results, too_large)
            if stop is not None:
                if stop.handling.action == "retry":
                    through = f" (through proxy {redacted(self._proxy)})" if self._proxy else ""
                    reason = EventResult(Outcome.RETRY, f"{stop.message}{through}: {stop.handling.meaning}")
                    unsettled = set(results.unsettled())
                    results.mark([i for i in indexes if i in unsettled], reason)
                return stop
        return None

    async def _upload(self, stream: str, part: list[int], records: list[Any],
                      results: BatchResults) -> tuple[list[tuple[_Failure, list[int]]], _Failure | None]:
        """One `upload` of the records of `part`: those in accepted requests are delivered; the
        refused requests' records are returned with what their failure means. A failure that
        stops or retries ends the upload (the SDK's requests after it are not sent)."""
        rows = [records[i] for i in part]
        position = {id(row): n for n, row in enumerate(rows)}
        failures: list[tuple[_Failure, list[int]]] = []
        failed_positions: set[int] = set()
        stop: list[tuple[_Failure, int]] = []

        async def on_error(error: Any) -> None:
            positions = [position[id(row)] for row in error.failed_logs]
            failure = _failure(error.error, self._where)
            failed_positions.update(positions)
            if failure.handling.action in ("retry", "stop"):
                stop.append((failure, positions[0]))
                raise _Stop
            failures.append((failure, [part[n] for n in positions]))

        try:
            await self._client.upload(self.config.rule_id, stream, rows, on_error=on_error,
                                      timeout=self.config.upload_timeout)
        except _Stop:
            pass
        # The SDK sends its requests in order: with a stop, those before it were answered.
        sent = stop[0][1] if stop else len(rows)
        results.mark([part[n] for n in range(sent) if n not in failed_positions], DELIVERED)
        return failures, (stop[0][0] if stop else None)

    # ---- check --------------------------------------------------------------------------
    async def probe(self) -> str:
        """A token, then an upload of an empty array to each stream: the API checks the token,
        the role, the DCR and the stream, and writes nothing."""
        await self.open()
        cloud = CLOUDS[self.config.cloud]
        try:
            try:
                await self._credential.get_token(cloud.monitor_scope)
            except Exception as err:  # noqa: BLE001 - every failure to sign in is told, one line
                raise SinkFatal(f"Logs Ingestion API: no token for {cloud.monitor_scope}: "
                                f"{_failure(err, self._where).message}") from None
            for stream in dict.fromkeys(self.config.streams()):
                await self._probe_stream(stream)
        finally:
            await self.close()
        streams = ", ".join(dict.fromkeys(self.config.streams()))
        return (f"token ok; DCR {self.config.rule_id} takes stream {streams} at {self._where} "
                "(an empty upload: nothing written)")

    async def _probe_stream(self, stream: str) -> None:
        empty = io.BytesIO(gzip.compress(b"[]"))
        try:
            await self._client.upload(self.config.rule_id, stream, empty, timeout=self.config.upload_timeout)
        except Exception as err:  # noqa: BLE001 - classified below, one line
            failure = _failure(err, self._where)
            raise SinkFatal(f"Logs Ingestion API, stream {stream}: {failure.message}; "
                            f"{failure.handling.meaning}") from None


CONNECTOR = SentinelConnector

