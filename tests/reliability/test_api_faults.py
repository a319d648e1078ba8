"""Graph and Entra misbehaving, end to end: the real CLI against the simulated cloud.

Issue "Prove it never loses an alert", point 3: a run survives 429 storms, 5xx, truncated
JSON, nextLinks that repeat or 404, tokens that expire, a tenant whose consent is revoked
mid-run, and clock skew. Every test here runs `defender-forwarder run --once` (or the daemon)
as a child process with a `file` sink and checks what an operator can observe: each alert
version in the output file exactly once, the cursor (never past an alert not yet read), the
tenant's status row, the exit code, and that the other tenants did not notice.

Faults are queued per tenant with `FakeCloud.inject`; each is used up by one alerts request.
`Fault.delay(0)` answers normally, so it places the next fault on a later page.
"""
from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

from core.state.sqlite import SQLiteStore
from tests.helpers import CloudSetup, daemon, read_ndjson, recent, run_cli, until
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.fake_cloud import Fault, parse_ticks

PASS = Fault.delay(0)  # an ordinary answer, used to put the next fault on a later page


# ---------------------------------------------------------------- helpers

def _tenant(setup: CloudSetup, label: str, n: int, start: datetime | None = None, seed: int = 0,
            **options: Any) -> tuple[str, list[dict[str, Any]]]:
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(n, tenant_id, start or recent(600), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return tenant_id, alerts


def _config(setup: CloudSetup, **forwarder: Any) -> Path:
    # Pages of 3 so faults can land mid-window; a fast per-tenant limiter and short backoff so
    # a full retry budget (8 attempts) costs about two seconds, not minutes.
    setup.forwarder.update({"page_size": 3, "tenant_requests_per_minute": 6000,
                            "retry_initial": "0.01s", **forwarder})
    return setup.write()


def _versions(alerts: list[dict[str, Any]]) -> Counter[tuple[str, int]]:
    return Counter((a["id"], parse_ticks(a["lastUpdateDateTime"])) for a in alerts)


def _delivered(setup: CloudSetup, label: str) -> Counter[tuple[str, int]]:
    return _versions(read_ndjson(setup.out(label)))


def _assert_exactly_once(setup: CloudSetup, label: str, alerts: list[dict[str, Any]]) -> None:
    got, expected = _delivered(setup, label), _versions(alerts)
    assert set(got) == set(expected), (label, "lost" if set(expected) - set(got) else "extra")
    assert all(n == 1 for n in got.values()), (label, "duplicated", [v for v, n in got.items() if n > 1])


def _newest(alerts: list[dict[str, Any]]) -> datetime:
    ticks = max(parse_ticks(a["lastUpdateDateTime"]) for a in alerts)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ticks // 10)


def _cursor(setup: CloudSetup, tenant_id: str) -> datetime | None:
    store = SQLiteStore(setup.state)
    try:
        return store.cursor(tenant_id, "graph_alerts")
    finally:
        store.close()


def _last_error(setup: CloudSetup, tenant_id: str) -> str | None:
    store = SQLiteStore(setup.state)
    try:
        status = store.tenant_statuses().get(tenant_id)
    finally:
        store.close()
    assert status is not None, "no status row for the tenant"
    return status.last_error


def _line_for(stderr: str, label: str) -> str:
    found = [line for line in stderr.splitlines() if f"tenant {label}:" in line]
    assert len(found) == 1, (label, stderr)
    return found[0]


def _statuses(setup: CloudSetup, tenant_id: str) -> list[int]:
    return [h.status for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "alerts"]


# ---------------------------------------------------------------- 429 storms and 5xx

def test_429_storm_mid_window_is_ridden_out_and_other_tenants_unaffected(setup: CloudSetup) -> None:
    """Seven throttled answers in a row on page 2 (Retry-After as 0 seconds, absent, and as an
    HTTP date already past) are inside the retry budget: the run ends 0, nothing lost."""
    stormy_id, stormy = _tenant(setup, "stormy", 9, seed=1)
    calm_id, calm = _tenant(setup, "calm", 5, seed=2)
    past = format_datetime(datetime.now(UTC) - timedelta(minutes=5), usegmt=True)
    setup.cloud.inject(stormy_id, PASS, Fault.status(429, retry_after=0), Fault.status(429),
                       Fault.status(429, retry_after=past), Fault.status(429, retry_after=0),
                       Fault.status(429), Fault.status(429, retry_after=0), Fault.status(429))
    result = run_cli("run", "--once", "--config", str(_config(setup)))
    assert result.returncode == 0, result.stderr
    assert _statuses(setup, stormy_id).count(429) == 7
    _assert_exactly_once(setup, "stormy", stormy)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, stormy_id) == _newest(stormy) and _cursor(setup, calm_id) == _newest(calm)
    assert _last_error(setup, stormy_id) is None and _last_error(setup, calm_id) is None


def test_5xx_and_gateway_error_pages_on_several_pages_are_retried(setup: CloudSetup) -> None:
    """500/502/503/504, JSON or a gateway's text/plain page, spread over pages 1-3."""
    flaky_id, flaky = _tenant(setup, "flaky", 9, seed=3)
    _, calm = _tenant(setup, "calm", 4, seed=4)
    gateway = "<html><body>502 Bad Gateway</body></html>"
    setup.cloud.inject(flaky_id, Fault.status(500), PASS, Fault.status(502, body=gateway),
                       Fault.status(504, body="upstream request timeout"), PASS,
                       Fault.status(503, retry_after=1), Fault.status(500))
    result = run_cli("run", "--once", "--config", str(_config(setup)))
    assert result.returncode == 0, result.stderr
    assert sorted(s for s in _statuses(setup, flaky_id) if s != 200) == [500, 500, 502, 503, 504]
    _assert_exactly_once(setup, "flaky", flaky)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, flaky_id) == _newest(flaky)
    assert _last_error(setup, flaky_id) is None


def test_storm_longer_than_the_retry_budget_fails_the_window_then_the_next_run_recovers(
        setup: CloudSetup) -> None:
    """Eight failures in a row on page 2 (429s, 5xx, truncated bodies) exhaust the budget: the
    tenant's window fails (exit 1, status row says so), page 1 is delivered, the cursor does
    not move past page 2; the next run reads the window again and delivers the rest, once."""
    stormy_id, stormy = _tenant(setup, "stormy", 9, seed=5)
    calm_id, calm = _tenant(setup, "calm", 5, seed=6)
    setup.cloud.inject(stormy_id, PASS, *[Fault.status(429), Fault.status(503), Fault.truncated_json(),
                                          Fault.status(504)] * 2)
    config = _config(setup)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1, result.stderr
    line = _line_for(result.stderr, "stormy")
    assert "after 8 attempts" in line and "will retry next cycle" in line
    assert sum(_delivered(setup, "stormy").values()) == 3  # page 1 only, nothing skipped past
    assert _cursor(setup, stormy_id) is None
    assert "after 8 attempts" in (_last_error(setup, stormy_id) or "")
    _assert_exactly_once(setup, "calm", calm)
    assert _last_error(setup, calm_id) is None

    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(setup, "stormy", stormy)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, stormy_id) == _newest(stormy)
    assert _last_error(setup, stormy_id) is None


# ---------------------------------------------------------------- truncated JSON

def test_truncated_json_on_every_page_is_reread(setup: CloudSetup) -> None:
    """A 200 whose body is cut in half (Content-Length matching) on pages 1, 2 (twice) and 3."""
    cut_id, cut = _tenant(setup, "cut", 9, seed=7)
    _, calm = _tenant(setup, "calm", 4, seed=8)
    setup.cloud.inject(cut_id, Fault.truncated_json(), PASS, Fault.truncated_json(), Fault.truncated_json(),
                       PASS, Fault.truncated_json())
    result = run_cli("run", "--once", "--config", str(_config(setup)))
    assert result.returncode == 0, result.stderr
    hits = [h for h in setup.cloud.hits if h.tenant == cut_id and h.kind == "alerts"]
    assert sum(h.fault == "truncated_json" for h in hits) == 4
    _assert_exactly_once(setup, "cut", cut)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, cut_id) == _newest(cut)


# ---------------------------------------------------------------- nextLinks

def test_repeating_or_404_next_link_on_a_later_cycle_keeps_the_cursor(setup: CloudSetup) -> None:
    """On a second cycle (a cursor exists), page 2's nextLink repeats page 2 for one tenant
    and points at an unknown skiptoken (404) for another: both windows fail (exit 1), their
    cursors stay where they were, the third tenant advances; the next run delivers every
    version once (page 1, already delivered, is deduplicated)."""
    ids, first, later = {}, {}, {}
    for seed, label in enumerate(("repeat", "broken", "fine"), start=10):
        ids[label], first[label] = _tenant(setup, label, 6, seed=seed)
    config = _config(setup)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    cursors = {label: _cursor(setup, ids[label]) for label in ids}
    assert cursors == {label: _newest(first[label]) for label in ids}

    for seed, label in enumerate(ids, start=20):
        later[label] = make_alerts(7, ids[label], recent(300), timedelta(minutes=1), seed=seed)
        setup.cloud.add_alerts(ids[label], later[label])
    setup.cloud.inject(ids["repeat"], PASS, Fault.repeat_next_link())
    setup.cloud.inject(ids["broken"], PASS, Fault.next_link_404())
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1, result.stderr
    assert "repeats" in _line_for(result.stderr, "repeat")
    assert "404" in _line_for(result.stderr, "broken")
    for label in ("repeat", "broken"):
        assert _cursor(setup, ids[label]) == cursors[label], label  # not moved past the gap
        assert _last_error(setup, ids[label]), label
        got = _delivered(setup, label)
        assert all(n == 1 for n in got.values()) and set(got) <= set(_versions(first[label] + later[label]))
    _assert_exactly_once(setup, "fine", first["fine"] + later["fine"])
    assert _cursor(setup, ids["fine"]) == _newest(later["fine"])

    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    for label, tenant_id in ids.items():
        _assert_exactly_once(setup, label, first[label] + later[label])
        assert _cursor(setup, tenant_id) == _newest(later[label])
        assert _last_error(setup, tenant_id) is None


# ---------------------------------------------------------------- tokens that expire

def test_daemon_survives_tokens_that_expire_mid_window_and_between_cycles(setup: CloudSetup) -> None:
    """Graph stops accepting a token 0.5 s after it is issued, while MSAL still believes it
    valid for an hour (server-side expiry/revocation MSAL cannot see). A slow page makes the
    token expire mid-window; every later cycle of the daemon starts with an expired cached
    token. Each 401 costs one refresh, never a window or an alert."""
    short_id, short = _tenant(setup, "short", 9, seed=30, graph_token_lifetime=0.5)
    steady_id, steady = _tenant(setup, "steady", 4, seed=31)
    setup.cloud.inject(short_id, Fault.delay(0.8))  # page 1 outlives the token
    started = time.time()
    forwarder = daemon(_config(setup, poll_interval="1s"))
    try:
        until(lambda: sum(_delivered(setup, "short").values()) >= 9
              and sum(_delivered(setup, "steady").values()) >= 4, forwarder)
        more = {label: make_alerts(4, tid, recent(100), timedelta(minutes=1), seed=40 + i)
                for i, (label, tid) in enumerate((("short", short_id), ("steady", steady_id)))}
        setup.cloud.add_alerts(short_id, more["short"])
        setup.cloud.add_alerts(steady_id, more["steady"])
        until(lambda: sum(_delivered(setup, "short").values()) >= 13
              and sum(_delivered(setup, "steady").values()) >= 8, forwarder)
        time.sleep(1.5)  # at least one more cycle: nothing is delivered twice
    finally:
        forwarder.send_signal(signal.SIGTERM)
        output = forwarder.communicate(timeout=20)[0]
    assert forwarder.returncode == 0, output
    # Graph names no tenant in a 401 (the token is refused before its `tid` counts); only
    # "short" has expiring tokens, so every 401 since the start is one of its.
    refused = [h for h in setup.cloud.hits if h.kind == "alerts" and h.status == 401 and h.t >= started]
    assert len(refused) >= 2  # mid-window and at a cycle start
    assert setup.cloud.count("token", short_id) >= 3
    assert "tenant short:" not in output, output  # an expired token is not a tenant error
    _assert_exactly_once(setup, "short", short + more["short"])
    _assert_exactly_once(setup, "steady", steady + more["steady"])
    assert _cursor(setup, short_id) == _newest(more["short"])
    assert _last_error(setup, short_id) is None


# ---------------------------------------------------------------- consent revoked mid-run

def test_consent_revoked_mid_window_fails_only_that_tenant_and_resumes_after_reconsent(
        setup: CloudSetup) -> None:
    """While `run --once` pages through a tenant, its admin removes the app: Entra refuses new
    tokens (AADSTS700016) and Graph the one in hand (401). What was read before is delivered,
    the cursor does not move, the status row and stderr carry the consent remedy, exit 1, the
    other tenant is fully forwarded. After re-consent the next run delivers the rest, once."""
    gone_id, gone = _tenant(setup, "gone", 12, seed=50)
    steady_id, steady = _tenant(setup, "steady", 5, seed=51)
    setup.cloud.inject(gone_id, PASS, Fault.delay(1.0))  # page 2 is slow: revocation lands mid-window
    tenant = setup.cloud.tenants[gone_id]

    def revoke() -> None:
        deadline = time.monotonic() + 30
        while setup.cloud.count("alerts", gone_id) < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        tenant.consent = False
        tenant.graph_token_lifetime = 0.0  # Graph refuses tokens issued before the revocation

    revoker = threading.Thread(target=revoke, daemon=True)
    revoker.start()
    config = _config(setup)
    result = run_cli("run", "--once", "--config", str(config))
    revoker.join(5)
    assert result.returncode == 1, result.stderr
    line = _line_for(result.stderr, "gone")
    assert "AADSTS700016" in line and "/adminconsent?client_id=" in line
    assert "AADSTS700016" in (_last_error(setup, gone_id) or "")
    partial = _delivered(setup, "gone")
    assert sum(partial.values()) in (3, 6) and all(n == 1 for n in partial.values())
    assert set(partial) <= set(_versions(gone))
    assert _cursor(setup, gone_id) is None
    _assert_exactly_once(setup, "steady", steady)
    assert _last_error(setup, steady_id) is None

    tenant.consent, tenant.graph_token_lifetime = True, None
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(setup, "gone", gone)
    _assert_exactly_once(setup, "steady", steady)
    assert _cursor(setup, gone_id) == _newest(gone)
    assert _last_error(setup, gone_id) is None


# ---------------------------------------------------------------- clock skew

def test_cloud_clock_behind_the_forwarder_and_late_stamped_versions(setup: CloudSetup) -> None:
    """The cloud stamps `lastUpdateDateTime` with its own clock, hours behind the forwarder's,
    and versions become visible out of stamp order (one stamped 10 minutes before the newest
    already read). The forwarder must not lose them: its window starts at the newest stamp it
    has read minus `overlap` (a data-driven cursor), never at its own `now` minus anything, so
    a lagging cloud clock cannot push alerts below the window; and the overlap takes in a
    version stamped, within it, before the cursor. Already-delivered versions in the overlap
    are deduplicated, not sent again."""
    lag = timedelta(hours=5)  # the cloud's clock runs five hours behind the forwarder's
    cloud_now = datetime.now(UTC) - lag
    skewed_id, first = _tenant(setup, "skewed", 6, start=cloud_now - timedelta(minutes=10), seed=60)
    _, calm = _tenant(setup, "calm", 3, start=recent(30), seed=61)
    config = _config(setup, initial_lookback="6h", overlap="15m")
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    cursor = _cursor(setup, skewed_id)
    assert cursor == _newest(first)
    assert cursor < datetime.now(UTC) - lag + timedelta(minutes=1)

    late = make_alerts(1, skewed_id, cursor - timedelta(minutes=10), timedelta(minutes=1), seed=62)
    update = updated_version(first[0], cursor - timedelta(minutes=2), status="inProgress")
    newer = make_alerts(4, skewed_id, cursor + timedelta(minutes=20), timedelta(minutes=1), seed=63)
    setup.cloud.add_alerts(skewed_id, late + [update] + newer)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(setup, "skewed", first + late + [update] + newer)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, skewed_id) == _newest(newer)


def test_cloud_clock_ahead_of_the_forwarder(setup: CloudSetup) -> None:
    """The cloud's clock runs two hours ahead: every `lastUpdateDateTime` is in the forwarder's
    future. The first window (`now - initial_lookback`, open-ended) must take them in, the
    cursor must follow the cloud's stamps (not be clamped to the local clock, which would
    re-read forever or, worse, be compared against local time and skip), and later versions
    stamped further in the future must still arrive, once."""
    ahead = timedelta(hours=2)
    cloud_now = datetime.now(UTC) + ahead
    fast_id, first = _tenant(setup, "fast", 6, start=cloud_now - timedelta(minutes=10), seed=70)
    _, calm = _tenant(setup, "calm", 3, start=recent(30), seed=71)
    config = _config(setup, initial_lookback="1h", overlap="15m")
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(setup, "fast", first)
    assert _cursor(setup, fast_id) == _newest(first) > datetime.now(UTC) + timedelta(hours=1)

    update = updated_version(first[2], cloud_now + timedelta(minutes=3), status="resolved")
    newer = make_alerts(4, fast_id, cloud_now + timedelta(minutes=5), timedelta(minutes=1), seed=72)
    setup.cloud.add_alerts(fast_id, [update] + newer)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stderr
    _assert_exactly_once(setup, "fast", first + [update] + newer)
    _assert_exactly_once(setup, "calm", calm)
    assert _cursor(setup, fast_id) == _newest(newer)
