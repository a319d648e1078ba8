"""Source kind `graph_incidents` against the simulated cloud: real MSAL and httpx, HTTPS on loopback.

Incidents are read as alerts are (filter from the cursor minus the overlap, paging, dedupe),
never with `$expand=alerts`; each new version is completed with its alert ids by a separate,
bounded request, and forwarded without them when that request fails.
"""
from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from core.app.config import load_config
from core.app.pipeline import Forwarder, TenantResult
from core.sources import KINDS
from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, read_ndjson, recent
from tests.peers.alert_factory import make_alerts, make_incidents
from tests.peers.fake_cloud import EXPAND_ALERTS_LIMIT, Fault

BOTH = ["graph_alerts", "graph_incidents"]
PASS = Fault.delay(0)  # an ordinary answer: puts the next fault on a later request


def _tenant(setup: CloudSetup, label: str, n: int, sources: list[str] = BOTH, **options: Any
            ) -> tuple[str, list[dict], list[dict]]:
    """A tenant of `n` alerts, two to an incident, reading `sources`."""
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(n, tenant_id, recent(600), timedelta(minutes=1))
    for index, alert in enumerate(alerts):
        alert["incidentId"] = str(5000 + index // 2)
    incidents = make_incidents(alerts)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.cloud.add_incidents(tenant_id, incidents)
    setup.tenant_keys[label] = {"sources": sources}
    setup.forwarder["tenant_requests_per_minute"] = 60_000  # the budget is not what these tests time
    return tenant_id, alerts, incidents


def _run_once(config_path: Path) -> dict[str, TenantResult]:
    config = load_config(config_path)
    store = SQLiteStore(Path(config.forwarder.state))

    async def go() -> list[TenantResult]:
        async with Forwarder(config, store) as forwarder:
            return await forwarder.run_once()

    try:
        return {r.label: r for r in asyncio.run(go())}
    finally:
        store.close()


def _cursors(setup: CloudSetup) -> dict[str, str]:
    store = SQLiteStore(setup.state)
    try:
        return {source: cursor.isoformat() for (_, source), cursor in store.cursors().items()}
    finally:
        store.close()


def _hits(setup: CloudSetup, tenant_id: str, kind: str) -> list[str]:
    return [hit.path for hit in setup.cloud.hits if hit.tenant == tenant_id and hit.kind == kind]


def test_incidents_are_forwarded_with_their_alert_ids_and_never_expanded(setup: CloudSetup) -> None:
    # More incidents than the cloud can expand: a request with $expand=alerts would fail the window.
    tenant_id, alerts, incidents = _tenant(setup, "acme", 2 * EXPAND_ALERTS_LIMIT + 4)
    setup.forwarder["page_size"] = 10
    result = _run_once(setup.write())["acme"]

    out = read_ndjson(setup.out("acme"))
    forwarded = {record["id"]: record for record in out if "alertIds" in record}
    assert result.error is None
    assert set(forwarded) == {incident["id"] for incident in incidents}
    assert {record["id"] for record in out if "alertIds" not in record} == {a["id"] for a in alerts}
    for incident in incidents:  # raw as Graph sent it, plus the ids the forwarder added
        expected = sorted(a["id"] for a in alerts if a["incidentId"] == incident["id"])
        record = forwarded[incident["id"]]
        assert sorted(record.pop("alertIds")) == expected
        assert {k: v for k, v in record.items() if k not in ("forwarder", "tenant")} == incident
    listed = _hits(setup, tenant_id, "incidents")
    assert len(listed) == 3  # 22 incidents, 10 a page
    assert parse_qs(urlsplit(listed[0]).query)["$filter"][0].startswith("lastUpdateDateTime ge ")
    # This tenant's requests: the cloud is the session's, and other tests' tenants ask MDE for $expand=evidence.
    assert all("expand" not in hit.path.lower() for hit in setup.cloud.hits if hit.tenant == tenant_id)
    assert all(parse_qs(urlsplit(path).query) == {"$select": ["id"]}
               for path in _hits(setup, tenant_id, "incident_alerts"))
    assert set(_cursors(setup)) == set(BOTH)


def test_a_new_version_on_each_update_and_ids_asked_for_new_versions_only(setup: CloudSetup) -> None:
    tenant_id, _, incidents = _tenant(setup, "acme", 6)
    config = setup.write()
    _run_once(config)
    asked = len(_hits(setup, tenant_id, "incident_alerts"))
    merged = {**incidents[0], "status": "redirected", "redirectIncidentId": incidents[1]["id"],
              "lastUpdateDateTime": recent(1).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")}
    setup.cloud.add_incidents(tenant_id, [merged])
    _run_once(config)

    out = [r for r in read_ndjson(setup.out("acme")) if "alertIds" in r]
    assert asked == len(incidents)
    assert len(_hits(setup, tenant_id, "incident_alerts")) == asked + 1  # the update only
    assert len(out) == len(incidents) + 1  # each version once: the overlap's re-read is deduped
    assert out[-1]["status"] == "redirected" and out[-1]["redirectIncidentId"] == incidents[1]["id"]


def test_the_link_of_a_merged_incident_reaches_the_normalised_event(setup: CloudSetup) -> None:
    tenant_id, alerts, incidents = _tenant(setup, "acme", 2, sources=["graph_incidents"])
    setup.cloud.add_incidents(tenant_id, [{**incidents[0], "status": "redirected", "redirectIncidentId": "777"}])
    setup.sinks = {"archive": {"type": "file", "path": str(setup.tmp / "out" / "{tenant}.ndjson"), "format": "alert"}}
    _run_once(setup.write())
    (event,) = read_ndjson(setup.out("acme"))
    assert (event["kind"], event["status"], event["redirect_incident_id"]) == ("incident", "redirected", "777")
    assert sorted(event["alert_ids"]) == sorted(a["id"] for a in alerts)


def test_failing_alert_ids_forward_the_incident_without_them(setup: CloudSetup, caplog: Any) -> None:
    tenant_id, _, incidents = _tenant(setup, "acme", 12, sources=["graph_incidents"])
    # The list answers, then every ids request fails: three tries each for three incidents, then
    # the rest of the page goes without asking.
    setup.cloud.inject(tenant_id, PASS, *[Fault.status(503)] * 9, collection="incidents")
    result = _run_once(setup.write())["acme"]

    out = read_ndjson(setup.out("acme"))
    assert result.error is None and {r["id"] for r in out} == {i["id"] for i in incidents}
    assert all("alertIds" not in record for record in out)
    assert len(_hits(setup, tenant_id, "incident_alerts")) == 9
    warnings = [r.getMessage() for r in caplog.records if "alert ids of" in r.getMessage()]
    assert len(warnings) == 1 and f"alert ids of {len(incidents)} incident(s)" in warnings[0]
    assert "graph_incidents" in _cursors(setup)  # the cursor moved on


def test_incidents_refused_for_lack_of_consent_do_not_hold_back_alerts(setup: CloudSetup) -> None:
    tenant_id, alerts, _ = _tenant(setup, "acme", 4, permissions={"SecurityAlert.Read.All"})
    result = _run_once(setup.write())["acme"]

    assert {r["id"] for r in read_ndjson(setup.out("acme"))} == {a["id"] for a in alerts}
    assert result.error is not None and result.error.startswith("graph_incidents: ")
    assert KINDS["graph_incidents"].permission.name in result.error
    assert set(_cursors(setup)) == {"graph_alerts"}


def test_an_incident_id_equal_to_an_alert_id_is_its_own_record(setup: CloudSetup) -> None:
    tenant_id, alerts, _ = _tenant(setup, "acme", 2, sources=BOTH)
    twin = {**make_incidents(alerts[:1])[0], "id": alerts[0]["id"], "lastUpdateDateTime": alerts[0]["lastUpdateDateTime"]}
    setup.cloud.add_incidents(tenant_id, [twin])
    _run_once(setup.write())
    same = [r for r in read_ndjson(setup.out("acme")) if r["id"] == alerts[0]["id"]]
    assert len(same) == 2 and sum("alertIds" in r for r in same) == 1


def test_alert_id_requests_are_paced_by_the_tenants_budget(setup: CloudSetup) -> None:
    tenant_id, _, incidents = _tenant(setup, "acme", 8, sources=["graph_alerts", "graph_incidents"])
    setup.forwarder["tenant_requests_per_minute"] = 600  # one request per 0.1 s, both sources together
    _run_once(setup.write())
    kinds = ("alerts", "incidents", "incident_alerts")
    times = sorted(h.t for h in setup.cloud.hits if h.tenant == tenant_id and h.kind in kinds)
    assert len(times) == 2 + len(incidents)
    # The span of all of them cannot shrink however a loaded machine delays one request.
    assert times[-1] - times[0] >= (len(times) - 1) * 0.09


def test_incident_pages_are_small_whatever_the_page_size(setup: CloudSetup) -> None:
    tenant_id, _, incidents = _tenant(setup, "acme", 120, sources=["graph_incidents"])
    _run_once(setup.write())  # page_size: the default, 1,000
    listed = _hits(setup, tenant_id, "incidents")
    assert [parse_qs(urlsplit(path).query)["$top"] for path in listed] == [["50"]] * 2
    assert len(read_ndjson(setup.out("acme"))) == len(incidents) == 60
