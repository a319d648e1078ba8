"""`core.app.status`: the one model of tenant health and sink state, over a real state store."""
from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

from core.app.status import collect
from core.app.status_page import render, shown_tenants
from core.model.schema import EventMeta, Severity
from core.state.sqlite import SQLiteStore


def _config(**sinks: int) -> SimpleNamespace:
    tenant = lambda tid, enabled=True: SimpleNamespace(tenant_id=tid, sources=["graph_alerts"], enabled=enabled)  # noqa: E731
    return SimpleNamespace(
        forwarder=SimpleNamespace(poll_interval=300.0),
        tenants={"fresh": tenant("t-fresh"), "stale": tenant("t-stale"), "broken": tenant("t-broken"),
                 "new": tenant("t-new"), "off": tenant("t-off", enabled=False)},
        sinks={name: SimpleNamespace(type="file", max_outbox=limit) for name, limit in sinks.items()},
    )


def _worker(fatal: str | None = None, failing_since: float | None = None, last_error: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(fatal=fatal, failing_since=failing_since, last_error=last_error)


def test_tenant_health_and_sink_state(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "state.db")
    try:
        store.record_success("t-fresh", "fresh", 1)
        store.record_success("t-stale", "stale", 1)
        store.db.execute("UPDATE tenant_status SET last_success=? WHERE tenant_id='t-stale'", (time.time() - 7200,))
        store.record_error("t-broken", "broken", "401 from Entra ID; remedy: renew the secret")
        meta = EventMeta("t-fresh", "fresh", "a1", "t-fresh/a1/v", Severity.high, 1.5e9)
        for sink in ("full", "flaky", "dead", "quiet"):
            store.outbox_append(sink, [(meta, b"{}"), (meta, b"{}")])
        config = _config(full=2, flaky=10, dead=10, quiet=10, idle=10)
        workers = {"full": _worker(), "flaky": _worker(failing_since=time.time(), last_error="503 from the SIEM"),
                   "dead": _worker(fatal="token refused"), "quiet": _worker(), "idle": _worker()}
        live = collect(config, store, workers)  # type: ignore[arg-type]
        offline = collect(config, store)  # type: ignore[arg-type]
    finally:
        store.close()
    health = {r.tenant: (r.health, r.health_reason) for r in live.tenants}
    assert health["fresh"] == ("ok", None)
    assert health["stale"][0] == "degraded" and "no successful poll for 120 min" in str(health["stale"][1])
    assert health["broken"] == ("failing", "401 from Entra ID; remedy: renew the secret")
    assert health["new"] == ("unknown", "not polled yet")
    assert health["off"][0] == "disabled"
    assert {r.tenant: r.outbox for r in live.tenants}["fresh"] == {"full": 2, "flaky": 2, "dead": 2, "quiet": 2,
                                                                   "idle": 0}
    states = {s.sink: (s.state, s.outbox, s.oldest_seconds is not None) for s in live.sinks}
    assert states == {"full": ("paused", 2, True), "flaky": ("retrying", 2, True), "dead": ("stopped", 2, True),
                      "quiet": ("ok", 2, True), "idle": ("ok", 0, False)}
    assert [s.state for s in offline.sinks] == ["paused", "unknown", "unknown", "unknown", "ok"]
    assert live.tenants == offline.tenants  # a tenant's health never depends on where it is looked at

    by_health = [r.tenant for r in shown_tenants(live.tenants, None, "health")]
    assert by_health == ["broken", "stale", "off", "new", "fresh"]
    page = render(live, {"status": "failing"})
    assert 'data-tenant="broken"' in page and 'data-tenant="fresh"' not in page
    assert "remedy: renew the secret" in page and "token refused" in page
