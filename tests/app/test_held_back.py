"""Alerts a route's own filters hold back are counted per reason: in the run summary and, kept
in the state, in `tenants`. Nothing is dropped without a number saying why."""
from __future__ import annotations

import re
from datetime import timedelta

from core.app.config import RouteSettings, held_back_reason
from core.model.schema import Severity
from tests.helpers import CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts

MDE, MDO = "microsoftDefenderForEndpoint", "microsoftDefenderForOffice365"


def _alerts(tenant_id: str, severities: list[str], sources: list[str], seed: int) -> list[dict]:
    alerts = make_alerts(len(severities), tenant_id, recent(30), timedelta(minutes=1), seed=seed)
    for alert, severity, source in zip(alerts, severities, sources, strict=True):
        alert["severity"], alert["serviceSource"] = severity, source
    return alerts


def _row(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"\b{label}\b", line))


def test_held_back_alerts_are_counted_per_reason_in_the_summary_and_tenants(setup: CloudSetup) -> None:
    acme = setup.tenant("acme")
    setup.cloud.add_alerts(acme, _alerts(acme, ["low", "low", "medium", "high", "high", "informational"],
                                         [MDE] * 6, seed=31))
    globex = setup.tenant("globex")
    setup.cloud.add_alerts(globex, _alerts(globex, ["high"] * 5, [MDE, MDE, MDE, MDO, MDO], seed=32))
    setup.routes = [{"tenants": ["acme"], "sinks": ["archive"], "min_severity": "high"},
                    {"tenants": ["globex"], "sinks": ["archive"], "service_sources": [MDE]}]
    config = str(setup.write())

    first = run_cli("run", "--once", "--config", config)
    assert first.returncode == 0, first.stderr
    assert "held back" in first.stderr and "filtered" not in first.stderr
    assert "4 below min_severity" in _row(first.stderr, "acme")
    assert "2 service source not routed" in _row(first.stderr, "globex")

    # The overlap re-reads the same versions: they are not counted twice.
    second = run_cli("run", "--once", "--config", config)
    assert second.returncode == 0, second.stderr
    assert "below min_severity" not in _row(second.stderr, "acme")

    tenants = run_cli("tenants", "--config", config)
    assert tenants.returncode == 0, tenants.stderr
    assert "held back" in tenants.stdout
    assert "4 below min_severity" in _row(tenants.stdout, "acme")
    assert "2 service source not routed" in _row(tenants.stdout, "globex")


def test_the_reason_is_the_filter_that_held_the_alert_back_in_each_route() -> None:
    severity_only = RouteSettings(sinks=["a"], min_severity="high")
    source_only = RouteSettings(sinks=["b"], service_sources=[MDE])
    other_tenant = RouteSettings(tenants=["other"], sinks=["c"], service_sources=[MDO])
    assert held_back_reason([severity_only], "acme", Severity.low, MDE) == "below min_severity"
    assert held_back_reason([source_only, other_tenant], "acme", Severity.high, MDO) == "service source not routed"
    both = held_back_reason([severity_only, source_only], "acme", Severity.low, MDO)
    assert both == "below min_severity and service source not routed"
