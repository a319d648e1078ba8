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
from core.app.config import Config, RouteSettings, TenantSettings, held_back_reason, sinks_for_alert
from core.delivery import SinkWorker
from core.model import jsonutil
from core.model.neterr import connect_and_read, describe
from core.model.schema import Alert, EventMeta, TenantRef
from core.sources import KINDS, AlertSource, LiveContext, Page, SourceError, SourceKind
from core.sources.auth import TenantAuthError, TokenProvider, TransientAuthError, http_session
from core.sources.graph import PAGES_IN_MEMORY
from core.sources.incremental import Window, prune_horizon, window_start
from core.sources.replay import ReplaySource
from core.state import DeadLetter, PageCommit
from core.state.sqlite import SQLiteStore
from mappings import Encoder, SourceMapping, encoder, shortener, source_mapping

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
    held_back: dict[str, int] = field(default_factory=dict)  # reason -> alerts no route took for it
    dead: int = 0
    paused: bool = False
    error: str | None = None


@dataclass
class _PageOutcome:
    commit: PageCommit
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
        # label -> source kind name -> its reader: one per (tenant, kind in its `sources`).
        self.readers: dict[str, dict[str, AlertSource]] = {}
        self.mappings: dict[str, SourceMapping] = {}  # source kind name -> its mapping
        self._http: dict[str | None, list[httpx.AsyncClient]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._sessions: dict[str | None, Any] = {}
        self._global_bound = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self._page_slots = asyncio.Semaphore(PAGES_IN_MEMORY)
        self.on_page: Callable[[str, int], None] | None = None  # progress display of backfill
        self.resend = False  # backfill --resend: versions taken before are sent again

    async def __aenter__(self) -> "Forwarder":
        self.workers = {name: self._worker(name, sink) for name, sink in self.config.sinks.items()}
        self.readers = {label: self._readers(label, t) for label, t in self.config.tenants.items() if t.enabled}
        kinds = {kind for readers in self.readers.values() for kind in readers}
        self.mappings = {kind: source_mapping(KINDS[kind].mapping) for kind in sorted(kinds)}
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

    def _readers(self, label: str, tenant: TenantSettings) -> dict[str, AlertSource]:
        """A reader per source kind the tenant reads; a replay tenant replays its folder for each."""
        kinds = [KINDS[name] for name in dict.fromkeys(tenant.sources)]
        if tenant.replay is not None:
            return {kind.name: ReplaySource(kind, tenant.replay, self.settings.page_size) for kind in kinds}
        context = self._live_context(label, tenant)
        return {kind.name: kind.open(context) for kind in kinds}

    def _live_context(self, label: str, tenant: TenantSettings) -> LiveContext:
        """What the live readers of one tenant share: its tokens, connection pool and request budget."""
        assert tenant.app is not None  # the config model guarantees it
        app = self.config.apps[tenant.app]
        return LiveContext(
            tenant_id=tenant.tenant_id,
            app=app,
            tokens=TokenProvider(tenant.app, app, label, tenant.tenant_id, self._thread_pool(), self._session(app)),
            client=self._client(app.ca_file, tenant.tenant_id),
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
            connect, read = connect_and_read(self.settings.request_timeout)
            timeout = httpx.Timeout(read, connect=connect)
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
        labels = [label for label in self.readers if only is None or label == only]
        return list(await asyncio.gather(*(self.poll_tenant(label, since) for label in labels)))

    async def poll_tenant(self, label: str, since: datetime | None = None) -> TenantResult:
        """Read one window of each source kind of one tenant; `since` overrides the cursors (backfill)."""
        tenant = self.config.tenants[label]
        result = TenantResult(label, tenant.tenant_id)
        readers = self.readers[label]
        errors: list[str] = []
        windows: list[Window] = []  # those read to their end
        for name, reader in readers.items():
            window, error = await self._poll_source(label, tenant, reader, result, since)
            if error is not None:
                # One line per kind that failed; a tenant of one kind keeps the plain message.
                errors.append(error if len(readers) == 1 else f"{name}: {error}")
            if window is not None:
                windows.append(window)
            if result.paused:
                break
        result.error = "; ".join(errors) or None
        if result.error:
            log.error("tenant %s: %s", label, result.error)
            self.store.record_error(tenant.tenant_id, label, result.error)
        elif not result.paused:
            horizon = prune_horizon(windows)
            if horizon is not None:
                self.store.prune_seen(tenant.tenant_id, horizon)
            self.store.record_success(tenant.tenant_id, label, result.queued)
        return result

    async def _poll_source(self, label: str, tenant: TenantSettings, reader: AlertSource, result: TenantResult,
                           since: datetime | None) -> tuple[Window | None, str | None]:
        """Read one window of one kind of one tenant into `result`: the window if it was read to
        its end, and what failed, if anything."""
        try:
            return await self._read_window(label, tenant, reader, result, since), None
        except TenantAuthError as err:
            return None, str(err)
        except (SourceError, TransientAuthError) as err:
            return None, f"{err} (will retry next cycle)"
        except httpx.HTTPError as err:
            return None, f"Graph: {describe(err)} (will retry next cycle)"

    async def _read_window(self, label: str, tenant: TenantSettings, reader: AlertSource, result: TenantResult,
                           since: datetime | None) -> Window | None:
        """Read one window to its end and return it; None if an outbox is full (`result.paused`)."""
        sinks = self.sinks_for(label)
        kind = reader.kind
        cursor = self.store.cursor(tenant.tenant_id, kind.name)
        overlap, lookback = timedelta(seconds=self.settings.overlap), timedelta(seconds=self.settings.initial_lookback)
        window = Window(tenant.tenant_id, kind.version, self.store, cursor=cursor, overlap=overlap,
                        resend=self.resend and since is not None)
        start = window_start(cursor, overlap=overlap, initial_lookback=lookback, now=self.clock, since=since)
        ref = TenantRef(id=tenant.tenant_id, label=label)
        # aclosing: a window left early (backpressure, an error) gives its page slot back now.
        async with aclosing(reader.pages(start)) as pages:
            async for page in pages:
                if self._backpressured(sinks):
                    result.paused = True
                    log.warning("tenant %s: paused, an outbox of %s is full", label, ", ".join(sorted(sinks)))
                    return None
                self._take_page(ref, kind, window, page, result)
                del page  # not kept while the next page waits for its request (see GraphSource.pages)
        return window

    def _take_page(self, ref: TenantRef, kind: SourceKind, window: Window, page: Page, result: TenantResult) -> None:
        """Queue one page in one transaction (the cursor with the window's last page)."""
        outcome = self._process_page(ref, kind, window, page, result)
        outcome.commit.cursor = window.end_page(page.last)
        self.store.commit_page(outcome.commit)
        if self.on_page is not None:
            self.on_page(ref.label, len(page.alerts))
        for name in outcome.sinks:
            self.workers[name].wakeup.set()

    def _process_page(self, ref: TenantRef, kind: SourceKind, window: Window, page: Page,
                      result: TenantResult) -> _PageOutcome:
        commit = PageCommit(tenant_id=ref.id, source=kind.name)
        outcome = _PageOutcome(commit)
        # Every cycle re-reads the overlap, which in steady state is most of what is read:
        # skipping the versions seen before, unnormalised, saves most of a cycle's CPU.
        fresh, skipped = window.skip_seen(page.alerts)
        alerts = self._normalise_page(ref, self.mappings[kind.name], fresh, commit)
        result.read += skipped + len(alerts) + len(commit.dead)
        result.duplicates += skipped
        result.dead += len(commit.dead)
        versions = window.new_versions([(a.id, a.times.last_updated) for a in alerts])
        known = self.store.known(ref.id, [version[0] for version in versions if version is not None])
        for alert, version in zip(alerts, versions, strict=True):
            if version is None:
                result.duplicates += 1
                continue
            commit.seen.append(version)
            alert.first_sight = alert.id not in known
            known.add(alert.id)
            self._route(alert, commit, outcome, result)
        return outcome

    def _normalise_page(self, ref: TenantRef, mapping: SourceMapping, raws: list[Any], commit: PageCommit) -> list[Alert]:
        ingested = self.clock()
        normalise, refusal = mapping.normalise, mapping.refusal
        alerts = []
        for raw in raws:
            try:
                alerts.append(normalise(raw, ref, ingested))
            except refusal as err:
                commit.dead.append(_dead_raw(ref, raw, f"normalise: {err}"))
            except Exception as err:  # noqa: BLE001 - a mapping bug must cost one alert, not the run
                log.exception("tenant %s: mapping failed unexpectedly", ref.label)
                commit.dead.append(_dead_raw(ref, raw, f"normalise: internal error {type(err).__name__}: {err}"))
        return alerts

    def _route(self, alert: Alert, commit: PageCommit, outcome: _PageOutcome, result: TenantResult) -> None:
        sinks = sinks_for_alert(self.routes, alert.tenant.label, alert.severity, alert.service_source)
        if not sinks:
            reason = held_back_reason(self.routes, alert.tenant.label, alert.severity, alert.service_source)
            commit.held_back[reason] = commit.held_back.get(reason, 0) + 1
            result.held_back[reason] = result.held_back.get(reason, 0) + 1
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


def _dead_raw(ref: TenantRef, raw: Any, reason: str) -> DeadLetter:
    version = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if version is not None:  # shown by `dead-letters list`; SQLite text must be valid UTF-8
        version = version.encode("utf-8", "backslashreplace").decode()
    return DeadLetter("normalise", None, ref.id, version, jsonutil.dumps_for_keeping(raw), reason[:2000])


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # One context for every pool: loading the CA store once, verification always on.
    return ssl.create_default_context(cafile=ca_file)
