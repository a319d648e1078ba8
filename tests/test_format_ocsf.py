"""Alert -> OCSF 1.8.0 Detection Finding: required attributes, types, ms timestamps, enum
choices, evidence objects, MSSP context, and `unmapped` carrying what OCSF has no place for."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from core.schema import Alert, TenantRef
from mappings import ocsf
from mappings.graph_alerts_v2 import normalise

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
UTC = timezone.utc
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."


def _sample(name: str) -> Any:
    path = SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared sample {path} is not here (the tests read ../shared/samples)")
    return json.loads(path.read_text(encoding="utf-8"))


def _ms(text: str) -> int:
    return (datetime.fromisoformat(text) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}
    return normalise(raw, TENANT, INGESTED)


@pytest.fixture
def powershell() -> tuple[dict[str, Any], dict[str, Any]]:
    raw = _sample("graph_alert_v2_mde_powershell_elastic_fixture.json")
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
        assert evidence.keys() & {"device", "user", "file", "process", "src_endpoint", "dst_endpoint", "url", "email"}
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


def test_docs_sample_registry_goes_to_unmapped_and_tags_survive() -> None:
    raw = _sample("graph_alerts_v2_list_docs.json")["value"][0]
    event = ocsf.to_ocsf(normalise(raw, TENANT, INGESTED))
    _assert_detection_finding(event)
    assert [e["name"] for e in event["evidences"]] == [NS + "deviceEvidence", NS + "fileEvidence",
                                                       NS + "processEvidence"]
    registry, = event["unmapped"]["evidence"]
    assert (registry["kind"], registry["hive"]) == ("registry", "HKEY_LOCAL_MACHINE")
    assert registry["created"] == _ms("2021-04-27T12:19:27.721130+00:00")
    assert event["unmapped"]["system_tags"] == ["Defender Experts"]
    assert event["unmapped"]["extra"] == {"@odata.type": "#microsoft.graph.security.alert", "tenantId": raw["tenantId"]}
    assert event["verdict_id"] == 0 and event["unmapped"]["determination"] == "unknown"
    assert event["evidences"][0]["data"]["tags"] == ["Test Machine"]
    assert event["evidences"][0]["device"]["groups"] == [{"name": "UnassignedGroup"}]


def test_process_evidence_times() -> None:
    """A process evidence has two creation times: the evidence's own (createdDateTime, in
    `data` as on every evidence) and the process's (processCreationDateTime)."""
    raw = _sample("graph_alerts_v2_list_docs.json")["value"][0]
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
    """The worker encodes the alert the outbox decoded (Alert.model_validate_json), not the
    one normalise built: both must give the same bytes."""
    raws = _factory_alerts(100)
    for name in ("graph_alerts_v2_list_docs.json", "graph_alert_v2_mde_powershell_elastic_fixture.json"):
        if (SAMPLES / name).exists():
            data = _sample(name)
            raws += data["value"] if "value" in data else [data]
    for raw in raws:
        alert = normalise(raw, TENANT, INGESTED)
        assert ocsf.encode(Alert.model_validate_json(alert.model_dump_json())) == ocsf.encode(alert)


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
                             "smtp_from": "a@x.test", "to": ["c@y.test"], "smtp_to": "c@y.test",
                             "x_originating_ip": ["192.0.2.7"]}
    assert (mail["verdict_id"], mail["verdict"]) == (2, "True Positive")
    assert mailbox["user"] == {"email_addr": "c@y.test", "display_name": "C Y"}


def test_unmapped_carries_what_ocsf_has_no_place_for() -> None:
    event = ocsf.to_ocsf(_alert(
        determination="malware", investigationState="running", actorDisplayName="Storm-0000",
        threatDisplayName="Trojan:Win32/X", threatFamilyName="X", alertPolicyId="p-1",
        resolvedDateTime="2026-11-29T10:30:00Z", systemTags=["Defender Experts"],
        comments=[{"comment": "seen", "createdByDisplayName": "ana", "createdDateTime": "2026-11-29T10:01:00Z"}],
        customDetails={"Rule": "3"}, additionalData={"CompromisedEntity": "vm1"}, tenantId="t-1",
        evidence=[{"@odata.type": NS + "cloudApplicationEvidence", "appId": 11, "displayName": "Box"},
                  {"@odata.type": NS + "dnsEvidence", "domainName": "bad.test"}],
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
    cloud_app, dns = unmapped["evidence"]
    assert (cloud_app["kind"], cloud_app["app_id"], cloud_app["display_name"]) == ("cloud_application", "11", "Box")
    assert (dns["kind"], dns["extra"]) == ("other", {"@odata.type": NS + "dnsEvidence", "domainName": "bad.test"})
    assert "evidences" not in event


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
