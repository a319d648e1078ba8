"""One model of the forwarder's state, for every view of it: the `tenants` command (its table and
`--output json`), the daemon's `/api/status` and its status page (`core.app.status_page`) are all
built from `collect()`, so that they cannot disagree.

Built from the config and the state store; in the daemon the live sink workers add what only
they know (a sink stopped or retrying). It carries ids, counts, labels and the forwarder's own
error texts (redacted), never an alert's content.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from core.app.config import Config, TenantSettings
from core.model.secrets import REDACTOR
from core.state import SourceStatus
from core.state.sqlite import SQLiteStore

# Tenant health, worst last: the page's filter and sort use these words.
HEALTHS = ("ok", "unknown", "disabled", "degraded", "failing")
# Sink states: `unknown` outside the daemon (only a live worker knows whether it retries).
SINK_STATES = ("ok", "unknown", "paused", "retrying", "stopped")
STALE_MIN = 1800.0  # a tenant without a successful poll for this long (or 3 poll intervals) is degraded


@dataclass
class SourceRow:
    """One source of a tenant (graph_alerts, graph_incidents, mde_alerts): each has its own
    cursor and its own health, so that one refused source is told apart from those that flow."""

    source: str
    health: str  # one of HEALTHS
    health_reason: str | None  # why it is not ok, with the remedy when the forwarder knows one
    cursor: str | None  # ISO 8601 UTC
    lag_seconds: int | None
    last_success: str | None
    last_error: str | None
    forwarded_total: int  # events of this source queued for a sink, ever


@dataclass
class TenantRow:
    """A tenant: the roll-up of its sources (`per_source`). Its health is the worst of theirs,
    its reason theirs (named by source when it reads more than one); its cursor the one furthest
    behind; its last success the last cycle in which every source it read succeeded."""

    tenant: str
    tenant_id: str
    sources: list[str]
    health: str  # one of HEALTHS
    health_reason: str | None  # why it is not ok, with the remedy when the forwarder knows one
    cursor: str | None  # ISO 8601 UTC
    lag_seconds: int | None
    last_success: str | None
    last_error: str | None
    per_source: list[SourceRow] = field(default_factory=list)
    held_back: dict[str, int] = field(default_factory=dict)
    outbox: dict[str, int] = field(default_factory=dict)  # sink -> events of this tenant waiting
    # The instance (host:pid) whose lease on the tenant is current, on a state instances share;
    # None on a SQLite state (one process) or while no instance holds it.
    instance: str | None = None


@dataclass
class SinkRow:
    sink: str
    type: str
    state: str  # one of SINK_STATES
    state_reason: str | None
    outbox: int
    oldest_seconds: int | None  # age of the oldest event waiting
    dead_letters: int


@dataclass
class Status:
    generated: str
    tenants: list[TenantRow]
    sinks: list[SinkRow]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def collect(config: Config, store: SQLiteStore, workers: dict[str, Any] | None = None) -> Status:
    """The status now. `workers`: the daemon's sink workers, by sink name (None outside it)."""
    now = datetime.now(timezone.utc)
    return Status(_iso(now.timestamp()), tenant_rows(config, store, now), sink_rows(config, store, workers, now))


def tenant_rows(config: Config, store: SQLiteStore, now: datetime | None = None) -> list[TenantRow]:
    """One row per tenant of the config, by label; times ISO 8601 UTC, absent values None."""
    now = now or datetime.now(timezone.utc)
    statuses, cursors, depths = store.tenant_statuses(), store.cursors(), store.outbox_depths_by_tenant()
    by_source, held_back = store.source_statuses(), store.held_back_counts()
    holders = {lease.tenant_id: lease.holder for lease in store.leases()
               if lease.holder and lease.expires > now.timestamp()}
    stale_after = max(3 * config.forwarder.poll_interval, STALE_MIN)
    rows = []
    for label, tenant in sorted(config.tenants.items()):
        status = statuses.get(tenant.tenant_id)
        sources = list(dict.fromkeys(tenant.sources))
        # A state written before sources had a status of their own has the tenant's alone: its
        # sources share it until their first poll.
        recorded = any((tenant.tenant_id, name) in by_source for name in sources)
        per_source = [_source_row(tenant, name, by_source.get((tenant.tenant_id, name)) if recorded else status,
                                  cursors.get((tenant.tenant_id, name)), now, stale_after) for name in sources]
        health, reason = _rolled_up(per_source)
        cursor = _tenant_cursor(cursors, tenant)
        last_success = status.last_success if status else None
        rows.append(TenantRow(
            tenant=label,
            tenant_id=tenant.tenant_id,
            sources=sources,
            health=health,
            health_reason=reason,
            cursor=_iso(cursor.timestamp()) if cursor else None,
            lag_seconds=int((now - cursor).total_seconds()) if cursor else None,
            last_success=_iso(last_success) if last_success is not None else None,
            last_error=REDACTOR.redact(status.last_error) if status and status.last_error else None,
            per_source=per_source,
            held_back=dict(sorted(held_back.get(tenant.tenant_id, {}).items())),
            outbox={sink: depths.get((tenant.tenant_id, sink), 0) for sink in config.sinks},
            instance=holders.get(tenant.tenant_id),
        ))
    return rows


def _source_row(tenant: TenantSettings, source: str, status: Any, cursor: datetime | None, now: datetime,
                stale_after: float) -> SourceRow:
    """`status`: the source's SourceStatus (or, in an older state, the tenant's TenantStatus)."""
    last_success = status.last_success if status else None
    last_error = REDACTOR.redact(status.last_error) if status and status.last_error else None
    health, reason = _health(tenant, status is not None, last_success, last_error, now.timestamp(), stale_after)
    return SourceRow(
        source=source, health=health, health_reason=reason,
        cursor=_iso(cursor.timestamp()) if cursor else None,
        lag_seconds=int((now - cursor).total_seconds()) if cursor else None,
        last_success=_iso(last_success) if last_success is not None else None,
        last_error=last_error,
        forwarded_total=status.forwarded_total if isinstance(status, SourceStatus) else 0,
    )


def _rolled_up(per_source: list[SourceRow]) -> tuple[str, str | None]:
    """A tenant's health: the worst of its sources'; its reason, theirs at that health, each
    named by its source when the tenant reads more than one."""
    worst = max((row.health for row in per_source), key=HEALTHS.index, default="unknown")
    at_worst = [row for row in per_source if row.health == worst and row.health_reason]
    if not at_worst:
        return worst, None
    if len(per_source) == 1 or worst == "disabled":
        return worst, at_worst[0].health_reason
    return worst, "; ".join(f"{row.source}: {row.health_reason}" for row in at_worst)


def _health(tenant: TenantSettings, polled: bool, last_success: float | None, last_error: str | None,
            now: float, stale_after: float) -> tuple[str, str | None]:
    if not tenant.enabled:
        return "disabled", "enabled = false in its [tenants] table"
    if last_error:
        return "failing", last_error  # the forwarder's error texts end with their remedy
    if not polled or last_success is None:
        return "unknown", "not polled yet"
    silent = now - last_success
    if silent > stale_after:
        return "degraded", (f"no successful poll for {int(silent // 60)} min (more than {int(stale_after // 60)}); "
                            "is the daemon running? see its log")
    return "ok", None


def sink_rows(config: Config, store: SQLiteStore, workers: dict[str, Any] | None = None,
              now: datetime | None = None) -> list[SinkRow]:
    now_s = (now or datetime.now(timezone.utc)).timestamp()
    depths, oldest = store.outbox_depths(), store.outbox_oldest()
    dead = store.dead_letter_counts()
    rows = []
    for name, sink in config.sinks.items():
        depth = depths.get(name, 0)
        state, reason = _sink_state((workers or {}).get(name), depth, sink.max_outbox, workers is not None)
        enqueued = oldest.get(name)
        rows.append(SinkRow(
            sink=name, type=sink.type, state=state, state_reason=reason, outbox=depth,
            oldest_seconds=max(0, int(now_s - enqueued)) if enqueued is not None else None,
            dead_letters=dead.get(name, 0),
        ))
    return rows


def _sink_state(worker: Any, depth: int, max_outbox: int, live: bool) -> tuple[str, str | None]:
    if worker is not None and worker.fatal:
        return "stopped", REDACTOR.redact(worker.fatal)
    if depth >= max_outbox:
        return "paused", f"outbox full ({depth} of max_outbox {max_outbox}): polling of its tenants pauses"
    if worker is not None and worker.failing_since is not None and depth:
        since = _iso(worker.failing_since)
        return "retrying", f"since {since}: {REDACTOR.redact(worker.last_error or 'unknown')}"
    if not live:
        return ("unknown", "only the running daemon knows whether it delivers") if depth else ("ok", None)
    return "ok", None


def _tenant_cursor(cursors: dict[tuple[str, str], datetime], tenant: TenantSettings) -> datetime | None:
    """The cursor of a tenant's sources (one per kind it reads): the one furthest behind, so that
    the lag shown is the worst; none until every kind has one."""
    wanted = [(tenant.tenant_id, kind) for kind in dict.fromkeys(tenant.sources)]
    found = [cursors[key] for key in wanted if key in cursors]
    return min(found) if found and len(found) == len(wanted) else None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def age(seconds: int | None) -> str:
    """`3m`, `2d 4h`, or `-`: a lag or an age as the tables show it."""
    if seconds is None:
        return "-"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h" if seconds >= 86400 else f"{seconds // 60}m"
