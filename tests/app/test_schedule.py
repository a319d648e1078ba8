"""The daemon polls each tenant on its own schedule (issue 19, point 4): a slow or failing
tenant delays no other, housekeeping (the cycle line) goes on every poll_interval, and a
SIGTERM mid-poll loses nothing. The real CLI against the simulated cloud (`graph_delay`
makes a tenant's every Graph request slow), plus one in-process run for a bug in a poll."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.app.config import load_config
from core.app.pipeline import Forwarder
from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, daemon, read_ndjson, recent, until, write_config, write_replay
from tests.peers.alert_factory import make_alerts
from tests.peers.fake_cloud import parse_ticks

SLOW = 4.0  # seconds each Graph request of the slow tenant takes


def _tenant(setup: CloudSetup, label: str, n: int, seed: int, **options: Any) -> tuple[str, list[dict[str, Any]]]:
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(n, tenant_id, recent(600), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return tenant_id, alerts


def _versions(alerts: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((a["id"], parse_ticks(a["lastUpdateDateTime"])) for a in alerts)


def _delivered(setup: CloudSetup, label: str) -> Counter[tuple[str, int]]:
    return _versions(read_ndjson(setup.out(label)))


def _answered(setup: CloudSetup, tenant_id: str) -> list[float]:
    """When each alerts request of the tenant was answered (the cloud's clock)."""
    return [h.t for h in setup.cloud.hits if h.kind == "alerts" and h.tenant == tenant_id]


def _stop(process: Any) -> str:
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=20)[0]


def test_a_slow_tenant_delays_no_other_tenants_alerts(setup: CloudSetup) -> None:
    slow_id, slow = _tenant(setup, "slow", 3, seed=1, graph_delay=SLOW)
    fast_id, fast = _tenant(setup, "fast", 3, seed=2)
    setup.forwarder["poll_interval"] = "1s"
    process = daemon(setup.write())
    try:
        until(lambda: sum(_delivered(setup, "slow").values()) == 3, process, timeout=30)
        # Its poll took longer than the interval: the next started at once, and hangs SLOW s.
        slow_polls = len(_answered(setup, slow_id))
        time.sleep(1.0)  # well into that poll (a whole-cycle daemon polled `fast` as it began)
        new = make_alerts(1, fast_id, recent(1), timedelta(minutes=1), seed=3)
        added = time.monotonic()
        setup.cloud.add_alerts(fast_id, new)
        until(lambda: _delivered(setup, "fast") == _versions(fast + new), process, timeout=SLOW * 3)
        waited = time.monotonic() - added
        still_in_flight = len(_answered(setup, slow_id)) == slow_polls
        until(lambda: len(_answered(setup, slow_id)) >= slow_polls + 1, process, timeout=SLOW * 3)
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
    # Within about poll_interval, while the slow tenant's poll was still waiting for Graph (a
    # whole-cycle daemon made it wait for the end of that poll and the next cycle: SLOW - 1 s).
    assert still_in_flight and waited < SLOW - 1.5, (waited, output)
    slow_answers = _answered(setup, slow_id)
    fast_answers = _answered(setup, fast_id)
    between = [t for t in fast_answers if slow_answers[-2] < t < slow_answers[-1]]
    assert len(between) >= 2, (between, slow_answers)  # polled again and again meanwhile
    assert _delivered(setup, "slow") == _versions(slow)  # each version once


def test_a_failing_tenant_stops_neither_the_others_alerts_nor_the_cycle_line(setup: CloudSetup) -> None:
    _tenant(setup, "broken", 2, seed=4, consent=False)  # AADSTS65001 on every token request
    good_id, good = _tenant(setup, "good", 2, seed=5)
    setup.forwarder.update({"poll_interval": "0.5s", "log_format": "json"})
    process = daemon(setup.write())
    try:
        until(lambda: _delivered(setup, "good") == _versions(good), process)
        new = make_alerts(2, good_id, recent(1), timedelta(seconds=10), seed=6)
        setup.cloud.add_alerts(good_id, new)
        until(lambda: _delivered(setup, "good") == _versions(good + new), process)
        time.sleep(1.2)  # two more periods
    finally:
        output = _stop(process)
    assert process.returncode == 0, output
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    cycles = [entry for entry in lines if entry["message"].startswith("cycle:")]
    assert len(cycles) >= 4, output
    assert all(entry["tenants_failed"] <= entry["tenants_polled"] for entry in cycles)
    assert sum(entry["tenants_failed"] for entry in cycles) >= 2  # each period names the failing tenant
    assert sum(entry["new_versions"] for entry in cycles) == 4
    failures = [entry for entry in lines if entry["level"] == "error" and entry["message"].startswith("tenant broken:")]
    assert len(failures) >= 3  # tried again every interval, one line each
    assert not read_ndjson(setup.out("broken"))


def test_sigterm_mid_poll_exits_at_once_and_a_restart_delivers_every_version_once(setup: CloudSetup) -> None:
    # Pages of 3, each request 0.2 s: a window of 30 alerts takes about 2 s.
    tenant_id, alerts = _tenant(setup, "paged", 30, seed=7, graph_delay=0.2)
    other_id, others = _tenant(setup, "other", 5, seed=8)
    setup.forwarder.update({"poll_interval": "1s", "page_size": 3, "tenant_requests_per_minute": 6000})
    config = setup.write()
    process = daemon(config)
    try:
        until(lambda: 0 < sum(_delivered(setup, "paged").values()) < 30, process)
    finally:
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        output = process.communicate(timeout=20)[0]
    assert process.returncode == 0, output
    assert time.monotonic() - stopping < 3, output  # the poll's wait is cancelled, not awaited
    assert sum(_delivered(setup, "paged").values()) < 30  # it was stopped mid-window

    again = daemon(config)
    try:
        until(lambda: sum(_delivered(setup, "paged").values()) >= 30, again)
        time.sleep(1.0)  # more polls re-read the overlap: nothing goes twice
    finally:
        output = _stop(again)
    assert again.returncode == 0, output
    assert _delivered(setup, "paged") == _versions(alerts)
    assert _delivered(setup, "other") == _versions(others)
    assert tenant_id != other_id


def test_a_bug_in_one_poll_is_logged_and_that_tenant_is_polled_again(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """An exception escaping poll_tenant ends that poll only: logged with its traceback, the
    tenant is tried again next interval, and the other tenant never noticed."""
    tenants = {"acme": "55555555-5555-4555-8555-555555555555", "bugged": "66666666-6666-4666-8666-666666666666"}
    tables: dict[str, dict[str, Any]] = {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "poll_interval": "0.2s"},
        "sinks.all": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson"), "format": "raw"},
    }
    for label, tenant_id in tenants.items():
        replay = write_replay(tmp_path / label, [make_alerts(3, tenant_id, recent(600), timedelta(minutes=1))])
        tables[f"tenants.{label}"] = {"tenant_id": tenant_id, "replay": str(replay)}
    config = load_config(write_config(tmp_path / "forwarder.toml", tables))
    store = SQLiteStore(Path(config.forwarder.state))
    calls: Counter[str] = Counter()

    async def go() -> int:
        async with Forwarder(config, store) as forwarder:
            real = forwarder.poll_tenant

            async def poll_tenant(label: str, since: Any = None) -> Any:
                calls[label] += 1
                if label == "bugged" and calls[label] == 1:
                    raise KeyError("a bug")
                return await real(label, since)

            forwarder.poll_tenant = poll_tenant  # type: ignore[method-assign]

            async def stop_when_delivered() -> None:
                while len(read_ndjson(tmp_path / "out" / "bugged.ndjson")) < 3:
                    await asyncio.sleep(0.05)
                os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler takes it

            stopper = asyncio.create_task(stop_when_delivered())
            await asyncio.wait_for(forwarder.run_forever(), 20)
            await stopper
            return forwarder.cycles

    try:
        with caplog.at_level(logging.INFO, logger="defender_forwarder.pipeline"):
            cycles = asyncio.run(go())
    finally:
        store.close()
    bug = [r for r in caplog.records if r.getMessage() == "tenant bugged: poll failed unexpectedly"]
    assert len(bug) == 1 and bug[0].exc_info is not None and bug[0].levelno == logging.ERROR
    assert calls["bugged"] >= 2 and cycles >= 1
    assert len(read_ndjson(tmp_path / "out" / "acme.ndjson")) == 3
    first = next(r for r in caplog.records if r.getMessage().startswith("cycle:"))
    assert first.tenants_failed == 1 and first.tenants_polled == 2  # type: ignore[attr-defined]
