"""The add-on's CIM knowledge objects (core/app/splunk_ta/default/props.conf, transforms.conf,
eventtypes.conf, tags.conf, lookups/) applied to the events our encoders write.

The conf files are read with addonfactory-splunk-conf-parser-lib (`TABConfigParser`, raw
values); tests/splunk_eval.py models Splunk's search-time pipeline in Splunk's order: KV_MODE =
json, (REPORT: not used, refused), FIELDALIAS (aliases read the extracted fields), EVAL (every
EVAL of a stanza reads the aliased fields in parallel: none sees another's output), LOOKUP
(after EVAL, so the severity lookup reads the CIM severity). It refuses any EVAL function,
operator or props setting it does not model, so no expression passes untested.

Events: Graph alerts and incidents from Microsoft's documentation samples (../shared/samples;
those tests skip, saying so, where the samples are absent) and from tests/peers/alert_factory.py,
normalised, then encoded by `mappings.encoder(format)` in every JSON format the add-on has a
sourcetype for (raw, cim, ocsf, ecs, alert). For each alert: every CIM Alerts field the data
allows is present with a valid value (severity in CIM's list, severity_id an integer, type in
CIM's list, mitre_technique_id like T1234(.001), vendor_account the tenant GUID...), equal to
what the alert says; where the alert lacks the data (no device evidence, no account, not
assigned, no threat family nor detector) the field is absent, as props.conf documents. For
each incident: the Ticket_Management fields.
"""
from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from addonfactory_splunk_conf_parser_lib import TABConfigParser

from connectors.splunk_events import ALERT, INCIDENT, SOURCETYPES
from core.model.schema import Alert, Incident, Severity, TenantRef
from mappings import encoder
from mappings.graph_alerts_v2 import normalise
from mappings.graph_incidents import normalise as normalise_incident
from tests.helpers import REPO, shared_sample
from tests.peers.alert_factory import comment, make_alert, make_alerts, make_incidents
from tests.splunk_eval import SearchTime, Unsupported, event_time, kv_json, parse_eval

TA = REPO / "core" / "app" / "splunk_ta"
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 12, 1, tzinfo=UTC)
START = datetime(2026, 11, 29, tzinfo=UTC)
JSON_FORMATS = ("raw", "cim", "ocsf", "ecs", "alert")

# CIM's allowed values (Alerts: pytest-splunk-addon's Alerts.json; docs.splunk.com CIM Alerts).
CIM_SEVERITIES = ("critical", "high", "medium", "low", "informational")
CIM_TYPES = ("alarm", "alert", "event", "task", "warning")
# Our severity -> CIM's (props.conf: Graph's unknown becomes informational, CIM's lowest).
EXPECTED_SEVERITY = {Severity.unknown: "informational", Severity.informational: "informational",
                     Severity.low: "low", Severity.medium: "medium", Severity.high: "high",
                     Severity.critical: "critical"}
SEVERITY_IDS = {"informational": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
ALERT_FIELDS = ("app", "body", "description", "dest", "id", "mitre_technique_id", "severity", "severity_id",
                "signature", "signature_id", "src", "src_user", "subject", "type", "user", "user_name",
                "vendor_account")
TICKET_FIELDS = ("priority", "severity", "severity_id", "status", "dest", "ticket_id")


# --------------------------------------------------------------------------- the conf files


@cache
def conf(name: str) -> dict[str, dict[str, str]]:
    parser = TABConfigParser()
    parser.read(str(TA / "default" / name))
    return parser.item_dict()


@cache
def search_time(sourcetype: str) -> SearchTime:
    return SearchTime(conf("props.conf")[sourcetype], conf("transforms.conf"), TA / "lookups")


def sourcetype(fmt: str, kind: str) -> str:
    return SOURCETYPES[(fmt, kind)]


# --------------------------------------------------------------------------- the events


def _with(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**raw, **changes}


@cache
def factory_raw_alerts() -> tuple[dict[str, Any], ...]:
    """Realistic alerts, plus the cases a CIM field turns on: an actor, a threat family, each
    severity Graph sends (casing too), an assignee, and an alert with no evidence at all."""
    alerts = make_alerts(24, TENANT.id, START, timedelta(minutes=3), seed=21)
    rng = random.Random(21)
    first = alerts[0]
    extra = [
        _with(first, id="da-actor", actorDisplayName="NOBELIUM", threatFamilyName="Solorigate",
              assignedTo="analyst@contoso.test"),
        _with(first, id="da-unknown", severity="unknown"),
        _with(first, id="da-upper", severity="High"),
        _with(first, id="da-info", severity="informational"),
        make_alert(rng, TENANT.id, START, alert_id="da-mdo", service_source="microsoftDefenderForOffice365"),
        make_alert(rng, TENANT.id, START, alert_id="da-mdi", service_source="microsoftDefenderForIdentity"),
    ]
    return (*alerts, *extra, bare_raw_alert())


def bare_raw_alert() -> dict[str, Any]:
    """An alert that names no device, account, actor, assignee, threat family nor technique."""
    first = make_alerts(1, TENANT.id, START, timedelta(minutes=1), seed=22)[0]
    return _with(first, id="da-bare", evidence=[], actorDisplayName=None, assignedTo=None, threatFamilyName=None,
                 mitreTechniques=[])


@cache
def factory_alerts() -> tuple[Alert, ...]:
    return tuple(normalise(raw, TENANT, INGESTED) for raw in factory_raw_alerts())


@cache
def factory_incidents() -> tuple[Incident, ...]:
    alerts = list(factory_raw_alerts())
    raws = make_incidents(alerts[:12])
    raws += make_incidents(alerts[12:16], assignedTo="analyst@contoso.test", status="inProgress",
                           comments=[comment("contained", "analyst@contoso.test", START)])
    raws += make_incidents(alerts[16:18], assignedTo="Automation", severity="unknown")
    return tuple(normalise_incident(raw, TENANT, INGESTED) for raw in raws)


def docs_alerts() -> list[Alert]:
    return [normalise(raw, TENANT, INGESTED) for raw in shared_sample("graph_alerts_v2_list_docs.json")["value"]]


def docs_incidents() -> list[Incident]:
    found = []
    for name in ("graph_incidents_list_docs.json", "graph_incidents_expand_alerts_docs.json"):
        found += [normalise_incident(raw, TENANT, INGESTED) for raw in shared_sample(name)["value"]]
    return found


def cim_fields(fmt: str, event: Alert | Incident) -> dict[str, list[str]]:
    kind = INCIDENT if isinstance(event, Incident) else ALERT
    return search_time(sourcetype(fmt, kind)).fields(json.loads(encoder(fmt)(event)))


# --------------------------------------------------------------------------- what each field must be


def _one(fields: dict[str, list[str]], name: str) -> str:
    values = fields.get(name)
    assert values is not None, f"{name} missing"
    assert len(values) == 1, f"{name} should be single-valued: {values}"
    return values[0]


def _accounts(alert: Alert) -> list[Any]:
    return [e.user for e in alert.evidence if e.kind in ("user", "process") and e.user is not None
            and (e.user.upn or e.user.account_name)]


def check_alert(fmt: str, alert: Alert, fields: dict[str, list[str]]) -> None:
    where = f"{fmt} alert {alert.id}"
    for name in ALERT_FIELDS:
        for value in fields.get(name, []):
            assert value not in ("", "null"), f"{where}: {name} = {value!r}"
    assert _one(fields, "app") == "ms:defender", where
    assert _one(fields, "type") in CIM_TYPES and fields["type"] == ["alert"], where
    assert _one(fields, "id") == alert.id, where
    vendor_account = _one(fields, "vendor_account")
    assert GUID.fullmatch(vendor_account) and vendor_account == TENANT.id, where
    severity = _one(fields, "severity")
    assert severity in CIM_SEVERITIES and severity == EXPECTED_SEVERITY[alert.severity], (where, severity)
    assert int(_one(fields, "severity_id")) == SEVERITY_IDS[severity], where
    assert fields.get("signature") == ([alert.title] if alert.title else None), where
    assert fields.get("subject") == fields.get("signature"), where
    assert fields.get("description") == ([alert.description] if alert.description else None), where
    assert fields.get("body") == fields.get("description"), where
    assert fields.get("src") == ([alert.service_source] if alert.service_source else None), where
    expected_signature_id = alert.threat_family_name or alert.detector_id
    assert fields.get("signature_id") == ([expected_signature_id] if expected_signature_id else None), where
    techniques = fields.get("mitre_technique_id")
    if alert.mitre_techniques:
        assert techniques and set(alert.mitre_techniques) <= set(techniques), (where, techniques)
        assert all(TECHNIQUE.fullmatch(t) for t in techniques), (where, techniques)
    else:
        assert techniques is None, where
    assert fields.get("src_user") == ([alert.assigned_to] if alert.assigned_to else None), where
    devices = [e for e in alert.evidence if e.kind == "device" and (e.fqdn or e.hostname or e.mde_device_id)]
    if devices:
        assert fields.get("dest"), f"{where}: dest missing though the alert names {len(devices)} device(s)"
    if not alert.evidence:
        assert "dest" not in fields and "user_name" not in fields, where
    if alert.actor_display_name:
        assert alert.actor_display_name in fields.get("user", []), where
    elif _accounts(alert):
        assert fields.get("user"), f"{where}: user missing though the evidence names accounts"
        assert fields.get("user_name") or not any(a.account_name for a in _accounts(alert)), where
    elif not alert.evidence:
        assert "user" not in fields, where


def check_incident(fmt: str, incident: Incident, fields: dict[str, list[str]]) -> None:
    where = f"{fmt} incident {incident.id}"
    for name in (*TICKET_FIELDS, "user", "src_user", "description", "vendor_account"):
        for value in fields.get(name, []):
            assert value not in ("", "null"), f"{where}: {name} = {value!r}"
    assert _one(fields, "ticket_id") == incident.id, where
    assert _one(fields, "status"), where
    severity = _one(fields, "severity")
    assert severity in CIM_SEVERITIES and severity == EXPECTED_SEVERITY[incident.severity], (where, severity)
    assert int(_one(fields, "severity_id")) == SEVERITY_IDS[severity], where
    assert _one(fields, "priority") == severity, where
    if incident.incident_web_url:
        assert _one(fields, "dest") == incident.incident_web_url, where
    assert fields.get("user") == fields.get("src_user"), where
    if incident.assigned_to:
        assert fields.get("user") == [incident.assigned_to], where
    else:
        assert "user" not in fields, where
    if incident.title:
        assert _one(fields, "description") == incident.title, where
    assert _one(fields, "vendor_account") == TENANT.id, where
    assert _one(fields, "app") == "ms:defender", where
    if incident.times.created is not None:  # optional in CIM; each shape's own time text
        assert _one(fields, "time_submitted") not in ("", "null"), where


# --------------------------------------------------------------------------- structure


def test_every_json_sourcetype_has_a_props_stanza_an_eventtype_and_its_tags() -> None:
    props, eventtypes, tags = conf("props.conf"), conf("eventtypes.conf"), conf("tags.conf")
    by_sourcetype = {re.fullmatch(r'sourcetype="([^"]+)"', spec["search"]).group(1): name  # type: ignore[union-attr]
                     for name, spec in eventtypes.items()}
    for (fmt, kind), name in SOURCETYPES.items():
        if fmt == "cef":  # CEF text, left to a CEF add-on
            assert name not in props and name not in by_sourcetype, name
            continue
        stanza = props[name]
        assert stanza["KV_MODE"] == "json" and stanza["SHOULD_LINEMERGE"] == "false", name
        assert stanza["LINE_BREAKER"] == "([\\r\\n]+)", name
        assert int(stanza["TRUNCATE"]) == 0 or int(stanza["TRUNCATE"]) >= 1_000_000, name
        eventtype = by_sourcetype[name]
        enabled = {tag for tag, state in tags[f"eventtype={eventtype}"].items() if state == "enabled"}
        assert enabled == ({"alert"} if kind == ALERT else {"ticketing", "incident"}), (name, enabled)
    json_sourcetypes = {name for (fmt, _), name in SOURCETYPES.items() if fmt != "cef"}
    assert set(props) == json_sourcetypes
    assert set(by_sourcetype) == json_sourcetypes


def test_the_severity_lookup_covers_every_cim_severity() -> None:
    transforms = conf("transforms.conf")
    for name in set(SOURCETYPES.values()) & set(conf("props.conf")):
        for lookup in search_time(name).lookups:
            assert lookup.table in transforms, name
    rows = search_time(sourcetype("raw", ALERT)).tables["defender_forwarder_severities"][0]
    assert {row["severity"]: int(row["severity_id"]) for row in rows} == SEVERITY_IDS
    assert all(row["priority"] in CIM_SEVERITIES for row in rows)


def test_every_field_the_knowledge_objects_read_is_in_our_events() -> None:
    """A typo in a FIELDALIAS/EVAL/LOOKUP field name makes a field that is never there."""
    corpus: dict[str, set[str]] = {}
    for fmt in JSON_FORMATS:
        for event in (*factory_alerts(), *factory_incidents()):
            kind = INCIDENT if isinstance(event, Incident) else ALERT
            corpus.setdefault(sourcetype(fmt, kind), set()).update(kv_json(json.loads(encoder(fmt)(event))))
    for name, seen in corpus.items():
        st = search_time(name)
        # The lookup reads severity as EVAL-severity leaves it.
        unknown = st.read_fields() - seen - set(st.evals)
        assert not unknown, f"{name} reads fields none of our events has: {sorted(unknown)}"


# --------------------------------------------------------------------------- CIM Alerts


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_alerts_get_every_cim_alerts_field_the_data_allows(fmt: str) -> None:
    seen: set[str] = set()
    for alert in factory_alerts():
        fields = cim_fields(fmt, alert)
        check_alert(fmt, alert, fields)
        seen.update(name for name in ALERT_FIELDS if name in fields)
    assert seen == set(ALERT_FIELDS), f"never set: {sorted(set(ALERT_FIELDS) - seen)}"


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_an_alert_without_evidence_has_no_dest_user_or_user_name(fmt: str) -> None:
    bare = normalise(bare_raw_alert(), TENANT, INGESTED)
    fields = cim_fields(fmt, bare)
    for name in ("dest", "user", "user_name", "src_user", "mitre_technique_id"):
        assert name not in fields, (fmt, name, fields.get(name))
    assert _one(fields, "signature_id") == bare.detector_id  # no threat family: the detector id
    check_alert(fmt, bare, fields)


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_microsofts_sample_alerts_get_the_cim_alerts_fields(fmt: str) -> None:
    for alert in docs_alerts():
        fields = cim_fields(fmt, alert)
        check_alert(fmt, alert, fields)
        for name in ("dest", "user", "mitre_technique_id", "signature_id"):
            assert fields.get(name), (fmt, alert.id, name)


# --------------------------------------------------------------------------- Ticket_Management


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_incidents_get_the_ticket_management_fields(fmt: str) -> None:
    incidents = factory_incidents()
    assert any(i.assigned_to for i in incidents) and any(not i.assigned_to for i in incidents)
    for incident in incidents:
        check_incident(fmt, incident, cim_fields(fmt, incident))


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_microsofts_sample_incidents_get_the_ticket_management_fields(fmt: str) -> None:
    for incident in docs_incidents():
        check_incident(fmt, incident, cim_fields(fmt, incident))


def test_raw_incident_comments_are_cims_comments() -> None:
    incident = next(i for i in factory_incidents() if i.comments)
    fields = cim_fields("raw", incident)
    assert fields["comments"] == [c.text for c in incident.comments]
    assert cim_fields("cim", incident)["comments"] == fields["comments"]


# --------------------------------------------------------------------------- time and line breaking


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_the_time_is_the_versions_last_update(fmt: str) -> None:
    events: list[Alert | Incident] = [*factory_alerts()[:6], *factory_incidents()[:3]]
    for event in events:
        kind = INCIDENT if isinstance(event, Incident) else ALERT
        stanza = conf("props.conf")[sourcetype(fmt, kind)]
        found = event_time(encoder(fmt)(event).decode(), stanza)
        assert found is not None, (fmt, kind, event.id)
        assert abs(found - event.times.last_updated.timestamp()) < 0.001, (fmt, kind, event.id)


@pytest.mark.parametrize("fmt", JSON_FORMATS)
def test_ndjson_breaks_into_one_event_per_object(fmt: str) -> None:
    events: list[Alert | Incident] = [*factory_alerts()[:3], factory_incidents()[0]]
    text = "\n".join(encoder(fmt)(event).decode() for event in events) + "\n"
    stanza = conf("props.conf")[sourcetype(fmt, ALERT)]
    parts = [part for part in re.split(stanza["LINE_BREAKER"], text) if part.strip()]
    assert [json.loads(part) for part in parts] == [json.loads(encoder(fmt)(event)) for event in events]


# --------------------------------------------------------------------------- the model itself


def test_the_model_refuses_what_it_does_not_know() -> None:
    for expression in ('mvcount(x)', 'a . b', 'x + 1', 'replace(x, "a", "b")', 'lower(x'):
        with pytest.raises(Unsupported):
            parse_eval(expression)
    with pytest.raises(Unsupported):
        SearchTime({"KV_MODE": "json", "REPORT-x": "y"}, {}, TA / "lookups")
    with pytest.raises(Unsupported):  # mvfilter reads exactly one field
        SearchTime({"KV_MODE": "json", "EVAL-x": 'mvfilter(a!=b)'}, {}, TA / "lookups").fields({"a": "1", "b": "2"})


def test_the_model_follows_splunks_order() -> None:
    """Aliases before EVAL; EVALs in parallel (EVAL-b reads a's extracted value, not EVAL-a's);
    JSON null is the text "null"; ASNEW keeps an existing field; AS from a missing source
    removes the destination (Splunk 7.2.4+)."""
    stanza = {"KV_MODE": "json", "FIELDALIAS-x": "n.k AS a c ASNEW d", "FIELDALIAS-y": "missing as c",
              "EVAL-a": 'upper(a)', "EVAL-b": 'a',
              "EVAL-e": 'mvfilter(\'l{}\'!="null")'}
    fields = SearchTime(stanza, {}, TA / "lookups").fields({"n": {"k": "v"}, "c": "x", "d": "kept",
                                                           "l": [None, "y", None]})
    assert fields["a"] == ["V"] and fields["b"] == ["v"] and fields["d"] == ["kept"] and fields["e"] == ["y"]
    assert "c" not in fields
    assert fields["l{}"] == ["null", "y", "null"]
