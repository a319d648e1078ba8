"""An alert and an incident of one tenant, as the outbox hands them to a connector: for the
tests that check each sink keeps the two kinds apart (and routes choose by kind)."""
from __future__ import annotations

from datetime import UTC, datetime

from connectors.base import Event
from core.model.schema import (
    Alert,
    AlertTimes,
    EventMeta,
    Incident,
    IncidentTimes,
    Severity,
    TenantRef,
    encode_alert,
    version_key,
)

WHEN = datetime(2026, 11, 20, 8, 30, tzinfo=UTC)
INCIDENT_URL = "https://security.microsoft.com/incidents/2972395?tid=22222222-2222-4222-8222-222222222222"


def an_alert(tenant: TenantRef, severity: Severity = Severity.high, service_source: str | None = None) -> Alert:
    return Alert(source="graph_alerts", tenant=tenant, id="da637551227677560813_-961444813",
                 incident_id="2972395", version_key=version_key(tenant.id, "da637551227677560813_-961444813", WHEN),
                 times=AlertTimes(created=WHEN, last_updated=WHEN, ingested=WHEN), severity=severity,
                 status="new", title="Suspicious PowerShell command line",
                 service_source=service_source or "microsoftDefenderForEndpoint")


def an_incident(tenant: TenantRef, severity: Severity = Severity.medium) -> Incident:
    return Incident(source="graph_incidents", tenant=tenant, id="2972395",
                    version_key=version_key(tenant.id, "2972395", WHEN),
                    times=IncidentTimes(created=WHEN, last_updated=WHEN, ingested=WHEN), severity=severity,
                    status="active", title="Multi-stage incident involving Execution & Initial access",
                    assigned_to="soc@mssp.example", incident_web_url=INCIDENT_URL,
                    alert_ids=["da637551227677560813_-961444813", "fa9e6a1e2c-5d4b-4a3b"])


def kind_events(tenant: TenantRef) -> list[Event]:
    """An alert (row 1) and an incident (row 2), each in the `alert` format (the common schema)."""
    return [Event(row, EventMeta.of(event), encode_alert(event))  # type: ignore[arg-type]
            for row, event in enumerate((an_alert(tenant), an_incident(tenant)), start=1)]
