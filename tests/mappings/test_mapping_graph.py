"""Graph alerts_v2 -> common Alert: the shared real samples, enum folding, evidence dispatch,
nothing lost, and malformed input (MappingError with a reason, never another exception)."""
from __future__ import annotations

import copy
import re
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.model.schema import Alert, Severity, TenantRef, alert_from_data, decode_alert, encode_alert, version_key
from mappings import normaliser
from mappings.graph_alerts_v2 import MappingError, normalise
from tests.helpers import SHARED_SAMPLES, shared_sample

SAMPLES = SHARED_SAMPLES
UTC = timezone.utc
TENANT = TenantRef(id="b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."

# Every @odata.type of Graph's v1.0 evidence model, and the
# kind of common-schema evidence each must become.
TYPED = {
    "deviceEvidence": "device", "userEvidence": "user", "fileEvidence": "file", "processEvidence": "process",
    "ipEvidence": "ip", "urlEvidence": "url", "mailboxEvidence": "mailbox", "analyzedMessageEvidence": "mail_message",
    "cloudApplicationEvidence": "cloud_application", "oauthApplicationEvidence": "cloud_application",
    "registryKeyEvidence": "registry", "registryValueEvidence": "registry",
}
OTHER_TYPES = (
    "activeDirectoryDomainEvidence", "aiAgentEvidence", "amazonResourceEvidence", "azureResourceEvidence",
    "blobContainerEvidence", "blobEvidence", "cloudLogonRequestEvidence", "cloudLogonSessionEvidence",
    "containerEvidence", "containerImageEvidence", "containerRegistryEvidence", "dnsEvidence", "fileHashEvidence",
    "gitHubOrganizationEvidence", "gitHubRepoEvidence", "gitHubUserEvidence", "googleCloudResourceEvidence",
    "hostLogonSessionEvidence", "ioTDeviceEvidence", "kubernetesClusterEvidence", "kubernetesControllerEvidence",
    "kubernetesNamespaceEvidence", "kubernetesPodEvidence", "kubernetesSecretEvidence",
    "kubernetesServiceAccountEvidence", "kubernetesServiceEvidence", "mailClusterEvidence",
    "mailboxConfigurationEvidence", "malwareEvidence", "networkConnectionEvidence", "nicEvidence", "sasTokenEvidence",
    "securityGroupEvidence", "servicePrincipalEvidence", "submissionMailEvidence", "teamsMessageEvidence",
)


@pytest.fixture
def docs_alert() -> dict[str, Any]:
    """The alert of the Graph docs' list response (device, file, process, registryKey evidence)."""
    return shared_sample("graph_alerts_v2_list_docs.json")["value"][0]


@pytest.fixture
def powershell_alert() -> dict[str, Any]:
    """elastic's real-world MDE fixture (device, user, url, ip, process evidence)."""
    return shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json")


def _factory_alerts(n: int) -> list[dict[str, Any]]:
    factory = pytest.importorskip("tests.peers.alert_factory")
    return factory.make_alerts(n, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=7)


def _utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


def _reason(raw: Any) -> str:
    with pytest.raises(MappingError) as caught:
        normalise(raw, TENANT, INGESTED)
    return str(caught.value)


# --------------------------------------------------------------------------- the real samples


def test_docs_sample_alert_fields(docs_alert: dict[str, Any]) -> None:
    alert = normalise(docs_alert, TENANT, INGESTED)

    assert alert.raw is docs_alert
    assert alert.source == "graph_alerts"
    assert alert.tenant == TENANT
    assert alert.id == alert.provider_alert_id == "da637551227677560813_-961444813"
    assert alert.incident_id == "28282"
    assert (alert.status, alert.classification, alert.determination) == ("new", "unknown", "unknown")
    assert (alert.severity, alert.severity_original) == (Severity.low, "low")
    assert (alert.service_source, alert.detection_source) == ("microsoftDefenderForEndpoint", "antivirus")
    assert alert.detector_id == "e0da400f-affd-43ef-b1d5-afc2eb6f2756"
    assert alert.title == "Suspicious execution of hidden file"
    assert alert.description.startswith("A hidden file has been launched.")
    assert "\ufffd\tReview the machine timeline" in alert.recommended_actions  # kept as sent
    assert (alert.category, alert.categories, alert.mitre_techniques) == ("DefenseEvasion", [], ["T1564.001"])
    assert alert.alert_web_url.startswith("https://security.microsoft.com/alerts/da637551227677560813")
    assert alert.incident_web_url.endswith("/incidents/28282?tid=b3c1b5fc-828c-45fa-a1e1-10d74f6d6e9c")
    assert alert.system_tags == ["Defender Experts"]
    assert alert.assigned_to is None and alert.comments == []
    # 7 fractional digits: the 100 ns digit is truncated, never rounded into the next µs.
    assert alert.times.created == _utc(2021, 4, 27, 12, 19, 27, 721130)
    assert alert.times.last_updated == _utc(2021, 5, 2, 14, 19, 1, 326666)
    assert alert.times.first_activity == _utc(2021, 4, 26, 7, 45, 50, 116000)
    assert alert.times.last_activity == _utc(2021, 5, 2, 7, 56, 58, 222000)
    assert alert.times.resolved is None and alert.times.ingested == INGESTED
    assert alert.version_key == f"{TENANT.id}/da637551227677560813_-961444813/2021-05-02T14:19:01.326666Z"
    # Properties with no Alert field are kept verbatim.
    assert alert.extra == {"@odata.type": "#microsoft.graph.security.alert", "tenantId": TENANT.id}


def test_docs_sample_evidence(docs_alert: dict[str, Any]) -> None:
    device, file, process, registry = normalise(docs_alert, TENANT, INGESTED).evidence

    assert [e.kind for e in (device, file, process, registry)] == ["device", "file", "process", "registry"]
    assert device.odata_type == NS + "deviceEvidence"
    assert device.created == _utc(2021, 4, 27, 12, 19, 27, 721130)
    assert (device.verdict, device.remediation_status) == ("unknown", "none")
    assert (device.roles, device.detailed_roles, device.tags) == (["compromised"], ["Main device"], ["Test Machine"])
    assert device.mde_device_id == "73e7e2de709dff64ef64b1d0c30e67fab63279db"
    assert (device.fqdn, device.os_platform, device.os_build, device.os_version) == ("tempDns", "Windows10", 22424, "Other")
    assert (device.ip_addresses, device.health_status, device.risk_score) == (["1.1.1.1"], "active", "medium")
    assert device.rbac_group == "UnassignedGroup"
    assert device.extra["rbacGroupId"] == 75 and device.extra["onboardingStatus"] == "onboarded"
    assert device.extra["vmMetadata"]["vmId"] == "ca1b0d41-5a3b-4d95-b48b-f220aed11d78"
    assert device.extra["firstSeenDateTime"] == "2020-09-12T07:28:32.4321753Z"

    assert file.file.name == "MsSense.exe" and file.file.path == "C:\\Program Files\\temp"
    assert (file.file.size, file.file.publisher) == (6136392, "Microsoft Corporation")
    assert file.file.sha256 == "8963a19fb992ad9a76576c5638fd68292cffb9aaac29eb8285f9abf6196a7dec"
    assert (file.detection_status, file.detailed_roles) == ("detected", ["Referred in command line"])

    assert (process.pid, process.parent_pid, process.command_line) == (4780, 668, '"MsSense.exe"')
    assert process.process_created == _utc(2021, 8, 12, 12, 43, 19, 77257)  # processCreationDateTime
    assert process.parent_created == _utc(2021, 8, 12, 7, 39, 9, 90923)
    assert process.image.name == "MsSense.exe" and process.parent_image.name == "services.exe"
    assert (process.user.account_name, process.user.domain, process.user.sid) == ("SYSTEM", "NT AUTHORITY", "S-1-5-18")
    # The evidence's own createdDateTime is the base field `created`, as on every evidence.
    assert process.created == _utc(2021, 4, 27, 12, 19, 27, 721130)
    assert "createdDateTime" not in process.extra

    assert (registry.hive, registry.key) == ("HKEY_LOCAL_MACHINE",
                                             "SYSTEM\\CONTROLSET001\\CONTROL\\WMI\\AUTOLOGGER\\SENSEAUDITLOGGER")


def test_powershell_fixture(powershell_alert: dict[str, Any]) -> None:
    alert = normalise(powershell_alert, TENANT, INGESTED)

    assert [e.kind for e in alert.evidence] == ["device", "user", "url", "ip", "process"]
    device, user, url, ip, process = alert.evidence
    assert alert.product_name == "Microsoft Defender for Endpoint"
    assert alert.classification is None and alert.determination is None and alert.alert_policy_id is None
    assert alert.additional_data == {}  # null: absent
    assert (alert.severity, alert.mitre_techniques) == (Severity.medium, ["T1059.001"])
    assert device.logged_on_users[0].account_name == "CDPUserIS-38411"
    assert device.logged_on_users[0].domain == "AzureAD"
    assert device.aad_device_id == "f18bd540-d5e4-46e0-8ddd-3d03a59e4e14"
    assert user.user.sid == "S-1-12-1-1485667349-1150190949-4065799612-2328216759"
    assert (url.url, url.verdict) == ("http://127.0.0.1/1.exe", "suspicious")
    assert (ip.address, ip.country_code, ip.verdict) == ("127.0.0.1", None, "suspicious")
    assert process.command_line.startswith("powershell.exe  -NoExit -ExecutionPolicy Bypass")
    assert process.image.sha1 == "a72c41316307889e43fe8605a0dca4a72e72a011"
    assert process.parent_image.name == "cmd.exe"


def test_empty_page_has_no_alerts_and_a_page_is_not_an_alert() -> None:
    page = shared_sample("graph_alerts_v2_empty_page_elastic_fixture.json")
    assert [normalise(raw, TENANT, INGESTED) for raw in page["value"]] == []
    assert _reason(page) == "id: missing"  # a whole page handed over by mistake is named


def test_normaliser_registry() -> None:
    from mappings import mde_alerts

    assert normaliser("graph") is normalise and normaliser("mde") is mde_alerts.normalise
    with pytest.raises(ValueError, match="unknown source 'splunk'"):
        normaliser("splunk")


# --------------------------------------------------------------------------- nothing is lost


_GRAPH_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _leaves(value: Any) -> Iterator[Any]:
    """Every scalar in a JSON-like value (dict keys excluded), null excluded."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None:
        yield value


def _comparable(value: Any) -> Any:
    """Graph scalars as the Alert holds them: times parsed, enums case-folded."""
    if isinstance(value, str) and _GRAPH_TIME.fullmatch(value):
        return datetime.fromisoformat(value).astimezone(UTC)
    return value.lower() if isinstance(value, str) else value


def _raw_alerts() -> list[dict[str, Any]]:
    alerts = _factory_alerts(150)
    for name in ("graph_alerts_v2_list_docs.json", "graph_alert_v2_mde_powershell_elastic_fixture.json"):
        if (SAMPLES / name).exists():
            data = shared_sample(name)
            alerts += data["value"] if "value" in data else [data]
    return alerts


def test_every_raw_value_is_kept_outside_raw() -> None:
    """Walk every scalar of every alert: each is found in the normalised Alert without
    looking at `raw` (typed fields, or an `extra` dict), so no format loses data."""
    for raw in _raw_alerts():
        alert = normalise(raw, TENANT, INGESTED)
        kept = {_comparable(v) for v in _leaves({k: v for k, v in msgspec.to_builtins(alert).items() if k != "raw"})}
        missing = [v for v in _leaves(raw) if _comparable(v) not in kept]
        assert missing == [], f"alert {raw['id']}: not kept: {missing[:5]}"


def test_every_raw_key_is_mapped_or_in_extra() -> None:
    """Keys, not just values: a property the mapping has no field for sits in `extra` under
    its own name, at the alert's level or the evidence's."""
    for raw in _raw_alerts():
        alert = normalise(raw, TENANT, INGESTED)
        assert set(alert.extra) <= set(raw)
        assert "tenantId" in alert.extra
        for source, evidence in zip(raw["evidence"], alert.evidence):
            assert set(evidence.extra) <= set(source)
            if evidence.kind == "other":
                assert evidence.extra == source


def test_normalised_alerts_survive_the_outbox() -> None:
    """normalise builds the models without validating them again (the tables check every
    type): what it builds must be exactly what the outbox's JSON decodes back to, field by
    field and type by type (a float stays a float, a list a fresh list, ...)."""
    for raw in _raw_alerts():
        alert = normalise(raw, TENANT, INGESTED)
        stored = encode_alert(alert)
        decoded = decode_alert(stored)
        assert decoded == alert, f"alert {raw['id']}"
        assert encode_alert(decoded) == stored
        assert alert_from_data(msgspec.to_builtins(alert)) == alert


def test_built_models_share_no_mutable_state(powershell_alert: dict[str, Any]) -> None:
    evidence = [{"@odata.type": NS + "urlEvidence"}, {"@odata.type": NS + "userEvidence"},
                {"@odata.type": NS + "dnsEvidence", "domainName": "x.test"}]
    first = normalise(_minimal(evidence=evidence), TENANT, INGESTED)
    second = normalise(_minimal(evidence=evidence), TENANT, INGESTED)
    # Defaults are fresh lists, dicts and (required) sub-models, never one shared.
    for name in ("categories", "mitre_techniques", "system_tags", "comments", "custom_details", "additional_data"):
        assert getattr(first, name) is not getattr(second, name), name
    assert first.evidence[0].roles is not second.evidence[0].roles
    assert first.evidence[1].user is not second.evidence[1].user
    first.categories.append("Execution")
    first.evidence[0].tags.append("mine")
    first.evidence[1].user.upn = "someone@x.test"
    assert second.categories == [] and second.evidence[0].tags == [] and second.evidence[1].user.upn is None
    # Values are copies: changing the model does not change the alert as Graph sent it.
    assert first.evidence[2].extra == evidence[2] and first.evidence[2].extra is not evidence[2]
    alert = normalise(powershell_alert, TENANT, INGESTED)
    assert alert.mitre_techniques == powershell_alert["mitreTechniques"]
    assert alert.mitre_techniques is not powershell_alert["mitreTechniques"]
    # Assignment works as on any model, and leaves the other alerts alone.
    first.title = "changed"
    assert (first.title, second.title) == ("changed", None)
    copy_ = msgspec.structs.replace(first, title="copied")
    assert (copy_.title, first.title) == ("copied", "changed")


@settings(max_examples=300, deadline=None)
@given(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)), st.integers(0, 9),
       st.sampled_from(["Z", "+00:00", "+02:00", ""]), st.booleans())
def test_version_key_from_graph_text(moment: datetime, tick: int, offset: str, graph_style: bool) -> None:
    """normalise takes the version key's time from Graph's own text when Graph wrote it its
    usual way; it must be exactly what `version_key` makes of the parsed time."""
    text = moment.isoformat(timespec="microseconds") + (str(tick) if graph_style else "") + offset
    alert = normalise(_minimal(lastUpdateDateTime=text), TENANT, INGESTED)
    assert alert.version_key == version_key(TENANT.id, "da1_2", alert.times.last_updated)
    assert alert.version_key == f"{TENANT.id}/da1_2/{alert.times.last_updated.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"


def test_unknown_alert_property_is_kept() -> None:
    raw = {**_minimal(), "newGraphProperty": {"nested": [1, 2]}, "@odata.etag": "W/1"}
    alert = normalise(raw, TENANT, INGESTED)
    assert alert.extra == {"newGraphProperty": {"nested": [1, 2]}, "@odata.etag": "W/1"}


# --------------------------------------------------------------------------- enums


def _minimal(**properties: Any) -> dict[str, Any]:
    return {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}


@pytest.mark.parametrize(("prop", "field", "sent", "stored"), [
    ("status", "status", "InProgress", "inProgress"),
    ("status", "status", "RESOLVED", "resolved"),
    ("classification", "classification", "TruePositive", "truePositive"),
    ("classification", "classification", "informationalexpectedactivity", "informationalExpectedActivity"),
    ("determination", "determination", "MultiStagedAttack", "multiStagedAttack"),
    ("determination", "determination", "compromisedUser", "compromisedAccount"),  # docs prose spelling
    ("determination", "determination", "Clean", "notMalicious"),
    ("serviceSource", "service_source", "MicrosoftDefenderForEndpoint", "microsoftDefenderForEndpoint"),
    ("serviceSource", "service_source", "microsoftsentinel", "microsoftSentinel"),
    ("detectionSource", "detection_source", "CustomDetection", "customDetection"),
    ("investigationState", "investigation_state", "SuccessfullyRemediated", "successfullyRemediated"),
])
def test_enums_fold_case_to_graph_spelling(prop: str, field: str, sent: str, stored: str) -> None:
    assert getattr(normalise(_minimal(**{prop: sent}), TENANT, INGESTED), field) == stored


@pytest.mark.parametrize(("prop", "field", "sent"), [
    ("status", "status", "snoozed"),
    ("classification", "classification", "SomethingNew"),
    ("serviceSource", "service_source", "microsoftDefenderForQuantum"),
    ("detectionSource", "detection_source", "quantumSensor"),
    ("investigationState", "investigation_state", "pondering"),
])
def test_unknown_enum_values_are_kept_verbatim(prop: str, field: str, sent: str) -> None:
    assert getattr(normalise(_minimal(**{prop: sent}), TENANT, INGESTED), field) == sent


@pytest.mark.parametrize(("sent", "severity"), [
    ("High", Severity.high), ("informational", Severity.informational), ("MEDIUM", Severity.medium),
    ("unknownFutureValue", Severity.unknown), ("catastrophic", Severity.unknown), (None, Severity.unknown),
])
def test_severity(sent: str | None, severity: Severity) -> None:
    alert = normalise(_minimal(severity=sent), TENANT, INGESTED)
    assert (alert.severity, alert.severity_original) == (severity, sent)


def test_evidence_enums_fold_and_keep_unknowns() -> None:
    raw = _minimal(evidence=[{
        "@odata.type": NS + "ipEvidence", "ipAddress": "192.0.2.1", "verdict": "Malicious",
        "remediationStatus": "PendingApproval", "roles": ["Attacker", "CommandAndControl", "spectator"],
    }])
    ip = normalise(raw, TENANT, INGESTED).evidence[0]
    assert (ip.verdict, ip.remediation_status) == ("malicious", "pendingApproval")
    assert ip.roles == ["attacker", "commandAndControl", "spectator"]


# --------------------------------------------------------------------------- evidence dispatch


@pytest.mark.parametrize("odata_type", OTHER_TYPES)
def test_every_other_appendix_a_type_is_other_evidence_kept_whole(odata_type: str) -> None:
    evidence = {"@odata.type": NS + odata_type, "verdict": "suspicious", "roles": ["contextual"],
                "someProperty": {"nested": ["x"]}}
    other = normalise(_minimal(evidence=[evidence]), TENANT, INGESTED).evidence[0]
    assert other.kind == "other"
    assert other.odata_type == NS + odata_type
    assert other.extra == evidence
    assert (other.verdict, other.roles) == ("suspicious", ["contextual"])


@pytest.mark.parametrize(("odata_type", "kind"), sorted(TYPED.items()))
def test_every_typed_appendix_a_type_gets_its_model(odata_type: str, kind: str) -> None:
    evidence = normalise(_minimal(evidence=[{"@odata.type": NS + odata_type}]), TENANT, INGESTED).evidence[0]
    assert evidence.kind == kind


def test_odata_type_dispatch_ignores_case_and_tolerates_absence() -> None:
    raw = _minimal(evidence=[
        {"@odata.type": "#Microsoft.Graph.Security.DeviceEvidence", "hostName": "ws1"},
        {"hostName": "no-type"},
        {"@odata.type": NS + "quantumEntanglementEvidence", "qubits": 7},
    ])
    device, untyped, unknown = normalise(raw, TENANT, INGESTED).evidence
    assert (device.kind, device.hostname) == ("device", "ws1")
    assert (untyped.kind, untyped.odata_type, untyped.extra) == ("other", "", {"hostName": "no-type"})
    assert (unknown.kind, unknown.extra["qubits"]) == ("other", 7)


def test_mail_cloud_app_mailbox_and_registry_value_evidence() -> None:
    raw = _minimal(evidence=[
        {"@odata.type": NS + "analyzedMessageEvidence", "networkMessageId": "n-1", "internetMessageId": "<m@x.test>",
         "subject": "Invoice", "p1Sender": {"emailAddress": "a@x.test", "displayName": "A", "domainName": "x.test"},
         "p2Sender": {"emailAddress": "b@x.test"}, "recipientEmailAddress": "c@y.test", "senderIp": "192.0.2.7",
         "receivedDateTime": "2026-11-29T09:00:00Z", "deliveryAction": "delivered", "deliveryLocation": "inbox",
         "antiSpamDirection": "inbound", "urls": ["https://x.test/a"], "threats": ["Phish"], "urlCount": 1},
        {"@odata.type": NS + "cloudApplicationEvidence", "appId": 20893, "displayName": "Exchange", "instanceId": 0},
        {"@odata.type": NS + "oauthApplicationEvidence", "appId": "9f0c", "displayName": "Mailer",
         "publisher": "Fabrikam", "objectId": "o-1"},
        {"@odata.type": NS + "mailboxEvidence", "primaryAddress": "c@y.test", "upn": "c@y.test",
         "displayName": "C", "userAccount": {"accountName": "c", "azureAdUserId": "u-1"}},
        {"@odata.type": NS + "registryValueEvidence", "registryHive": "HKEY_CURRENT_USER", "registryKey": "Run",
         "registryValueName": "updater", "registryValue": "c:\\x.exe", "registryValueType": "String",
         "mdeDeviceId": "d-1"},
    ])
    mail, cloud_app, oauth_app, mailbox, registry = normalise(raw, TENANT, INGESTED).evidence
    assert (mail.kind, mail.sender, mail.sender_display_name) == ("mail_message", "a@x.test", "A")
    assert (mail.recipient, mail.sender_ip, mail.direction) == ("c@y.test", "192.0.2.7", "inbound")
    assert mail.received == _utc(2026, 11, 29, 9)
    assert (mail.urls, mail.threats, mail.subject) == (["https://x.test/a"], ["Phish"], "Invoice")
    assert mail.extra == {"p1Sender": {"domainName": "x.test"}, "p2Sender": {"emailAddress": "b@x.test"},
                          "urlCount": 1}
    assert (cloud_app.app_id, cloud_app.display_name, cloud_app.extra) == ("20893", "Exchange", {"instanceId": 0})
    assert (oauth_app.kind, oauth_app.app_id, oauth_app.publisher) == ("cloud_application", "9f0c", "Fabrikam")
    assert oauth_app.extra == {"objectId": "o-1"}
    assert (mailbox.primary_address, mailbox.user.aad_user_id) == ("c@y.test", "u-1")
    assert (registry.value_name, registry.value_data, registry.value_type) == ("updater", "c:\\x.exe", "String")
    assert registry.mde_device_id == "d-1"


def test_nested_evidence_stays_whole_in_its_parent() -> None:
    nested_file = {"@odata.type": NS + "fileEvidence", "fileDetails": {"fileName": "a.exe"}}
    source = {"@odata.type": NS + "ipEvidence", "ipAddress": "10.0.0.1"}
    raw = _minimal(evidence=[
        {"@odata.type": NS + "malwareEvidence", "name": "Trojan:Win32/X", "files": [nested_file], "processes": []},
        {"@odata.type": NS + "networkConnectionEvidence", "sourceAddress": source, "destinationPort": 443},
    ])
    malware, connection = normalise(raw, TENANT, INGESTED).evidence  # two, not flattened into more
    assert malware.extra["files"] == [nested_file]
    assert connection.extra["sourceAddress"] == source


def test_partly_typed_sub_objects_keep_their_untyped_members() -> None:
    raw = _minimal(evidence=[
        {"@odata.type": NS + "fileEvidence", "fileDetails": {"fileName": "a.exe", "sha256Ac": "ac"}},
        {"@odata.type": NS + "userEvidence", "userAccount": {"accountName": "j", "activeDirectoryObjectGuid": "g"}},
        {"@odata.type": NS + "deviceEvidence", "loggedOnUsers": [{"accountName": "j", "logonType": "Interactive"}]},
        {"@odata.type": NS + "ipEvidence", "location": {"city": "Oslo", "asn": 2119}},
    ])
    file, user, device, ip = normalise(raw, TENANT, INGESTED).evidence
    assert (file.file.name, file.extra) == ("a.exe", {"fileDetails": {"sha256Ac": "ac"}})
    assert (user.user.account_name, user.extra) == ("j", {"userAccount": {"activeDirectoryObjectGuid": "g"}})
    assert device.logged_on_users[0].account_name == "j"
    assert device.extra == {"loggedOnUsers": [{"accountName": "j", "logonType": "Interactive"}]}
    assert (ip.city, ip.extra) == ("Oslo", {"location": {"asn": 2119}})


def test_comments_accept_both_documented_shapes() -> None:
    raw = _minimal(comments=[
        {"comment": "looked at it", "createdByDisplayName": "ana@mssp.test", "createdDateTime": "2026-11-29T09:00:00Z"},
        {"comment": "incident example shape", "createdBy": "bo@mssp.test", "createdTime": "2026-11-29T09:05:00Z"},
    ])
    first, second = normalise(raw, TENANT, INGESTED).comments
    assert (first.text, first.author, first.created) == ("looked at it", "ana@mssp.test", _utc(2026, 11, 29, 9))
    assert (second.author, second.created) == ("bo@mssp.test", _utc(2026, 11, 29, 9, 5))


# --------------------------------------------------------------------------- required and times


def test_required_id() -> None:
    assert _reason({"lastUpdateDateTime": "2026-11-29T10:00:00Z"}) == "id: missing"
    assert _reason(_minimal(id=None)) == "id: missing"
    assert _reason(_minimal(id="")) == "id: empty"
    assert _reason(_minimal(id=5)) == "id: expected a string, got int"


def test_required_last_update() -> None:
    raw = _minimal()
    del raw["lastUpdateDateTime"]
    assert _reason(raw) == "lastUpdateDateTime: missing"
    assert _reason(_minimal(lastUpdateDateTime="yesterday")) == "lastUpdateDateTime: not an ISO 8601 date-time: 'yesterday'"
    assert _reason(_minimal(lastUpdateDateTime=1764410400)) == (
        "lastUpdateDateTime: expected an ISO 8601 date-time string, got int")


@pytest.mark.parametrize(("sent", "parsed"), [
    ("2026-11-29T10:00:00.1234567Z", _utc(2026, 11, 29, 10, 0, 0, 123456)),
    ("2026-11-29T10:00:00Z", _utc(2026, 11, 29, 10)),
    ("2026-11-29T12:00:00.5+02:00", _utc(2026, 11, 29, 10, 0, 0, 500000)),  # converted to UTC
    ("2026-11-29T10:00:00", _utc(2026, 11, 29, 10)),  # no offset: Graph documents UTC
])
def test_timestamps(sent: str, parsed: datetime) -> None:
    alert = normalise(_minimal(lastUpdateDateTime=sent), TENANT, INGESTED)
    assert alert.times.last_updated == parsed
    assert alert.times.last_updated.utcoffset() == timedelta(0)


def test_incident_id_number_becomes_text() -> None:
    assert normalise(_minimal(incidentId=28282), TENANT, INGESTED).incident_id == "28282"


# --------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize(("changes", "reason"), [
    ({"title": 5}, "title: expected a string, got int"),
    ({"title": ["a", "b"]}, "title: expected a string, got list"),
    ({"status": 3}, "status: expected a string, got int"),
    ({"severity": {"level": "high"}}, "severity: expected a string, got dict"),
    ({"incidentId": 1.5}, "incidentId: expected a string, got float"),
    ({"mitreTechniques": "T1059"}, "mitreTechniques: expected a list, got str"),
    ({"systemTags": ["ok", 7]}, "systemTags[1]: expected a string, got int"),
    ({"customDetails": ["x"]}, "customDetails: expected an object, got list"),
    ({"createdDateTime": "not a date"}, "createdDateTime: not an ISO 8601 date-time: 'not a date'"),
    ({"comments": [{"comment": 5}]}, "comments[0].comment: expected a string, got int"),
    ({"comments": [{"createdDateTime": 5}]}, "comments[0].createdDateTime: expected an ISO 8601 date-time string, got int"),
    ({"comments": "none"}, "comments: expected a list, got str"),
    ({"evidence": {"@odata.type": NS + "ipEvidence"}}, "evidence: expected a list, got dict"),
    ({"evidence": ["device"]}, "evidence[0]: expected an object, got str"),
    ({"evidence": [None]}, "evidence[0]: expected an object, got NoneType"),
    ({"evidence": [{}, {"@odata.type": 7}]}, "evidence[1].@odata.type: expected a string, got int"),
    ({"evidence": [{}, {}, {}, {"@odata.type": NS + "fileEvidence", "fileDetails": "a.exe"}]},
     "evidence[3].fileDetails: expected an object, got str"),
    ({"evidence": [{"@odata.type": NS + "fileEvidence", "fileDetails": {"fileSize": "big"}}]},
     "evidence[0].fileDetails.fileSize: expected an integer, got str"),
    ({"evidence": [{"@odata.type": NS + "deviceEvidence", "osBuild": 22621.5}]},
     "evidence[0].osBuild: expected an integer, got float"),
    ({"evidence": [{"@odata.type": NS + "deviceEvidence", "loggedOnUsers": [{"accountName": 5}]}]},
     "evidence[0].loggedOnUsers[0].accountName: expected a string, got int"),
    ({"evidence": [{"@odata.type": NS + "ipEvidence", "location": {"latitude": "north"}}]},
     "evidence[0].location.latitude: expected a number, got str"),
    ({"evidence": [{"@odata.type": NS + "processEvidence", "userAccount": {"userSid": ["S-1"]}}]},
     "evidence[0].userAccount.userSid: expected a string, got list"),
    ({"evidence": [{"@odata.type": NS + "urlEvidence", "verdict": True}]},
     "evidence[0].verdict: expected a string, got bool"),
    ({"evidence": [{"@odata.type": NS + "userEvidence", "roles": "attacker"}]},
     "evidence[0].roles: expected a list, got str"),
    ({"evidence": [{"@odata.type": NS + "urlEvidence", "tags": [None]}]},
     "evidence[0].tags[0]: expected a string, got NoneType"),
])
def test_wrong_types_are_named(changes: dict[str, Any], reason: str) -> None:
    assert _reason(_minimal(**changes)) == reason


def test_not_an_object() -> None:
    assert _reason(["id"]) == "alert: expected an object, got list"
    assert _reason(None) == "alert: expected an object, got NoneType"


def test_huge_description_and_control_characters_are_kept() -> None:
    description = "A" * 10_000_000
    title = "bad\x00title\x01\x1f\u2028\ud7ff end"
    alert = normalise(_minimal(title=title, description=description), TENANT, INGESTED)
    assert alert.title == title
    assert alert.description == description


def test_input_is_not_modified(powershell_alert: dict[str, Any]) -> None:
    before = copy.deepcopy(powershell_alert)
    normalise(powershell_alert, TENANT, INGESTED)
    assert powershell_alert == before


# --------------------------------------------------------------------------- property test

_json_scalars = st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20)
_json = st.recursive(
    _json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_OPTIONAL_KEYS = ("incidentId", "status", "severity", "classification", "determination", "serviceSource",
                  "title", "mitreTechniques", "createdDateTime", "comments", "customDetails", "additionalData",
                  "systemTags")
_EVIDENCE_KEYS = ("@odata.type", "createdDateTime", "verdict", "roles", "tags", "fileDetails", "userAccount",
                  "imageFile", "loggedOnUsers", "location", "osBuild", "processId", "ipAddress", "p1Sender", "appId")
_odata_types = st.sampled_from([NS + t for t in (*TYPED, *OTHER_TYPES)]) | st.text(max_size=10)
_timestamps = st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat()) | _json
_evidence = st.dictionaries(st.sampled_from(_EVIDENCE_KEYS), _json, max_size=6).flatmap(
    lambda ev: st.builds(lambda t: {**ev, "@odata.type": t}, _odata_types) | st.just(ev)
)
_alerts = st.fixed_dictionaries(
    {"id": st.text(max_size=8) | _json, "lastUpdateDateTime": _timestamps},
    optional={key: _json for key in _OPTIONAL_KEYS} | {"evidence": st.lists(_evidence | _json, max_size=4) | _json},
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_alerts)
def test_any_json_alert_normalises_or_raises_mapping_error(raw: dict[str, Any]) -> None:
    try:
        alert = normalise(raw, TENANT, INGESTED)
    except MappingError as error:
        assert str(error)  # a reason, always
        return
    assert isinstance(alert, Alert) and alert.raw is raw
    if not _has_infinity(raw):  # JSON has no infinity: the outbox writes it as null
        assert decode_alert(encode_alert(alert)) == alert


def _has_infinity(value: Any) -> bool:
    return any(isinstance(leaf, float) and leaf in (float("inf"), float("-inf")) for leaf in _leaves(value))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_json_in_one_property_of_a_real_alert(data: st.DataObject) -> None:
    raw = copy.deepcopy(_factory_alerts(1)[0])
    if data.draw(st.booleans()) and raw["evidence"]:
        target = raw["evidence"][data.draw(st.integers(0, len(raw["evidence"]) - 1))]
    else:
        target = raw
    target[data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))] = data.draw(_json)
    try:
        normalise(raw, TENANT, INGESTED)
    except MappingError as error:
        assert str(error)


@pytest.mark.parametrize(("alert_id", "reason"), [
    ("   ", "id: blank"),
    ("da123\ud800", "id: not valid Unicode (a lone surrogate)"),
    ("\udfff", "id: not valid Unicode (a lone surrogate)"),
])
def test_an_id_that_cannot_key_the_state_is_refused(alert_id: str, reason: str) -> None:
    """The id keys the dedupe state and names the alert in every format: a blank id would leave
    a CEF line without externalId, a lone surrogate cannot be stored (UTF-8) and crashed the run."""
    raw = _factory_alerts(1)[0]
    raw["id"] = alert_id
    with pytest.raises(MappingError, match=re.escape(reason)):
        normalise(raw, TENANT, INGESTED)
