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
import sqlite3
import ssl
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import httpx
from aiolimiter import AsyncLimiter

from connectors import connector_class
from core.app import metrics
from core.app.config import (
    BELOW_MIN_SEVERITY,
    KIND_NOT_ROUTED,
    NO_SERVICE_SOURCE,
    SOURCE_NOT_ROUTED,
    Config,
    RouteSettings,
    TenantSettings,
    held_back_reason,
    sinks_for_alert,
)
from core.app.leases import AppBudget, RequestBudget, TenantLeases, instance_name
from core.app.notify import Notifier
from core.delivery import SinkWorker
from core.model import jsonutil, telemetry
from core.model.neterr import connect_and_read, describe
from core.model.proxy import proxy_for
from core.model.schema import Alert, EventMeta, TenantRef
from core.model.times import format_time
from core.sources import KINDS, AlertSource, BrokenWindow, LiveContext, Page, SourceError, SourceKind
from core.sources.auth import TenantAuthError, TokenProvider, TransientAuthError, endpoints, http_session
from core.sources.graph import PAGES_IN_MEMORY
from core.sources.incremental import OverlapRead, Span, Window, next_read, prune_horizon, spans_to_read
from core.sources.replay import ReplaySource
from core.state import ORPHANS, DeadLetter, LeaseLost, PageCommit, StateError
from core.state.sqlite import SQLiteStore
from mappings import Encoder, SourceMapping, encoder, shortener, source_mapping

log = logging.getLogger("defender_forwarder.pipeline")

CONNECTIONS_PER_POOL = 5
# A window being split tries each slice this many times (with backoff), not a page's full
# budget: it failed whole for `split_after` cycles already, and a day splits ~17 levels deep.
SPLIT_ATTEMPTS = 2
# A split meeting more failing slices than this stops and holds the cursor: an API failing a
# window nearly everywhere is not answered by skipping slices of it.
MAX_SPLIT_FAILURES = 128
# A tenant's seen-marks are pruned once its horizon moved this far since the last pruning.
PRUNE_STEP = timedelta(minutes=5)

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
    refused: int = 0  # of `dead`, the alerts the mapping refused (the others failed to encode)
    paused: bool = False
    error: str | None = None
    auth_state: str | None = None  # a refused login or Graph token: what it means (telemetry.AUTH_STATES)
    lease_lost: bool = False  # another instance took the tenant during the poll: its page was not committed


@dataclass(frozen=True)
class CycleReport:
    """What one poll cycle did: the daemon's INFO line, its numbers as keys in JSON logs."""

    tenants_polled: int
    tenants_failed: int
    new_versions: int
    delivered: dict[str, int]  # per sink, since the cycle before (workers deliver between cycles)
    dead_letters: int  # kept since the cycle before: refused by a mapping, a format or a sink
    duration_s: float

    def line(self) -> str:
        delivered = ", ".join(f"{sink} {n}" for sink, n in self.delivered.items()) or "no sinks"
        return (f"cycle: {self.tenants_polled} tenants polled ({self.tenants_failed} failed), "
                f"{self.new_versions} new versions, delivered: {delivered}; dead letters {self.dead_letters}; "
                f"{self.duration_s:.1f} s")


class _Paused(Exception):
    """An outbox of the tenant's sinks is full: the window stops here, its cursor held."""


@dataclass
class _WindowRead:
    """One window of one (tenant, kind) being read: what its spans and slices share."""

    ref: TenantRef
    reader: AlertSource
    window: Window
    sinks: set[str]
    result: TenantResult
    epoch: int | None = None  # the lease's epoch at the poll's start: every commit of the window carries it
    answered: bool = False  # a slice of a split was read: the API answers, it fails some slices only
    failed_slices: int = 0
    skipped: list[tuple[Span, BrokenWindow]] = field(default_factory=list)

    @property
    def kind(self) -> SourceKind:
        return self.reader.kind

    @property
    def complete(self) -> Any:
        """A reader that adds to new records with requests of its own (AlertSource.complete)."""
        return getattr(self.reader, "complete", None)


@dataclass
class _PageOutcome:
    commit: PageCommit
    sinks: set[str] = field(default_factory=set)
    read: int = 0
    duplicates: int = 0


class Forwarder:
    """Owns the clients, sources and sink workers of one configuration."""

    def __init__(self, config: Config, store: SQLiteStore, clock: Clock = utcnow,
                 instance: str | None = None) -> None:
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
        # Pools and sessions are shared by the apps with the same CA and the same proxy.
        self._http: dict[tuple[str | None, str | None], list[httpx.AsyncClient]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._sessions: dict[tuple[str | None, str | None], Any] = {}
        self._global_bound = asyncio.Semaphore(self.settings.max_concurrent_requests)
        self._page_slots = asyncio.Semaphore(PAGES_IN_MEMORY)
        self.on_page: Callable[[str, int], None] | None = None  # progress display of backfill
        self.resend = False  # backfill --resend: versions taken before are sent again
        self.sources: set[str] | None = None  # backfill --source: the only source kind read
        # Polls may read from the cursor, the overlap re-read only every `overlap_every` (the
        # daemon); off, every poll re-reads the overlap (run --once: cron's runs are minutes apart).
        self.partial_reads = False
        self._pruned: dict[str, datetime] = {}  # tenant id -> the horizon its seen-marks were last pruned at
        self._counted: tuple[dict[str, int], int] = ({}, 0)  # sink totals at the last cycle line
        self.cycles = 0  # poll cycles completed (`/readyz` waits for the first)
        # After run_once: the sinks with events of its tenants still waiting, those deferred by
        # design (a digest not due) aside; what makes `run --once` exit 1.
        self.left_waiting: set[str] = set()
        # label -> auth state of a tenant whose last poll was refused (consent_revoked, ...): what
        # [notify] names in its subject; the status model has only the error's text.
        self.auth_failures: dict[str, str] = {}
        self.notifier = Notifier(config, store) if config.notify is not None else None
        self.app_budget = AppBudget(self.settings.app_requests_per_10s)
        # Leases when the state is shared between instances (PostgreSQL); None: every tenant is ours.
        self.leases: TenantLeases | None = None
        self.instance = instance or instance_name()  # its name as a holder of leases (host:pid)

    async def __aenter__(self) -> "Forwarder":
        self.workers = {name: self._worker(name, sink) for name, sink in self.config.sinks.items()}
        self.readers = {label: self._readers(label, t) for label, t in self.config.tenants.items() if t.enabled}
        kinds = {kind for readers in self.readers.values() for kind in readers}
        self.mappings = {kind: source_mapping(KINDS[kind].mapping) for kind in sorted(kinds)}
        if self.store.shared:
            self.leases = TenantLeases(self.store, self.instance, self.settings.lease_ttl, self._lease_keys())
            for worker in self.workers.values():
                worker.holder = self.leases.holder
        metrics.watch(self)
        return self

    def _give_back_leases(self) -> None:
        """Release this instance's leases, if it has any: the others take them at their next claim."""
        if self.leases is not None:
            with suppress(StateError):  # the database is away: unreleased, they expire after lease_ttl
                self.leases.release()

    def _notifies(self) -> bool:
        """Whether this instance sends [notify]'s mail: alone, yes; on a shared state only the
        holder of the orphans' lease does, so that a change is mailed once, not once per instance."""
        return self.leases is None or ORPHANS in self.leases.held

    def _lease_keys(self, only: str | None = None) -> list[tuple[str, str]]:
        """The leases to claim: (tenant id, source) of every tenant read (or of `only`, the one a
        backfill reads), and the orphans' lease (the outbox rows of tenants nobody holds)."""
        labels = [label for label in self.readers if only is None or label == only]
        keys = [(self.config.tenants[label].tenant_id, kind) for label in labels for kind in self.readers[label]]
        return keys if only is not None else [*keys, ORPHANS]

    def claim_leases(self) -> None:
        """Renew and take this instance's tenants; its part of the app's Graph budget follows."""
        if self.leases is not None:
            notified = self._notifies()
            self.leases.claim()
            self.app_budget.resize(self.leases.share())
            if self.notifier is not None and self._notifies() and not notified:
                # Another instance mailed until now: compare with what it mailed, not with our start.
                self.notifier.believed = self.store.notified()
            # A refused login seen here is the holder's to tell now: this instance no longer polls it.
            held = self.leases.held_tenants()
            for label in [label for label in self.auth_failures if self.config.tenants[label].tenant_id not in held]:
                del self.auth_failures[label]

    async def __aexit__(self, *_: object) -> None:
        metrics.unwatch(self)
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
        connector.proxy = self.settings.proxy
        if self.settings.proxy and connector.direct_only:
            log.warning("sink %s: %s connects directly, not through [forwarder] proxy (an HTTP proxy "
                        "carries HTTPS only)", name, sink.type)
        return SinkWorker(connector, self.store)

    def _readers(self, label: str, tenant: TenantSettings) -> dict[str, AlertSource]:
        """A reader per source kind the tenant reads; a replay tenant replays its folder for each."""
        # In the registry's order, whatever the config's: a kind that defers to another reads
        # after it in each cycle, so the other takes the records both read first.
        kinds = [kind for name, kind in KINDS.items() if name in tenant.sources]
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
            client=self._client(app.ca_file, proxy_for(endpoints(app).graph, self.settings.proxy), tenant.tenant_id),
            # One request per 60/N seconds, no burst: a tenant never exceeds its Graph budget,
            # whatever the window in which Graph counts it.
            limiter=RequestBudget(AsyncLimiter(1, 60 / self.settings.tenant_requests_per_minute), self.app_budget),
            concurrency=self._global_bound,
            page_slots=self._page_slots,
            page_size=self.settings.page_size,
            max_pages=self.settings.max_pages_per_window,
            backoff_base=self.settings.retry_initial,
        )

    def _client(self, ca_file: str | None, proxy: str | None, tenant_id: str) -> httpx.AsyncClient:
        """A shard of the HTTP connection pool, chosen by tenant.

        httpcore checks every connection of a pool on each request start and end, so one
        pool of 50 connections costs milliseconds of CPU per request; small pools keep the
        poll cycle near its latency bound (bench/poll.py measures it).
        """
        key = (ca_file, proxy)
        if key not in self._http:
            shards = math.ceil(self.settings.max_concurrent_requests / CONNECTIONS_PER_POOL)
            limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL)
            tls = _tls_context(ca_file)
            connect, read = connect_and_read(self.settings.request_timeout)
            timeout = httpx.Timeout(read, connect=connect)
            # trust_env off: proxy_for has read the environment already, NO_PROXY included.
            self._http[key] = [
                httpx.AsyncClient(verify=tls, timeout=timeout, limits=limits, proxy=proxy, trust_env=False)
                for _ in range(shards)
            ]
        pools = self._http[key]
        return pools[zlib.crc32(tenant_id.encode()) % len(pools)]

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.settings.max_concurrent_requests, "token")
        return self._executor

    def _session(self, app: Any) -> Any:
        proxy = proxy_for(endpoints(app).login, self.settings.proxy)
        key = (app.ca_file, proxy)
        if key not in self._sessions:
            self._sessions[key] = http_session(
                app.ca_file, self.settings.max_concurrent_requests, self.settings.request_timeout, proxy
            )
        return self._sessions[key]

    # ---- polling ----------------------------------------------------------
    def sinks_for(self, label: str) -> set[str]:
        return {sink for route in self.routes if route.covers(label) for sink in route.sinks}

    def _backpressured(self, sinks: set[str]) -> bool:
        return any(self.store.outbox_depth(name) >= self.workers[name].config.max_outbox for name in sinks)

    async def poll_all(self, since: datetime | None = None, only: str | None = None) -> list[TenantResult]:
        labels = [label for label in self.readers if (only is None or label == only) and self._kinds_of(label)]
        failed: list[TenantResult] = []
        if self.leases is not None:
            labels, failed = self._leased(labels, asked=since is not None or only is not None)
        return [*await asyncio.gather(*(self.poll_tenant(label, since) for label in labels)), *failed]

    def _leased(self, labels: list[str], asked: bool) -> tuple[list[str], list[TenantResult]]:
        """Of `labels`, those this instance holds; for the others, when the operator asked for
        them (a backfill), a failed result naming the instance that holds each. A plain
        `run --once` leaves them to their holders, with one line."""
        assert self.leases is not None
        tenant_of = {label: self.config.tenants[label].tenant_id for label in labels}
        held = [label for label in labels if self.leases.holds(tenant_of[label])]
        others = [label for label in labels if label not in held]
        if not others:
            return held, []
        if not asked:
            log.info("leases: %d of %d tenants are polled by other instances sharing the state", len(others),
                     len(labels))
            return held, []
        holders: dict[str, set[str]] = {}
        for lease in self.store.leases():
            if lease.holder:
                holders.setdefault(lease.tenant_id, set()).add(lease.holder)
        failed = []
        for label in others:
            who = ", ".join(sorted(holders.get(tenant_of[label], ()))) or "another instance"
            error = (f"leased to {who}, which polls it, so not read here; stop that instance (its tenants move to "
                     f"the others), or run this when no instance holds the tenant")
            log.error("tenant %s: %s", label, error, extra={"tenant": label})
            failed.append(TenantResult(label, tenant_of[label], error=error))
        return held, failed

    def _kinds_of(self, label: str) -> dict[str, AlertSource]:
        """The tenant's readers this run reads: all, or those of `sources` (backfill --source)."""
        readers = self.readers[label]
        return readers if self.sources is None else {n: r for n, r in readers.items() if n in self.sources}

    async def poll_tenant(self, label: str, since: datetime | None = None) -> TenantResult:
        """Read one window of each source kind of one tenant; `since` overrides the cursors (backfill)."""
        tenant = self.config.tenants[label]
        result = TenantResult(label, tenant.tenant_id)
        if self.leases is not None and not self.leases.holds(tenant.tenant_id):
            result.lease_lost = True  # moved to another instance before this poll started: it polls it
            return result
        readers = self._kinds_of(label)
        errors: list[str] = []
        windows: list[Window] = []  # those read to their end
        for name, reader in readers.items():
            queued = result.queued
            try:
                window, error = await self._poll_source(label, tenant, reader, result, since)
            except LeaseLost as err:
                # Not the tenant's failure: its new holder reads what this poll did not commit. INFO:
                # instances joining or shedding tenants move them mid-poll as a matter of course.
                log.info("tenant %s: %s", label, err, extra={"tenant": label})
                result.lease_lost = True
                return result
            if error is not None:
                # One line per kind that failed; a tenant of one kind keeps the plain message.
                errors.append(error if len(readers) == 1 else f"{name}: {error}")
                self.store.record_source_error(tenant.tenant_id, name, error)
            elif window is not None:  # read to its end (None: paused by a full outbox, nothing to say)
                self.store.record_source_success(tenant.tenant_id, name, result.queued - queued)
            if window is not None:
                windows.append(window)
            if result.paused:
                break
        result.error = "; ".join(errors) or None
        if result.auth_state is not None:
            self.auth_failures[label] = result.auth_state
        else:
            self.auth_failures.pop(label, None)
        if result.error:
            log.error("tenant %s: %s", label, result.error, extra={"tenant": label})
            self.store.record_error(tenant.tenant_id, label, result.error)
        elif not result.paused:
            horizon = prune_horizon(windows)
            pruned = self._pruned.get(tenant.tenant_id)
            # Not every poll: at 10 s polls, three deletes a tenant each time were a good part of
            # an idle poll. The seen-marks stay at most PRUNE_STEP longer.
            if horizon is not None and (pruned is None or horizon - pruned >= PRUNE_STEP):
                self.store.prune_seen(tenant.tenant_id, horizon)
                self._pruned[tenant.tenant_id] = horizon
            self.store.record_success(tenant.tenant_id, label, result.queued)
        return result

    async def _poll_source(self, label: str, tenant: TenantSettings, reader: AlertSource, result: TenantResult,
                           since: datetime | None) -> tuple[Window | None, str | None]:
        """Read one window of one kind of one tenant into `result`: the window if it was read to
        its end, and what failed, if anything."""
        throttles = getattr(reader, "throttles", 0)
        polls = telemetry.POLLS
        try:
            window, skipped = await self._read_window(label, tenant, reader, result, since)
        except TenantAuthError as err:
            polls.labels(label, reader.kind.name, "failed").inc()
            result.auth_state = result.auth_state or err.state
            return None, str(err)
        except (SourceError, TransientAuthError, httpx.HTTPError) as err:
            # A window that failed after Graph throttled it: throttled, not failed.
            throttled = getattr(reader, "throttles", 0) > throttles
            polls.labels(label, reader.kind.name, "throttled" if throttled else "failed").inc()
            if isinstance(err, httpx.HTTPError):
                return None, f"Graph: {describe(err)} (will retry next cycle)"
            return None, f"{err} (will retry next cycle)"
        polls.labels(label, reader.kind.name, "ok").inc()
        return window, skipped

    async def _read_window(self, label: str, tenant: TenantSettings, reader: AlertSource, result: TenantResult,
                           since: datetime | None) -> tuple[Window | None, str | None]:
        """Read one window to its end and return it, with what of it was skipped if anything;
        None if an outbox is full (`result.paused`).

        A window the API fails itself (BrokenWindow) holds its cursor, and its failed cycles are
        counted in the state; at `split_after` it is read in slices (`_split_window`). Every
        window reads around the slices skipped before. A backfill (`since`) reads across them and
        never splits: it is how an operator reads a skipped slice again."""
        kind = reader.kind
        state = self.store.window_state(tenant.tenant_id, kind.name)  # one round trip on a database server
        cursor = state.cursor
        overlap, lookback = timedelta(seconds=self.settings.overlap), timedelta(seconds=self.settings.initial_lookback)
        stored = state.overlap_read if since is None else None
        last_full = OverlapRead(*stored) if stored is not None else None
        start, full = next_read(cursor, last_full, overlap=overlap, initial_lookback=lookback, now=self.clock,
                                epoch=time.time(), partial=self.partial_reads, overlap_every=self.settings.overlap_every,
                                poll_interval=self.settings.poll_interval, since=since)
        window = Window(tenant.tenant_id, kind.version, self.store, cursor=cursor, overlap=overlap,
                        resend=self.resend and since is not None, full=full,
                        keep_from=last_full.reread_from if last_full is not None else None)
        read = _WindowRead(TenantRef(id=tenant.tenant_id, label=label), reader, window, self.sinks_for(label), result,
                           epoch=self.leases.epoch(tenant.tenant_id, kind.name) if self.leases is not None else None)
        live = since is None
        skipped = state.skipped if live else []
        failures = state.failures if live else 0
        split_after = self.settings.split_after
        try:
            if failures < split_after:
                try:
                    await self._read_spans(read, spans_to_read(start, skipped), failed_before=failures > 0)
                    return window, None
                except BrokenWindow as err:
                    if not live:
                        raise
                    failures = self.store.window_failed(tenant.tenant_id, kind.name, str(err))
                    if failures < split_after:
                        raise BrokenWindow(f"{err}; the window failed {failures} of {split_after} cycles in a row "
                                           "before it is split", err.url) from None
                    log.warning("tenant %s: %s failed %d cycles in a row (%s); reading it in slices", label,
                                kind.name, failures, err, extra={"tenant": label})
            return window, await self._split_window(read, spans_to_read(start, skipped, self.clock()))
        except _Paused:
            return None, None

    async def _read_spans(self, read: _WindowRead, spans: list[Span], *, failed_before: bool) -> None:
        """Read a window's spans in turn; the cursor goes with the last page of the last one
        (with it, a count of failed cycles goes, if there was one)."""
        for index, span in enumerate(spans):
            final = index == len(spans) - 1
            await self._read_span(read, span, final=final, window_read=final and failed_before)

    async def _read_span(self, read: _WindowRead, span: Span, *, final: bool = False, window_read: bool = False,
                         attempts: int | None = None) -> None:
        """Read one span to its end, a transaction a page; raises _Paused if an outbox is full."""
        if span.end is None and attempts is None:
            pages = read.reader.pages(span.start)  # a plain window, as every reader takes it
        else:
            pages = read.reader.pages(span.start, span.end, attempts=attempts)
        # aclosing: a window left early (backpressure, an error) gives its page slot back now.
        async with aclosing(pages):
            async for page in pages:
                if self._backpressured(read.sinks):
                    read.result.paused = True
                    log.warning("tenant %s: paused, an outbox of %s is full", read.ref.label,
                                ", ".join(sorted(read.sinks)), extra={"tenant": read.ref.label})
                    raise _Paused
                if read.complete is not None:
                    # Only the versions not seen before: the overlap re-reads most of a window.
                    await read.complete(read.window.unseen_records(page.alerts))
                last = final and page.last
                self._take_page(read, page, last=last, window_read=window_read and page.last)
                del page  # not kept while the next page waits for its request (see GraphSource.pages)

    async def _split_window(self, read: _WindowRead, spans: list[Span]) -> str | None:
        """Read a window the API failed `split_after` cycles in a row, in slices; skip (as dead
        letters) the slices it still fails at the smallest span, and move the cursor past them,
        in one transaction. Returns what was skipped, for the tenant's status, if anything."""
        await self._read_slices(read, spans)
        tenant_id, label, kind = read.ref.id, read.ref.label, read.kind
        letters = [_skipped_letter(read, span, err, self.settings.split_after) for span, err in read.skipped]
        commit = PageCommit(tenant_id=tenant_id, source=kind.name, dead=letters, cursor=read.window.high_water,
                            skipped=[(span.start, span.end, str(err)) for span, err in read.skipped if span.end],
                            window_read=True, reread_from=read.window.reread_from(True), epoch=read.epoch)
        self.store.commit_page(commit)
        if not read.skipped:
            return None
        for letter in letters:
            log.warning("tenant %s: %s", label, letter.reason, extra={"tenant": label})
        first, last = read.skipped[0][0], read.skipped[-1][0]
        plural = "" if len(read.skipped) == 1 else "s"
        return (f"skipped {len(read.skipped)} slice{plural} of time that the API fails on every read "
                f"({_moment(first.start)} to {_moment(last.end)}: {read.skipped[0][1]}); the cursor moved on. "
                f"`defender-forwarder dead-letters list` shows what was skipped; `defender-forwarder backfill "
                f"--since {_moment(first.start)} --tenant {label}` reads it again once the API serves it")

    async def _read_slices(self, read: _WindowRead, spans: list[Span]) -> None:
        """Read each span; one the API fails is halved, and its halves read the same way, down
        to the smallest span, where it is kept in `read.skipped`. A slice is skipped only once
        another has been read: an API that fails every part of a window is down, not choking
        on some records, and the cursor waits for it."""
        failing: list[tuple[Span, BrokenWindow]] = []
        for span in spans:
            try:
                await self._read_span(read, span, attempts=SPLIT_ATTEMPTS)
                read.answered = True
            except BrokenWindow as err:
                read.failed_slices += 1
                if read.failed_slices > MAX_SPLIT_FAILURES:
                    raise SourceError(f"{err}; the window failed in more than {MAX_SPLIT_FAILURES} slices, so "
                                      "none is skipped") from None
                failing.append((span, err))
        for span, err in failing:
            if span.splittable():
                await self._read_slices(read, list(span.halves()))
            elif not read.answered:
                raise SourceError(f"{err}; every part of the window failed, so none is skipped") from None
            else:
                read.skipped.append((span, err))

    def _take_page(self, read: _WindowRead, page: Page, *, last: bool, window_read: bool = False) -> None:
        """Queue one page in one transaction (the cursor with the window's last page)."""
        ref, kind, window = read.ref, read.kind, read.window
        outcome = self._process_page(ref, kind, window, page, read.result)
        outcome.commit.cursor = window.end_page(last)
        outcome.commit.reread_from = window.reread_from(last)
        outcome.commit.window_read = window_read
        outcome.commit.epoch = read.epoch
        # An idle poll's page changes nothing: no transaction for it.
        letters = [] if outcome.commit.empty else self.store.commit_page(outcome.commit)
        _count_page(ref.label, kind.name, outcome)
        for letter in letters:
            # Once per dead letter: the overlap re-reads a refused alert every cycle. (INFO: the
            # WARNING is warn_of_dead_letters' count, with where to look.)
            log.info("tenant %s: alert %s refused (%s), kept as a dead letter: %s", ref.label, letter.version_key,
                     letter.stage, letter.reason, extra={"tenant": ref.label, "alert_id": letter.version_key})
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
        alerts = self._normalise_page(ref, kind.name, fresh, commit)
        result.read += skipped + len(alerts) + len(commit.dead)
        result.duplicates += skipped
        outcome.read, outcome.duplicates = skipped + len(alerts) + len(commit.dead), skipped
        result.dead += len(commit.dead)
        result.refused += len(commit.dead)
        versions = window.new_versions([(a.id, a.times.last_updated) for a in alerts])
        known = self.store.known(ref.id, [version[0] for version in versions if version is not None])
        # The records another kind of this tenant reads too, and forwards (SourceKind.defers_to).
        deferred = known.copy() if kind.defers_to in self.readers.get(ref.label, {}) else set()
        for alert, version in zip(alerts, versions, strict=True):
            if version is None or alert.id in deferred:
                # A deferred version is not marked seen: it may be the very version (id, time)
                # the other kind is to forward.
                result.duplicates += 1
                outcome.duplicates += 1
                continue
            commit.seen.append(version)
            # By the stored id (scoped for incidents: VersionKey.stored), as `known` returns them.
            alert.first_sight = version[0] not in known
            known.add(version[0])
            self._route(alert, commit, outcome, result)
        return outcome

    def _normalise_page(self, ref: TenantRef, source: str, raws: list[Any], commit: PageCommit) -> list[Alert]:
        ingested = self.clock()
        normalise, refusal = self.mappings[source].normalise, self.mappings[source].refusal
        alerts = []
        for raw in raws:
            try:
                alerts.append(normalise(raw, ref, ingested))
            except refusal as err:
                commit.dead.append(_dead_raw(ref, source, raw, f"normalise: {err}"))
            except Exception as err:  # noqa: BLE001 - a mapping bug must cost one alert, not the run
                log.exception("tenant %s: mapping failed unexpectedly", ref.label,
                              extra={"tenant": ref.label, "alert_id": _raw_id(raw)})
                commit.dead.append(_dead_raw(ref, source, raw,
                                             f"normalise: internal error {type(err).__name__}: {err}"))
        return alerts

    def _route(self, alert: Alert, commit: PageCommit, outcome: _PageOutcome, result: TenantResult) -> None:
        sinks = sinks_for_alert(self.routes, alert.tenant.label, alert.severity, alert.service_source, alert.KIND)
        if not sinks:
            reason = held_back_reason(self.routes, alert.tenant.label, alert.severity, alert.service_source,
                                      alert.KIND)
            commit.held_back[reason] = commit.held_back.get(reason, 0) + 1
            result.held_back[reason] = result.held_back.get(reason, 0) + 1
            return
        queued, failures = encode_for_sinks(alert, sinks, self.encoders)
        commit.outbox.extend(queued)
        commit.dead.extend(failures)
        outcome.sinks.update(sink for sink, _, _ in queued)
        for letter in failures:  # a sink's own dead letter, shown in its row of the summary
            self.workers[letter.sink].stats.dead += 1
            self.workers[letter.sink].dead_lettered.inc()
        # Per tenant each alert counts once: queued if it reached a sink, else dead.
        if queued:
            result.queued += 1
        elif failures:
            result.dead += 1

    # ---- running ---------------------------------------------------------------
    async def run_once(self, since: datetime | None = None, only: str | None = None) -> list[TenantResult]:
        started = asyncio.get_running_loop().time()
        if self.leases is not None:  # one cycle as an instance among others: claim, and give back at the end
            self.leases.wanted = self._lease_keys(only)
            self.claim_leases()
        try:
            results = await self.poll_all(since, only)
            await self.drain()
            notifies = self._notifies()
            # Asked while the leases are held: given back, the rows of this run's tenants would
            # read as some other instance's, not as this run's events still waiting.
            self.left_waiting = {name for name, w in self.workers.items() if w.deferred_until is None and w.pending()}
        finally:
            self._give_back_leases()
        self._tidy_state()
        self.log_cycle(results, asyncio.get_running_loop().time() - started)
        self.cycles += 1
        if self.notifier is not None and notifies:  # cron: the same comparison, sent before the process ends
            self.notifier.after_cycle(self.workers, self.auth_failures)
            await self.notifier.flush()
        return results

    def log_cycle(self, results: list[TenantResult], seconds: float) -> CycleReport:
        """Log the cycle's one INFO line: a SIEM admin's view of a run without its tables."""
        delivered = {name: w.stats.delivered for name, w in self.workers.items()}
        dead = sum(w.stats.dead for w in self.workers.values())
        before, dead_before = self._counted
        self._counted = (delivered, dead)
        report = CycleReport(
            tenants_polled=len(results), tenants_failed=sum(1 for r in results if r.error),
            new_versions=sum(r.queued for r in results),
            delivered={name: n - before.get(name, 0) for name, n in delivered.items()},
            # A worker counts what it dead-lettered (encoding and delivery); a tenant adds the
            # alerts its mapping refused, which reached no sink.
            dead_letters=dead - dead_before + sum(r.refused for r in results),
            duration_s=round(seconds, 3),
        )
        log.info("%s", report.line(), extra=vars(report))
        telemetry.CYCLE_DURATION.observe(seconds)
        stopped = any(w.fatal for w in self.workers.values())
        telemetry.CYCLES.labels("partial" if report.tenants_failed or stopped else "ok").inc()
        return report

    async def drain(self) -> bool:
        deadline = asyncio.get_running_loop().time() + self.settings.once_deadline
        drained = await asyncio.gather(*(w.drain(deadline) for w in self.workers.values()))
        return all(drained)

    def _tidy_state(self) -> None:
        """After a cycle: what the state no longer needs goes, and its space with it."""
        self.store.forget_old_sink_memory()
        self.store.reclaim_space()

    def warn_of_dead_letters(self, since: float) -> float:
        """A WARNING per sink that filed dead letters since `since` (epoch seconds), with the
        count and the command that lists them; returns when this count ended, where the next
        one starts. Dead letters change no exit code: each was handled and is kept."""
        until = time.time()
        counts = self.store.dead_letter_counts(since)
        for sink, count in sorted(counts.items(), key=lambda item: item[0] or ""):
            plural = "" if count == 1 else "s"
            if sink is None:
                log.warning("%d alert%s could not be normalised and became dead letters of no sink; see: "
                            "defender-forwarder dead-letters list", count, plural)
            else:
                log.warning("sink %s: %d new dead letter%s, refused for good; see: defender-forwarder "
                            "dead-letters list --sink %s", sink, count, plural, sink)
        return until

    async def run_forever(self) -> None:
        """Daemon: workers deliver continuously; each tenant is polled on its own schedule, every
        poll_interval from its last poll's start (at once if that poll took longer), so a slow or
        failing tenant delays no other; housekeeping (the cycle line, dead-letter warnings,
        tidying the state, [notify]) runs once per poll_interval in a task of its own."""
        labels = self._scheduled()
        schedule = _Schedule(asyncio.Event(), set(labels))
        since = time.time()  # dead letters are counted from here: before the first poll files any
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, schedule.stop.set)
        self.claim_leases()  # before the first polls: which tenants are this instance's
        workers = [asyncio.create_task(w.run_forever()) for w in self.workers.values()]
        keeper = asyncio.create_task(self._keep_leases(), name="leases") if self.leases is not None else None
        self.partial_reads = True
        # All at once: the global request bound (max_concurrent_requests) spreads the first polls.
        tenants = [asyncio.create_task(self._poll_on_schedule(label, schedule), name=f"poll {label}")
                   for label in labels]
        if not tenants:
            schedule.first_polls.set()
        housekeeping = asyncio.create_task(self._housekeep(schedule, since), name="housekeeping")
        stopped = asyncio.create_task(schedule.stop.wait())
        try:
            # Housekeeping ends only by an error of the state store: the daemon stops with it.
            await asyncio.wait([stopped, housekeeping], return_when=asyncio.FIRST_COMPLETED)
            if housekeeping.done():
                housekeeping.result()
        finally:
            # A poll cancelled between two awaits leaves no page half-committed: a page is one
            # synchronous transaction, and the cursor moves only with a window's last page.
            for task in [*tenants, housekeeping, stopped]:
                task.cancel()
            await asyncio.gather(*tenants, housekeeping, stopped, return_exceptions=True)
            background = [*workers, *([keeper] if keeper else [])]
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._give_back_leases()  # a clean stop: the others take the tenants at their next claim
            if self.notifier is not None:
                await self.notifier.flush()  # a message under way (bounded by [notify] timeout)

    def _scheduled(self) -> list[str]:
        """The tenants the daemon polls: every enabled one with a source kind to read."""
        return [label for label in self.readers if self._kinds_of(label)]

    async def _poll_on_schedule(self, label: str, schedule: _Schedule) -> None:
        """One tenant's loop: poll, then wait for its next start, until the daemon stops."""
        interval = self.settings.poll_interval
        loop = asyncio.get_running_loop()
        tenant_id = self.config.tenants[label].tenant_id
        while not schedule.stop.is_set():
            if self.leases is not None and not self.leases.holds(tenant_id):
                schedule.not_ours(label)  # another instance polls it; wait until a claim brings tenants
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.leases.changed.wait(), interval)
                continue
            started = loop.time()
            result = await self._guarded_poll(label)
            seconds = loop.time() - started
            schedule.completed(label, result, seconds)
            # From this poll's start, never later than poll_interval after it: the jitter keeps
            # tenants (and forwarders) out of lockstep without delaying an alert beyond it.
            # A plain sleep (no task per wait, a thousand tenants wait at once): a stop cancels it.
            # Behind (pause <= 0): again at once, but after the other tasks had their turn.
            await asyncio.sleep(max(interval * random.uniform(0.95, 1.0) - seconds, 0.0))

    async def _guarded_poll(self, label: str) -> TenantResult:
        """poll_tenant, whose unexpected failure costs this poll of this tenant only: it is
        logged, counted as the tenant's error in the cycle line, and the next poll is tried."""
        tenant_id = self.config.tenants[label].tenant_id
        try:
            return await self.poll_tenant(label)
        except (sqlite3.Error, StateError, OSError, httpx.HTTPError, SourceError) as err:  # a store or network failure
            error = f"poll failed: {type(err).__name__}: {err} (will retry next poll)"
            log.error("tenant %s: %s", label, error, extra={"tenant": label})
        except Exception as err:  # noqa: BLE001 - a bug must not end the tenant's polling for good
            error = f"poll failed: internal error {type(err).__name__}: {err} (will retry next poll)"
            log.exception("tenant %s: poll failed unexpectedly", label, extra={"tenant": label})
        with suppress(sqlite3.Error, StateError):  # shown on the status page, if the store takes it
            self.store.record_error(tenant_id, label, error)
        return TenantResult(label, tenant_id, error=error)

    async def _keep_leases(self) -> None:
        """Claim every third of lease_ttl: renew what this instance holds, shed its excess when
        instances joined, take its share of what others left or gave up."""
        assert self.leases is not None
        while True:
            await asyncio.sleep(self.leases.ttl / 3)
            try:
                self.claim_leases()
            except StateError as err:  # the database is away: the leases run out, fencing keeps commits out
                log.error("leases: not renewed: %s (tried again in %.0f s)", err, self.leases.ttl / 3)

    async def _housekeep(self, schedule: _Schedule, since: float) -> None:
        """Every poll_interval: tidy the state, warn of new dead letters, log the cycle line of
        the polls completed since the last one, notify. The first runs as soon as every tenant
        was polled once (or after poll_interval, if one is slower); /readyz counts from it."""
        interval = self.settings.poll_interval
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while True:
            if not self.cycles:  # not ready yet: the first polls' end starts housekeeping at once
                with suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(schedule.first_polls.wait(), max(next_at - loop.time(), 0.0))
            else:
                await asyncio.sleep(max(next_at - loop.time(), 0.0))
            started = loop.time()
            self._tidy_state()
            since = self.warn_of_dead_letters(since)
            results, longest = schedule.take()
            self.log_cycle(results, longest)
            if schedule.first_polls.is_set():
                self.cycles += 1
            if self.notifier is not None and self._notifies():  # in a task of its own: polling never waits for it
                self.notifier.after_cycle(self.workers, self.auth_failures)
            next_at = started + interval


@dataclass
class _Schedule:
    """What the daemon's tenant loops and its housekeeping share."""

    stop: asyncio.Event
    unpolled: set[str]  # the tenants whose first poll has not completed yet
    first_polls: asyncio.Event = field(default_factory=asyncio.Event)  # set when `unpolled` empties
    results: list[TenantResult] = field(default_factory=list)  # polls completed since the cycle line
    longest: float = 0.0  # the longest of them, in seconds

    def completed(self, label: str, result: TenantResult, seconds: float) -> None:
        self.results.append(result)
        self.longest = max(self.longest, seconds)
        self.not_ours(label)

    def not_ours(self, label: str) -> None:
        """The tenant's first poll is done, or is another instance's to do."""
        if label in self.unpolled:
            self.unpolled.discard(label)
            if not self.unpolled:
                self.first_polls.set()

    def take(self) -> tuple[list[TenantResult], float]:
        """The polls completed since the last call, and the longest of them; starts a new period."""
        taken = (self.results, self.longest)
        self.results, self.longest = [], 0.0
        return taken


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
                                       jsonutil.dumps_for_keeping(alert.raw), body[:2000], source=alert.source))
    return queued, failures


def _count_page(label: str, source: str, outcome: _PageOutcome) -> None:
    """The per tenant and source counters of one committed page."""
    commit = outcome.commit
    telemetry.ALERTS_READ.labels(label, source).inc(outcome.read)
    telemetry.DUPLICATES.labels(label, source).inc(outcome.duplicates)
    telemetry.VERSIONS_NEW.labels(label, source).inc(len(commit.seen))
    normalise_dead = sum(1 for letter in commit.dead if letter.stage == "normalise")
    if normalise_dead:
        telemetry.SOURCE_DEAD.labels(label, source).inc(normalise_dead)
    for reason, count in commit.held_back.items():
        telemetry.FILTERED.labels(label, source, reason_slug(reason)).inc(count)


def reason_slug(reason: str) -> str:
    """A held-back reason as a label value: kind_not_routed, below_min_severity,
    source_not_routed, no_service_source, several joined by `_and_`, or no_route. (The kind an
    incident's reason starts with is left out: the `source` label tells it.)"""
    slugs = {KIND_NOT_ROUTED: "kind_not_routed", BELOW_MIN_SEVERITY: "below_min_severity",
             SOURCE_NOT_ROUTED: "source_not_routed", NO_SERVICE_SOURCE: "no_service_source"}
    named = [slugs[part] for part in reason.rpartition(": ")[2].split(" and ") if part in slugs]
    return "_and_".join(named) or "no_route"


def _moment(moment: datetime | None) -> str:
    """A slice's bound as `backfill --since` takes it (and as an operator reads it)."""
    return "now" if moment is None else moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _skipped_letter(read: _WindowRead, span: Span, err: BrokenWindow, split_after: int) -> DeadLetter:
    """The dead letter of a slice of time skipped: which, and why (with the request that failed,
    whose URL holds no secret: the token travels in a header)."""
    kind = read.kind
    where = {"source": kind.name, "tenant": read.ref.label, "property": kind.time_property,
             "start": format_time(span.start), "end": format_time(span.end) if span.end else None}
    reason = (f"poll: {err}, for {kind.time_property} from {_moment(span.start)} to {_moment(span.end)}, in "
              f"{split_after} cycles in a row and split to its smallest slice; skipped, the cursor moved on"
              + (f"; request: GET {err.url}" if err.url else ""))
    return DeadLetter("poll", None, read.ref.id, None, jsonutil.dumps_for_keeping({"window": where}), reason[:2000],
                      source=kind.name)


def _raw_id(raw: Any) -> str | None:
    """The id of an alert as read, for a log line about it (a refused alert may have none)."""
    alert_id = raw.get("id") if isinstance(raw, dict) else None
    return alert_id if isinstance(alert_id, str) else None


def _dead_raw(ref: TenantRef, source: str, raw: Any, reason: str) -> DeadLetter:
    """A record the mapping of `source` (a SourceKind name) refused: a replay uses that mapping again."""
    version = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
    if version is not None:  # shown by `dead-letters list`; SQLite text must be valid UTF-8
        version = version.encode("utf-8", "backslashreplace").decode()
    return DeadLetter("normalise", None, ref.id, version, jsonutil.dumps_for_keeping(raw), reason[:2000],
                      source=source)


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # One context for every pool: loading the CA store once, verification always on.
    return ssl.create_default_context(cafile=ca_file)
