"""Login (MSAL's requests session) and Graph (httpx) through a real proxy (tinyproxy): from
HTTPS_PROXY, from `[forwarder] proxy`, with an app's ca_file set (TLS end to end through the
CONNECT tunnel), and not for a host NO_PROXY names."""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.helpers import CloudSetup, read_ndjson, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.proxy import Proxy

# Each test says exactly which proxy variables the forwarder sees.
pytestmark = pytest.mark.usefixtures("no_machine_proxy")


def _forwarded(setup: CloudSetup, env: dict[str, str]) -> tuple[list[str], str]:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(3, tenant_id, recent(60), timedelta(minutes=1)))
    result = run_cli("run", "--once", "--config", str(setup.write()), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return [a["id"] for a in read_ndjson(setup.out("contoso"))], result.stdout + result.stderr


def _cloud_target(setup: CloudSetup) -> str:
    return setup.cloud.base_url.removeprefix("https://")


def test_login_and_graph_go_through_https_proxy_with_ca_file_set(setup: CloudSetup, proxy: Proxy) -> None:
    # CloudSetup gives the app a ca_file: it must not switch the environment's proxy off.
    ids, _ = _forwarded(setup, {"HTTPS_PROXY": proxy.url})
    assert len(ids) == 3
    # Login and Graph are both the simulated cloud's host: each pool opens its own tunnel.
    assert proxy.connects().count(_cloud_target(setup)) >= 2


def test_explicit_proxy_wins_over_the_environment(setup: CloudSetup, proxy: Proxy) -> None:
    setup.forwarder["proxy"] = proxy.url
    ids, _ = _forwarded(setup, {"HTTPS_PROXY": "http://127.0.0.1:9"})  # nothing listens there
    assert len(ids) == 3
    assert _cloud_target(setup) in proxy.connects()


def test_no_proxy_host_is_reached_directly(setup: CloudSetup, proxy: Proxy) -> None:
    setup.forwarder["proxy"] = proxy.url
    ids, _ = _forwarded(setup, {"NO_PROXY": "127.0.0.1"})
    assert len(ids) == 3
    assert proxy.connects() == []


def test_a_proxy_password_is_not_printed(setup: CloudSetup) -> None:
    setup.forwarder["proxy"] = "http://user:PROXY0SECRET@127.0.0.1:9"  # nothing listens there
    tenant_id = setup.tenant("contoso")
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode != 0
    assert "PROXY0SECRET" not in result.stdout + result.stderr
    assert tenant_id  # the tenant's failure is reported, the secret is not


@pytest.mark.parametrize("value", ["ftp://proxy:21", "proxy.example:3128", "http://proxy.example", "http://:3128"])
def test_a_proxy_that_is_not_an_http_url_is_one_line(setup: CloudSetup, value: str) -> None:
    setup.forwarder["proxy"] = value
    setup.tenant("contoso")
    result = run_cli("validate", "--config", str(setup.write()))
    assert result.returncode != 0
    assert "forwarder.proxy" in result.stderr and "Traceback" not in result.stderr
