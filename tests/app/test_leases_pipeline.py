"""Two forwarders (the pipeline objects, in one process) on one PostgreSQL state: what their
leases decide beside polling, which the multi-process tests in tests/reliability/test_instances.py
show end to end: the tenants split, one notifier for both, Graph's app budget shared, the
`tenants_held` figure, and a SQLite state left as it was."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from core.app.config import parse_config
from core.app.leases import AppBudget
from core.app.pipeline import Forwarder
from core.state.sqlite import SQLiteStore
from tests.helpers import REPO

DEMO = REPO / "examples" / "demo"
BUDGET = 1000


def _config(state: str, tmp: Path, settings: Any = None) -> Any:
    forwarder: dict[str, Any] = {"state": state, "app_requests_per_10s": BUDGET}
    if settings is not None:
        forwarder["postgresql"] = {"sslrootcert": settings.sslrootcert}
    return parse_config({
        "forwarder": forwarder,
        "tenants": {label: {"tenant_id": f"{label}.onmicrosoft.com", "replay": str(DEMO / label)}
                    for label in ("contoso", "fabrikam", "northwind")},
        "sinks": {"archive": {"type": "file", "path": str(tmp / "out.ndjson")}},
        "notify": {"to": ["soc@mssp.example"], "sender": "forwarder@mssp.example", "host": "127.0.0.1", "port": 2525},
    })


async def _two_claiming(first: Forwarder, second: Forwarder) -> list[dict[str, Any]]:
    async with first, second:
        for _ in range(2):  # the second round: each knows of the other, the first shed its excess
            first.claim_leases()
            second.claim_leases()
        return [{"tenants": f.leases.held_tenants(), "notifies": f._notifies(), "fraction": f.app_budget.fraction,
                 "holder": f.leases.holder} for f in (first, second) if f.leases is not None]


def test_two_forwarders_split_the_tenants_one_notifies_and_they_share_the_app_budget(pg_empty: Any,
                                                                                    tmp_path: Path) -> None:
    from core.state.postgresql import PostgresStore

    config = _config(pg_empty.url, tmp_path, pg_empty)
    stores = [PostgresStore(pg_empty), PostgresStore(pg_empty)]
    try:
        first, second = (Forwarder(config, store, instance=f"vm{n}:1") for n, store in enumerate(stores))
        states = asyncio.run(_two_claiming(first, second))
    finally:
        for store in stores:
            store.close()
    assert len(states) == 2
    held = [state["tenants"] for state in states]
    assert held[0].isdisjoint(held[1]) and len(held[0] | held[1]) == 3, held
    assert sorted(state["notifies"] for state in states) == [False, True]  # one mail per change, not two
    assert abs(sum(state["fraction"] for state in states) - 1.0) < 1e-9  # together within the budget
    assert all(state["fraction"] == len(state["tenants"]) / 3 for state in states)


def test_a_sqlite_state_has_no_leases_and_notifies_alone(tmp_path: Path) -> None:
    config = _config(str(tmp_path / "forwarder.db"), tmp_path)
    store = SQLiteStore(tmp_path / "forwarder.db")

    async def check() -> tuple[Any, bool, float]:
        async with Forwarder(config, store) as forwarder:
            forwarder.claim_leases()
            return forwarder.leases, forwarder._notifies(), forwarder.app_budget.fraction

    try:
        assert asyncio.run(check()) == (None, True, 1.0)
    finally:
        store.close()


@pytest.mark.parametrize(("budget", "fraction"), [(130_000, 1.0), (130_000, 1 / 3), (300, 1 / 3), (40, 0.25)])
def test_the_app_budget_keeps_every_10_s_window_within_its_part(budget: int, fraction: float) -> None:
    """Graph counts the app's requests in 10-s windows: what the limiter lets through at once
    (its capacity, after a pause) plus its refill over 10 s must stay within this instance's
    part. (It once started with the whole budget and refilled it in 10 s: twice the budget.)"""
    app = AppBudget(budget)
    app.resize(fraction)
    limiter = app.limiter
    burst, refill_per_second = limiter.max_rate, limiter.max_rate / limiter.time_period
    assert burst + 10 * refill_per_second <= budget * fraction * (1 + 1e-9)
    assert burst >= 1  # one request always fits
    assert refill_per_second * 10 >= 0.9 * budget * fraction - 1  # and the budget is used, not wasted
