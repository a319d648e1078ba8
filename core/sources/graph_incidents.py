"""Source kind `graph_incidents`: Microsoft Graph `GET /v1.0/security/incidents`, the Defender XDR
incidents of a tenant (the alerts Defender correlated, as a SOC works them), read by
`lastUpdateDateTime` like the alerts.

It never asks for `$expand=alerts`: that answers HTTP 500 for good on large tenants and would
freeze the cursor. Where an incident event needs its alert ids, the reader asks
`/security/incidents/{id}/alerts?$select=id` for each new incident version, in the tenant's
request budget (core/sources/graph_incident_reader.py), and adds them to the raw record as
`alertIds`, a property Graph does not have.
"""
from __future__ import annotations

from core.model.schema import Incident
from core.sources.contract import Permission, SourceKind, VersionKey, lazy_reader

KIND = SourceKind(
    name="graph_incidents",
    permission=Permission(api="Microsoft Graph", name="SecurityIncident.Read.All"),
    mapping="graph_incidents",
    path="/v1.0/security/incidents",
    # An incident is updated in place (status, assignment, alerts added, merged into another...);
    # each update gives it a new lastUpdateDateTime, and it is a new version to forward. Incident
    # ids are another id space than alert ids: the state keeps them scoped (VersionKey.scope).
    version=VersionKey(id="id", time="lastUpdateDateTime", scope="incident"),
    reader=lazy_reader("core.sources.graph_incident_reader", "GraphIncidentSource"),
    event_kind=Incident.KIND,
)
