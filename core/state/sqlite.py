"""The default state store: one SQLite file in WAL mode, created 0600, used from one thread.

It implements `core.state.StateStore`; see there for what a page's one transaction holds.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator

from core.model.schema import EventMeta, Severity
from core.model.times import format_time, parse_time
from core.state import (
    KNOWN_ALERT_RETENTION,
    DeadLetter,
    Lease,
    OutboxRow,
    PageCommit,
    SourceStatus,
    StateError,
    StateLocked,
    TenantStatus,
    WindowState,
)
from core.state.rows import dead_letter as _dead_letter
from core.state.rows import digest as _digest
from core.state.rows import meta_columns as _meta_columns

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, cursor TEXT NOT NULL,
    PRIMARY KEY (tenant_id, source));
CREATE TABLE IF NOT EXISTS seen (
    tenant_id TEXT NOT NULL, alert_id TEXT NOT NULL, last_update TEXT NOT NULL,
    PRIMARY KEY (tenant_id, alert_id, last_update)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS known_alerts (
    tenant_id TEXT NOT NULL, alert_id TEXT NOT NULL, first_queued REAL NOT NULL,
    last_update TEXT,  -- the latest version taken (seen's format); NULL in files migrated from schema 3
    PRIMARY KEY (tenant_id, alert_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, sink TEXT NOT NULL, tenant_id TEXT NOT NULL,
    tenant_label TEXT NOT NULL, alert_id TEXT NOT NULL, version_key TEXT NOT NULL,
    severity INTEGER NOT NULL, event_time REAL NOT NULL, payload BLOB NOT NULL, enqueued REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    kind TEXT NOT NULL DEFAULT 'alert');  -- the event kind (alert, incident): sinks keep them apart
CREATE INDEX IF NOT EXISTS outbox_by_sink ON outbox (sink, id);
-- Kept because counting a full outbox (100,000 rows) took milliseconds, and the backpressure
-- check asks before every page of every tenant. Counted by the statements that insert and
-- delete outbox rows, in their transactions (_insert_outbox, _count_out): per-row triggers did
-- it before and cost ~8 us a deleted row (issue 19). A file of those times loses its triggers
-- here; the counts they kept are exact, and are kept on from there.
CREATE TABLE IF NOT EXISTS outbox_depths (sink TEXT PRIMARY KEY, depth INTEGER NOT NULL) WITHOUT ROWID;
DROP TRIGGER IF EXISTS outbox_depth_up;
DROP TRIGGER IF EXISTS outbox_depth_down;
-- A state file from before the counts: count once. (In a file that had them, a sink with rows
-- always has its count, so this changes nothing; nothing writes the outbox between here and
-- the DROPs above, as the state lock keeps other runs out.)
INSERT OR IGNORE INTO outbox_depths SELECT sink, count(*) FROM outbox GROUP BY sink;
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT, stage TEXT NOT NULL, sink TEXT,
    tenant_id TEXT NOT NULL, version_key TEXT, payload BLOB NOT NULL, reason TEXT NOT NULL,
    created REAL NOT NULL, digest TEXT NOT NULL UNIQUE,
    tenant_label TEXT, alert_id TEXT, severity INTEGER, event_time REAL, kind TEXT,
    source TEXT);  -- the source kind read (graph_alerts, ...): a replay normalises with its mapping
CREATE TABLE IF NOT EXISTS sink_memory (
    sink TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, updated REAL NOT NULL,
    PRIMARY KEY (sink, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tenant_status (
    tenant_id TEXT PRIMARY KEY, label TEXT NOT NULL, last_success REAL, last_error TEXT,
    last_error_at REAL, forwarded_total INTEGER NOT NULL DEFAULT 0);
-- Added within schema 3, without a new version: a file from before gets it here.
CREATE TABLE IF NOT EXISTS held_back (
    tenant_id TEXT NOT NULL, reason TEXT NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, reason)) WITHOUT ROWID;
-- [notify]: the state last mailed per subject (`tenant:contoso`, `sink:siem`, `certificate:mssp`),
-- so that a restart neither mails again nor misses a change made while it was down.
CREATE TABLE IF NOT EXISTS notified (
    subject TEXT PRIMARY KEY, state TEXT NOT NULL, updated REAL NOT NULL) WITHOUT ROWID;
-- Added within schema 5. A window the API failed itself (5xx, a malformed page) in every cycle
-- so far: how many in a row, kept so that a restart does not count again from nothing; the
-- window is split at [forwarder] split_after (core/app/pipeline.py). Gone once it is read.
CREATE TABLE IF NOT EXISTS window_failures (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, failures INTEGER NOT NULL, reason TEXT NOT NULL,
    updated REAL NOT NULL, PRIMARY KEY (tenant_id, source)) WITHOUT ROWID;
-- Slices of time the API failed even split to the smallest span: skipped, each a dead letter;
-- later windows read around them (times in seen's format). Pruned with the seen-marks.
CREATE TABLE IF NOT EXISTS skipped_windows (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, start_time TEXT NOT NULL, end_time TEXT NOT NULL,
    reason TEXT NOT NULL, created REAL NOT NULL, PRIMARY KEY (tenant_id, source, start_time)) WITHOUT ROWID;
-- Added within schema 5. The last full read (overlap re-read) of each (tenant, source): where
-- the next one starts, and when it was (core/sources/incremental.py, next_read).
CREATE TABLE IF NOT EXISTS overlap_reads (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, reread_from TEXT NOT NULL, read_at REAL NOT NULL,
    PRIMARY KEY (tenant_id, source)) WITHOUT ROWID;
-- Added within schema 5. The status of each source of a tenant (tenant_status is the tenant's
-- roll-up: its last success is the last cycle in which every source it read succeeded).
CREATE TABLE IF NOT EXISTS source_status (
    tenant_id TEXT NOT NULL, source TEXT NOT NULL, last_success REAL, last_error TEXT, last_error_at REAL,
    forwarded_total INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant_id, source)) WITHOUT ROWID;
"""
# Bumped whenever a table changes shape: an older state file is refused with a clear error
# rather than misread, or migrated (MIGRATIONS). (A new table needs no bump: CREATE TABLE IF NOT
# EXISTS adds it.)
SCHEMA_VERSION = 5
# Older schema -> the statements that bring a file of it to the next one; a file older than
# the oldest key here is refused.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 4: known_alerts remembers each alert's latest version taken, so that a backfill past the
    # seen-marks' horizon does not re-send it. Rows of older files have none (a backfill re-sends those).
    3: ("ALTER TABLE known_alerts ADD COLUMN last_update TEXT",),
    # 5: events of more than one kind (alerts, incidents): each outbox row and dead letter says
    # which, because a sink sends the kinds apart (sourcetype, data stream). Older rows are alerts.
    # A dead letter also says which source read it, whose mapping a replay normalises it with;
    # older ones were all read by graph_alerts (core/app/dead_letters.py takes NULL for it).
    4: ("ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'alert'",
        "ALTER TABLE dead_letters ADD COLUMN kind TEXT",
        "ALTER TABLE dead_letters ADD COLUMN source TEXT"),
}
# Free space given back per reclaim_space() call, so that one call's pause stays short.
RECLAIM_BYTES_PER_CALL = 100 * 1024 * 1024
# The page size of a new state file. An outbox row holds an alert in a sink's format, 1.5-9 KB
# (OCSF median 5.4 KB, CEF 2.4 KB): past ~4 KB it overflows a 4 KiB page, SQLite's default, into
# a chain of pages, each read, written and freed on its own (issue 19, measured in the commit).
PAGE_SIZE = 16384
# reclaim_space() leaves free pages below this much alone: the next backlog reuses them, and
# giving them back cost 10-20 us an outbox row (issue 19), only for the file to grow again.
RECLAIM_FLOOR_BYTES = 64 * 1024 * 1024


class StateLock:
    """An exclusive advisory lock beside the state file, so two runs never share one state."""

    def __init__(self, state_path: Path) -> None:
        self.path = state_path.with_name(state_path.name + ".lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(f"another defender-forwarder run (pid {holder}) holds {self.path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SQLiteStore:
    """The default `StateStore`: one SQLite file in WAL mode, used from one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        _create_private(path)
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if not self._check_version():
            # Only a new file can take these (before WAL mode writes its header): the page
            # size, and auto_vacuum, which lets reclaim_space() shrink the file.
            self.db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against a process crash (kill -9); the cursor and the outbox
        # roll back together on power loss, so even then nothing is skipped.
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Some builds (Debian's) zero every deleted row, which doubles the writes of each
        # delivered batch; FAST overwrites only where that costs no extra I/O. The file is 0600
        # and holds no secrets, only alerts that were delivered.
        self.db.execute("PRAGMA secure_delete=FAST")
        # Past a checkpoint the WAL shrinks back to this, instead of staying at its largest.
        self.db.execute("PRAGMA journal_size_limit=67108864")
        self.db.executescript(SCHEMA)
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _check_version(self) -> bool:
        """Whether the file has tables already; migrates those of an older schema this version
        knows, and refuses any other."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self.db.execute("SELECT count(*) FROM sqlite_master WHERE type='table'").fetchone()[0]
        if has_tables and version != SCHEMA_VERSION:
            if version not in MIGRATIONS:
                self.db.close()
                raise StateError(
                    f"{self.path} was written by another version of defender-forwarder (state schema {version}, "
                    f"this version uses {SCHEMA_VERSION}); deliver its outbox with that version, or move it "
                    "aside to start afresh"
                )
            self._migrate(version)
        return bool(has_tables)

    def _migrate(self, version: int) -> None:
        """Bring a file of schema `version` to SCHEMA_VERSION, one step a transaction."""
        while version != SCHEMA_VERSION:
            with self._transaction() as db:
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
                version += 1
                db.execute(f"PRAGMA user_version={version}")

    def _transaction(self) -> "_Tx":
        return _Tx(self.db)

    def cursor(self, tenant_id: str, source: str) -> datetime | None:
        row = self.db.execute(
            "SELECT cursor FROM cursors WHERE tenant_id=? AND source=?", (tenant_id, source)
        ).fetchone()
        return parse_time(row[0]) if row else None

    def cursors(self) -> dict[tuple[str, str], datetime]:
        rows = self.db.execute("SELECT tenant_id, source, cursor FROM cursors")
        return {(t, s): parse_time(c) for t, s, c in rows}

    def window_state(self, tenant_id: str, source: str) -> WindowState:
        """The four reads a poll starts with (in-process statements: no round trip to save)."""
        return WindowState(self.cursor(tenant_id, source), self.overlap_read(tenant_id, source),
                           self.skipped_windows(tenant_id, source), self.window_failures(tenant_id, source))

    def overlap_read(self, tenant_id: str, source: str) -> tuple[datetime, float] | None:
        """The last full read of this (tenant, source): (where the next starts, when it was)."""
        row = self.db.execute("SELECT reread_from, read_at FROM overlap_reads WHERE tenant_id=? AND source=?",
                              (tenant_id, source)).fetchone()
        return (parse_time(row[0]), row[1]) if row else None

    def unseen(self, tenant_id: str, versions: list[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = set(versions)
        seen = self._rows_of_alerts(
            "SELECT alert_id, last_update FROM seen WHERE tenant_id=? AND alert_id IN ({marks})",
            tenant_id, (alert_id for alert_id, _ in wanted),
        )
        return wanted - set(seen)

    def known(self, tenant_id: str, alert_ids: Iterable[str]) -> set[str]:
        """The ids of alerts of which some version was queued before."""
        rows = self._rows_of_alerts(
            "SELECT alert_id FROM known_alerts WHERE tenant_id=? AND alert_id IN ({marks})", tenant_id, alert_ids
        )
        return {alert_id for (alert_id,) in rows}

    def latest_taken(self, tenant_id: str, alert_ids: Iterable[str]) -> dict[str, str]:
        """For those of the alerts of which a version was taken before: the latest such version's
        time (seen's format). Kept 180 days, past the seen-marks' horizon."""
        rows = self._rows_of_alerts(
            "SELECT alert_id, last_update FROM known_alerts WHERE tenant_id=? AND last_update IS NOT NULL "
            "AND alert_id IN ({marks})", tenant_id, alert_ids
        )
        return dict(rows)

    def _rows_of_alerts(self, query: str, tenant_id: str, alert_ids: Iterable[str]) -> Iterator[tuple[str, ...]]:
        """Run `query` for one tenant's alert ids, in chunks below SQLite's parameter limit."""
        for chunk in _chunks(sorted(set(alert_ids)), 500):
            yield from self.db.execute(query.format(marks=",".join("?" * len(chunk))), (tenant_id, *chunk))

    def commit_page(self, page: PageCommit) -> list[DeadLetter]:
        """Queue one page in one transaction; returns its dead letters that were new."""
        now = time.time()
        with self._transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO seen VALUES (?, ?, ?)",
                [(page.tenant_id, alert_id, last) for alert_id, last in page.seen],
            )
            db.executemany(
                "INSERT INTO known_alerts VALUES (?, ?, ?, ?) ON CONFLICT (tenant_id, alert_id) "
                "DO UPDATE SET last_update=max(coalesce(last_update, ''), excluded.last_update)",
                [(page.tenant_id, alert_id, now, last) for alert_id, last in page.seen],
            )
            _insert_outbox(db, page.outbox, now)
            filed = _insert_dead(db, page.dead, now)
            db.executemany(
                "INSERT INTO held_back VALUES (?, ?, ?) ON CONFLICT (tenant_id, reason) "
                "DO UPDATE SET count=count+excluded.count",
                [(page.tenant_id, reason, count) for reason, count in page.held_back.items()],
            )
            db.executemany(
                "INSERT OR REPLACE INTO skipped_windows VALUES (?, ?, ?, ?, ?, ?)",
                [(page.tenant_id, page.source, format_time(start), format_time(end), reason, now)
                 for start, end, reason in page.skipped],
            )
            if page.window_read:
                db.execute("DELETE FROM window_failures WHERE tenant_id=? AND source=?", (page.tenant_id, page.source))
            if page.reread_from is not None:
                db.execute("INSERT OR REPLACE INTO overlap_reads VALUES (?, ?, ?, ?)",
                           (page.tenant_id, page.source, format_time(page.reread_from), now))
            if page.cursor is not None:
                db.execute(
                    "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT (tenant_id, source) "
                    "DO UPDATE SET cursor=max(cursor, excluded.cursor)",
                    (page.tenant_id, page.source, format_time(page.cursor)),
                )
        return filed

    def prune_seen(self, tenant_id: str, older_than: datetime) -> int:
        cur = self.db.execute(
            "DELETE FROM seen WHERE tenant_id=? AND last_update < ?", (tenant_id, format_time(older_than))
        )
        # No later window of the tenant starts before `older_than`: a slice ending there is behind all.
        self.db.execute("DELETE FROM skipped_windows WHERE tenant_id=? AND end_time <= ?",
                        (tenant_id, format_time(older_than)))
        self.db.execute(
            "DELETE FROM known_alerts WHERE tenant_id=? AND first_queued < ?",
            (tenant_id, time.time() - KNOWN_ALERT_RETENTION),
        )
        return cur.rowcount

    def window_failures(self, tenant_id: str, source: str) -> int:
        """How many cycles in a row the API failed this (tenant, source)'s window itself."""
        row = self.db.execute("SELECT failures FROM window_failures WHERE tenant_id=? AND source=?",
                              (tenant_id, source)).fetchone()
        return row[0] if row else 0

    def window_failed(self, tenant_id: str, source: str, reason: str) -> int:
        """Count one more failed cycle of the window; returns the count."""
        return self.db.execute(
            "INSERT INTO window_failures VALUES (?, ?, 1, ?, ?) ON CONFLICT (tenant_id, source) "
            "DO UPDATE SET failures=failures+1, reason=excluded.reason, updated=excluded.updated RETURNING failures",
            (tenant_id, source, reason[:2000], time.time()),
        ).fetchall()[0][0]  # fetched to the end: the statement, and its write, finish here

    def skipped_windows(self, tenant_id: str, source: str) -> list[tuple[datetime, datetime]]:
        """The slices of time skipped in this (tenant, source), (start, end), oldest first."""
        rows = self.db.execute("SELECT start_time, end_time FROM skipped_windows WHERE tenant_id=? AND source=? "
                               "ORDER BY start_time", (tenant_id, source))
        return [(parse_time(start), parse_time(end)) for start, end in rows]

    def outbox_depth(self, sink: str) -> int:
        row = self.db.execute("SELECT depth FROM outbox_depths WHERE sink=?", (sink,)).fetchone()
        return row[0] if row else 0

    def outbox_depths(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT sink, depth FROM outbox_depths WHERE depth > 0"))

    def outbox_oldest(self) -> dict[str, float]:
        """sink -> when its oldest waiting event was queued (epoch seconds); sinks with none are absent."""
        sinks = [sink for sink, in self.db.execute("SELECT sink FROM outbox_depths WHERE depth > 0")]
        oldest = {}
        for sink in sinks:  # the oldest row of a sink is its lowest id: one index probe each
            row = self.db.execute("SELECT enqueued FROM outbox WHERE sink=? ORDER BY id LIMIT 1", (sink,)).fetchone()
            if row:
                oldest[sink] = row[0]
        return oldest

    def outbox_depths_by_tenant(self) -> dict[tuple[str, str], int]:
        rows = self.db.execute("SELECT tenant_id, sink, count(*) FROM outbox GROUP BY tenant_id, sink")
        return {(tenant, sink): n for tenant, sink, n in rows}

    def outbox_batch(self, sink: str, limit: int, holder: str | None = None) -> list[OutboxRow]:
        """The oldest `limit` rows of `sink`. (`holder` is for stores shared by instances: one
        process has a SQLite file, and every tenant.)"""
        rows = self.db.execute(
            "SELECT id, tenant_id, tenant_label, alert_id, version_key, severity, event_time, payload, attempts, kind "
            "FROM outbox WHERE sink=? ORDER BY id LIMIT ?",
            (sink, limit),
        )
        by_value = Severity.of_value
        return [
            OutboxRow(row_id, sink, EventMeta(tenant, label, alert, key, by_value(severity), when, kind), payload, attempts)
            for row_id, tenant, label, alert, key, severity, when, payload, attempts, kind in rows
        ]

    def outbox_delivered(self, sink: str, row_ids: Iterable[int], whole_batch: bool = False) -> None:
        """Delete the rows `row_ids` of `sink`, delivered. `whole_batch`: they are every row of one
        batch read by `outbox_batch`, each settled OK.

        Such a batch goes by range, `id BETWEEN first AND last`, one index range instead of one
        probe per id, and that is exact: the batch was read as the sink's rows in id order, up
        to `limit`, from a snapshot that holds every committed row
        with an id below its largest (writers take turns and AUTOINCREMENT ids only grow, so a
        transaction commits only ids above those committed before it); rows queued since get
        ids above any ever used, so above `last`; and rows of the sink leave only through its
        one worker, which settles a batch before the next. So the rows of the sink between first
        and last are the batch's, no more, no fewer."""
        ids = list(row_ids)
        if not ids:
            return
        with self._transaction() as db:
            if whole_batch:
                deleted = db.execute("DELETE FROM outbox WHERE sink=? AND id BETWEEN ? AND ?",
                                     (sink, min(ids), max(ids))).rowcount
            else:
                deleted = 0
                for chunk in _chunks(ids, 500):  # one statement per chunk: a batch is the hot path
                    deleted += db.execute(f"DELETE FROM outbox WHERE sink=? AND id IN ({','.join('?' * len(chunk))})",
                                          (sink, *chunk)).rowcount
            _count_out(db, sink, deleted)

    def outbox_failed(self, row_ids: Iterable[int], error: str) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE outbox SET attempts=attempts+1, last_error=? WHERE id=?",
                [(error[:1000], i) for i in row_ids],
            )

    def outbox_dead(self, rows: Iterable[tuple[OutboxRow, str]]) -> None:
        now = time.time()
        rows = list(rows)
        with self._transaction() as db:
            _insert_dead(
                db,
                [DeadLetter("deliver", r.sink, r.meta.tenant_id, r.meta.version_key, r.payload, reason, r.meta)
                 for r, reason in rows],
                now,
            )
            by_sink: dict[str, list[int]] = {}
            for row, _ in rows:
                by_sink.setdefault(row.sink, []).append(row.id)
            for sink, ids in by_sink.items():
                _count_out(db, sink, db.executemany("DELETE FROM outbox WHERE sink=? AND id=?",
                                                    [(sink, i) for i in ids]).rowcount)

    def outbox_append(self, sink: str, rows: Iterable[tuple[EventMeta, bytes]]) -> None:
        with self._transaction() as db:
            _insert_outbox(db, [(sink, meta, payload) for meta, payload in rows], time.time())

    def dead_letters(self, sink: str | None = None, limit: int = 1000) -> list[DeadLetter]:
        query = ("SELECT stage, sink, tenant_id, version_key, payload, reason, id, created, "
                 "tenant_label, alert_id, severity, event_time, kind, source FROM dead_letters")
        params: tuple[object, ...] = ()
        if sink is not None:
            query += " WHERE sink=?"
            params = (sink,)
        rows = self.db.execute(query + " ORDER BY id LIMIT ?", (*params, limit))
        return [_dead_letter(*row) for row in rows]

    def dead_letter_counts(self, since: float = 0.0) -> dict[str | None, int]:
        """How many dead letters each sink (None: the normalisation stage, of no sink) holds
        that were filed at or after `since` (epoch seconds). A slice of time skipped (stage
        "poll") is no alert: the tenant's status and its own warning tell of it."""
        rows = self.db.execute("SELECT sink, count(*) FROM dead_letters WHERE created >= ? AND stage != 'poll' "
                               "GROUP BY sink", (since,))
        return {sink: count for sink, count in rows}

    def dead_letters_remove(self, ids: Iterable[int]) -> None:
        with self._transaction() as db:
            db.executemany("DELETE FROM dead_letters WHERE id=?", [(i,) for i in ids])

    def memory_get(self, sink: str, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM sink_memory WHERE sink=? AND key=?", (sink, key)).fetchone()
        return row[0] if row else None

    def memory_put(self, sink: str, items: dict[str, str]) -> None:
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT INTO sink_memory VALUES (?, ?, ?, ?) ON CONFLICT (sink, key) "
                           "DO UPDATE SET value=excluded.value, updated=excluded.updated",
                           [(sink, key, value, now) for key, value in items.items()])

    def record_success(self, tenant_id: str, label: str, forwarded: int) -> None:
        self.db.execute(
            "INSERT INTO tenant_status (tenant_id, label, last_success, forwarded_total) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id) DO UPDATE SET label=excluded.label, last_success=excluded.last_success, "
            "last_error=NULL, forwarded_total=forwarded_total+excluded.forwarded_total",
            (tenant_id, label, time.time(), forwarded),
        )

    def record_error(self, tenant_id: str, label: str, error: str) -> None:
        self.db.execute(
            "INSERT INTO tenant_status (tenant_id, label, last_error, last_error_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id) DO UPDATE SET label=excluded.label, last_error=excluded.last_error, "
            "last_error_at=excluded.last_error_at",
            (tenant_id, label, error, time.time()),
        )

    def tenant_statuses(self) -> dict[str, TenantStatus]:
        rows = self.db.execute(
            "SELECT tenant_id, label, last_success, last_error, last_error_at, forwarded_total FROM tenant_status"
        )
        return {row[0]: TenantStatus(*row) for row in rows}

    def record_source_success(self, tenant_id: str, source: str, forwarded: int) -> None:
        self.db.execute(
            "INSERT INTO source_status (tenant_id, source, last_success, forwarded_total) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, source) DO UPDATE SET last_success=excluded.last_success, last_error=NULL, "
            "forwarded_total=forwarded_total+excluded.forwarded_total",
            (tenant_id, source, time.time(), forwarded),
        )

    def record_source_error(self, tenant_id: str, source: str, error: str) -> None:
        self.db.execute(
            "INSERT INTO source_status (tenant_id, source, last_error, last_error_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (tenant_id, source) DO UPDATE SET last_error=excluded.last_error, "
            "last_error_at=excluded.last_error_at",
            (tenant_id, source, error, time.time()),
        )

    def source_statuses(self) -> dict[tuple[str, str], SourceStatus]:
        """(tenant id, source) -> the status of that source of that tenant."""
        rows = self.db.execute("SELECT tenant_id, source, last_success, last_error, last_error_at, forwarded_total "
                               "FROM source_status")
        return {(row[0], row[1]): SourceStatus(*row) for row in rows}

    def held_back_counts(self) -> dict[str, dict[str, int]]:
        """tenant id -> reason -> how many alerts its routes held back, ever."""
        counts: dict[str, dict[str, int]] = {}
        for tenant_id, reason, count in self.db.execute("SELECT tenant_id, reason, count FROM held_back ORDER BY reason"):
            counts.setdefault(tenant_id, {})[reason] = count
        return counts

    def notified(self) -> dict[str, str]:
        """subject -> the state last notified (core/app/notify.py)."""
        return dict(self.db.execute("SELECT subject, state FROM notified").fetchall())

    def record_notified(self, states: dict[str, str]) -> None:
        """Remember these states as notified, in one transaction (one message's changes)."""
        now = time.time()
        with self._transaction() as db:
            db.executemany("INSERT INTO notified VALUES (?, ?, ?) ON CONFLICT (subject) "
                           "DO UPDATE SET state=excluded.state, updated=excluded.updated",
                           [(subject, state, now) for subject, state in states.items()])

    def forget_old_sink_memory(self) -> int:
        """Drop the sinks' notes untouched for longer than Defender keeps an alert (what the
        e-mail sink mailed of each alert): no alert they speak of can come back. Returns how many."""
        cur = self.db.execute("DELETE FROM sink_memory WHERE updated < ?", (time.time() - KNOWN_ALERT_RETENTION,))
        return cur.rowcount

    def reclaim_space(self) -> int:
        """Give free pages (those of a delivered backlog) back to the file system once they are
        both a quarter of the file and at least RECLAIM_FLOOR_BYTES (64 MiB), at most
        RECLAIM_BYTES_PER_CALL (100 MiB) a call: an outage must not leave the file at its peak
        size for ever, and a run that queues and delivers a smaller backlog must not pay to
        shrink the file that the next run grows again. So a drained file keeps at most 64 MiB or a quarter
        of itself free, whichever is more. Returns the pages given back (none for a file made
        before auto_vacuum was set)."""
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        total = self.db.execute("PRAGMA page_count").fetchone()[0]
        page_size = self.db.execute("PRAGMA page_size").fetchone()[0]
        if free * 4 < total or free * page_size < RECLAIM_FLOOR_BYTES:
            return 0
        # executescript steps the pragma to its end; execute() would free a single page.
        self.db.executescript(f"PRAGMA incremental_vacuum({RECLAIM_BYTES_PER_CALL // page_size});")
        self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        return free - self.db.execute("PRAGMA freelist_count").fetchone()[0]

    # ---- tenant leases: one process holds the file (its lock), so it holds every tenant ----------
    # Several instances on this state? (one process holds the file (its lock): every tenant is its own)
    shared = False

    def claim_leases(self, holder: str, wanted: Iterable[tuple[str, str]], ttl: float) -> dict[tuple[str, str], int]:
        return {key: 0 for key in wanted}

    def release_leases(self, holder: str) -> None:
        return None

    def leases(self) -> list[Lease]:
        return []

    def ping(self) -> None:
        """One statement on the file (a readiness check, as PostgresStore.ping is one on the server)."""
        self.db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        self.db.close()


class _Tx:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not exc_type:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:
            # SQLite has already rolled back after some errors (a full disk): a second
            # ROLLBACK would fail and hide the error that matters.
            self.db.execute("ROLLBACK")



def _insert_outbox(db: sqlite3.Connection, rows: list[tuple[str, EventMeta, bytes]], now: float) -> None:
    """Queue the rows and count them in their sinks' depths (one upsert a sink, not one a row)."""
    db.executemany(
        "INSERT INTO outbox (sink, tenant_id, tenant_label, alert_id, version_key, severity, event_time, payload, "
        "enqueued, kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(sink, m.tenant_id, m.tenant_label, m.alert_id, m.version_key, int(m.severity), m.time, payload, now, m.kind)
         for sink, m, payload in rows],
    )
    db.executemany(
        "INSERT INTO outbox_depths VALUES (?, ?) ON CONFLICT (sink) DO UPDATE SET depth=depth+excluded.depth",
        Counter(sink for sink, _, _ in rows).items(),
    )


def _count_out(db: sqlite3.Connection, sink: str, deleted: int) -> None:
    """Take `deleted` rows, just deleted from the outbox in this transaction, off `sink`'s depth."""
    if deleted:
        db.execute("UPDATE outbox_depths SET depth=depth-? WHERE sink=?", (deleted, sink))


def _insert_dead(db: sqlite3.Connection, dead: list[DeadLetter], now: float) -> list[DeadLetter]:
    """File the dead letters; those that were not filed before."""
    # The digest makes a dead letter idempotent: re-reading the overlap window must not
    # file the same malformed alert twice.
    filed = []
    for d in dead:
        cursor = db.execute(
            "INSERT OR IGNORE INTO dead_letters (stage, sink, tenant_id, version_key, payload, reason, created, "
            "digest, tenant_label, alert_id, severity, event_time, kind, source) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (d.stage, d.sink, d.tenant_id, d.version_key, d.payload, d.reason, now, _digest(d), *_meta_columns(d.meta),
             d.source),
        )
        if cursor.rowcount:
            filed.append(d)
    return filed


def _create_private(path: Path) -> None:
    """Create the state file 0600 before SQLite opens it (SQLite gives -wal/-shm the same mode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
