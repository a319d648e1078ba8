"""Dead letters an operator can inspect and not lose by accident: `show`, a guarded `drop`,
unknown names refused, tenant labels in lists, and a run that says it dead-lettered."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from tests.helpers import CloudSetup, read_ndjson, recent, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts, make_incidents

TENANT_ID = "66666666-6666-4666-8666-666666666666"


def _config(tmp_path: Path, alerts: list[dict] | None = None) -> Path:
    replay = write_replay(tmp_path / "replay", [alerts or make_alerts(2, TENANT_ID, recent(300),
                                                                        timedelta(minutes=1), seed=3)])
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
        "sinks.out": {"type": "file", "path": str(tmp_path / "out.ndjson"), "format": "ocsf"},
        "sinks.other": {"type": "file", "path": str(tmp_path / "other.ndjson"), "format": "raw"},
    })


def _with_dead_letters(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A config whose state holds a delivery dead letter of sink `out` and a normalisation one;
    returns their ids by stage."""
    from core.model.schema import EventMeta, TenantRef
    from core.state import DeadLetter, PageCommit
    from core.state.sqlite import SQLiteStore
    from mappings import ocsf
    from mappings.graph_alerts_v2 import normalise

    config = _config(tmp_path)
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    rejected = make_alerts(1, TENANT_ID, recent(5), timedelta(minutes=1), seed=77)[0]
    alert = normalise(rejected, TenantRef(id=TENANT_ID, label="acme"), datetime.now(timezone.utc))
    store = SQLiteStore(tmp_path / "state.db")
    store.commit_page(PageCommit(TENANT_ID, "graph_alerts", dead=[
        DeadLetter("deliver", "out", TENANT_ID, alert.version_key, ocsf.encode(alert), "rejected by SIEM: too big",
                   EventMeta.of(alert)),
        DeadLetter("normalise", None, TENANT_ID, None, json.dumps({"id": "x-1"}).encode(), "normalise: no time"),
    ]))
    ids = {d.stage: d.id for d in store.dead_letters()}
    store.close()
    return config, ids


def test_show_prints_the_alert_the_sink_the_stage_and_the_reason(tmp_path: Path) -> None:
    config, ids = _with_dead_letters(tmp_path)
    shown = run_cli("dead-letters", "show", str(ids["deliver"]), "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    for words in ("sink: out", "stage: deliver", "reason: rejected by SIEM: too big", "tenant: acme",
                  '"class_uid"'):
        assert words in shown.stdout, shown.stdout
    raw = run_cli("dead-letters", "show", str(ids["normalise"]), "--config", str(config))
    assert raw.returncode == 0 and "stage: normalise" in raw.stdout and '"x-1"' in raw.stdout
    assert "sink: -" in raw.stdout


def test_an_unknown_id_or_sink_is_an_error_naming_it(tmp_path: Path) -> None:
    config, _ = _with_dead_letters(tmp_path)
    for args, named in ((["show", "999"], "999"), (["list", "--id", "999"], "999"), (["drop", "--id", "999"], "999"),
                        (["list", "--sink", "nosuch"], "nosuch"), (["replay", "--sink", "nosuch"], "nosuch")):
        result = run_cli("dead-letters", *args, "--config", str(config))
        assert result.returncode == 2, (args, result.stderr)
        assert named in result.stderr and "Traceback" not in result.stderr
    # a configured sink without dead letters is no error: it has none
    other = run_cli("dead-letters", "list", "--sink", "other", "--config", str(config))
    assert other.returncode == 0 and "0 dead letters" in other.stdout
    assert run_cli("dead-letters", "show", "--config", str(config)).returncode == 2  # show needs its ID


def test_drop_without_a_filter_needs_all_and_a_confirmation(tmp_path: Path) -> None:
    config, ids = _with_dead_letters(tmp_path)
    bare = run_cli("dead-letters", "drop", "--config", str(config))
    assert bare.returncode == 2 and "--all" in bare.stderr
    unconfirmed = run_cli("dead-letters", "drop", "--all", "--config", str(config), input="y\n")  # not a terminal
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert "2 dead letters" in run_cli("dead-letters", "list", "--config", str(config)).stdout  # nothing lost
    one = run_cli("dead-letters", "drop", "--id", str(ids["normalise"]), "--config", str(config))
    assert one.returncode == 0 and "dropped 1" in one.stderr  # a filter picks what it drops: no question
    confirmed = run_cli("dead-letters", "drop", "--all", "--yes", "--config", str(config))
    assert confirmed.returncode == 0 and "dropped 1" in confirmed.stderr
    assert "0 dead letters" in run_cli("dead-letters", "list", "--config", str(config)).stdout


def test_lists_show_the_tenants_label(tmp_path: Path) -> None:
    config, _ = _with_dead_letters(tmp_path)
    listed = run_cli("dead-letters", "list", "--config", str(config))
    rows = [line for line in listed.stdout.splitlines() if "normalise: no time" in line or "rejected by" in line]
    assert len(rows) == 2 and all("acme" in row for row in rows), listed.stdout


def test_a_run_that_dead_letters_warns_where_to_look(tmp_path: Path) -> None:
    alerts = make_alerts(3, TENANT_ID, recent(300), timedelta(minutes=1), seed=4)
    del alerts[1]["lastUpdateDateTime"]  # refused by the mapping: a dead letter of no sink
    config = _config(tmp_path, alerts)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr  # README: dead letters alone are not a failure
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "dead letter" in line]
    assert len(warnings) == 1, result.stderr
    assert "1 alert" in warnings[0] and "defender-forwarder dead-letters list" in warnings[0]
    again = run_cli("run", "--once", "--config", str(config))  # nothing new dead-lettered: no warning
    assert not [line for line in again.stderr.splitlines() if "WARNING" in line and "dead letter" in line]


def test_the_daemon_warns_of_each_cycles_dead_letters(tmp_path: Path) -> None:
    import signal
    import time

    from tests.helpers import daemon, read_ndjson, until

    alerts = make_alerts(3, TENANT_ID, recent(300), timedelta(minutes=1), seed=6)
    del alerts[0]["lastUpdateDateTime"]
    config = _config(tmp_path, alerts)
    config.write_text(config.read_text().replace('initial_lookback = "3650d"',
                                                 'initial_lookback = "3650d"\npoll_interval = "0.3s"'))
    forwarder = daemon(config)
    try:
        until(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 2, forwarder)
        time.sleep(1.5)  # a few more cycles: the overlap re-reads the bad alert, already filed
    finally:
        forwarder.send_signal(signal.SIGTERM)
        output, _ = forwarder.communicate(timeout=20)
    warnings = [line for line in output.splitlines() if "WARNING" in line and "dead letter" in line]
    assert len(warnings) == 1 and "defender-forwarder dead-letters list" in warnings[0], output


def test_an_incidents_dead_letter_is_replayed_with_the_incident_mapping(setup: CloudSetup) -> None:
    """A dead letter remembers its source: `replay` normalises it again with that source's
    mapping. The incident mapping still refuses a priorityScore "x" (the alerts mapping would
    take the incident for an alert), and it stays."""
    tenant_id = setup.tenant("acme")
    alerts = make_alerts(2, tenant_id, recent(60), timedelta(minutes=1), seed=8)
    setup.cloud.add_alerts(tenant_id, alerts)
    [incident, *_] = incidents = make_incidents(alerts[:1])
    incident["priorityScore"] = "x"
    setup.cloud.add_incidents(tenant_id, incidents)
    setup.tenant_keys["acme"] = {"sources": ["graph_alerts", "graph_incidents"]}
    config = str(setup.write())
    assert run_cli("run", "--once", "--config", config).returncode == 0

    listed = json.loads(run_cli("dead-letters", "list", "--output", "json", "--config", config).stdout)
    assert [(row["stage"], row["source"]) for row in listed] == [("normalise", "graph_incidents")]
    assert "priorityScore" in listed[0]["reason"]
    shown = run_cli("dead-letters", "show", str(listed[0]["id"]), "--config", config)
    assert "source: graph_incidents" in shown.stdout, shown.stdout
    replay = run_cli("dead-letters", "replay", "--config", config)
    assert replay.returncode == 1 and "replayed 0" in replay.stderr and "1 still fail" in replay.stderr
    assert run_cli("run", "--once", "--config", config).returncode == 0
    assert incident["id"] not in {row["id"] for row in read_ndjson(setup.out("acme"))}


def test_an_incidents_encode_dead_letter_is_replayed_as_an_incident(setup: CloudSetup) -> None:
    from core.state import DeadLetter, PageCommit
    from core.state.sqlite import SQLiteStore

    tenant_id = setup.tenant("acme")
    setup.tenant_keys["acme"] = {"sources": ["graph_incidents"]}
    config = str(setup.write())
    [incident] = make_incidents(make_alerts(1, tenant_id, recent(60), timedelta(minutes=1), seed=9))
    store = SQLiteStore(setup.state)
    store.commit_page(PageCommit(tenant_id, "graph_incidents", dead=[
        DeadLetter("encode", "archive", tenant_id, None, json.dumps(incident).encode(), "encode: a bug since fixed",
                   source="graph_incidents")]))
    store.close()

    replay = run_cli("dead-letters", "replay", "--config", config)
    assert replay.returncode == 0 and "replayed 1" in replay.stderr, replay.stderr
    store = SQLiteStore(setup.state)
    [row] = store.outbox_batch("archive", 10)
    store.close()
    assert row.meta.kind == "incident" and json.loads(row.payload)["id"] == incident["id"]


def test_an_mde_alerts_dead_letter_is_replayed_with_the_mde_mapping(tmp_path: Path) -> None:
    """An MDE API alert (lastUpdateTime, not Graph's lastUpdateDateTime: the alerts mapping would
    refuse it) filed by mde_alerts is normalised again by the MDE mapping, and forwarded."""
    from core.state import DeadLetter, PageCommit
    from core.state.sqlite import SQLiteStore
    from tests.peers.fake_mde import mde_alert

    config = _config(tmp_path)
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    graph = make_alerts(1, TENANT_ID, recent(5), timedelta(minutes=1), seed=78)[0]
    store = SQLiteStore(tmp_path / "state.db")
    store.commit_page(PageCommit(TENANT_ID, "mde_alerts", dead=[DeadLetter(
        "normalise", None, TENANT_ID, graph["id"], json.dumps(mde_alert(graph, expand=True)).encode(),
        "normalise: a mapping bug since fixed", source="mde_alerts")]))
    store.close()

    replay = run_cli("dead-letters", "replay", "--config", str(config))
    assert replay.returncode == 0 and "replayed 1" in replay.stderr, replay.stderr
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    [sent] = [row for row in read_ndjson(tmp_path / "out.ndjson") if row["finding_info"]["uid"] == graph["id"]]
    assert sent["metadata"]["product"]["feature"]["name"] == "WindowsDefenderAtp"  # MDE's detectionSource
