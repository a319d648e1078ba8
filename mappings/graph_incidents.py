"""Microsoft Graph `security/incidents` (`microsoft.graph.security.incident`) -> the common
schema's `Incident`: the table below, one row per property, on the machinery of the alerts
mapping (`mappings.graph_alerts_v2`: converters, `fill`, enums matched case-insensitively,
unknown values kept verbatim). What the table does not know (`tenantId`, `@odata.type`,
properties Graph adds later) is kept in `extra`, and the incident whole in `raw`.

The incident's alerts are not embedded (the forwarder never asks for `$expand=alerts`): their
ids, where the source read them (`/security/incidents/{id}/alerts?$select=id`), come in the
non-Graph property `alertIds` the source adds; an `alerts` array, should one be there, gives
its ids too.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from core.model.schema import Incident, IncidentTimes, TenantRef
from mappings.graph_alerts_v2 import (
    ALERT_CLASSIFICATION,
    ALERT_DETERMINATION,
    COMMENT,
    ID_TEXT,
    INTEGER,
    TEXT,
    TEXT_LIST,
    TIMESTAMP,
    Enum,
    MappingError,
    NestedList,
    Table,
    _at,
    _expected,
    _Invalid,
    _version_key,
    fill,
    identity,
    severity_of,
)

SOURCE = "graph_incidents"
# Where the source puts the ids of the incident's alerts (not a Graph property).
ALERT_IDS = "alertIds"

INCIDENT_STATUS = Enum(("active", "resolved", "inProgress", "redirected", "unknownFutureValue", "awaitingAction"))

TIMES = Table(
    ("createdDateTime", "created", TIMESTAMP),
    ("lastUpdateDateTime", "last_updated", TIMESTAMP),
    # and `ingested`, the time the forwarder read the incident
)

INCIDENT = Table(
    ("id", "id", ID_TEXT),
    ("status", "status", INCIDENT_STATUS),
    ("severity", "severity_original", TEXT),  # `severity` itself is derived from it, below
    ("classification", "classification", ALERT_CLASSIFICATION),
    ("determination", "determination", ALERT_DETERMINATION),
    ("displayName", "title", TEXT),
    ("description", "description", TEXT),
    ("summary", "summary", TEXT),
    ("assignedTo", "assigned_to", TEXT),
    ("lastModifiedBy", "last_modified_by", TEXT),
    ("incidentWebUrl", "incident_web_url", TEXT),
    ("redirectIncidentId", "redirect_incident_id", ID_TEXT),
    ("priorityScore", "priority_score", INTEGER),
    ("customTags", "custom_tags", TEXT_LIST),
    ("tags", "custom_tags", TEXT_LIST),  # the docs' second example spells customTags so
    ("systemTags", "system_tags", TEXT_LIST),
    ("comments", "comments", NestedList(COMMENT)),
    ("resolvingComment", "resolving_comment", TEXT),
    (ALERT_IDS, "alert_ids", TEXT_LIST),
    model=Incident,
)


def normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Incident:
    """One Graph incident of `tenant`, read at `ingested` -> Incident (with `raw` = `raw`).

    Raises MappingError, and only MappingError, when the incident cannot be normalised.
    """
    if not isinstance(raw, dict):
        raise MappingError(f"incident: expected an object, got {type(raw).__name__}")
    rest = dict(raw)
    expanded = rest.pop("alerts", None)
    try:
        fields = fill(INCIDENT, rest)
        times = fill(TIMES, rest)
        expanded_ids = _expanded_alert_ids(expanded)
    except _Invalid as error:
        raise MappingError(f"{error.where() if error.path else 'incident'}: {error.reason}") from None
    incident_id, last_updated = identity(fields, times, "lastUpdateDateTime")
    if expanded_ids and not fields.get("alert_ids"):
        fields["alert_ids"] = expanded_ids
    return Incident(**fields, source=SOURCE, tenant=tenant, times=IncidentTimes(**times, ingested=ingested),
                    extra=rest, version_key=_version_key(raw, tenant.id, incident_id, last_updated), raw=raw,
                    severity=severity_of(fields["severity_original"]))


def _expanded_alert_ids(alerts: Any) -> list[str]:
    """The ids of an `alerts` array (an incident read with `$expand=alerts` elsewhere), or of
    one alert object (Elastic's pipeline splits the array, one document per alert)."""
    if alerts is None:
        return []
    if isinstance(alerts, dict):
        alerts = [alerts]
    if not isinstance(alerts, list):
        raise _at("alerts", _expected("a list of alerts", alerts))
    return [item["id"] for item in alerts if isinstance(item, dict) and isinstance(item.get("id"), str)]
