"""The pipeline end to end on replayed Graph pages: cursor, overlap dedupe, updates, routes,
dead letters, backpressure. Files are real, the state is a real SQLite file."""
from __future__ import annotations

import asyncio
import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

from connectors.base import Event
from connectors.file import FileConnector, FileSinkConfig
from core.app.config import load_config
from core.app.pipeline import Forwarder, encode_for_sinks
from core.model import jsonutil
from core.model.schema import Alert, EventMeta, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import ocsf
from mappings.graph_alerts_v2 import normalise
from tests.helpers import REPO, read_ndjson, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts, updated_version

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=timezone.utc)
TENANT = "55555555-5555-4555-8555-555555555555"
REF = TenantRef(id=TENANT, label="acme")


def _config(tmp_path: Path, replay: Path, **forwarder: object) -> Path:
    return write_config(
        tmp_path / "forwarder.toml",
        {
            "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", **forwarder},
            "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
            "sinks.all": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson"), "format": "raw",
                          "retry_initial": 0.01, "retry_max": 0.05},
        },
    )


def _run(config_path: Path) -> tuple[list, Forwarder]:
    config = load_config(config_path)
    store = SQLiteStore(Path(config.forwarder.state))

    async def go() -> list:
        async with Forwarder(config, store) as forwarder:
            results = await forwarder.run_once()
            run._forwarder = forwarder  # type: ignore[attr-defined]
            return results

    run = go
    try:
        results = asyncio.run(go())
    finally:
        store.close()
    return results, run._forwarder  # type: ignore[attr-defined]


def test_every_alert_forwarded_once_and_rerun_forwards_nothing(tmp_path: Path) -> None:
    alerts = make_alerts(30, TENANT, T0, timedelta(minutes=7), seed=1)
    replay = write_replay(tmp_path / "replay", [alerts[:10], alerts[10:20], alerts[20:]])
    config = _config(tmp_path, replay, page_size=4)
    (result,), _ = _run(config)
    assert (result.read, result.queued, result.duplicates, result.error) == (30, 30, 0, None)
    out = read_ndjson(tmp_path / "out" / "acme.ndjson")
    assert sorted(a["id"] for a in out) == sorted(a["id"] for a in alerts)
    assert all(a["tenant"] == {"id": TENANT, "label": "acme"} for a in out)

    (again,), _ = _run(config)
    # The overlap window re-reads the newest alerts; dedupe drops them.
    assert again.queued == 0 and again.duplicates > 0
    assert len(read_ndjson(tmp_path / "out" / "acme.ndjson")) == 30


def test_update_is_forwarded_as_a_new_version_and_old_version_not_again(tmp_path: Path) -> None:
    alerts = make_alerts(5, TENANT, T0, timedelta(minutes=1), seed=2)
    replay = write_replay(tmp_path / "replay", [alerts])
    config = _config(tmp_path, replay)
    _run(config)
    update = updated_version(alerts[2], T0 + timedelta(hours=2), status="resolved")
    write_replay(replay, [alerts, [update]])
    (result,), _ = _run(config)
    assert result.queued == 1
    out = read_ndjson(tmp_path / "out" / "acme.ndjson")
    versions = [(a["id"], a["lastUpdateDateTime"]) for a in out if a["id"] == alerts[2]["id"]]
    assert len(versions) == 2 and versions[1][1] == update["lastUpdateDateTime"]


def test_cursor_advances_to_high_water_mark_and_restart_resumes(tmp_path: Path) -> None:
    alerts = make_alerts(6, TENANT, T0, timedelta(minutes=10), seed=3)
    replay = write_replay(tmp_path / "replay", [alerts])
    config = _config(tmp_path, replay, overlap="15m")
    _run(config)
    store = SQLiteStore(tmp_path / "state.db")
    cursor = store.cursor(TENANT, "graph_alerts")
    store.close()
    assert cursor == T0 + timedelta(minutes=50)
    # Alerts older than cursor - overlap are not read again at all.
    (result,), _ = _run(config)
    assert result.read == 2 and result.duplicates == 2


def test_malformed_alert_is_dead_lettered_and_the_rest_of_the_page_goes_on(tmp_path: Path) -> None:
    alerts = make_alerts(4, TENANT, T0, timedelta(minutes=1), seed=4)
    broken = dict(alerts[1], lastUpdateDateTime="not a date")
    no_id = {k: v for k, v in alerts[2].items() if k != "id"}
    replay = write_replay(tmp_path / "replay", [[alerts[0], broken, no_id, alerts[3], "not an object"]])
    (result,), _ = _run(_config(tmp_path, replay))
    assert (result.queued, result.dead, result.error) == (2, 3, None)
    out = read_ndjson(tmp_path / "out" / "acme.ndjson")
    assert [a["id"] for a in out] == [alerts[0]["id"], alerts[3]["id"]]
    store = SQLiteStore(tmp_path / "state.db")
    reasons = sorted(d.reason for d in store.dead_letters())
    store.close()
    assert len(reasons) == 3 and all(r.startswith("normalise: ") for r in reasons)
    assert any("lastUpdateDateTime" in r for r in reasons) and any("id" in r for r in reasons)


def test_routes_by_severity_and_service_source(tmp_path: Path) -> None:
    alerts = make_alerts(40, TENANT, T0, timedelta(minutes=1), seed=5)
    replay = write_replay(tmp_path / "replay", [alerts])
    config = write_config(
        tmp_path / "forwarder.toml",
        {
            "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
            "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
            "sinks.high": {"type": "file", "path": str(tmp_path / "high.ndjson"), "format": "raw"},
            "sinks.mde": {"type": "file", "path": str(tmp_path / "mde.ndjson"), "format": "raw"},
        },
        routes=[
            {"tenants": ["ac*"], "sinks": ["high"], "min_severity": "high"},
            {"tenants": ["*"], "sinks": ["mde"], "service_sources": ["microsoftDefenderForEndpoint"]},
        ],
    )
    _run(config)
    high = read_ndjson(tmp_path / "high.ndjson")
    mde = read_ndjson(tmp_path / "mde.ndjson")
    assert high and {a["severity"].lower() for a in high} <= {"high", "unknown", "unknownfuturevalue"}
    assert len(high) == sum(1 for a in alerts if a["severity"].lower() == "high")
    assert mde and all(a["serviceSource"].lower() == "microsoftdefenderforendpoint" for a in mde)


def test_full_outbox_pauses_polling_and_loses_nothing(tmp_path: Path) -> None:
    alerts = make_alerts(12, TENANT, T0, timedelta(minutes=1), seed=6)
    replay = write_replay(tmp_path / "replay", [alerts])
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    config = write_config(
        tmp_path / "forwarder.toml",
        {
            "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "page_size": 5,
                          "once_deadline": "1s"},
            "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
            # A directory where the file should be: the sink fails on every write.
            "sinks.all": {"type": "file", "path": str(blocked), "format": "raw", "max_outbox": 5},
        },
    )
    (result,), forwarder = _run(config)
    assert result.paused and result.queued == 5
    assert forwarder.workers["all"].fatal is not None
    store = SQLiteStore(tmp_path / "state.db")
    assert store.outbox_depth("all") == 5 and store.cursor(TENANT, "graph_alerts") is None
    store.close()
    # The destination is fixed: everything arrives, nothing was dropped.
    blocked.rmdir()
    for _ in range(4):
        _run(config)
    assert sorted(a["id"] for a in read_ndjson(blocked)) == sorted(a["id"] for a in alerts)


def test_demo_readme_command_twice(tmp_path: Path) -> None:
    shutil.copytree(REPO / "examples", tmp_path / "examples")
    first = run_cli("run", "--once", "--config", "examples/demo.toml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    files = sorted((tmp_path / "demo-out").glob("*.ndjson"))
    assert {f.name.split(".")[0] for f in files} == {"contoso", "fabrikam", "northwind"}
    counts = {f.name: len(read_ndjson(f)) for f in files}
    assert all(counts.values())
    for tenant in ("contoso", "fabrikam", "northwind"):
        assert tenant in first.stderr
        # Its incidents too (the raw copy: medium and above), contoso's merged one with its link.
        incidents = [r for r in read_ndjson(tmp_path / "demo-out" / f"{tenant}.raw.ndjson") if "alertIds" in r]
        assert incidents and all(r["alertIds"] for r in incidents)
        # and in the archive, every one as an OCSF Incident Finding (class 2005)
        archived = read_ndjson(tmp_path / "demo-out" / f"{tenant}.ocsf.ndjson")
        assert sum(r["class_uid"] == 2005 for r in archived) >= len(incidents)
    assert any(r.get("redirectIncidentId") for r in read_ndjson(tmp_path / "demo-out" / "contoso.raw.ndjson"))
    store = SQLiteStore(tmp_path / "demo-out" / "forwarder.db")
    assert store.dead_letters() == []
    store.close()
    second = run_cli("run", "--once", "--config", "examples/demo.toml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert {f.name: len(read_ndjson(f)) for f in files} == counts


def test_unpaired_surrogate_and_huge_description_do_not_stop_the_page(tmp_path: Path) -> None:
    alerts = make_alerts(3, TENANT, T0, timedelta(minutes=1), seed=7)
    alerts[0]["title"] = "bad \ud800 title"  # valid JSON escape, invalid Unicode
    alerts[1]["description"] = "A" * 10_000_000 + "\x00\x1b[31m\r\nCEF:0|injected"
    replay = write_replay(tmp_path / "replay", [alerts])
    (result,), _ = _run(_config(tmp_path, replay))
    assert result.error is None and result.read == 3
    out = {a["id"]: a for a in read_ndjson(tmp_path / "out" / "acme.ndjson")}
    assert alerts[2]["id"] in out
    assert out[alerts[1]["id"]]["description"] == alerts[1]["description"]
    store = SQLiteStore(tmp_path / "state.db")
    dead = store.dead_letters()
    store.close()
    assert alerts[0]["id"] in out or [d.version_key for d in dead] == [alerts[0]["id"]]
    assert result.queued + result.dead == 3


def test_deeply_nested_alert_data_reaches_every_format(tmp_path: Path) -> None:
    alerts = make_alerts(2, TENANT, T0, timedelta(minutes=1), seed=9)
    deep: object = "bottom"
    for _ in range(1_010):  # parsers accept 1,024 levels; orjson writes 254, the stdlib ~1,000
        deep = [deep]
    alerts[0]["additionalData"] = {"nested": deep}
    replay = write_replay(tmp_path / "replay", [alerts])
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
        "sinks.raw": {"type": "file", "path": str(tmp_path / "raw.ndjson"), "format": "raw"},
        "sinks.cef": {"type": "file", "path": str(tmp_path / "cef.log"), "format": "cef"},
    })
    (result,), _ = _run(config)
    assert (result.queued, result.dead) == (2, 0)
    forwarded = (tmp_path / "raw.ndjson").read_bytes().splitlines()
    # (compared as JSON text: `==` on 1,010 nested lists would itself exceed the recursion limit)
    assert jsonutil.dumps(jsonutil.loads(forwarded[0])["additionalData"]) == jsonutil.dumps({"nested": deep})
    assert len((tmp_path / "cef.log").read_text().splitlines()) == 2


def test_a_format_that_fails_costs_that_alert_in_that_sink_only() -> None:
    good, bad = (normalise(raw, REF, T0) for raw in make_alerts(2, TENANT, T0, timedelta(minutes=1), seed=10))

    def fragile(alert: Alert) -> bytes:
        if alert.id == bad.id:
            raise ValueError("no room for this one")
        return alert.id.encode()

    encoders = {"lake": ocsf.encode, "strict": fragile}
    queued, dead = encode_for_sinks(good, {"lake", "strict"}, encoders)
    assert [(sink, body) for sink, _, body in queued] == [("lake", ocsf.encode(good)), ("strict", good.id.encode())]
    queued, dead = encode_for_sinks(bad, {"lake", "strict"}, encoders)
    assert [sink for sink, _, _ in queued] == ["lake"] and queued[0][1] == EventMeta.of(bad)
    (letter,) = dead
    assert (letter.stage, letter.sink, letter.version_key) == ("encode", "strict", bad.version_key)
    assert letter.reason == "encode: ValueError: no room for this one"
    assert json.loads(letter.payload) == bad.raw


def test_first_sight_is_marked_once_per_alert_across_runs(tmp_path: Path) -> None:
    alerts = make_alerts(2, TENANT, T0, timedelta(minutes=1), seed=8)
    replay = write_replay(tmp_path / "replay", [alerts])
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
        "sinks.ocsf": {"type": "file", "path": str(tmp_path / "ocsf.ndjson"), "format": "ocsf"},
    })
    _run(config)
    write_replay(replay, [alerts, [updated_version(alerts[0], T0 + timedelta(hours=3), status="inProgress")]])
    _run(config)
    store = SQLiteStore(tmp_path / "state.db")
    assert store.known(TENANT, [a["id"] for a in alerts] + ["never-seen"]) == {a["id"] for a in alerts}
    store.close()
    findings = read_ndjson(tmp_path / "ocsf.ndjson")
    assert [f["finding_info"]["uid"] for f in findings] == [alerts[0]["id"], alerts[1]["id"], alerts[0]["id"]]
    # alerts[1] is first seen inProgress: still the finding's Create; alerts[0]'s second version is its Update.
    assert [f["type_uid"] for f in findings] == [200401, 200401, 200402]
    assert [f["activity_name"] for f in findings] == ["Create", "Create", "Update"]


def test_an_alert_one_sink_cannot_take_counts_once_per_tenant_and_as_that_sinks_dead_letter(tmp_path: Path) -> None:
    alerts = make_alerts(2, TENANT, T0, timedelta(minutes=1), seed=11)
    deep: object = "bottom"
    for _ in range(1_010):  # raw writes it back; ECS's encoder stops at the recursion limit
        deep = [deep]
    alerts[0]["additionalData"] = {"nested": deep}
    replay = write_replay(tmp_path / "replay", [alerts])
    config = write_config(tmp_path / "forwarder.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT, "replay": str(replay)},
        "sinks.raw": {"type": "file", "path": str(tmp_path / "raw.ndjson"), "format": "raw"},
        "sinks.ecs": {"type": "file", "path": str(tmp_path / "ecs.ndjson"), "format": "ecs"},
    })
    (result,), forwarder = _run(config)
    assert (result.read, result.queued, result.dead) == (2, 2, 0)  # each alert once: it reached a sink
    assert forwarder.workers["ecs"].stats.dead == 1 and forwarder.workers["raw"].stats.dead == 0
    assert len(read_ndjson(tmp_path / "ecs.ndjson")) == 1


def test_one_file_for_every_tenant_gets_every_line_of_a_batch_in_order(tmp_path: Path) -> None:
    path = tmp_path / "all.ndjson"
    sink = FileConnector("archive", FileSinkConfig(path=str(path), fsync=False))
    labels = ["acme", "globex", "acme", "initech", "globex"]
    batch = [Event(i, EventMeta(f"t-{label}", label, f"a{i}", f"t-{label}/a{i}/x", 5, 0.0), b'{"n":%d}' % i)
             for i, label in enumerate(labels)]
    asyncio.run(sink.send(batch))
    assert path.read_bytes().splitlines() == [b'{"n":%d}' % i for i in range(5)]
