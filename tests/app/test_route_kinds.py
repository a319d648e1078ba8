"""Routes choose by event kind (`kinds = ["alert", "incident"]`): the default takes both, a
route for one kind holds the other back with a reason that names it, and a route filtering by
service source holds incidents (which have none) back with their own reason, counted, never
dropped silently. And a file sink's `{kind}` path template."""
from __future__ import annotations

import asyncio
from pathlib import Path

from connectors.base import Outcome
from connectors.file import FileConnector, FileSinkConfig
from core.app.config import RouteSettings, held_back_reason, load_config, sinks_for_alert
from core.app.pipeline import Forwarder, TenantResult, _PageOutcome, reason_slug
from core.model.schema import Severity, TenantRef, decode_event
from core.state import PageCommit
from core.state.sqlite import SQLiteStore
from tests.connectors.kinds import an_alert, an_incident, kind_events
from tests.helpers import run_cli, write_config

TENANT = "55555555-5555-4555-8555-555555555555"
REF = TenantRef(id=TENANT, label="acme")
MDE = "microsoftDefenderForEndpoint"


def test_a_route_takes_both_kinds_unless_it_names_one() -> None:
    both, incidents = RouteSettings(sinks=["a"]), RouteSettings(sinks=["b"], kinds=["Incident"])
    assert both.kinds == ["alert", "incident"] and incidents.kinds == ["incident"]
    assert sinks_for_alert([both, incidents], "acme", Severity.high, MDE, "alert") == ["a"]
    assert sinks_for_alert([both, incidents], "acme", Severity.high, None, "incident") == ["a", "b"]
    assert held_back_reason([incidents], "acme", Severity.high, MDE) == "kind not routed"


def test_an_incident_under_a_service_source_filter_is_held_back_with_its_own_reason() -> None:
    mde_only = RouteSettings(sinks=["a"], service_sources=[MDE])
    high_only = RouteSettings(sinks=["b"], min_severity="high")
    assert sinks_for_alert([mde_only], "acme", Severity.high, None, "incident") == []
    reason = held_back_reason([mde_only, high_only], "acme", Severity.low, None, "incident")
    assert reason == "incident: below min_severity and no service source"
    assert reason_slug(reason) == "below_min_severity_and_no_service_source"
    assert held_back_reason([mde_only], "acme", Severity.low, "microsoftDefenderForOffice365") == \
        "service source not routed"  # an alert's reasons read as before


def test_an_unknown_kind_is_one_line_naming_the_key_and_the_valid_kinds(tmp_path: Path) -> None:
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(tmp_path)},
        "sinks.all": {"type": "file", "path": str(tmp_path / "out.ndjson")},
    }, routes=[{"sinks": ["all"], "kinds": ["alerts"]}])
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 2
    line = next(line for line in result.stderr.splitlines() if "kinds" in line)
    assert "routes[0].kinds" in line and "'alerts'" in line and "valid kinds: alert, incident" in line
    assert "Traceback" not in result.stderr


def test_validate_warns_of_a_source_whose_kind_no_route_of_the_tenant_takes(tmp_path: Path) -> None:
    """acme reads incidents that no route of its takes: one warning line naming the tenant, the
    source and the fix, exit code unchanged. globex, whose second route takes incidents, is fine,
    as are the alerts of both."""
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(tmp_path), "sources": ["graph_alerts", "graph_incidents"]},
        "tenants.globex": {"tenant_id": "55555555-5555-4555-8555-555555555556", "replay": str(tmp_path),
                           "sources": ["graph_alerts", "graph_incidents", "mde_alerts"]},
        "sinks.all": {"type": "file", "path": str(tmp_path / "out.ndjson")},
    }, routes=[{"sinks": ["all"], "kinds": ["alert"]},
               {"tenants": ["globex"], "sinks": ["all"], "kinds": ["incident"]}])
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, result.stderr
    assert "tenants.acme" in warnings[0] and "graph_incidents" in warnings[0] and "incident" in warnings[0]
    assert "kinds" in warnings[0] and "sources" in warnings[0]  # the two fixes
    assert "globex" not in warnings[0] and "Traceback" not in result.stderr

    every = write_config(tmp_path / "every.toml", {  # no [[routes]]: every kind goes everywhere
        "forwarder": {"state": str(tmp_path / "state.db")},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(tmp_path), "sources": ["graph_incidents"]},
        "sinks.all": {"type": "file", "path": str(tmp_path / "out.ndjson")},
    })
    quiet = run_cli("validate", "--config", str(every))
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr, quiet.stderr


def test_the_pipeline_queues_each_kind_only_for_the_routes_that_take_it(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(tmp_path)},
        "sinks.soc": {"type": "file", "path": str(tmp_path / "soc.ndjson"), "format": "alert"},
        "sinks.alerts": {"type": "file", "path": str(tmp_path / "alerts.ndjson"), "format": "alert"},
        "sinks.mde": {"type": "file", "path": str(tmp_path / "mde.ndjson"), "format": "alert"},
    }, routes=[{"sinks": ["soc"], "kinds": ["incident"]}, {"sinks": ["alerts"], "kinds": ["alert"]},
               {"sinks": ["mde"], "service_sources": [MDE]}]))
    store = SQLiteStore(tmp_path / "state.db")
    try:
        forwarder = Forwarder(config, store)
        commit = PageCommit(tenant_id=TENANT, source="test")
        result = TenantResult(label="acme", tenant_id=TENANT)
        for event in (an_alert(REF), an_incident(REF)):
            forwarder._route(event, commit, _PageOutcome(commit), result)  # type: ignore[arg-type]
        store.commit_page(commit)
        queued = {sink: [(row.meta.kind, type(decode_event(row.payload)).__name__) for row in store.outbox_batch(sink, 10)]
                  for sink in ("soc", "alerts", "mde")}
        assert queued == {"soc": [("incident", "Incident")], "alerts": [("alert", "Alert")],
                          "mde": [("alert", "Alert")]}
        assert result.held_back == {}  # the incident went to soc: taken, so not held back
        lonely = PageCommit(tenant_id=TENANT, source="test")
        forwarder.routes = [RouteSettings(sinks=["mde"], service_sources=[MDE])]
        forwarder._route(an_incident(REF), lonely, _PageOutcome(lonely), result)  # type: ignore[arg-type]
        store.commit_page(lonely)
        assert lonely.outbox == [] and result.held_back == {"incident: no service source": 1}
        assert store.held_back_counts()[TENANT] == {"incident: no service source": 1}
    finally:
        store.close()


def test_a_file_path_with_kind_writes_each_kind_to_its_own_file(tmp_path: Path) -> None:
    config = FileSinkConfig(path=str(tmp_path / "{kind}s" / "{tenant}.ndjson"), format="alert", fsync=False)
    results = asyncio.run(FileConnector("archive", config).send(kind_events(REF)))
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
    alerts = (tmp_path / "alerts" / "acme.ndjson").read_bytes().splitlines()
    incidents = (tmp_path / "incidents" / "acme.ndjson").read_bytes().splitlines()
    assert [type(decode_event(line)).__name__ for line in alerts + incidents] == ["Alert", "Incident"]
