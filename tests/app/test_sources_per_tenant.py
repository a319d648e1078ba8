"""Per-tenant sources from the command line: `run --once`, `check`, `consent-url` and `backfill`
name and verify each source's permission per tenant and source, and one failing source does
not hold back another."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest

from tests.helpers import SHARED_SAMPLES, CloudSetup, read_ndjson, recent, run_cli
from tests.peers.alert_factory import make_alerts, make_incidents

BOTH = ["graph_alerts", "graph_incidents"]


def _tenant(setup: CloudSetup, label: str, sources: list[str] = BOTH, **options: object) -> tuple[str, list[dict]]:
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(3, tenant_id, recent(60), timedelta(minutes=1))
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.cloud.add_incidents(tenant_id, make_incidents(alerts))
    setup.tenant_keys[label] = {"sources": sources}
    setup.forwarder["tenant_requests_per_minute"] = 60_000
    return tenant_id, alerts


def test_run_once_forwards_alerts_of_a_tenant_not_consented_to_incidents(setup: CloudSetup) -> None:
    _, alerts = _tenant(setup, "acme", permissions={"SecurityAlert.Read.All"})
    _, both = _tenant(setup, "globex")
    config, metrics = str(setup.write()), setup.tmp / "forwarder.prom"
    result = run_cli("run", "--once", "--config", config, "--metrics-file", str(metrics))

    assert result.returncode == 1
    assert {r["id"] for r in read_ndjson(setup.out("acme"))} == {a["id"] for a in alerts}
    assert len(read_ndjson(setup.out("globex"))) == len(both) + len({a["incidentId"] for a in both})
    refused = [line for line in result.stderr.splitlines() if "graph_incidents" in line and "403" in line]
    assert refused and "SecurityIncident.Read.All" in refused[0] and "Traceback" not in result.stderr

    # The status, per source: acme's alerts flow while its incidents are refused.
    shown = run_cli("tenants", "--output", "json", "--config", config)
    tenants = {row["tenant"]: row for row in json.loads(shown.stdout)}
    acme = {row["source"]: row for row in tenants["acme"]["per_source"]}
    assert acme["graph_alerts"]["health"] == "ok" and acme["graph_alerts"]["last_success"]
    assert acme["graph_alerts"]["forwarded_total"] == len(alerts) and acme["graph_alerts"]["cursor"]
    assert acme["graph_incidents"]["health"] == "failing" and acme["graph_incidents"]["last_success"] is None
    assert "403" in acme["graph_incidents"]["last_error"]
    assert "SecurityIncident.Read.All" in acme["graph_incidents"]["health_reason"]
    assert tenants["acme"]["health"] == "failing" and tenants["acme"]["last_success"] is None
    assert tenants["acme"]["health_reason"].startswith("graph_incidents: ")
    assert [(r["source"], r["health"]) for r in tenants["globex"]["per_source"]] == [
        ("graph_alerts", "ok"), ("graph_incidents", "ok")]
    table = run_cli("tenants", "--config", config)
    assert "graph_incidents failing" in " ".join(table.stdout.split())
    # The last success per source: acme's incidents have none.
    success = {line.split("{")[1].split("}")[0]: line for line in metrics.read_text().splitlines()
               if line.startswith("defender_forwarder_last_success_timestamp_seconds{")}
    assert 'source="graph_alerts",tenant="acme"' in success and 'source="graph_incidents",tenant="globex"' in success
    assert 'source="graph_incidents",tenant="acme"' not in success


def test_check_verifies_each_sources_permission_per_tenant(setup: CloudSetup) -> None:
    _tenant(setup, "acme", permissions={"SecurityAlert.Read.All"})
    result = run_cli("check", "--config", str(setup.write()), "--output", "json")

    rows = {row["name"]: row for row in json.loads(result.stdout) if row["what"] == "tenant"}
    assert result.returncode == 1
    assert rows["acme (graph_alerts)"]["ok"] and "SecurityAlert.Read.All granted" in rows["acme (graph_alerts)"]["result"]
    incidents = rows["acme (graph_incidents)"]
    assert not incidents["ok"] and "SecurityIncident.Read.All" in incidents["result"]


def test_consent_url_names_the_permission_of_each_source(setup: CloudSetup) -> None:
    tenant_id, _ = _tenant(setup, "acme")
    result = run_cli("consent-url", "--tenant", "acme", "--config", str(setup.write()))
    assert result.returncode == 0 and result.stdout.strip().endswith(f"/{tenant_id}/adminconsent?client_id="
                                                                     "11111111-1111-4111-8111-111111111111")
    assert ("Microsoft Graph SecurityAlert.Read.All (graph_alerts), "
            "Microsoft Graph SecurityIncident.Read.All (graph_incidents)") in result.stderr


def test_backfill_reads_one_source(setup: CloudSetup) -> None:
    tenant_id, alerts = _tenant(setup, "acme")
    other_id, _ = _tenant(setup, "alerts_only", sources=["graph_alerts"])
    config = str(setup.write())
    since = recent(120).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = run_cli("backfill", "--since", since, "--source", "graph_incidents", "--config", config)

    assert result.returncode == 0, result.stderr
    assert {r["id"] for r in read_ndjson(setup.out("acme"))} == {a["incidentId"] for a in alerts}
    assert not setup.out("alerts_only").exists()
    assert not [hit for hit in setup.cloud.hits if hit.kind == "alerts" and hit.tenant in (tenant_id, other_id)]
    wrong = run_cli("backfill", "--since", since, "--source", "graph_incidents", "--tenant", "alerts_only",
                    "--config", config)
    assert wrong.returncode == 2 and "tenants.alerts_only reads graph_incidents" in wrong.stderr
    unknown = run_cli("backfill", "--since", since, "--source", "graph", "--config", config)
    assert unknown.returncode == 2 and "invalid choice: 'graph'" in unknown.stderr


@pytest.mark.skipif(not SHARED_SAMPLES.exists(), reason="../shared/samples is not beside the repo")
def test_convert_takes_graph_incidents() -> None:
    sample = SHARED_SAMPLES / "graph_incidents_list_docs.json"
    expected = json.loads(sample.read_text())["value"]
    result = run_cli("convert", "--source", "graph_incidents", "--format", "alert", str(sample))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(e["kind"], e["id"]) for e in events] == [("incident", i["id"]) for i in expected]
