"""The command line as an operator uses it: exit codes, help speed, tables, convert, dead letters."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import REPO, SHARED_SAMPLES, CloudSetup, read_ndjson, recent, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts, updated_version


def test_help_is_fast_and_imports_no_connector_or_sdk() -> None:
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from core.app.cli import build_parser; build_parser().format_help()\n"
        "print(time.perf_counter() - t); print(','.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    seconds, modules = out.stdout.splitlines()
    assert float(seconds) < 0.5
    loaded = set(modules.split(","))
    assert not {"httpx", "msal", "pydantic", "connectors.file", "rich"} & loaded
    started = time.perf_counter()
    result = run_cli("--help")
    assert result.returncode == 0 and "consent-url" in result.stdout
    assert time.perf_counter() - started < 2.0  # includes interpreter start-up on a loaded CI box


def test_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {
        "tenants.a": {"tenant_id": "22222222-2222-4222-8222-222222222222", "replay": "x"},
        "sinks.out": {"type": "file", "formt": "raw"},
    })
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 2
    assert "sinks.out.formt: unknown key" in result.stderr
    missing = run_cli("run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such config file" in missing.stderr


def test_usage_error_exits_2() -> None:
    assert run_cli("run", "--bogus").returncode == 2


def _replay_config(tmp_path: Path, n: int = 5, extra: dict | None = None) -> Path:
    tenant_id = "66666666-6666-4666-8666-666666666666"
    alerts = make_alerts(n, tenant_id, recent(300), timedelta(minutes=1), seed=9)
    replay = write_replay(tmp_path / "replay", [alerts])
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": tenant_id, "replay": str(replay)},
        "sinks.out": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson"), "format": "ocsf",
                      **(extra or {})},
    })


def test_second_concurrent_run_exits_3(tmp_path: Path) -> None:
    from core.state.sqlite import StateLock

    config = _replay_config(tmp_path)
    lock = StateLock(tmp_path / "state.db")
    lock.acquire()
    try:
        result = run_cli("run", "--once", "--config", str(config))
    finally:
        lock.release()
    assert result.returncode == 3 and "another defender-forwarder run" in result.stderr


def test_tenants_table_shows_cursor_and_outbox(tmp_path: Path) -> None:
    config = _replay_config(tmp_path)
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    table = run_cli("tenants", "--config", str(config))
    assert table.returncode == 0
    row = next(line for line in table.stdout.splitlines() if "acme" in line)
    cells = [cell.strip() for cell in row.strip("│ ").split("│")]
    label, tenant_id, health, sources, cursor, lag, last_success, last_error, held_back, outbox = cells
    assert (label, tenant_id, health, last_error, held_back, outbox) == (
        "acme", "66666666-6666-4666-8666-666666666666", "ok", "-", "-", "0")
    assert sources == f"graph_alerts ok {last_success}"  # each source, its health and last success
    assert cursor == recent(296).strftime("%Y-%m-%d %H:%M:%S") and lag.endswith("m") and last_success != "-"


def test_consent_url(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("acme")
    result = run_cli("consent-url", "--tenant", "acme", "--config", str(setup.write()))
    assert result.returncode == 0
    assert result.stdout.strip() == f"{setup.cloud.base_url}/{tenant_id}/adminconsent?client_id=11111111-1111-4111-8111-111111111111"
    assert run_cli("consent-url", "--tenant", "nobody", "--config", str(setup.write())).returncode == 2


def test_check_reports_tokens_one_alert_and_sinks(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("good")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(30), timedelta(minutes=1)))
    setup.tenant("noconsent", consent=False)
    result = run_cli("check", "--config", str(setup.write()))
    assert result.returncode == 1, result.stderr
    good = next(line for line in result.stderr.splitlines() if "good" in line)
    assert "ok" in good and "read 1 alert" in good
    assert "AADSTS700016" in result.stderr
    assert any("archive" in line and "ok" in line for line in result.stderr.splitlines())
    assert not list((setup.tmp / "out").glob("*.ndjson"))  # check delivers nothing


@pytest.mark.skipif(not SHARED_SAMPLES.exists(), reason="../shared/samples is not beside the repo")
def test_convert_graph_list_response_to_ocsf_and_raw() -> None:
    sample = SHARED_SAMPLES / "graph_alerts_v2_list_docs.json"
    expected = json.loads(sample.read_text())["value"]
    for fmt in ("ocsf", "raw"):
        result = run_cli("convert", "--source", "graph", "--format", fmt, str(sample))
        assert result.returncode == 0, result.stderr
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(lines) == len(expected)
    ocsf = json.loads(run_cli("convert", "--format", "ocsf", str(sample)).stdout.splitlines()[0])
    assert ocsf["class_uid"] == 2004 and ocsf["finding_info"]["uid"] == expected[0]["id"]


def test_convert_refuses_an_unknown_format() -> None:
    result = run_cli("convert", "--format", "leef", "-")
    assert result.returncode == 2 and "unknown format 'leef'" in result.stderr


def test_convert_to_every_format_one_line_per_alert(tmp_path: Path) -> None:
    from mappings import AVAILABLE_FORMATS
    from tests.cef_parser import parse

    alerts = make_alerts(4, "77777777-7777-4777-8777-777777777777", recent(10), timedelta(minutes=1), seed=5)
    source = tmp_path / "page.json"
    source.write_text(json.dumps({"value": alerts}))
    for fmt in AVAILABLE_FORMATS:
        result = run_cli("convert", "--format", fmt, str(source))
        assert result.returncode == 0, (fmt, result.stderr)
        lines = result.stdout.splitlines()
        assert len(lines) == 4, fmt
        if fmt == "cef":
            assert [parse(line).extension["cs3"] for line in lines] == [a["id"] for a in alerts]
        else:
            assert all(isinstance(json.loads(line), dict) for line in lines)


def test_convert_writes_the_same_bytes_for_the_same_input(tmp_path: Path) -> None:
    """The ingestion time of a converted alert is its own lastUpdateDateTime, or --ingested,
    never the wall clock: a second run writes the same bytes in every format."""
    from mappings import AVAILABLE_FORMATS

    alerts = make_alerts(3, "77777777-7777-4777-8777-777777777777", recent(10), timedelta(minutes=1), seed=9)
    source = tmp_path / "page.json"
    source.write_text(json.dumps({"value": alerts}))
    for fmt in AVAILABLE_FORMATS:
        first, second = (run_cli("convert", "--format", fmt, str(source)) for _ in range(2))
        assert first.returncode == second.returncode == 0, (fmt, first.stderr)
        assert first.stdout == second.stdout, fmt
    ecs = [json.loads(line) for line in run_cli("convert", "--format", "ecs", str(source)).stdout.splitlines()]
    assert [doc["defender_forwarder"]["ingested"] for doc in ecs] == [doc["@timestamp"] for doc in ecs]
    given = run_cli("convert", "--format", "ecs", "--ingested", "2026-11-01T12:00:00Z", str(source))
    assert {json.loads(line)["defender_forwarder"]["ingested"] for line in given.stdout.splitlines()} == {
        "2026-11-01T12:00:00.000Z"}
    wrong = run_cli("convert", "--format", "ecs", "--ingested", "yesterday", str(source))
    assert wrong.returncode == 2 and "--ingested: 'yesterday' is not an ISO date" in wrong.stderr
    assert "Traceback" not in wrong.stderr


def test_convert_ndjson_with_a_bad_alert_writes_the_good_ones_then_exits_1(tmp_path: Path) -> None:
    alerts = make_alerts(3, "77777777-7777-4777-8777-777777777777", recent(10), timedelta(minutes=1))
    bad = dict(alerts[1])
    del bad["lastUpdateDateTime"]
    lines = [json.dumps(alerts[0]), json.dumps(bad), "{not json", json.dumps({"value": [alerts[2]]}),
             json.dumps({"value": []})]
    source = tmp_path / "alerts.ndjson"
    source.write_text("\n".join(lines) + "\n")
    result = run_cli("convert", "--format", "raw", str(source))
    assert result.returncode == 1
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == [alerts[0]["id"], alerts[2]["id"]]
    assert f"line 2 (id {bad['id']})" in result.stderr and "lastUpdateDateTime" in result.stderr
    assert "line 3" in result.stderr


def test_dead_letters_list_replay_drop(tmp_path: Path) -> None:
    from datetime import datetime, timezone

    from core.model.schema import EventMeta, TenantRef
    from core.state import DeadLetter, PageCommit
    from core.state.sqlite import SQLiteStore
    from mappings import ocsf
    from mappings.graph_alerts_v2 import normalise

    tenant_id = "66666666-6666-4666-8666-666666666666"
    config = _replay_config(tmp_path, n=3)
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    out_file = tmp_path / "out" / "acme.ndjson"
    assert len(read_ndjson(out_file)) == 3
    rejected = make_alerts(1, tenant_id, recent(5), timedelta(minutes=1), seed=77)[0]
    alert = normalise(rejected, TenantRef(id=tenant_id, label="acme"), datetime.now(timezone.utc))
    store = SQLiteStore(tmp_path / "state.db")
    store.commit_page(PageCommit(tenant_id, "graph_alerts", dead=[
        DeadLetter("deliver", "out", tenant_id, alert.version_key, ocsf.encode(alert), "rejected by SIEM",
                   EventMeta.of(alert)),
        DeadLetter("normalise", None, tenant_id, None, json.dumps({"id": "x"}).encode(), "normalise: bad"),
    ]))
    store.close()
    listed = run_cli("dead-letters", "list", "--config", str(config))
    assert listed.returncode == 0 and "2 dead letters" in listed.stdout
    assert "rejected by SIEM" in listed.stdout and "normalise: bad" in listed.stdout

    replay = run_cli("dead-letters", "replay", "--config", str(config))
    assert replay.returncode == 1 and "replayed 1" in replay.stderr and "1 still fail" in replay.stderr
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    assert [a["finding_info"]["uid"] for a in read_ndjson(out_file)][-1] == rejected["id"]

    dropped = run_cli("dead-letters", "drop", "--all", "--yes", "--config", str(config))
    assert dropped.returncode == 0 and "dropped 1" in dropped.stderr
    assert "0 dead letters" in run_cli("dead-letters", "list", "--config", str(config)).stdout


def test_backfill_rereads_history_with_progress(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("acme")
    setup.cloud.add_alerts(tenant_id, make_alerts(6, tenant_id, recent(60 * 24 * 10), timedelta(hours=1)))
    setup.forwarder["initial_lookback"] = "1h"
    config = setup.write()
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    assert read_ndjson(setup.out("acme")) == []
    since = recent(60 * 24 * 11).strftime("%Y-%m-%d")
    result = run_cli("backfill", "--since", since, "--tenant", "acme", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "acme: alerts read" in result.stderr
    assert len(read_ndjson(setup.out("acme"))) == 6
    assert run_cli("backfill", "--since", "yesterday", "--config", str(config)).returncode == 2


def test_backfill_does_not_resend_what_was_forwarded_unless_resend(setup: CloudSetup) -> None:
    """Past the overlap window the seen versions are pruned; backfill still knows which
    version of each alert was forwarded, and re-sends only with --resend."""
    tenant_id = setup.tenant("acme")
    alerts = make_alerts(6, tenant_id, recent(60 * 24 * 10), timedelta(hours=1))
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.forwarder["initial_lookback"] = "11d"
    config = setup.write()
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    assert len(read_ndjson(setup.out("acme"))) == 6
    since = recent(60 * 24 * 11).strftime("%Y-%m-%d")
    again = run_cli("backfill", "--since", since, "--config", str(config))
    assert again.returncode == 0, again.stderr
    assert len(read_ndjson(setup.out("acme"))) == 6  # each version was forwarded already
    assert re.search(r"acme\s*│\s*6\s*│\s*0\s*│\s*6", again.stderr), again.stderr  # read 6, new 0, duplicates 6

    updated = updated_version(alerts[0], recent(60 * 24 * 9), status="resolved")
    setup.cloud.add_alerts(tenant_id, [updated])  # a newer version of a forwarded alert: sent
    assert run_cli("backfill", "--since", since, "--config", str(config)).returncode == 0
    forwarded = read_ndjson(setup.out("acme"))
    assert len(forwarded) == 7 and forwarded[-1]["id"] == alerts[0]["id"]

    resent = run_cli("backfill", "--since", since, "--resend", "--config", str(config))
    assert resent.returncode == 0, resent.stderr
    assert len(read_ndjson(setup.out("acme"))) == 7 + 6


def test_daemon_polls_every_interval_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    import os
    import signal

    tenant_id = "66666666-6666-4666-8666-666666666666"
    alerts = make_alerts(6, tenant_id, recent(300), timedelta(minutes=1), seed=21)
    replay = write_replay(tmp_path / "replay", [alerts[:3]])
    config = write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "poll_interval": "0.5s",
                      "log_format": "json"},
        "tenants.acme": {"tenant_id": tenant_id, "replay": str(replay)},
        "sinks.out": {"type": "file", "path": str(tmp_path / "out.ndjson"), "format": "raw",
                      "batch_timeout": "0.1s"},
    })
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--config", str(config)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 3)
        write_replay(replay, [alerts[:3], alerts[3:]])  # new alerts arrive while it runs
        _wait_for(lambda: len(read_ndjson(tmp_path / "out.ndjson")) == 6)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any("forwarding 1 tenants to 1 sinks" in entry["message"] for entry in logs)
    assert all({"time", "level", "logger", "message"} <= entry.keys() for entry in logs)


def _wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)
