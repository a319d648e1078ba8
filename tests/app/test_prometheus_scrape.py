"""A real Prometheus (Debian's package) scrapes the daemon's `/metrics`; PromQL over its HTTP
API gives back what the state store holds: each tenant's lag, each sink's outbox depth."""
from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from core.state.sqlite import SQLiteStore
from tests.helpers import SECRET, CloudSetup, daemon, recent, until
from tests.peers.alert_factory import make_alerts
from tests.peers.lifecycle import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None,
                                reason="prometheus is not installed (.ci/run installs Debian's prometheus)")


def _prometheus(target: str, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping `target` every second; yields its URL."""
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      "scrape_configs:\n  - job_name: defender-forwarder\n"
                      f"    static_configs:\n      - targets: ['{target}']\n")
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen([str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _query(prometheus: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """An instant PromQL query -> {labels (without name, job and instance): value}; {} while Prometheus starts."""
    try:
        answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    except (httpx.TransportError, ValueError):
        return {}
    assert answer["status"] == "success", answer
    return {tuple(sorted((k, v) for k, v in item["metric"].items() if k not in ("job", "instance", "__name__"))):
            float(item["value"][1]) for item in answer["data"]["result"]}


@pytest.fixture
def running(setup: CloudSetup, tmp_path: Path) -> Iterator[tuple[CloudSetup, str, str]]:
    """The daemon after its first cycle over a tenant with alerts and one without consent, into
    a file sink and a syslog sink nobody listens on (its events wait); and Prometheus scraping
    it. Yields the setup, the daemon's endpoint and Prometheus's URL."""
    good = setup.tenant("good")
    setup.cloud.add_alerts(good, make_alerts(4, good, recent(20), timedelta(minutes=1), seed=7))
    setup.tenant("revoked", consent=False)
    setup.forwarder["poll_interval"] = "1h"
    setup.sinks = {"archive": {"type": "file", "path": str(setup.out("{tenant}")), "format": "raw"},
                   "siem": {"type": "syslog", "host": "127.0.0.1", "port": free_port(), "protocol": "tcp",
                            "retry_initial": 5, "retry_max": 60}}
    config = setup.write()
    endpoint = f"127.0.0.1:{free_port()}"
    with config.open("a") as file:
        file.write(f'\n[forwarder.http]\nlisten = "{endpoint}"\n')
    process = daemon(config)
    try:
        def ready() -> bool:
            try:
                return httpx.get(f"http://{endpoint}/readyz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        until(ready, process, timeout=30)
        yield from ((setup, endpoint, url) for url in _prometheus(endpoint, tmp_path))
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
        assert process.returncode == 0, output
        assert SECRET not in output


def _scraped(prometheus: str, promql: str, timeout: float = 30.0) -> dict[tuple[tuple[str, str], ...], float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := _query(prometheus, promql):
            return result
        time.sleep(0.5)
    raise AssertionError(f"Prometheus has no sample of {promql} after {timeout:.0f}s")


def test_prometheus_scrapes_the_daemon_and_promql_matches_the_state(running: tuple[CloudSetup, str, str]) -> None:
    setup, endpoint, prometheus = running
    up = _scraped(prometheus, "up")
    assert up == {(): 1.0}, f"Prometheus cannot scrape {endpoint}: {up}"

    lag = _scraped(prometheus, 'defender_forwarder_lag_seconds{source="graph_alerts"}')
    store = SQLiteStore(setup.state)
    try:
        cursor = store.cursor(setup.tenants["good"], "graph_alerts")
        depths = store.outbox_depths()
    finally:
        store.close()
    assert cursor is not None
    expected_lag = (datetime.now(timezone.utc) - cursor).total_seconds()
    assert set(lag) == {(("source", "graph_alerts"), ("tenant", "good"))}, lag  # no cursor, no lag
    assert abs(lag[(("source", "graph_alerts"), ("tenant", "good"))] - expected_lag) < 10, (lag, expected_lag)

    outbox = _scraped(prometheus, "sum by (sink) (defender_forwarder_outbox_events)")
    assert outbox == {(("sink", "archive"),): 0.0, (("sink", "siem"),): float(depths["siem"])}, (outbox, depths)
    assert depths["siem"] == 4  # the syslog sink's events wait

    states = _scraped(prometheus, "defender_forwarder_sink_state == 1")
    assert states == {(("sink", "archive"), ("state", "ok")): 1.0, (("sink", "siem"), ("state", "retrying")): 1.0}
    auth = _scraped(prometheus, "defender_forwarder_auth_state == 1")
    assert auth[(("state", "ok"), ("tenant", "good"))] == 1.0
    assert auth[(("state", "consent_missing"), ("tenant", "revoked"))] == 1.0, auth
    new = _scraped(prometheus, "sum by (tenant) (defender_forwarder_alert_versions_new_total)")
    assert new[(("tenant", "good"),)] == 4.0
