"""Kill -9 at random moments, five network sinks at once: nothing is lost.

The forwarder runs as a daemon against the simulated cloud and routes every tenant to a real
syslog-ng (CEF over TCP), the HEC peer, the `_bulk` peer, the Event Hubs peer and the Logs
Ingestion API peer (Sentinel). It is killed
with SIGKILL at random moments and restarted each time; then it is allowed to finish. The
tenants read every source, in turns (`SOURCES`): Graph alerts, the incidents Defender made of
them, and the Defender for Endpoint API's alerts (one tenant reads MDE without Graph alerts, so
that its alerts come through the MDE source itself; one reads both, where each alert is
forwarded once per version). Every alert and incident version must have reached every sink;
duplicates are counted per sink and must stay within one batch per kill (none in
Elasticsearch, whose `_id` is the version key's hash).

In CI this runs reduced (`RELIABILITY_SCALE` unset: 4 tenants, 240 alerts and their updates, 6
kills); `bench/soak.py --reliability` (`make soak`) runs it at full size (20 tenants, 10,000
alerts, 25 kills).
"""
from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.model.schema import TenantRef
from core.state.sqlite import SQLiteStore
from mappings import graph_alerts_v2, graph_incidents, mde_alerts
from tests.helpers import CloudSetup, daemon, recent, until
from tests.peers import fake_mde
from tests.peers.alert_factory import make_alerts, make_incidents, updated_version
from tests.reliability.fleet import BATCH, Peers, Version, received, sinks, version


@dataclass(frozen=True)
class Scale:
    tenants: int
    alerts: int
    kills: int


SCALES = {"ci": Scale(tenants=4, alerts=240, kills=6), "full": Scale(tenants=20, alerts=10_000, kills=25)}
# Tenant n reads SOURCES[n % 3].
SOURCES = (["graph_alerts", "graph_incidents"], ["mde_alerts", "graph_incidents"],
           ["graph_alerts", "graph_incidents", "mde_alerts"])


def _expected(setup: CloudSetup, alerts: list[tuple[str, dict[str, Any]]],
              incidents: list[tuple[str, dict[str, Any]]]) -> dict[Version, str]:
    """Every version the tenants' sources serve, and the source that must bring it: a Graph
    alert where the tenant reads Graph alerts, else its MDE twin where it reads MDE (the MDE
    API serves the Defender for Endpoint alerts only), and every incident version."""
    expected: dict[Version, str] = {}
    for label, alert in alerts:
        tenant = TenantRef(id=setup.tenants[label], label=label)
        sources = setup.tenant_keys[label]["sources"]
        if "graph_alerts" in sources:
            event: Any = graph_alerts_v2.normalise(alert, tenant, recent(0))
        elif "mde_alerts" in sources and fake_mde.is_mde(alert):
            event = mde_alerts.normalise(fake_mde.mde_alert(alert, expand=True), tenant, recent(0))
        else:
            continue
        expected[version(event.version_key)] = event.source
    for label, incident in incidents:
        event = graph_incidents.normalise(incident, TenantRef(id=setup.tenants[label], label=label), recent(0))
        expected[version(event.version_key, "incident")] = event.source
    return expected


def _correlated(alerts: list[dict[str, Any]], per_incident: int = 3) -> list[dict[str, Any]]:
    """The alerts in incidents of `per_incident` neighbours, as Defender correlates them (the
    factory gives each alert its own incident)."""
    for number, alert in enumerate(alerts):
        first = alerts[number - number % per_incident]
        alert["incidentId"], alert["incidentWebUrl"] = first["incidentId"], first["incidentWebUrl"]
    return alerts


def _publish_incidents(setup: CloudSetup, alerts: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict]]:
    """The incidents of the alerts' latest versions, per tenant, put in the cloud."""
    latest: dict[str, dict[str, dict[str, Any]]] = {}
    for label, alert in alerts:
        latest.setdefault(label, {})[alert["id"]] = alert
    published = []
    for label, by_id in latest.items():
        incidents = make_incidents(list(by_id.values()))
        setup.cloud.add_incidents(setup.tenants[label], incidents)
        published += [(label, incident) for incident in incidents]
    return published


def _kill_repeatedly(config: Path, kills: int, rng: random.Random) -> None:
    for _ in range(kills):
        forwarder = daemon(config)
        time.sleep(rng.uniform(0.3, 2.5))  # a random moment: start-up, polling, mid-batch, idle
        forwarder.send_signal(signal.SIGKILL)
        forwarder.wait(10)


def _outboxes_empty(state: Path) -> bool:
    store = SQLiteStore(state)
    try:
        return sum(store.outbox_depths().values()) == 0
    finally:
        store.close()


def _finish(config: Path, state: Path, peers: Peers, expected: set[Version]) -> None:
    forwarder = daemon(config)
    try:
        # Five sinks of 50-event batches: the Event Hubs SDK's pure-Python AMQP is the slowest.
        # The sinks' deliveries are read only once the outboxes are empty, and then once a
        # second: reading them all (every CEF line parsed, every document copied) costs this
        # process, where the peers run, more the more was delivered; asked 20 times a second at
        # full scale it starved the peers of the CPU their answers need.
        until(lambda: _outboxes_empty(state) and all(expected <= set(got) for got in received(peers).values()),
              forwarder, timeout=120 + len(expected) / 10, every=1.0)
    finally:
        forwarder.send_signal(signal.SIGTERM)
        # communicate, not wait: it drains the log pipe, which a long run at full scale fills
        # (a daemon blocked writing its log cannot act on SIGTERM; journald or a file never stay full).
        output = forwarder.communicate(timeout=30)[0]
        print(f"(the last daemon run logged {len(output):,} characters)")


def run_crash_scenario(setup: CloudSetup, peers: Peers, scale: Scale, seed: int = 2026) -> dict[str, Any]:
    """The scenario, in two phases (first versions, then updates of a third of them), each with
    its kills; returns the figures."""
    rng = random.Random(seed)
    per_tenant = scale.alerts // scale.tenants
    versions: list[tuple[str, dict[str, Any]]] = []
    for number in range(scale.tenants):
        label = f"customer{number:02d}"
        tenant_id = setup.tenant(label)
        setup.tenant_keys[label] = {"sources": SOURCES[number % len(SOURCES)]}
        # Spread over 200 minutes that end well before the updates' lastUpdateDateTime, at any
        # scale: a first version newer than its update would be a test of time travel.
        alerts = _correlated(make_alerts(per_tenant, tenant_id, recent(240), timedelta(minutes=200) / per_tenant,
                                         seed=seed + number))
        setup.cloud.add_alerts(tenant_id, alerts)
        versions += [(label, alert) for alert in alerts]
    incidents = _publish_incidents(setup, versions)
    # Each new incident version costs a request for its alert ids, at the tenant's pace (150 a
    # minute by default: 60 incidents a tenant would take half a minute). The pace has its own
    # tests; here it would only stretch the run between kills.
    setup.forwarder.update(poll_interval="1s", overlap="5m", initial_lookback="1d", tenant_requests_per_minute=1200)
    setup.app["mde_endpoint"] = setup.cloud.base_url
    setup.sinks = sinks(peers)
    config = setup.write()

    started = time.monotonic()
    _kill_repeatedly(config, scale.kills // 2, rng)
    _finish(config, setup.state, peers, set(_expected(setup, versions, incidents)))
    updates = [(label, updated_version(alert, recent(1), status="inProgress"))
               for label, alert in versions[:: 3]]
    for label, alert in updates:
        setup.cloud.add_alerts(setup.tenants[label], [alert])
    versions += updates
    incidents += _publish_incidents(setup, versions)  # the updated alerts' incidents get a new version
    _kill_repeatedly(config, scale.kills - scale.kills // 2, rng)
    sources = _expected(setup, versions, incidents)
    expected = set(sources)
    _finish(config, setup.state, peers, expected)

    got_by_sink = received(peers)
    figures: dict[str, Any] = {"tenants": scale.tenants, "versions": len(expected), "kills": scale.kills,
                               "seconds": round(time.monotonic() - started, 1),
                               "by_source": dict(Counter(sources.values()))}
    for sink, got in got_by_sink.items():
        figures[sink] = {"missing": len(expected - set(got)), "unexpected": len(set(got) - expected),
                         "duplicates": sum(got.values()) - len(set(got))}
    return figures


def test_kill_9_at_random_moments_loses_nothing(setup: CloudSetup, peers: Peers) -> None:
    scale = SCALES[os.environ.get("RELIABILITY_SCALE", "ci")]
    figures = run_crash_scenario(setup, peers, scale)
    print("\ncrash figures:", figures)
    for sink in ("syslog", "splunk", "elastic", "hub", "sentinel"):
        assert figures[sink]["missing"] == 0 and figures[sink]["unexpected"] == 0, figures
        assert figures[sink]["duplicates"] <= scale.kills * BATCH, figures
    assert figures["elastic"]["duplicates"] == 0
    assert figures["by_source"]["graph_incidents"] > 0 and figures["by_source"]["mde_alerts"] > 0, figures
    store = SQLiteStore(setup.state)
    assert store.dead_letters() == [] and sum(store.outbox_depths().values()) == 0
    store.close()
