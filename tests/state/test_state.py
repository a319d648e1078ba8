"""The state store contract on both backends (SQLite, PostgreSQL: the `store` fixture): atomic
pages, cursor monotony, dedupe marks, outbox, depths, dead letters, sink memory. The tests of
the SQLite file itself (its mode, WAL, lock, page size, space, schema migrations of old files)
take `sqlite_store` or a path: SQLite only."""
from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import psycopg
import pytest

from core.model.schema import EventMeta, Severity
from core.model.times import format_time
from core.state import KNOWN_ALERT_RETENTION, DeadLetter, PageCommit, StateError
from core.state.sqlite import PAGE_SIZE, SCHEMA, SCHEMA_VERSION, SQLiteStore, StateLock

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(open_store: Callable[[], Any]) -> Any:
    """A store of each backend (tests/conftest.py, open_store)."""
    return open_store()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLiteStore]:
    """For the tests of the SQLite file itself."""
    s = SQLiteStore(tmp_path / "state" / "forwarder.db")
    yield s
    s.close()


def _sql(store: Any, query: str, params: tuple[Any, ...] = ()) -> None:
    """Run one statement (qmark style) on the store's database, whichever backend."""
    if isinstance(store, SQLiteStore):
        store.db.execute(query, params)
    else:
        with store.pool.connection() as db:
            db.execute(query.replace("?", "%s"), params)


def _meta(alert_id: str, last_update: str) -> EventMeta:
    return EventMeta("t1", "acme", alert_id, f"t1/{alert_id}/{last_update}", Severity.high, T0.timestamp())


def _page(cursor: datetime | None = None, n: int = 2, sink: str = "archive") -> PageCommit:
    versions = [(f"a{i}", format_time(T0 + timedelta(minutes=i))) for i in range(n)]
    return PageCommit(
        tenant_id="t1",
        source="graph_alerts",
        seen=versions,
        outbox=[(sink, _meta(a, u), b"{}") for a, u in versions],
        cursor=cursor,
    )


def test_state_file_is_private_and_in_wal_mode(sqlite_store: SQLiteStore) -> None:
    # SQLite only: the file's mode and journal.
    store = sqlite_store
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o600
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_page_commit_is_atomic(store: Any) -> None:
    bad = _page(cursor=T0)
    bad.outbox.append(("archive", _meta("x", "y"), None))  # NOT NULL violation after the other rows
    with pytest.raises((sqlite3.IntegrityError, psycopg.IntegrityError)):
        store.commit_page(bad)
    assert store.outbox_depth("archive") == 0
    assert store.cursor("t1", "graph_alerts") is None
    assert store.unseen("t1", [("a0", format_time(T0))]) == {("a0", format_time(T0))}


def test_cursor_only_moves_forward(store: Any) -> None:
    store.commit_page(_page(cursor=T0 + timedelta(hours=1)))
    store.commit_page(PageCommit("t1", "graph_alerts", cursor=T0))
    assert store.cursor("t1", "graph_alerts") == T0 + timedelta(hours=1)


def test_unseen_and_prune(store: Any) -> None:
    store.commit_page(_page(n=3))
    later = ("a1", format_time(T0 + timedelta(minutes=5)))
    assert store.unseen("t1", [("a0", format_time(T0)), later]) == {later}
    assert store.unseen("other-tenant", [("a0", format_time(T0))]) == {("a0", format_time(T0))}
    assert store.prune_seen("t1", T0 + timedelta(minutes=2)) == 2
    assert store.unseen("t1", [("a0", format_time(T0))]) == {("a0", format_time(T0))}


def test_outbox_order_failures_and_dead_letters(store: Any) -> None:
    store.commit_page(_page(n=3))
    rows = store.outbox_batch("archive", 10)
    assert [r.version_key.split("/")[1] for r in rows] == ["a0", "a1", "a2"]
    store.outbox_failed([rows[0].id], "timeout")
    store.outbox_dead([(rows[1], "rejected: mapping error")])
    store.outbox_delivered("archive", [rows[2].id])
    remaining = store.outbox_batch("archive", 10)
    assert [(r.id, r.attempts) for r in remaining] == [(rows[0].id, 1)]
    dead = store.dead_letters()
    assert [(d.stage, d.sink, d.reason) for d in dead] == [("deliver", "archive", "rejected: mapping error")]


def test_outbox_rows_and_delivery_dead_letters_keep_the_event_meta(store: Any) -> None:
    store.commit_page(_page(n=2))
    first, second = store.outbox_batch("archive", 10)
    assert first.meta == _meta("a0", format_time(T0)) and first.payload == b"{}"
    store.outbox_dead([(second, "refused")])
    (letter,) = store.dead_letters()
    assert letter.meta == second.meta and letter.version_key == second.meta.version_key

    store.outbox_append("archive", [(letter.meta, letter.payload)])
    assert [row.meta for row in store.outbox_batch("archive", 10)] == [first.meta, second.meta]


def test_state_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    # SQLite only: a file's user_version (PostgreSQL's versions: tests/state/test_postgresql.py).
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY, sink TEXT, payload BLOB)")
    old.commit()
    old.close()
    with pytest.raises(StateError, match="another version of defender-forwarder"):
        SQLiteStore(path)


def test_a_schema_3_file_is_migrated_keeping_what_it_holds(tmp_path: Path) -> None:
    """Schema 4 added known_alerts.last_update; a schema 3 file is migrated in place."""
    # SQLite only: a state file of an older schema.
    path = tmp_path / "v3.db"
    store = SQLiteStore(path)
    store.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", "2026-11-01T00:00:00.000000Z")],
                                 cursor=datetime(2026, 11, 1, tzinfo=timezone.utc)))
    store.close()
    v3 = sqlite3.connect(path)  # the file as schema 3 wrote it
    v3.execute("ALTER TABLE known_alerts DROP COLUMN last_update")
    v3.execute("ALTER TABLE outbox DROP COLUMN kind")
    v3.execute("ALTER TABLE dead_letters DROP COLUMN kind")
    v3.execute("ALTER TABLE dead_letters DROP COLUMN source")
    v3.execute("PRAGMA user_version=3")
    v3.commit()
    v3.close()

    store = SQLiteStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
    assert store.known("t1", ["a1"]) == {"a1"}
    assert store.cursor("t1", "graph_alerts") == datetime(2026, 11, 1, tzinfo=timezone.utc)
    assert store.latest_taken("t1", ["a1"]) == {}  # schema 3 did not keep it: a backfill re-sends a1
    store.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", "2026-11-02T00:00:00.000000Z")]))
    assert store.latest_taken("t1", ["a1"]) == {"a1": "2026-11-02T00:00:00.000000Z"}
    store.close()


def test_a_schema_4_file_is_migrated_its_outbox_rows_being_alerts(tmp_path: Path) -> None:
    """Schema 5 added the event kind to the outbox and the dead letters, and the source to the
    dead letters (a letter from before has none: core/app/dead_letters.py reads it as graph_alerts)."""
    # SQLite only: a state file of an older schema.
    path = tmp_path / "v4.db"
    store = SQLiteStore(path)
    store.outbox_append("siem", [(_meta("a1", "2026-11-01"), b"alert one")])
    store.commit_page(PageCommit("t1", "graph_alerts", dead=[
        DeadLetter("normalise", None, "t1", None, b'{"id": "old"}', "normalise: lastUpdateDateTime: missing")]))
    store.close()
    v4 = sqlite3.connect(path)  # the file as schema 4 wrote it
    v4.execute("ALTER TABLE outbox DROP COLUMN kind")
    v4.execute("ALTER TABLE dead_letters DROP COLUMN kind")
    v4.execute("ALTER TABLE dead_letters DROP COLUMN source")
    v4.execute("PRAGMA user_version=4")
    v4.commit()
    v4.close()

    store = SQLiteStore(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    incident = _meta("i7", "2026-11-02")._replace(kind="incident")
    store.outbox_append("siem", [(incident, b"incident seven")])
    rows = store.outbox_batch("siem", 10)
    assert [(row.payload, row.meta.kind) for row in rows] == [(b"alert one", "alert"), (b"incident seven", "incident")]
    store.outbox_dead([(rows[1], "refused")])
    [letter] = store.dead_letters("siem")
    assert letter.meta is not None and letter.meta.kind == "incident"
    store.commit_page(PageCommit("t1", "graph_incidents", dead=[
        DeadLetter("normalise", None, "t1", None, b'{"id": "7"}', "normalise: priorityScore: bad",
                   source="graph_incidents")]))
    assert [(d.payload, d.source) for d in store.dead_letters() if d.stage == "normalise"] == [
        (b'{"id": "old"}', None), (b'{"id": "7"}', "graph_incidents")]
    store.close()


def test_the_latest_version_taken_only_moves_forward(store: Any) -> None:
    newer, older = "2026-11-02T00:00:00.000000Z", "2026-11-01T00:00:00.000000Z"
    store.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", newer)]))
    store.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", older)]))  # a backfill --resend
    assert store.latest_taken("t1", ["a1", "never"]) == {"a1": newer}


def test_same_dead_letter_is_filed_once(store: Any) -> None:
    letter = DeadLetter("normalise", None, "t1", None, b'{"title": 1}', "normalise: id: missing")
    store.commit_page(PageCommit("t1", "graph_alerts", dead=[letter]))
    store.commit_page(PageCommit("t1", "graph_alerts", dead=[letter]))
    assert len(store.dead_letters()) == 1


def test_second_lock_holder_is_refused(tmp_path: Path) -> None:
    # SQLite only: the lock file beside the state file.
    first = StateLock(tmp_path / "forwarder.db")
    first.acquire()
    try:
        code = (
            "import sys; from pathlib import Path; from core.state import StateLocked; from core.state.sqlite import StateLock\n"
            "try:\n StateLock(Path(sys.argv[1])).acquire()\nexcept StateLocked as e:\n print(e); sys.exit(3)\n"
        )
        other = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "forwarder.db")], capture_output=True, text=True
        )
        assert other.returncode == 3
        assert f"pid {os.getpid()}" in other.stdout
    finally:
        first.release()
    StateLock(tmp_path / "forwarder.db").acquire()


def _state_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def _backlog(store: SQLiteStore, megabytes: int) -> None:
    """Queue and deliver a backlog of about `megabytes` MB (16 KB events)."""
    body = os.urandom(16_000)
    for batch in range(0, megabytes * 1_000_000 // 16_000, 500):
        store.outbox_append("archive", [(_meta(f"a{batch}-{i}", "x"), body) for i in range(500)])
    while rows := store.outbox_batch("archive", 5000):
        store.outbox_delivered("archive", [row.id for row in rows], whole_batch=True)


def test_a_drained_outbox_gives_its_space_back_past_a_floor(sqlite_store: SQLiteStore) -> None:
    """A SIEM outage fills the outbox (here 80 MB); once delivered, the state file must not stay
    at its peak size for ever. A backlog below RECLAIM_FLOOR_BYTES (64 MiB) keeps its free
    pages for the next one, instead of giving them back only to grow again. (SQLite only:
    PostgreSQL's autovacuum makes the space reusable, and reclaim_space is a no-op there.)"""
    store = sqlite_store
    _backlog(store, 30)
    small = _state_bytes(store.path)
    assert store.reclaim_space() == 0 and _state_bytes(store.path) == small > 30_000_000
    _backlog(store, 80)  # reuses the 30 MB free, grows by 50
    peak = _state_bytes(store.path)
    while store.reclaim_space():
        pass
    store.close()
    assert 80_000_000 < peak < 100_000_000
    assert _state_bytes(store.path) < 4_000_000, (peak, _state_bytes(store.path))
    assert sqlite3.connect(store.path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_new_state_file_takes_the_larger_page_size_and_an_older_file_keeps_its_own(tmp_path: Path) -> None:
    # SQLite only: the file's page size.
    store = SQLiteStore(tmp_path / "new.db")
    assert store.db.execute("PRAGMA page_size").fetchone() == (PAGE_SIZE,) != (4096,)
    store.close()
    with sqlite3.connect(tmp_path / "old.db") as db:  # as versions before issue 19 made it
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    store = SQLiteStore(tmp_path / "old.db")
    assert store.db.execute("PRAGMA page_size").fetchone() == (4096,)
    store.commit_page(_page(n=3))
    assert store.outbox_depth("archive") == 3
    store.close()


def _counted(path: Path) -> dict[str, int]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT sink, count(*) FROM outbox GROUP BY sink"))


def test_outbox_depths_follow_every_change_and_a_file_without_them_is_counted_once(tmp_path: Path) -> None:
    # SQLite only: a file from before the counts (the counts on both: test_outbox_depths_follow_every_change).
    path = tmp_path / "forwarder.db"
    store = SQLiteStore(path)
    store.commit_page(_page(n=5, sink="archive"))
    store.commit_page(_page(n=3, sink="siem"))
    store.outbox_append("siem", [(_meta("x", "y"), b"{}")])
    batch = store.outbox_batch("archive", 10)
    store.outbox_delivered("archive", [batch[0].id, batch[1].id])
    store.outbox_dead([(batch[2], "refused")])
    assert store.outbox_depths() == _counted(path) == {"archive": 2, "siem": 4}
    assert (store.outbox_depth("archive"), store.outbox_depth("nowhere")) == (2, 0)
    store.close()

    with sqlite3.connect(path) as db:  # as a state file written before the counts were kept
        db.execute("DROP TABLE outbox_depths")
    store = SQLiteStore(path)
    assert store.outbox_depths() == {"archive": 2, "siem": 4}
    store.outbox_delivered("siem", [row.id for row in store.outbox_batch("siem", 10)])
    assert store.outbox_depths() == {"archive": 2} and store.outbox_depth("siem") == 0
    store.close()


def test_outbox_depths_follow_every_change(open_store: Callable[[], Any]) -> None:
    store = open_store()
    store.commit_page(_page(n=5, sink="archive"))
    page = _page(n=3, sink="siem")
    page.outbox.append(("archive", _meta("b", "y"), b"{}"))  # one page, two sinks
    store.commit_page(page)
    store.outbox_append("siem", [(_meta("x", "y"), b"{}")])
    batch = store.outbox_batch("archive", 10)
    store.outbox_delivered("archive", [batch[0].id, batch[1].id])
    store.outbox_dead([(batch[2], "refused")])
    assert _exact(store) == {"archive": 3, "siem": 4}
    assert (store.outbox_depth("archive"), store.outbox_depth("nowhere")) == (3, 0)
    store.outbox_delivered("siem", [row.id for row in store.outbox_batch("siem", 10)], whole_batch=True)
    store.outbox_delivered("archive", [])
    assert _exact(store) == {"archive": 3}
    for letter in store.dead_letters():  # a replay (core/app/dead_letters.py) queues each again
        store.outbox_append(letter.sink, [(letter.meta, letter.payload)])
        store.dead_letters_remove([letter.id])
    assert _exact(store) == {"archive": 4} and store.dead_letters() == []
    store.outbox_delivered("siem", [row.id for row in store.outbox_batch("archive", 10)])  # another sink's ids
    assert _exact(store) == {"archive": 4}
    store.close()
    assert _exact(open_store()) == {"archive": 4}


# The triggers that kept the depths before issue 19, as that SCHEMA created them in every file.
OLD_TRIGGERS = """
CREATE TRIGGER IF NOT EXISTS outbox_depth_up AFTER INSERT ON outbox BEGIN
    INSERT INTO outbox_depths VALUES (NEW.sink, 1) ON CONFLICT (sink) DO UPDATE SET depth = depth + 1;
END;
CREATE TRIGGER IF NOT EXISTS outbox_depth_down AFTER DELETE ON outbox BEGIN
    UPDATE outbox_depths SET depth = depth - 1 WHERE sink = OLD.sink;
END;
"""


def _exact(store: Any) -> dict[str, int]:
    """The depths the store keeps, asserted equal to a count of the rows (any backend)."""
    counted: dict[str, int] = {}
    for (_, sink), n in store.outbox_depths_by_tenant().items():
        counted[sink] = counted.get(sink, 0) + n
    assert store.outbox_depths() == counted
    return store.outbox_depths()


def test_outbox_depths_stay_exact_through_every_change_and_a_file_with_the_old_triggers(tmp_path: Path) -> None:
    # SQLite only: a file of the trigger-counting versions.
    path = tmp_path / "forwarder.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:  # a file of the versions that counted by triggers, rows queued by one
        db.executescript(OLD_TRIGGERS)
        db.executemany("INSERT INTO outbox (sink, tenant_id, tenant_label, alert_id, version_key, severity, "
                       "event_time, payload, enqueued) VALUES (?, 't1', 'acme', ?, ?, 3, 0, ?, 0)",
                       [(sink, f"o{i}", f"t1/o{i}/x", f"{sink}{i}".encode()) for sink, n in (("archive", 5), ("siem", 3)) for i in range(n)])
        assert dict(db.execute("SELECT * FROM outbox_depths")) == {"archive": 5, "siem": 3}

    store = SQLiteStore(path)  # the reopen drops the triggers and keeps their counts
    assert store.db.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'").fetchone() == (0,)
    assert _exact(store) == {"archive": 5, "siem": 3}
    page = _page(n=2, sink="siem")
    page.outbox.append(("archive", _meta("b", "y"), b"{}"))  # one page, two sinks
    store.commit_page(page)
    assert _exact(store) == {"archive": 6, "siem": 5}
    batch = store.outbox_batch("archive", 3)
    store.outbox_delivered("archive", [batch[0].id, batch[2].id])
    store.outbox_dead([(batch[1], "refused")])
    store.outbox_dead([(row, "refused") for row in store.outbox_batch("siem", 2)])
    assert _exact(store) == {"archive": 3, "siem": 3}
    store.outbox_delivered("siem", [row.id for row in store.outbox_batch("siem", 10)], whole_batch=True)
    store.outbox_delivered("archive", [])
    assert _exact(store) == {"archive": 3}
    for letter in store.dead_letters():  # a replay (core/app/dead_letters.py) queues each again
        store.outbox_append(letter.sink, [(letter.meta, letter.payload)])
        store.dead_letters_remove([letter.id])
    assert _exact(store) == {"archive": 4, "siem": 2}
    store.outbox_delivered("siem", [row.id for row in store.outbox_batch("archive", 10)])  # another sink's ids
    assert _exact(store) == {"archive": 4, "siem": 2}
    store.close()
    store = SQLiteStore(path)
    assert _exact(store) == {"archive": 4, "siem": 2}
    store.close()


def test_a_whole_batch_goes_by_its_range_and_takes_no_other_row(store: Any) -> None:
    """A batch settled whole is deleted (in SQLite as `id BETWEEN first AND last` of its sink;
    in PostgreSQL by its ids): the rows of another sink between its ids, and the rows queued
    after it, stay."""
    for i in range(6):  # ids interleave: archive 1, siem 2, archive 3, ...
        store.outbox_append("archive", [(_meta(f"a{i}", "x"), b"a")])
        store.outbox_append("siem", [(_meta(f"s{i}", "x"), b"s")])
    batch = store.outbox_batch("archive", 3)
    store.outbox_append("archive", [(_meta("late", "x"), b"a")])  # queued while the batch is out
    store.outbox_delivered("archive", [row.id for row in batch], whole_batch=True)
    left = [row.meta.alert_id for row in store.outbox_batch("archive", 10)]
    assert left == ["a3", "a4", "a5", "late"]
    assert len(store.outbox_batch("siem", 10)) == 6 and _exact(store) == {"archive": 4, "siem": 6}


def test_sink_memory_past_defenders_retention_is_forgotten(store: Any) -> None:
    store.memory_put("mail", {"severity/t1/old": "high", "severity/t1/new": "high", "digest/t1": "1"})
    _sql(store, "UPDATE sink_memory SET updated = updated - ? WHERE key = 'severity/t1/old'",
         (KNOWN_ALERT_RETENTION + 60,))
    assert store.forget_old_sink_memory() == 1
    assert store.memory_get("mail", "severity/t1/old") is None
    assert store.memory_get("mail", "severity/t1/new") == "high" and store.memory_get("mail", "digest/t1") == "1"
