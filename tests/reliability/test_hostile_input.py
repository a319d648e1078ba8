"""Issue "Prove it never loses an alert", point 4: the hostile corpus through the real forwarder.

`hostile_alerts.ndjson` (made by `make_hostile_corpus.py`, which documents the format, the
case tags in `hostile_alerts.cases.ndjson` and the `<<hx-expand N CHUNK>>` markers that stand
for the 10 MB fields) is replayed as one tenant's Graph pages, the corpus text spliced into
the pages as is (so odd escapes, lone surrogates and huge numbers reach the forwarder as
written). `run --once` writes to five file sinks, one per format. Then, for every case:

- it was dead-lettered with a non-empty reason (stage normalise, or encode for the sinks
  whose format could not carry it), or it appears exactly once in every format's output;
  never both lost and never both dead (normalise) and forwarded;
- a forwarded alert is intact: its raw line is the alert (JSON-equal) plus `tenant` and
  `forwarder` (any `tenant`/`forwarder` the alert had kept under `forwarder.shadowed`),
  and its id is in the ocsf, ecs, cim and cef lines;
- an alert without a string id is dead-lettered;
- every output line of a JSON format is one strict JSON object (no NaN/Infinity, no raw
  CR, a line is a line), every CEF line parses with `tests.cef_parser.parse` and holds
  no CR, LF or NUL; no output line belongs to no case (a forged, injected event);
- the run exits 0 or 1 and prints no traceback.
"""
from __future__ import annotations

import json
import math
import sys
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from core.model.schema import TenantRef
from core.sources import graph_alerts
from core.sources.incremental import version_reader
from core.state.sqlite import SQLiteStore
from mappings import cef as cef_mapping
from mappings.graph_alerts_v2 import MappingError, normalise
from tests import cef_parser
from tests.helpers import run_cli, write_config
from tests.reliability import make_hostile_corpus as corpus_module

FORMATS = ("raw", "ocsf", "ecs", "cim", "cef", "sentinel", "commonsecuritylog")
LABEL = "acme"
TENANT = corpus_module.TENANT
LINES_PER_PAGE_FILE = 40


@pytest.fixture(scope="module", autouse=True)
def _deep_json() -> Any:
    """The 1,010-level cases: the standard library's JSON reader recurses once per level."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 10_000))
    yield
    sys.setrecursionlimit(previous)


def _strict_json(text: str) -> Any:
    def reject(constant: str) -> Any:
        raise ValueError(f"non-JSON constant {constant}")
    return json.loads(text, parse_constant=reject)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, allow_nan=True)


def _load_corpus() -> tuple[list[str], list[dict[str, Any]]]:
    lines = corpus_module.CORPUS.read_text(encoding="utf-8").splitlines()
    cases = [json.loads(line) for line in corpus_module.CASES.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == len(cases)
    return lines, cases


def test_corpus_is_current_and_large_enough() -> None:
    lines, cases = _load_corpus()
    built = corpus_module.build()
    assert built.lines == lines, "hostile_alerts.ndjson is stale: run python -m tests.reliability.make_hostile_corpus"
    assert built.cases == cases
    assert len(lines) >= 200
    categories = Counter(case["category"] for case in cases)
    for needed in ("non-object", "missing-id", "wrong-type", "huge-field", "control-chars", "bad-unicode",
                   "injection", "deep-nesting", "unknown-evidence", "huge-number", "timestamp", "empty"):
        assert categories[needed] > 0, needed
    assert any(corpus_module.has_marker(line) for line in lines)
    assert max(map(len, lines)) < 1_000_000, "10 MB fields are stored as markers, not checked in"


def test_the_cheap_version_read_agrees_with_normalise_on_every_hostile_alert() -> None:
    """The incremental window skips versions queued before by reading them with the kind's
    version key, without normalising: where `normalise` takes an alert, both must read the same
    version, or an alert would be skipped as a duplicate of another; where it cannot judge, it
    must say so (None), not crash."""
    lines, _ = _load_corpus()
    tenant = TenantRef(id=TENANT, label="hostile")
    version_of = version_reader(graph_alerts.KIND.version)
    agreed = 0
    for line in lines:
        value = json.loads(line)
        raw = corpus_module.expand(value) if corpus_module.has_marker(line) else value
        found = version_of(raw)
        try:
            alert = normalise(raw, tenant, datetime.now(UTC))
        except MappingError:
            continue
        assert found == (alert.id, alert.times.last_updated), line[:200]
        agreed += 1
    assert agreed >= 100


def _kept_float(text: str) -> float | str:
    """A number as a dead letter keeps it: a value beyond a double's range as its text."""
    value = float(text)
    return value if math.isfinite(value) else text


def _write_pages(folder: Path, lines: list[str]) -> tuple[list[Any], list[Any]]:
    """The replay pages (the corpus text spliced in); each case's alert as Python reads it, and
    as a dead letter keeps it (numbers beyond a double's range as their text)."""
    folder.mkdir(parents=True)
    alerts, texts = [], []
    for line in lines:
        value = json.loads(line)
        if corpus_module.has_marker(line):
            value = corpus_module.expand(value)
            line = json.dumps(value, ensure_ascii=True, separators=(",", ":"))
        alerts.append(value)
        texts.append(line)
    for number, start in enumerate(range(0, len(texts), LINES_PER_PAGE_FILE), start=1):
        body = '{"@odata.context":"https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2","value":[' \
            + ",".join(texts[start:start + LINES_PER_PAGE_FILE]) + "]}"
        (folder / f"page-{number:04d}.json").write_text(body, encoding="utf-8")
    kept = [json.loads(text, parse_float=_kept_float, parse_constant=str) for text in texts]
    return alerts, kept


def _dig(document: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(document, dict):
            return None
        document = document.get(key)
    return document


def _id_of(fmt: str, line: Any) -> Any:
    if fmt in ("raw", "cim"):
        return line.get("id")
    if fmt == "ocsf":
        return _dig(line, "finding_info", "uid")
    if fmt == "ecs":
        return _dig(line, "event", "id")
    if fmt == "sentinel":
        return line.get("AlertId")
    if fmt == "commonsecuritylog":
        return line.get("DeviceCustomString3")  # CEF's cs3, as the CEF line has it
    return line.extension.get("cs3")  # cef: the whole id (cleaned); externalId is cut to 40 bytes


def _read_outputs(out: Path, problems: list[str]) -> dict[str, list[Any]]:
    """Every format's lines, parsed; a line that does not parse is a problem."""
    parsed: dict[str, list[Any]] = {}
    for fmt in FORMATS:
        path = out / f"{fmt}.ndjson"
        data = path.read_bytes() if path.exists() else b""
        assert not data or data.endswith(b"\n"), f"{fmt}: last line not terminated"
        rows = []
        for number, raw in enumerate(data.split(b"\n")[:-1], start=1):
            where = f"{fmt}.ndjson line {number}"
            if b"\r" in raw or b"\x00" in raw:
                problems.append(f"{where}: raw CR or NUL in the line")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"{where}: not UTF-8 ({err})")
                continue
            try:
                if fmt == "cef":
                    rows.append(cef_parser.parse(text))
                else:
                    document = _strict_json(text)
                    if not isinstance(document, dict):
                        problems.append(f"{where}: a JSON {type(document).__name__}, not an object")
                        continue
                    rows.append(document)
            except (ValueError, cef_parser.CefError) as err:
                problems.append(f"{where}: malformed ({type(err).__name__}: {str(err)[:200]}) {text[:160]!r}")
        parsed[fmt] = rows
    return parsed


def test_every_hostile_alert_is_forwarded_intact_or_dead_lettered(tmp_path: Path) -> None:
    lines, cases = _load_corpus()
    alerts, kept = _write_pages(tmp_path / "replay", lines)
    out = tmp_path / "out"
    sinks = {f"sinks.{fmt}": {"type": "file", "path": str(out / f"{fmt}.ndjson"), "format": fmt, "fsync": False,
                              "retry_initial": 0.01, "retry_max": 0.05} for fmt in FORMATS}
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "page_size": 100,
                      "once_deadline": "60s"},
        f"tenants.{LABEL}": {"tenant_id": TENANT, "replay": str(tmp_path / "replay")},
        **sinks,
    })

    result = run_cli("run", "--once", "--config", str(config), cwd=tmp_path, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode in (0, 1), f"exit {result.returncode}:\n{log[-4000:]}"
    assert "Traceback" not in log, log[-6000:]

    problems: list[str] = []
    outputs = _read_outputs(out, problems)

    store = SQLiteStore(tmp_path / "state.db")
    try:
        dead = store.dead_letters(limit=1_000_000)
    finally:
        store.close()

    # Dead letters -> cases, by the payload (the alert as the API sent it), as a multiset.
    by_value: dict[str, list[int]] = defaultdict(list)
    for index, alert in enumerate(kept):
        by_value[_canonical(alert)].append(index)
    dead_of: dict[int, list[Any]] = defaultdict(list)
    for letter in dead:
        if not letter.reason or letter.stage not in ("normalise", "encode"):
            problems.append(f"dead letter {letter.id}: stage {letter.stage!r}, reason {letter.reason!r}")
        try:
            payload = json.loads(letter.payload)
        except ValueError as err:
            problems.append(f"dead letter {letter.id}: payload is not JSON ({err}); reason {letter.reason[:200]!r}")
            continue
        matches = by_value.get(_canonical(payload), [])
        if not matches:
            problems.append(f"dead letter {letter.id} matches no case (payload altered?): {letter.reason[:200]!r}")
            continue
        # several identical cases: give the letter to one that has none of this stage/sink yet
        target = next((i for i in matches if not any((d.stage, d.sink) == (letter.stage, letter.sink)
                                                     for d in dead_of[i])), matches[0])
        dead_of[target].append(letter)

    # Output lines -> cases, by id.
    index_of_id: dict[str, int] = {}
    cef_index: dict[str, int] = {}
    for index, alert in enumerate(alerts):
        if isinstance(alert, dict) and isinstance(alert.get("id"), str):
            index_of_id.setdefault(alert["id"], index)
            cef_index.setdefault(cef_mapping.clean(alert["id"], 1023), index)
    seen: dict[str, dict[int, list[Any]]] = {fmt: defaultdict(list) for fmt in FORMATS}
    for fmt, rows in outputs.items():
        for number, row in enumerate(rows, start=1):
            alert_id = _id_of(fmt, row)
            by_id = cef_index if fmt in ("cef", "commonsecuritylog") else index_of_id
            index = by_id.get(alert_id) if isinstance(alert_id, str) else None
            if index is None:
                problems.append(f"{fmt} line {number}: id {str(alert_id)[:80]!r} belongs to no case "
                                f"(forged or altered line)")
                continue
            seen[fmt][index].append(row)

    forwarded = dead_count = 0
    for index, (alert, case) in enumerate(zip(alerts, cases)):
        label = f"case {case['case']} [{case['category']}] {case['name']}"
        letters = dead_of.get(index, [])
        normalise_dead = [d for d in letters if d.stage == "normalise"]
        encode_dead = {d.sink for d in letters if d.stage == "encode"}
        counts = {fmt: len(seen[fmt].get(index, [])) for fmt in FORMATS}
        has_id = isinstance(alert, dict) and isinstance(alert.get("id"), str) and alert["id"] != ""
        if normalise_dead:
            dead_count += 1
            if any(counts.values()):
                problems.append(f"{label}: dead-lettered ({normalise_dead[0].reason[:120]!r}) and also forwarded "
                                f"{counts}")
            continue
        if not has_id:
            problems.append(f"{label}: has no string id but was not dead-lettered (outputs {counts})")
            continue
        if not any(counts.values()) and not encode_dead:
            problems.append(f"{label}: silently lost (no output, no dead letter)")
            continue
        forwarded += 1
        for fmt in FORMATS:
            want = 0 if fmt in encode_dead else 1
            if counts[fmt] != want:
                problems.append(f"{label}: {counts[fmt]} lines in {fmt} (expected {want}; encode dead letters for "
                                f"{sorted(encode_dead)})")
        raw_rows = seen["raw"].get(index, [])
        if len(raw_rows) == 1:
            problems.extend(f"{label}: {p}" for p in _raw_problems(alert, raw_rows[0]))

    print(f"{len(alerts)} cases: {forwarded} forwarded, {dead_count} dead-lettered at normalise, "
          f"{sum(1 for d in dead if d.stage == 'encode')} encode dead letters")
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:80])
    assert forwarded + dead_count == len(alerts)


def _raw_problems(alert: dict[str, Any], line: dict[str, Any]) -> list[str]:
    problems = []
    context = line.get("forwarder")
    if line.get("tenant") != {"id": TENANT, "label": LABEL}:
        problems.append(f"raw: tenant is {line.get('tenant')!r}")
    if not isinstance(context, dict) or not isinstance(context.get("version_key"), str):
        problems.append(f"raw: forwarder is {context!r}")
        return problems
    shadowed = {key: alert[key] for key in ("tenant", "forwarder") if key in alert}
    if context.get("shadowed", {}) != shadowed:
        problems.append(f"raw: forwarder.shadowed {context.get('shadowed')!r}, expected {shadowed!r}")
    body = {k: v for k, v in line.items() if k not in ("tenant", "forwarder")}
    original = {k: v for k, v in alert.items() if k not in ("tenant", "forwarder")}
    if body != original:
        differing = sorted(k for k in set(body) | set(original) if body.get(k, ...) != original.get(k, ...))
        detail = "; ".join(f"{k}: sent {str(original.get(k, '<absent>'))[:80]} got {str(body.get(k, '<absent>'))[:80]}"
                           for k in differing[:3])
        problems.append(f"raw: not intact ({detail})")
    return problems
