"""Hostile incidents through the real forwarder (`run --once`, source graph_incidents, replayed):
each case is dead-lettered with a reason or forwarded exactly once to every sink, never both
and never lost; the run prints no traceback and the good incidents around them go through.
The pages are written as text, so lone surrogates and huge numbers reach the forwarder as is."""
from __future__ import annotations

import json
from pathlib import Path

from core.state.sqlite import SQLiteStore
from tests.helpers import read_ndjson, run_cli, write_config

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
    folder = tmp_path / "replay" / "graph_incidents"
    folder.mkdir(parents=True)
    body = ",\n".join(text for _, text, _ in CASES)
    (folder / "page-0001.json").write_text('{"value": [\n' + body + "\n]}", encoding="utf-8")
    sinks = {f"sinks.{fmt}": {"type": "file", "path": str(tmp_path / "out" / f"{{tenant}}.{fmt}.ndjson"),
                              "format": fmt} for fmt in ("raw", "alert")}
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(tmp_path / "replay"), "sources": ["graph_incidents"]},
        **sinks,
    })
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode in (0, 1) and "Traceback" not in result.stderr, result.stderr

    store = SQLiteStore(tmp_path / "state.db")
    dead = store.dead_letters()
    store.close()
    assert all(letter.reason and letter.stage == "normalise" for letter in dead)
    outputs = {fmt: read_ndjson(tmp_path / "out" / f"acme.{fmt}.ndjson") for fmt in ("raw", "alert")}
    forwarded_ids = sorted(str(json.loads(text)["id"]) for _, text, ok in CASES if ok)
    for fmt, lines in outputs.items():
        assert sorted(str(line["id"]) for line in lines) == forwarded_ids, fmt
    assert len(dead) == sum(not ok for _, _, ok in CASES)
    alert_format = {line["id"]: line for line in outputs["alert"]}
    assert alert_format["109"]["redirect_incident_id"] == "100"
    assert alert_format["111"]["alert_ids"] == ["da9"] and alert_format["108"]["status"] == "someFutureStatus"
