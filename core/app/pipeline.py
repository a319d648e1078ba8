"""The only place that knows sources, mappings and connectors together.

poll -> normalise -> dedupe -> route -> encode per sink -> outbox (one transaction per
page) -> workers. Encoding before the outbox means a worker sends stored bytes, and an
alert a format cannot encode is dead-lettered for that sink at once, with its reason.
"""
from __future__ import annotations

import asyncio
import logging
import math
import random
import signal
import ssl
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx
from aiolimiter import AsyncLimiter

from connectors import connector_class
from core.app.config import Config, RouteSettings, TenantSettings, sinks_for_alert
from core.delivery import SinkWorker
from core.model import jsonutil
from core.model.schema import Alert, EventMeta, TenantRef
from core.model.times import format_time
from core.sources import AlertSource, Page, SourceError
from core.sources.auth import TenantAuthError, TokenProvider, TransientAuthError, endpoints, http_session
from core.sources.graph import PAGES_IN_MEMORY, GraphAlertsSource
from core.sources.replay import ReplaySource
from core.state import DeadLetter, PageCommit
from core.state.sqlite import SQLiteStore
from mappings import Encoder, encoder, shortener
from mappings.graph_alerts_v2 import MappingError, normalise, version_of

log = logging.getLogger("defender_forwarder.pipeline")

CONNECTIONS_PER_POOL = 5

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class TenantResult:
    label: str
    tenant_id: str
    read: int = 0
    queued: int = 0
    duplicates: int = 0
    filtered: int = 0
    dead: int = 0
    paused: bool = False
    error: str | None = None


@dataclass
class _PageOutcome:
    commit: PageCommit
    high_water: datetime | None
    sinks: set[str] = field(default_factory=set)


class Forwarder:
    """Owns the clients, sources and sink workers of one configuration."""

    def __init__(self, config: Config, store: SQLiteStore, clock: Clock = utcnow) -> None:
        self.config = config
        self.settings = config.forwarder
        self.store = store
        self.clock = clock
        self.routes: list[RouteSettings] = config.routes_or_default()
        self.workers: dict[str, SinkWorker] = {}
        self.encoders: dict[str, Encoder] = {name: encoder(sink.format) for name, sink in config.sinks.items()}
        self.sources: dict[str, AlertSource] = {}
        self._http: dict[str | None, list[httpx.AsyncClient]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._sessions: dict[str | None, Any] = {}
        self._global_bound = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self._page_slots = asyncio.Semaphore(PAGES_IN_MEMORY)
        self.on_page: Callable[[str, int], None] | None = None  # progress display of backfill

    async def __aenter__(self) -> "Forwarder":
        self.workers = {name: self._worker(name, sink) for name, sink in self.config.sinks.items()}
        self.sources = {label: self._source(label, t) for label, t in self.config.tenants.items() if t.enabled}
        return self

    async def __aexit__(self, *_: object) -> None:
        for worker in self.workers.values():
            await worker.close()
        for pools in self._http.values():
            for client in pools:
                await client.aclose()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # ---- construction ---------------------------------------------------
    def _worker(self, name: str, sink: Any) -> SinkWorker:
        # The connector gets the part of its format it needs: how to shorten a line that does
        # not fit the destination's message.
        connector = connector_class(sink.type)(name, sink, shortener=shortener(sink.format))
        return SinkWorker(connector, self.store)

    def _source(self, label: str, tenant: TenantSettings) -> AlertSource:
        if tenant.replay is not None:
            return ReplaySource(tenant.replay, self.settings.page_size)
        assert tenant.app is not None  # the config model guarantees it
        app = self.config.apps[tenant.app]
        tokens = TokenProvider(tenant.app, app, label, tenant.tenant_id, self._thread_pool(), self._session(app))
        return GraphAlertsSource(
            client=self._client(app.ca_file, tenant.tenant_id),
            graph_endpoint=endpoints(app).graph,
            tokens=tokens,
            app=app,
            tenant_id=tenant.tenant_id,
            # One request per 60/N seconds, no burst: a tenant never exceeds its Graph budget,
            # whatever the window in which Graph counts it.
            limiter=AsyncLimiter(1, 60 / self.settings.tenant_requests_per_minute),
            concurrency=self._global_bound,
            page_slots=self._page_slots,
            page_size=self.settings.page_size,
            max_pages=self.settings.max_pages_per_window,
            backoff_base=self.settings.retry_initial,
        )

    def _client(self, ca_file: str | None, tenant_id: str) -> httpx.AsyncClient:
        """A shard of the HTTP connection pool, chosen by tenant.

        httpcore checks every connection of a pool on each request start and end, so one
        pool of 50 connections costs milliseconds of CPU per request; small pools keep the
        poll cycle near its latency bound (bench/poll.py measures it).
        """
        if ca_file not in self._http:
            shards = math.ceil(self.settings.max_concurrent_requests / CONNECTIONS_PER_POOL)
            limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL)
            tls = _tls_context(ca_file)
            timeout = self.settings.request_timeout
            self._http[ca_file] = [
                httpx.AsyncClient(verify=tls, timeout=timeout, limits=limits) for _ in range(shards)
            ]
        pools = self._http[ca_file]
        return pools[zlib.crc32(tenant_id.encode()) % len(pools)]

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.max_concurrent_requests, "token")
        return self._executor

    def _session(self, app: Any) -> Any:
        if app.ca_file not in self._sessions:
            self._sessions[app.ca_file] = http_session(
                app.ca_file, self.settings.max_concurrent_requests, self.settings.request_timeout
            )
        return self._sessions[app.ca_file]

    # ---- polling ----------------------------------------------------------
    def sinks_for(self, label: str) -> set[str]:
        return {sink for route in self.routes if route.covers(label) for sink in route.sinks}

    def _backpressured(self, sinks: set[str]) -> bool:
        return any(self.store.outbox_depth(name) >= self.workers[name].config.max_outbox for name in sinks)

    async def poll_all(self, since: datetime | None = None, only: str | None = None) -> list[TenantResult]:
        labels = [label for label in self.sources if only is None or label == only]
        return list(await asyncio.gather(*(self.poll_tenant(label, since) for label in labels)))

    async def poll_tenant(self, label: str, since: datetime | None = None) -> TenantResult:
        """Read one window of one tenant; `since` overrides the cursor (backfill)."""
        tenant = self.config.tenants[label]
        result = TenantResult(label, tenant.tenant_id)
        try:
            await self._read_window(label, tenant, result, since)
        except TenantAuthError as err:
            result.error = str(err)
        except (SourceError, TransientAuthError) as err:
            result.error = f"{err} (will retry next cycle)"
        except httpx.HTTPError as err:
            result.error = f"{type(err).__name__} talking to Graph (will retry next cycle)"
        if result.error:
            log.error("tenant %s: %s", label, result.error)
            self.store.record_error(tenant.tenant_id, label, result.error)
        elif not result.paused:
            self.store.record_success(tenant.tenant_id, label, result.queued)
        return result

    async def _read_window(
        self, label: str, tenant: TenantSettings, result: TenantResult, since: datetime | None
    ) -> None:
        sinks = self.sinks_for(label)
        source = self.sources[label]
        cursor = self.store.cursor(tenant.tenant_id, source.name)
        overlap = timedelta(seconds=self.settings.overlap)
        if since is None:
            since = cursor - overlap if cursor else self.clock() - timedelta(seconds=self.settings.initial_lookback)
        high_water = cursor
        ref = TenantRef(id=tenant.tenant_id, label=label)
        # aclosing: a window left early (backpressure, an error) gives its page slot back now.
        async with aclosing(source.pages(since)) as pages:
            async for page in pages:
                if self._backpressured(sinks):
                    result.paused = True
                    log.warning("tenant %s: paused, an outbox of %s is full", label, ", ".join(sorted(sinks)))
                    return
                high_water = self._take_page(ref, source.name, page, high_water, result)
                del page  # not kept while the next page waits for its request (see GraphAlertsSource.pages)
        if high_water is not None:
            self.store.prune_seen(tenant.tenant_id, high_water - overlap)

    def _take_page(self, ref: TenantRef, source: str, page: Page, high_water: datetime | None,
                   result: TenantResult) -> datetime | None:
        """Queue one page in one transaction (the cursor with the window's last); the new high water."""
        outcome = self._process_page(ref, source, page, result)
        high_water = _later(high_water, outcome.high_water)
        if page.last:
            outcome.commit.cursor = high_water
        self.store.commit_page(outcome.commit)
        if self.on_page is not None:
            self.on_page(ref.label, len(page.alerts))
        for name in outcome.sinks:
            self.workers[name].wakeup.set()
        return high_water

    def _process_page(self, ref: TenantRef, source: str, page: Page, result: TenantResult) -> _PageOutcome:
        commit = PageCommit(tenant_id=ref.id, source=source)
        outcome = _PageOutcome(commit, None)
        alerts = self._normalise_page(ref, self._not_seen(ref, page.alerts, outcome, result), commit)
        result.read += len(alerts) + len(commit.dead)
        result.dead += len(commit.dead)
        versions = [(a.id, format_time(a.times.last_updated)) for a in alerts]
        unseen = self.store.unseen(ref.id, versions)
        known = self.store.known(ref.id, [alert_id for alert_id, _ in unseen])
        for alert, version in zip(alerts, versions, strict=True):
            outcome.high_water = _later(outcome.high_water, alert.times.last_updated)
            if version not in unseen:
                result.duplicates += 1
                continue
            unseen.discard(version)  # the same version twice in one page is one version
            commit.seen.append(version)
            alert.first_sight = alert.id not in known
            known.add(alert.id)
            self._route(alert, commit, outcome, result)
        return outcome

    def _not_seen(self, ref: TenantRef, raws: list[Any], outcome: _PageOutcome, result: TenantResult) -> list[Any]:
        """The raw alerts whose version was not queued before. Every cycle re-reads the overlap
        window, which in steady state is most of what is read: skipping those versions before
        normalising them saves most of a cycle's CPU. An alert this cannot judge stays in."""
        versions = {position: found for position, raw in enumerate(raws) if (found := version_of(raw)) is not None}
        keys = {position: (alert_id, format_time(moment)) for position, (alert_id, moment) in versions.items()}
        unseen = self.store.unseen(ref.id, list(keys.values()))
        fresh = []
        for position, raw in enumerate(raws):
            if position in keys and keys[position] not in unseen:
                result.read += 1
                result.duplicates += 1
                outcome.high_water = _later(outcome.high_water, versions[position][1])
            else:
                fresh.append(raw)
        return fresh

    def _normalise_page(self, ref: TenantRef, raws: list[Any], commit: PageCommit) -> list[Alert]:
        ingested = self.clock()
        alerts = []
        for raw in raws:
            try:
                alerts.append(normalise(raw, ref, ingested))
            except MappingError as err:
                commit.dead.append(_dead_raw(ref, raw, f"normalise: {err}"))
            except Exception as err:  # noqa: BLE001 - a mapping bug must cost one alert, not the run
                log.exception("tenant %s: mapping failed unexpectedly", ref.label)
                commit.dead.append(_dead_raw(ref, raw, f"normalise: internal error {type(err).__name__}: {err}"))
        return alerts

    def _route(self, alert: Alert, commit: PageCommit, outcome: _PageOutcome, result: TenantResult) -> None:
        sinks = sinks_for_alert(self.routes, alert.tenant.label, alert.severity, alert.service_source)
        if not sinks:
            result.filtered += 1
            return
        queued, failures = encode_for_sinks(alert, sinks, self.encoders)
        commit.outbox.extend(queued)
        commit.dead.extend(failures)
        outcome.sinks.update(sink for sink, _, _ in queued)
        for letter in failures:  # a sink's own dead letter, shown in its row of the summary
            self.workers[letter.sink].stats.dead += 1
        # Per tenant each alert counts once: queued if it reached a sink, else dead.
        if queued:
            result.queued += 1
        elif failures:
            result.dead += 1

    # ---- running ---------------------------------------------------------------
    async def run_once(self, since: datetime | None = None, only: str | None = None) -> list[TenantResult]:
        results = await self.poll_all(since, only)
        await self.drain()
        self._tidy_state()
        return results

    async def drain(self) -> bool:
        deadline = asyncio.get_running_loop().time() + self.settings.once_deadline
        drained = await asyncio.gather(*(w.drain(deadline) for w in self.workers.values()))
        return all(drained)

    def _tidy_state(self) -> None:
        """After a cycle: what the state no longer needs goes, and its space with it."""
        self.store.forget_old_sink_memory()
        self.store.reclaim_space()

    async def run_forever(self) -> None:
        """Daemon: workers deliver continuously; a poll cycle of every tenant starts every
        poll_interval (at once when the last one took longer)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        workers = [asyncio.create_task(w.run_forever()) for w in self.workers.values()]
        try:
            while not stop.is_set():
                started = loop.time()
                await self.poll_all()
                self._tidy_state()
                # Counted from the cycle's start: a cycle of a thousand tenants takes seconds,
                # which must not add to every alert's wait. Jitter keeps many forwarders from
                # polling in lockstep.
                pause = self.settings.poll_interval * random.uniform(0.9, 1.1) - (loop.time() - started)
                try:
                    await asyncio.wait_for(stop.wait(), max(pause, 0.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)


def encode_for_sinks(
    alert: Alert, sinks: set[str], encoders: dict[str, Encoder]
) -> tuple[list[tuple[str, EventMeta, bytes]], list[DeadLetter]]:
    """The alert in each sink's format (each format encoded once), and a dead letter per sink
    whose format cannot encode it (e.g. an unpaired surrogate no JSON may carry)."""
    meta = EventMeta.of(alert)
    bodies: dict[Encoder, bytes | str] = {}
    queued, failures = [], []
    for sink in sorted(sinks):
        encode = encoders[sink]
        if encode not in bodies:
            try:
                bodies[encode] = encode(alert)
            except Exception as err:  # noqa: BLE001 - a format's failure must cost this alert in this sink only
                bodies[encode] = f"encode: {type(err).__name__}: {err}"
        body = bodies[encode]
        if isinstance(body, bytes):
            queued.append((sink, meta, body))
        else:
            failures.append(DeadLetter("encode", sink, alert.tenant.id, alert.version_key,
                                       jsonutil.dumps_for_keeping(alert.raw), body[:2000]))
    return queued, failures


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None or b is None:
        return a or b
    return max(a, b)


def _dead_raw(ref: TenantRef, raw: Any, reason: str) -> DeadLetter:
    version = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if version is not None:  # shown by `dead-letters list`; SQLite text must be valid UTF-8
        version = version.encode("utf-8", "backslashreplace").decode()
    return DeadLetter("normalise", None, ref.id, version, jsonutil.dumps_for_keeping(raw), reason[:2000])


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # One context for every pool: loading the CA store once, verification always on.
    return ssl.create_default_context(cafile=ca_file)
