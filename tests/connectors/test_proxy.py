"""The network sinks through a real proxy (tinyproxy): HTTPS_PROXY and NO_PROXY from the
environment, `[forwarder] proxy` from the config, TLS verified end to end through the tunnel."""
from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Connector, Event, Outcome, SinkFatal
from connectors.elasticsearch import ElasticsearchConnector, ElasticsearchSinkConfig
from connectors.eventhub import EventHubConnector, EventHubSinkConfig
from connectors.splunk_hec import SplunkHecConnector, SplunkHecSinkConfig
from core.model.neterr import describe
from core.model.proxy import proxy_for
from core.model.schema import EventMeta, Severity
from core.sources.auth import http_session
from tests.helpers import CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.es_peer import EsPeer
from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.hec_peer import HecPeer, TokenSettings
from tests.peers.proxy import Proxy

# Each test says exactly which proxy variables the forwarder sees.
pytestmark = pytest.mark.usefixtures("no_machine_proxy")

TOKEN = "11111111-aaaa-4bbb-8ccc-SECRET0hec0token"
ES_KEY = "SECRET0es0api0key"


@pytest.fixture
def hec(monkeypatch: pytest.MonkeyPatch) -> Iterator[HecPeer]:
    monkeypatch.setenv("DF_TEST_HEC_TOKEN", TOKEN)
    with HecPeer(tokens={TOKEN: TokenSettings()}) as peer:
        yield peer


def _events(n: int) -> list[Event]:
    meta = EventMeta("t-1", "acme", "a", "t-1/a/2026", Severity.high, 1.5e9)
    return [Event(i, meta._replace(alert_id=f"a{i}", version_key=f"t-1/a{i}/2026"), b'{"n":%d}' % i)
            for i in range(n)]


def _hec_table(hec: HecPeer) -> dict[str, Any]:
    return {"type": "splunk_hec", "url": hec.url, "token": "env:DF_TEST_HEC_TOKEN", "ca_file": str(hec.ca_file),
            "retry_initial": "0.05s", "retry_max": "0.2s"}


async def _send(connector: Connector, events: list[Event]) -> list[Any]:
    try:
        return await connector.send(events)
    finally:
        await connector.close()


def _hec_connector(hec: HecPeer, proxy: str | None = None) -> SplunkHecConnector:
    connector = SplunkHecConnector("splunk", SplunkHecSinkConfig.model_validate(_hec_table(hec)))
    connector.proxy = proxy
    return connector


def _target(url: str) -> str:
    return url.split("://", 1)[1].split("/", 1)[0]


def test_hec_goes_through_https_proxy(hec: HecPeer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    results = asyncio.run(_send(_hec_connector(hec), _events(3)))
    assert [r.outcome for r in results] == [Outcome.OK] * 3
    assert len(hec.events()) == 3
    assert _target(hec.url) in proxy.connects()


def test_hec_explicit_proxy_wins_and_no_proxy_exempts(hec: HecPeer, proxy: Proxy,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there
    results = asyncio.run(_send(_hec_connector(hec, proxy.url), _events(1)))
    assert [r.outcome for r in results] == [Outcome.OK]
    assert proxy.connects() == [_target(hec.url)]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    results = asyncio.run(_send(_hec_connector(hec, proxy.url), _events(1)))
    assert [r.outcome for r in results] == [Outcome.OK]
    assert proxy.connects() == [_target(hec.url)]  # no second tunnel
    assert len(hec.events()) == 2


def test_forwarder_proxy_carries_login_graph_and_the_sink(setup: CloudSetup, hec: HecPeer, proxy: Proxy) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1)))
    setup.forwarder["proxy"] = proxy.url
    setup.sinks = {"splunk": _hec_table(hec)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(hec.events()) == 2
    targets = set(proxy.connects())
    assert {_target(setup.cloud.base_url), _target(hec.url)} <= targets


@pytest.fixture
def es(monkeypatch: pytest.MonkeyPatch) -> Iterator[EsPeer]:
    monkeypatch.setenv("DF_TEST_ES_KEY", ES_KEY)
    with EsPeer(api_key=ES_KEY) as peer:
        yield peer


def _es_connector(es: EsPeer, proxy: str | None = None, **keys: Any) -> ElasticsearchConnector:
    table = {"type": "elasticsearch", "hosts": [es.url], "api_key": "env:DF_TEST_ES_KEY",
             "ca_file": str(es.ca_file), "format": "raw"} | keys
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(table))
    connector.proxy = proxy
    return connector


def test_elasticsearch_goes_through_https_proxy(es: EsPeer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    results = asyncio.run(_send(_es_connector(es), _events(3)))
    assert [r.outcome for r in results] == [Outcome.OK] * 3
    assert len(es.documents()) == 3
    assert _target(es.url) in proxy.connects()


def test_elasticsearch_explicit_proxy_and_no_proxy(es: EsPeer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    results = asyncio.run(_send(_es_connector(es, proxy.url), _events(1)))
    assert [r.outcome for r in results] == [Outcome.OK]
    assert proxy.connects() == [_target(es.url)]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    results = asyncio.run(_send(_es_connector(es, proxy.url), _events(1)))
    assert [r.outcome for r in results] == [Outcome.OK]
    assert proxy.connects() == [_target(es.url)]  # the second went directly


def test_elasticsearch_pinned_fingerprint_through_a_proxy_is_one_clear_error(es: EsPeer, proxy: Proxy) -> None:
    connector = _es_connector(es, proxy.url, ca_file=None, ssl_assert_fingerprint=es.fingerprint)
    with pytest.raises(SinkFatal, match="ssl_assert_fingerprint cannot be used through a proxy"):
        asyncio.run(_send(connector, _events(1)))


def test_a_sink_no_proxy_carries_says_so_once(setup: CloudSetup, proxy: Proxy) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.bind(("127.0.0.1", 0))
        setup.tenant("contoso")
        setup.forwarder["proxy"] = proxy.url
        setup.sinks = {"siem": {"type": "syslog", "host": "127.0.0.1", "port": receiver.getsockname()[1],
                                "protocol": "udp"}}
        result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if "connects directly" in line]
    assert len(lines) == 1 and "sink siem: syslog" in lines[0]


# Event Hubs: through a proxy the SDK speaks AMQP over WebSockets, which the AMQP peer's plain
# TCP port does not serve. Here, with the emulator connection string: the WebSocket request
# reaching the proxy, a failure that names the proxy (password masked), and NO_PROXY keeping
# plain AMQP. Delivery through the proxy over wss: test_eventhub_proxy.py (the WebSocket front).
@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventHubPeer]:
    with EventHubPeer() as peer:
        monkeypatch.setenv("DF_TEST_EH_CONNECTION", peer.connection_string())
        yield peer


def _hub_connector(proxy: str | None = None) -> EventHubConnector:
    table = {"type": "eventhub", "connection_string": "env:DF_TEST_EH_CONNECTION", "retry_total": 0}
    connector = EventHubConnector("hub", EventHubSinkConfig.model_validate(table))
    connector.proxy = proxy
    return connector


def test_eventhub_goes_to_the_proxy_over_websockets(hub: EventHubPeer, proxy: Proxy,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    results = asyncio.run(_send(_hub_connector(), _events(1)))
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert f"through proxy {proxy.url}" in results[0].reason
    # The emulator endpoint of the peer is ws:// (a real namespace is wss://, CONNECT on 443).
    assert "/$servicebus/websocket" in proxy.log()


def test_eventhub_failure_through_a_proxy_masks_its_password(hub: EventHubPeer, tmp_path: Path) -> None:
    with Proxy(tmp_path, refuse=True) as refusing:
        secret_url = f"http://forwarder:PROXY0SECRET@127.0.0.1:{refusing.port}"
        results = asyncio.run(_send(_hub_connector(secret_url), _events(1)))
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert f"through proxy http://forwarder:***@127.0.0.1:{refusing.port}" in results[0].reason
    assert "PROXY0SECRET" not in results[0].reason


def test_eventhub_no_proxy_keeps_plain_amqp(hub: EventHubPeer, proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    results = asyncio.run(_send(_hub_connector(proxy.url), _events(2)))
    assert [r.outcome for r in results] == [Outcome.OK] * 2
    assert "/$servicebus/websocket" not in proxy.log()


def test_setup_elasticsearch_goes_through_forwarder_proxy(setup: CloudSetup, es: EsPeer, proxy: Proxy) -> None:
    setup.tenant("contoso")
    setup.forwarder["proxy"] = proxy.url
    setup.sinks = {"elastic": {"type": "elasticsearch", "hosts": [es.url], "api_key": "env:DF_TEST_ES_KEY",
                               "ca_file": str(es.ca_file)}}
    result = run_cli("setup", "elasticsearch", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(": installed") == 3  # the policy and the two kinds' templates
    assert _target(es.url) in proxy.connects()


# ---- a proxy that demands credentials (tinyproxy's BasicAuth), through the CLI ----------------------
PROXY_USER, PROXY_PASSWORD = "forwarder", "PROXY0SECRET-pass"


@pytest.fixture
def auth_proxy(tmp_path: Path) -> Iterator[Proxy]:
    (tmp_path / "auth-proxy").mkdir()
    with Proxy(tmp_path / "auth-proxy", auth=(PROXY_USER, PROXY_PASSWORD)) as running:
        yield running


def _with_password(proxy: Proxy, password: str) -> str:
    return f"http://{PROXY_USER}:{password}@127.0.0.1:{proxy.port}"


def test_forwarder_proxy_with_credentials_carries_login_graph_and_elasticsearch(
        setup: CloudSetup, es: EsPeer, auth_proxy: Proxy) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1)))
    setup.forwarder["proxy"] = _with_password(auth_proxy, PROXY_PASSWORD)
    setup.sinks = {"elastic": {"type": "elasticsearch", "hosts": [es.url], "api_key": "env:DF_TEST_ES_KEY",
                               "ca_file": str(es.ca_file)}}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(es.documents()) == 2
    assert {_target(setup.cloud.base_url), _target(es.url)} <= set(auth_proxy.connects())
    assert PROXY_PASSWORD not in result.stdout + result.stderr


def test_https_proxy_with_credentials_carries_login_graph_and_hec(
        setup: CloudSetup, hec: HecPeer, auth_proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1)))
    monkeypatch.setenv("HTTPS_PROXY", _with_password(auth_proxy, PROXY_PASSWORD))
    setup.sinks = {"splunk": _hec_table(hec)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(hec.events()) == 2
    assert {_target(setup.cloud.base_url), _target(hec.url)} <= set(auth_proxy.connects())


def test_a_wrong_proxy_password_is_one_clear_line_and_never_shown(
        setup: CloudSetup, hec: HecPeer, auth_proxy: Proxy) -> None:
    wrong = "WRONG0proxy0pass"
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1)))
    setup.forwarder["proxy"] = _with_password(auth_proxy, wrong)
    setup.sinks = {"splunk": _hec_table(hec)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1, result.stdout + result.stderr  # README: some tenants failed
    masked = f"http://{PROXY_USER}:***@127.0.0.1:{auth_proxy.port}"
    lines = [line for line in result.stderr.splitlines() if "ERROR" in line]
    # tinyproxy 1.11 answers a CONNECT with wrong credentials 401 (not 407); told as it said.
    assert lines == [f"{lines[0].split(' ERROR ')[0]} ERROR defender_forwarder.pipeline: tenant contoso: login service "
                     f"unreachable: {_target(setup.cloud.base_url)}: proxy {masked} refused the connection: "
                     "401 Unauthorized; check the user and password in the proxy URL (will retry next cycle)"], \
        result.stderr
    assert "Traceback" not in result.stderr
    assert hec.events() == []
    stored = b"".join(path.read_bytes() for path in setup.state.parent.glob(setup.state.name + "*"))
    assert b"login service unreachable" in stored  # the tenant's last error is kept...
    for text in (result.stdout, result.stderr, auth_proxy.log(), stored.decode("utf-8", "replace")):
        assert wrong not in text  # ...and the password is nowhere


def test_a_percent_encoded_proxy_password_reaches_the_proxy_decoded(setup: CloudSetup, hec: HecPeer) -> None:
    """`p%40ss` in the URL is the password `p@ss`, for httpx (Graph, HEC, Elasticsearch) and
    requests (the login) alike; a proxy that refuses it is told with the password masked.
    (tinyproxy's config cannot hold an `@`: a loopback proxy that only reads the CONNECT.)"""
    seen: list[str] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        port = listener.getsockname()[1]

        def refuse(count: int) -> None:
            for _ in range(count):
                conn, _ = listener.accept()
                with conn:
                    head = conn.recv(65536).decode("latin-1")
                    seen.extend(line.split(" ", 2)[2] for line in head.split("\r\n")
                                if line.lower().startswith("proxy-authorization: basic "))
                    conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=refuse, args=(2,), daemon=True)
        thread.start()
        url = f"http://forwarder:p%40ss@127.0.0.1:{port}"
        results = asyncio.run(_send(_hec_connector(hec, url), _events(1)))
        session = http_session(None, 1, 5, url)
        with pytest.raises(Exception) as caught:
            session.get(f"{setup.cloud.base_url}/x")
        thread.join(10)
    assert [base64.b64decode(value).decode() for value in seen] == ["forwarder:p@ss"] * 2
    masked = f"proxy http://forwarder:***@127.0.0.1:{port} refused the connection: 407 Proxy Authentication Required"
    assert [r.outcome for r in results] == [Outcome.RETRY] and masked in results[0].reason, results[0].reason

    proxy_for(setup.cloud.base_url, url)  # what the pipeline does before it logs in
    assert masked in describe(caught.value), describe(caught.value)
    assert "p@ss" not in results[0].reason + describe(caught.value)
