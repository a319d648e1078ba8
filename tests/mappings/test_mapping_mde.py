"""mappings/mde_alerts.py: a Defender for Endpoint API alert -> the common Alert; and its ECS
document against Elastic's microsoft_defender_endpoint fixture (mappings/ecs_mde.py)."""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from core.model.schema import (
    DeviceEvidence,
    FileEvidence,
    OtherEvidence,
    ProcessEvidence,
    Severity,
    TenantRef,
    UserEvidence,
    decode_event,
    encode_alert,
)
from mappings import SOURCES, ecs, normaliser
from mappings.mde_alerts import MappingError, normalise
from tests.helpers import SHARED_SAMPLES, run_cli, shared_sample
from tests.mappings.test_format_ecs import _MISSING, _at, _leaves

TENANT = TenantRef(id="a839b112-1253-6432-9bf6-94542403f21c", label="contoso")
INGESTED = datetime(2026, 12, 1, tzinfo=UTC)
FIXTURE = SHARED_SAMPLES / "elastic" / "microsoft_defender_endpoint" / "log"
# Leaves of Elastic's expected documents that are not data of the alert: what its test config
# adds (`preserve_original_event`) and the original text we ship only in the `raw` format.
NOT_COMPARED = ("event.original", "tags")


def test_the_documented_alert_with_evidence_lands_in_every_field() -> None:
    raw = shared_sample("mde_alerts_expand_evidence_docs.json")["value"][0]
    alert = normalise(raw, TENANT, INGESTED)
    assert (alert.source, alert.id, alert.provider_alert_id) == ("mde_alerts", raw["id"], raw["id"])
    assert alert.incident_id == "1126093"  # a number in MDE, Graph's string here
    assert (alert.severity, alert.severity_original, alert.status) == (Severity.low, "Low", "new")
    assert alert.investigation_state == "queued" and alert.detection_source == "WindowsDefenderAtp"
    assert alert.mitre_techniques == ["T1064", "T1085", "T1220"]
    assert alert.service_source == "microsoftDefenderForEndpoint"
    assert alert.times.last_updated == datetime(2021, 1, 26, 20, 33, 59, 200000, tzinfo=UTC)
    assert alert.comments[0].author == "secop123@contoso.com"
    device, user, process, file = alert.evidence
    assert isinstance(device, DeviceEvidence) and device.mde_device_id == raw["machineId"]
    assert device.fqdn == raw["computerDnsName"] and device.rbac_group == "A"
    assert isinstance(user, UserEvidence) and user.user.upn == "temp123@microsoft.com"
    assert isinstance(process, ProcessEvidence) and process.pid == 3276 and process.parent_pid == 8420
    assert process.image.name == "rundll32.exe" and process.parent_image.path == "C:\\Windows\\System32"
    assert process.detection_status == "detected" and process.extra == {"entityType": "Process"}
    assert isinstance(file, FileEvidence) and file.file.sha1 == "8563f95b2f8a284fc99da44500cd51a77c1ff36c"
    assert alert.extra["aadTenantId"] == raw["aadTenantId"] and alert.extra["relatedUser"]["userName"] == "temp123"
    assert decode_event(encode_alert(alert)) == alert  # the `alert` format reads back


@pytest.mark.parametrize("sample", ["mde_alerts_list_docs.json", "mde_alert_get_docs.json"])
def test_every_documented_alert_normalises(sample: str) -> None:
    body = shared_sample(sample)
    for raw in body.get("value", [body]):
        assert normalise(raw, TENANT, INGESTED).id == raw["id"]


def test_pitfalls_a_string_technique_pascal_enums_and_an_unknown_entity() -> None:
    alert = normalise({"id": "da1_2", "lastUpdateTime": "2026-01-01T00:00:00Z", "mitreTechniques": "T1059",
                       "severity": "UnSpecified", "status": "InProgress", "classification": "TruePositive",
                       "determination": "CompromisedUser",
                       "evidence": [{"entityType": "MailCluster", "clusterBy": "x", "sha1": None}]},
                      TENANT, INGESTED)
    assert alert.mitre_techniques == ["T1059"] and alert.severity is Severity.unknown
    assert (alert.status, alert.classification, alert.determination) == ("inProgress", "truePositive",
                                                                         "compromisedAccount")
    assert isinstance(alert.evidence[0], OtherEvidence) and alert.evidence[0].extra["clusterBy"] == "x"


@pytest.mark.parametrize(("raw", "reason"), [
    ({"lastUpdateTime": "2026-01-01T00:00:00Z"}, "id: missing"),
    ({"id": "da1"}, "lastUpdateTime: missing"),
    ({"id": "da1", "lastUpdateTime": "2026-01-01T00:00:00Z", "evidence": [{"entityType": "Process",
                                                                          "processId": "x"}]},
     "evidence[0].processId: expected an integer"),
    ({"id": "da1", "lastUpdateTime": "yesterday"}, "lastUpdateTime"),
    ("not an alert", "alert: expected an object"),
])
def test_a_malformed_alert_is_refused_naming_the_property(raw: Any, reason: str) -> None:
    with pytest.raises(MappingError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        normalise(raw, TENANT, INGESTED)


# --------------------------------------------------------------------------- ECS vs Elastic


def _same(want: Any, got: Any) -> bool:
    """Equal; a timestamp equal to the millisecond (Elastic's fixture keeps MDE's 100 ns text,
    our ECS writes milliseconds as Elasticsearch's date processor does)."""
    if got == want:
        return True
    if isinstance(want, str) and isinstance(got, str) and want.endswith("Z") and "T" in want:
        try:
            ours, theirs = datetime.fromisoformat(got), datetime.fromisoformat(want)
        except ValueError:
            return False
        return ours == theirs.replace(microsecond=theirs.microsecond // 1000 * 1000)
    return False


def _fixture_pairs() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    log, expected = FIXTURE / "test-defenderatp.log", FIXTURE / "test-defenderatp.log-expected.json"
    if not log.exists() or not expected.exists():
        pytest.skip(f"Elastic's microsoft_defender_endpoint fixture is not at {FIXTURE}")
    raws = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    documents = json.loads(expected.read_text(encoding="utf-8"))["expected"]
    return [(raw, doc) for raw, doc in zip(raws, documents, strict=True) if "id" in raw]


def test_ecs_of_elastics_fixture_matches_at_least_95_percent_of_its_fields() -> None:
    compared = equal = 0
    differences = []
    for raw, expected in _fixture_pairs():
        ours = json.loads(ecs.encode(normalise(raw, TENANT, INGESTED)))
        for path, want in _leaves(expected):
            if path.startswith(NOT_COMPARED):
                continue
            got = _at(ours, path)
            compared += 1
            if _same(want, got):
                equal += 1
            else:
                differences.append(f"{path}: expected {want!r:.80}, got {'missing' if got is _MISSING else got}")
    assert compared > 150
    share = equal / compared
    print(f"ECS fields equal to Elastic's: {equal}/{compared} = {share:.1%}", *differences, sep="\n")
    assert share >= 0.95, "\n".join(differences)


def test_convert_takes_mde_alerts() -> None:
    assert SOURCES["mde_alerts"] == SOURCES["mde"] == "mde_alerts"
    assert normaliser("mde_alerts") is normalise
    sample = SHARED_SAMPLES / "mde_alerts_expand_evidence_docs.json"
    if not sample.exists():
        pytest.skip("the MDE sample is not in ../shared")
    done = run_cli("convert", "--source", "mde_alerts", "--format", "ecs", str(sample))
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout.splitlines()[0])
    assert doc["event"]["provider"] == "defender_endpoint" and doc["host"]["name"].startswith("temp123")
    assert "mde_alerts" in run_cli("convert", "--help").stdout


def _doc_rows(text: str, header: str) -> list[tuple[str, str]]:
    """The rows of the docs table under `header` as (first cell, second cell), backticks off."""
    lines = text[text.index(header):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        cells = [cell.strip().replace("`", "") for cell in line.strip("|").split("|")]
        rows.append((cells[0], cells[1]))
    return rows


def test_the_docs_field_tables_are_the_mappings_tables() -> None:
    from pathlib import Path

    from mappings import mde_alerts as m

    text = (Path(__file__).resolve().parents[2] / "docs" / "source-mde.md").read_text(encoding="utf-8")
    documented = _doc_rows(text, "| MDE property | common Alert field |")
    expected = [(row.graph, row.field) for row in m.ALERT.rows if row.graph != "evidence"]
    expected += [(row.graph, f"times.{row.field}") for row in m.TIMES.rows]
    expected += [(row.graph, f"device evidence {row.field}") for row in m.DEVICE.rows
                 if row.graph in m.DEVICE_PROPERTIES]
    assert documented == expected
    evidence = dict(_doc_rows(text, "| `entityType` | evidence fields |"))
    for name, table in (("User", m.USER), ("File", m.FILE), ("Process", m.PROCESS), ("Ip", m.IP), ("Url", m.URL),
                        ("Registry", m.REGISTRY)):
        assert evidence.pop(name) == ", ".join(f"{row.graph} → {row.field}" for row in table.rows)
        assert m.EVIDENCE_TABLES[name.lower()][1] is table
    assert not evidence
