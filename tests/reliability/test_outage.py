"""Each network sink down for a while, polling going on: the outbox fills to its bound, the
tenants routed to that sink pause, nothing is dropped, and when it returns everything drains
in each tenant's order; the tenants routed elsewhere are unaffected throughout.

Tenants `a1`, `a2` go to the sink under test and an NDJSON archive; `b1`, `b2` go to another
network sink and the archive. The sink under test is down from the start; alerts keep
arriving for every tenant.
"""
from __future__ import annotations

import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import orjson
import pytest

from connectors.sentinel import ALERTS_STREAM
from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, daemon, recent, until
from tests.peers.alert_factory import make_alerts
from tests.reliability.fleet import Peers, received, sinks

BOUND = 30  # max_outbox of the sink under test
PAGE = 10
OTHER = {"syslog": "splunk", "splunk": "syslog", "elastic": "hub", "hub": "elastic", "sentinel": "splunk"}


def _peer(peers: Peers, sink: str) -> Any:
    return {"syslog": peers.syslog, "splunk": peers.hec, "elastic": peers.es, "hub": peers.hub,
            "sentinel": peers.sentinel}[sink]


def _archive_order(setup: CloudSetup) -> dict[str, list[str]]:
    """Per tenant id, the alert ids in the order the archive (never down) received them."""
    order: dict[str, list[str]] = defaultdict(list)
    for line in (setup.tmp / "archive.ndjson").read_bytes().splitlines():
        alert = orjson.loads(line)
        order[alert["tenant"]["id"]].append(alert["id"])
    return order


def _sink_order(peers: Peers, sink: str, tenant_ids: dict[str, str]) -> dict[str, list[str]]:
    """Per tenant id, the alert ids in the order the sink under test received them."""
    order: dict[str, list[str]] = defaultdict(list)
    by_alert = {alert_id: tenant for tenant, alerts in tenant_ids.items() for alert_id in alerts}
    arrivals: list[str] = {
        "syslog": lambda: [m["MSG"].split("cs3=")[1].split(" ")[0] for m in peers.syslog.messages("tcp")],
        "splunk": lambda: [r["fields"]["version_key"].split("/")[1] for r in peers.hec.events()],
        "elastic": lambda: [d["source"]["defender_forwarder"]["version_key"].split("/")[1]
                            for d in peers.es.documents()],
        "hub": lambda: [e.message_id.split("/")[1] for e in peers.hub.events()],
        "sentinel": lambda: [row["AlertId"] for row in peers.sentinel.records(ALERTS_STREAM)],
    }[sink]()
    for alert_id in arrivals:
        if alert_id in by_alert:
            order[by_alert[alert_id]].append(alert_id)
    return order


def _depth(setup: CloudSetup, sink: str) -> int:
    store = SQLiteStore(setup.state)
    try:
        return store.outbox_depth(sink)
    finally:
        store.close()


@pytest.mark.parametrize("down", ["syslog", "splunk", "elastic", "hub", "sentinel"])
def test_a_sink_down_fills_its_outbox_pauses_its_tenants_and_drains_in_order(
        setup: CloudSetup, peers: Peers, down: str) -> None:
    other = OTHER[down]
    alerts: dict[str, list[dict[str, Any]]] = {}
    for label in ("a1", "a2", "b1", "b2"):
        tenant_id = setup.tenant(label)
        alerts[tenant_id] = make_alerts(25, tenant_id, recent(120), timedelta(seconds=40), seed=hash(label) % 1000)
        setup.cloud.add_alerts(tenant_id, alerts[tenant_id])
    tables = sinks(peers)
    setup.sinks = {down: {**tables[down], "max_outbox": BOUND}, other: tables[other],
                   "archive": {"type": "file", "path": str(setup.tmp / "archive.ndjson"), "format": "raw"}}
    setup.forwarder.update(poll_interval="1s", page_size=PAGE)
    config = setup.write()
    routes = [{"tenants": ["a*"], "sinks": [down, "archive"]}, {"tenants": ["b*"], "sinks": [other, "archive"]}]
    config.write_text(config.read_text() + "".join(
        f'\n[[routes]]\ntenants = {orjson.dumps(r["tenants"]).decode()}\nsinks = {orjson.dumps(r["sinks"]).decode()}\n'
        for r in routes))
    a_ids = {setup.tenants[l]: [a["id"] for a in alerts[setup.tenants[l]]] for l in ("a1", "a2")}
    b_ids = {setup.tenants[l]: [a["id"] for a in alerts[setup.tenants[l]]] for l in ("b1", "b2")}
    received_by: Callable[[str], set[str]] = lambda sink: {alert_id for _, _, alert_id, _ in received(peers)[sink]}

    _peer(peers, down).stop()
    forwarder = daemon(config)
    try:
        until(lambda: _depth(setup, down) >= BOUND, forwarder)
        time.sleep(2.5)  # polling goes on: a* stay paused at the bound, b* flow
        depth = _depth(setup, down)
        assert BOUND <= depth <= BOUND + 2 * PAGE  # the bound, overshot by at most one page per tenant
        assert received_by(down) == set()
        later_b = {t: make_alerts(5, t, recent(2), timedelta(seconds=5), seed=7) for t in b_ids}
        for tenant_id, extra in later_b.items():
            setup.cloud.add_alerts(tenant_id, extra)
            b_ids[tenant_id] += [a["id"] for a in extra]
        until(lambda: received_by(other) >= {i for ids in b_ids.values() for i in ids}, forwarder)  # unaffected
        assert _depth(setup, down) == depth  # still paused: nothing more queued for the sink that is down

        _peer(peers, down).start()
        until(lambda: received_by(down) >= {i for ids in a_ids.values() for i in ids}, forwarder, timeout=60)
    finally:
        forwarder.send_signal(signal.SIGTERM)
        forwarder.communicate(timeout=30)  # drains the log pipe while waiting (see test_crash)
    archive, arrived = _archive_order(setup), _sink_order(peers, down, a_ids)
    for tenant_id in a_ids:
        assert arrived[tenant_id] == archive[tenant_id]  # the same order as queued: FIFO per tenant
    assert sorted(received_by(down)) == sorted(i for ids in a_ids.values() for i in ids)
