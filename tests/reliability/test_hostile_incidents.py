"""Hostile incidents through the real forwarder (`run --once`, source graph_incidents, replayed
into one file sink per format; tests/reliability/hostile_replay.py says what is asserted):
each case is dead-lettered with a reason or forwarded exactly once in every format, never both
and never lost; every JSON line is strict, every CEF line parses, no line is forged; the run
prints no traceback and the good incidents around them go through. The pages are written as
text, so lone surrogates and huge numbers reach the forwarder as is."""
from __future__ import annotations

import json
from pathlib import Path

from tests.reliability.hostile_replay import assert_once_or_dead, run_hostile

TENANT = "22222222-2222-4222-8222-222222222222"
T = "2026-11-20T10:00:00Z"


def _good(incident_id: str, **fields: object) -> str:
    return json.dumps({"id": incident_id, "lastUpdateDateTime": T, "status": "active", "severity": "high",
                       "displayName": f"incident {incident_id}", **fields})


# (case, the record's JSON text, forwarded?) - a record's id says its case where it has one.
CASES: list[tuple[str, str, bool]] = [
    ("good", _good("100"), True),
    ("no id", json.dumps({"lastUpdateDateTime": T}), False),
    ("numeric id", '{"id": 101, "lastUpdateDateTime": "%s"}' % T, True),
    ("empty id", _good(""), False),
    ("lone surrogate id", '{"id": "1\\ud800", "lastUpdateDateTime": "%s"}' % T, False),
    ("no time", json.dumps({"id": "102"}), False),
    ("bad time", _good("103", lastUpdateDateTime="yesterday"), False),
    ("alertIds a string", _good("104", alertIds="da1"), False),
    ("alertIds with a null", _good("105", alertIds=["da1", None]), False),
    ("comments not a list", _good("106", comments="none"), False),
    ("priority beyond a double", '{"id": "107", "lastUpdateDateTime": "%s", "priorityScore": 1e400}' % T, False),
    ("unknown status kept", _good("108", status="someFutureStatus"), True),
    ("redirected", _good("109", status="redirected", redirectIncidentId="100"), True),
    ("huge description", _good("110", description="A" * 2_000_000 + "\r\nCEF:0|injected"), True),
    ("alerts expanded elsewhere", _good("111", alerts=[{"id": "da9"}]), True),
    ("not an object", '"incident"', False),
    ("null", "null", False),
    ("good after", _good("199"), True),
]


def test_hostile_incidents_are_forwarded_once_or_dead_lettered(tmp_path: Path) -> None:
    outcome = run_hostile(tmp_path, "graph_incidents", TENANT, [text for _, text, _ in CASES])
    forwarded = [str(json.loads(text)["id"]) for _, text, ok in CASES if ok]
    assert_once_or_dead(outcome, TENANT, forwarded, dead=sum(not ok for _, _, ok in CASES))
    alert_format = {line["id"]: line for line in map(json.loads, outcome.lines["alert"])}
    assert alert_format["109"]["redirect_incident_id"] == "100"
    assert alert_format["111"]["alert_ids"] == ["da9"] and alert_format["108"]["status"] == "someFutureStatus"
    assert {json.loads(line)["class_uid"] for line in outcome.lines["ocsf"]} == {2005}
