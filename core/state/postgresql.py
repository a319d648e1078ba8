"""The PostgreSQL state store: the `core.state.StateStore` contract on a PostgreSQL database.

Selected by `[forwarder] state = "postgresql://forwarder@db.internal/defender"`. Same tables and
columns as the SQLite store (core/state/sqlite.py), so that `state copy` moves rows one to one,
and the same semantics: a page is committed in one transaction, seen-marks dedupe, one outbox
per sink read in id order, dead letters filed once by digest. Every method is one transaction
on a connection from a psycopg pool. The schema is versioned (`schema_version`) and changed only
by `migrate()` (`defender-forwarder state migrate`): a store refuses a database whose schema is
not the one it knows, rather than altering a database other instances may be using.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Iterable, Iterator

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool, PoolTimeout

from core.model.schema import EventMeta, Severity
from core.model.times import format_time, parse_time
from core.state import (
    KNOWN_ALERT_RETENTION,
    ORPHANS,
    DeadLetter,
    Lease,
    LeaseLost,
    OutboxRow,
    PageCommit,
    SourceStatus,
    StateError,
    TenantStatus,
    WindowState,
)
from core.state.rows import dead_letter as _dead_letter
from core.state.rows import digest as _digest
from core.state.rows import meta_columns as _meta_columns


@dataclass(frozen=True)
class PostgresSettings:
    """Where the store is and how to reach it. `url` names no password: it comes apart, from a
    secret reference, as do the client certificate's key and its password."""

    url: str
    password: str | None = None
    sslmode: str = "verify-full"
    sslrootcert: str | None = None
    sslcert: str | None = None
    sslkey: str | None = None
    sslpassword: str | None = None
    connect_timeout: float = 10.0
    pool_size: int = 4

    @property
    def where(self) -> str:
        """host:port, for messages (never the password)."""
        try:
            parts = conninfo_to_dict(self.url)
        except psycopg.ProgrammingError:
            return "an unreadable PostgreSQL URL"
        return f"{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}"

    def connect_kwargs(self) -> dict[str, Any]:
        """psycopg's connection keywords beside the URL."""
        kwargs: dict[str, Any] = {
            "sslmode": self.sslmode,
            # libpq takes whole seconds, and treats anything below 2 as 2.
            "connect_timeout": max(2, math.ceil(self.connect_timeout)),
            "application_name": "defender-forwarder",
        }
        for name in ("password", "sslrootcert", "sslcert", "sslkey", "sslpassword"):
            value = getattr(self, name)
            if value is not None:
                kwargs[name] = str(value)
        return kwargs


class StateUnavailable(StateError):
    """The PostgreSQL database cannot be reached or used."""


# SQLSTATE classes that mean the connection, not the statement, failed: 08 connection exception,
# 57P01-03 the server is shutting down or starting.
_CONNECTION_STATES = ("08", "57P01", "57P02", "57P03")


def _fix_for(reason: str) -> str:
    lowered = reason.lower()
    if "password" in lowered:
        return "check the password secret and the role's name in the state URL"
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        return "check the TLS settings: the server's certificate must be signed by the CA in sslrootcert and name the host"
    if "does not exist" in lowered:
        return "create the database and role, then run `defender-forwarder state migrate`"
    return "check that PostgreSQL runs there and that this host can reach it"


def _unavailable(settings: PostgresSettings, exc: BaseException) -> StateUnavailable:
    reason = " ".join(str(exc).split()) or type(exc).__name__  # libpq's lines, on one line
    if settings.password:
        reason = reason.replace(settings.password, "***")  # libpq does not echo it; be sure
    if isinstance(exc, PoolTimeout):
        reason = "no connection could be had from the pool in time (the server is down or unreachable)"
    return StateUnavailable(f"the PostgreSQL state store at {settings.where} cannot be used: {reason}; "
                            f"{_fix_for(reason)}")


def _is_connection_error(exc: psycopg.Error) -> bool:
    state = exc.sqlstate
    return state is None or state.startswith(_CONNECTION_STATES)


def _connect(settings: PostgresSettings, autocommit: bool = False) -> psycopg.Connection[Any]:
    try:
        return psycopg.connect(settings.url, autocommit=autocommit, **settings.connect_kwargs())
    except psycopg.Error as exc:
        raise _unavailable(settings, exc) from None


# Text compares bytewise (COLLATE "C") as in SQLite: cursors and seen-marks are ISO times
# compared and ordered as text, which a database's locale collation must not reorder.
_T = 'TEXT COLLATE "C"'
_SCHEMA_1 = (
    f"CREATE TABLE cursors (tenant_id {_T} NOT NULL, source {_T} NOT NULL, cursor {_T} NOT NULL, "
    "PRIMARY KEY (tenant_id, source))",
    f"CREATE TABLE seen (tenant_id {_T} NOT NULL, alert_id {_T} NOT NULL, last_update {_T} NOT NULL, "
    "PRIMARY KEY (tenant_id, alert_id, last_update))",
    f"CREATE TABLE known_alerts (tenant_id {_T} NOT NULL, alert_id {_T} NOT NULL, "
    f"first_queued DOUBLE PRECISION NOT NULL, last_update {_T}, PRIMARY KEY (tenant_id, alert_id))",
    f"CREATE TABLE outbox (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, sink {_T} NOT NULL, "
    f"tenant_id {_T} NOT NULL, tenant_label {_T} NOT NULL, alert_id {_T} NOT NULL, version_key {_T} NOT NULL, "
    "severity BIGINT NOT NULL, event_time DOUBLE PRECISION NOT NULL, payload BYTEA NOT NULL, "
    f"enqueued DOUBLE PRECISION NOT NULL, attempts BIGINT NOT NULL DEFAULT 0, last_error {_T}, "
    f"kind {_T} NOT NULL DEFAULT 'alert')",
    "CREATE INDEX outbox_by_sink ON outbox (sink, id)",
    # Kept by the statements that insert and delete outbox rows, as in SQLite: the backpressure
    # check asks before every page of every tenant.
    f"CREATE TABLE outbox_depths (sink {_T} PRIMARY KEY, depth BIGINT NOT NULL)",
    f"CREATE TABLE dead_letters (id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, stage {_T} NOT NULL, "
    f"sink {_T}, tenant_id {_T} NOT NULL, version_key {_T}, payload BYTEA NOT NULL, reason {_T} NOT NULL, "
    f"created DOUBLE PRECISION NOT NULL, digest {_T} NOT NULL UNIQUE, tenant_label {_T}, alert_id {_T}, "
    f"severity BIGINT, event_time DOUBLE PRECISION, kind {_T}, source {_T})",
    f"CREATE TABLE sink_memory (sink {_T} NOT NULL, key {_T} NOT NULL, value {_T} NOT NULL, "
    "updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (sink, key))",
    f"CREATE TABLE tenant_status (tenant_id {_T} PRIMARY KEY, label {_T} NOT NULL, last_success DOUBLE PRECISION, "
    f"last_error {_T}, last_error_at DOUBLE PRECISION, forwarded_total BIGINT NOT NULL DEFAULT 0)",
    f"CREATE TABLE held_back (tenant_id {_T} NOT NULL, reason {_T} NOT NULL, count BIGINT NOT NULL, "
    "PRIMARY KEY (tenant_id, reason))",
    f"CREATE TABLE notified (subject {_T} PRIMARY KEY, state {_T} NOT NULL, updated DOUBLE PRECISION NOT NULL)",
    f"CREATE TABLE window_failures (tenant_id {_T} NOT NULL, source {_T} NOT NULL, failures BIGINT NOT NULL, "
    f"reason {_T} NOT NULL, updated DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant_id, source))",
    f"CREATE TABLE skipped_windows (tenant_id {_T} NOT NULL, source {_T} NOT NULL, start_time {_T} NOT NULL, "
    f"end_time {_T} NOT NULL, reason {_T} NOT NULL, created DOUBLE PRECISION NOT NULL, "
    "PRIMARY KEY (tenant_id, source, start_time))",
    f"CREATE TABLE overlap_reads (tenant_id {_T} NOT NULL, source {_T} NOT NULL, reread_from {_T} NOT NULL, "
    "read_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (tenant_id, source))",
    f"CREATE TABLE source_status (tenant_id {_T} NOT NULL, source {_T} NOT NULL, last_success DOUBLE PRECISION, "
    f"last_error {_T}, last_error_at DOUBLE PRECISION, forwarded_total BIGINT NOT NULL DEFAULT 0, "
    "PRIMARY KEY (tenant_id, source))",
)

# Leases: which instance polls a (tenant, source) and delivers the tenant's outbox rows. `epoch`
# grows with each change of holder (the fencing token a page's commit checks); `expires` and
# `seen_at` are the database's clock, so instances' clocks need not agree.
_SCHEMA_2 = (
    f"CREATE TABLE leases (tenant_id {_T} NOT NULL, source {_T} NOT NULL, holder {_T}, "
    "epoch BIGINT NOT NULL DEFAULT 0, expires DOUBLE PRECISION NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, source))",
    "CREATE INDEX leases_by_holder ON leases (holder)",
    f"CREATE TABLE instances (holder {_T} PRIMARY KEY, seen_at DOUBLE PRECISION NOT NULL)",
    # A worker reads the rows of its instance's tenants: per sink, in id order, by tenant.
    "CREATE INDEX outbox_by_sink_tenant ON outbox (sink, tenant_id, id)",
)

# (version, what it does, its statements), oldest first. Append, never edit one applied
# somewhere: a database records the versions it has (schema_version) and gets only the newer.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (1, "the state tables (as SQLite's state schema 5 has them)", _SCHEMA_1),
    (2, "tenant leases between instances", _SCHEMA_2),
)
SCHEMA_VERSION: int = MIGRATIONS[-1][0]

# Every table -> its columns, in the SQLite store's order (`state copy` reads and writes these).
TABLES: dict[str, tuple[str, ...]] = {
    "cursors": ("tenant_id", "source", "cursor"),
    "seen": ("tenant_id", "alert_id", "last_update"),
    "known_alerts": ("tenant_id", "alert_id", "first_queued", "last_update"),
    "outbox": ("id", "sink", "tenant_id", "tenant_label", "alert_id", "version_key", "severity", "event_time",
               "payload", "enqueued", "attempts", "last_error", "kind"),
    "outbox_depths": ("sink", "depth"),
    "dead_letters": ("id", "stage", "sink", "tenant_id", "version_key", "payload", "reason", "created", "digest",
                     "tenant_label", "alert_id", "severity", "event_time", "kind", "source"),
    "sink_memory": ("sink", "key", "value", "updated"),
    "tenant_status": ("tenant_id", "label", "last_success", "last_error", "last_error_at", "forwarded_total"),
    "held_back": ("tenant_id", "reason", "count"),
    "notified": ("subject", "state", "updated"),
    "window_failures": ("tenant_id", "source", "failures", "reason", "updated"),
    "skipped_windows": ("tenant_id", "source", "start_time", "end_time", "reason", "created"),
    "overlap_reads": ("tenant_id", "source", "reread_from", "read_at"),
    "source_status": ("tenant_id", "source", "last_success", "last_error", "last_error_at", "forwarded_total"),
}
_IDENTITY_TABLES = ("outbox", "dead_letters")
# Who holds what now: not copied (a SQLite state has none), rebuilt by the instances' claims.
LEASE_TABLES = ("leases", "instances")

# pg_advisory_xact_lock key of migrations: two instances migrating at once take turns (the
# second then finds nothing pending). Any constant of ours; this one spells "dfmigrat".
_MIGRATION_LOCK = 0x64666D6967726174


def _version_of(db: psycopg.Connection[Any]) -> int | None:
    if db.execute("SELECT to_regclass('schema_version')").fetchone() == (None,):
        return None
    row = db.execute("SELECT max(version) FROM schema_version").fetchone()
    return row[0] if row else None


def current_version(settings: PostgresSettings) -> int | None:
    """The schema version the database has; None when it has no state schema."""
    with _connect(settings, autocommit=True) as db:
        return _version_of(db)


def migrate(settings: PostgresSettings) -> list[str]:
    """Apply the pending migrations in one transaction; their descriptions ([] when current)."""
    with _connect(settings) as db:
        with db.transaction():
            db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT PRIMARY KEY, "
                       "description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)")
            have = _version_of(db) or 0
            if have > SCHEMA_VERSION:
                raise _newer(settings, have)
            applied = []
            for version, description, statements in MIGRATIONS:
                if version <= have:
                    continue
                for statement in statements:
                    db.execute(statement)  # type: ignore[arg-type]  # our own constant SQL
                db.execute("INSERT INTO schema_version VALUES (%s, %s, %s)", (version, description, time.time()))
                applied.append(description)
    return applied


def _newer(settings: PostgresSettings, version: int) -> StateError:
    return StateError(f"the PostgreSQL state store at {settings.where} has state schema {version}, newer than this "
                      f"version of defender-forwarder knows ({SCHEMA_VERSION}); run a version that knows it")


def table_counts(settings: PostgresSettings) -> dict[str, int]:
    """Every table -> how many rows it holds."""
    with _connect(settings, autocommit=True) as db:
        _require_schema(settings, db)
        return {table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
                for table in TABLES}


def import_tables(settings: PostgresSettings, rows_by_table: dict[str, Iterable[tuple[Any, ...]]]) -> dict[str, int]:
    """Copy rows (each in TABLES' column order) into an EMPTY store, all in one transaction,
    then set the id sequences past the largest id copied. Returns the rows written per table.
    The rows may come as iterators (a large outbox need not be held in memory): COPY streams them."""
    unknown = set(rows_by_table) - set(TABLES)
    if unknown:
        raise StateError(f"no such state tables: {', '.join(sorted(unknown))}")
    written: dict[str, int] = {}
    with _connect(settings) as db:
        _require_schema(settings, db)
        with db.transaction():
            full = [t for t in TABLES if db.execute(f"SELECT EXISTS (SELECT 1 FROM {t})").fetchone() == (True,)]
            if full:
                raise StateError(f"the PostgreSQL state store at {settings.where} is not empty ({', '.join(full)} "
                                 "hold rows); copy only into a newly migrated database")
            for table, rows in rows_by_table.items():
                columns = TABLES[table]
                count = 0
                with db.cursor().copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
                        count += 1
                written[table] = count
            for table in _IDENTITY_TABLES:
                db.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                           f"coalesce(max(id), 0) + 1, false) FROM {table}")
    return written


def _require_schema(settings: PostgresSettings, db: psycopg.Connection[Any]) -> None:
    version = _version_of(db)
    db.rollback()  # leave no transaction open (the caller begins its own)
    if version is None or version < SCHEMA_VERSION:
        have = "no state schema" if version is None else f"state schema {version}"
        raise StateError(f"the PostgreSQL state store at {settings.where} has {have}, this version of "
                         f"defender-forwarder uses {SCHEMA_VERSION}: run `defender-forwarder state migrate`")
    if version > SCHEMA_VERSION:
        raise _newer(settings, version)


class PostgresStore:
    """`StateStore` on PostgreSQL: each method one transaction (or one autocommitted statement)
    on a pooled connection. Opening it refuses a database whose schema is not SCHEMA_VERSION."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        # One direct connection first: its failure says why (the pool's would only time out).
        with _connect(settings) as db:
            _require_schema(settings, db)
        self.pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            settings.url, kwargs={**settings.connect_kwargs(), "autocommit": True}, min_size=1,
            max_size=max(1, settings.pool_size), timeout=settings.connect_timeout, name="defender-forwarder-state",
            open=True)

    @contextmanager
    def _tx(self, atomic: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, in a transaction when `atomic` (committed on leaving, rolled back
        on an error). The connections are in autocommit mode, so that a single statement, atomic
        on its own, costs one round trip instead of three (BEGIN, it, COMMIT): the backpressure
        check and the status reads run often. A lost connection or server is StateUnavailable."""
        try:
            with self.pool.connection() as db:
                if atomic:
                    with db.transaction():
                        yield db
                else:
                    yield db
        except PoolTimeout as exc:
            raise _unavailable(self.settings, exc) from None
        except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
            # Two instances' lease claims crossing: PostgreSQL rolled this one back; the next tries again.
            raise StateError(f"the PostgreSQL state store at {self.settings.where}: a transaction conflicted "
                             f"with another instance's and was rolled back ({exc.sqlstate}); it is tried again") from None
        except psycopg.OperationalError as exc:
            if _is_connection_error(exc):
                # The server went away (a restart, a failover): its other pooled connections are
                # as dead as this one. Test them now, so that the next call gets a live one
                # rather than failing once for each.
                self.pool.check()
                raise _unavailable(self.settings, exc) from exc
            raise

    def _one(self, query: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> tuple[Any, ...] | None:
        """One statement, and its first row."""
        with self._tx(atomic=False) as db:
            return db.execute(query, params).fetchone()  # type: ignore[arg-type]

    def _all(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """One statement, and its rows."""
        with self._tx(atomic=False) as db:
            return db.execute(query, params).fetchall()  # type: ignore[arg-type]

    def _run(self, query: str, params: tuple[Any, ...] = ()) -> int:
        """One statement; the rows it changed."""
        with self._tx(atomic=False) as db:
            return db.execute(query, params).rowcount  # type: ignore[arg-type]

    # ---- cursors and seen versions -----------------------------------------------------------------
    def cursor(self, tenant_id: str, source: str) -> datetime | None:
        row = self._one("SELECT cursor FROM cursors WHERE tenant_id=%s AND source=%s", (tenant_id, source))
        return parse_time(row[0]) if row else None

    def cursors(self) -> dict[tuple[str, str], datetime]:
        return {(t, s): parse_time(c) for t, s, c in self._all("SELECT tenant_id, source, cursor FROM cursors")}

    def window_state(self, tenant_id: str, source: str) -> WindowState:
        """The cursor, the last full read, the skipped slices and the failed cycles of one
        (tenant, source), in one statement: every poll starts with them, and a round trip each
        was most of an idle poll's time in the store."""
        key = "WHERE tenant_id=%(t)s AND source=%(s)s"
        row = self._one(
            f"SELECT (SELECT cursor FROM cursors {key}), (SELECT reread_from FROM overlap_reads {key}), "
            f"(SELECT read_at FROM overlap_reads {key}), (SELECT failures FROM window_failures {key}), "
            f"ARRAY(SELECT start_time FROM skipped_windows {key} ORDER BY start_time), "
            f"ARRAY(SELECT end_time FROM skipped_windows {key} ORDER BY start_time)",
            {"t": tenant_id, "s": source})
        assert row is not None  # a SELECT of scalar subqueries has one row
        cursor, reread_from, read_at, failures, starts, ends = row
        return WindowState(
            cursor=parse_time(cursor) if cursor is not None else None,
            overlap_read=(parse_time(reread_from), read_at) if reread_from is not None else None,
            skipped=[(parse_time(start), parse_time(end)) for start, end in zip(starts, ends, strict=True)],
            failures=failures or 0)

    def overlap_read(self, tenant_id: str, source: str) -> tuple[datetime, float] | None:
        """The last full read of this (tenant, source): (where the next starts, when it was)."""
        row = self._one("SELECT reread_from, read_at FROM overlap_reads WHERE tenant_id=%s AND source=%s",
                        (tenant_id, source))
        return (parse_time(row[0]), row[1]) if row else None

    def unseen(self, tenant_id: str, versions: list[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = set(versions)
        if not wanted:
            return wanted
        seen = self._all("SELECT alert_id, last_update FROM seen WHERE tenant_id=%s AND alert_id = ANY(%s)",
                         (tenant_id, sorted({alert_id for alert_id, _ in wanted})))
        return wanted - {(a, u) for a, u in seen}

    def known(self, tenant_id: str, alert_ids: Iterable[str]) -> set[str]:
        """The ids of alerts of which some version was queued before."""
        ids = sorted(set(alert_ids))
        if not ids:
            return set()
        rows = self._all("SELECT alert_id FROM known_alerts WHERE tenant_id=%s AND alert_id = ANY(%s)",
                         (tenant_id, ids))
        return {alert_id for (alert_id,) in rows}

    def latest_taken(self, tenant_id: str, alert_ids: Iterable[str]) -> dict[str, str]:
        """The latest version's time taken of each alert that has one (kept 180 days)."""
        ids = sorted(set(alert_ids))
        if not ids:
            return {}
        return dict(self._all("SELECT alert_id, last_update FROM known_alerts WHERE tenant_id=%s "
                              "AND last_update IS NOT NULL AND alert_id = ANY(%s)", (tenant_id, ids)))

    def commit_page(self, page: PageCommit) -> list[DeadLetter]:
        """Queue one page in one transaction; returns its dead letters that were new."""
        now = time.time()
        with self._tx() as db, db.cursor() as cur:
            if page.epoch is not None:
                _check_lease(cur, page)
            if page.seen:
                cur.executemany("INSERT INTO seen VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                [(page.tenant_id, alert_id, last) for alert_id, last in page.seen])
                cur.executemany(
                    "INSERT INTO known_alerts VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, alert_id) DO UPDATE "
                    "SET last_update=GREATEST(coalesce(known_alerts.last_update, ''), excluded.last_update)",
                    [(page.tenant_id, alert_id, now, last) for alert_id, last in page.seen])
            _insert_outbox(cur, page.outbox, now)
            filed = _insert_dead(cur, page.dead, now)
            if page.held_back:
                cur.executemany("INSERT INTO held_back VALUES (%s, %s, %s) ON CONFLICT (tenant_id, reason) "
                                "DO UPDATE SET count=held_back.count+excluded.count",
                                [(page.tenant_id, reason, n) for reason, n in page.held_back.items()])
            if page.skipped:
                cur.executemany(
                    "INSERT INTO skipped_windows VALUES (%s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (tenant_id, source, start_time) DO UPDATE SET end_time=excluded.end_time, "
                    "reason=excluded.reason, created=excluded.created",
                    [(page.tenant_id, page.source, format_time(start), format_time(end), reason, now)
                     for start, end, reason in page.skipped])
            if page.window_read:
                cur.execute("DELETE FROM window_failures WHERE tenant_id=%s AND source=%s",
                            (page.tenant_id, page.source))
            if page.reread_from is not None:
                cur.execute("INSERT INTO overlap_reads VALUES (%s, %s, %s, %s) ON CONFLICT (tenant_id, source) "
                            "DO UPDATE SET reread_from=excluded.reread_from, read_at=excluded.read_at",
                            (page.tenant_id, page.source, format_time(page.reread_from), now))
            if page.cursor is not None:
                cur.execute("INSERT INTO cursors VALUES (%s, %s, %s) ON CONFLICT (tenant_id, source) "
                            "DO UPDATE SET cursor=GREATEST(cursors.cursor, excluded.cursor)",
                            (page.tenant_id, page.source, format_time(page.cursor)))
        return filed

    def prune_seen(self, tenant_id: str, older_than: datetime) -> int:
        with self._tx() as db:
            pruned = db.execute("DELETE FROM seen WHERE tenant_id=%s AND last_update < %s",
                                (tenant_id, format_time(older_than))).rowcount
            # No later window of the tenant starts before `older_than`: a slice ending there is behind all.
            db.execute("DELETE FROM skipped_windows WHERE tenant_id=%s AND end_time <= %s",
                       (tenant_id, format_time(older_than)))
            db.execute("DELETE FROM known_alerts WHERE tenant_id=%s AND first_queued < %s",
                       (tenant_id, time.time() - KNOWN_ALERT_RETENTION))
        return pruned

    # ---- windows the API keeps failing ---------------------------------------------------------
    def window_failures(self, tenant_id: str, source: str) -> int:
        row = self._one("SELECT failures FROM window_failures WHERE tenant_id=%s AND source=%s", (tenant_id, source))
        return row[0] if row else 0

    def window_failed(self, tenant_id: str, source: str, reason: str) -> int:
        """Count one more failed cycle of the window; returns the count."""
        row = self._one(
            "INSERT INTO window_failures VALUES (%s, %s, 1, %s, %s) ON CONFLICT (tenant_id, source) DO UPDATE "
            "SET failures=window_failures.failures+1, reason=excluded.reason, updated=excluded.updated "
            "RETURNING failures", (tenant_id, source, reason[:2000], time.time()))
        assert row is not None  # an upsert with RETURNING always returns its row
        return row[0]

    def skipped_windows(self, tenant_id: str, source: str) -> list[tuple[datetime, datetime]]:
        rows = self._all("SELECT start_time, end_time FROM skipped_windows WHERE tenant_id=%s AND source=%s "
                         "ORDER BY start_time", (tenant_id, source))
        return [(parse_time(start), parse_time(end)) for start, end in rows]

    # ---- the outboxes ------------------------------------------------------------------------------
    def outbox_depth(self, sink: str) -> int:
        row = self._one("SELECT depth FROM outbox_depths WHERE sink=%s", (sink,))
        return row[0] if row else 0

    def outbox_depths(self) -> dict[str, int]:
        return dict(self._all("SELECT sink, depth FROM outbox_depths WHERE depth > 0"))  # type: ignore[arg-type]

    def outbox_oldest(self) -> dict[str, float]:
        """sink -> when its oldest waiting event was queued (epoch seconds); sinks with none are absent."""
        with self._tx(atomic=False) as db:
            sinks = [sink for sink, in db.execute("SELECT sink FROM outbox_depths WHERE depth > 0")]
            oldest = {}
            for sink in sinks:  # the oldest row of a sink is its lowest id: one index probe each
                row = db.execute("SELECT enqueued FROM outbox WHERE sink=%s ORDER BY id LIMIT 1", (sink,)).fetchone()
                if row:
                    oldest[sink] = row[0]
        return oldest

    def outbox_depths_by_tenant(self) -> dict[tuple[str, str], int]:
        rows = self._all("SELECT tenant_id, sink, count(*) FROM outbox GROUP BY tenant_id, sink")
        return {(tenant, sink): n for tenant, sink, n in rows}

    def outbox_batch(self, sink: str, limit: int, holder: str | None = None) -> list[OutboxRow]:
        """The oldest `limit` rows of `sink`; with `holder`, of the tenants whose leases it holds
        (and, if it holds the ORPHANS lease, of the tenants nobody holds), so that one instance
        at a time delivers a tenant's rows, in order. The leases are read in the same statement."""
        columns = "id, tenant_id, tenant_label, alert_id, version_key, severity, event_time, payload, attempts, kind"
        if holder is None:
            rows = self._all(f"SELECT {columns} FROM outbox WHERE sink=%s ORDER BY id LIMIT %s", (sink, limit))
        else:
            rows = self._all(
                f"WITH now AS (SELECT {_NOW} AS t), mine AS (SELECT DISTINCT tenant_id FROM leases, now "
                "WHERE holder=%s AND expires > now.t), held AS (SELECT DISTINCT tenant_id FROM leases, now "
                "WHERE holder IS NOT NULL AND expires > now.t) "
                f"SELECT {columns} FROM outbox WHERE sink=%s AND (tenant_id IN (SELECT tenant_id FROM mine) OR "
                "(%s IN (SELECT tenant_id FROM mine) AND tenant_id NOT IN (SELECT tenant_id FROM held))) "
                "ORDER BY id LIMIT %s", (holder, sink, ORPHANS[0], limit))
        by_value = Severity.of_value
        return [
            OutboxRow(row_id, sink, EventMeta(tenant, label, alert, key, by_value(severity), when, kind), payload,
                      attempts)
            for row_id, tenant, label, alert, key, severity, when, payload, attempts, kind in rows
        ]

    def outbox_delivered(self, sink: str, row_ids: Iterable[int], whole_batch: bool = False) -> None:
        """Delete the rows `row_ids` of `sink`, delivered.

        By their ids even for a whole batch: SQLite deletes such a batch as the id range it spans,
        which is exact there because one writer at a time commits ids in increasing order. Here
        concurrent transactions take ids from a sequence and commit in any order, so a row with
        an id inside the range may become visible after the batch was read; a range would delete
        it unsent. `id = ANY(...)` on the primary key costs one statement all the same."""
        ids = list(row_ids)
        if not ids:
            return
        with self._tx() as db:
            deleted = db.execute("DELETE FROM outbox WHERE sink=%s AND id = ANY(%s)", (sink, ids)).rowcount
            _count_out(db, sink, deleted)

    def outbox_failed(self, row_ids: Iterable[int], error: str) -> None:
        ids = list(row_ids)
        if ids:
            self._run("UPDATE outbox SET attempts=attempts+1, last_error=%s WHERE id = ANY(%s)", (error[:1000], ids))

    def outbox_dead(self, rows: Iterable[tuple[OutboxRow, str]]) -> None:
        now = time.time()
        rows = list(rows)
        if not rows:
            return
        with self._tx() as db, db.cursor() as cur:
            _insert_dead(cur, [DeadLetter("deliver", r.sink, r.meta.tenant_id, r.meta.version_key, r.payload, reason,
                                          r.meta) for r, reason in rows], now)
            by_sink: dict[str, list[int]] = {}
            for row, _ in rows:
                by_sink.setdefault(row.sink, []).append(row.id)
            for sink, ids in sorted(by_sink.items()):  # the depths' rows locked in one order, as _insert_outbox does
                deleted = cur.execute("DELETE FROM outbox WHERE sink=%s AND id = ANY(%s)", (sink, ids)).rowcount
                _count_out(db, sink, deleted)

    def outbox_append(self, sink: str, rows: Iterable[tuple[EventMeta, bytes]]) -> None:
        queued = [(sink, meta, payload) for meta, payload in rows]
        if queued:
            with self._tx() as db, db.cursor() as cur:
                _insert_outbox(cur, queued, time.time())

    # ---- dead letters --------------------------------------------------------------------------------
    def dead_letters(self, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        query = ("SELECT stage, sink, tenant_id, version_key, payload, reason, id, created, "
                 "tenant_label, alert_id, severity, event_time, kind, source FROM dead_letters")
        params: tuple[Any, ...] = ()
        if sink is not None:
            query += " WHERE sink=%s"
            params = (sink,)
        return [_dead_letter(*row) for row in self._all(query + " ORDER BY id LIMIT %s", (*params, limit))]

    def dead_letter_counts(self, since: float = 0.0) -> dict[str | None, int]:
        """Dead letters per sink (None: of no sink) filed at or after `since`; "poll" slices are no alerts."""
        rows = self._all("SELECT sink, count(*) FROM dead_letters WHERE created >= %s AND stage != 'poll' "
                         "GROUP BY sink", (since,))
        return {sink: count for sink, count in rows}

    def dead_letters_remove(self, ids: Iterable[int]) -> None:
        wanted = list(ids)
        if wanted:
            self._run("DELETE FROM dead_letters WHERE id = ANY(%s)", (wanted,))

    # ---- sink memory ---------------------------------------------------------------------------------
    def memory_get(self, sink: str, key: str) -> str | None:
        row = self._one("SELECT value FROM sink_memory WHERE sink=%s AND key=%s", (sink, key))
        return row[0] if row else None

    def memory_put(self, sink: str, items: dict[str, str]) -> None:
        if not items:
            return
        now = time.time()
        with self._tx() as db, db.cursor() as cur:
            cur.executemany("INSERT INTO sink_memory VALUES (%s, %s, %s, %s) ON CONFLICT (sink, key) "
                            "DO UPDATE SET value=excluded.value, updated=excluded.updated",
                            [(sink, key, value, now) for key, value in items.items()])

    def forget_old_sink_memory(self) -> int:
        """Drop the sinks' notes untouched for longer than Defender keeps an alert. Returns how many."""
        return self._run("DELETE FROM sink_memory WHERE updated < %s", (time.time() - KNOWN_ALERT_RETENTION,))

    # ---- tenant and source status ------------------------------------------------------------------
    def record_success(self, tenant_id: str, label: str, forwarded: int) -> None:
        self._run(
            "INSERT INTO tenant_status (tenant_id, label, last_success, forwarded_total) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant_id) DO UPDATE SET label=excluded.label, last_success=excluded.last_success, "
            "last_error=NULL, forwarded_total=tenant_status.forwarded_total+excluded.forwarded_total",
            (tenant_id, label, time.time(), forwarded))

    def record_error(self, tenant_id: str, label: str, error: str) -> None:
        self._run(
            "INSERT INTO tenant_status (tenant_id, label, last_error, last_error_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant_id) DO UPDATE SET label=excluded.label, last_error=excluded.last_error, "
            "last_error_at=excluded.last_error_at", (tenant_id, label, error, time.time()))

    def tenant_statuses(self) -> dict[str, TenantStatus]:
        rows = self._all("SELECT tenant_id, label, last_success, last_error, last_error_at, forwarded_total "
                         "FROM tenant_status")
        return {row[0]: TenantStatus(*row) for row in rows}

    def record_source_success(self, tenant_id: str, source: str, forwarded: int) -> None:
        self._run(
            "INSERT INTO source_status (tenant_id, source, last_success, forwarded_total) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant_id, source) DO UPDATE SET last_success=excluded.last_success, last_error=NULL, "
            "forwarded_total=source_status.forwarded_total+excluded.forwarded_total",
            (tenant_id, source, time.time(), forwarded))

    def record_source_error(self, tenant_id: str, source: str, error: str) -> None:
        self._run(
            "INSERT INTO source_status (tenant_id, source, last_error, last_error_at) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (tenant_id, source) DO UPDATE SET last_error=excluded.last_error, "
            "last_error_at=excluded.last_error_at", (tenant_id, source, error, time.time()))

    def source_statuses(self) -> dict[tuple[str, str], SourceStatus]:
        rows = self._all("SELECT tenant_id, source, last_success, last_error, last_error_at, forwarded_total "
                         "FROM source_status")
        return {(row[0], row[1]): SourceStatus(*row) for row in rows}

    def held_back_counts(self) -> dict[str, dict[str, int]]:
        """tenant id -> reason -> how many alerts its routes held back, ever."""
        counts: dict[str, dict[str, int]] = {}
        for tenant_id, reason, n in self._all("SELECT tenant_id, reason, count FROM held_back ORDER BY reason"):
            counts.setdefault(tenant_id, {})[reason] = n
        return counts

    def notified(self) -> dict[str, str]:
        """subject -> the state last notified (core/app/notify.py)."""
        return dict(self._all("SELECT subject, state FROM notified"))  # type: ignore[arg-type]

    def record_notified(self, states: dict[str, str]) -> None:
        """Remember these states as notified, in one transaction (one message's changes)."""
        if not states:
            return
        now = time.time()
        with self._tx() as db, db.cursor() as cur:
            cur.executemany("INSERT INTO notified VALUES (%s, %s, %s) ON CONFLICT (subject) "
                            "DO UPDATE SET state=excluded.state, updated=excluded.updated",
                            [(subject, state, now) for subject, state in states.items()])

    # ---- tenant leases ------------------------------------------------------------------------------
    # Several instances on this state? (instances with the same configuration share it: they lease its tenants)
    shared = True

    def claim_leases(self, holder: str, wanted: Iterable[tuple[str, str]], ttl: float) -> dict[tuple[str, str], int]:
        """Renew this instance's leases among `wanted`, release what it holds beyond its fair
        share or no longer wants, and take free or expired ones up to that share; a tenant's
        sources go together (a tenant counts once in the share). One transaction; returns the
        (tenant, source) -> epoch held now. The fair share is ceil(tenants / live instances),
        an instance being live if it claimed within `ttl`: so when one joins, the others shed
        their excess at their next claim, and when one leaves, its leases come free."""
        sources: dict[str, set[str]] = {}
        for tenant_id, source in wanted:
            sources.setdefault(tenant_id, set()).add(source)
        with self._tx() as db, db.cursor() as cur:
            now = _heartbeat(cur, holder, ttl)
            live = cur.execute("SELECT count(*) FROM instances WHERE seen_at >= %s", (now - ttl,)).fetchone()[0]
            share = math.ceil(len(sources) / max(live, 1))
            _insert_missing(cur, sources)
            held = _renew(cur, holder, sources, now + ttl)
            if len(held) > share:  # the last ones in order: every instance sheds the same way
                _release(cur, holder, sorted(held)[share:])
                held = {tenant: held[tenant] for tenant in sorted(held)[:share]}
            if len(held) < share:
                free = [tenant for tenant in sources if tenant not in held]
                held.update(_take(cur, holder, free, sources, share - len(held), now, now + ttl))
        return {(tenant, source): epoch for tenant, epochs in held.items() for source, epoch in epochs.items()}

    def release_leases(self, holder: str) -> None:
        """Give back every lease of `holder` (a clean stop): the others take them at their next claim."""
        with self._tx() as db:
            db.execute("UPDATE leases SET holder=NULL, expires=0 WHERE holder=%s", (holder,))
            db.execute("DELETE FROM instances WHERE holder=%s", (holder,))

    def leases(self) -> list[Lease]:
        rows = self._all("SELECT tenant_id, source, holder, epoch, expires FROM leases ORDER BY tenant_id, source")
        return [Lease(*row) for row in rows]

    def ping(self) -> None:
        """One round trip to the database (a readiness check); StateUnavailable when it cannot."""
        self._one("SELECT 1")

    def reclaim_space(self) -> int:
        """Nothing to do: PostgreSQL's autovacuum makes the space of deleted (delivered) rows
        reusable on its own, and giving it back to the file system (VACUUM FULL) would lock the
        outbox against every instance. Returns 0."""
        return 0

    def close(self) -> None:
        self.pool.close()


def _insert_outbox(cur: psycopg.Cursor[Any], rows: list[tuple[str, EventMeta, bytes]], now: float) -> None:
    """Queue the rows and count them in their sinks' depths (one upsert a sink, not one a row)."""
    if not rows:
        return
    cur.executemany(
        "INSERT INTO outbox (sink, tenant_id, tenant_label, alert_id, version_key, severity, event_time, payload, "
        "enqueued, kind) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        [(sink, m.tenant_id, m.tenant_label, m.alert_id, m.version_key, int(m.severity), m.time, payload, now, m.kind)
         for sink, m, payload in rows])
    # Sorted: two transactions that count the same sinks lock their rows in the same order.
    cur.executemany("INSERT INTO outbox_depths VALUES (%s, %s) ON CONFLICT (sink) "
                    "DO UPDATE SET depth=outbox_depths.depth+excluded.depth",
                    sorted(Counter(sink for sink, _, _ in rows).items()))


def _count_out(db: psycopg.Connection[Any] | psycopg.Cursor[Any], sink: str, deleted: int) -> None:
    """Take `deleted` rows, just deleted from the outbox in this transaction, off `sink`'s depth."""
    if deleted:
        db.execute("UPDATE outbox_depths SET depth=depth-%s WHERE sink=%s", (deleted, sink))


def _insert_dead(cur: psycopg.Cursor[Any], dead: list[DeadLetter], now: float) -> list[DeadLetter]:
    """File the dead letters; those that were not filed before (the digest makes one idempotent:
    re-reading the overlap window must not file the same malformed alert twice)."""
    filed = []
    for d in dead:
        cur.execute(
            "INSERT INTO dead_letters (stage, sink, tenant_id, version_key, payload, reason, created, digest, "
            "tenant_label, alert_id, severity, event_time, kind, source) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (digest) DO NOTHING",
            (d.stage, d.sink, d.tenant_id, d.version_key, d.payload, d.reason, now, _digest(d), *_meta_columns(d.meta),
             d.source))
        if cur.rowcount:
            filed.append(d)
    return filed


# The database's clock, in epoch seconds: every instance's leases are timed by the same clock.
_NOW = "extract(epoch FROM clock_timestamp())::float8"


def _check_lease(cur: psycopg.Cursor[Any], page: PageCommit) -> None:
    """The fencing check of a page: its tenant's lease still has the epoch its poll started
    with. FOR SHARE holds the row until the commit, so no claim changes it in between."""
    row = cur.execute("SELECT epoch FROM leases WHERE tenant_id=%s AND source=%s FOR SHARE",
                      (page.tenant_id, page.source)).fetchone()
    if row is None or row[0] != page.epoch:
        now = row[0] if row else "none"
        raise LeaseLost(f"the lease of tenant {page.tenant_id} ({page.source}) was taken by another instance "
                        f"(epoch {now}, this poll's {page.epoch}); the page is not committed, its holder reads it")


def _heartbeat(cur: psycopg.Cursor[Any], holder: str, ttl: float) -> float:
    """Mark `holder` live now; forget instances silent for long. Returns the database's now."""
    now = cur.execute(f"SELECT {_NOW}").fetchone()[0]  # type: ignore[index]
    cur.execute("INSERT INTO instances VALUES (%s, %s) ON CONFLICT (holder) DO UPDATE SET seen_at=excluded.seen_at",
                (holder, now))
    cur.execute("DELETE FROM instances WHERE seen_at < %s", (now - 10 * ttl,))
    return float(now)


def _insert_missing(cur: psycopg.Cursor[Any], sources: dict[str, set[str]]) -> None:
    # In one order in every instance: two inserting the same rows at once wait, never deadlock.
    pairs = sorted((tenant, source) for tenant, names in sources.items() for source in names)
    cur.execute("INSERT INTO leases (tenant_id, source) SELECT * FROM unnest(%s::text[], %s::text[]) "
                "ON CONFLICT DO NOTHING", ([t for t, _ in pairs], [s for _, s in pairs]))


def _renew(cur: psycopg.Cursor[Any], holder: str, sources: dict[str, set[str]],
           expires: float) -> dict[str, dict[str, int]]:
    """Extend the holder's leases; release those it no longer wants. Returns the tenants it
    holds whole (every wanted source), each source -> epoch."""
    rows = cur.execute("UPDATE leases SET expires=%s WHERE holder=%s RETURNING tenant_id, source, epoch",
                       (expires, holder)).fetchall()
    mine: dict[str, dict[str, int]] = {}
    unwanted = []
    for tenant, source, epoch in rows:
        if source in sources.get(tenant, ()):
            mine.setdefault(tenant, {})[source] = epoch
        else:
            unwanted.append((tenant, source))
    if unwanted:
        cur.executemany("UPDATE leases SET holder=NULL, expires=0 WHERE tenant_id=%s AND source=%s AND holder=%s",
                        [(tenant, source, holder) for tenant, source in unwanted])
    return {tenant: epochs for tenant, epochs in mine.items() if set(epochs) == sources[tenant]}


def _release(cur: psycopg.Cursor[Any], holder: str, tenants: list[str]) -> None:
    cur.execute("UPDATE leases SET holder=NULL, expires=0 WHERE holder=%s AND tenant_id = ANY(%s)", (holder, tenants))


def _take(cur: psycopg.Cursor[Any], holder: str, tenants: list[str], sources: dict[str, set[str]], count: int,
          now: float, expires: float) -> dict[str, dict[str, int]]:
    """Take up to `count` of `tenants` whose leases are all free (no holder, expired, or ours):
    rows another instance is claiming at this moment are skipped (SKIP LOCKED), not waited for."""
    if not tenants or count <= 0:
        return {}
    rows = cur.execute(
        "SELECT tenant_id, source FROM leases WHERE tenant_id = ANY(%s) AND (holder IS NULL OR holder=%s OR "
        "expires < %s) ORDER BY tenant_id, source FOR UPDATE SKIP LOCKED", (tenants, holder, now)).fetchall()
    free: dict[str, set[str]] = {}
    for tenant, source in rows:
        free.setdefault(tenant, set()).add(source)
    takeable = [tenant for tenant in tenants if sources[tenant] <= free.get(tenant, set())][:count]
    if not takeable:
        return {}
    pairs = sorted((tenant, source) for tenant in takeable for source in free[tenant])  # the rows locked above
    taken = cur.execute(
        "UPDATE leases SET holder=%s, epoch=epoch+1, expires=%s FROM unnest(%s::text[], %s::text[]) AS t(tenant, src) "
        "WHERE leases.tenant_id=t.tenant AND leases.source=t.src RETURNING leases.tenant_id, leases.source, leases.epoch",
        (holder, expires, [t for t, _ in pairs], [s for _, s in pairs])).fetchall()
    held: dict[str, dict[str, int]] = {}
    for tenant, source, epoch in taken:
        held.setdefault(tenant, {})[source] = epoch
    return held
