"""The exposition of core.model.telemetry's registry: `/metrics` (text, or OpenMetrics when the
Accept header asks for it) and `run --once --metrics-file` (node_exporter's textfile collector).

The gauges that mirror the state are read here when scraped, from the store and the workers
of the running Forwarder, so they are never stale: outbox depth and oldest age, lag, last
success, sink state.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Iterator

from prometheus_client import write_to_textfile
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from core.app.version import version
from core.model.telemetry import BUILD_INFO, PREFIX, REGISTRY

SINK_STATES = ("ok", "retrying", "stopped", "paused")


class StateCollector(Collector):
    """The state gauges of the Forwarder being watched (none while none is)."""

    def __init__(self) -> None:
        self.forwarder: Any = None

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(PREFIX + "outbox_events", "Events waiting in the sink's outbox", labels=["sink"])
        oldest = GaugeMetricFamily(PREFIX + "outbox_oldest_age_seconds",
                                   "Age of the oldest event in the sink's outbox (0 when empty)", labels=["sink"])
        state = GaugeMetricFamily(PREFIX + "sink_state", "1 for the sink's current state, 0 for the others",
                                  labels=["sink", "state"])
        success = GaugeMetricFamily(PREFIX + "last_success_timestamp_seconds",
                                    "Unix time of the tenant's last successful poll", labels=["tenant", "source"])
        lag = GaugeMetricFamily(PREFIX + "lag_seconds", "Now minus the source's cursor", labels=["tenant", "source"])
        forwarder = self.forwarder
        if forwarder is not None:
            self._sinks(forwarder, depth, oldest, state)
            self._tenants(forwarder, success, lag)
        yield from (depth, oldest, state, success, lag)

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
        statuses = store.tenant_statuses()
        cursors = store.cursors()
        for label, readers in forwarder.readers.items():
            tenant_id = forwarder.config.tenants[label].tenant_id
            status = statuses.get(tenant_id)
            for source in readers:
                # The state records success per tenant: its sources share the time.
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


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The registry in the format the Accept header asks for: (body, content type)."""
    encode, content_type = choose_encoder(accept or "")
    return encode(REGISTRY), content_type


def write_textfile(path: Path) -> None:
    """The registry for node_exporter's textfile collector: written aside, then renamed."""
    write_to_textfile(str(path), REGISTRY)
