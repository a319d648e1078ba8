"""Kill -9 at random moments, four network sinks at once: nothing is lost.

The forwarder runs as a daemon against the simulated cloud and routes every tenant to a real
syslog-ng (CEF over TCP), the HEC peer, the `_bulk` peer and the Event Hubs peer. It is killed
with SIGKILL at random moments and restarted each time; then it is allowed to finish. Every
alert version must have reached every sink; duplicates are counted per sink and must stay
within one batch per kill (none in Elasticsearch, whose `_id` is the version key's hash).

In CI this runs reduced (`RELIABILITY_SCALE` unset: 4 tenants, 240 alerts and their updates, 6
kills); `bench/soak.py --reliability` (`make soak`) runs it at full size (20 tenants, 10,000
alerts, 25 kills).
"""
from __future__ import annotations

import os
import random
import signal
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.model.schema import TenantRef
from core.state.sqlite import SQLiteStore
from mappings.graph_alerts_v2 import normalise
from tests.helpers import CloudSetup, daemon, recent, until
from tests.peers.alert_factory import make_alerts, updated_version
from tests.reliability.fleet import BATCH, Peers, received, sinks, version


@dataclass(frozen=True)
class Scale:
    tenants: int
    alerts: int
    kills: int


SCALES = {"ci": Scale(tenants=4, alerts=240, kills=6), "full": Scale(tenants=20, alerts=10_000, kills=25)}


def _expected(setup: CloudSetup, versions: list[tuple[str, dict[str, Any]]]) -> set[tuple[str, int]]:
    expected = set()
    for label, alert in versions:
        normalised = normalise(alert, TenantRef(id=setup.tenants[label], label=label), recent(0))
        expected.add(version(normalised.version_key))
    return expected


def _kill_repeatedly(config: Path, kills: int, rng: random.Random) -> None:
    for _ in range(kills):
        forwarder = daemon(config)
        time.sleep(rng.uniform(0.3, 2.5))  # a random moment: start-up, polling, mid-batch, idle
        forwarder.send_signal(signal.SIGKILL)
        forwarder.wait(10)


def _finish(config: Path, peers: Peers, expected: set[tuple[str, int]]) -> None:
    forwarder = daemon(config)
    try:
        # Four sinks of 50-event batches: the Event Hubs SDK's pure-Python AMQP is the slowest.
        until(lambda: all(expected <= set(got) for got in received(peers).values()), forwarder,
              timeout=120 + len(expected) / 10)
    finally:
        forwarder.send_signal(signal.SIGTERM)
        forwarder.wait(30)


def run_crash_scenario(setup: CloudSetup, peers: Peers, scale: Scale, seed: int = 2026) -> dict[str, Any]:
    """The scenario, in two phases (first versions, then updates of a third of them), each with
    its kills; returns the figures."""
    rng = random.Random(seed)
    per_tenant = scale.alerts // scale.tenants
    versions: list[tuple[str, dict[str, Any]]] = []
    for number in range(scale.tenants):
        label = f"customer{number:02d}"
        tenant_id = setup.tenant(label)
        # Spread over 200 minutes that end well before the updates' lastUpdateDateTime, at any
        # scale: a first version newer than its update would be a test of time travel.
        alerts = make_alerts(per_tenant, tenant_id, recent(240), timedelta(minutes=200) / per_tenant,
                             seed=seed + number)
        setup.cloud.add_alerts(tenant_id, alerts)
        versions += [(label, alert) for alert in alerts]
    setup.forwarder.update(poll_interval="1s", overlap="5m", initial_lookback="1d")
    setup.sinks = sinks(peers)
    config = setup.write()

    started = time.monotonic()
    _kill_repeatedly(config, scale.kills // 2, rng)
    _finish(config, peers, _expected(setup, versions))
    updates = [(label, updated_version(alert, recent(1), status="inProgress"))
               for label, alert in versions[:: 3]]
    for label, alert in updates:
        setup.cloud.add_alerts(setup.tenants[label], [alert])
    versions += updates
    _kill_repeatedly(config, scale.kills - scale.kills // 2, rng)
    expected = _expected(setup, versions)
    _finish(config, peers, expected)

    got_by_sink = received(peers)
    figures: dict[str, Any] = {"tenants": scale.tenants, "versions": len(expected), "kills": scale.kills,
                               "seconds": round(time.monotonic() - started, 1)}
    for sink, got in got_by_sink.items():
        figures[sink] = {"missing": len(expected - set(got)), "unexpected": len(set(got) - expected),
                         "duplicates": sum(got.values()) - len(set(got))}
    return figures


def test_kill_9_at_random_moments_loses_nothing(setup: CloudSetup, peers: Peers) -> None:
    scale = SCALES[os.environ.get("RELIABILITY_SCALE", "ci")]
    figures = run_crash_scenario(setup, peers, scale)
    print("\ncrash figures:", figures)
    for sink in ("syslog", "splunk", "elastic", "hub"):
        assert figures[sink]["missing"] == 0 and figures[sink]["unexpected"] == 0, figures
        assert figures[sink]["duplicates"] <= scale.kills * BATCH, figures
    assert figures["elastic"]["duplicates"] == 0
    store = SQLiteStore(setup.state)
    assert store.dead_letters() == [] and sum(store.outbox_depths().values()) == 0
    store.close()
