"""The status of each source of a tenant (`source_status`): kept apart per source, across a
reopen; a state file from before the table gets it, its tenants' status shared by their
sources until each is polled."""
from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from core.app.status import tenant_rows
from core.state.sqlite import SQLiteStore


def test_each_source_keeps_its_own_success_error_and_count(open_store: Callable[[], Any]) -> None:
    store = open_store()
    store.record_source_success("t1", "graph_alerts", 3)
    store.record_source_error("t1", "graph_incidents", "403: lacks SecurityIncident.Read.All")
    store.record_source_success("t1", "graph_alerts", 2)
    store.record_source_error("t1", "graph_alerts", "503 (will retry next cycle)")
    store.record_source_success("t2", "graph_alerts", 1)
    store.close()
    store = open_store()
    statuses = store.source_statuses()
    store.record_source_success("t1", "graph_alerts", 0)  # a success clears the error, keeps the time
    after = store.source_statuses()[("t1", "graph_alerts")]
    alerts, incidents = statuses[("t1", "graph_alerts")], statuses[("t1", "graph_incidents")]
    assert (alerts.forwarded_total, alerts.last_error) == (5, "503 (will retry next cycle)")
    assert alerts.last_success is not None and alerts.last_error_at is not None
    assert (incidents.last_success, incidents.forwarded_total) == (None, 0)
    assert incidents.last_error == "403: lacks SecurityIncident.Read.All"
    assert set(statuses) == {("t1", "graph_alerts"), ("t1", "graph_incidents"), ("t2", "graph_alerts")}
    assert after.last_error is None and after.forwarded_total == 5


def test_a_state_file_without_the_table_gets_it_and_its_tenants_status_stands_for_their_sources(
        tmp_path: Path) -> None:
    # SQLite only: a state file of the version before sources had a status.
    path = tmp_path / "state.db"
    store = SQLiteStore(path)
    store.record_success("t1", "acme", 4)
    store.close()
    with sqlite3.connect(path) as db:  # as a file of the version before sources had a status
        db.execute("DROP TABLE source_status")
    config = SimpleNamespace(forwarder=SimpleNamespace(poll_interval=300.0), sinks={}, tenants={
        "acme": SimpleNamespace(tenant_id="t1", sources=["graph_alerts", "graph_incidents"], enabled=True)})
    store = SQLiteStore(path)
    try:
        assert store.source_statuses() == {}
        (before,) = tenant_rows(config, store)  # type: ignore[arg-type]
        store.record_source_error("t1", "graph_incidents", "403: lacks SecurityIncident.Read.All")
        (after,) = tenant_rows(config, store)  # type: ignore[arg-type]
    finally:
        store.close()
    assert [(s.source, s.health) for s in before.per_source] == [("graph_alerts", "ok"), ("graph_incidents", "ok")]
    assert before.health == "ok"
    # Once one source has its own status, the others have none until they are polled.
    assert [(s.source, s.health) for s in after.per_source] == [("graph_alerts", "unknown"),
                                                                ("graph_incidents", "failing")]
    assert (after.health, after.health_reason) == ("failing", "graph_incidents: 403: lacks SecurityIncident.Read.All")
