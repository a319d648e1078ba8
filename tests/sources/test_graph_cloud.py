"""The forwarder against the simulated Microsoft cloud: real MSAL, real httpx, HTTPS on loopback."""
from __future__ import annotations

import asyncio
import itertools
import json
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.app.config import load_config, parse_config
from core.app.pipeline import Forwarder, TenantResult
from core.model.schema import Alert, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import graph_alerts_v2
from mappings.graph_alerts_v2 import normalise
from tests.helpers import REPO, CloudSetup, daemon, read_ndjson, recent, run_cli, until
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.fake_cloud import Fault


def _tenant(setup: CloudSetup, label: str, n: int, seed: int = 0, **options: Any) -> tuple[str, list[dict]]:
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(n, tenant_id, recent(600), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return tenant_id, alerts


def _run_once(config_path: Path) -> tuple[dict[str, TenantResult], Forwarder]:
    config = load_config(config_path)
    store = SQLiteStore(Path(config.forwarder.state))
    holder: dict[str, Any] = {}

    async def go() -> list[TenantResult]:
        async with Forwarder(config, store) as forwarder:
            holder["f"] = forwarder
            return await forwarder.run_once()

    try:
        results = asyncio.run(go())
    finally:
        store.close()
    return {r.label: r for r in results}, holder["f"]


def test_twenty_tenants_in_one_run_each_isolated(setup: CloudSetup) -> None:
    expected = {}
    for index in range(20):
        tenant_id, alerts = _tenant(setup, f"customer{index:02d}", 5 + index, seed=index)
        expected[f"customer{index:02d}"] = (tenant_id, {a["id"] for a in alerts})
    setup.forwarder["page_size"] = 7
    results, _ = _run_once(setup.write())
    assert all(r.error is None for r in results.values())
    for label, (tenant_id, ids) in expected.items():
        out = read_ndjson(setup.out(label))
        assert {a["id"] for a in out} == ids, label
        assert all(a["tenantId"] == tenant_id and a["tenant"]["label"] == label for a in out)
        assert len(out) == len(ids)  # every alert exactly once, across several pages


def test_query_shape_prefer_header_and_unknown_enum_kept(setup: CloudSetup) -> None:
    tenant_id, alerts = _tenant(setup, "acme", 3)
    alerts[0]["serviceSource"] = "microsoftSentinel"  # a member Graph added after unknownFutureValue
    setup.cloud.add_alerts(tenant_id, [alerts[0]])
    _run_once(setup.write())
    hits = [h for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "alerts"]
    assert hits and all(h.prefer and "include-unknown-enum-members" in h.prefer for h in hits)
    query = parse_qs(urlsplit(hits[0].path).query)
    assert query["$filter"][0].startswith("lastUpdateDateTime ge ")
    out = {a["id"]: a for a in read_ndjson(setup.out("acme"))}
    assert out[alerts[0]["id"]]["serviceSource"] == "microsoftSentinel"


def test_second_run_filters_from_cursor_minus_overlap_and_dedupes(setup: CloudSetup) -> None:
    tenant_id, alerts = _tenant(setup, "acme", 10)
    config = setup.write()
    _run_once(config)
    newest = max(a["lastUpdateDateTime"] for a in alerts)
    setup.cloud.hits.clear()
    results, _ = _run_once(config)
    first = next(h for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "alerts")
    since = parse_qs(urlsplit(first.path).query)["$filter"][0].split(" ge ")[1]
    assert since < newest
    # The ten alerts span nine minutes, all inside the 15-minute overlap: all re-read, none forwarded.
    assert (results["acme"].queued, results["acme"].duplicates) == (0, 10)
    assert len(read_ndjson(setup.out("acme"))) == 10


def test_versions_read_again_in_the_overlap_are_not_normalised_again(
        setup: CloudSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id, alerts = _tenant(setup, "acme", 10)
    config = setup.write()
    _run_once(config)
    setup.cloud.add_alerts(tenant_id, [updated_version(alerts[3], recent(1), status="resolved")])
    normalised: list[str] = []

    def counting_normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Alert:
        normalised.append(raw["id"])
        return normalise(raw, tenant, ingested)

    # The forwarder takes `normalise` from the kind's mapping module when it opens.
    monkeypatch.setattr(graph_alerts_v2, "normalise", counting_normalise)
    results, _ = _run_once(config)
    acme = results["acme"]
    assert (acme.read, acme.duplicates, acme.queued) == (10, 9, 1)
    assert normalised == [alerts[3]["id"]]  # only the new version; the nine seen ones were skipped raw
    assert [a["status"] for a in read_ndjson(setup.out("acme")) if a["id"] == alerts[3]["id"]][-1] == "resolved"


def test_alert_update_is_a_new_version(setup: CloudSetup) -> None:
    tenant_id, alerts = _tenant(setup, "acme", 4)
    config = setup.write()
    _run_once(config)
    setup.cloud.add_alerts(tenant_id, [updated_version(alerts[1], recent(1), status="inProgress")])
    results, _ = _run_once(config)
    assert results["acme"].queued == 1
    out = [a for a in read_ndjson(setup.out("acme")) if a["id"] == alerts[1]["id"]]
    assert [a["status"] for a in out] == [alerts[1]["status"], "inProgress"]


def test_throttling_retry_after_and_server_errors_are_retried(setup: CloudSetup) -> None:
    tenant_id, alerts = _tenant(setup, "acme", 5)
    setup.cloud.inject(tenant_id, Fault.status(429, retry_after=1), Fault.status(503), Fault.status(500),
                       Fault.truncated_json())
    started = time.monotonic()
    results, _ = _run_once(setup.write())
    assert results["acme"].error is None
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    hits = [h for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "alerts"]
    assert [h.status for h in hits][:4] == [429, 503, 500, 200] and len(hits) == 5
    assert len(read_ndjson(setup.out("acme"))) == 5


def test_timeout_is_retried(setup: CloudSetup) -> None:
    tenant_id, _ = _tenant(setup, "acme", 3)
    setup.forwarder["request_timeout"] = "0.5s"
    setup.cloud.inject(tenant_id, Fault.delay(1.5))
    results, _ = _run_once(setup.write())
    assert results["acme"].error is None and len(read_ndjson(setup.out("acme"))) == 3


def test_token_expiring_mid_run_is_refreshed(setup: CloudSetup) -> None:
    tenant_id, _ = _tenant(setup, "acme", 9, graph_token_lifetime=1.0)
    setup.forwarder["page_size"] = 3
    # The first page takes longer than the token lives: the second page meets a 401.
    setup.cloud.inject(tenant_id, Fault.delay(1.2))
    results, _ = _run_once(setup.write())
    assert results["acme"].error is None
    assert setup.cloud.count("token", tenant_id) >= 2
    assert len(read_ndjson(setup.out("acme"))) == 9


def test_repeating_or_broken_next_link_fails_the_window_without_moving_the_cursor(setup: CloudSetup) -> None:
    repeat_id, _ = _tenant(setup, "repeat", 6)
    broken_id, _ = _tenant(setup, "broken", 6)
    _tenant(setup, "fine", 6)
    setup.forwarder["page_size"] = 2
    setup.cloud.inject(repeat_id, Fault.repeat_next_link())
    setup.cloud.inject(broken_id, Fault.next_link_404())
    results, _ = _run_once(setup.write())
    assert "repeats" in results["repeat"].error and "404" in results["broken"].error
    assert results["fine"].error is None
    store = SQLiteStore(setup.state)
    assert store.cursor(repeat_id, "graph_alerts") is None and store.cursor(broken_id, "graph_alerts") is None
    store.close()
    # Next cycle (faults used up) reads the whole window again; dedupe drops what was queued.
    results, _ = _run_once(setup.write())
    assert results["repeat"].error is None and results["broken"].error is None
    assert len(read_ndjson(setup.out("repeat"))) == 6 and len(read_ndjson(setup.out("broken"))) == 6


def test_auth_failures_are_one_clear_line_each_and_the_rest_is_forwarded(setup: CloudSetup) -> None:
    _tenant(setup, "ok", 3)
    _tenant(setup, "noconsent", 3, consent=False)
    _tenant(setup, "expired", 3, secret_expired=True)
    _tenant(setup, "forbidden", 3, graph_forbidden=True)
    _tenant(setup, "revoked", 3, graph_token_lifetime=0.0)  # Graph refuses even a fresh token
    wrong_secret_id = setup.tenant("wrongsecret")
    setup.cloud.tenants[wrong_secret_id].secret = "another-secret-value"
    config = setup.write()
    text = config.read_text()
    config.write_text(text + '\n[tenants.ghost]\ntenant_id = "99999999-9999-4999-8999-999999999999"\napp = "mssp"\n')
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()

    def line_for(label: str) -> str:
        found = [line for line in lines if f"tenant {label}:" in line]
        assert len(found) == 1, (label, result.stderr)
        return found[0]

    assert "AADSTS700016" in line_for("noconsent") and "/adminconsent?client_id=" in line_for("noconsent")
    assert "AADSTS7000222" in line_for("expired") and "Remedy:" in line_for("expired")
    assert "AADSTS7000215" in line_for("wrongsecret") and "Remedy:" in line_for("wrongsecret")
    assert "AADSTS90002" in line_for("ghost") and "tenants.ghost.tenant_id" in line_for("ghost")
    assert "403" in line_for("forbidden") and "SecurityAlert.Read.All" in line_for("forbidden")
    assert "401" in line_for("revoked") and "/adminconsent?client_id=" in line_for("revoked")
    assert len(read_ndjson(setup.out("ok"))) == 3
    for label in ("noconsent", "expired", "wrongsecret", "forbidden", "ghost", "revoked"):
        assert not setup.out(label).exists()


def test_certificate_credential(setup: CloudSetup, tmp_path: Path) -> None:
    from tests.peers.fake_cloud import make_client_cert

    cert = make_client_cert()
    pem = tmp_path / "mssp.pem"
    pem.write_text(cert.key_pem.decode() + cert.cert_pem.decode() if isinstance(cert.key_pem, bytes)
                   else cert.key_pem + cert.cert_pem)
    pem.chmod(0o600)
    tenant_id = setup.tenant("acme", cert=cert.cert)
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1)))
    config = setup.write()
    config.write_text(config.read_text().replace('client_secret = "env:DF_TEST_CLIENT_SECRET"',
                                                 f'certificate = "file:{pem}"'))
    results, _ = _run_once(config)
    assert results["acme"].error is None and len(read_ndjson(setup.out("acme"))) == 2
    token_hits = [h for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "token"]
    assert token_hits and all(h.auth and h.auth.startswith("certificate") for h in token_hits)


def test_requests_of_one_tenant_respect_its_per_minute_budget(setup: CloudSetup) -> None:
    tenant_id, _ = _tenant(setup, "acme", 10)
    setup.forwarder.update(page_size=2, tenant_requests_per_minute=300)  # one request per 0.2 s
    results, _ = _run_once(setup.write())
    assert results["acme"].error is None and len(read_ndjson(setup.out("acme"))) == 10
    times = sorted(h.t for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "alerts")
    assert len(times) == 5
    gaps = [later - earlier for earlier, later in zip(times, times[1:], strict=False)]
    # Paced, not bursting (an unpaced client sends them milliseconds apart). Measured where the
    # peer receives them, one request's delay on a loaded machine shortens the next gap a little;
    # the span of all of them cannot shrink that way.
    assert min(gaps) >= 0.15 and times[-1] - times[0] >= 4 * 0.19, gaps


def test_a_retry_after_far_ahead_is_capped() -> None:
    """A Retry-After date from a server whose clock runs an hour ahead (or a huge number of
    seconds) must not stall a tenant's window for that long: it is capped."""
    import email.utils
    from datetime import datetime, timedelta

    import httpx

    from core.sources.graph import RETRY_AFTER_CAP, retry_after

    ahead = email.utils.format_datetime(datetime.now(UTC) + timedelta(hours=1), usegmt=True)
    assert retry_after(httpx.Response(429, headers={"Retry-After": ahead})) == RETRY_AFTER_CAP
    assert retry_after(httpx.Response(429, headers={"Retry-After": "86400"})) == RETRY_AFTER_CAP
    assert retry_after(httpx.Response(429, headers={"Retry-After": "7"})) == 7.0


# ---------------------------------------------------------------- memory

@contextmanager
def _synthetic_cloud(work: Path, tenants: int, alerts_per_tenant: int) -> Iterator[dict[str, Any]]:
    """The simulated cloud in its own process, so that its memory is not the forwarder's."""
    ready = work / "cloud.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.fake_cloud", "--synthetic", "--tenants", str(tenants),
         "--alerts-per-tenant", str(alerts_per_tenant), "--ready-file", str(ready)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "the simulated cloud did not start"
            time.sleep(0.05)
        yield json.loads(ready.read_text())
    finally:
        process.terminate()
        process.wait(10)


def test_pages_in_memory_stay_few_whatever_the_request_concurrency(tmp_path: Path) -> None:
    """16 tenants' windows read at once, 16 requests in flight: each full page (200 alerts,
    about 1 MB) is read only with a page slot, and a window waiting for its next request keeps
    neither its last page nor its slot; so the forwarder's own allocations peak at a few pages.
    Measured 26 MB; holding one page per request in flight and per waiting window, 111 MB."""
    with _synthetic_cloud(tmp_path, tenants=16, alerts_per_tenant=400) as cloud:
        config = parse_config({
            "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "1d", "page_size": 200,
                          "max_concurrent_requests": 16},
            "apps": {"mssp": {"client_id": cloud["client_id"], "client_secret": cloud["secret"],
                              "login_endpoint": cloud["base_url"], "graph_endpoint": cloud["base_url"],
                              "ca_file": cloud["ca_file"]}},
            "tenants": {f"t{i:02d}": {"tenant_id": tid, "app": "mssp"} for i, tid in enumerate(cloud["tenant_ids"])},
            "sinks": {"archive": {"type": "file", "path": str(tmp_path / "out.ndjson"), "format": "raw"}},
        })
        store = SQLiteStore(tmp_path / "state.db")

        async def poll() -> list[TenantResult]:
            async with Forwarder(config, store) as forwarder:
                tracemalloc.start()
                try:
                    return await forwarder.poll_all()
                finally:
                    peak = tracemalloc.get_traced_memory()[1]
                    tracemalloc.stop()
                    peaks.append(peak)

        peaks: list[int] = []
        results = asyncio.run(poll())
        store.close()
    assert [r.queued for r in results] == [400] * 16 and not any(r.error for r in results)
    assert peaks[0] < 50 * 2**20, f"{peaks[0] / 2**20:.0f} MB"


# ---------------------------------------------------------------- the daemon's schedule

def test_a_cycle_starts_every_poll_interval_however_long_the_last_one_took(setup: CloudSetup) -> None:
    """poll_interval is counted from the start of a cycle: with a thousand tenants a cycle takes
    seconds, and waiting the whole interval after it would add those seconds to every alert's wait."""
    tenant_id, _ = _tenant(setup, "slow", 2)
    setup.cloud.inject(tenant_id, *[Fault.delay(0.7)] * 40)  # each cycle's request takes 0.7 s
    setup.forwarder["poll_interval"] = "1s"
    forwarder = daemon(setup.write())
    try:
        until(lambda: sum(h.kind == "alerts" and h.tenant == tenant_id for h in setup.cloud.hits) >= 7, forwarder)
    finally:
        forwarder.send_signal(signal.SIGTERM)
        forwarder.wait(20)
    starts = [h.t - 0.7 for h in setup.cloud.hits if h.kind == "alerts" and h.tenant == tenant_id]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    # 0.95-1.0 s apart (the interval's jitter); waiting after the poll would make it 1.65-1.7 s.
    assert statistics.median(gaps) < 1.3, gaps
