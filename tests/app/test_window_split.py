"""A window the API keeps failing does not freeze the cursor (issue 18, point 2's last bullet).

Elastic's incidents collector froze for good on an HTTP 500 that one query always got
(elastic/integrations#18144). Here a record Graph chokes on (the simulated cloud's `poisoned`:
every page that would hold it answers 500) fails its window; after `split_after` cycles in a
row the window is read in halves by time, down to a slice of at most a second, which is
skipped as a dead letter while everything around it is forwarded and the cursor moves on.
Refusals, throttling and outages never count: their cursor waits. Each cycle is a fresh
Forwarder on the state file, as a restart would be, against the real simulated cloud.
"""
from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.app.config import load_config
from core.app.pipeline import Forwarder, TenantResult
from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, read_ndjson, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.fake_cloud import Fault, parse_ticks
from tests.peers.lifecycle import free_port

SOURCE = "graph_alerts"


# ---------------------------------------------------------------- helpers

def _config(setup: CloudSetup, **forwarder: Any) -> Path:
    # Pages of 4, a fast limiter and a short backoff: a page's 8 attempts cost well under a second.
    setup.forwarder.update({"page_size": 4, "tenant_requests_per_minute": 60000, "retry_initial": "0.002s",
                            **forwarder})
    return setup.write()


def _cycle(config_path: Path) -> TenantResult:
    """One `run --once` cycle of the only tenant, by a Forwarder of its own (a restart each time)."""
    config = load_config(config_path)
    store = SQLiteStore(Path(config.forwarder.state))

    async def go() -> list[TenantResult]:
        async with Forwarder(config, store) as forwarder:
            return await forwarder.run_once()

    try:
        (result,) = asyncio.run(go())
    finally:
        store.close()
    return result


def _state(setup: CloudSetup) -> SQLiteStore:
    return SQLiteStore(setup.state)


def _cursor(setup: CloudSetup, tenant_id: str) -> datetime | None:
    store = _state(setup)
    try:
        return store.cursor(tenant_id, SOURCE)
    finally:
        store.close()


def _failures(setup: CloudSetup, tenant_id: str) -> int:
    store = _state(setup)
    try:
        return store.window_failures(tenant_id, SOURCE)
    finally:
        store.close()


def _poll_letters(setup: CloudSetup) -> list[Any]:
    store = _state(setup)
    try:
        return [letter for letter in store.dead_letters() if letter.stage == "poll"]
    finally:
        store.close()


def _delivered(setup: CloudSetup, label: str) -> Counter[str]:
    path = setup.out(label)
    return Counter(alert["id"] for alert in read_ndjson(path)) if path.exists() else Counter()


def _moment(alert: dict[str, Any]) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=parse_ticks(alert["lastUpdateDateTime"]) // 10)


def _alert_hits(setup: CloudSetup, tenant_id: str) -> list[Any]:
    return [hit for hit in setup.cloud.hits if hit.tenant == tenant_id and hit.kind == "alerts"]


def _filter(hit: Any) -> str:
    return parse_qs(urlsplit(hit.path).query).get("$filter", [""])[0]


# ---------------------------------------------------------------- (a) a record Graph always fails on

def test_a_window_that_always_fails_is_split_the_bad_second_skipped_and_the_cursor_moves_on(
        setup: CloudSetup) -> None:
    """A clean first run sets the cursor; then 20 new alerts arrive, the 18th of which Graph
    fails on. Cycles 1 and 2 hold the cursor and say how many failures remain before a split;
    cycle 3 splits: the 19 others are forwarded, the poisoned second is a dead letter naming the
    500, its window and the request, the cursor is the newest alert, and the status says what to
    run. Cycle 4 reads its overlap (which holds the skipped second) around it: no 500, no error."""
    tenant_id = setup.tenant("contoso")
    first = make_alerts(5, tenant_id, recent(60), timedelta(minutes=1), seed=1)
    setup.cloud.add_alerts(tenant_id, first)
    config = _config(setup, split_after=3)
    assert _cycle(config).error is None

    later = make_alerts(20, tenant_id, recent(22), timedelta(minutes=1), seed=2)
    poisoned = later[17]  # 4 minutes before the newest: inside the next window's 15-minute overlap
    setup.cloud.add_alerts(tenant_id, later)
    setup.cloud.tenants[tenant_id].poisoned.add(poisoned["id"])
    cursor = _cursor(setup, tenant_id)

    for cycle in (1, 2):
        result = _cycle(config)
        assert result.error is not None and "HTTP 500" in result.error
        assert f"failed {cycle} of 3 cycles in a row before it is split" in result.error
        assert "will retry next cycle" in result.error
        assert _cursor(setup, tenant_id) == cursor and _failures(setup, tenant_id) == cycle
        assert not _poll_letters(setup)

    result = _cycle(config)
    assert result.error is not None and "skipped 1 slice of time that the API fails on every read" in result.error
    assert "`defender-forwarder dead-letters list`" in result.error
    assert "`defender-forwarder backfill --since " in result.error and "--tenant contoso`" in result.error
    delivered = _delivered(setup, "contoso")
    expected = {alert["id"] for alert in first + later} - {poisoned["id"]}
    assert set(delivered) == expected and all(n == 1 for n in delivered.values())
    assert _cursor(setup, tenant_id) == _moment(later[-1])
    assert _failures(setup, tenant_id) == 0

    (letter,) = _poll_letters(setup)
    assert letter.sink is None and letter.tenant_id == tenant_id
    assert "HTTP 500 (InternalServerError" in letter.reason and "skipped, the cursor moved on" in letter.reason
    assert "request: GET https://127.0.0.1:" in letter.reason and "Bearer" not in letter.reason
    window = json.loads(letter.payload)["window"]
    start, end = (datetime.strptime(window[k], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) for k in ("start", "end"))
    assert start <= _moment(poisoned) < end and end - start <= timedelta(seconds=1)
    assert window["source"] == SOURCE and window["tenant"] == "contoso"
    store = _state(setup)
    try:
        assert store.tenant_statuses()[tenant_id].last_error == result.error
    finally:
        store.close()

    listed = run_cli("dead-letters", "list", "--config", str(config))  # the remedy the status names
    assert listed.returncode == 0 and "poll" in listed.stdout and "contoso" in listed.stdout, listed
    shown = run_cli("dead-letters", "show", str(letter.id), "--config", str(config))
    assert shown.returncode == 0 and "the slice of time skipped" in shown.stdout, shown
    assert letter.source == SOURCE and f"source: {SOURCE}" in shown.stdout
    replay = run_cli("dead-letters", "replay", "--config", str(config))  # a slice is read again by backfill only
    assert replay.returncode == 1 and "replayed 0" in replay.stderr and "1 still fail" in replay.stderr, replay
    assert [d.id for d in _poll_letters(setup)] == [letter.id]

    seen = len(_alert_hits(setup, tenant_id))
    result = _cycle(config)
    assert result.error is None and result.queued == 0
    fresh = _alert_hits(setup, tenant_id)[seen:]
    assert fresh and all(hit.status == 200 for hit in fresh)
    assert len(_poll_letters(setup)) == 1
    store = _state(setup)
    try:
        assert store.tenant_statuses()[tenant_id].last_error is None
    finally:
        store.close()


# ---------------------------------------------------------------- (b) a 500 that heals

def test_a_500_that_heals_after_two_cycles_is_never_split_and_the_count_starts_again(setup: CloudSetup) -> None:
    """Every attempt of two cycles answers 500 (8 a cycle); the third cycle reads the window:
    nothing split, nothing dead-lettered, every alert once, and the count is gone."""
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(9, tenant_id, recent(30), timedelta(minutes=1), seed=3)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.cloud.inject(tenant_id, *[Fault.status(500)] * 16)
    config = _config(setup, split_after=3)
    for cycle in (1, 2):
        result = _cycle(config)
        assert result.error is not None and f"failed {cycle} of 3" in result.error
        assert _cursor(setup, tenant_id) is None
    result = _cycle(config)
    assert result.error is None and result.queued == 9
    assert _failures(setup, tenant_id) == 0 and not _poll_letters(setup)
    assert not any(" lt " in _filter(hit) for hit in _alert_hits(setup, tenant_id))  # no bounded slice asked
    assert _cursor(setup, tenant_id) == _moment(alerts[-1])
    assert set(_delivered(setup, "contoso")) == {alert["id"] for alert in alerts}


# ---------------------------------------------------------------- (c) nothing else counts

@pytest.mark.parametrize("trouble", ["401", "403", "429", "503 with Retry-After", "connection refused"])
def test_refusals_throttling_and_outages_hold_the_cursor_and_are_never_skipped(setup: CloudSetup,
                                                                               trouble: str) -> None:
    """With `split_after = 1`, the most eager, two failing cycles of each: the cursor is held,
    no failure is counted, nothing is split or dead-lettered; the data will come back."""
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(6, tenant_id, recent(30), timedelta(minutes=1), seed=4))
    if trouble == "403":
        setup.cloud.tenants[tenant_id].graph_forbidden = True
    elif trouble == "connection refused":
        setup.app["graph_endpoint"] = f"https://127.0.0.1:{free_port()}"
    else:
        fault = {"401": Fault.status(401), "429": Fault.status(429),
                 "503 with Retry-After": Fault.status(503, retry_after=0)}[trouble]
        setup.cloud.inject(tenant_id, *[fault] * 32)
    config = _config(setup, split_after=1)
    for _ in range(2):
        result = _cycle(config)
        assert result.error is not None
        assert _cursor(setup, tenant_id) is None and _failures(setup, tenant_id) == 0
    assert not _poll_letters(setup) and not _delivered(setup, "contoso")
    assert not any(" lt " in _filter(hit) for hit in _alert_hits(setup, tenant_id))


# ---------------------------------------------------------------- (d) restarts keep the count

def test_a_restart_in_the_middle_of_a_split_resumes_it(setup: CloudSetup) -> None:
    """`max_outbox = 4` pauses the window after each page of 4. Cycle 1 fails (count 1); cycle 2
    reaches `split_after = 2` and starts the split, which pauses on the full outbox: the count
    stays. Every later cycle, a new Forwarder on the state file, resumes the split at once (its
    first request is a bounded slice, not the whole window again) until it ends; then every
    readable alert was forwarded once and the poisoned second is one dead letter."""
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(14, tenant_id, recent(30), timedelta(minutes=1), seed=5)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.cloud.tenants[tenant_id].poisoned.add(alerts[12]["id"])  # on the window's first page (newest first)
    setup.sinks = {"archive": {"type": "file", "path": str(setup.tmp / "out" / "{tenant}.ndjson"), "format": "raw",
                               "max_outbox": 4}}
    config = _config(setup, split_after=2)

    result = _cycle(config)
    assert result.error is not None and "failed 1 of 2" in result.error and _failures(setup, tenant_id) == 1
    result = _cycle(config)
    assert result.paused and result.error is None and _failures(setup, tenant_id) == 2
    assert _cursor(setup, tenant_id) is None

    for _ in range(10):
        seen = len(_alert_hits(setup, tenant_id))
        result = _cycle(config)
        assert " lt " in _filter(_alert_hits(setup, tenant_id)[seen])  # straight into the split
        if not result.paused:
            break
    assert result.error is not None and "skipped 1 slice" in result.error
    assert _failures(setup, tenant_id) == 0 and len(_poll_letters(setup)) == 1
    delivered = _delivered(setup, "contoso")
    assert set(delivered) == {alert["id"] for alert in alerts} - {alerts[12]["id"]}
    assert all(n == 1 for n in delivered.values())
    assert _cursor(setup, tenant_id) == _moment(alerts[-1])


def test_a_split_whose_every_slice_fails_is_an_outage_and_skips_nothing(setup: CloudSetup) -> None:
    """Graph answering 500 to everything (a whole-API failure, not a record it chokes on): the
    split reads no slice, so none is skipped; the cursor and the count wait for Graph."""
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(6, tenant_id, recent(30), timedelta(minutes=1), seed=6))
    setup.cloud.inject(tenant_id, *[Fault.status(500)] * 400)
    result = _cycle(_config(setup, split_after=1))
    assert result.error is not None and "every part of the window failed, so none is skipped" in result.error
    assert any(" lt " in _filter(hit) for hit in _alert_hits(setup, tenant_id))  # it did split
    assert all(hit.status == 500 for hit in _alert_hits(setup, tenant_id))
    assert _cursor(setup, tenant_id) is None and _failures(setup, tenant_id) == 1
    assert not _poll_letters(setup) and not _delivered(setup, "contoso")
