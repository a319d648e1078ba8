"""Alert -> ECS document (mappings/ecs.py).

Conformance: Elastic's own m365_defender `alert` pipeline-test fixture (../shared/samples/
elastic/m365_defender/alert: the raw Graph alerts as Elastic's ingest pipeline receives
them, and the documents it makes of them). Every leaf of every expected document must be
in ours with the same value, except the paths in DELIBERATE_DIFFERENCES, each with why.

Properties, on alerts of the test alert factory: one line of valid JSON, deterministic,
timestamps as Elasticsearch writes them, the severity scale, each evidence kind in its ECS
group, nothing lost (every value of the raw alert is somewhere in the document), no empty
values, hostile text.
"""
from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest

from core.model.schema import Alert, TenantRef
from mappings import ecs
from mappings.evidence import identity_values
from mappings.graph_alerts_v2 import normalise
from tests.helpers import SHARED_SAMPLES, run_cli
from tests.mappings import ecs_reference, official_alerts
from tests.mappings.ecs_reference import ecs_fields

FIXTURES = SHARED_SAMPLES / "elastic" / "m365_defender" / "alert"
TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."

# Where our document deliberately differs from the fixture's expected document. A key is a
# leaf path, or an object path that covers every leaf under it. (The README lists these.)
DELIBERATE_DIFFERENCES: dict[str, str] = {
    "event.original": "the raw alert text, which Elastic keeps only with its `preserve_original_event` tag "
                      "(set by the fixture's test config); it would double every document, and the `raw` "
                      "format exists to ship the original",
    "tags": "the fixture's test-config tags (`preserve_original_event`, `preserve_duplicate_custom_fields`), "
            "not data of the alert",
    "event.severity": "the fixture comes from an older pipeline revision (1-4 scale: medium -> 3); the current "
                      "pipeline, which we follow, writes low/informational 21, medium 47, high 73, critical 99",
    # The pipeline removes these copies of ECS fields unless the `preserve_duplicate_custom_fields`
    # tag is set (the fixture's test config sets it); we leave them out, as its default does.
    "m365_defender.alert.category": "copy of threat.tactic.name (pipeline default removes it)",
    "m365_defender.alert.created_datetime": "copy of event.created (pipeline default removes it)",
    "m365_defender.alert.description": "copy of message (pipeline default removes it)",
    "m365_defender.alert.first_activity_datetime": "copy of event.start (pipeline default removes it)",
    "m365_defender.alert.id": "copy of event.id (pipeline default removes it)",
    "m365_defender.alert.last_activity_datetime": "copy of event.end (pipeline default removes it)",
    "m365_defender.alert.last_update_datetime": "copy of @timestamp (pipeline default removes it)",
    "m365_defender.alert.mitre_techniques": "copy of threat.technique.subtechnique.id (pipeline default removes it)",
    "m365_defender.alert.service_source": "copy of event.provider (pipeline default removes it)",
    "m365_defender.alert.tenant_id": "copy of cloud.account.id (pipeline default removes it; kept only when "
                                     "Graph's tenantId differs from the polled tenant)",
    "m365_defender.alert.web_url": "uri_parts of alertWebUrl, whose original is event.url (pipeline default "
                                   "removes it)",
}

# ECS lists where we add to what the pipeline puts: its values must be where ours start, in
# its order; ours follow (each evidence's identifying values of mappings/evidence.py that the
# pipeline does not read, e.g. a device's lastIpAddress and ipInterfaces).
EXTENDED_LISTS = ("related.hash", "related.hosts", "related.ip", "related.user")


# --------------------------------------------------------------------------- helpers


def _leaves(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every leaf; lists of objects are walked item by item (`a[0].b`),
    other lists are leaves compared whole."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for index, item in enumerate(value):
            yield from _leaves(item, f"{path}[{index}]")
    else:
        yield path, value


_MISSING = object()


def _at(document: Any, path: str) -> Any:
    for part in re.findall(r"[^.\[\]]+|\[\d+\]", path):
        if part.startswith("["):
            index = int(part[1:-1])
            if not isinstance(document, list) or index >= len(document):
                return _MISSING
            document = document[index]
        elif isinstance(document, dict) and part in document:
            document = document[part]
        else:
            return _MISSING
    return document


def _deliberate(path: str) -> str | None:
    """The DELIBERATE_DIFFERENCES key covering `path`, if any."""
    for key in DELIBERATE_DIFFERENCES:
        if path == key or path.startswith((key + ".", key + "[")):
            return key
    return None


def _fixture_pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(raw alert, Elastic's expected document) for every alert of the fixture."""
    log, expected = FIXTURES / "test-alert.log", FIXTURES / "test-alert.log-expected.json"
    if not log.exists() or not expected.exists():
        pytest.skip(f"Elastic's m365_defender alert fixture is not at {FIXTURES} (the tests read ../shared)")
    raws = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    documents = json.loads(expected.read_text(encoding="utf-8"))["expected"]
    assert len(raws) == len(documents)
    pairs = []
    for raw, document in zip(raws, documents):
        if isinstance(raw.get("value"), list):  # an empty page: the pipeline drops it (expected null)
            assert document is None
            continue
        pairs.append((raw, document))
    assert pairs, "the fixture has no alert"
    return pairs


def _tenant_of(raw: dict[str, Any]) -> TenantRef:
    return TenantRef(id=raw.get("tenantId") or TENANT.id, label=TENANT.label)


def _ecs(raw: dict[str, Any], tenant: TenantRef | None = None) -> dict[str, Any]:
    line = ecs.encode(normalise(raw, tenant or _tenant_of(raw), INGESTED))
    return json.loads(line)


def _differences(ours: dict[str, Any], expected: dict[str, Any]) -> tuple[list[str], set[str]]:
    """(differences no table entry covers, table entries that matched a difference)."""
    unexplained, used = [], set()
    for path, want in _leaves(expected):
        got = _at(ours, path)
        if got == want:
            continue
        if path in EXTENDED_LISTS and isinstance(want, list) and isinstance(got, list) and got[:len(want)] == want:
            continue
        key = _deliberate(path)
        if key is None:
            shown = "missing" if got is _MISSING else repr(got)[:120]
            unexplained.append(f"{path}: expected {repr(want)[:120]}, got {shown}")
        else:
            used.add(key)
    return unexplained, used


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", "tenantId": TENANT.id, **properties}
    return normalise(raw, TENANT, INGESTED)


def _factory_alerts(n: int, seed: int = 11) -> list[dict[str, Any]]:
    factory = pytest.importorskip("tests.peers.alert_factory")
    return factory.make_alerts(n, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=seed)


# --------------------------------------------------------------------------- conformance


def test_every_field_of_elastics_expected_document_is_ours() -> None:
    used: set[str] = set()
    for raw, expected in _fixture_pairs():
        unexplained, matched = _differences(_ecs(raw), expected)
        assert not unexplained, "differences from Elastic's document not in DELIBERATE_DIFFERENCES:\n" + "\n".join(
            unexplained)
        used |= matched
    stale = set(DELIBERATE_DIFFERENCES) - used
    assert not stale, f"DELIBERATE_DIFFERENCES entries that no longer differ (remove them): {sorted(stale)}"


def test_fixture_field_placement_spelled_out() -> None:
    """The fixture's main placements, spelled out (a readable complement to the walk above)."""
    raw, _ = _fixture_pairs()[0]
    doc = _ecs(raw)
    assert doc["@timestamp"] == "2023-10-20T09:54:07.503Z"
    assert doc["event"]["kind"] == "alert" and doc["event"]["severity"] == 47
    assert doc["event"]["category"] == ["host", "iam", "network", "process"] and doc["event"]["type"] == ["info"]
    assert doc["event"]["duration"] == 2_478_000_000
    assert doc["cloud"]["account"]["id"] == raw["tenantId"]
    assert doc["message"] == raw["description"]
    assert doc["m365_defender"]["alert"]["title"] == raw["title"]
    assert doc["threat"]["tactic"]["name"] == ["Execution"]
    assert doc["threat"]["technique"] == {"id": ["T1059"], "subtechnique": {"id": ["T1059.001"]}}
    assert doc["host"]["id"] == ["505d70d89cfa3428f7aac7d2eb3a64c60fd3d843"]
    assert doc["related"]["hosts"] == ["505d70d89cfa3428f7aac7d2eb3a64c60fd3d843", "Windows11", "22H2",
                                       "clw555test", "AzureAD"]
    assert doc["process"]["name"] == "powershell.exe"  # current pipeline: from imageFile and the command line
    assert doc["process"]["entity_id"] == ["8224"] and doc["process"]["parent"]["entity_id"] == ["5772"]
    assert doc["device"]["id"] == ["f18bd540-d5e4-46e0-8ddd-3d03a59e4e14"]
    assert doc["url"]["full"] == ["http://127.0.0.1/1.exe"]
    assert doc["defender_forwarder"] == {
        "customer": "contoso", "tenant_id": raw["tenantId"], "source": "graph_alerts",
        "version_key": f"{raw['tenantId']}/{raw['id']}/2023-10-20T09:54:07.503333Z",
        "ingested": "2026-11-29T12:00:00.000Z",
    }
    assert doc["organization"] == {"id": raw["tenantId"], "name": "contoso"}
    incident = doc["m365_defender"]["alert"]["incident_web_url"]
    assert incident == {"domain": "security.microsoft.com", "original": raw["incidentWebUrl"], "path": "/incidents/23",
                        "query": "tid=3adb963c-8e61-48e8-a06d-6dbb0dacea39", "scheme": "https"}


def test_cli_convert_of_elastics_fixture_matches_elastics_expected_documents() -> None:
    pairs = _fixture_pairs()
    # The fixture file itself, empty Graph page line included: convert takes list responses per line.
    source = FIXTURES / "test-alert.log"
    result = run_cli("convert", "--source", "graph", "--format", "ecs", "--tenant-label", "contoso", str(source))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(pairs)
    for line, (raw, expected) in zip(lines, pairs):
        doc = json.loads(line)
        unexplained, _ = _differences(doc, expected)
        assert not unexplained, "\n".join(unexplained)
        ours = _ecs(raw)
        doc["defender_forwarder"].pop("ingested"), ours["defender_forwarder"].pop("ingested")
        assert doc == ours


# --------------------------------------------------------------------------- shape


_ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_TIME_FIELDS = ("@timestamp", "event.created", "event.start", "event.end")


def _empty_values(value: Any, path: str = "") -> Iterator[str]:
    """Paths of null, empty-string, empty-list or empty-object values (the pipeline drops them)."""
    if value is None or value == "" or value == [] or value == {}:
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _empty_values(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _empty_values(item, f"{path}[{index}]")


def test_generated_alerts_encode_as_one_deterministic_line_of_json() -> None:
    for raw in _factory_alerts(150):
        alert = normalise(raw, TENANT, INGESTED)
        line = ecs.encode(alert)
        assert b"\n" not in line and b"\r" not in line
        doc = json.loads(line)
        assert doc == ecs.to_ecs(alert)
        assert ecs.encode(normalise(raw, TENANT, INGESTED)) == line  # same alert, same bytes
        assert list(doc)[:3] == ["@timestamp", "ecs", "event"]
        assert not list(_empty_values(doc)), f"empty values in {raw['id']}"


def test_timestamps_are_milliseconds_in_utc_as_elasticsearch_writes_them() -> None:
    for raw in _factory_alerts(60):
        alert = normalise(raw, TENANT, INGESTED)
        doc = ecs.to_ecs(alert)
        for path in _TIME_FIELDS:
            value = _at(doc, path)
            if value is not _MISSING:
                assert _ISO_MS.match(value), (path, value)
        for list_path in ("process.start", "process.parent.start", "email.delivery_timestamp"):
            for value in [] if _at(doc, list_path) is _MISSING else _at(doc, list_path):
                assert _ISO_MS.match(value), (list_path, value)
        stamp = datetime.fromisoformat(doc["@timestamp"])
        updated = alert.times.last_updated
        assert stamp == updated.replace(microsecond=updated.microsecond // 1000 * 1000)  # truncated, not rounded
        assert doc["@timestamp"][:19] == raw["lastUpdateDateTime"][:19]
        for evidence in doc["m365_defender"]["alert"].get("evidence", []):
            for path, value in _leaves(evidence):
                if path.endswith("_datetime"):
                    assert _ISO_MS.match(value), (path, value)


def test_truncation_and_duration_follow_the_millisecond_values() -> None:
    doc = ecs.to_ecs(_alert(createdDateTime="2023-10-20T09:53:09.8839999Z",
                            firstActivityDateTime="2023-10-20T09:51:39.5159999Z",
                            lastActivityDateTime="2023-10-20T09:51:41.9930001Z"))
    assert doc["@timestamp"] == "2026-11-29T10:00:00.123Z"
    assert doc["event"]["created"] == "2023-10-20T09:53:09.883Z"
    assert (doc["event"]["start"], doc["event"]["end"]) == ("2023-10-20T09:51:39.515Z", "2023-10-20T09:51:41.993Z")
    assert doc["event"]["duration"] == 2_478_000_000  # 41.993 - 39.515, in ns


@pytest.mark.parametrize(("severity", "score"), [
    ("informational", 21), ("low", 21), ("Low", 21), ("medium", 47), ("high", 73), ("HIGH", 73), ("critical", 99),
    ("unknown", None), ("unknownFutureValue", None), (None, None), ("apocalyptic", None),
])
def test_severity_scale(severity: str | None, score: int | None) -> None:
    doc = ecs.to_ecs(_alert(severity=severity))
    assert doc["event"].get("severity") == score
    if severity:
        assert doc["m365_defender"]["alert"]["severity"] == severity  # the text as sent


def test_mssp_context_and_tenant_fields() -> None:
    doc = ecs.to_ecs(_alert())
    assert doc["defender_forwarder"]["customer"] == "contoso"
    assert doc["defender_forwarder"]["tenant_id"] == TENANT.id
    assert doc["defender_forwarder"]["version_key"] == f"{TENANT.id}/da1_2/2026-11-29T10:00:00.123456Z"
    assert doc["cloud"]["account"]["id"] == TENANT.id
    assert "tenant_id" not in doc["m365_defender"]["alert"]
    # Graph's tenantId wins for cloud.account.id (as in Elastic's); a different one is kept, not lost.
    other = ecs.to_ecs(_alert(tenantId="99999999-9999-4999-8999-999999999999"))
    assert other["cloud"]["account"]["id"] == "99999999-9999-4999-8999-999999999999"
    assert other["defender_forwarder"]["tenant_id"] == TENANT.id
    assert other["organization"]["id"] == TENANT.id


# --------------------------------------------------------------------------- evidence


def _one_of_each() -> Alert:
    account = {"accountName": "ana", "domainName": "CONTOSO", "userSid": "S-1-5-21-1-2-3-1001",
               "azureAdUserId": "aad-ana", "userPrincipalName": "ana@contoso.test", "displayName": "Ana"}
    image = {"fileName": "cmd.exe", "filePath": "C:\\Windows\\System32", "fileSize": 300, "sha1": "a" * 40,
             "sha256": "b" * 64, "md5": "c" * 32}
    return _alert(determination="malware", evidence=[
        {"@odata.type": NS + "deviceEvidence", "mdeDeviceId": "mde-1", "azureAdDeviceId": "aad-dev-1",
         "deviceDnsName": "ws1.contoso.test", "hostName": "WS1", "osPlatform": "Windows11", "version": "22H2",
         "osBuild": 22631, "rbacGroupId": 7, "vmMetadata": {"cloudProvider": "azure", "vmId": "vm-1"},
         "loggedOnUsers": [{"accountName": "bob", "domainName": "CONTOSO"}]},
        {"@odata.type": NS + "userEvidence", "userAccount": account},
        {"@odata.type": NS + "fileEvidence", "detectionStatus": "blocked", "mdeDeviceId": "mde-1",
         "fileDetails": {"fileName": "evil.exe", "filePath": "C:\\Temp", "fileSize": 1234, "sha1": "d" * 40,
                         "sha256": "e" * 64}},
        {"@odata.type": NS + "processEvidence", "processId": 4242, "parentProcessId": 42,
         "processCommandLine": '"C:/Windows/System32/cmd.exe" /c whoami', "detectionStatus": "detected",
         "processCreationDateTime": "2026-11-29T09:59:00.1234567Z",
         "parentProcessCreationDateTime": "2026-11-29T09:00:00Z", "imageFile": image,
         "parentProcessImageFile": {"fileName": "explorer.exe", "sha1": "f" * 40}, "userAccount": account},
        {"@odata.type": NS + "ipEvidence", "ipAddress": "198.51.100.7", "countryLetterCode": "NL",
         "location": {"city": "Amsterdam", "countryName": "Netherlands", "latitude": 52.37, "longitude": 4.89}},
        {"@odata.type": NS + "urlEvidence", "url": "https://bad.example/x"},
        {"@odata.type": NS + "mailboxEvidence", "primaryAddress": "ana@contoso.test", "userAccount": account},
        {"@odata.type": NS + "analyzedMessageEvidence", "networkMessageId": "nmid-1", "internetMessageId": "<m@x>",
         "subject": "Invoice",
         "p1Sender": {"emailAddress": "a@x.example", "displayName": "A", "domainName": "x.example"},
         "p2Sender": {"emailAddress": "b@y.example", "displayName": "B", "domainName": "y.example"},
         "recipientEmailAddress": "ana@contoso.test", "senderIp": "192.0.2.7", "antiSpamDirection": "inbound",
         "receivedDateTime": "2026-11-29T09:58:00Z", "attachmentsCount": 1, "urls": ["https://bad.example/x"]},
        {"@odata.type": NS + "cloudApplicationEvidence", "appId": 11161, "displayName": "Office 365",
         "instanceId": 0, "instanceName": "Office 365 - contoso", "saasAppId": 11161},
        {"@odata.type": NS + "registryValueEvidence", "registryHive": "HKEY_LOCAL_MACHINE",
         "registryKey": "SOFTWARE\\Run", "registryValueName": "x", "registryValue": "evil.exe",
         "registryValueType": "String", "mdeDeviceId": "mde-1"},
        {"@odata.type": NS + "securityGroupEvidence", "securityGroupId": "sg-1", "displayName": "Domain Admins"},
        {"@odata.type": NS + "mailClusterEvidence", "clusterBy": "Subject", "emailCount": 3,
         "networkMessageIds": ["n1", "n2"]},
    ])


def test_every_evidence_kind_lands_in_its_ecs_group() -> None:
    doc = ecs.to_ecs(_one_of_each())
    assert doc["host"]["id"] == ["mde-1"] and doc["device"]["id"] == ["aad-dev-1"]
    assert doc["host"]["name"] == ["ws1.contoso.test"]
    assert doc["host"]["os"] == {"name": ["Windows11"], "version": ["22H2"]}
    assert doc["host"]["ip"] == ["198.51.100.7"]
    assert doc["cloud"]["provider"] == ["azure"]
    assert doc["cloud"]["instance"] == {"id": ["0"], "name": ["Office 365 - contoso"]}
    # user.* from user and mailbox evidence (sorted sets), process.user.* from process evidence
    assert doc["user"] == {"domain": ["CONTOSO"], "id": ["aad-ana"], "name": ["ana"], "email": ["ana@contoso.test"]}
    assert doc["process"]["user"] == {"id": ["aad-ana"], "name": ["ana"]}
    assert doc["file"] == {"hash": {"sha1": ["d" * 40], "sha256": ["e" * 64]}, "name": ["evil.exe"],
                           "path": ["C:\\Temp"], "size": [1234]}
    process = doc["process"]
    assert (process["pid"], process["parent"]["pid"]) == ([4242], [42])
    assert (process["entity_id"], process["parent"]["entity_id"]) == (["4242"], ["42"])
    assert process["start"] == ["2026-11-29T09:59:00.123Z"]
    assert process["hash"] == {"md5": ["c" * 32], "sha1": ["a" * 40], "sha256": ["b" * 64]}
    assert process["parent"]["hash"] == {"sha1": ["f" * 40]}
    assert process["name"] == "cmd.exe"  # imageFile and the command line's first word agree
    assert doc["registry"] == {"hive": ["HKEY_LOCAL_MACHINE"], "key": ["SOFTWARE\\Run"], "value": ["evil.exe"],
                               "data": {"type": ["String"]}}
    assert doc["email"] == {
        "delivery_timestamp": ["2026-11-29T09:58:00.000Z"], "direction": ["inbound"],
        "from": {"address": ["a@x.example", "b@y.example"]}, "local_id": ["nmid-1"], "message_id": ["<m@x>"],
        "sender": {"address": ["a@x.example"]}, "subject": ["Invoice"], "to": {"address": ["ana@contoso.test"]},
    }
    assert doc["source"] == {"ip": ["192.0.2.7"]}
    assert doc["url"] == {"full": ["https://bad.example/x"]}
    assert doc["group"] == {"id": ["sg-1"], "name": ["Domain Admins"]}
    assert doc["event"]["action"] == ["blocked", "detected"]
    assert doc["event"]["category"] == ["email", "file", "host", "iam", "malware", "network", "process", "registry"]
    assert doc["event"]["type"] == ["access", "info"]
    related = doc["related"]
    assert related["ip"] == ["192.0.2.7", "198.51.100.7"]
    assert related["hash"] == ["d" * 40, "e" * 64, "a" * 40, "b" * 64, "f" * 40, "c" * 32]
    # The pipeline's values, then the identifying values it does not read (the device's hostName).
    assert related["hosts"] == ["x.example", "y.example", "mde-1", "Windows11", "22H2", "ws1.contoso.test", "CONTOSO",
                                "WS1"]
    assert related["user"] == ["ana@contoso.test", "A", "a@x.example", "B", "b@y.example", "bob", "aad-ana", "ana",
                               "S-1-5-21-1-2-3-1001"]


def test_evidence_keeps_the_pipelines_names_and_graphs_for_the_rest() -> None:
    evidence = ecs.to_ecs(_one_of_each())["m365_defender"]["alert"]["evidence"]
    device, user, file, process, ip, url, mailbox, mail, cloud_app, registry, group, cluster = evidence
    assert device["mde_device_id"] == "mde-1" and device["os_build"] == "22631" and device["rbac_group"] == {"id": "7"}
    assert device["hostName"] == "WS1"  # the pipeline does not rename hostName
    assert device["vm_metadata"] == {"cloud_provider": "azure", "vm_id": "vm-1"}
    assert device["logged_on_users"] == [{"account_name": "bob", "domain_name": "CONTOSO"}]
    assert user["user_account"] == {"account_name": "ana", "domain_name": "CONTOSO", "user_sid": "S-1-5-21-1-2-3-1001",
                                    "azure_ad_user_id": "aad-ana", "user_principal_name": "ana@contoso.test"}
    assert user["userAccount"] == {"displayName": "Ana"}
    assert file["file_details"]["size"] == 1234 and file["detection_status"] == "blocked"
    assert process["process"] == {"command_line": '"C:/Windows/System32/cmd.exe" /c whoami',
                                  "creation_datetime": "2026-11-29T09:59:00.123Z", "id": 4242}
    assert process["parent_process"]["id"] == 42
    assert process["parent_process"]["image_file"] == {"name": "explorer.exe", "sha1": "f" * 40}
    assert process["imageFile"] == {"md5": "c" * 32}  # md5 is not renamed by the pipeline
    assert ip["ip_address"] == "198.51.100.7" and ip["countryLetterCode"] == "NL"
    assert ip["location"] == {"city": "Amsterdam", "countryName": "Netherlands", "latitude": 52.37, "longitude": 4.89}
    assert url["url"] == "https://bad.example/x"
    assert mailbox["primary_address"] == "ana@contoso.test"
    assert mail["p1_sender"] == {"display_name": "A", "email_address": "a@x.example", "domain_name": "x.example"}
    assert mail["p2_sender"] == {"email_address": "b@y.example", "display_name": "B", "domain_name": "y.example"}
    assert (mail["antispam_direction"], mail["attachments_count"]) == ("inbound", 1)
    assert (mail["network_message_id"], mail["internet_message_id"]) == ("nmid-1", "<m@x>")
    assert (cloud_app["app_id"], cloud_app["instance_id"], cloud_app["saas_app_id"]) == ("11161", "0", "11161")
    assert (registry["registry_value"], registry["registry_value_name"]) == ("evil.exe", "x")
    assert group == {"odata_type": NS + "securityGroupEvidence", "security_group_id": "sg-1",
                     "display_name": "Domain Admins"}
    assert cluster == {"odata_type": NS + "mailClusterEvidence", "cluster_by": "Subject", "email_count": 3,
                       "network_message_ids": ["n1", "n2"]}


def test_values_the_pipeline_would_reject_are_kept_out_of_typed_fields() -> None:
    doc = ecs.to_ecs(_alert(evidence=[
        {"@odata.type": NS + "ipEvidence", "ipAddress": "not-an-ip"},
        {"@odata.type": NS + "dnsEvidence", "firstSeenDateTime": "yesterday", "ipAddress": "999.1.1.1"},
    ]))
    assert "ip" not in doc.get("host", {}) and "related" not in doc
    ip, dns = doc["m365_defender"]["alert"]["evidence"]
    assert ip == {"odata_type": NS + "ipEvidence", "ipAddress": "not-an-ip"}
    assert dns == {"odata_type": NS + "dnsEvidence", "firstSeenDateTime": "yesterday", "ipAddress": "999.1.1.1"}


def test_generated_alerts_put_each_evidence_kind_in_its_group() -> None:
    expectations = {  # evidence kind -> (an ECS path it fills, event.category it adds)
        "device": ("host.id", "host"),
        "user": ("user.name", "iam"),
        "file": ("file.hash.sha256", "file"),
        "process": ("process.pid", "process"),
        "ip": ("host.ip", "network"),
        "url": ("url.full", None),
        "mailbox": ("user.email", "email"),
        "mail_message": ("email.local_id", "email"),
        "registry": ("registry.key", "registry"),
        "cloud_application": ("cloud.instance.name", None),
    }
    seen = set()
    for raw in _factory_alerts(250, seed=5):
        alert = normalise(raw, TENANT, INGESTED)
        doc = ecs.to_ecs(alert)
        for evidence in alert.evidence:
            if evidence.kind not in expectations:
                continue
            path, category = expectations[evidence.kind]
            seen.add(evidence.kind)
            assert _at(doc, path) is not _MISSING, (raw["id"], evidence.kind, path)
            if category:
                assert category in doc["event"]["category"], (raw["id"], evidence.kind)
    assert seen == set(expectations), f"the factory made no evidence of {set(expectations) - seen}"


def _painless_category(evidence_types: list[str], determination: str | None) -> tuple[list[str], list[str]]:
    """The pipeline's `script_to_set_event_category_and_type`, transliterated."""
    params = {f"{NS}analyzedMessageEvidence": "email", f"{NS}mailboxEvidence": "email",
              f"{NS}mailClusterEvidence": "email", f"{NS}deviceEvidence": "host", f"{NS}fileEvidence": "file",
              f"{NS}ipEvidence": "network", f"{NS}processEvidence": "process", f"{NS}registryValueEvidence": "registry",
              f"{NS}registryKeyEvidence": "registry", f"{NS}userEvidence": "iam", f"{NS}securityGroupEvidence": "iam",
              "malware": "malware", "malicioususeractivity": "malware", "phishing": "email", "apt": "threat"}
    category, kind = set(), set()
    for odata_type in evidence_types:
        mapping = params.get(odata_type)
        if mapping is not None:
            category.add(mapping)
            kind.add("access" if "registry" in category else "indicator" if "threat" in category else "info")
    if determination is not None:
        mapping = params.get(determination.lower())
        if mapping is not None:
            category.add(mapping)
            kind.add("indicator" if "threat" in category else "info")
    return sorted(category), sorted(kind)


def test_event_category_and_type_follow_the_pipelines_script() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    strategies = hypothesis.strategies
    types = [f"{NS}{name}Evidence" for name in ("device", "user", "file", "process", "ip", "url", "mailbox",
                                                "analyzedMessage", "registryKey", "registryValue", "securityGroup",
                                                "mailCluster", "cloudApplication", "dns")]

    @hypothesis.settings(max_examples=300, deadline=None)
    @hypothesis.given(strategies.lists(strategies.sampled_from(types), max_size=6),
                      strategies.sampled_from([None, "apt", "malware", "phishing", "maliciousUserActivity",
                                               "other", "unknown"]))
    def check(evidence_types: list[str], determination: str | None) -> None:
        doc = ecs.to_ecs(_alert(evidence=[{"@odata.type": t} for t in evidence_types], determination=determination))
        want_category, want_type = _painless_category(evidence_types, determination)
        assert doc["event"].get("category", []) == want_category
        assert doc["event"].get("type", []) == want_type

    check()


# --------------------------------------------------------------------------- nothing lost


# Where each Graph alert property lands (a path in the document).
GRAPH_PROPERTIES = {
    "id": "event.id",
    "providerAlertId": "m365_defender.alert.provider_alert_id",
    "incidentId": "m365_defender.alert.incident_id",
    "status": "m365_defender.alert.status",
    "severity": "m365_defender.alert.severity",
    "classification": "m365_defender.alert.classification",
    "determination": "m365_defender.alert.determination",
    "serviceSource": "event.provider",
    "detectionSource": "m365_defender.alert.detection_source",
    "productName": "m365_defender.alert.product_name",
    "detectorId": "m365_defender.alert.detector_id",
    "tenantId": "cloud.account.id",
    "title": "m365_defender.alert.title",
    "description": "message",
    "recommendedActions": "m365_defender.alert.recommended_actions",
    "category": "threat.tactic.name",
    "categories": "m365_defender.alert.categories",
    "assignedTo": "source.user.name",
    "alertWebUrl": "event.url",
    "incidentWebUrl": "m365_defender.alert.incident_web_url.original",
    "actorDisplayName": "m365_defender.alert.actor_display_name",
    "threatDisplayName": "m365_defender.alert.threat_display_name",
    "threatFamilyName": "threat.group.name",
    "mitreTechniques": "threat.technique.subtechnique.id",
    "createdDateTime": "event.created",
    "lastUpdateDateTime": "@timestamp",
    "resolvedDateTime": "m365_defender.alert.resolved_datetime",
    "firstActivityDateTime": "event.start",
    "lastActivityDateTime": "event.end",
    "alertPolicyId": "m365_defender.alert.alert_policy_id",
    "investigationState": "m365_defender.alert.investigation_state",
    "additionalData": "m365_defender.alert.additional_data",
    "customDetails": "m365_defender.alert.custom_details",
    "comments": "m365_defender.alert.comments",
    "evidence": "m365_defender.alert.evidence",
    "systemTags": "m365_defender.alert.system_tags",
    "@odata.type": "m365_defender.alert.odata_type",
}

_GRAPH_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?$")


def _scalars(value: Any) -> Iterator[Any]:
    """Every non-empty scalar in `value`, at any depth."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _scalars(item)
    elif isinstance(value, list):
        for item in value:
            yield from _scalars(item)
    elif value is not None and value != "":
        yield value


def _forms(value: Any) -> list[Any]:
    """The forms a raw value may take in the document: itself, as text (ids Graph sends as
    numbers), lower-cased (enumerations are compared and stored folded), or, for a
    timestamp, the millisecond form."""
    forms = [value, str(value), str(value).lower()]
    if isinstance(value, str) and _GRAPH_TIME.match(value):
        moment = datetime.fromisoformat(value)
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        forms.append(moment.isoformat(timespec="milliseconds")[:-6] + "Z")
    return forms


def _assert_within(raw: Any, ours: Any, where: str) -> None:
    have = set()
    for value in _scalars(ours):
        have.add(value if not isinstance(value, float) else repr(value))
        have.add(str(value))
        have.add(str(value).lower())
    for value in _scalars(raw):
        forms = [repr(form) if isinstance(form, float) else form for form in _forms(value)]
        assert any(form in have for form in forms), f"{where}: {value!r} is nowhere in the document"


def test_nothing_is_lost() -> None:
    for raw in _factory_alerts(200, seed=23):
        doc = ecs.to_ecs(normalise(raw, TENANT, INGESTED))
        for name, value in raw.items():
            if value is None or value == "" or value == [] or value == {}:
                continue
            assert name in GRAPH_PROPERTIES, f"GRAPH_PROPERTIES does not say where {name} goes"
            assert _at(doc, GRAPH_PROPERTIES[name]) is not _MISSING, (raw["id"], name)
        # Value by value: each evidence's values are in its own evidence object, the rest anywhere.
        evidence = doc["m365_defender"]["alert"].get("evidence", [])
        assert len(evidence) == len(raw["evidence"])
        for index, (theirs, ours) in enumerate(zip(raw["evidence"], evidence)):
            assert ours["odata_type"] == theirs["@odata.type"]
            _assert_within(theirs, ours, f"{raw['id']} evidence[{index}]")
        _assert_within({k: v for k, v in raw.items() if k != "evidence"}, doc, raw["id"])


def test_unknown_alert_properties_and_free_form_objects_are_kept() -> None:
    doc = ecs.to_ecs(_alert(**{
        "@odata.type": NS + "alert", "futureProperty": {"a": 1, "b": None}, "futureCount": 0, "futureText": "",
        "customDetails": {"Rule": ["x", ""]},
        "additionalData": {"CompromisedEntity": "vm1", "empty": {}}, "comments": [
            {"comment": "seen", "createdByDisplayName": "ana", "createdDateTime": "2026-11-29T10:01:00Z"}],
        "resolvedDateTime": "2026-11-29T10:30:00Z", "systemTags": ["Defender Experts"], "assignedTo": "soc@mssp.test",
        "threatFamilyName": "Qakbot", "categories": ["Execution", "Persistence"], "category": "Execution",
    }))
    vendor = doc["m365_defender"]["alert"]
    assert vendor["odata_type"] == NS + "alert"
    assert vendor["futureProperty"] == {"a": 1} and vendor["futureCount"] == 0 and "futureText" not in vendor
    assert vendor["custom_details"] == {"Rule": ["x"]} and vendor["additional_data"] == {"CompromisedEntity": "vm1"}
    assert vendor["comments"] == [{"created_by_display_name": "ana", "created_datetime": "2026-11-29T10:01:00.000Z",
                                   "message": "seen"}]
    assert vendor["resolved_datetime"] == "2026-11-29T10:30:00.000Z"
    assert vendor["system_tags"] == ["Defender Experts"] and vendor["categories"] == ["Execution", "Persistence"]
    assert doc["source"]["user"]["name"] == "soc@mssp.test"
    assert doc["related"]["user"] == ["soc@mssp.test", "ana"]
    assert doc["threat"]["group"]["name"] == "Qakbot"
    assert doc["threat"]["tactic"]["name"] == ["Execution", "Persistence"]


@pytest.mark.parametrize(("url", "parts"), [
    ("https://security.microsoft.com/incidents/23?tid=t-1",
     {"domain": "security.microsoft.com", "path": "/incidents/23", "query": "tid=t-1", "scheme": "https"}),
    ("https://user:pw@portal.test:8443/a/b.aspx?x=1#frag",
     {"domain": "portal.test", "port": 8443, "path": "/a/b.aspx", "extension": "aspx", "query": "x=1",
      "fragment": "frag", "scheme": "https", "user_info": "user:pw", "username": "user", "password": "pw"}),
    ("http://[2001:db8::1]:8080/", {"domain": "[2001:db8::1]", "port": 8080, "path": "/", "scheme": "http"}),
    ("not a url", {}),
])
def test_incident_url_parts(url: str, parts: dict[str, Any]) -> None:
    doc = ecs.to_ecs(_alert(incidentWebUrl=url))
    assert doc["m365_defender"]["alert"]["incident_web_url"] == {"original": url, **parts}


# --------------------------------------------------------------------------- hostile input


def test_hostile_text_encodes_as_one_valid_line() -> None:
    nasty = "a\nb\r\x00c\x1b[31m\u2028d\"e\\f\ud800"  # control characters, a line separator, a lone surrogate
    alert = _alert(title=nasty, description="x" * 10_000_000, evidence=[
        {"@odata.type": NS + "processEvidence", "processCommandLine": nasty, "processId": 1},
        {"@odata.type": NS + "dnsEvidence", "domainName": nasty, "ipAddresses": [{"ipAddress": nasty}]},
    ], additionalData={"huge": 2**80})
    line = ecs.encode(alert)
    assert b"\n" not in line and b"\r" not in line
    doc = json.loads(line)
    assert doc["m365_defender"]["alert"]["title"] == nasty
    assert len(doc["message"]) == 10_000_000
    assert doc["process"]["command_line"] == [nasty]
    assert doc["m365_defender"]["alert"]["additional_data"] == {"huge": 2**80}


# --------------------------------------------------------------------------- identities and ECS 8.11 (issue 16)

# Where an identifying value of each kind (mappings.evidence.KINDS) must also be: related.*.
RELATED_OF_KIND = {"ip": "ip", "host": "hosts", "user": "user", "email": "user", "hash": "hash"}
# Roots of our own fields (ECS leaves custom fields to the user): Elastic's integration's vendor
# root, and the forwarder's MSSP context.
CUSTOM_ROOTS = ("m365_defender", "defender_forwarder")
# ECS type -> the JSON values a field of it takes (ip and date are checked further below).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(("keyword", "constant_keyword", "text", "wildcard", "match_only_text", "date", "ip"), (str,)),
    **dict.fromkeys(("long", "integer", "short", "byte", "unsigned_long"), (int,)),
    **dict.fromkeys(("float", "half_float", "double", "scaled_float"), (int, float)),
    "boolean": (bool,),
}
_OBJECT_TYPES = ("object", "flattened", "nested")
ECS_REFERENCE_VERSION = "8.11"


@cache
def _official() -> list[tuple[str, Alert]]:
    """Every alert of the Graph metadata corpus, normalised: one per evidence type (plain and
    hostile text), one per enum member."""
    return [(name, normalise(raw, TENANT, INGESTED)) for name, raw in official_alerts.every_alert()]


def _fits(ecs_type: str, value: Any) -> bool:
    """Whether a JSON value is one a field of `ecs_type` takes."""
    if value.__class__ is bool:
        return ecs_type == "boolean"
    if not isinstance(value, _JSON_TYPES.get(ecs_type, ())):
        return False
    if ecs_type == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            return False
    elif ecs_type == "date":
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
    return True


def _not_ecs(doc: dict[str, Any], fields: dict[str, dict[str, Any]]) -> Iterator[str]:
    """Every leaf of `doc` that is neither an ECS field taking its value nor under a custom root."""
    def walk(value: Any, path: str) -> Iterator[str]:
        if path.split(".", 1)[0] in CUSTOM_ROOTS:
            return
        spec = fields.get(path)
        if isinstance(value, list):
            for item in value:
                yield from walk(item, path)
        elif isinstance(value, dict):
            if spec is not None and spec["type"] in _OBJECT_TYPES:
                return
            for key, item in value.items():
                yield from walk(item, f"{path}.{key}" if path else key)
        elif spec is None:
            yield f"{path}: not an ECS {ECS_REFERENCE_VERSION} field"
        elif not _fits(spec["type"], value):
            yield f"{path}: {value!r} is not an ECS {spec['type']}"
    return walk(doc, "")


def test_our_custom_roots_are_not_ecs_field_sets() -> None:
    fields = ecs_fields()
    assert ecs.ECS_VERSION == ecs_reference.ECS_VERSION
    assert not [f for f in fields if f.split(".", 1)[0] in CUSTOM_ROOTS]


def test_every_field_is_an_ecs_8_11_field_of_its_type_or_under_a_custom_root() -> None:
    fields = ecs_fields()
    documents = [(name, ecs.to_ecs(alert)) for name, alert in _official()]
    documents += [(f"Elastic's fixture {n}", _ecs(raw)) for n, (raw, _) in enumerate(_fixture_pairs())]
    wrong = sorted({f"{problem} (e.g. in {name})" for name, doc in documents for problem in _not_ecs(doc, fields)})
    assert not wrong, "\n".join(wrong)


def test_each_identity_is_in_its_related_field() -> None:
    missing = []
    for name, alert in _official():
        related = json.loads(ecs.encode(alert)).get("related", {})
        for evidence in alert.evidence:
            for row, values in identity_values(evidence):
                field = RELATED_OF_KIND.get(row.kind)
                if field is None:
                    continue
                for value in values:
                    if row.kind == "ip" and not _fits("ip", value):
                        continue  # not an address: kept in the evidence, out of the ip field
                    if str(value) not in related.get(field, []):
                        missing.append(f"{name}: {row.graph} {value!r} not in related.{field}")
    assert not missing, "\n".join(missing[:40])


def test_related_lists_are_distinct_values_in_a_stable_order() -> None:
    for _, alert in _official():
        first = json.loads(ecs.encode(alert)).get("related", {})
        assert first == json.loads(ecs.encode(alert)).get("related", {})
        for values in first.values():
            assert len(values) == len(set(values))
    related = ecs.to_ecs(_one_of_each())["related"]
    assert related["ip"] == ["192.0.2.7", "198.51.100.7"]  # the pipeline's order: source.ip, then host.ip
    assert related["user"][-1:] == ["S-1-5-21-1-2-3-1001"]  # identities it already has are not repeated


def test_every_identifying_value_is_in_the_document() -> None:
    missing = []
    for name, alert in _official():
        scalars = set(_scalars(json.loads(ecs.encode(alert))))
        for evidence in alert.evidence:
            for row, values in identity_values(evidence):
                missing += [f"{name}: {row.graph} {value!r}" for value in values
                            if value not in scalars and str(value) not in scalars]
    assert not missing, "\n".join(missing[:40])
