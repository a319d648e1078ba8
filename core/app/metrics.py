"""The exposition of core.model.telemetry's registry: `/metrics` (text, or OpenMetrics when the
Accept header asks for it) and `run --once --metrics-file` (node_exporter's textfile collector).

The gauges that mirror the state are read here when rendered, from the store and the workers
of the running Forwarder: outbox depth and oldest age, lag, last success, sink state.

Rendering costs: prometheus-client writes a sample line in 10-25 us, and a forwarder has
about 30 series a tenant, so 1,000 tenants take 0.3-0.7 s a render. A scrape therefore gets
the last rendering while it is younger than `RENDER_SHARE` times what that rendering took
(at least `MIN_AGE`): however often it is scraped, rendering takes at most 1/RENDER_SHARE of
the process's time. The state is read on the event loop (the store is not shared between
threads); the rendering runs in a thread, so the loop goes on polling meanwhile.
"""
from __future__ import annotations

import asyncio
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import write_to_textfile
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.app.version import version
from core.model.telemetry import BUILD_INFO, PREFIX, REGISTRY

SINK_STATES = ("ok", "retrying", "stopped", "paused")


MIN_AGE = 1.0  # seconds a rendering is served at least
RENDER_SHARE = 50  # ... and at most 1/50 of the time goes to rendering


class StateCollector(Collector):
    """The state gauges of the Forwarder being watched (none while none is), as read by the
    last `refresh()`: the registry's rendering may run in another thread than the store's."""

    def __init__(self) -> None:
        self.forwarder: Any = None
        self.families: list[Metric] = list(self.read())

    def refresh(self) -> None:
        self.families = list(self.read())

    def collect(self) -> Iterator[Metric]:
        yield from self.families

    def read(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(PREFIX + "outbox_events", "Events waiting in the sink's outbox", labels=["sink"])
        oldest = GaugeMetricFamily(PREFIX + "outbox_oldest_age_seconds",
                                   "Age of the oldest event in the sink's outbox (0 when empty)", labels=["sink"])
        state = GaugeMetricFamily(PREFIX + "sink_state", "1 for the sink's current state, 0 for the others",
                                  labels=["sink", "state"])
        success = GaugeMetricFamily(PREFIX + "last_success_timestamp_seconds",
                                    "Unix time of the last successful poll of the tenant's source", labels=["tenant", "source"])
        lag = GaugeMetricFamily(PREFIX + "lag_seconds", "Now minus the source's cursor", labels=["tenant", "source"])
        held = GaugeMetricFamily(PREFIX + "tenants_held", "Tenants this instance polls: every enabled one, or on a "
                                 "state instances share, those whose leases it holds")
        forwarder = self.forwarder
        if forwarder is not None:
            self._sinks(forwarder, depth, oldest, state)
            self._tenants(forwarder, success, lag)
            leases = forwarder.leases
            held.add_metric([], len(leases.held_tenants()) if leases is not None else len(forwarder.readers))
        yield from (depth, oldest, state, success, lag, held)

    @staticmethod
    def _sinks(forwarder: Any, depth: GaugeMetricFamily, oldest: GaugeMetricFamily, state: GaugeMetricFamily) -> None:
        store, now = forwarder.store, time.time()
        oldest_by_sink = store.outbox_oldest()
        for name, worker in forwarder.workers.items():
            pending = store.outbox_depth(name)
            depth.add_metric([name], pending)
            enqueued = oldest_by_sink.get(name) if pending else None
            oldest.add_metric([name], max(0.0, now - enqueued) if enqueued is not None else 0.0)
            current = worker.state
            if current == "ok" and pending >= worker.config.max_outbox:
                current = "paused"  # its tenants' polls wait for it (backpressure)
            for name_of_state in SINK_STATES:
                state.add_metric([name, name_of_state], 1 if name_of_state == current else 0)

    @staticmethod
    def _tenants(forwarder: Any, success: GaugeMetricFamily, lag: GaugeMetricFamily) -> None:
        store, now = forwarder.store, time.time()
        statuses, by_source, cursors = store.tenant_statuses(), store.source_statuses(), store.cursors()
        for label, readers in forwarder.readers.items():
            tenant_id = forwarder.config.tenants[label].tenant_id
            # A state from before sources had a status of their own has the tenant's alone (as
            # core.app.status reads it): its sources share its time until their first poll.
            recorded = any((tenant_id, source) in by_source for source in readers)
            for source in readers:
                status = by_source.get((tenant_id, source)) if recorded else statuses.get(tenant_id)
                if status is not None and status.last_success is not None:
                    success.add_metric([label, source], status.last_success)
                cursor = cursors.get((tenant_id, source))
                if cursor is not None:
                    lag.add_metric([label, source], max(0.0, now - cursor.timestamp()))


COLLECTOR = StateCollector()
REGISTRY.register(COLLECTOR)


def watch(forwarder: Any) -> None:
    """Expose the state of `forwarder` (while it runs) and the build info."""
    COLLECTOR.forwarder = forwarder
    BUILD_INFO.labels(version(), platform.python_version()).set(1)


def unwatch(forwarder: Any) -> None:
    if COLLECTOR.forwarder is forwarder:
        COLLECTOR.forwarder = None
        COLLECTOR.refresh()  # its state gauges go with it


@dataclass
class _Rendering:
    body: bytes
    at: float  # time.monotonic() when it was rendered
    took: float  # seconds the rendering took


class Exposition:
    """`/metrics`: the registry in the format the Accept header asks for, rendered at most
    once per max(MIN_AGE, RENDER_SHARE x its last rendering's time) and format."""

    def __init__(self) -> None:
        self._done: dict[str, _Rendering] = {}
        self._lock = asyncio.Lock()  # concurrent scrapes share one rendering

    async def scrape(self, accept: str | None) -> tuple[bytes, str]:
        encode, content_type = choose_encoder(accept or "")
        async with self._lock:
            last = self._done.get(content_type)
            if last is None or time.monotonic() - last.at >= max(MIN_AGE, RENDER_SHARE * last.took):
                COLLECTOR.refresh()
                started = time.monotonic()
                body = await asyncio.to_thread(encode, REGISTRY)
                last = self._done[content_type] = _Rendering(body, time.monotonic(), time.monotonic() - started)
        return last.body, content_type


def write_textfile(path: Path) -> None:
    """The registry for node_exporter's textfile collector: written aside, then renamed."""
    COLLECTOR.refresh()
    write_to_textfile(str(path), REGISTRY)
