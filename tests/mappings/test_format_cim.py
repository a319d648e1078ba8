"""Alert -> flat JSON with Splunk CIM Alerts fields: the fields the add-on's props derive,
the MSSP context, arrays for multi-valued fields, no nulls, and a `defender` object from
which (with the exact CIM fields) the whole Alert can be rebuilt."""
from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.model.schema import Alert, Severity, TenantRef, alert_from_data
from mappings import cim
from mappings.evidence import IDENTITIES, KINDS, identity_values
from mappings.graph_alerts_v2 import normalise
from tests.helpers import shared_sample
from tests.mappings import official_alerts

TENANT = TenantRef(id="3adb963c-8e61-48e8-a06d-6dbb0dacea39", label="contoso")
INGESTED = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
NS = "#microsoft.graph.security."
CIM_FIELDS = ["time", "vendor_account", "mssp_customer", "version_key", "app", "type", "vendor_product", "id",
              "severity", "signature", "subject", "signature_id", "description", "mitre_technique_id", "dest", "src",
              "user", "user_name", *cim.IDENTITY_FIELDS, "defender"]


def _alert(**properties: Any) -> Alert:
    raw = {"id": "da1_2", "lastUpdateDateTime": "2026-11-29T10:00:00.1234567Z", **properties}
    return normalise(raw, TENANT, INGESTED)


def _doc(alert: Alert) -> dict[str, Any]:
    data = cim.encode(alert)
    assert isinstance(data, bytes) and b"\n" not in data
    return json.loads(data)


def rebuild(doc: dict[str, Any]) -> Alert:
    """The Alert back from a CIM document: `defender` plus the exactly carried CIM fields."""
    fields = dict(doc["defender"])
    fields.update(id=doc["id"], tenant={"id": doc["vendor_account"], "label": doc["mssp_customer"]},
                  version_key=doc["version_key"], severity=Severity[doc["severity"]])
    for cim_field, alert_field in (("signature", "title"), ("description", "description"),
                                   ("mitre_technique_id", "mitre_techniques"), ("src", "service_source"),
                                   ("signature_id", "threat_family_name")):
        if cim_field in doc:
            fields[alert_field] = doc[cim_field]
    return alert_from_data(fields)


def _without_raw(alert: Alert) -> Alert:
    return msgspec.structs.replace(alert, raw=None)


def _nulls(value: Any, path: str = "") -> list[str]:
    """Paths of nulls and empty arrays/objects, not inside the verbatim `extra` data."""
    found = []
    if value is None or value == [] or value == {}:
        found.append(path)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in ("extra", "custom_details", "additional_data"):
                found += _nulls(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _nulls(item, f"{path}[{index}]")
    return found


# --------------------------------------------------------------------------- a real alert


def test_powershell_sample_fields() -> None:
    raw = shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json")
    doc = _doc(normalise(raw, TENANT, INGESTED))
    assert next(iter(doc)) == "time"  # first, for a TIME_PREFIX of ^{"time":
    assert cim.encode(normalise(raw, TENANT, INGESTED)).startswith(b'{"time":1697795647.503,')
    assert {key: value for key, value in doc.items() if key != "defender"} == {
        "time": 1697795647.503,  # lastUpdateDateTime 2023-10-20T09:54:07.5033333Z, ms precision
        "vendor_account": TENANT.id,
        "mssp_customer": "contoso",
        "version_key": f"{TENANT.id}/daefa1828b-dd4e-405c-8a3b-aa28596830dd_1/2023-10-20T09:54:07.503333Z",
        "app": "ms:defender",
        "type": "alert",
        "vendor_product": "Microsoft Defender for Endpoint",
        "id": "daefa1828b-dd4e-405c-8a3b-aa28596830dd_1",
        "severity": "medium",
        "signature": "Suspicious PowerShell command line",
        "subject": "Suspicious PowerShell command line",
        "description": raw["description"],
        "mitre_technique_id": ["T1059.001"],
        "dest": ["clw555test"],
        "src": "microsoftDefenderForEndpoint",
        "user": ["AzureAD\\CDPUserIS-38411", "CDPUserIS-38411"],  # the add-on's, then the account name
        "user_name": ["CDPUserIS-38411"],
        # Each evidence's identity (mappings/evidence.py), in the CIM field for it:
        "dest_ip": ["192.168.5.65", "fe80::cfe4:80b:615c:38fb", "127.0.0.1", "::1"],  # device, then ip evidence
        "file_hash": ["a72c41316307889e43fe8605a0dca4a72e72a011",
                      "d783ba6567faf10fdff2d0ea3864f6756862d6c733c7f4467283da81aedc3a80"],
        "process": [raw["evidence"][4]["processCommandLine"]],
        "process_id": [8224],
        "process_name": ["powershell.exe"],
        "process_path": ["C:\\Windows\\System32\\WindowsPowerShell\\v1.0"],
        "parent_process_id": [5772],
        "parent_process_name": ["cmd.exe"],
        "url": ["http://127.0.0.1/1.exe"],
        "evidence_id": ["505d70d89cfa3428f7aac7d2eb3a64c60fd3d843", "f18bd540-d5e4-46e0-8ddd-3d03a59e4e14",
                        "S-1-12-1-1485667349-1150190949-4065799612-2328216759"],
    }
    defender = doc["defender"]
    assert "raw" not in defender and "title" not in defender and "tenant" not in defender
    assert defender["detector_id"] == "7f1c3609-a3ff-40e2-995b-c01770161d68"
    assert defender["times"] == {"created": "2023-10-20T09:53:09.883937Z", "last_updated": "2023-10-20T09:54:07.503333Z",
                                 "first_activity": "2023-10-20T09:51:39.515480Z",
                                 "last_activity": "2023-10-20T09:51:41.993900Z", "ingested": "2026-11-29T12:00:00Z"}
    assert [e["kind"] for e in defender["evidence"]] == ["device", "user", "url", "ip", "process"]
    process = defender["evidence"][4]
    assert process["image"]["name"] == "powershell.exe" and process["process_created"] == "2023-10-20T09:51:39.499796Z"
    assert defender["extra"] == {"tenantId": "3adb963c-8e61-48e8-a06d-6dbb0dacea39"}
    assert _nulls(doc) == []


def test_docs_sample_fields() -> None:
    raw = shared_sample("graph_alerts_v2_list_docs.json")["value"][0]
    doc = _doc(normalise(raw, TENANT, INGESTED))
    assert (doc["severity"], doc["dest"], doc["src"]) == ("low", ["tempDns"], "microsoftDefenderForEndpoint")
    assert doc["user"] == ["NT AUTHORITY\\SYSTEM", "SYSTEM"] and doc["user_name"] == ["SYSTEM"]  # the process's account
    assert doc["defender"]["system_tags"] == ["Defender Experts"]
    kinds = [e["kind"] for e in doc["defender"]["evidence"]]
    assert kinds == ["device", "file", "process", "registry"]


# --------------------------------------------------------------------------- lossless


def test_factory_alerts_rebuild_exactly() -> None:
    factory = pytest.importorskip("tests.peers.alert_factory")
    raws = factory.make_alerts(200, TENANT.id, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=3), seed=5)
    for raw in raws:
        alert = normalise(raw, TENANT, INGESTED)
        doc = _doc(alert)
        assert list(doc) == [key for key in CIM_FIELDS if key in doc]
        assert _nulls(doc) == []
        assert rebuild(doc) == _without_raw(alert)
        assert cim.encode(alert) == cim.encode(alert)


def test_sample_alerts_rebuild_exactly() -> None:
    alerts = list(shared_sample("graph_alerts_v2_list_docs.json")["value"])
    alerts.append(shared_sample("graph_alert_v2_mde_powershell_elastic_fixture.json"))
    for incident in shared_sample("graph_incidents_expand_alerts_docs.json")["value"]:
        alerts.extend(incident.get("alerts") or [])
    for raw in alerts:
        alert = normalise(raw, TENANT, INGESTED)
        assert rebuild(_doc(alert)) == _without_raw(alert)


def test_what_orjson_refuses_still_encodes_the_same_way() -> None:
    # An integer beyond 64 bits in verbatim data sends the document through the standard
    # library; everything else must come out as orjson writes it.
    plain = _alert(createdDateTime="2026-11-29T09:00:00.5Z", title="t\u00e9", customDetails={"n": 1})
    odd = _alert(createdDateTime="2026-11-29T09:00:00.5Z", title="t\u00e9", customDetails={"n": 2**70})
    plain_doc, odd_doc = _doc(plain), _doc(odd)
    assert odd_doc["defender"].pop("custom_details") == {"n": 2**70}
    plain_doc["defender"].pop("custom_details")
    assert odd_doc == plain_doc
    assert odd_doc["defender"]["times"]["created"] == "2026-11-29T09:00:00.500000Z"
    assert rebuild(_doc(odd)) == _without_raw(odd)


# --------------------------------------------------------------------------- field choices


@pytest.mark.parametrize(("severity", "expected"), [(Severity.unknown, "unknown"), (Severity.informational,
                                                   "informational"), (Severity.low, "low"), (Severity.medium, "medium"),
                                                   (Severity.high, "high"), (Severity.critical, "critical")])
def test_severity_values(severity: Severity, expected: str) -> None:
    assert _doc(msgspec.structs.replace(_alert(), severity=severity))["severity"] == expected


def test_severity_as_graph_sends_it() -> None:
    assert _doc(_alert(severity="High"))["severity"] == "high"
    doc = _doc(_alert(severity="catastrophic"))
    assert doc["severity"] == "unknown" and doc["defender"]["severity_original"] == "catastrophic"


def test_minimal_alert() -> None:
    doc = _doc(_alert())
    assert doc == {
        "time": 1795946400.123, "vendor_account": TENANT.id, "mssp_customer": "contoso",
        "version_key": f"{TENANT.id}/da1_2/2026-11-29T10:00:00.123456Z", "app": "ms:defender", "type": "alert",
        "vendor_product": "Microsoft Defender", "id": "da1_2", "severity": "unknown",
        "defender": {"schema_version": "1.0", "source": "graph_alerts",
                     "times": {"last_updated": "2026-11-29T10:00:00.123456Z", "ingested": "2026-11-29T12:00:00Z"}},
    }
    assert rebuild(doc) == _without_raw(_alert())


def test_signature_id_is_the_threat_family_as_in_the_add_on() -> None:
    doc = _doc(_alert(threatFamilyName="Emotet", detectorId="d-1"))
    assert doc["signature_id"] == "Emotet" and doc["defender"]["detector_id"] == "d-1"
    assert "signature_id" not in _doc(_alert(detectorId="d-1"))


def test_product_from_service_source() -> None:
    assert _doc(_alert(serviceSource="microsoft365Defender", productName="M365D"))["vendor_product"] == \
        "Microsoft Defender XDR"
    assert _doc(_alert(serviceSource="somethingNew", productName="Brand New"))["vendor_product"] == "Brand New"
    assert _doc(_alert(serviceSource="somethingNew"))["vendor_product"] == "somethingNew"


def test_dest_and_user_are_arrays_without_duplicates() -> None:
    evidence = [
        {"@odata.type": NS + "deviceEvidence", "deviceDnsName": "pc1.contoso.test", "hostName": "pc1"},
        {"@odata.type": NS + "deviceEvidence", "hostName": "pc2"},
        {"@odata.type": NS + "deviceEvidence", "mdeDeviceId": "abc123"},
        {"@odata.type": NS + "deviceEvidence", "deviceDnsName": "pc1.contoso.test"},
        {"@odata.type": NS + "userEvidence", "userAccount": {"userPrincipalName": "ann@contoso.test",
                                                             "accountName": "ann", "domainName": "CONTOSO"}},
        {"@odata.type": NS + "processEvidence", "userAccount": {"accountName": "svc", "domainName": "CONTOSO"}},
        {"@odata.type": NS + "mailboxEvidence", "primaryAddress": "bob@contoso.test"},
        {"@odata.type": NS + "userEvidence", "userAccount": {"userPrincipalName": "ann@contoso.test",
                                                             "accountName": "ann"}},
        {"@odata.type": NS + "userEvidence", "userAccount": {"accountName": "local"}},
    ]
    doc = _doc(_alert(evidence=evidence))
    assert doc["dest"] == ["pc1.contoso.test", "pc2", "abc123", "pc1"]  # the add-on's, then the other host names
    # The add-on's accounts, then the account names and addresses the evidence is identified by.
    assert doc["user"] == ["ann@contoso.test", "CONTOSO\\svc", "bob@contoso.test", "local", "ann", "svc"]
    assert doc["user_name"] == ["ann", "svc", "local"]
    single = _doc(_alert(evidence=evidence[:1], mitreTechniques=["T1003"]))
    assert single["dest"] == ["pc1.contoso.test", "pc1"] and single["mitre_technique_id"] == ["T1003"]
    assert "user" not in single and "user_name" not in single


def test_actor_comes_first_as_in_the_add_on() -> None:
    doc = _doc(_alert(actorDisplayName="Manatee Tempest", evidence=[
        {"@odata.type": NS + "userEvidence", "userAccount": {"userPrincipalName": "ann@contoso.test"}}]))
    assert doc["user"] == ["Manatee Tempest", "ann@contoso.test"]  # then the evidence's accounts
    assert doc["defender"]["actor_display_name"] == "Manatee Tempest"


def test_hostile_text_stays_one_line_of_json() -> None:
    text = "a\nb\r\"c\\d\x00e\u2028f|g=h\ud800"
    doc = _doc(_alert(title=text, description=text, evidence=[{"@odata.type": NS + "deviceEvidence",
                                                                "deviceDnsName": text}]))
    assert doc["signature"] == doc["description"] == text and doc["dest"] == [text]


# --------------------------------------------------------------------------- evidence identities (issue 16)


@cache
def _official() -> list[tuple[str, Alert]]:
    """Every alert of the Graph metadata corpus, normalised: one per evidence type (plain and
    hostile text), one per enum member."""
    return [(name, normalise(raw, TENANT, INGESTED)) for name, raw in official_alerts.every_alert()]


def test_every_identifying_value_is_in_its_cim_field() -> None:
    missing = []
    for name, alert in _official():
        doc = _doc(alert)
        for evidence in alert.evidence:
            for row, values in identity_values(evidence):
                field = cim.identity_field(row.graph, row.kind)
                for value in values:
                    for one in value if isinstance(value, list) else [value]:
                        if one not in doc.get(field, []):
                            missing.append(f"{name}: {row.graph} {one!r} not in {field}")
    assert not missing, "\n".join(missing[:40])


def test_identity_fields_are_ordered_sets_and_every_identity_has_a_field() -> None:
    for _, alert in _official():
        doc = _doc(alert)
        assert list(doc) == [key for key in CIM_FIELDS if key in doc]
        for field in ("dest", "user", *cim.IDENTITY_FIELDS):
            if field in doc:
                assert isinstance(doc[field], list) and doc[field]
                assert len(doc[field]) == len({json.dumps(v) for v in doc[field]})
        assert rebuild(doc) == _without_raw(alert)  # still lossless
    assert set(cim.IDENTITY_FIELD_OF_KIND) == set(KINDS)
    assert set(cim.FIELD_MODELS) == {"dest", "user", *cim.IDENTITY_FIELDS}
    assert set(cim.IDENTITY_FIELD_OF_PATH.values()) | set(cim.IDENTITY_FIELD_OF_KIND.values()) == set(
        cim.FIELD_MODELS)
    graph_paths = {row.graph for rows in IDENTITIES.values() for row in rows}
    assert set(cim.IDENTITY_FIELD_OF_PATH) <= graph_paths  # no stale path


def test_the_docs_table_of_identity_fields_is_the_codes() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "formats.md").read_text(encoding="utf-8")
    section = docs.split("\n## cim", 1)[1].split("\n## ", 1)[0]
    assert cim.identity_markdown() in section
