"""One worker per sink: drain its outbox in batches, send, classify, retry.

The outbox holds each alert already in the sink's format (the pipeline encodes it when it
queues it), so a batch goes out as it was stored.

Rows leave the outbox only when the destination acknowledged them (deleted) or
refused them for good (moved to the dead letters with the destination's reason).
Transient failures back off exponentially with jitter and retry without limit.
"""
from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from connectors.base import Connector, Event, EventResult, Outcome, SinkFatal
from core.model import telemetry
from core.model.durations import backoff_delay
from core.state import OutboxRow, SinkMemory, StateError, StateStore

log = logging.getLogger("defender_forwarder.delivery")


class RetryLater(Exception):
    """Some or all of a batch must be sent again after a backoff."""


@dataclass
class SinkStats:
    delivered: int = 0
    dead: int = 0
    retries: int = 0


class SinkWorker:
    def __init__(self, connector: Connector, store: StateStore) -> None:
        self.connector = connector
        self.name = connector.name
        self.store = store
        self.config = connector.config
        self.stats = SinkStats()
        self.fatal: str | None = None
        # Since when (epoch seconds) deliveries fail, and the last reason: the run summary
        # shows them, so a sink that could not deliver never reads as ok.
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self._opened = False
        self._failures = 0
        # When rows the connector deferred (a digest not due, a rate limit) may go: loop time.
        self.deferred_until: float | None = None
        # The instance whose leased tenants' rows this worker delivers (a state shared between
        # instances); None: every row of the sink.
        self.holder: str | None = None
        connector.memory = SinkMemory(store, connector.name)
        self.wakeup = asyncio.Event()  # set by the poller when it queued rows for this sink
        self._delivered = telemetry.DELIVERED.labels(self.name)
        self._retried = telemetry.RETRIED.labels(self.name)
        self.dead_lettered = telemetry.DEAD_LETTERED.labels(self.name)  # the pipeline counts encode failures too
        self._batch_duration = telemetry.BATCH_DURATION.labels(self.name)

    @property
    def state(self) -> str:
        """ok | retrying | stopped (`paused`, for a full outbox, is the pipeline's to tell)."""
        if self.fatal is not None:
            return "stopped"
        return "retrying" if self.failing_since is not None else "ok"

    async def deliver_batch(self) -> int:
        """Send the oldest batch; returns how many rows it settled. Raises RetryLater or SinkFatal.

        The batch is read on the event loop's connection. (Reading the next batch in a thread
        while this one is in flight, on a connection of its own, was tried and measured in
        issue 19: it cost more CPU than it saved and no wall time in bench/pipeline.py.)"""
        if not self._opened:
            await self.connector.open()
            self._opened = True
        rows = self.store.outbox_batch(self.name, self.config.batch_max_events, self.holder)
        if not rows:
            return 0
        deferred = await self._send([Event(row.id, row.meta, row.payload) for row in rows],
                                    {row.id: row for row in rows})
        return len(rows) - deferred

    async def _send(self, events: list[Event], rows: dict[int, OutboxRow]) -> int:
        """Send and settle one batch; returns how many of its rows the connector deferred."""
        started = time.monotonic()
        try:
            results = await self.connector.send(events)
        except SinkFatal:
            raise
        except Exception as err:  # noqa: BLE001 - the connector's status table had no word for it: transient
            self._batch_duration.observe(time.monotonic() - started)
            self._retried.inc(len(events))
            self.store.outbox_failed(rows, f"{type(err).__name__}: {err}")
            raise RetryLater(f"{type(err).__name__}: {err}") from None
        if len(results) != len(events):
            raise SinkFatal(f"connector returned {len(results)} results for {len(events)} events")
        self._batch_duration.observe(time.monotonic() - started)
        return self._settle(events, results, rows)

    def _settle(self, events: list[Event], results: list[EventResult], rows: dict[int, OutboxRow]) -> int:
        pairs = list(zip(events, results, strict=True))
        waits = [r.after for _, r in pairs if r.outcome is Outcome.DEFER]
        self.deferred_until = asyncio.get_running_loop().time() + min(waits) if waits else None
        ok = [e.row_id for e, r in pairs if r.outcome is Outcome.OK]
        dead = [(rows[e.row_id], r.reason) for e, r in pairs if r.outcome is Outcome.PERMANENT]
        again = [(e.row_id, r.reason) for e, r in pairs if r.outcome is Outcome.RETRY]
        # Every row of the batch delivered: the store may delete them as one range of ids.
        self.store.outbox_delivered(self.name, ok, whole_batch=len(ok) == len(pairs))
        self.stats.delivered += len(ok)
        self._delivered.inc(len(ok))
        if dead:
            self.store.outbox_dead(dead)
            self.stats.dead += len(dead)
            self.dead_lettered.inc(len(dead))
            for row, reason in dead:
                # INFO: the WARNING is the count per sink, with where to look (warn_of_dead_letters).
                log.info("sink %s: alert %s of tenant %s refused for good, kept as a dead letter: %s", self.name,
                            row.meta.alert_id, row.meta.tenant_label, reason, extra=self._keys(row))
        if again:
            self._retried.inc(len(again))
            self.store.outbox_failed([row_id for row_id, _ in again], again[0][1])
            raise RetryLater(again[0][1])
        return len(waits)

    async def step(self) -> int:
        """One batch with the retry policy applied; returns rows settled (0 while backing off)."""
        try:
            settled = await self.deliver_batch()
        except (RetryLater, StateError) as err:  # StateError: the store is unreachable (a database restart)
            self.stats.retries += 1
            self.failing_since = self.failing_since or time.time()
            self.last_error = str(err)
            delay = backoff_delay(self._failures, self.config.retry_initial, self.config.retry_max)
            self._failures += 1
            log.warning("sink %s: %s; retrying in %.1fs", self.name, err, delay, extra={"sink": self.name})
            await asyncio.sleep(delay)
            return 0
        self._failures = 0
        if settled:
            self.failing_since = self.last_error = None
        return settled

    async def drain(self, deadline: float) -> bool:
        """Deliver until the outbox is empty, or holds only rows deferred past the deadline
        (True), or the deadline passes or the sink stops (False)."""
        loop = asyncio.get_running_loop()
        try:
            while loop.time() < deadline:
                if await self.step() == 0:
                    if not self.pending():
                        return True
                    if self.deferred_until is not None:
                        if self.deferred_until >= deadline:
                            return True  # they wait, by design, for a later run
                        await asyncio.sleep(max(0.0, self.deferred_until - loop.time()))
        except SinkFatal as err:
            self._stop(err)
        return False

    def pending(self) -> bool:
        """Rows of this worker's wait: the sink's, or of the tenants its instance holds."""
        if self.holder is None:
            return self.store.outbox_depth(self.name) > 0
        return bool(self.store.outbox_batch(self.name, 1, self.holder))

    async def run_forever(self) -> None:
        """Daemon mode: deliver whenever rows are waiting; sleep until polled alerts arrive."""
        try:
            while True:
                settled = await self.step()
                if self.deferred_until is not None and settled == 0:
                    pause = self.deferred_until - asyncio.get_running_loop().time()
                    await _wait(self.wakeup, max(pause, self.config.batch_timeout))
                elif settled < self.config.batch_max_events and not self._failures:
                    await _wait(self.wakeup, self.config.batch_timeout)
        except SinkFatal as err:
            self._stop(err)

    def _stop(self, err: SinkFatal) -> None:
        self.fatal = str(err)
        log.error("sink %s stopped: %s (its outbox keeps every pending event)", self.name, err,
                  extra={"sink": self.name})

    def _keys(self, row: OutboxRow) -> dict[str, str]:
        """The keys of a JSON log line about one event: a SIEM filters on them, not on the text."""
        return {"sink": self.name, "tenant": row.meta.tenant_label, "alert_id": row.meta.alert_id}

    async def close(self) -> None:
        if self._opened:
            await self.connector.close()


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    event.clear()
