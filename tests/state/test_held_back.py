"""The per-tenant counts of alerts held back by a route's filters, kept with the page that held
them back; a state file from before the counts gets their table."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Callable

from core.state import PageCommit
from core.state.sqlite import SQLiteStore


def test_the_counts_of_each_tenant_and_reason_add_up_across_pages_and_a_reopen(open_store: Callable[[], Any]) -> None:
    store = open_store()
    assert store.held_back_counts() == {}
    page = PageCommit(tenant_id="t1", source="graph_alerts", held_back={"below min_severity": 2, "no route": 1})
    store.commit_page(page)
    store.commit_page(page)
    store.commit_page(PageCommit(tenant_id="t2", source="graph_alerts", held_back={"no route": 5}))
    store.close()
    assert open_store().held_back_counts() == {"t1": {"below min_severity": 4, "no route": 2}, "t2": {"no route": 5}}


def test_a_state_file_without_the_counts_gets_them(tmp_path: Path) -> None:
    # SQLite only: a state file of the version before the counts.
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
