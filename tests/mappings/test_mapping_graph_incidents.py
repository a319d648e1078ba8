"""mappings/graph_incidents.py: Microsoft's documented incidents and Elastic's incident fixture
normalised into the common Incident; a malformed incident refused with the property named."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from core.model.schema import Incident, Severity, TenantRef, decode_event, encode_alert
from mappings.graph_incidents import MappingError, normalise
from tests.helpers import SHARED_SAMPLES, shared_sample

TENANT = TenantRef(id="b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c", label="contoso")
INGESTED = datetime(2026, 12, 7, tzinfo=timezone.utc)


def _elastic_incidents() -> list[dict[str, Any]]:
    folder = SHARED_SAMPLES / "elastic" / "m365_defender" / "incident"
    if not folder.exists():
        pytest.skip(f"shared sample {folder} is not here (the tests read ../shared/samples)")
    records = [json.loads(line) for path in sorted(folder.glob("*.log")) for line in path.read_text().splitlines()
               if line.strip()]
    return [record for record in records if "value" not in record]  # {"value": []}: an empty page, dropped


def test_the_documented_incident_lands_in_every_field() -> None:
    [raw] = shared_sample("graph_incidents_list_docs.json")["value"]
    incident = normalise(raw, TENANT, INGESTED)
    assert (incident.id, incident.source, incident.kind) == ("2972395", "graph_incidents", "incident")
    # The docs spell the enums in PascalCase here: matched case-insensitively, in Graph's spelling.
    assert (incident.status, incident.classification, incident.determination) == \
        ("active", "truePositive", "multiStagedAttack")
    assert incident.severity is Severity.medium and incident.severity_original == "Medium"
    assert incident.title == raw["displayName"] and incident.assigned_to == "KaiC@contoso.onmicrosoft.com"
    assert incident.custom_tags == ["Demo"] and incident.system_tags == ["Defender Experts"]
    assert incident.comments[0].text == "Demo incident" and incident.comments[0].author == "DavidS@contoso.onmicrosoft.com"
    assert incident.times.last_updated == datetime(2021, 9, 30, 9, 35, 45, 113333, tzinfo=timezone.utc)
    assert incident.version_key == f"{TENANT.id}/2972395/2021-09-30T09:35:45.113333Z"
    assert incident.extra == {"@odata.type": "#microsoft.graph.security.incident", "tenantId": raw["tenantId"]}
    assert incident.raw is raw and incident.alert_ids == []


def test_an_expanded_incident_gives_its_alert_ids_and_the_alert_format_reads_back() -> None:
    [raw] = shared_sample("graph_incidents_expand_alerts_docs.json")["value"]
    incident = normalise(raw, TENANT, INGESTED)
    assert incident.alert_ids == [alert["id"] for alert in raw["alerts"]]
    assert "alerts" not in incident.extra  # the alerts are their own events, linked by id
    assert decode_event(encode_alert(incident)) == incident


def test_elastic_incident_fixture_normalises_whole() -> None:
    incidents = [normalise(raw, TENANT, INGESTED) for raw in _elastic_incidents()]
    assert len(incidents) == 12
    assert all(isinstance(i, Incident) and i.severity is not Severity.unknown for i in incidents)
    # Elastic's fixture has each incident with one of its alerts (their pipeline splits them).
    assert sum(1 for i in incidents if i.alert_ids) == 10
    assert {i.status for i in incidents} == {"active", "resolved"}


def test_a_merged_incident_points_at_the_one_it_went_into() -> None:
    raw = {"id": "41", "status": "Redirected", "redirectIncidentId": 77, "severity": "high",
           "lastUpdateDateTime": "2026-12-01T10:00:00Z", "tags": ["x"], "priorityScore": 88, "futureProperty": 1}
    incident = normalise(raw, TENANT, INGESTED)
    assert (incident.status, incident.redirect_incident_id) == ("redirected", "77")
    assert incident.priority_score == 88 and incident.custom_tags == ["x"]
    assert incident.extra == {"futureProperty": 1}


@pytest.mark.parametrize(("raw", "reason"), [
    ({"id": "1"}, "lastUpdateDateTime: missing"),
    ({"lastUpdateDateTime": "2026-01-01T00:00:00Z"}, "id: missing"),
    ({"id": "1", "lastUpdateDateTime": "2026-01-01T00:00:00Z", "alerts": 3}, "alerts: expected a list of alerts"),
    ({"id": "1", "lastUpdateDateTime": "2026-01-01T00:00:00Z", "priorityScore": "x"}, "priorityScore: expected"),
    ({"id": "1", "lastUpdateDateTime": "yesterday"}, "lastUpdateDateTime"),
    (["not", "an", "incident"], "incident: expected an object"),
])
def test_a_malformed_incident_is_refused_naming_the_property(raw: Any, reason: str) -> None:
    with pytest.raises(MappingError, match=reason):
        normalise(raw, TENANT, INGESTED)
