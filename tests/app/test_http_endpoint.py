"""`[forwarder.http] listen`: the daemon's HTTP endpoint, probed over a real socket."""
from __future__ import annotations

import signal
from datetime import timedelta
from pathlib import Path

import httpx

from tests.helpers import daemon, recent, until, write_config, write_replay
from tests.peers.alert_factory import make_alerts
from tests.peers.lifecycle import free_port

TENANT_ID = "77777777-7777-4777-8777-777777777777"


def _healthz(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


def test_the_daemon_answers_healthz_while_it_forwards(tmp_path: Path) -> None:
    replay = write_replay(tmp_path / "replay", [make_alerts(5, TENANT_ID, recent(60), timedelta(seconds=1), seed=3)])
    out = tmp_path / "out.ndjson"
    port = free_port()
    config = write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "poll_interval": "1h"},
        "forwarder.http": {"listen": f"127.0.0.1:{port}"},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
        "sinks.out": {"type": "file", "path": str(out), "format": "raw"},
    })
    process = daemon(config)
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        until(lambda: out.exists() and len(out.read_text().splitlines()) == 5, process)
        answer = _healthz(url)
        assert answer is not None and answer.status_code == 200, answer
        assert answer.json()["status"] == "ok"
        assert httpx.get(f"http://127.0.0.1:{port}/nothing-here", timeout=2).status_code == 404
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"/healthz, /readyz and /api/status on http://127.0.0.1:{port}" in output
    assert _healthz(url) is None  # the endpoint stops with the daemon


def test_readyz_turns_503_when_a_sink_stops_and_names_it(tmp_path: Path) -> None:
    from tests.peers.hec_peer import HecPeer, TokenSettings

    replay = write_replay(tmp_path / "replay", [make_alerts(3, TENANT_ID, recent(60), timedelta(seconds=1), seed=4)])
    port = free_port()
    with HecPeer(tokens={"11111111-1111-4111-8111-111111111111": TokenSettings()}, tls=False) as hec:
        config = write_config(tmp_path / "c.toml", {
            "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "poll_interval": "1h"},
            "forwarder.http": {"listen": f"127.0.0.1:{port}"},
            "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
            "sinks.siem": {"type": "splunk_hec", "url": hec.url, "token": "env:DF_TEST_WRONG_HEC_TOKEN"},
        })
        process = daemon(config, env={"DF_TEST_WRONG_HEC_TOKEN": "22222222-2222-4222-8222-222222222222"})
        url = f"http://127.0.0.1:{port}/readyz"
        try:
            def stopped() -> bool:
                answer = _healthz(url)
                return answer is not None and answer.status_code == 503 and "sink siem is stopped" in answer.text
            until(stopped, process, timeout=30)
            reasons = httpx.get(url, timeout=2).json()["reasons"]
            healthz = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        finally:
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=30)[0]
    assert reasons == ["sink siem is stopped; see its error on / or in the log, fix it and restart"]
    assert healthz.status_code == 200  # alive all the same: a restart would not fix a wrong token
    assert "22222222-2222-4222-8222-222222222222" not in output
