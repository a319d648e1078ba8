"""An incident in every output format: its own event kind, never an alert's shape.

- OCSF: an Incident Finding (class 2005) valid against the official OCSF 1.8.0 schema
  (PyPI `ocsf-json-schema`, as tests/mappings/test_ocsf_official.py validates alerts).
- ECS: compared with Elastic's m365_defender `incident` pipeline fixture, as the alert
  document is (tests/mappings/test_format_ecs.py). The compared set is the incident's own
  fields: Elastic's collector embeds one alert per document and fills
  `m365_defender.incident.alert.*` and the ECS groups of that alert's evidence (file, host,
  process, registry, email, threat, user, source.ip, related.hash/hosts/ip, event.provider,
  event.action, cloud.provider) from it; we link alerts by id, so those are out of scope, as
  are the fixture's test-config fields (event.original, tags). `related.user` is compared on
  the values that come from the incident itself (assignedTo, comment authors).
- CIM, CEF, raw and the `alert` format; hostile incidents (injection characters, a 10 MB
  description, unknown enums) encoded or cleanly refused in every format; `convert`.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from typing import Any

import pytest

from core.model.schema import Incident, TenantRef
from mappings import OUTPUT_FORMATS, cef, cim, ecs, encoder, ocsf, raw
from mappings import alert as alert_format
from mappings.graph_incidents import normalise
from tests.helpers import SHARED_SAMPLES, run_cli, shared_sample
from tests.mappings.test_format_ecs import _MISSING, _at, _leaves

TENANT = TenantRef(id="b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c", label="contoso")
INGESTED = datetime(2026, 12, 7, tzinfo=UTC)
ELASTIC = SHARED_SAMPLES / "elastic" / "m365_defender" / "incident"
FORMATS = (*OUTPUT_FORMATS, "alert")

# Elastic fields filled from the embedded alert (see the module docstring): not compared.
FROM_EMBEDDED_ALERT = ("m365_defender.incident.alert.", "file.", "host.", "process.", "registry.", "email.",
                       "threat.", "user.", "source.ip", "related.hash", "related.hosts", "related.ip",
                       "event.provider", "event.action", "cloud.provider")
TEST_CONFIG = ("event.original", "tags")
ECS_TARGET = 0.95


def _documented() -> Incident:
    [item] = shared_sample("graph_incidents_expand_alerts_docs.json")["value"]
    return normalise(item, TENANT, INGESTED)


def _incident(**properties: Any) -> Incident:
    item = {"id": "41", "lastUpdateDateTime": "2026-12-01T10:00:00Z", "createdDateTime": "2026-12-01T09:00:00Z",
            "severity": "high", "status": "active", **properties}
    return normalise(item, TENANT, INGESTED)


# --------------------------------------------------------------------------- OCSF


@cache
def _incident_finding() -> Any:
    try:
        from jsonschema import Draft202012Validator
        from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema, get_packaged_versions
    except ImportError:
        pytest.skip("PyPI ocsf-json-schema is not installed (the `test` extra installs it)")
    if ocsf.OCSF_VERSION not in get_packaged_versions():
        pytest.skip(f"ocsf-json-schema does not ship OCSF {ocsf.OCSF_VERSION}")
    return Draft202012Validator(OcsfJsonSchemaEmbedded(get_ocsf_schema(ocsf.OCSF_VERSION)).get_class_schema(
        "incident_finding", []))


def _ocsf_violations(incident: Incident) -> list[str]:
    event = json.loads(ocsf.encode(incident))
    return [f"{e.json_path}: {e.message[:200]}" for e in _incident_finding().iter_errors(event)]


def _elastic_raws() -> list[dict[str, Any]]:
    if not ELASTIC.exists():
        pytest.skip(f"Elastic's incident fixture is not at {ELASTIC}")
    return [json.loads(line) for path in sorted(ELASTIC.glob("*.log")) for line in path.read_text().splitlines()
            if line.strip() and "value" not in json.loads(line)]  # {"value": []}: an empty page, dropped


def test_incidents_are_valid_incident_findings() -> None:
    incidents = [_documented(), *(normalise(item, TENANT, INGESTED) for item in _elastic_raws()),
                 _incident(status="redirected", redirectIncidentId="77"), _incident(assignedTo=None),
                 _incident(status="brandNewStatus", severity="catastrophic", classification="someNewVerdict")]
    assert {i.id: _ocsf_violations(i) for i in incidents} == {i.id: [] for i in incidents}
    broken = {**json.loads(ocsf.encode(_documented())), "assignee": None}
    assert list(_incident_finding().iter_errors(broken))  # the validator is not blind


def test_ocsf_incident_fields() -> None:
    incident = _documented()
    event = json.loads(ocsf.encode(incident))
    assert (event["class_uid"], event["category_uid"], event["status"]) == (2005, 2, "New")
    [info] = event["finding_info_list"]
    assert info["uid"] == incident.id and info["title"] == incident.title
    assert [e["uid"] for e in info["related_events"]] == incident.alert_ids
    assert event["metadata"]["tenant_uid"] == TENANT.id and event["assignee"]["email_addr"] == incident.assigned_to
    assert event["verdict"] == "True Positive" and event["unmapped"]["determination"] == "multiStagedAttack"
    merged = json.loads(ocsf.encode(_incident(status="redirected", redirectIncidentId="77")))
    assert (merged["activity_name"], merged["status_id"], merged["unmapped"]["redirect_incident_id"]) == \
        ("Close", 5, "77")
    created = _incident(lastUpdateDateTime="2026-12-01T09:00:00Z")
    assert json.loads(ocsf.encode(created))["activity_name"] == "Create"  # convert: created = updated
    created.first_sight = False
    assert json.loads(ocsf.encode(created))["type_uid"] == 200502


# --------------------------------------------------------------------------- ECS


def _incident_users(item: dict[str, Any]) -> set[str]:
    users = {item["assignedTo"]} if isinstance(item.get("assignedTo"), str) else set()
    users |= {c["createdBy"] for c in item.get("comments") or [] if isinstance(c, dict) and c.get("createdBy")}
    return users | {u.partition("@")[0] for u in users}


def _ecs_comparison() -> tuple[int, list[str]]:
    """(compared fields, those that differ) over every document of Elastic's fixture."""
    compared, differ = 0, []
    for name in ("test-incident", "test-incident-no-alerts"):
        items = [json.loads(line) for line in (ELASTIC / f"{name}.log").read_text().splitlines() if line.strip()]
        documents = json.loads((ELASTIC / f"{name}.log-expected.json").read_text())["expected"]
        for item, expected in zip(items, documents, strict=True):
            if expected is None:  # the empty page
                continue
            ours = json.loads(ecs.encode(normalise(item, TENANT, INGESTED)))
            for path, want in _leaves(expected):
                if path.startswith(FROM_EMBEDDED_ALERT) or path in TEST_CONFIG:
                    continue
                if path == "related.user":
                    own = _incident_users(item)
                    want = [user for user in want if user in own]
                    if not want:
                        continue
                compared += 1
                if (got := _at(ours, path)) != want:
                    differ.append(f"{item['id']} {path}: expected {want!r}, got "
                                  f"{'missing' if got is _MISSING else repr(got)}")
    return compared, differ


def test_ecs_incident_matches_elastics_fixture() -> None:
    if not ELASTIC.exists():
        pytest.skip(f"Elastic's incident fixture is not at {ELASTIC}")
    compared, differ = _ecs_comparison()
    share = (compared - len(differ)) / compared
    # What differs: the older pipeline revision of test-incident.log (1-4 severity scale, the
    # assignee's address whole in source.user.name and related.user) where we follow the current one.
    assert all(" event.severity:" in d or " source.user.name:" in d or " related.user:" in d for d in differ), differ
    assert compared > 300 and share >= ECS_TARGET, (share, differ)


def test_ecs_current_revision_document_is_ours_whole() -> None:
    if not ELASTIC.exists():
        pytest.skip(f"Elastic's incident fixture is not at {ELASTIC}")
    items = [json.loads(line) for line in (ELASTIC / "test-incident-no-alerts.log").read_text().splitlines()]
    documents = json.loads((ELASTIC / "test-incident-no-alerts.log-expected.json").read_text())["expected"]
    for item, expected in zip(items, documents, strict=True):
        ours = json.loads(ecs.encode(normalise(item, TENANT, INGESTED)))
        assert [path for path, want in _leaves(expected)
                if path not in TEST_CONFIG and _at(ours, path) != want] == []


def test_ecs_links_alerts_by_id() -> None:
    incident = _documented()
    doc = json.loads(ecs.encode(incident))
    assert doc["m365_defender"]["incident"]["alert"] == {"id": incident.alert_ids}
    assert doc["defender_forwarder"]["kind"] == "incident" and doc["event"]["url"] == incident.incident_web_url


# --------------------------------------------------------------------------- CIM, CEF, raw, alert


def test_cim_incident_is_alerts_compatible_with_the_add_ons_incident_fields() -> None:
    incident = _documented()
    doc = json.loads(cim.encode(incident))
    assert (doc["app"], doc["type"], doc["kind"], doc["id"], doc["ticket_id"]) == \
        ("ms:defender", "alert", "incident", incident.id, incident.id)
    assert doc["severity"] == "medium" and doc["status"] == "active" and doc["signature"] == incident.title
    assert doc["user"] == doc["src_user"] == incident.assigned_to and doc["dest"] == incident.incident_web_url
    assert doc["alert_id"] == incident.alert_ids and doc["vendor_account"] == TENANT.id
    assert doc["defender"]["description"] == incident.description and doc["comments"] == ["Demo incident"]


def test_cef_incident_line() -> None:
    incident = _documented()
    line = cef.encode(incident)
    header = line.decode().split("|")
    assert header[:7] == ["CEF:0", "Microsoft", "Microsoft Defender XDR", "incidents", "incident", incident.title, "5"]
    text = line.decode()
    for part in (f"externalId={incident.id}", "act=active", "cat=truePositive", f"suser={incident.assigned_to}",
                 f"cs3Label=incidentId cs3={incident.id}", f"cs4Label=alertIds cs4={incident.alert_ids[0]}",
                 "flexString1=multiStagedAttack"):
        assert part in text
    fitted, how = cef.fit(line, 700)
    assert how is cef.Fit.SHORTENED and len(fitted) <= 700 and f"cs3={incident.id}".encode() in fitted


def test_raw_and_alert_formats_carry_the_incident() -> None:
    incident = _documented()
    document = json.loads(raw.encode(incident))
    assert document["id"] == incident.id and document["tenant"] == {"id": TENANT.id, "label": "contoso"}
    assert document["forwarder"] == {"version_key": incident.version_key} and "alerts" in document  # as sent
    assert alert_format.decode(alert_format.encode(incident)) == incident


# --------------------------------------------------------------------------- hostile incidents


HOSTILE_TEXT = "a|b\\c=d\ne\rf\x00g\u2028h<script>'\";DROP TABLE x;--${jndi:ldap://x}%n"


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_incidents_are_encoded_never_crash(fmt: str) -> None:
    encode = encoder(fmt)
    cases = [
        _incident(displayName=HOSTILE_TEXT, assignedTo=HOSTILE_TEXT, customTags=[HOSTILE_TEXT],
                  comments=[{"comment": HOSTILE_TEXT, "createdBy": HOSTILE_TEXT}], incidentWebUrl=HOSTILE_TEXT),
        _incident(description="x" * 10_000_000),
        _incident(status="someNewStatus", severity="someNewSeverity", classification="x", determination="y"),
    ]
    for incident in cases:
        line = encode(incident)
        assert b"\n" not in line and b"\r" not in line
        if fmt == "cef":
            assert b"\x00" not in line and len(line) < 20_000  # msg is cut to its 1023 bytes
        else:
            assert json.loads(line)


# --------------------------------------------------------------------------- convert


@pytest.mark.skipif(not SHARED_SAMPLES.exists(), reason="../shared/samples is not beside the repo")
def test_convert_takes_incidents() -> None:
    sample = SHARED_SAMPLES / "graph_incidents_list_docs.json"
    result = run_cli("convert", "--source", "graph_incidents", "--format", "ocsf", str(sample))
    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert json.loads(line)["class_uid"] == 2005
    bad = run_cli("convert", "--source", "graph_incidents", "--format", "cef", "-", input='{"id": "1"}\n')
    assert bad.returncode == 1 and "lastUpdateDateTime: missing" in bad.stderr and bad.stdout == ""
    assert "graph_incidents" in run_cli("convert", "--help").stdout
