"""Tenant leases between instances sharing a PostgreSQL state (core/state/postgresql.py): a fair
share each, a tenant's sources together, expiry, release, the fencing check of a page's commit,
and the outbox rows each instance may deliver. Two or three `PostgresStore`s on one database
stand for the instances; the SQLite store's trivial leases are checked last."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from core.model.schema import EventMeta, Severity
from core.state import ORPHANS, LeaseLost, PageCommit, StateError
from core.state.sqlite import SQLiteStore

SOURCES = ("graph_alerts", "graph_incidents")
TENANTS = [f"tenant-{n:02d}" for n in range(10)]
WANTED = [(tenant, source) for tenant in TENANTS for source in SOURCES]
CURSOR = datetime(2026, 12, 1, tzinfo=timezone.utc)


@pytest.fixture
def stores(pg_empty: Any) -> Any:
    from core.state.postgresql import PostgresStore

    opened = [PostgresStore(pg_empty) for _ in range(3)]
    yield opened
    for store in opened:
        store.close()


def _tenants(held: dict[tuple[str, str], int]) -> set[str]:
    return {tenant for tenant, _ in held}


def _whole(held: dict[tuple[str, str], int]) -> bool:
    """Every tenant held with all its sources."""
    return Counter(tenant for tenant, _ in held) == Counter({tenant: len(SOURCES) for tenant in _tenants(held)})


def test_one_instance_takes_every_tenant_with_a_first_epoch(stores: list[Any]) -> None:
    held = stores[0].claim_leases("a:1", WANTED, 60)
    assert set(held) == set(WANTED) and set(held.values()) == {1}
    assert stores[0].claim_leases("a:1", WANTED, 60) == held  # a renewal keeps the epochs
    assert {lease.holder for lease in stores[1].leases()} == {"a:1"}


def test_an_instance_joining_gets_its_share_after_the_holder_sheds_the_excess(stores: list[Any]) -> None:
    a, b = stores[0], stores[1]
    a.claim_leases("a:1", WANTED, 60)
    assert b.claim_leases("b:2", WANTED, 60) == {}  # every lease is held, none expired
    shed = a.claim_leases("a:1", WANTED, 60)  # two live instances now: a keeps ceil(10 / 2)
    taken = b.claim_leases("b:2", WANTED, 60)
    assert len(_tenants(shed)) == len(_tenants(taken)) == 5
    assert _tenants(shed).isdisjoint(_tenants(taken)) and _tenants(shed) | _tenants(taken) == set(TENANTS)
    assert _whole(shed) and _whole(taken)
    assert set(taken.values()) == {2}  # a change of holder is a new epoch


def test_a_silent_instance_s_leases_expire_and_are_taken_with_a_new_epoch(stores: list[Any]) -> None:
    a, b = stores[0], stores[1]
    a.claim_leases("a:1", WANTED, 0.5)
    time.sleep(0.6)  # a's lease ran out; a is no longer live either
    taken = b.claim_leases("b:2", WANTED, 0.5)
    assert set(taken) == set(WANTED) and set(taken.values()) == {2}
    assert a.claim_leases("a:1", WANTED, 60) == {}  # a is back: renews nothing, b's leases are current


def test_a_clean_stop_frees_the_leases_at_once(stores: list[Any]) -> None:
    a, b = stores[0], stores[1]
    a.claim_leases("a:1", WANTED, 60)
    a.release_leases("a:1")
    assert set(b.claim_leases("b:2", WANTED, 60)) == set(WANTED)  # a is no longer counted live


def test_a_page_of_a_lost_lease_is_not_committed(stores: list[Any]) -> None:
    """The fencing token: a's poll started at epoch 1; b took the lease meanwhile (epoch 2)."""
    a, b = stores[0], stores[1]
    first = a.claim_leases("a:1", WANTED, 0.5)[(TENANTS[0], SOURCES[0])]
    time.sleep(0.6)
    second = b.claim_leases("b:2", WANTED, 60)[(TENANTS[0], SOURCES[0])]
    meta = EventMeta(TENANTS[0], "zero", "alert-1", "alert-1|2026-12-01T00:00:00Z", Severity.high, 0.0, "alert")
    stale = PageCommit(TENANTS[0], SOURCES[0], seen=[("alert-1", "2026-12-01T00:00:00Z")],
                       outbox=[("siem", meta, b"{}")], cursor=CURSOR, epoch=first)
    with pytest.raises(LeaseLost, match=f"epoch {second}, this poll's {first}"):
        a.commit_page(stale)
    assert a.cursor(TENANTS[0], SOURCES[0]) is None and a.outbox_depth("siem") == 0
    assert isinstance(LeaseLost("x"), StateError)  # a poll's store failure: logged, tried next poll
    b.commit_page(PageCommit(**{**vars(stale), "epoch": second}))
    assert a.cursor(TENANTS[0], SOURCES[0]) == CURSOR and a.outbox_depth("siem") == 1


def test_each_instance_delivers_the_rows_of_its_tenants_and_the_orphans_holder_the_rest(stores: list[Any]) -> None:
    a, b = stores[0], stores[1]
    a.claim_leases("a:1", [(TENANTS[0], SOURCES[0]), ORPHANS], 60)
    b.claim_leases("b:2", [(TENANTS[1], SOURCES[0])], 60)
    for number, tenant in enumerate([TENANTS[0], TENANTS[1], "removed-tenant", TENANTS[0]]):
        meta = EventMeta(tenant, tenant, f"alert-{number}", f"alert-{number}|v", Severity.low, 0.0, "alert")
        a.outbox_append("siem", [(meta, b"{}")])
    by_a = [row.meta.tenant_id for row in a.outbox_batch("siem", 10, holder="a:1")]
    by_b = [row.meta.tenant_id for row in b.outbox_batch("siem", 10, holder="b:2")]
    assert by_a == [TENANTS[0], "removed-tenant", TENANTS[0]] and by_b == [TENANTS[1]]
    assert len(a.outbox_batch("siem", 10)) == 4  # no holder: every row (a single instance)
    assert a.outbox_batch("siem", 10, holder="c:3") == []


def test_claims_at_once_never_share_a_tenant(stores: list[Any]) -> None:
    """Three instances claiming together, repeatedly: each tenant is held by one instance, whole,
    and after a few rounds each holds its share."""
    results: dict[str, dict[tuple[str, str], int]] = {}
    errors: list[BaseException] = []

    def claim(store: Any, holder: str) -> None:
        try:
            for _ in range(5):
                results[holder] = store.claim_leases(holder, WANTED, 60)
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=claim, args=(store, f"i:{n}")) for n, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for holder, store in zip(results, stores, strict=True):  # one more round each, settled
        results[holder] = store.claim_leases(holder, WANTED, 60)
    held = [_tenants(h) for h in results.values()]
    assert sum(map(len, held)) == len(set().union(*held)) == len(TENANTS)
    assert all(_whole(h) for h in results.values()) and max(map(len, held)) <= 4  # ceil(10 / 3)


def test_a_sqlite_state_holds_every_tenant(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "forwarder.db")
    try:
        assert set(store.claim_leases("a:1", WANTED, 60)) == set(WANTED) and store.leases() == []
        store.commit_page(PageCommit(TENANTS[0], SOURCES[0], cursor=CURSOR, epoch=7))  # no fencing: one process
        assert store.cursor(TENANTS[0], SOURCES[0]) == CURSOR
    finally:
        store.close()
