"""What [notify] last mailed per subject survives a restart of the store; a state file from
before the table gets it."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from core.state.sqlite import SQLiteStore


def test_notified_states_are_kept_across_a_reopen(open_store: Callable[[], Any]) -> None:
    store = open_store()
    assert store.notified() == {}
    store.record_notified({"tenant:contoso": "failing:consent_revoked", "sink:siem": "running"})
    store.record_notified({"tenant:contoso": "ok"})
    store.close()
    assert open_store().notified() == {"tenant:contoso": "ok", "sink:siem": "running"}


def test_a_state_file_without_the_table_gets_it(tmp_path: Path) -> None:
    # SQLite only: a state file of the version before [notify].
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
