"""Source `mde_alerts` against the simulated cloud's Defender for Endpoint API: its token, its
paging without nextLink, its quotas, consent per source, and one alert forwarded once when a
tenant reads both Graph and MDE (`run --once`, real MSAL and httpx on loopback)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from core.sources import KINDS
from core.sources.auth import AppSettings, endpoints, mde_scope
from tests.helpers import CloudSetup, read_ndjson, recent, run_cli
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.fake_cloud import Fault

MDE = "microsoftDefenderForEndpoint"


def _mde_tenant(setup: CloudSetup, label: str, n: int, sources: list[str], **options: Any) -> tuple[str, list]:
    tenant_id = setup.tenant(label, **options)
    alerts = make_alerts(n, tenant_id, recent(300), timedelta(minutes=1), seed=5)
    for alert in alerts:
        alert["serviceSource"] = MDE  # every one also on the MDE API
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.tenant_keys[label] = {"sources": sources}
    setup.app["mde_endpoint"] = setup.cloud.base_url
    return tenant_id, alerts


def _mde_queries(setup: CloudSetup, tenant_id: str) -> list[dict[str, str]]:
    return [{k: v[-1] for k, v in parse_qs(urlsplit(hit.path).query).items()}
            for hit in setup.cloud.hits if hit.kind == "mde_alerts" and hit.tenant == tenant_id]


def test_the_kind_declares_its_permission_path_and_version() -> None:
    kind = KINDS["mde_alerts"]
    assert (kind.permission.api, kind.permission.name) == ("WindowsDefenderATP", "Alert.Read.All")
    assert (kind.path, kind.version.id, kind.version.time, kind.mapping) == ("/api/alerts", "id",
                                                                            "lastUpdateTime", "mde_alerts")


@pytest.mark.filterwarnings("ignore:a literal secret")
def test_hosts_per_cloud_and_region_and_the_token_scope() -> None:
    def app(**keys: Any) -> AppSettings:
        return AppSettings(client_id="c", client_secret="s", **keys)

    assert endpoints(app()).mde == "https://api.security.microsoft.com"
    assert endpoints(app(mde_region="eu")).mde == "https://eu.api.security.microsoft.com"
    assert endpoints(app(cloud="gcc")).mde == "https://api-gcc.securitycenter.microsoft.us"
    assert endpoints(app(cloud="gcc-high")).mde == endpoints(app(cloud="dod")).mde == \
        "https://api-gov.securitycenter.microsoft.us"
    assert endpoints(app(mde_endpoint="https://127.0.0.1:9/")).mde == "https://127.0.0.1:9"
    assert mde_scope(app()) == "https://api.securitycenter.microsoft.com/.default"


def test_pages_by_time_without_nextlink_and_reads_every_alert_once(setup: CloudSetup) -> None:
    tenant_id, alerts = _mde_tenant(setup, "acme", 25, ["mde_alerts"])
    setup.forwarder["page_size"] = 10
    done = run_cli("run", "--once", "--config", str(setup.write()))
    assert done.returncode == 0, done.stderr
    out = read_ndjson(setup.out("acme"))
    assert sorted(line["id"] for line in out) == sorted(alert["id"] for alert in alerts)
    queries = _mde_queries(setup, tenant_id)
    assert len(queries) == 3  # 10 + 10 + 5: the bound moved to each page's last time
    assert all(q["$expand"] == "evidence" and q["$orderby"] == "lastUpdateTime asc" and q["$top"] == "10"
               for q in queries)
    bounds = [q["$filter"] for q in queries]
    assert len(set(bounds)) == 3 and all(b.startswith("lastUpdateTime ge ") for b in bounds)
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    assert len(read_ndjson(setup.out("acme"))) == 25  # the overlap re-read: nothing again


def test_a_page_all_at_one_time_is_stepped_over_with_skip(setup: CloudSetup) -> None:
    tenant_id, alerts = _mde_tenant(setup, "acme", 12, ["mde_alerts"])
    stamp = alerts[0]["lastUpdateDateTime"]
    setup.cloud.add_alerts(tenant_id, [{**alert, "lastUpdateDateTime": stamp} for alert in alerts])
    setup.forwarder["page_size"] = 5
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    assert len(read_ndjson(setup.out("acme"))) == 12
    # The first page moves the bound from the window's start to the one time; from there only
    # $skip can step on (a bound that cannot move would ask for the same page for ever).
    assert [q.get("$skip") for q in _mde_queries(setup, tenant_id)] == [None, None, "5", "10"]


def test_throttled_and_failing_pages_are_retried(setup: CloudSetup) -> None:
    tenant_id, alerts = _mde_tenant(setup, "acme", 6, ["mde_alerts"])
    setup.cloud.inject(tenant_id, Fault.status(503), Fault.status(429, retry_after=1))
    setup.forwarder["page_size"] = 2
    done = run_cli("run", "--once", "--config", str(setup.write()))
    assert done.returncode == 0, done.stderr
    assert len(read_ndjson(setup.out("acme"))) == 6
    codes = [hit.status for hit in setup.cloud.hits if hit.kind == "mde_alerts" and hit.tenant == tenant_id]
    # Each page after the first starts at the last one's time (its last record read again):
    # with pages of two that is one new alert a page: [1,2] [2,3] [3,4] [4,5] [5,6] [6].
    assert codes == [503, 429] + [200] * 6


def test_the_reader_keeps_both_quotas_per_tenant_apart_from_graphs() -> None:
    import asyncio

    import httpx
    from aiolimiter import AsyncLimiter

    from core.sources.contract import LiveContext
    from core.sources.mde import MdeSource

    app = AppSettings(client_id="c", client_secret="env:DF_TEST_CLIENT_SECRET")
    graph_budget = AsyncLimiter(1, 0.4)
    context = LiveContext(tenant_id="t", app=app, tokens=None, client=httpx.AsyncClient(),  # type: ignore[arg-type]
                          limiter=graph_budget, concurrency=asyncio.Semaphore(1), page_slots=asyncio.Semaphore(1),
                          page_size=50_000, max_pages=10, backoff_base=0.1)
    reader, other = MdeSource(KINDS["mde_alerts"], context), MdeSource(KINDS["mde_alerts"], context)
    assert (reader.minute.max_rate, reader.minute.time_period) == (100, 60)
    assert (reader.hour.max_rate, reader.hour.time_period) == (1500, 3600)
    assert reader.minute is not other.minute and reader.limiter is graph_budget  # its own, per tenant
    assert reader.page_size == 10_000  # MDE's largest page
    assert "Prefer" not in reader.headers("x")

    async def spend(n: int) -> tuple[bool, bool]:
        for _ in range(n):
            await reader._spend()
        return reader.minute.has_capacity(), reader.hour.has_capacity()

    # A minute's worth goes through at once, and then the minute's bucket waits (the hour's not).
    assert asyncio.run(spend(100)) == (False, True)


def test_missing_mde_consent_names_the_permission_and_graph_goes_on(setup: CloudSetup) -> None:
    _mde_tenant(setup, "acme", 3, ["graph_alerts", "mde_alerts"], mde_forbidden=True)
    done = run_cli("run", "--once", "--config", str(setup.write()))
    assert done.returncode == 1
    assert "WindowsDefenderATP Alert.Read.All" in done.stderr and "mde_alerts:" in done.stderr
    assert len(read_ndjson(setup.out("acme"))) == 3  # Graph's source read them all


def test_one_alert_reaches_the_sink_once_per_version_from_both_sources(setup: CloudSetup) -> None:
    tenant_id, alerts = _mde_tenant(setup, "acme", 8, ["mde_alerts", "graph_alerts"])
    office = make_alerts(2, tenant_id, recent(200), timedelta(minutes=1), seed=9)
    for alert in office:
        alert["serviceSource"] = "microsoftDefenderForOffice365"
        alert["id"] = "fa" + alert["id"][2:]
    setup.cloud.add_alerts(tenant_id, office)
    config = str(setup.write())
    assert run_cli("run", "--once", "--config", config).returncode == 0
    out = read_ndjson(setup.out("acme"))
    assert sorted(line["id"] for line in out) == sorted(alert["id"] for alert in alerts + office)
    # Graph's fields won: every line is a Graph alert (raw format: the alert as its API sent it).
    assert all("lastUpdateDateTime" in line for line in out)
    # Both sources were read (this tenant's requests: the cloud is the session's).
    assert any(hit.kind == "mde_alerts" and hit.tenant == tenant_id for hit in setup.cloud.hits)

    # Graph cannot be read for a while: MDE forwards what no source took yet, then Graph is
    # back and forwards the updates; no version twice.
    setup.cloud.tenants[tenant_id].graph_forbidden = True
    fresh = make_alerts(2, tenant_id, recent(5), timedelta(seconds=30), seed=11)
    for alert in fresh:
        alert["serviceSource"] = MDE
        alert["id"] = alert["id"] + "_new"
    setup.cloud.add_alerts(tenant_id, fresh)
    assert run_cli("run", "--once", "--config", config).returncode == 1  # Graph's 403
    out = read_ndjson(setup.out("acme"))
    assert [line["id"] for line in out[10:]] == [alert["id"] for alert in fresh]
    assert all("lastUpdateTime" in line for line in out[10:])  # read from MDE

    setup.cloud.tenants[tenant_id].graph_forbidden = False
    changed = [updated_version(fresh[0], recent(1)), updated_version(alerts[0], recent(1))]
    setup.cloud.add_alerts(tenant_id, changed)
    assert run_cli("run", "--once", "--config", config).returncode == 0
    out = read_ndjson(setup.out("acme"))
    versions = [(line["id"], line.get("lastUpdateDateTime") or line.get("lastUpdateTime")) for line in out]
    assert len(versions) == len(set(versions)) == 14  # 10 + 2 + 2 updates, each once
    assert [line["id"] for line in out[12:]] == sorted([fresh[0]["id"], alerts[0]["id"]], key=[
        line["id"] for line in out[12:]].index) and all("lastUpdateDateTime" in line for line in out[12:])


def test_check_probes_the_mde_api_with_its_token_and_names_its_permission(setup: CloudSetup) -> None:
    tenant_id, _ = _mde_tenant(setup, "acme", 2, ["graph_alerts", "mde_alerts"])
    _mde_tenant(setup, "refused", 2, ["mde_alerts"], mde_forbidden=True)
    done = run_cli("check", "--config", str(setup.write()))
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "acme (mde_alerts)" in out and "acme (graph_alerts)" in out
    assert "WindowsDefenderATP Alert.Read.All" in out and "refused" in out
    assert any(hit.kind == "mde_alerts" and hit.status == 200 and hit.tenant == tenant_id for hit in setup.cloud.hits)
