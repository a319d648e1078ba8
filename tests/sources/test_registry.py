"""The source registry is the one place a source kind is declared.

Each kind's name, permission, API path, mapping and version key are written once, in its
own module of core/sources, and everything else takes them from there: the config's check
of `sources`, the readers and cursors of the app, the mapping it resolves. A tenant that
names `sources = ["graph_alerts"]` behaves as one that names none, and a second kind is
just another entry: another reader of the tenant, with its own cursor.
"""
from __future__ import annotations

import argparse
import ast
import asyncio
import dataclasses
import importlib
import re
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest

from core.app import commands
from core.app.config import EVENT_KINDS, ConfigError, load_config, parse_config
from core.app.pipeline import Forwarder
from core.model.schema import Alert, Incident
from core.sources import DEFAULT_SOURCES, KINDS, SourceKind, graph_alerts
from core.state import PageCommit
from core.state.sqlite import SQLiteStore
from mappings import source_mapping
from tests.helpers import REPO, read_ndjson, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts

TENANT_ID = "22222222-2222-4222-8222-222222222222"


def _kind_modules() -> dict[str, Path]:
    """Kind name -> the module of core/sources that declares it (its `KIND`)."""
    found: dict[str, Path] = {}
    for path in sorted((REPO / "core" / "sources").glob("*.py")):
        module = importlib.import_module(f"core.sources.{path.stem}") if path.stem != "__init__" else None
        kind = getattr(module, "KIND", None)
        if isinstance(kind, SourceKind):
            assert kind.name not in found, f"{kind.name} declared in {found.get(kind.name)} and {path}"
            found[kind.name] = path
    return found


def _declared(kind: SourceKind) -> dict[str, str]:
    """What a kind declares that no other code may spell out."""
    return {"name": kind.name, "permission": kind.permission.name, "path": kind.path, "mapping": kind.mapping,
            "version time": kind.version.time}


def _string_constants(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def test_every_kind_is_registered_and_declared_in_its_own_module() -> None:
    modules = _kind_modules()
    assert set(modules) == set(KINDS), "a kind module not registered, or a registered kind without its module"
    assert all(name == kind.name for name, kind in KINDS.items())
    assert DEFAULT_SOURCES and set(DEFAULT_SOURCES) <= set(KINDS)


def test_what_a_kind_declares_is_written_nowhere_else_in_core() -> None:
    """Its name, permission, path, mapping and version time appear as a string in its module (or
    in that of another kind declaring the same, as Graph incidents will its time property) only."""
    modules = _kind_modules()
    constants = {path: _string_constants(path) for path in sorted((REPO / "core").rglob("*.py"))}
    for kind in KINDS.values():
        for what, value in _declared(kind).items():
            allowed = {modules[other.name] for other in KINDS.values() if value in _declared(other).values()}
            written = {path for path, strings in constants.items() if value in strings}
            assert written == allowed, f"{kind.name}'s {what} {value!r} is also written in {sorted(written - allowed)}"


def test_graph_alerts_is_declared_as_the_api_documents_it() -> None:
    kind = KINDS["graph_alerts"]
    assert kind is graph_alerts.KIND
    assert (kind.permission.api, kind.permission.name) == ("Microsoft Graph", "SecurityAlert.Read.All")
    assert (kind.path, kind.time_property) == ("/v1.0/security/alerts_v2", "lastUpdateDateTime")
    assert (kind.version.id, kind.version.time) == ("id", "lastUpdateDateTime")
    assert kind.mapping == "graph_alerts_v2" and kind.settings is None


def test_every_kind_says_which_event_kind_it_yields() -> None:
    """What its mapping makes (an Alert or an Incident), as routes' `kinds` name them: the config
    check warns of a source whose event kind no route of its tenant takes."""
    assert {name: kind.event_kind for name, kind in KINDS.items()} == {
        "graph_alerts": Alert.KIND, "mde_alerts": Alert.KIND, "graph_incidents": Incident.KIND}
    assert {kind.event_kind for kind in KINDS.values()} <= set(EVENT_KINDS)


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_kind_has_its_mapping(name: str) -> None:
    mapping = source_mapping(KINDS[name].mapping)
    assert callable(mapping.normalise) and issubclass(mapping.refusal, Exception)
    # The alerts it makes say which kind they came from (`Alert.source`), by the kind's name.
    assert import_module(f"mappings.{KINDS[name].mapping}").SOURCE == name


# ---------------------------------------------------------------- the config's check

BASE: dict[str, Any] = {
    "tenants": {"contoso": {"tenant_id": TENANT_ID, "replay": "examples/demo/contoso"}},
    "sinks": {"out": {"type": "file", "path": "out/{tenant}.ndjson"}},
}


def _problems(sources: Any) -> list[str]:
    data = {**BASE, "tenants": {"contoso": {**BASE["tenants"]["contoso"], "sources": sources}}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_the_config_lists_the_registered_kinds() -> None:
    available = ", ".join(KINDS)
    assert _problems(["x"]) == [f"tenants.contoso.sources: unknown source 'x'; available: {available}"]
    assert _problems([*KINDS, "graph_incident"]) == [
        f"tenants.contoso.sources: unknown source 'graph_incident'; available: {available}"]
    assert _problems([]) == [f"tenants.contoso.sources: at least one source is needed; available: {available}"]
    assert parse_config(BASE).tenants["contoso"].sources == list(DEFAULT_SOURCES)


def _timeless(log: str) -> str:
    """A run's stderr without its clock: the log lines' timestamps and the cycle line's duration."""
    log = re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", "", log, flags=re.M)
    return re.sub(r"; [\d.]+ s$", "", log, flags=re.M)


def test_a_tenant_naming_graph_alerts_behaves_as_one_naming_no_source(tmp_path: Path) -> None:
    """Same summary, same bytes out, same cursor (tenant id, kind name), run after run."""
    alerts = make_alerts(30, TENANT_ID, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=7), seed=4)
    replay = write_replay(tmp_path / "replay", [alerts[:12], alerts[12:]])
    seen: dict[str, list[Any]] = {}
    for case, extra in (("default", {}), ("explicit", {"sources": ["graph_alerts"]})):
        work = tmp_path / case
        config = write_config(tmp_path / f"{case}.toml", {
            "forwarder": {"state": str(work / "state.db"), "initial_lookback": "3650d", "page_size": 7},
            "tenants.contoso": {"tenant_id": TENANT_ID, "replay": str(replay), **extra},
            "sinks.out": {"type": "file", "path": str(work / "{tenant}.ndjson"), "format": "raw"},
        })
        runs = [run_cli("run", "--once", "--config", str(config)) for _ in range(2)]
        assert [run.returncode for run in runs] == [0, 0], runs[0].stderr
        store = SQLiteStore(work / "state.db")
        try:
            cursors = store.cursors()
        finally:
            store.close()
        seen[case] = [[_timeless(run.stderr) for run in runs], (work / "contoso.ndjson").read_bytes(), cursors]
    assert seen["explicit"] == seen["default"]
    assert list(seen["default"][2]) == [(TENANT_ID, "graph_alerts")]
    assert len(read_ndjson(tmp_path / "default" / "contoso.ndjson")) == 30


# ---------------------------------------------------------------- a second kind

def test_a_replay_folder_gives_each_kind_its_own_pages(tmp_path: Path) -> None:
    """The default kinds' pages at the top (the layout from before other kinds), another kind's
    in its subfolder; a kind without one has nothing to replay, and says where it looked."""
    from core.sources.replay import ReplaySource

    alerts = make_alerts(2, TENANT_ID, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=5))
    incidents = [{"id": "7", "lastUpdateDateTime": "2026-11-01T00:00:00Z"}]
    replay = write_replay(tmp_path / "replay", [alerts])

    async def read(kind: SourceKind) -> list[Any]:
        source = ReplaySource(kind, str(replay), 10)
        return [record for page in [p async for p in source.pages(datetime(2026, 1, 1, tzinfo=UTC))]
                for record in page.alerts]

    with pytest.raises(Exception, match="graph_incidents does not exist"):
        asyncio.run(read(KINDS["graph_incidents"]))
    write_replay(replay / "graph_incidents", [incidents])
    assert asyncio.run(read(KINDS["graph_alerts"])) == alerts
    assert asyncio.run(read(KINDS["graph_incidents"])) == incidents


@pytest.fixture
def second_kind(monkeypatch: pytest.MonkeyPatch) -> SourceKind:
    """A stand-in for the next kind (Graph incidents, MDE alerts): registered, nothing else."""
    kind = dataclasses.replace(graph_alerts.KIND, name="second_alerts")
    monkeypatch.setitem(KINDS, kind.name, kind)
    return kind


def test_a_second_kind_is_another_reader_with_its_own_cursor(
        second_kind: SourceKind, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerts = make_alerts(9, TENANT_ID, datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=5), seed=2)
    replay = write_replay(tmp_path / "replay", [alerts])
    write_replay(replay / second_kind.name, [alerts])  # a kind's own pages: the subfolder named after it
    path = write_config(tmp_path / "two.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.contoso": {"tenant_id": TENANT_ID, "replay": str(replay),
                            "sources": ["graph_alerts", second_kind.name]},
        "sinks.out": {"type": "file", "path": str(tmp_path / "{tenant}.ndjson"), "format": "raw"},
    })
    config = load_config(path)
    store = SQLiteStore(tmp_path / "state.db")

    async def once() -> Any:
        async with Forwarder(config, store) as forwarder:
            assert list(forwarder.readers["contoso"]) == ["graph_alerts", second_kind.name]
            assert all(reader.kind is KINDS[name] for name, reader in forwarder.readers["contoso"].items())
            return await forwarder.run_once()

    try:
        [result] = asyncio.run(once())
        cursors = store.cursors()
    finally:
        store.close()
    # Each kind read its window; the same versions met twice are forwarded once.
    assert (result.error, result.read) == (None, 18)
    assert len(read_ndjson(tmp_path / "contoso.ndjson")) == 9
    newest = max(datetime.fromisoformat(a["lastUpdateDateTime"]) for a in alerts)
    assert cursors == {(TENANT_ID, "graph_alerts"): newest, (TENANT_ID, second_kind.name): newest}

    assert commands.cmd_check(argparse.Namespace(config=str(path), output="table")) == 0
    checked = capsys.readouterr().err
    assert f"contoso ({second_kind.name})" in checked and "contoso (graph_alerts)" in checked


def test_the_tenants_table_shows_the_cursor_furthest_behind(
        second_kind: SourceKind, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    path = write_config(tmp_path / "two.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "tenants.contoso": {"tenant_id": TENANT_ID, "replay": "x", "sources": ["graph_alerts", second_kind.name]},
        "sinks.out": {"type": "file", "path": str(tmp_path / "{tenant}.ndjson")},
    })
    set_cursor(tmp_path / "state.db", "graph_alerts", datetime(2026, 11, 20, 8, 0, tzinfo=UTC))

    def cursor_shown() -> str:
        assert commands.cmd_tenants(argparse.Namespace(config=str(path), output="table")) == 0
        lines = capsys.readouterr().out.splitlines()
        header = [cell.strip() for cell in next(line for line in lines if "cursor" in line).split("┃")]
        row = next(line for line in lines if "contoso" in line)
        return row.split("│")[header.index("cursor")].strip()

    assert cursor_shown() == "-"  # the second kind has not been read yet: its lag is unknown
    set_cursor(tmp_path / "state.db", second_kind.name, datetime(2026, 11, 19, 8, 0, tzinfo=UTC))
    assert cursor_shown() == "2026-11-19 08:00:00"


def set_cursor(state: Path, kind: str, cursor: datetime) -> None:
    store = SQLiteStore(state)
    try:
        store.commit_page(PageCommit(TENANT_ID, kind, cursor=cursor))
    finally:
        store.close()


def test_every_shape_convert_reads_is_a_registered_kinds() -> None:
    """`convert --source` takes a kind's version time from the registry: each shape has one."""
    from mappings import SOURCES

    mappings = {kind.mapping for kind in KINDS.values()}
    assert set(SOURCES.values()) <= mappings, set(SOURCES.values()) - mappings
