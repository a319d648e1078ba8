"""The per-tenant counts of alerts held back by a route's filters, kept with the page that held
them back; a state file from before the counts gets their table."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from core.state import PageCommit
from core.state.sqlite import SQLiteStore


def test_a_state_file_without_the_counts_gets_them(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    SQLiteStore(path).close()
    with sqlite3.connect(path) as db:  # as a file of the version before the counts was
        db.execute("DROP TABLE held_back")
    store = SQLiteStore(path)
    try:
        assert store.held_back_counts() == {}
        page = PageCommit(tenant_id="t1", source="graph_alerts", held_back={"below min_severity": 2})
        store.commit_page(page)
        store.commit_page(page)
        assert store.held_back_counts() == {"t1": {"below min_severity": 4}}
    finally:
        store.close()
