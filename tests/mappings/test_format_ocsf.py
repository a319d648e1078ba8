"""Alert -> OCSF 1.8.0 Detection Finding: required attributes, types, ms timestamps, enum
choices, evidence objects, MSSP context, and `unmapped` carrying what OCSF has no place for;
the activity from `first_sight`; every line we emit (factory, shared samples, hostile
alerts) validated against a JSON Schema of OCSF's rules; deterministic bytes."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator, validators

from core.model.schema import Alert, TenantRef, decode_alert, encode_alert
from mappings import ocsf
from mappings.graph_alerts_v2 import MappingError, normalise
from tests.helpers import SHARED_SAMPLES, shared_sample
from tests.peers.alert_factory import make_alerts

REPO = Path(__file__).resolve().parents[2]

SAMPLES = SHARED_SAMPLES
UTC = timezone.utc
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."


def _ms(text: str) -> int:
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}
    return normalise(raw, TENANT, INGESTED)


@pytest.fixture
def powershell() -> tuple[dict[str, Any], dict[str, Any]]:
    raw = shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json")
    return raw, ocsf.to_ocsf(normalise(raw, TENANT, INGESTED))


def _factory_alerts(n: int) -> list[dict[str, Any]]:
    factory = pytest.importorskip("tests.peers.alert_factory")
    return factory.make_alerts(n, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=11)


def _attributes(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every (path, name, value) of OCSF attributes, not descending into the free-form
    `data` and `unmapped` objects (which hold Graph's values verbatim, nulls included)."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else key
            yield here, key, item
            if key not in ("data", "unmapped"):
                yield from _attributes(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _attributes(item, f"{path}[{index}]")


def _assert_detection_finding(event: dict[str, Any]) -> None:
    """The attributes OCSF requires of a Detection Finding, with their types."""
    assert (event["class_uid"], event["category_uid"]) == (2004, 2)
    assert event["activity_id"] in (1, 2, 3)
    assert event["type_uid"] == 200400 + event["activity_id"]
    assert event["severity_id"] in (0, 1, 2, 3, 4, 5, 6, 99)
    assert isinstance(event["time"], int)
    assert isinstance(event["finding_info"]["uid"], str) and event["finding_info"]["uid"]
    assert event["metadata"]["version"] == "1.8.0"
    assert event["metadata"]["product"]["vendor_name"] == "Microsoft"
    assert isinstance(event["metadata"]["product"]["name"], str)
    assert event["finding_info"]["analytic"]["type_id"] == 1
    for evidence in event.get("evidences", []):
        assert isinstance(evidence["verdict_id"], int)
        if evidence["name"].lower() == (NS + "malwareEvidence").lower():  # its malware is the finding's
            assert event["malware"] and evidence["data"]
            continue
        assert evidence.keys() & {"device", "user", "file", "process", "src_endpoint", "dst_endpoint", "url", "email",
                                  "reg_key", "reg_value", "resources", "databucket", "container", "query", "actor",
                                  "connection_info"}
    for path, name, value in _attributes(event):
        assert value is not None, f"{path} is null: OCSF leaves absent attributes out"
        if (name == "time" or name.endswith("_time")) and name != "original_time":  # original_time is a string
            assert isinstance(value, int) and not isinstance(value, bool), path
            assert 10**12 <= value < 10**13, f"{path}={value} is not milliseconds since the epoch"


def test_powershell_fixture_top_level(powershell: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw, event = powershell
    _assert_detection_finding(event)
    assert (event["activity_id"], event["activity_name"], event["type_name"]) == (1, "Create", "Detection Finding: Create")
    assert event["is_alert"] is True
    assert (event["severity_id"], event["severity"], event["status_id"], event["status"]) == (3, "Medium", 1, "New")
    assert event["time"] == _ms(raw["lastUpdateDateTime"]) == 1697795647503
    assert (event["start_time"], event["end_time"]) == (_ms(raw["firstActivityDateTime"]), _ms(raw["lastActivityDateTime"]))
    assert event["message"] == "Suspicious PowerShell command line"
    assert "verdict_id" not in event  # classification null: no verdict
    assert event["src_url"] == raw["incidentWebUrl"]
    assert event["remediation"]["desc"] == raw["recommendedActions"]


def test_powershell_fixture_finding_info(powershell: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw, event = powershell
    info = event["finding_info"]
    assert (info["uid"], info["uid_alt"]) == (raw["id"], raw["providerAlertId"])
    assert (info["title"], info["desc"], info["types"]) == (raw["title"], raw["description"], ["Execution"])
    assert info["analytic"] == {"type_id": 1, "type": "Rule", "uid": raw["detectorId"], "name": raw["title"]}
    assert info["attacks"] == [{"technique": {"uid": "T1059"}, "sub_technique": {"uid": "T1059.001"},
                                "tactic": {"uid": "TA0002", "name": "Execution"}}]
    assert event["attacks"] == info["attacks"]  # security_control profile
    assert info["created_time"] == _ms(raw["createdDateTime"])
    assert (info["first_seen_time"], info["last_seen_time"]) == (_ms(raw["firstActivityDateTime"]),
                                                                 _ms(raw["lastActivityDateTime"]))
    assert info["modified_time"] == event["time"]
    assert info["src_url"] == raw["alertWebUrl"]


def test_powershell_fixture_metadata_and_mssp_context(powershell: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw, event = powershell
    metadata = event["metadata"]
    assert metadata["product"] == {"name": "Microsoft Defender for Endpoint", "vendor_name": "Microsoft",
                                   "uid": "microsoftDefenderForEndpoint",
                                   "feature": {"name": "microsoftDefenderForEndpoint"}}
    assert metadata["profiles"] == ["incident", "security_control"]
    assert metadata["uid"] == f"{TENANT.id}/{raw['id']}/2023-10-20T09:54:07.503333Z"  # the version key
    assert metadata["correlation_uid"] == "23"
    assert (metadata["tenant_uid"], metadata["labels"]) == (TENANT.id, ["contoso"])
    assert metadata["original_time"] == "2023-10-20T09:54:07.503333+00:00"
    assert metadata["logged_time"] == _ms("2026-11-29T12:00:00+00:00")
    assert event["unmapped"]["mssp"] == {"tenant_id": TENANT.id, "customer": "contoso"}


def test_powershell_fixture_evidences(powershell: tuple[dict[str, Any], dict[str, Any]]) -> None:
    _, event = powershell
    device, user, url, ip, process = event["evidences"]
    assert device["name"] == NS + "deviceEvidence"
    assert device["device"] == {
        "uid": "505d70d89cfa3428f7aac7d2eb3a64c60fd3d843", "uid_alt": "f18bd540-d5e4-46e0-8ddd-3d03a59e4e14",
        "hostname": "clw555test", "ip": "192.168.5.65", "type_id": 0,
        "os": {"name": "Windows11", "type_id": 100, "type": "Windows", "version": "22H2", "build": "22621"},
        "risk_level_id": 3, "risk_level": "High",
    }
    assert device["data"]["logged_on_users"] == [{"account_name": "CDPUserIS-38411", "domain": "AzureAD"}]
    assert device["data"]["detailed_roles"] == ["PrimaryDevice"]
    assert device["data"]["extra"]["onboardingStatus"] == "onboarded"
    assert user["user"] == {"name": "CDPUserIS-38411", "domain": "AzureAD",
                            "uid": "S-1-12-1-1485667349-1150190949-4065799612-2328216759"}
    assert (url["url"], url["verdict_id"], url["verdict"]) == ({"url_string": "http://127.0.0.1/1.exe"}, 4, "Suspicious")
    assert ip["dst_endpoint"] == {"ip": "127.0.0.1"}  # no role: the address contacted
    proc = process["process"]
    assert (proc["pid"], proc["name"]) == (8224, "powershell.exe")
    assert proc["cmd_line"].startswith("powershell.exe  -NoExit")
    assert proc["created_time"] == _ms("2023-10-20T09:51:39.499796+00:00")
    assert proc["file"]["path"] == "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
    assert proc["file"]["parent_folder"] == "C:\\Windows\\System32\\WindowsPowerShell\\v1.0"
    assert proc["file"]["hashes"] == [
        {"algorithm_id": 2, "algorithm": "SHA-1", "value": "a72c41316307889e43fe8605a0dca4a72e72a011"},
        {"algorithm_id": 3, "algorithm": "SHA-256",
         "value": "d783ba6567faf10fdff2d0ea3864f6756862d6c733c7f4467283da81aedc3a80"},
    ]
    assert proc["parent_process"]["pid"] == 5772 and proc["parent_process"]["file"]["name"] == "cmd.exe"
    assert proc["user"]["name"] == "CDPUserIS-38411"
    assert process["device"] == {"uid": "505d70d89cfa3428f7aac7d2eb3a64c60fd3d843", "type_id": 0}
    assert process["data"]["detection_status"] == "detected"


def test_docs_sample_registry_is_a_windows_reg_key_and_tags_survive() -> None:
    raw = shared_sample("graph_alerts_v2_list_docs.json")["value"][0]
    event = ocsf.to_ocsf(normalise(raw, TENANT, INGESTED))
    _assert_detection_finding(event)
    assert [e["name"] for e in event["evidences"]] == [NS + "deviceEvidence", NS + "fileEvidence",
                                                       NS + "processEvidence", NS + "registryKeyEvidence"]
    registry = event["evidences"][3]
    assert registry["reg_key"] == {"path": "HKEY_LOCAL_MACHINE\\SYSTEM\\CONTROLSET001\\CONTROL\\WMI\\AUTOLOGGER"
                                           "\\SENSEAUDITLOGGER"}
    assert registry["data"]["created"] == _ms("2021-04-27T12:19:27.721130+00:00")
    assert event["metadata"]["extensions"] == [{"name": "win", "uid": "2", "version": "1.8.0"}]  # reg_key's
    assert "evidence" not in event["unmapped"]
    assert event["unmapped"]["system_tags"] == ["Defender Experts"]
    assert event["unmapped"]["extra"] == {"@odata.type": "#microsoft.graph.security.alert", "tenantId": raw["tenantId"]}
    assert event["verdict_id"] == 0 and event["unmapped"]["determination"] == "unknown"
    assert event["evidences"][0]["data"]["tags"] == ["Test Machine"]
    assert event["evidences"][0]["device"]["groups"] == [{"name": "UnassignedGroup"}]


def test_process_evidence_times() -> None:
    """A process evidence has two creation times: the evidence's own (createdDateTime, in
    `data` as on every evidence) and the process's (processCreationDateTime)."""
    raw = shared_sample("graph_alerts_v2_list_docs.json")["value"][0]
    event = ocsf.to_ocsf(normalise(raw, TENANT, INGESTED))
    process = next(e for e in event["evidences"] if "process" in e)
    source = next(e for e in raw["evidence"] if e["@odata.type"] == NS + "processEvidence")

    def graph_ms(text: str) -> int:
        return _ms(text[:26] + "+00:00")  # Graph's 7th fraction digit cut, as the mapping does

    assert process["process"]["created_time"] == graph_ms(source["processCreationDateTime"])
    assert process["process"]["parent_process"]["created_time"] == graph_ms(source["parentProcessCreationDateTime"])
    assert process["data"]["created"] == graph_ms(source["createdDateTime"]) != process["process"]["created_time"]
    assert "createdDateTime" not in process["data"].get("extra", {})


def test_an_alert_from_the_outbox_encodes_the_same() -> None:
    """The worker encodes the alert the outbox decoded (decode_alert), not the
    one normalise built: both must give the same bytes."""
    raws = _factory_alerts(100)
    for name in ("graph_alerts_v2_list_docs.json", "graph_alert_v2_mde_powershell_elastic_fixture.json"):
        if (SAMPLES / name).exists():
            data = shared_sample(name)
            raws += data["value"] if "value" in data else [data]
    for raw in raws:
        alert = normalise(raw, TENANT, INGESTED)
        assert ocsf.encode(decode_alert(encode_alert(alert))) == ocsf.encode(alert)


@pytest.mark.parametrize(("status", "activity_id", "status_id", "is_alert"), [
    ("new", 1, 1, True), ("inProgress", 2, 2, True), ("resolved", 3, 4, False),
    ("unknown", 2, 0, True), (None, 2, 0, True), ("snoozed", 2, 99, True),
])
def test_activity_and_status(status: str | None, activity_id: int, status_id: int, is_alert: bool) -> None:
    event = ocsf.to_ocsf(_alert(status=status))
    assert (event["activity_id"], event["type_uid"], event["status_id"]) == (activity_id, 200400 + activity_id, status_id)
    assert event["is_alert"] is is_alert
    if status_id == 99:
        assert event["status"] == "snoozed"


@pytest.mark.parametrize(("severity", "severity_id", "caption"), [
    ("informational", 1, "Informational"), ("Low", 2, "Low"), ("medium", 3, "Medium"), ("high", 4, "High"),
    ("unknown", 0, "Unknown"), (None, 0, "Unknown"), ("unknownFutureValue", 0, "Unknown"), ("apocalyptic", 99, "apocalyptic"),
])
def test_severity(severity: str | None, severity_id: int, caption: str) -> None:
    event = ocsf.to_ocsf(_alert(severity=severity))
    assert (event["severity_id"], event["severity"]) == (severity_id, caption)


@pytest.mark.parametrize(("classification", "verdict_id", "verdict"), [
    ("truePositive", 2, "True Positive"), ("FalsePositive", 1, "False Positive"),
    ("informationalExpectedActivity", 5, "Benign"), ("unknown", 0, "Unknown"), ("reviewedLater", 99, "reviewedLater"),
])
def test_verdict_from_classification(classification: str, verdict_id: int, verdict: str) -> None:
    event = ocsf.to_ocsf(_alert(classification=classification))
    assert (event["verdict_id"], event["verdict"]) == (verdict_id, verdict)


def test_attacks_without_a_single_tactic_category() -> None:
    event = ocsf.to_ocsf(_alert(categories=["Execution", "Persistence"], mitreTechniques=["T1059", "T1547.001"]))
    assert event["finding_info"]["attacks"] == [
        {"technique": {"uid": "T1059"}},
        {"technique": {"uid": "T1547"}, "sub_technique": {"uid": "T1547.001"}},
    ]
    assert ocsf.to_ocsf(_alert(category="Malware", mitreTechniques=[])).get("attacks") is None
    assert ocsf.to_ocsf(_alert(category="LateralMovement"))["attacks"] == [{"tactic": {"uid": "TA0008",
                                                                                      "name": "Lateral Movement"}}]


def test_ip_side_follows_role_and_mail_evidence_is_email() -> None:
    event = ocsf.to_ocsf(_alert(evidence=[
        {"@odata.type": NS + "ipEvidence", "ipAddress": "198.51.100.7", "roles": ["attacker"], "countryLetterCode": "NL",
         "location": {"city": "Amsterdam", "countryName": "Netherlands", "latitude": 52.37, "longitude": 4.89}},
        {"@odata.type": NS + "ipEvidence", "ipAddress": "10.0.0.5", "roles": ["destination"]},
        {"@odata.type": NS + "analyzedMessageEvidence", "networkMessageId": "n-1", "internetMessageId": "<m@x.test>",
         "subject": "Invoice", "p1Sender": {"emailAddress": "a@x.test"}, "recipientEmailAddress": "c@y.test",
         "senderIp": "192.0.2.7", "verdict": "malicious"},
        {"@odata.type": NS + "mailboxEvidence", "primaryAddress": "c@y.test", "displayName": "C Y"},
    ]))
    attacker, target, mail, mailbox = event["evidences"]
    assert attacker["src_endpoint"] == {"ip": "198.51.100.7", "location": {"city": "Amsterdam", "country": "NL",
                                                                           "lat": 52.37, "long": 4.89}}
    assert attacker["data"]["country_name"] == "Netherlands"
    assert target["dst_endpoint"] == {"ip": "10.0.0.5"}
    assert mail["email"] == {"uid": "n-1", "message_uid": "<m@x.test>", "subject": "Invoice", "from": "a@x.test",
                             "to": ["c@y.test"], "x_originating_ip": ["192.0.2.7"]}  # not the deprecated smtp_*
    assert (mail["verdict_id"], mail["verdict"]) == (2, "True Positive")
    assert mailbox["user"] == {"name": "c@y.test", "email_addr": "c@y.test", "display_name": "C Y"}  # OCSF: a name


def test_unmapped_carries_what_ocsf_has_no_place_for() -> None:
    event = ocsf.to_ocsf(_alert(
        determination="malware", investigationState="running", actorDisplayName="Storm-0000",
        threatDisplayName="Trojan:Win32/X", threatFamilyName="X", alertPolicyId="p-1",
        resolvedDateTime="2026-11-29T10:30:00Z", systemTags=["Defender Experts"],
        comments=[{"comment": "seen", "createdByDisplayName": "ana", "createdDateTime": "2026-11-29T10:01:00Z"}],
        customDetails={"Rule": "3"}, additionalData={"CompromisedEntity": "vm1"}, tenantId="t-1",
        evidence=[{"@odata.type": NS + "cloudApplicationEvidence", "appId": 11, "displayName": "Box"},
                  {"@odata.type": NS + "dnsEvidence", "domainName": "bad.test"},
                  {"@odata.type": NS + "fileHashEvidence", "algorithm": "sha256", "value": "ab" * 32}],
    ))
    unmapped = event["unmapped"]
    assert unmapped["determination"] == "malware"
    assert unmapped["investigation_state"] == "running"
    assert (unmapped["actor_display_name"], unmapped["threat_display_name"]) == ("Storm-0000", "Trojan:Win32/X")
    assert (unmapped["threat_family_name"], unmapped["alert_policy_id"]) == ("X", "p-1")
    assert unmapped["resolved_time"] == _ms("2026-11-29T10:30:00+00:00")
    assert unmapped["system_tags"] == ["Defender Experts"]
    assert unmapped["comments"] == [{"text": "seen", "author": "ana", "created_time": _ms("2026-11-29T10:01:00+00:00")}]
    assert (unmapped["custom_details"], unmapped["additional_data"]) == ({"Rule": "3"}, {"CompromisedEntity": "vm1"})
    assert unmapped["extra"] == {"tenantId": "t-1"}
    # A type OCSF has no object for (a hash with no file name) goes whole to unmapped.evidence.
    file_hash, = unmapped["evidence"]
    assert (file_hash["kind"], file_hash["extra"]) == (
        "other", {"@odata.type": NS + "fileHashEvidence", "algorithm": "sha256", "value": "ab" * 32})
    cloud_app, dns = event["evidences"]  # the others have their typed homes
    assert cloud_app["resources"] == [{"name": "Box", "type": "Cloud Application", "uid": "11"}]
    assert (dns["query"], "data" in dns) == ({"hostname": "bad.test"}, False)


def test_encode_is_one_line_of_the_same_json(powershell: tuple[dict[str, Any], dict[str, Any]]) -> None:
    raw, event = powershell
    line = ocsf.encode(normalise(raw, TENANT, INGESTED))
    assert b"\n" not in line and not line.endswith(b"\n")
    assert json.loads(line) == event


def test_hostile_text_encodes_as_one_valid_line() -> None:
    alert = _alert(title="a\nb\x00c\u2028d\"e", description="x" * 1_000_000)
    line = ocsf.encode(alert)
    assert b"\n" not in line
    assert json.loads(line)["message"] == "a\nb\x00c\u2028d\"e"


def test_generated_alerts_are_valid_detection_findings() -> None:
    for raw in _factory_alerts(200):
        alert = normalise(raw, TENANT, INGESTED)
        event = json.loads(ocsf.encode(alert))
        _assert_detection_finding(event)
        assert event["metadata"]["uid"] == alert.version_key
        assert len(event.get("evidences", [])) + len(event["unmapped"].get("evidence", [])) == len(raw["evidence"])


# --------------------------------------------------------------------------- activity


@pytest.mark.parametrize(("status", "first_sight", "activity_id"), [
    ("new", True, 1), ("inProgress", True, 1), (None, True, 1),  # the first version ever queued: Create
    ("new", False, 2), ("inProgress", False, 2), ("snoozed", False, 2),  # a later one: Update
    ("resolved", True, 3), ("resolved", False, 3), ("resolved", None, 3),  # resolved wins
    ("new", None, 1), ("inProgress", None, 2), (None, None, 2),  # nobody knows: the status decides
])
def test_activity_follows_first_sight(status: str | None, first_sight: bool | None, activity_id: int) -> None:
    alert = _alert(status=status)
    alert.first_sight = first_sight
    event = json.loads(ocsf.encode(alert))
    name = {1: "Create", 2: "Update", 3: "Close"}[activity_id]
    assert (event["activity_id"], event["activity_name"]) == (activity_id, name)
    assert (event["type_uid"], event["type_name"]) == (200400 + activity_id, f"Detection Finding: {name}")
    assert event["is_alert"] is (activity_id != 3)


# --------------------------------------------------------------------------- OCSF validation
#
# What every emitted line is checked against: a JSON Schema of the Detection Finding
# attributes this mapping writes, derived from the OCSF schema (the object
# definitions of ocsf/ocsf-schema, cross-checked against the compiled 1.7.0 schema; 1.8.0
# changed none of these objects' requirements we rely on).
#
# Not py-ocsf-models (0.10.0, the latest): its models target OCSF 1.3 and disagree with
# the schema both ways. They reject valid findings (Device requires hostname, ip, name,
# region and uid where OCSF requires type_id and one identifier; Technique requires name,
# FindingInformation title, where OCSF recommends them), and they silently ignore every
# attribute they do not model (pydantic's default extra="ignore", not "allow"): evidence
# file, process, user, src/dst_endpoint and email, is_alert, the incident profile...
# so most of what we emit would go unchecked, and the evidence constraint with it.
#
# Every OCSF object here is closed (additionalProperties false: an attribute the schema
# does not define for it is an error), requires what OCSF requires and applies OCSF's
# at_least_one constraints (the lists are OCSF's, whether or not we emit every member).
# Integers are ints, never floats or booleans; every `*_time` is an integer (timestamp_t,
# milliseconds); each enum id is one OCSF defines and its caption the one OCSF gives it
# (99 Other: the source's own value, required). `data` and `unmapped` are free-form.
# Not checked: the regexes of typed strings (ip_t, email_t, file_hash_t): their values
# are Graph's, verbatim.

_STRING = {"type": "string"}
_STRINGS = {"type": "array", "items": _STRING}
_INTEGER = {"type": "integer"}
_TIMESTAMP = _INTEGER  # timestamp_t: long_t, milliseconds since the epoch
_NUMBER = {"type": "number"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _enum(captions: dict[int, str], id_name: str, caption_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(the schema of an enum id, the rules tying its sibling caption to it)."""
    rules = []
    for id_value, caption in captions.items():
        then = {"required": [caption_name]} if id_value == 99 else {
            "properties": {caption_name: {"const": caption}}}
        rules.append({"if": {"properties": {id_name: {"const": id_value}}, "required": [id_name]}, "then": then})
    return {"type": "integer", "enum": list(captions)}, rules


def _object(properties: dict[str, Any], required: tuple[str, ...] = (), at_least_one: tuple[str, ...] = (),
            enums: dict[tuple[str, str], dict[int, str]] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": dict(properties), "additionalProperties": False}
    rules: list[dict[str, Any]] = []
    for (id_name, caption_name), captions in (enums or {}).items():
        schema["properties"][id_name], sibling = _enum(captions, id_name, caption_name)
        schema["properties"].setdefault(caption_name, _STRING)
        rules += sibling
    if required:
        schema["required"] = list(required)
    if at_least_one:
        schema["anyOf"] = [{"required": [name]} for name in at_least_one]
    if rules:
        schema["allOf"] = rules
    return schema


ACTIVITY = {0: "Unknown", 1: "Create", 2: "Update", 3: "Close", 99: "Other"}
SEVERITY = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical", 6: "Fatal", 99: "Other"}
FINDING_STATUS = {0: "Unknown", 1: "New", 2: "In Progress", 3: "Suppressed", 4: "Resolved", 5: "Archived",
                  6: "Deleted", 99: "Other"}
VERDICT = {0: "Unknown", 1: "False Positive", 2: "True Positive", 3: "Disregard", 4: "Suspicious", 5: "Benign",
           6: "Test", 7: "Insufficient Data", 8: "Security Risk", 9: "Managed Externally", 10: "Duplicate", 99: "Other"}
ANALYTIC_TYPE = {0: "Unknown", 1: "Rule", 2: "Behavioral", 3: "Statistical", 4: "Learning (ML/DL)",
                 5: "Fingerprinting", 6: "Tagging", 7: "Keyword Match", 8: "Regular Expressions",
                 9: "Exact Data Match", 10: "Partial Data Match", 11: "Indexed Data Match", 99: "Other"}
RISK_LEVEL = {0: "Info", 1: "Low", 2: "Medium", 3: "High", 4: "Critical", 99: "Other"}
OS_TYPE = {0: "Unknown", 100: "Windows", 101: "Windows Mobile", 200: "Linux", 201: "Android", 300: "macOS",
           301: "iOS", 302: "iPadOS", 400: "Solaris", 401: "AIX", 402: "HP-UX", 99: "Other"}
DEVICE_TYPE = {0: "Unknown", 1: "Server", 2: "Desktop", 3: "Laptop", 4: "Tablet", 5: "Mobile", 6: "Virtual",
               7: "IOT", 8: "Browser", 9: "Firewall", 10: "Switch", 11: "Hub", 12: "Router", 13: "IDS", 14: "IPS",
               15: "Load Balancer", 99: "Other"}
FILE_TYPE = {0: "Unknown", 1: "Regular File", 2: "Folder", 3: "Character Device", 4: "Block Device",
             5: "Local Socket", 6: "Named Pipe", 7: "Symbolic Link", 8: "Executable File", 99: "Other"}
HASH_ALGORITHM = {0: "Unknown", 1: "MD5", 2: "SHA-1", 3: "SHA-256", 4: "SHA-512", 5: "CTPH", 6: "TLSH",
                  7: "quickXorHash", 8: "SHA-224", 9: "SHA-384", 10: "SHA-512/224", 11: "SHA-512/256",
                  12: "SHA3-224", 13: "SHA3-256", 14: "SHA3-384", 15: "SHA3-512", 16: "xxHash H3 64-bit",
                  17: "xxHash H3 128-bit", 99: "Other"}
USER_TYPE = {0: "Unknown", 1: "User", 2: "Admin", 3: "System", 4: "Service", 99: "Other"}
DATABUCKET_TYPE = {0: "Unknown", 1: "S3", 2: "Azure Blob", 3: "GCP Bucket", 99: "Other"}
DIRECTION = {0: "Unknown", 1: "Inbound", 2: "Outbound", 3: "Lateral", 4: "Local", 99: "Other"}
REG_VALUE_TYPE = {0: "Unknown", 1: "REG_BINARY", 2: "REG_DWORD", 3: "REG_DWORD_BIG_ENDIAN", 4: "REG_EXPAND_SZ",
                  5: "REG_LINK", 6: "REG_MULTI_SZ", 7: "REG_NONE", 8: "REG_QWORD", 9: "REG_QWORD_LITTLE_ENDIAN",
                  10: "REG_SZ", 99: "Other"}
_PORT = {"type": "integer", "minimum": 0, "maximum": 65535}
_NAME_OR_UID = ("name", "uid")
_ENDPOINT_IDS = ("ip", "uid", "name", "hostname", "instance_uid", "interface_uid", "interface_name")

DEFS: dict[str, dict[str, Any]] = {
    "user": _object({"name": _STRING, "domain": _STRING, "uid": _STRING, "uid_alt": _STRING, "email_addr": _STRING,
                     "display_name": _STRING, "full_name": _STRING}, at_least_one=("account", "name", "uid"),
                    enums={("type_id", "type"): USER_TYPE}),
    "group": _object({"name": _STRING, "uid": _STRING}, at_least_one=_NAME_OR_UID),
    "os": _object({"name": _STRING, "version": _STRING, "build": _STRING}, required=("name", "type_id"),
                  enums={("type_id", "type"): OS_TYPE}),
    "device": _object({"uid": _STRING, "uid_alt": _STRING, "hostname": _STRING, "name": _STRING, "domain": _STRING,
                       "ip": _STRING, "os": _ref("os"), "groups": _array(_ref("group")), "mac": _STRING,
                       "model": _STRING, "vendor_name": _STRING,
                       "hw_info": _object({"serial_number": _STRING})},
                      required=("type_id",), at_least_one=_ENDPOINT_IDS,
                      enums={("type_id", "type"): DEVICE_TYPE, ("risk_level_id", "risk_level"): RISK_LEVEL}),
    "fingerprint": _object({"value": _STRING}, required=("algorithm_id", "value"),
                           enums={("algorithm_id", "algorithm"): HASH_ALGORITHM}),
    "file": _object({"name": _STRING, "path": _STRING, "parent_folder": _STRING, "size": _INTEGER,
                     "company_name": _STRING, "hashes": _array(_ref("fingerprint")), "uri": _STRING},
                    required=("name", "type_id"), at_least_one=_NAME_OR_UID, enums={("type_id", "type"): FILE_TYPE}),
    "process": _object({"pid": _INTEGER, "cmd_line": _STRING, "created_time": _TIMESTAMP, "name": _STRING,
                        "file": _ref("file"), "parent_process": _ref("process"), "user": _ref("user")},
                       at_least_one=("pid", "uid", "cpid")),
    "location": _object({"city": _STRING, "country": _STRING, "region": _STRING, "lat": _NUMBER, "long": _NUMBER},
                        at_least_one=("city", "country", "postal_code", "region")),
    "network_endpoint": _object({"ip": _STRING, "port": _PORT, "location": _ref("location")},
                                at_least_one=(*_ENDPOINT_IDS, "svc_name", "domain")),
    "url": _object({"url_string": _STRING}, at_least_one=("url_string", "path")),
    "email": _object({"uid": _STRING, "message_uid": _STRING, "subject": _STRING, "from": _STRING, "to": _STRINGS,
                      "x_originating_ip": _STRINGS,
                      "smtp_from": _STRING, "smtp_to": _STRINGS},  # deprecated since 1.4 (use from/to): not written
                     at_least_one=("from", "to")),
    "resource_details": _object({"name": _STRING, "type": _STRING, "uid": _STRING, "uid_alt": _STRING,
                                 "namespace": _STRING, "version": _STRING, "ip": _STRING}, at_least_one=_NAME_OR_UID),
    "databucket": _object({"name": _STRING, "uid": _STRING, "file": _ref("file")}, required=("type_id",),
                          at_least_one=_NAME_OR_UID, enums={("type_id", "type"): DATABUCKET_TYPE}),
    "container": _object({"name": _STRING, "uid": _STRING, "orchestrator": _STRING,
                          "image": _object({"uid": _STRING}, required=("uid",))}, at_least_one=("uid", "name")),
    "dns_query": _object({"hostname": _STRING}, required=("hostname",)),
    "network_connection_info": _object({"protocol_name": _STRING, "protocol_num": _INTEGER},
                                       required=("direction_id",), enums={("direction_id", "direction"): DIRECTION}),
    "actor": _object({"session": _object({"uid": _STRING}), "user": _ref("user")},
                     at_least_one=("process", "user", "invoked_by", "session", "app_name", "app_uid")),
    "reg_key": _object({"path": _STRING}, required=("path",)),
    "reg_value": _object({"path": _STRING, "name": _STRING, "data": {}}, required=("path", "name"),
                         enums={("type_id", "type"): REG_VALUE_TYPE}),
    "malware": _object({"name": _STRING, "classification_ids": _array(_INTEGER), "classifications": _STRINGS},
                       required=("classification_ids",), at_least_one=_NAME_OR_UID),
    "evidence": _object({"name": _STRING, "data": {"type": "object"}, "device": _ref("device"), "user": _ref("user"),
                         "file": _ref("file"), "process": _ref("process"), "src_endpoint": _ref("network_endpoint"),
                         "dst_endpoint": _ref("network_endpoint"), "url": _ref("url"), "email": _ref("email"),
                         "resources": _array(_ref("resource_details")), "databucket": _ref("databucket"),
                         "container": _ref("container"), "query": _ref("dns_query"),
                         "connection_info": _ref("network_connection_info"), "actor": _ref("actor"),
                         "reg_key": _ref("reg_key"), "reg_value": _ref("reg_value")},
                        at_least_one=("actor", "api", "connection_info", "data", "database", "databucket", "device",
                                      "dst_endpoint", "email", "file", "process", "query", "src_endpoint", "url",
                                      "user", "job", "script", "reg_key", "reg_value", "win_service"),
                        enums={("verdict_id", "verdict"): VERDICT}),
    "tactic": _object({"uid": _STRING, "name": _STRING}, at_least_one=_NAME_OR_UID),
    "technique": _object({"uid": _STRING, "name": _STRING}, at_least_one=_NAME_OR_UID),
    "sub_technique": _object({"uid": _STRING, "name": _STRING}, at_least_one=_NAME_OR_UID),
    "attack": _object({"tactic": _ref("tactic"), "technique": _ref("technique"),
                       "sub_technique": _ref("sub_technique")},
                      at_least_one=("tactic", "technique", "sub_technique")),
    "analytic": _object({"uid": _STRING, "name": _STRING}, required=("type_id",), at_least_one=_NAME_OR_UID,
                        enums={("type_id", "type"): ANALYTIC_TYPE}),
    "finding_info": _object({"uid": _STRING, "uid_alt": _STRING, "title": _STRING, "desc": _STRING, "types": _STRINGS,
                             "analytic": _ref("analytic"), "attacks": _array(_ref("attack")),
                             "created_time": _TIMESTAMP, "first_seen_time": _TIMESTAMP,
                             "last_seen_time": _TIMESTAMP, "modified_time": _TIMESTAMP, "src_url": _STRING},
                            required=("uid",)),
    "feature": _object({"name": _STRING, "uid": _STRING, "version": _STRING}, at_least_one=_NAME_OR_UID),
    "product": _object({"name": _STRING, "vendor_name": _STRING, "uid": _STRING, "feature": _ref("feature")},
                       at_least_one=_NAME_OR_UID),
    "metadata": _object({"version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$"},
                         "product": _ref("product"), "profiles": _STRINGS, "uid": _STRING, "correlation_uid": _STRING,
                         "tenant_uid": _STRING, "labels": _STRINGS, "original_time": _STRING,
                         "logged_time": _TIMESTAMP, "log_name": _STRING,
                         "extensions": _array(_object({"name": _STRING, "uid": _STRING, "version": _STRING},
                                                      required=("version",), at_least_one=_NAME_OR_UID))},
                        required=("product", "version")),
    "remediation": _object({"desc": _STRING}, required=("desc",)),
}
DETECTION_FINDING: dict[str, Any] = _object(
    {
        "class_uid": {"const": 2004}, "class_name": {"const": "Detection Finding"},
        "category_uid": {"const": 2}, "category_name": {"const": "Findings"},
        "type_uid": _INTEGER, "type_name": _STRING, "time": _TIMESTAMP, "start_time": _TIMESTAMP,
        "end_time": _TIMESTAMP, "message": _STRING, "is_alert": {"type": "boolean"},
        "finding_info": _ref("finding_info"), "attacks": _array(_ref("attack")), "metadata": _ref("metadata"),
        "src_url": _STRING, "assignee": _ref("user"), "remediation": _ref("remediation"),
        "evidences": _array(_ref("evidence")), "malware": _array(_ref("malware")), "unmapped": {"type": "object"},
    },
    required=("activity_id", "category_uid", "class_uid", "type_uid", "severity_id", "time", "metadata",
              "finding_info"),
    enums={("activity_id", "activity_name"): ACTIVITY, ("severity_id", "severity"): SEVERITY,
           ("status_id", "status"): FINDING_STATUS, ("verdict_id", "verdict"): VERDICT},
)
DETECTION_FINDING["allOf"] += [  # type_uid = class_uid * 100 + activity_id, and its caption
    {"if": {"properties": {"activity_id": {"const": id_value}}, "required": ["activity_id"]},
     "then": {"properties": {"type_uid": {"const": 200400 + id_value},
                             **({} if id_value == 99 else {"type_name": {"const": f"Detection Finding: {caption}"}})}}}
    for id_value, caption in ACTIVITY.items()
] + [  # an attribute of a profile only with that profile declared
    {"if": {"anyOf": [{"required": [name]} for name in names]},
     "then": {"properties": {"metadata": {"required": ["profiles"],
                                          "properties": {"profiles": {"contains": {"const": profile}}}}}}}
    for profile, names in (("incident", ("assignee", "src_url", "verdict_id", "verdict")),
                           ("security_control", ("attacks",)))
]
DETECTION_FINDING["$defs"] = DEFS


def _is_integer(_checker: Any, value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # not 3.0, not True


_Validator = validators.extend(Draft202012Validator,
                               type_checker=Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer))
Draft202012Validator.check_schema(DETECTION_FINDING)
VALIDATOR = _Validator(DETECTION_FINDING)


def _violations(event: Any) -> list[str]:
    return [f"{error.json_path}: {error.message}" for error in VALIDATOR.iter_errors(event)]


def _assert_valid_lines(alerts: list[Alert]) -> None:
    """Every alert's OCSF line, as a SIEM reads it, is a valid Detection Finding."""
    for alert in alerts:
        event = json.loads(ocsf.encode(alert))
        violations = _violations(event)
        assert not violations, f"{alert.id}: " + "\n".join(violations[:20])


def test_every_factory_alert_is_valid_ocsf() -> None:
    alerts = [normalise(raw, TENANT, INGESTED) for raw in _factory_alerts(400)]
    for index, alert in enumerate(alerts):  # the three ways the pipeline leaves first_sight
        alert.first_sight = (True, False, None)[index % 3]
    _assert_valid_lines(alerts)
    kinds = {e.kind for alert in alerts for e in alert.evidence}
    assert {"device", "user", "file", "process", "ip", "url"} <= kinds  # the data exercised what we map


def _shared_graph_alerts() -> list[dict[str, Any]]:
    """Every alerts_v2 object of the shared samples (the MDE API samples are another source)."""
    if not SAMPLES.exists():
        pytest.skip(f"shared samples {SAMPLES} are not here (the tests read ../shared/samples)")
    raws = list(shared_sample("graph_alerts_v2_list_docs.json")["value"])
    raws.append(shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json"))
    raws += [alert for incident in shared_sample("graph_incidents_expand_alerts_docs.json")["value"]
             for alert in incident.get("alerts", [])]
    log = SAMPLES / "elastic" / "m365_defender" / "alert" / "test-alert.log"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():  # an alert, or a page of them
            body = json.loads(line) if line.strip() else {}
            raws += body.get("value", [body] if "id" in body else [])
    return raws


def test_every_shared_sample_alert_is_valid_ocsf() -> None:
    raws = _shared_graph_alerts()
    _assert_valid_lines([normalise(raw, TENANT, INGESTED) for raw in raws])
    assert len(raws) >= 4


# Hostile alerts: factory alerts with any property replaced by hostile, empty or null
# values, and evidence of every mapped type (and some the mapping has no object for) with
# any subset of its properties. The ones normalise accepts must all encode valid OCSF.

_NASTY = st.sampled_from(["", " ", "\x00", "a\nb", "\u2028", "\ud800", "null", "{}", "\"", "\\", "é" * 3,
                          "T1059.", ".001", "C:\\", "/", "x" * 500])
_TEXT = _NASTY | st.text(max_size=20)
_MAYBE_TEXT = st.none() | _TEXT
_TEXTS = st.none() | st.lists(_TEXT, max_size=3)
_INT = st.none() | st.integers(-(2**63), 2**63 - 1)
_TIME = st.none() | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda moment: moment.isoformat(timespec="microseconds") + "Z")


def _enum_value(*members: str) -> st.SearchStrategy[Any]:
    return st.none() | st.sampled_from(members) | _TEXT


def _optional(**properties: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=properties)


_USER_ACCOUNT = st.none() | _optional(accountName=_MAYBE_TEXT, domainName=_MAYBE_TEXT, userPrincipalName=_MAYBE_TEXT,
                                      userSid=_MAYBE_TEXT, azureAdUserId=_MAYBE_TEXT, displayName=_MAYBE_TEXT)
_FILE_DETAILS = st.none() | _optional(fileName=_MAYBE_TEXT, filePath=_MAYBE_TEXT, fileSize=_INT, sha1=_MAYBE_TEXT,
                                      sha256=_MAYBE_TEXT, md5=_MAYBE_TEXT, filePublisher=_MAYBE_TEXT,
                                      signer=_MAYBE_TEXT, issuer=_MAYBE_TEXT)
_NUMBER_VALUE = st.none() | st.integers(-180, 180) | st.floats(-180, 180)
_EVIDENCE_PROPERTIES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "deviceEvidence": {
        "mdeDeviceId": _MAYBE_TEXT, "azureAdDeviceId": _MAYBE_TEXT, "deviceDnsName": _MAYBE_TEXT,
        "hostName": _MAYBE_TEXT, "dnsDomain": _MAYBE_TEXT, "ntDomain": _MAYBE_TEXT, "osPlatform": _MAYBE_TEXT,
        "osBuild": _INT, "version": _MAYBE_TEXT, "ipInterfaces": _TEXTS, "lastIpAddress": _MAYBE_TEXT,
        "riskScore": _enum_value("none", "informational", "low", "medium", "high"), "rbacGroupName": _MAYBE_TEXT,
        "loggedOnUsers": st.none() | st.lists(_optional(accountName=_MAYBE_TEXT, domainName=_MAYBE_TEXT), max_size=2),
    },
    "userEvidence": {"userAccount": _USER_ACCOUNT},
    "fileEvidence": {
        "fileDetails": _FILE_DETAILS, "mdeDeviceId": _MAYBE_TEXT,
        "detectionStatus": _enum_value("detected", "blocked", "prevented"),
    },
    "processEvidence": {
        "processId": _INT, "parentProcessId": _INT, "processCommandLine": _MAYBE_TEXT,
        "processCreationDateTime": _TIME, "parentProcessCreationDateTime": _TIME, "imageFile": _FILE_DETAILS,
        "parentProcessImageFile": _FILE_DETAILS, "userAccount": _USER_ACCOUNT, "mdeDeviceId": _MAYBE_TEXT,
    },
    "ipEvidence": {
        "ipAddress": _MAYBE_TEXT, "countryLetterCode": _MAYBE_TEXT,
        "location": st.none() | _optional(city=_MAYBE_TEXT, state=_MAYBE_TEXT, countryName=_MAYBE_TEXT,
                                          latitude=_NUMBER_VALUE, longitude=_NUMBER_VALUE),
    },
    "urlEvidence": {"url": _MAYBE_TEXT},
    "mailboxEvidence": {
        "primaryAddress": _MAYBE_TEXT, "upn": _MAYBE_TEXT, "displayName": _MAYBE_TEXT, "userAccount": _USER_ACCOUNT,
    },
    "analyzedMessageEvidence": {
        "networkMessageId": _MAYBE_TEXT, "internetMessageId": _MAYBE_TEXT, "subject": _MAYBE_TEXT,
        "p1Sender": st.none() | _optional(emailAddress=_MAYBE_TEXT, displayName=_MAYBE_TEXT),
        "recipientEmailAddress": _MAYBE_TEXT, "senderIp": _MAYBE_TEXT, "receivedDateTime": _TIME,
        "urls": _TEXTS, "threats": _TEXTS,
    },
    "registryValueEvidence": {"registryHive": _MAYBE_TEXT, "registryKey": _MAYBE_TEXT, "registryValue": _MAYBE_TEXT},
    "dnsEvidence": {"domainName": _MAYBE_TEXT},  # a type the mapping has no model for
}
_EVIDENCE_BASE = {
    "createdDateTime": _TIME,
    "verdict": _enum_value("unknown", "suspicious", "malicious", "noThreatsFound", "unknownFutureValue"),
    "remediationStatus": _enum_value("none", "remediated", "prevented", "blocked", "notFound"),
    "roles": st.none() | st.lists(_enum_value("source", "attacker", "destination", "contextual", "commandAndControl"),
                                  max_size=2),
    "tags": _TEXTS,
}
_EVIDENCE = st.one_of(*(
    st.fixed_dictionaries({"@odata.type": st.sampled_from([NS + name, (NS + name).upper()])},
                          optional={**_EVIDENCE_BASE, **properties})
    for name, properties in _EVIDENCE_PROPERTIES.items()
))
_ALERT_PROPERTIES: dict[str, st.SearchStrategy[Any]] = {
    "providerAlertId": _MAYBE_TEXT, "incidentId": _MAYBE_TEXT | st.integers(0, 10**6),
    "status": _enum_value("new", "inProgress", "resolved", "unknownFutureValue"),
    "severity": _enum_value("informational", "low", "medium", "high", "unknownFutureValue"),
    "classification": _enum_value("falsePositive", "truePositive", "informationalExpectedActivity"),
    "determination": _enum_value("malware", "unknown", "other"),
    "serviceSource": _enum_value("microsoftDefenderForEndpoint", "microsoft365Defender"),
    "detectionSource": _enum_value("antivirus", "customDetection"), "productName": _MAYBE_TEXT,
    "detectorId": _MAYBE_TEXT, "title": _MAYBE_TEXT, "description": _MAYBE_TEXT, "recommendedActions": _MAYBE_TEXT,
    "category": _MAYBE_TEXT, "categories": _TEXTS, "mitreTechniques": _TEXTS, "assignedTo": _MAYBE_TEXT,
    "alertWebUrl": _MAYBE_TEXT, "incidentWebUrl": _MAYBE_TEXT, "actorDisplayName": _MAYBE_TEXT,
    "systemTags": _TEXTS, "createdDateTime": _TIME, "firstActivityDateTime": _TIME, "lastActivityDateTime": _TIME,
    "resolvedDateTime": _TIME, "customDetails": st.none() | st.dictionaries(_TEXT, _MAYBE_TEXT, max_size=2),
    "comments": st.none() | st.lists(_optional(comment=_MAYBE_TEXT, createdByDisplayName=_MAYBE_TEXT,
                                               createdDateTime=_TIME), max_size=2),
    "newPropertyGraphAddsLater": st.none() | _TEXT | st.integers(),
}


@st.composite
def _hostile_alerts(draw: st.DrawFn) -> dict[str, Any]:
    (alert,) = make_alerts(1, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=1),
                           seed=draw(st.integers(0, 10**6)))
    alert.update(draw(_optional(**_ALERT_PROPERTIES)))
    if draw(st.booleans()):
        alert["evidence"] = draw(st.lists(_EVIDENCE, max_size=6))
    return alert


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_hostile_alerts(), first_sight=st.sampled_from([True, False, None]))
def test_every_hostile_alert_that_normalises_is_valid_ocsf(raw: dict[str, Any], first_sight: bool | None) -> None:
    try:
        alert = normalise(raw, TENANT, INGESTED)
    except MappingError:
        reject()
    alert.first_sight = first_sight
    _assert_valid_lines([alert])


def _valid_event() -> dict[str, Any]:
    """One finding with every kind of object the mapping writes, valid as it comes."""
    event = ocsf.to_ocsf(_alert(
        status="new", severity="high", classification="truePositive", assignedTo="ana@contoso.test",
        incidentWebUrl="https://security.microsoft.com/incidents/1", recommendedActions="Isolate.",
        categories=["Execution"], mitreTechniques=["T1059.001"], detectorId="d-1", title="t",
        evidence=[
            {"@odata.type": NS + "deviceEvidence", "mdeDeviceId": "dev1", "osPlatform": "Windows11",
             "riskScore": "high"},
            {"@odata.type": NS + "userEvidence", "userAccount": {"accountName": "ana", "userSid": "S-1-5"}},
            {"@odata.type": NS + "fileEvidence", "fileDetails": {"fileName": "a.exe", "sha256": "ab" * 32}},
            {"@odata.type": NS + "processEvidence", "processId": 4, "parentProcessId": 1,
             "imageFile": {"fileName": "b.exe"}, "userAccount": {"accountName": "ana"}},
            {"@odata.type": NS + "ipEvidence", "ipAddress": "192.0.2.1", "countryLetterCode": "NL"},
            {"@odata.type": NS + "urlEvidence", "url": "http://x.test/", "verdict": "malicious"},
            {"@odata.type": NS + "analyzedMessageEvidence", "p1Sender": {"emailAddress": "a@x.test"}},
        ],
    ))
    assert _violations(event) == []
    return event


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change at a dotted path (list indices as numbers); value _DROP deletes."""
    *parents, last = [int(part) if part.isdigit() else part for part in path.split(".")]

    def change(event: dict[str, Any]) -> None:
        target: Any = event
        for part in parents:
            target = target[part]
        if value is _DROP:
            del target[last]
        else:
            target[last] = value
    return change


_DROP = object()


@pytest.mark.parametrize(("case", "change"), [
    ("finding_info.uid missing", _set("finding_info.uid", _DROP)),
    ("finding_info missing", _set("finding_info", _DROP)),
    ("metadata.product missing", _set("metadata.product", _DROP)),
    ("metadata.version missing", _set("metadata.version", _DROP)),
    ("metadata.version not a version", _set("metadata.version", "latest")),
    ("time in seconds as a float", _set("time", 1700000000.5)),
    ("time as an ISO string", _set("time", "2026-11-29T10:00:00Z")),
    ("time as a float with no fraction", _set("time", 1700000000000.0)),
    ("start_time null", _set("start_time", None)),
    ("activity_id out of range", _set("activity_id", 4)),
    ("activity_id a boolean", _set("activity_id", True)),
    ("type_uid not class_uid*100+activity_id", _set("type_uid", 200402)),
    ("class_uid not Detection Finding", _set("class_uid", 2001)),
    ("severity_id out of range", _set("severity_id", 7)),
    ("severity_id a string", _set("severity_id", "4")),
    ("severity caption not severity_id's", _set("severity", "Low")),
    ("status_id out of range", _set("status_id", 7)),
    ("verdict_id 99 without its caption", lambda e: (e.update(verdict_id=99), e.pop("verdict"))),
    ("verdict_id out of range", _set("verdict_id", 11)),
    ("is_alert a string", _set("is_alert", "true")),
    ("an attribute OCSF does not define", _set("finding_info.severity", "high")),
    ("an incident attribute without the incident profile", _set("metadata.profiles", ["security_control"])),
    ("analytic without type_id", _set("finding_info.analytic.type_id", _DROP)),
    ("analytic with neither uid nor name", _set("finding_info.analytic", {"type_id": 1, "type": "Rule"})),
    ("an attack with nothing in it", _set("finding_info.attacks.0", {})),
    ("remediation without desc", _set("remediation", {})),
    ("an evidence with no object", _set("evidences.0", {"name": "x", "verdict_id": 0, "verdict": "Unknown"})),
    ("evidence verdict_id out of range", _set("evidences.0.verdict_id", 12)),
    ("a device without type_id", _set("evidences.0.device.type_id", _DROP)),
    ("a device without any identifier",
     _set("evidences.0.device", {"type_id": 0, "os": {"name": "w", "type_id": 100}})),
    ("an os type that is not OCSF's", _set("evidences.0.device.os.type_id", 103)),
    ("a user with only an address", _set("evidences.1.user", {"email_addr": "a@x.test"})),
    ("a file without a name", _set("evidences.2.file.name", _DROP)),
    ("a file size as a string", _set("evidences.2.file.size", "12")),
    ("a hash without its algorithm", _set("evidences.2.file.hashes.0.algorithm_id", _DROP)),
    ("a process without a pid", _set("evidences.3.process.pid", _DROP)),
    ("a parent process without a pid", _set("evidences.3.process.parent_process.pid", _DROP)),
    ("an endpoint without an address", _set("evidences.4.dst_endpoint", {"location": {"country": "NL"}})),
    ("a location of coordinates alone", _set("evidences.4.dst_endpoint.location", {"lat": 1.0, "long": 2.0})),
    ("an empty URL", _set("evidences.5.url", {})),
    ("an email with neither from nor to", _set("evidences.6.email", {"subject": "s"})),
    ("to as a string", _set("evidences.6.email.to", "c@y.test")),
    ("the deprecated smtp_to, as a string", _set("evidences.6.email.smtp_to", "c@y.test")),
])
def test_a_broken_finding_is_rejected(case: str, change: Callable[[dict[str, Any]], Any]) -> None:
    event = _valid_event()
    change(event)
    assert _violations(event), f"{case}: accepted"


# --------------------------------------------------------------------------- determinism


def _key_orders(value: Any, path: str, orders: dict[str, set[tuple[str, str]]]) -> None:
    """For every object path (list indices and free-form data left out), each pair of keys
    in the order they were written."""
    if isinstance(value, dict):
        keys = list(value)
        pairs = orders.setdefault(path, set())
        pairs.update((a, b) for i, a in enumerate(keys) for b in keys[i + 1:])
        for key, item in value.items():
            if key not in ("data", "unmapped"):
                _key_orders(item, f"{path}.{key}", orders)
    elif isinstance(value, list):
        for item in value:
            _key_orders(item, f"{path}[]", orders)


def test_encoding_is_deterministic_and_key_order_stable() -> None:
    alerts = [normalise(raw, TENANT, INGESTED) for raw in _factory_alerts(150)]
    first = [ocsf.encode(alert) for alert in alerts]
    again = [ocsf.encode(alert) for alert in reversed(alerts)][::-1]  # other neighbours, other cache state
    assert first == again
    copies = [ocsf.encode(decode_alert(encode_alert(alert))) for alert in alerts]
    assert copies == first
    # Key order is a fixed order of each object's attributes, whichever are present: no
    # two keys ever appear in both orders.
    orders: dict[str, set[tuple[str, str]]] = {}
    for line in first:
        _key_orders(json.loads(line), "", orders)
    clashes = {path: sorted((a, b) for a, b in pairs if (b, a) in pairs and a < b) for path, pairs in orders.items()}
    assert {path: pairs for path, pairs in clashes.items() if pairs} == {}
    assert list(json.loads(first[0]))[:10] == ["class_uid", "class_name", "category_uid", "category_name",
                                                "activity_id", "activity_name", "type_uid", "type_name",
                                                "severity_id", "severity"]


@pytest.mark.slow
def test_encoding_is_the_same_in_another_process() -> None:
    """No set or hash order leaks into the bytes: another interpreter, with another hash
    seed, writes the same lines."""
    script = (
        "import hashlib, sys\n"
        "from tests.mappings.test_format_ocsf import _factory_alerts, normalise, TENANT, INGESTED, ocsf\n"
        "digest = hashlib.sha256()\n"
        "for raw in _factory_alerts(150):\n"
        "    digest.update(ocsf.encode(normalise(raw, TENANT, INGESTED)) + b'\\n')\n"
        "print(digest.hexdigest())\n"
    )
    here = hashlib.sha256()
    for raw in _factory_alerts(150):
        here.update(ocsf.encode(normalise(raw, TENANT, INGESTED)) + b"\n")
    for seed in ("1", "4242"):
        result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONHASHSEED": seed})
        assert result.stdout.strip() == here.hexdigest()
