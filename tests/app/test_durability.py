"""Crash safety, secrets, and hostile pages: the guarantees an operator relies on."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.app.config import load_config
from core.app.pipeline import Forwarder
from core.state.sqlite import SQLiteStore
from tests.helpers import REPO, SECRET, CloudSetup, read_ndjson, recent, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts


def _outbox_depth(state: Path) -> int:
    if not state.exists():
        return 0
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        return db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def test_kill_9_after_outbox_commit_before_delivery_then_restart_delivers_all(setup: CloudSetup) -> None:
    tenant_id = setup.tenant("acme")
    alerts = make_alerts(25, tenant_id, recent(120), timedelta(minutes=1), seed=3)
    setup.cloud.add_alerts(tenant_id, alerts)
    target = setup.tmp / "out" / "acme.ndjson"
    target.parent.mkdir(parents=True)
    # A FIFO with no reader: the sink's open() blocks, so the process sits between commit and delivery.
    os.mkfifo(target)
    config = setup.write()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--once", "--config", str(config)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while _outbox_depth(setup.state) < 25 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _outbox_depth(setup.state) == 25
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    os.unlink(target)

    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    delivered = read_ndjson(target)
    assert sorted(a["id"] for a in delivered) == sorted(a["id"] for a in alerts)
    assert _outbox_depth(setup.state) == 0


def test_secrets_never_reach_logs_state_output_or_errors(setup: CloudSetup) -> None:
    ok_id = setup.tenant("ok")
    setup.cloud.add_alerts(ok_id, make_alerts(3, ok_id, recent(30), timedelta(minutes=1)))
    setup.tenant("noconsent", consent=False)
    wrong = setup.tenant("wrong")
    setup.cloud.tenants[wrong].secret = "a-different-secret"
    setup.forwarder["log_level"] = "debug"
    config = setup.write()
    outputs = []
    for command in (["run", "--once"], ["check"], ["tenants"], ["dead-letters", "list"]):
        result = run_cli(*command, "--config", str(config))
        outputs += [result.stdout, result.stderr]
    literal = config.read_text().replace('"env:DF_TEST_CLIENT_SECRET"', json.dumps(SECRET))
    literal_config = setup.tmp / "literal.toml"
    literal_config.write_text(literal)
    result = run_cli("run", "--once", "--config", str(literal_config))
    outputs += [result.stdout, result.stderr]
    assert "literal secret" in result.stderr
    files = [p for p in setup.tmp.rglob("*") if p.is_file() and p not in (config, literal_config)]
    assert any(p.name.startswith("state.db") for p in files) and any(p.suffix == ".ndjson" for p in files)
    leaks = [p for p in files if SECRET.encode() in p.read_bytes()]
    leaks += [i for i, text in enumerate(outputs) if SECRET in text]
    assert leaks == []


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
FIELDS = ["id", "lastUpdateDateTime", "severity", "status", "title", "evidence", "createdDateTime",
          "mitreTechniques", "serviceSource", "classification", "comments", "incidentId", "tenantId"]


@st.composite
def hostile_page(draw: Any) -> list[Any]:
    base = make_alerts(6, "88888888-8888-4888-8888-888888888888", datetime(2026, 11, 20, tzinfo=timezone.utc),
                       timedelta(minutes=1), seed=draw(st.integers(0, 1000)))
    page: list[Any] = []
    for alert in base:
        for field in draw(st.lists(st.sampled_from(FIELDS), max_size=3)):
            alert[field] = draw(JSONISH)
        if draw(st.booleans()) and alert.get("evidence") and isinstance(alert["evidence"], list):
            alert["evidence"].append(draw(JSONISH))
        page.append(alert)
    page += draw(st.lists(JSONISH, max_size=2))
    return page


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(page=hostile_page())
def test_hostile_pages_never_crash_and_every_alert_is_forwarded_or_dead_lettered(tmp_path: Path,
                                                                                page: list[Any]) -> None:
    work = tmp_path / str(time.monotonic_ns())
    replay = write_replay(work / "replay", [page])
    config = load_config(write_config(work / "c.toml", {
        "forwarder": {"state": str(work / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": "88888888-8888-4888-8888-888888888888", "replay": str(replay)},
        "sinks.ocsf": {"type": "file", "path": str(work / "ocsf.ndjson"), "format": "ocsf"},
        "sinks.raw": {"type": "file", "path": str(work / "raw.ndjson"), "format": "raw"},
    }))
    store = SQLiteStore(work / "state.db")

    async def go() -> Any:
        async with Forwarder(config, store) as forwarder:
            (result,) = await forwarder.run_once()
            return result, forwarder

    result, forwarder = asyncio.run(go())
    normalise_dead = [d for d in store.dead_letters() if d.stage == "normalise"]
    encode_dead = {name: [d for d in store.dead_letters(name)] for name in ("ocsf", "raw")}
    store.close()
    assert result.error is None
    assert result.read == len(page) == result.queued + result.dead + result.duplicates
    assert len(normalise_dead) <= result.dead and all(d.reason for d in normalise_dead)
    # An alert no format could encode counts as dead once for the tenant, and is in each sink's dead letters.
    dead_everywhere = len({d.version_key for d in encode_dead["ocsf"]} & {d.version_key for d in encode_dead["raw"]})
    for name in ("ocsf", "raw"):
        lines = (work / f"{name}.ndjson").read_bytes().splitlines() if (work / f"{name}.ndjson").exists() else []
        assert all(json.loads(line) is not None for line in lines)  # no malformed line
        assert len(lines) + len(encode_dead[name]) == result.queued + dead_everywhere
        assert forwarder.workers[name].fatal is None
