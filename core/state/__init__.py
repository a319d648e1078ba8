"""The state store contract: what the pipeline and the workers keep durably, whatever the backend.

Cursors, seen versions, one outbox per sink, dead letters, sink memory and tenant health
(with the alerts each tenant's routes held back, per reason), what [notify] last mailed, and
the windows the API keeps failing (how many cycles in a row; the slices of time skipped).
`StateStore` is the interface; `core.state.sqlite.SQLiteStore` the default backend, one process
to a file; `core.state.postgresql.PostgresStore` one that instances share, splitting the tenants
by leases (`claim_leases`; a page's commit checks its lease's epoch, `PageCommit.epoch`).
A page of alerts is committed in ONE transaction (`PageCommit`): its outbox rows, its seen-marks, its dead letters and, on the window's last page, the cursor.
That transaction is the acknowledgement point: whatever it holds survives a crash.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, NamedTuple, Protocol

from core.model.schema import EventMeta

# Defender keeps alerts 180 days; an alert id unseen for longer cannot come back as an update.
KNOWN_ALERT_RETENTION = 180 * 86400


class StateLocked(Exception):
    """Another run holds the state lock."""


class StateError(Exception):
    """The state file cannot be used by this version."""


class LeaseLost(StateError):
    """A page's commit found its tenant's lease taken by another instance (a newer epoch): the
    page is not committed, and this instance's poll of the tenant ends."""


# The lease of the outbox rows of tenants nobody leases (removed from the configuration, or
# whose holder died): its holder delivers them. Not a tenant id (those are GUIDs).
ORPHANS = ("*", "outbox")


@dataclass(frozen=True)
class Lease:
    """Who holds one (tenant, source): `holder` is an instance's name (host:pid), `epoch` the
    fencing token each change of holder increments, `expires` epoch seconds of the database's clock."""

    tenant_id: str
    source: str
    holder: str | None
    epoch: int
    expires: float


class OutboxRow(NamedTuple):
    id: int
    sink: str
    meta: EventMeta
    payload: bytes  # the alert in the sink's format
    attempts: int

    @property
    def version_key(self) -> str:
        return self.meta.version_key


@dataclass(frozen=True)
class DeadLetter:
    """stage "normalise" or "encode": `payload` is the alert as the API sent it; "deliver":
    the body the sink refused, with its `meta`, so that a replay re-sends it as it was."""

    stage: str
    sink: str | None
    tenant_id: str
    version_key: str | None
    payload: bytes
    reason: str
    meta: EventMeta | None = None
    id: int = 0
    created: float = 0.0
    # The source kind that read it (`SourceKind.name`): a replay normalises it with that
    # kind's mapping. None in letters filed before it was kept: graph_alerts read those.
    source: str | None = None


@dataclass
class PageCommit:
    """Everything one page of one tenant changes, applied atomically."""

    tenant_id: str
    source: str
    seen: list[tuple[str, str]] = field(default_factory=list)  # (alert id, last update)
    outbox: list[tuple[str, EventMeta, bytes]] = field(default_factory=list)  # (sink, meta, body)
    dead: list[DeadLetter] = field(default_factory=list)
    cursor: datetime | None = None  # set on the window's last page only
    # Alerts of the page no route took, per reason: counted with their seen-marks, so that the
    # overlap re-reading them never counts them twice.
    held_back: dict[str, int] = field(default_factory=dict)
    # Slices of time the API failed even at the smallest span, (start, end, reason): later
    # windows read around them. Committed with the cursor that moves past them.
    skipped: list[tuple[datetime, datetime, str]] = field(default_factory=list)
    window_read: bool = False  # the window was read to its end: its count of failed cycles goes
    # On a full read's last page (the overlap re-read): where the next full read starts
    # (core/sources/incremental.py, next_read); kept with the time of this commit.
    reread_from: datetime | None = None
    # The epoch of the tenant's lease when its poll started (None: no leases, a SQLite state).
    # The commit checks it in its own transaction: a lease taken meanwhile refuses it (LeaseLost).
    epoch: int | None = None

    @property
    def empty(self) -> bool:
        """Nothing to write: an idle poll's page of versions seen before, its cursor unmoved."""
        return not (self.seen or self.outbox or self.dead or self.held_back or self.skipped or self.window_read
                    or self.cursor is not None or self.reread_from is not None)


@dataclass(frozen=True)
class WindowState:
    """What a poll of one (tenant, source) reads before its window: one round trip on a server."""

    cursor: datetime | None
    overlap_read: tuple[datetime, float] | None  # the last full read: where the next starts, when it was
    skipped: list[tuple[datetime, datetime]]  # slices of time skipped, oldest first
    failures: int  # cycles in a row the API failed the window itself


@dataclass(frozen=True)
class TenantStatus:
    tenant_id: str
    label: str
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    forwarded_total: int


@dataclass(frozen=True)
class SourceStatus:
    """One source of one tenant: its last success and error, as TenantStatus is for the tenant."""

    tenant_id: str
    source: str
    last_success: float | None
    last_error: str | None
    last_error_at: float | None
    forwarded_total: int


class StateStore(Protocol):
    shared: bool  # instances may share it, splitting its tenants by leases (PostgreSQL); SQLite: one process
    def cursor(self, tenant_id: str, source: str) -> datetime | None: ...
    def window_state(self, tenant_id: str, source: str) -> WindowState: ...
    def unseen(self, tenant_id: str, versions: list[tuple[str, str]]) -> set[tuple[str, str]]: ...
    def known(self, tenant_id: str, alert_ids: Iterable[str]) -> set[str]: ...
    def latest_taken(self, tenant_id: str, alert_ids: Iterable[str]) -> dict[str, str]: ...
    def commit_page(self, page: PageCommit) -> list[DeadLetter]: ...
    def prune_seen(self, tenant_id: str, older_than: datetime) -> int: ...
    def window_failures(self, tenant_id: str, source: str) -> int: ...
    def window_failed(self, tenant_id: str, source: str, reason: str) -> int: ...
    def skipped_windows(self, tenant_id: str, source: str) -> list[tuple[datetime, datetime]]: ...
    def outbox_depth(self, sink: str) -> int: ...
    def outbox_depths(self) -> dict[str, int]: ...
    def outbox_depths_by_tenant(self) -> dict[tuple[str, str], int]: ...
    def outbox_oldest(self) -> dict[str, float]: ...
    # holder: only the rows of the tenants whose leases that instance holds (None: every row).
    def outbox_batch(self, sink: str, limit: int, holder: str | None = None) -> list[OutboxRow]: ...
    # whole_batch: the ids are every row of one batch read by outbox_batch,
    # each settled OK, so a backend may delete them as the range they span (see SQLiteStore).
    def outbox_delivered(self, sink: str, row_ids: Iterable[int], whole_batch: bool = False) -> None: ...
    def outbox_failed(self, row_ids: Iterable[int], error: str) -> None: ...
    def outbox_dead(self, rows: Iterable[tuple[OutboxRow, str]]) -> None: ...
    def outbox_append(self, sink: str, rows: Iterable[tuple[EventMeta, bytes]]) -> None: ...
    def dead_letters(self, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]: ...
    def dead_letters_remove(self, ids: Iterable[int]) -> None: ...
    def dead_letter_counts(self, since: float = 0.0) -> dict[str | None, int]: ...
    def memory_get(self, sink: str, key: str) -> str | None: ...
    def memory_put(self, sink: str, items: dict[str, str]) -> None: ...
    def record_success(self, tenant_id: str, label: str, forwarded: int) -> None: ...
    def record_error(self, tenant_id: str, label: str, error: str) -> None: ...
    def tenant_statuses(self) -> dict[str, TenantStatus]: ...
    def record_source_success(self, tenant_id: str, source: str, forwarded: int) -> None: ...
    def record_source_error(self, tenant_id: str, source: str, error: str) -> None: ...
    def source_statuses(self) -> dict[tuple[str, str], SourceStatus]: ...
    def held_back_counts(self) -> dict[str, dict[str, int]]: ...
    def notified(self) -> dict[str, str]: ...
    def record_notified(self, states: dict[str, str]) -> None: ...
    def cursors(self) -> dict[tuple[str, str], datetime]: ...
    def forget_old_sink_memory(self) -> int: ...
    def reclaim_space(self) -> int: ...
    # Tenant leases, between instances sharing the store: `wanted` are (tenant, source) rows, all of a
    # tenant claimed together; returns those held after the claim, with their epochs.
    def claim_leases(self, holder: str, wanted: Iterable[tuple[str, str]], ttl: float) -> dict[tuple[str, str], int]: ...
    def release_leases(self, holder: str) -> None: ...
    def leases(self) -> list[Lease]: ...
    def ping(self) -> None: ...  # one round trip: the readiness check
    def close(self) -> None: ...


@dataclass(frozen=True)
class SinkMemory:
    """A sink's own durable key -> text notes, kept in the state file beside its outbox."""

    store: "StateStore"
    sink: str

    def get(self, key: str) -> str | None:
        return self.store.memory_get(self.sink, key)

    def put(self, items: dict[str, str]) -> None:
        self.store.memory_put(self.sink, items)


