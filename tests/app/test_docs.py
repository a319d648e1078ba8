"""The README and docs/: the operator's page stays small, links resolve, nothing cites a document
outside the repository, and every table that restates the code is checked against the code.

What is checked against what:
- configuration blocks (```toml) -> `core.app.config.parse_config`, and every key named in
  them, commented out or not, -> the config models' fields; each sink page names every key of
  its sink's model (`connectors.<type>.CONNECTOR.config_model`)
- sink types, formats, syslog facilities and levels -> the names the configuration's own
  validation errors list (what an operator sees)
- the sinks table's default formats -> each sink model's `format` default
- the HEC status table -> `connectors.splunk_hec.HEC_CODES`; it exists once
- the Sentinel status table -> `connectors.sentinel.INGESTION_STATUSES`; its clouds ->
  `connectors.entra.CLOUDS`
- the CEF key table -> `mappings.cef.markdown_table()`; the CEF severities ->
  `mappings.cef.SEVERITIES`; the fitting order -> `mappings.cef.FIT_ORDER`
- the CIM fields, the ECS fields and severities -> what `convert` writes for generated alerts
- the ECS differences -> the ECS conformance test's `DELIBERATE_DIFFERENCES`
- the syslog severity table -> the PRI of messages the syslog sink sends
- exit codes and commands -> `defender-forwarder --help`
- the error lines docs/onboarding.md quotes -> the messages written in core/
- the AADSTS codes of the tenant-failure table -> the codes the sources know
- the layers table -> `tests/test_layers.py`'s own table; the folder layout -> the tree
"""
from __future__ import annotations

import asyncio
import importlib
import json
import re
import socket
import tomllib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from core.app.config import ConfigError, HttpSettings, parse_config
from tests.helpers import REPO, run_cli

README = REPO / "README.md"
DOCS = REPO / "docs"
EXAMPLES = REPO / "examples"
README_LIMIT = 25_000
TENANT_ID = "22222222-2222-4222-8222-222222222222"


def doc_pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


PAGES = [pytest.param(page, id=_rel(page)) for page in doc_pages()]

# --------------------------------------------------------------------------- markdown helpers

FENCE = re.compile(r"^(```|~~~)")


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def code_blocks(text: str, language: str) -> list[str]:
    """The bodies of the fenced blocks of `language` (```toml), indented ones too."""
    blocks, body, inside = [], [], False
    indent = 0
    for line in text.splitlines():
        stripped = line.strip()
        if not inside and stripped == f"```{language}":
            inside, body, indent = True, [], len(line) - len(line.lstrip())
        elif inside and stripped == "```":
            blocks.append("\n".join(body))
            inside = False
        elif inside:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*)$", line)
        if match:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for match in LINK.finditer(line):
            yield number, match.group(1)


def tables(text: str) -> list[list[list[str]]]:
    """Every markdown table: rows of cells (the header row first, the separator left out)."""
    found: list[list[list[str]]] = []
    current: list[list[str]] = []
    for _, line in prose_lines(text):
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", stripped[1:-1])]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):
                current.append(cells)
        elif current:
            found.append(current)
            current = []
    if current:
        found.append(current)
    return found


def table_with(text: str, *header: str) -> list[list[str]]:
    """The one table whose header row starts with `header`; its rows without the header."""
    matching = [t for t in tables(text) if tuple(t[0][: len(header)]) == header]
    assert len(matching) == 1, f"expected one table with header {header}, found {len(matching)}"
    return matching[0][1:]


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def expand_braces(name: str) -> list[str]:
    """`a.{b, c}` -> [`a.b`, `a.c`]."""
    match = re.fullmatch(r"(.*)\{([^}]*)\}(.*)", name)
    if not match:
        return [name]
    head, inner, tail = match.groups()
    return [f"{head}{part.strip()}{tail}" for part in inner.split(",")]


def read(relative: str) -> str:
    return (REPO / relative).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the code's own lists


def _problems(sink: dict[str, Any]) -> list[str]:
    data = {"tenants": {"t": {"tenant_id": TENANT_ID, "replay": "examples/demo/contoso"}}, "sinks": {"s": sink}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def _listed_after(problems: list[str], key: str, marker: str) -> list[str]:
    line = next(p for p in problems if p.startswith(f"sinks.s.{key}:"))
    return [name.strip() for name in line.split(marker, 1)[1].split(",")]


@cache
def sink_types() -> tuple[str, ...]:
    return tuple(_listed_after(_problems({"type": "no-such-sink"}), "type", "available:"))


@cache
def formats() -> tuple[str, ...]:
    return tuple(_listed_after(_problems({"type": "stdout", "format": "no-such-format"}), "format", "formats:"))


@cache
def syslog_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    problems = _problems({"type": "syslog", "host": "h", "facility": "no-such", "severity": "no-such"})
    facilities = _listed_after(problems, "facility", "one of")
    levels = _listed_after(problems, "severity", "one of")
    return tuple(facilities), tuple(levels)


def sink_model(sink_type: str) -> Any:
    return importlib.import_module(f"connectors.{sink_type}").CONNECTOR.config_model


def field_names(model: Any) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


@cache
def common_sink_keys() -> frozenset[str]:
    return frozenset.intersection(*(frozenset(field_names(sink_model(t))) for t in sink_types()))


@cache
def sink_pages() -> dict[str, Path]:
    """Sink type -> its page, from the sinks table of docs/sinks/README.md."""
    pages = {}
    for row in table_with(read("docs/sinks/README.md"), "`type`", "page"):
        (sink_type,) = code_spans(row[0])
        target = LINK.search(row[1]).group(1).split("#")[0]
        pages[sink_type] = DOCS / "sinks" / target
    return pages


# --------------------------------------------------------------------------- the README


def test_readme_is_the_operators_page_under_25_kb() -> None:
    size = README.stat().st_size
    assert size < README_LIMIT, f"README.md is {size:,} bytes; the limit is {README_LIMIT:,}: move reference to docs/"


def test_readme_keeps_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
    makefile = read("Makefile")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_readme_links_every_docs_page() -> None:
    linked = {(README.parent / target.split("#")[0]).resolve() for _, target in links(README)}
    missing = [_rel(page) for page in sorted(DOCS.rglob("*.md")) if page.resolve() not in linked]
    assert not missing, f"README.md links no {missing}"
    index = DOCS / "README.md"
    in_index = {(index.parent / target.split("#")[0]).resolve() for _, target in links(index)}
    missing = [_rel(p) for p in sorted(DOCS.rglob("*.md")) if p != index and p.resolve() not in in_index]
    assert not missing, f"docs/README.md links no {missing}"


# --------------------------------------------------------------------------- links and citations


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: Path) -> None:
    broken = []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{_rel(page)}:{number}: {target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{_rel(page)}:{number}: {target}: no heading with that anchor")
        elif not str(resolved).startswith(str(REPO)):
            broken.append(f"{_rel(page)}:{number}: {target}: outside the repository")
    assert not broken, "\n".join(broken)


REPO_PATH = re.compile(r"^(?:examples|bench|tests|connectors|core|mappings|docs|\.ci)/[\w./-]*$")


@pytest.mark.parametrize("page", PAGES)
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = []
    for number, line in prose_lines(page.read_text(encoding="utf-8")):
        for span in re.findall(r"`([^`]+)`", line):
            if REPO_PATH.match(span) and not (REPO / span).exists():
                missing.append(f"{_rel(page)}:{number}: `{span}`")
    assert not missing, "no such file or folder:\n" + "\n".join(missing)


# A document outside the repository: the design card, the reference folder, "file.md §3".
CITATION = re.compile(r"reference/|DESIGN\.md|anchors/|§|\b[\w-]+\.md\s*§")


def cited_files() -> list[Path]:
    others = [p for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix != ".py"]
    return [*doc_pages(), *sorted(others), REPO / "Makefile", REPO / ".ci" / "run", REPO / "pyproject.toml"]


@pytest.mark.parametrize("path", [pytest.param(p, id=_rel(p)) for p in cited_files()])
def test_nothing_cites_a_document_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    cited = [f"{_rel(path)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if CITATION.search(line)]
    names = {p.name for p in REPO.rglob("*.md") if ".venv" not in p.parts}
    for number, line in enumerate(lines, start=1):
        for name in re.findall(r"(?<![\w/.-])([\w-]+\.md)\b", line):
            if name not in names:
                cited.append(f"{_rel(path)}:{number}: {name} is not in the repository")
    assert not cited, "\n".join(cited)


# --------------------------------------------------------------------------- configuration blocks


def _config_blocks() -> Iterator[Any]:
    for page in doc_pages():
        for index, block in enumerate(code_blocks(page.read_text(encoding="utf-8"), "toml")):
            yield pytest.param(page, block, id=f"{_rel(page)}[{index}]")


TABLE_HEADER = re.compile(r"^\s*\[\[?([\w.-]+)\]\]?")
# A key written in a comment: `# hostname = "fwd-01"`, `# or cloud_id = "env:..."`.
COMMENTED_KEY = re.compile(r"(?:^|[\s(])([a-z_][a-z0-9_]*) = ")


def _runnable(data: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The block as a whole configuration: secrets and files it references made available here."""
    data.setdefault("tenants", {"t": {"tenant_id": TENANT_ID, "replay": "examples/demo/contoso"}})
    if not data.get("sinks"):
        data["sinks"] = {name: {"type": "stdout"} for route in data.get("routes", []) for name in route["sinks"]}
        data["sinks"] = data["sinks"] or {"out": {"type": "stdout"}}
    monkeypatch.setenv("DF_DOCS_SECRET", "docs-secret-value")
    for table in [*data.get("apps", {}).values(), *data.get("sinks", {}).values()]:
        for key, value in table.items():
            if isinstance(value, str) and value.startswith("env:"):
                monkeypatch.setenv(value[4:], "docs-secret-value")
            elif isinstance(value, str) and value.startswith("file:"):
                table[key] = "env:DF_DOCS_SECRET"
    return data


def _model_of(config: Any, header: str) -> Any:
    section, _, name = header.partition(".")
    if header in ("forwarder.http", "forwarder.postgresql"):  # the tables inside [forwarder]
        return type(getattr(config.forwarder, name))
    if section == "forwarder":
        return type(config.forwarder)
    if section == "routes":
        return type(config.routes[0])
    if section == "notify":
        return type(config.notify)
    if section in ("apps", "tenants", "sinks"):
        return type(getattr(config, section)[name])
    raise AssertionError(f"[{header}]: not a table of the configuration")


def _keys_by_table(block: str) -> dict[str, set[str]]:
    """Every key a block names, set or commented out, by the table it stands in."""
    keys: dict[str, set[str]] = {}
    header = ""
    for line in block.splitlines():
        match = TABLE_HEADER.match(line)
        if match:
            header = match.group(1)
            continue
        code, hash_mark, comment = line.partition("#")
        names = keys.setdefault(header, set())
        if "=" in code:
            names.add(code.split("=", 1)[0].strip())
        if hash_mark:
            names.update(COMMENTED_KEY.findall(" " + comment))
    return {table: names for table, names in keys.items() if names}


@pytest.mark.parametrize(("page", "block"), list(_config_blocks()))
def test_configuration_blocks_are_valid(page: Path, block: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tomllib.loads(block)
    keys = _keys_by_table(block)
    if not any(key in data for key in ("forwarder", "apps", "tenants", "sinks", "routes", "notify")):
        # A fragment of one sink's table (e.g. the other Elasticsearch set-up): its keys only.
        sink_type = next(t for t, p in sink_pages().items() if p == page and t != "stdout")
        unknown = keys[""] - field_names(sink_model(sink_type))
        assert not unknown, f"{_rel(page)}: keys no {sink_type} sink has: {sorted(unknown)}"
        return
    config = parse_config(_runnable(data, monkeypatch), _rel(page))
    for header, names in keys.items():
        unknown = names - field_names(_model_of(config, header))
        assert not unknown, f"{_rel(page)} [{header}]: keys the configuration does not have: {sorted(unknown)}"


def _named_keys(page: Path) -> set[str]:
    named: set[str] = set()
    for block in code_blocks(page.read_text(encoding="utf-8"), "toml"):
        for names in _keys_by_table(block).values():
            named |= names
    return named


def test_each_sink_page_names_every_key_of_its_sink() -> None:
    missing = {}
    for sink_type, page in sink_pages().items():
        absent = field_names(sink_model(sink_type)) - common_sink_keys() - _named_keys(page)
        if absent:
            missing[f"{sink_type} ({_rel(page)})"] = sorted(absent)
    absent = common_sink_keys() - _named_keys(DOCS / "sinks" / "README.md")
    if absent:
        missing["every sink (docs/sinks/README.md)"] = sorted(absent)
    assert not missing, f"keys no configuration block names: {missing}"


def test_the_status_page_names_every_key_of_the_endpoint() -> None:
    absent = field_names(HttpSettings) - _named_keys(DOCS / "status.md")
    assert not absent, f"docs/status.md: no configuration block names [forwarder.http] {sorted(absent)}"


def test_the_readme_names_every_key_of_the_other_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    (block,) = [b for b in code_blocks(README.read_text(encoding="utf-8"), "toml") if "[forwarder]" in b]
    config = parse_config(_runnable(tomllib.loads(block), monkeypatch))
    keys = _keys_by_table(block)
    for header in ("forwarder", "apps.mssp", "tenants.contoso", "routes"):
        absent = field_names(_model_of(config, header)) - keys[header]
        assert not absent, f"README.md [{header}]: the example names no {sorted(absent)}"


def test_the_alerting_page_names_every_key_of_notify() -> None:
    from core.app.config import NotifySettings

    absent = field_names(NotifySettings) - _named_keys(DOCS / "alerting.md")
    assert not absent, f"docs/alerting.md: its [notify] block names no {sorted(absent)}"


# --------------------------------------------------------------------------- sink types and formats


def _alternatives(text: str, key: str) -> list[list[str]]:
    """Each `key = "x"  # a | b | c` comment's list, in README and the docs."""
    found = re.findall(rf'^{key} = "[^"]*"\s+#\s*([\w-]+(?: \| [\w-]+)+)', text, re.M)
    return [[name.strip() for name in line.split("|")] for line in found]


def test_sink_types_are_the_configurations() -> None:
    assert list(sink_pages()) == list(sink_types())
    for page in (README, DOCS / "sinks" / "README.md"):
        lists = _alternatives(page.read_text(encoding="utf-8"), "type")
        assert lists and all(sorted(names) == sorted(sink_types()) for names in lists), _rel(page)
    for sink_type, page in sink_pages().items():
        assert f'type = "{sink_type}"' in page.read_text(encoding="utf-8"), f"{_rel(page)} shows no {sink_type} sink"


def test_default_formats_are_the_sinks() -> None:
    for row in table_with(read("docs/sinks/README.md"), "`type`", "page", "default `format`"):
        (sink_type,), (default,) = code_spans(row[0]), code_spans(row[2])
        assert sink_model(sink_type).model_fields["format"].default == default, sink_type


def test_formats_are_the_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    text = read("docs/formats.md")
    listed = [code_spans(row[0])[0] for row in table_with(text, "format", "what", "choose it for")]
    assert sorted(listed) == sorted(formats())
    for name in (*formats(), "alert"):
        assert any(h == name or h.startswith(f"{name}:") for h in _headings(text)), f"formats.md: no section {name}"
    readme = README.read_text(encoding="utf-8")
    for names in _alternatives(readme, "format") + _alternatives(read("docs/sinks/README.md"), "format"):
        assert sorted(names) == sorted(formats())
    (convert,) = re.findall(r"convert --source graph --format ([\w|]+)", readme)
    assert sorted(convert.split("|")) == sorted(formats())
    # `alert`, the common schema, is a format too, though the error lists only the SIEM formats.
    data = {"tenants": {"t": {"tenant_id": TENANT_ID, "replay": "x"}},
            "sinks": {"s": {"type": "stdout", "format": "alert"}}}
    assert parse_config(data).sinks["s"].format == "alert"


def _headings(text: str) -> list[str]:
    return [m.group(1).strip() for _, line in prose_lines(text) if (m := re.match(r"^#{1,6}\s+(.*)$", line))]


# --------------------------------------------------------------------------- Splunk HEC


def test_the_hec_status_table_is_hec_codes() -> None:
    from connectors.splunk_hec import HEC_CODES

    rows = table_with(read("docs/sinks/splunk_hec.md"), "HEC code", "HTTP", "Splunk's text", "action")
    documented = {int(code): (int(status), text, action) for code, status, text, action in rows}
    expected = {code: (hec.status, hec.text, hec.action.value) for code, hec in HEC_CODES.items()}
    assert documented == expected
    assert [int(row[0]) for row in rows] == sorted(HEC_CODES), "one row per code, in order"


def test_the_hec_status_table_exists_once() -> None:
    from connectors.splunk_hec import HEC_CODES

    texts = {hec.text for hec in HEC_CODES.values()}
    row = "Query string authorization is not enabled"
    holders = [_rel(p) for p in doc_pages() if row in p.read_text(encoding="utf-8")]
    assert holders == ["docs/sinks/splunk_hec.md"], holders
    for page in doc_pages():
        for table in tables(page.read_text(encoding="utf-8")):
            header = " ".join(table[0]).lower()
            if "hec code" in header:
                assert page == DOCS / "sinks" / "splunk_hec.md", f"{_rel(page)}: a second HEC status table"
            else:
                assert not any(cell in texts for row in table for cell in row), f"{_rel(page)}: HEC codes again"


# --------------------------------------------------------------------------- Sentinel


def test_the_sentinel_status_table_is_ingestion_statuses() -> None:
    from connectors.sentinel import INGESTION_STATUSES

    rows = table_with(read("docs/sinks/sentinel.md"), "status", "action", "meaning")
    documented = {int(status): action for status, action, _ in rows}
    assert documented == {status: handling.action for status, handling in INGESTION_STATUSES.items()}
    assert [int(row[0]) for row in rows] == sorted(INGESTION_STATUSES), "one row per status, in order"


def test_the_sentinel_clouds_are_entras() -> None:
    from connectors.entra import CLOUDS

    rows = table_with(read("docs/sinks/sentinel.md"), "`cloud`", "login host", "token scope")
    documented = {code_spans(name)[0]: (code_spans(login)[0], code_spans(scope)[0]) for name, login, scope in rows}
    assert documented == {name: (cloud.login, cloud.monitor_scope) for name, cloud in CLOUDS.items()}


# --------------------------------------------------------------------------- CEF


def test_the_cef_key_table_is_the_mappings() -> None:
    from mappings import cef

    assert cef.markdown_table() in read("docs/formats.md")


def test_the_sentinel_tables_are_the_mappings() -> None:
    from mappings import commonsecuritylog, sentinel

    text = read("docs/formats.md")
    assert sentinel.markdown_table(sentinel.ALERT_COLUMNS) in text
    assert sentinel.markdown_table(sentinel.INCIDENT_COLUMNS) in text
    assert commonsecuritylog.markdown_table() in text


def test_the_cef_evidence_key_table_is_the_mappings() -> None:
    from mappings import cef

    assert cef.evidence_markdown_table() in read("docs/formats.md")
    # ... and names every key the encoder can write (numbered ones aside)
    keys = {code_spans(row.split("|")[3])[0] for row in cef.evidence_markdown_table().splitlines()[2:]}
    assert keys == {entry.key for entry in cef.EVIDENCE_KEYS}


def test_the_cef_severities_are_the_mappings() -> None:
    from mappings import cef

    rows = table_with(read("docs/formats.md"), "severity", "CEF severity")
    assert {name: int(value) for name, value in rows} == {s.name: v for s, v in cef.SEVERITIES.items()} | {
        "unknown": 0
    }
    # The Sentinel page's LogSeverity cell says the same.
    (cell,) = [row[2] for row in table_with(read("docs/sentinel.md"), "CEF") if row[0] == "Severity"]
    pairs = dict((name, int(value)) for value, name in re.findall(r"(\d+) (\w+)", cell))
    assert pairs == {s.name: v for s, v in cef.SEVERITIES.items() if v}


def test_the_cef_fitting_order_is_the_mappings() -> None:
    from mappings import cef

    section = read("docs/formats.md").split("### Fitting a line into a budget", 1)[1].split("\n#", 1)[0]
    order = [code_spans(line)[0] for line in section.splitlines() if re.match(r"^\d+\. `", line)]
    assert tuple(order) == tuple(cef.FIT_ORDER)


def test_the_sentinel_table_names_cef_keys() -> None:
    from mappings import cef

    keys = {code_spans(row.split("|")[1])[0] for row in cef.markdown_table().splitlines()[2:]}
    keys |= {f"cs{n}" for n in range(1, 7)}
    keys |= {entry.key for entry in cef.EVIDENCE_KEYS}
    rows = table_with(read("docs/sentinel.md"), "CEF")
    # The evidence keys land in AdditionalExtensions.
    assert any(row[1] == "AdditionalExtensions" and "msDeviceEvidenceMdeDeviceId" in code_spans(row[0])
               for row in rows)
    for row in rows:
        for span in code_spans(row[0]):
            for key in re.split(r"\.\.", span):
                assert key in keys, f"docs/sentinel.md: `{span}` is no CEF key"


# --------------------------------------------------------------------------- what convert writes


@cache
def _converted(fmt: str, severities: bool = False) -> tuple[dict[str, Any], ...]:
    """`convert --format fmt` of 300 generated alerts (or of one alert in every severity)."""
    import tempfile

    from tests.peers.alert_factory import make_alerts

    alerts = make_alerts(300, TENANT_ID, datetime(2026, 11, 1, tzinfo=UTC), timedelta(seconds=37), seed=7)
    if severities:
        alerts = [{**alerts[0], "id": f"sev-{s}", "severity": s} for s in SEVERITY_NAMES]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "alerts.ndjson"
        path.write_text("\n".join(json.dumps(alert) for alert in alerts), encoding="utf-8")
        result = run_cli("convert", "--format", fmt, str(path))
    assert result.returncode == 0, result.stderr
    return tuple(json.loads(line) for line in result.stdout.splitlines())


SEVERITY_NAMES = ("informational", "low", "medium", "high", "critical")


def _paths(value: Any, path: str = "") -> Iterator[str]:
    """Every object path and leaf path of a document (`a`, `a.b`, ...)."""
    if path:
        yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                yield from _paths(item, path)


def test_the_cim_fields_are_what_cim_writes() -> None:
    documented = set()
    for row in table_with(read("docs/formats.md"), "field", "value"):
        documented.update(code_spans(row[0]))
    written = {key for document in _converted("cim") for key in document}
    # The evidence identity fields have their own table (test_format_cim checks it is the code's).
    from mappings.cim import IDENTITY_FIELDS

    assert documented == written - set(IDENTITY_FIELDS)


def test_the_ecs_fields_are_what_ecs_writes() -> None:
    written = {path for document in _converted("ecs") for path in _paths(document)}
    missing = []
    for _, ecs in table_with(read("docs/formats.md"), "Graph", "ECS"):
        for span in code_spans(ecs):
            for name in expand_braces(span):
                if re.fullmatch(r"@?[\w.]+", name) and ("." in name or name.startswith("@")) and name not in written:
                    missing.append(name)
    assert not missing, f"the ECS table names fields no generated alert has: {missing}"


def test_the_ecs_severities_are_what_ecs_writes() -> None:
    rows = table_with(read("docs/formats.md"), "severity", "`event.severity`")
    written = {doc["m365_defender"]["alert"]["severity"]: doc["event"]["severity"] for doc in _converted("ecs", True)}
    assert {name: int(value) for name, value in rows} == written


def test_the_ecs_differences_are_the_conformance_tests() -> None:
    from tests.mappings.test_format_ecs import DELIBERATE_DIFFERENCES

    documented = set()
    for row in table_with(read("docs/formats.md"), "field", "why"):
        for span in code_spans(row[0]):
            documented.update(expand_braces(span))
    assert documented == set(DELIBERATE_DIFFERENCES)


# --------------------------------------------------------------------------- syslog


def test_syslog_facilities_and_levels_are_the_sinks() -> None:
    facilities, levels = syslog_names()
    text = read("docs/sinks/syslog.md")
    (sentence,) = re.findall(r"it accepts ([^.]*)\.", text.replace("\n", " "))
    documented = re.sub(r"local0 to local7", ", ".join(f"local{n}" for n in range(8)), sentence)
    assert [name.strip() for name in re.split(r",|\band\b", documented) if name.strip()] == list(facilities)
    (line,) = re.findall(r'^severity = "from-alert"\s+#.*level: ([\w ]+)$', text, re.M)
    assert line.split() == list(levels)


def test_the_syslog_severity_table_is_what_the_sink_sends() -> None:
    from core.model.schema import Severity

    _, levels = syslog_names()
    rows = table_with(read("docs/sinks/syslog.md"), "alert severity", "syslog severity")
    documented = {name: (code_spans(cell)[0], int(re.search(r"\((\d)\)", cell).group(1))) for name, cell in rows}
    assert {name: levels.index(level) for name, (level, _) in documented.items()} == {
        name: number for name, (_, number) in documented.items()
    }
    assert sorted(documented) == sorted(s.name for s in Severity)

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        model = sink_model("syslog")
        config = model(type="syslog", host="127.0.0.1", port=receiver.getsockname()[1], protocol="udp",
                       facility="local4")
        # Outbox rows as the contract describes them (`connectors.base.Event`): row id, meta, body.
        events = [
            SimpleNamespace(row_id=n, body=b"CEF:0|x", meta=SimpleNamespace(
                tenant_id=TENANT_ID, tenant_label="contoso", alert_id=f"a{n}", version_key=f"v{n}",
                severity=Severity[name], time=0.0))
            for n, name in enumerate(documented)
        ]

        async def send() -> None:
            connector = importlib.import_module("connectors.syslog").CONNECTOR("siem", config)
            await connector.open()
            try:
                await connector.send(events)
            finally:
                await connector.close()

        asyncio.run(send())
        sent = [receiver.recv(65535) for _ in events]
    finally:
        receiver.close()
    local4 = 20 * 8
    for name, message in zip(documented, sent):
        pri = int(re.match(rb"<(\d+)>", message).group(1))
        assert pri - local4 == documented[name][1], f"{name}: sent PRI {pri}"


# --------------------------------------------------------------------------- the command line


@cache
def _help() -> str:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_exit_codes_are_the_clis() -> None:
    text = " ".join(_help().split())
    said = dict(re.findall(r"(\d) ([^;.]+(?:\([^)]*\))?)[;.]", text.split("exit codes:", 1)[1]))
    rows = table_with(README.read_text(encoding="utf-8"), "code", "meaning")
    assert [row[0] for row in rows] == sorted(said)
    for code, meaning in rows:
        assert meaning.startswith(said[code].strip()), f"exit code {code}: the CLI says {said[code]!r}"


def test_commands_are_the_clis() -> None:
    commands = re.findall(r"^    (\S+)", _help().split("positional arguments:", 1)[1].split("options:")[0], re.M)
    readme = README.read_text(encoding="utf-8")
    documented = re.findall(r"^defender-forwarder (\S+)", readme, re.M)
    assert documented == commands


# --------------------------------------------------------------------------- sources


def test_the_tenant_failure_table_is_the_sources() -> None:
    rows = table_with(read("docs/sources.md"), "what Entra / Graph says")
    documented = {row[0] for row in rows if row[0].startswith("AADSTS")}
    known = {code for path in (REPO / "core").rglob("*.py") for code in re.findall(r"AADSTS\d+", path.read_text())}
    assert documented == known
    assert all(re.search(rf"\b{code}\b", read("docs/sources.md")) for code in known)


def test_the_incident_field_table_is_the_mapping() -> None:
    from mappings.graph_incidents import INCIDENT, TIMES

    rows = table_with(read("docs/sources.md"), "Graph property", "Incident field")
    documented = [(code_spans(row[0])[0], code_spans(row[1])[0]) for row in rows]
    mapped = [(row.graph, row.field) for row in INCIDENT.rows] + [(row.graph, f"times.{row.field}") for row in TIMES.rows]
    assert documented == mapped


def test_the_sources_table_is_the_registry() -> None:
    from core.sources import KINDS

    rows = table_with(read("docs/sources.md"), "source", "API", "application permission")
    documented = {code_spans(row[0])[0]: (code_spans(row[1])[0], code_spans(row[2])[0]) for row in rows}
    assert documented == {name: (f"GET {kind.path}", kind.permission.name) for name, kind in KINDS.items()}


# --------------------------------------------------------------------------- onboarding

# What an error line in the onboarding table leaves to the case: a placeholder, an elision,
# the example app (mssp), its secret's variable, an example tenant, the permission's name.
ERROR_LINE_BLANKS = re.compile(r"<[^>]+>|…|\S*mssp\S*|'contoso'|SecurityAlert\.Read\.All", re.I)


def test_the_onboarding_error_lines_are_the_codes() -> None:
    """Every line the onboarding table quotes is one the code prints: each literal part of
    it is in the source of core/ (where the messages are written)."""
    source = "\n".join(path.read_text(encoding="utf-8") for path in sorted((REPO / "core").rglob("*.py")))
    rows = table_with(read("docs/onboarding.md"), "the line says", "meaning", "fix")
    assert len(rows) >= 10
    unknown = []
    for row in rows:
        (line, *_) = code_spans(row[0])
        parts = [part.strip() for part in ERROR_LINE_BLANKS.split(line)]
        unknown += [f"{line!r}: {part!r}" for part in parts if len(part) >= 8 and part not in source]
    assert not unknown, "not in the code:\n" + "\n".join(unknown)


# --------------------------------------------------------------------------- architecture


def test_the_layers_table_is_the_layer_tests() -> None:
    from tests.test_layers import LAYER_OF, MAY_IMPORT

    rows = table_with(read("docs/architecture.md"), "layer", "where", "what it holds", "may import")
    layers = [row[0] for row in rows]
    assert sorted(layers) == sorted(MAY_IMPORT)
    prefixes = dict(LAYER_OF)
    for layer, where, _, may in rows:
        (folder,) = code_spans(where)
        module = folder.rstrip("/").removesuffix(".py").replace("/", ".")
        assert prefixes.get(module) == layer, f"{layer}: {folder}"
        if may == "nothing of ours":
            allowed: set[str] = set()
        elif may == "every layer below":
            allowed = set(layers[: layers.index(layer)])
        else:
            allowed = {name.strip() for name in may.split(",")}
        assert allowed == MAY_IMPORT[layer], layer


def test_the_folder_layout_is_the_tree() -> None:
    section = read("docs/architecture.md").split("## Folder layout", 1)[1]
    (block,) = re.findall(r"```\n(.*?)```", section, re.S)[:1]
    parent = REPO
    missing = []
    for line in block.splitlines():
        if not line.strip() or line.startswith("    "):
            continue  # a continuation of the line before
        name = line.split()[0]
        path = (REPO if not line.startswith(" ") else parent) / name
        if not path.exists():
            missing.append(_rel(path))
        if not line.startswith(" "):
            parent = path
    assert not missing, f"the folder layout names {missing}"
