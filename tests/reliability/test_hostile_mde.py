"""Hostile Defender for Endpoint alerts through the real forwarder (`run --once`, source
mde_alerts, replayed from a `mde_alerts/` page; tests/reliability/hostile_replay.py says what is
asserted): each case is dead-lettered with a reason or forwarded exactly once in every format,
never both and never lost; no line is forged by injected text; no traceback. The corpus is
made here, deterministically: injection characters in title, description and evidence, a
10 MB description, unknown enums, numbers beyond 64 bits, wrong types, a missing id or
lastUpdateTime, lone surrogates."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.reliability.hostile_replay import assert_once_or_dead, run_hostile

TENANT = "33333333-3333-4333-8333-333333333333"
T = "2026-11-20T10:00:00.1234567Z"
INJECTED = "x\r\nCEF:0|Microsoft|Forged|1|1|forged|10|cs3=forged\n{\"id\": \"forged\"}\u0000|=\\"


def _alert(alert_id: str, **fields: Any) -> dict[str, Any]:
    """An MDE alert as `/api/alerts?$expand=evidence` sends it, `fields` set on it."""
    return {
        "id": alert_id, "incidentId": 42, "severity": "High", "status": "New", "title": f"alert {alert_id}",
        "description": "Suspicious PowerShell", "category": "Execution", "detectionSource": "WindowsDefenderAtp",
        "alertCreationTime": "2026-11-20T09:58:00Z", "lastUpdateTime": T, "machineId": "ab" * 20,
        "computerDnsName": "ws01.contoso.test", "aadTenantId": TENANT, "mitreTechniques": ["T1059.001"],
        "comments": [], "evidence": [
            {"entityType": "File", "evidenceCreationTime": T, "fileName": "evil.ps1", "sha1": "a" * 40},
            {"entityType": "User", "accountName": "alice", "domainName": "CONTOSO"}],
        **fields}


def _text(alert_id: str, **fields: Any) -> str:
    return json.dumps(_alert(alert_id, **fields))


def _raw(template: str, alert_id: str) -> str:
    """A good alert's text with `"@@": 0` replaced by `template`: for what json.dumps cannot write."""
    return _text(alert_id, **{"@@": 0}).replace('"@@": 0', template)


# (case, the record's JSON text, forwarded?) - each record's id is unique to its case.
CASES: list[tuple[str, str, bool]] = [
    ("good", _text("da-good-1"), True),
    ("injection in title", _text("da-inj-title", title=INJECTED), True),
    ("injection in description", _text("da-inj-desc", description=INJECTED * 3), True),
    ("injection in evidence", _text("da-inj-ev", evidence=[{"entityType": "File", "fileName": INJECTED,
                                                            "filePath": INJECTED}]), True),
    ("injection in the id", _text("da-inj-id\r\nCEF:0|forged"), True),  # escaped where it goes
    ("10 MB description", _text("da-huge", description="A" * 10_000_000 + INJECTED), True),
    ("unknown enums", _text("da-enums", severity="Catastrophic", status="SomeFutureStatus",
                            classification="Unknown42", determination="Quantum", detectionSource="Future"), True),
    ("unknown evidence kind", _text("da-ev-kind", evidence=[{"entityType": "QuantumEntity", "x": 1}]), True),
    ("incidentId beyond 64 bits", _raw('"incidentId": 184467440737095516160000', "da-bigint"), True),
    ("number beyond a double", _raw('"processId": 1e400, "evidence": [{"entityType": "Process", '
                                    '"processId": 1e400}]', "da-bigfloat"), False),
    ("title a list", _text("da-title-list", title=["a", "b"]), False),
    ("evidence not a list", _text("da-ev-obj", evidence={"entityType": "File"}), True),
    ("evidence item a string", _text("da-ev-str", evidence=["File"]), False),
    ("mitreTechniques a string", _text("da-mitre-str", mitreTechniques="T1059"), True),
    ("severity a number", _text("da-sev-num", severity=5), False),
    ("no id", json.dumps({k: v for k, v in _alert("x").items() if k != "id"}), False),
    ("empty id", _text(""), False),
    ("no lastUpdateTime", json.dumps({k: v for k, v in _alert("da-notime").items() if k != "lastUpdateTime"}),
     False),
    ("bad lastUpdateTime", _text("da-badtime", lastUpdateTime="yesterday"), False),
    ("lone surrogate id", _raw('"id": "da-\\ud800"', "ignored").replace('"id": "ignored", ', ""), False),
    ("lone surrogate title", _raw('"title": "t\\udc00t"', "da-surr-title").replace('"title": "alert da-surr-title", ',
                                                                                    ""), True),
    ("not an object", '"alert"', False),
    ("null", "null", False),
    ("good after", _text("da-good-2"), True),
]


def _id_of(text: str) -> str:
    return json.loads(text)["id"]


def test_hostile_mde_alerts_are_forwarded_once_or_dead_lettered(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, "mde_alerts", TENANT, [text for _, text, _ in CASES])
    forwarded = [_id_of(text) for _, text, ok in CASES if ok]
    assert_once_or_dead(outcome, TENANT, forwarded, dead=sum(not ok for _, _, ok in CASES))
    alerts = {json.loads(line)["id"]: json.loads(line) for line in outcome.lines["alert"]}
    assert alerts["da-enums"]["status"] == "SomeFutureStatus"
    assert len(alerts["da-huge"]["description"]) > 10_000_000  # kept whole where the format can
