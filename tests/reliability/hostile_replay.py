"""Hostile records of one source kind through the real forwarder, and what every hostile-input
test asserts of the outcome (tests/reliability/test_hostile_incidents.py, test_hostile_mde.py;
test_hostile_input.py does the same for the Graph alerts corpus, with more per-case checks).

The records are written into one replay page as text, so lone surrogates and numbers beyond
64 bits reach the forwarder as written. `run --once` writes to one file sink per format. Then:

- the run exits 0 or 1 and prints no traceback;
- every dead letter has a reason: stage normalise (the case is in no output), or encode for
  the one sink whose format could not carry it (the `alert` format holds no lone surrogate:
  the case is in every other output);
- every other forwarded case is in every format exactly once: its id is read from the version key
  each line carries (raw `forwarder.version_key`, OCSF `metadata.uid`, ECS
  `defender_forwarder.version_key`, CIM `version_key`, alert `version_key`) or from CEF's
  `cs3`; so no line belongs to no case (no forged, injected event) and none is lost;
- every line of a JSON format is one strict JSON object (no NaN/Infinity, no raw CR), every
  CEF line parses and holds no CR, LF or NUL.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.state.sqlite import SQLiteStore
from tests import cef_parser
from tests.helpers import run_cli, write_config

FORMATS = ("raw", "ocsf", "ecs", "cim", "cef", "alert")
LABEL = "acme"


@dataclass
class Outcome:
    lines: dict[str, list[str]]  # format -> its output lines
    dead: list[Any]  # the dead letters (core.state DeadLetter)


def run_hostile(tmp_path: Path, kind: str, tenant_id: str, records: list[str]) -> Outcome:
    """Replay `records` (JSON texts) as one page of `kind`, tenant `acme`, into a file sink per format."""
    folder = tmp_path / "replay" / kind
    folder.mkdir(parents=True)
    (folder / "page-0001.json").write_text('{"value": [\n' + ",\n".join(records) + "\n]}", encoding="utf-8")
    sinks = {f"sinks.{fmt}": {"type": "file", "path": str(tmp_path / "out" / f"{{tenant}}.{fmt}.out"),
                              "format": fmt} for fmt in FORMATS}
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        f"tenants.{LABEL}": {"tenant_id": tenant_id, "replay": str(tmp_path / "replay"), "sources": [kind]},
        **sinks,
    })
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode in (0, 1), result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr[-2000:]
    store = SQLiteStore(tmp_path / "state.db")
    dead = store.dead_letters()
    store.close()
    assert all(letter.reason and letter.stage in ("normalise", "encode") for letter in dead), dead
    lines = {}
    for fmt in FORMATS:
        path = tmp_path / "out" / f"{LABEL}.{fmt}.out"
        text = path.read_bytes().decode("utf-8") if path.exists() else ""
        assert "\r" not in text and "\x00" not in text, fmt
        lines[fmt] = text.splitlines()
    return Outcome(lines, dead)


def _strict(line: str) -> dict[str, Any]:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-JSON constant {constant}")
    document = json.loads(line, parse_constant=reject)
    assert isinstance(document, dict), line[:200]
    return document


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return []


def event_ids(fmt: str, lines: list[str], tenant_id: str) -> list[str]:
    """The id of the case each line is of, read as each format carries it (one per line)."""
    if fmt == "cef":
        ids = []
        for line in lines:
            ids.append(cef_parser.parse(line).extension["cs3"])
        return ids
    key = re.compile(re.escape(tenant_id) + r"/(.*)/\d{4}-\d\d-\d\dT[0-9:.]+Z", re.DOTALL)
    ids = []
    for line in lines:
        found = {match[1] for text in _strings(_strict(line)) if (match := key.fullmatch(text))}
        assert len(found) == 1, (fmt, found, line[:300])
        ids.append(found.pop())
    return ids


def assert_once_or_dead(outcome: Outcome, tenant_id: str, forwarded: list[str], dead: int) -> None:
    """Each forwarded case once in every format (but where its sink dead-lettered it at encode),
    the others dead-lettered at normalise, nothing else."""
    normalise = [letter for letter in outcome.dead if letter.stage == "normalise"]
    assert len(normalise) == dead, [letter.reason for letter in normalise]
    for fmt in FORMATS:
        refused = {letter.version_key.split("/")[1] for letter in outcome.dead
                   if letter.stage == "encode" and letter.sink == fmt}
        assert refused <= set(forwarded), (fmt, refused)
        expected = sorted(event_id for event_id in forwarded if event_id not in refused)
        assert sorted(event_ids(fmt, outcome.lines[fmt], tenant_id)) == expected, fmt
