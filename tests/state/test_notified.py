"""What [notify] last mailed per subject survives a restart of the store; a state file from
before the table gets it."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from core.state.sqlite import SQLiteStore


def test_notified_states_are_kept_across_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    try:
        assert store.notified() == {}
        store.record_notified({"tenant:contoso": "failing:consent_revoked", "sink:siem": "running"})
        store.record_notified({"tenant:contoso": "ok"})
    finally:
        store.close()
    store = SQLiteStore(path)
    try:
        assert store.notified() == {"tenant:contoso": "ok", "sink:siem": "running"}
    finally:
        store.close()


def test_a_state_file_without_the_table_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:  # as a file of the version before [notify] was
        db.execute("DROP TABLE notified")
    store = SQLiteStore(path)
    try:
        assert store.notified() == {}
        store.record_notified({"certificate:mssp": "expiring:2027-01-01"})
        assert store.notified() == {"certificate:mssp": "expiring:2027-01-01"}
    finally:
        store.close()
