"""The daemon's polls between overlap re-reads read from near the cursor (issue 19, point 3).

An idle tenant's poll used to download its whole 15-minute overlap every time. Now a daemon
poll asks from 30 s before the cursor on, and the overlap is re-read at least every `overlap_every`, from
where the previous re-read's cursor minus the overlap was: an alert Graph indexes late, stamped
behind the cursor, is still read, once. Driven as the daemon drives it: one Forwarder kept
across polls (`partial_reads` on), against the simulated cloud, into the file sink.
"""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.app.config import load_config
from core.app.pipeline import Forwarder
from core.model.times import parse_time
from core.sources.incremental import RECENT_REREAD
from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, read_ndjson, recent
from tests.peers.alert_factory import make_alerts

SOURCE = "graph_alerts"


def _filter_starts(setup: CloudSetup, tenant_id: str) -> list[datetime]:
    """The `ge` bound of every alerts request of the tenant, in order."""
    starts = []
    for hit in setup.cloud.hits:
        if hit.kind == "alerts" and hit.tenant == tenant_id:
            clause = parse_qs(urlsplit(hit.path).query)["$filter"][0]
            starts.append(parse_time(clause.split(" ge ")[1].split(" ")[0]))
    return starts


async def _poll(config_path: Path, store: SQLiteStore) -> None:
    """One daemon poll of every tenant, delivered."""
    async with Forwarder(load_config(config_path), store) as forwarder:
        forwarder.partial_reads = True
        results = await forwarder.poll_all()
        assert not [r.error for r in results if r.error]
        await forwarder.drain()


def _versions(setup: CloudSetup) -> list[tuple[Any, Any]]:
    return [(line["id"], line["lastUpdateDateTime"]) for line in read_ndjson(setup.out("acme"))]


def test_polls_read_from_the_cursor_and_the_overlap_reread_takes_a_late_alert_once(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("acme")
    first = make_alerts(4, tenant_id, recent(10), timedelta(minutes=1))
    setup.cloud.add_alerts(tenant_id, first)
    setup.forwarder.update({"overlap_every": "1h"})
    partial_config = setup.write().rename(setup.tmp / "partial.toml")
    setup.forwarder.update({"overlap_every": "0s"})  # every poll re-reads the overlap
    full_config = setup.write()
    store = SQLiteStore(setup.state)
    try:
        asyncio.run(_poll(partial_config, store))  # the first read: the whole lookback
        cursor = store.cursor(tenant_id, SOURCE)
        assert cursor is not None
        # Graph indexes an alert late: stamped 3 minutes behind the cursor, visible only now.
        late = make_alerts(1, tenant_id, cursor - timedelta(minutes=3), timedelta(minutes=1), seed=7)
        new = make_alerts(1, tenant_id, recent(1), timedelta(minutes=1), seed=8)
        setup.cloud.add_alerts(tenant_id, late + new)

        asyncio.run(_poll(partial_config, store))  # a poll between re-reads: from just before the cursor
        assert _filter_starts(setup, tenant_id)[-1] == cursor - RECENT_REREAD
        got = _versions(setup)
        assert (new[0]["id"], new[0]["lastUpdateDateTime"]) in got
        assert late[0]["id"] not in {alert_id for alert_id, _ in got}

        asyncio.run(_poll(full_config, store))  # the re-read (where it starts: tests/sources, next_read)
        assert _filter_starts(setup, tenant_id)[-1] <= cursor - timedelta(minutes=3)
        got = _versions(setup)
        expected = {(a["id"], a["lastUpdateDateTime"]) for a in first + late + new}
        assert sorted(got) == sorted(expected)  # the late one now, and each version once
    finally:
        store.close()


def test_run_once_always_reads_the_whole_overlap(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("acme")
    setup.cloud.add_alerts(tenant_id, make_alerts(3, tenant_id, recent(5), timedelta(minutes=1)))
    setup.forwarder.update({"overlap_every": "1h"})
    config = load_config(setup.write())
    store = SQLiteStore(setup.state)

    async def once() -> None:
        async with Forwarder(config, store) as forwarder:
            await forwarder.run_once()

    try:
        asyncio.run(once())
        cursor = store.cursor(tenant_id, SOURCE)
        assert cursor is not None
        asyncio.run(once())
        assert _filter_starts(setup, tenant_id)[-1] == cursor - timedelta(minutes=15)
    finally:
        store.close()
