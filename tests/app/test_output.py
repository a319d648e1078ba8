"""Output for people and for machines: `--output table|json` on every listing, tables that never
split an id when stdout is not a terminal, JSON logs with the tenant, sink and alert id as keys,
and the daemon's one line per cycle."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from tests.helpers import REPO, CloudSetup, read_ndjson, recent, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts

TENANT_ID = "66666666-6666-4666-8666-666666666666"
BOX = set("│─┃━┏┓┗┛┡┩└┘┌┐├┤┬┴┼╇╈")


def _config(tmp_path: Path, alerts: list[dict[str, Any]], forwarder: dict[str, Any] | None = None,
            tenants: dict[str, dict[str, Any]] | None = None) -> Path:
    replay = write_replay(tmp_path / "replay", [alerts])
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", **(forwarder or {})},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
        **(tenants or {}),
        "sinks.out": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson"), "format": "raw",
                      "batch_timeout": "0.1s"},
    })


def _alerts(n: int, seed: int = 5) -> list[dict[str, Any]]:
    return make_alerts(n, TENANT_ID, recent(300), timedelta(minutes=1), seed=seed)


def _refused(seed: int) -> dict[str, Any]:
    """An alert the mapping refuses: it becomes a normalisation dead letter."""
    alert = make_alerts(1, TENANT_ID, recent(200), timedelta(minutes=1), seed=seed)[0]
    alert["createdDateTime"] = "garbage"
    return alert


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ---- --output json ------------------------------------------------------------------------
def test_run_once_output_json_prints_the_summary_document_on_stdout(tmp_path: Path) -> None:
    config = _config(tmp_path, [*_alerts(3), _refused(8)])
    result = run_cli("run", "--once", "--output", "json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["tenants"] == [{"tenant": "acme", "tenant_id": TENANT_ID, "read": 4, "new_versions": 3,
                                   "duplicates": 0, "held_back": {}, "dead_letters": 1, "status": "ok"}]
    assert summary["sinks"] == [{"sink": "out", "delivered": 3, "dead_letters": 0, "pending": 0, "status": "ok"}]


def test_tenants_output_json_is_one_object_per_tenant(tmp_path: Path) -> None:
    config = _config(tmp_path, _alerts(3))
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    result = run_cli("tenants", "--output", "json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [row] = json.loads(result.stdout)
    assert set(row) == {"tenant", "tenant_id", "sources", "health", "health_reason", "cursor", "lag_seconds",
                        "last_success", "last_error", "per_source", "held_back", "outbox", "instance"}
    assert row["instance"] is None  # a SQLite state: one process, no leases
    assert (row["health"], row["health_reason"]) == ("ok", None)
    [source] = row["per_source"]
    assert set(source) == {"source", "health", "health_reason", "cursor", "lag_seconds", "last_success",
                           "last_error", "forwarded_total"}
    assert (source["source"], source["health"], source["forwarded_total"]) == ("graph_alerts", "ok", 3)
    assert (row["tenant"], row["tenant_id"], row["last_error"], row["held_back"], row["outbox"]) == (
        "acme", TENANT_ID, None, {}, {"out": 0})
    assert row["cursor"].endswith("Z") and row["last_success"].endswith("Z") and row["lag_seconds"] >= 0


def test_dead_letters_list_output_json(tmp_path: Path) -> None:
    config = _config(tmp_path, [*_alerts(2), _refused(9)])
    assert run_cli("run", "--once", "--config", str(config)).returncode == 0
    result = run_cli("dead-letters", "list", "--output", "json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    [letter] = json.loads(result.stdout)
    assert set(letter) == {"id", "created", "stage", "sink", "source", "tenant", "tenant_id", "version_key", "reason"}
    assert (letter["stage"], letter["sink"], letter["source"], letter["tenant"], letter["tenant_id"]) == (
        "normalise", None, "graph_alerts", "acme", TENANT_ID)
    assert "createdDateTime" in letter["reason"]


def test_check_output_json(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("good")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(30), timedelta(minutes=1)))
    result = run_cli("check", "--output", "json", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [(r["what"], r["name"], r["ok"]) for r in rows] == [("tenant", "good", True), ("sink", "archive", True)]
    assert "read 1 alert" in rows[0]["result"]


def test_output_takes_table_or_json_only(tmp_path: Path) -> None:
    config = _config(tmp_path, _alerts(1))
    result = run_cli("tenants", "--output", "yaml", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--output" in result.stderr


# ---- tables when stdout is not a terminal ------------------------------------------------------
def test_tables_never_split_a_guid_when_not_a_terminal(tmp_path: Path) -> None:
    config = _config(tmp_path, [*_alerts(2), _refused(10)])
    narrow = {"COLUMNS": "60"}
    run = run_cli("run", "--once", "--config", str(config), env=narrow)
    assert run.returncode == 0, run.stderr
    tenants = run_cli("tenants", "--config", str(config), env=narrow)
    dead = run_cli("dead-letters", "list", "--config", str(config), env=narrow)
    [letter] = json.loads(run_cli("dead-letters", "list", "--output", "json", "--config", str(config)).stdout)
    for result in (tenants, dead):
        assert result.returncode == 0, result.stderr
    assert any(TENANT_ID in line for line in tenants.stdout.splitlines()), tenants.stdout
    # The dead letters show the tenant's label; their long id is the alert's version.
    assert any(letter["version_key"] in line and "acme" in line for line in dead.stdout.splitlines()), dead.stdout
    assert any("acme" in line and "ok" in line for line in run.stderr.splitlines()), run.stderr


# ---- JSON logs -------------------------------------------------------------------------------
def test_json_logs_carry_tenant_and_alert_id_as_keys_and_no_table(tmp_path: Path) -> None:
    refused = _refused(11)
    config = _config(tmp_path, [*_alerts(2), refused], forwarder={"log_format": "json"},
                     tenants={"tenants.gone": {"tenant_id": "77777777-7777-4777-8777-777777777777",
                                               "replay": str(tmp_path / "missing")}})
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1
    assert not BOX & set(result.stderr), result.stderr
    lines = result.stderr.splitlines()
    logs = _json_lines(result.stderr)
    assert len(logs) == len(lines), result.stderr  # every line of the log stream is JSON
    failed = next(entry for entry in logs if entry.get("tenant") == "gone")
    assert failed["level"] == "error" and "does not exist" in failed["message"]
    dead = next(entry for entry in logs if entry.get("alert_id") == refused["id"])
    assert dead["tenant"] == "acme" and "createdDateTime" in dead["message"]


def test_json_logs_carry_the_sink_as_a_key(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink wants a folder")
    config = write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "log_format": "json",
                      "once_deadline": "1s"},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(write_replay(tmp_path / "replay", [_alerts(1)]))},
        "sinks.out": {"type": "file", "path": str(blocker / "x.ndjson"), "format": "raw",
                      "retry_initial": "0.05s", "retry_max": "0.1s"},
    })
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1
    sink_lines = [entry for entry in _json_lines(result.stderr) if entry.get("sink") == "out"]
    assert sink_lines and all(entry["level"] in ("warning", "error") for entry in sink_lines), result.stderr


# ---- the cycle line --------------------------------------------------------------------------
def test_daemon_logs_one_cycle_line_per_cycle_with_its_numbers_as_keys(tmp_path: Path) -> None:
    alerts = _alerts(5, seed=12)
    config = _config(tmp_path, [*alerts, _refused(13)], forwarder={"log_format": "json", "poll_interval": "0.5s"})
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--config", str(config)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(read_ndjson(tmp_path / "out" / "acme.ndjson")) < 5:
            assert time.monotonic() < deadline, "nothing delivered"
            time.sleep(0.05)
        time.sleep(1.6)  # a few more cycles, each logging what was delivered since the one before
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0
    cycles = [entry for entry in _json_lines(stderr) if entry["message"].startswith("cycle:")]
    assert len(cycles) >= 3 and all(entry["level"] == "info" for entry in cycles)
    first = cycles[0]
    assert (first["tenants_polled"], first["tenants_failed"], first["new_versions"]) == (1, 0, 5)
    assert first["message"].startswith("cycle: 1 tenants polled (0 failed), 5 new versions, delivered: out ")
    assert sum(entry["new_versions"] for entry in cycles) == 5
    assert sum(entry["delivered"]["out"] for entry in cycles) == 5
    # The refused alert is the first cycle's dead letter (re-read in the overlap, it is counted
    # again, as the run summary counts it; the state keeps it once).
    assert first["dead_letters"] == 1
    assert all(isinstance(entry["duration_s"], float) and entry["duration_s"] >= 0 for entry in cycles)


def test_json_logs_take_the_sink_or_tenant_a_line_starts_with_as_a_key(capsys: Any) -> None:
    import logging

    from core.app.logs import setup_logging

    setup_logging("info", as_json=True)
    try:
        log = logging.getLogger("defender_forwarder.test")
        log.warning("sink %s: tls_verify = false: the server's certificate is NOT checked", "siem")
        log.warning("tenant %s: Graph sent a body that is not JSON; retrying", TENANT_ID)
        log.warning("tenant %s: paused", "acme")
    finally:
        logging.getLogger().handlers.clear()
    sink, by_id, by_label = _json_lines(capsys.readouterr().err)
    assert sink["sink"] == "siem" and by_id["tenant_id"] == TENANT_ID and by_label["tenant"] == "acme"
    assert "tenant" not in by_id


def test_dead_letters_output_json_is_for_list_only(tmp_path: Path) -> None:
    config = _config(tmp_path, _alerts(1))
    result = run_cli("dead-letters", "drop", "--output", "json", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr and "--output json" in result.stderr


def test_check_with_json_logs_keeps_its_table_out_of_the_log_stream(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("good")
    setup.cloud.add_alerts(tenant_id, make_alerts(1, tenant_id, recent(30), timedelta(minutes=1)))
    setup.forwarder["log_format"] = "json"
    result = run_cli("check", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert not BOX & set(result.stderr) and len(_json_lines(result.stderr)) == len(result.stderr.splitlines())
    assert any("good" in line and "read 1 alert" in line for line in result.stdout.splitlines()), result.stdout


def test_the_daemon_refuses_output_json(tmp_path: Path) -> None:
    config = _config(tmp_path, _alerts(1))
    result = run_cli("run", "--output", "json", "--config", str(config))
    assert result.returncode == 2 and "--once" in result.stderr and "Traceback" not in result.stderr


def test_backfill_output_json_prints_the_summary_document_and_no_progress_bar_in_json_logs(tmp_path: Path) -> None:
    config = _config(tmp_path, _alerts(2), forwarder={"log_format": "json"})
    result = run_cli("backfill", "--since", "2000-01-01", "--output", "json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert [(t["tenant"], t["new_versions"]) for t in summary["tenants"]] == [("acme", 2)]
    assert [(s["sink"], s["delivered"]) for s in summary["sinks"]] == [("out", 2)]
    assert len(_json_lines(result.stderr)) == len(result.stderr.splitlines()), result.stderr
