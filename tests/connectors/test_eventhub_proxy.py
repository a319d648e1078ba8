"""Event Hubs through a real proxy (tinyproxy): the SDK speaks AMQP over WebSockets over TLS
(wss), tunnelled by CONNECT, to the loopback peer's WebSocket front, and every event arrives.

The front listens on a free port, not 443: `custom_endpoint_address` (the SDK's own option)
points the producer at it, and `ca_file` makes it trust the front's trustme CA, as it would a
TLS-inspecting proxy's. Nothing is mocked: the real connector and the real CLI, the real SDK
and aiohttp, a real proxy process, bytes on loopback sockets."""
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.base import Event, Outcome
from connectors.eventhub import EventHubConnector, EventHubSinkConfig
from core.model.schema import EventMeta, Severity
from tests.helpers import CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.eventhub_ws import PATH, SUBPROTOCOL, WebSocketFront
from tests.peers.proxy import Proxy

pytestmark = pytest.mark.usefixtures("no_machine_proxy")


@pytest.fixture
def front(monkeypatch: pytest.MonkeyPatch) -> Iterator[WebSocketFront]:
    with EventHubPeer() as peer, WebSocketFront(peer) as running:
        monkeypatch.setenv("DF_TEST_EH_CONNECTION", running.connection_string())
        yield running


def _table(front: WebSocketFront) -> dict[str, Any]:
    return {"type": "eventhub", "connection_string": "env:DF_TEST_EH_CONNECTION", "retry_total": 0,
            "custom_endpoint_address": front.endpoint, "ca_file": str(front.ca_file),
            "retry_initial": "0.05s", "retry_max": "0.2s"}


def _connector(front: WebSocketFront, proxy: str | None = None, **keys: Any) -> EventHubConnector:
    connector = EventHubConnector("hub", EventHubSinkConfig.model_validate(_table(front) | keys))
    connector.proxy = proxy
    return connector


def _events(n: int) -> list[Event]:
    meta = EventMeta("t-1", "acme", "a", "t-1/a/2026", Severity.high, 1.5e9)
    return [Event(i, meta._replace(alert_id=f"a{i}", version_key=f"t-1/a{i}/2026"), b'{"n":%d}' % i)
            for i in range(n)]


def _send(connector: EventHubConnector, events: list[Event]) -> list[Any]:
    async def run() -> list[Any]:
        try:
            return await connector.send(events)
        finally:
            await connector.close()
    return asyncio.run(run())


def _target(front: WebSocketFront) -> str:
    return f"127.0.0.1:{front.port}"


def test_events_cross_the_proxy_over_websockets_and_tls(front: WebSocketFront, proxy: Proxy,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    results = _send(_connector(front), _events(5))
    assert [r.outcome for r in results] == [Outcome.OK] * 5
    received = front.peer.wait_for(5)
    assert sorted(e.message_id for e in received) == [f"t-1/a{i}/2026" for i in range(5)]
    assert proxy.connects() and set(proxy.connects()) == {_target(front)}
    assert front.requests and all(r.path == PATH and SUBPROTOCOL in r.subprotocols and r.tls
                                  for r in front.requests)
    assert front.peer.errors == []


def test_no_proxy_goes_straight_to_the_endpoint(front: WebSocketFront, proxy: Proxy,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    results = _send(_connector(front, proxy.url, transport="websockets"), _events(2))
    assert [r.outcome for r in results] == [Outcome.OK] * 2
    assert len(front.peer.wait_for(2)) == 2
    assert proxy.connects() == []
    assert front.requests  # WebSockets all the same, as `transport` says, but direct
    # Without a proxy and without `transport = "websockets"` the SDK speaks AMQP over TLS to
    # the endpoint's port, which this front (HTTP only) does not serve: the failure names it.
    results = _send(_connector(front, proxy.url), _events(1))
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert results[0].reason.startswith(f"127.0.0.1:{front.port}: ")
    assert "through proxy" not in results[0].reason


def test_authenticating_proxy_gets_the_credentials_of_the_proxy_url(front: WebSocketFront, tmp_path: Path) -> None:
    with Proxy(tmp_path, auth=("forwarder", "PROXY0SECRET")) as proxy:
        results = _send(_connector(front, proxy.url), _events(3))
        assert [r.outcome for r in results] == [Outcome.OK] * 3
        assert _target(front) in proxy.connects()
        wrong = proxy.url.replace("PROXY0SECRET", "WRONG0SECRET")
        results = _send(_connector(front, wrong), _events(1))
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert f"through proxy http://forwarder:***@127.0.0.1:{proxy.port}" in results[0].reason
    assert "SECRET" not in results[0].reason
    assert len(front.peer.events()) == 3  # the refused one never arrived


def test_a_proxy_that_is_down_is_retried_not_taken_for_a_refused_key(front: WebSocketFront) -> None:
    # With a custom endpoint the SDK reports a connection not made as an AuthenticationError.
    results = _send(_connector(front, "http://forwarder:PROXY0SECRET@127.0.0.1:9"), _events(1))
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert "connection refused (through proxy http://forwarder:***@127.0.0.1:9)" in results[0].reason
    assert "credentials" not in results[0].reason and "PROXY0SECRET" not in results[0].reason


def _cli_setup(setup: CloudSetup, front: WebSocketFront, proxy_url: str | None, alerts: int,
               endpoint_host: str = "127.0.0.1") -> Path:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(alerts, tenant_id, recent(60), timedelta(minutes=1)))
    if proxy_url is not None:
        setup.forwarder["proxy"] = proxy_url
    setup.sinks = {"hub": _table(front) | {"custom_endpoint_address": f"https://{endpoint_host}:{front.port}"}}
    return setup.write()


def test_run_once_delivers_every_alert_through_the_forwarder_proxy(setup: CloudSetup, front: WebSocketFront,
                                                                   proxy: Proxy) -> None:
    config = _cli_setup(setup, front, proxy.url, 4)
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    received = front.peer.wait_for(4)
    assert len(received) == 4 and len({e.message_id for e in received}) == 4
    assert {_target(front), setup.cloud.base_url.split("://")[1].split("/")[0]} <= set(proxy.connects())


def test_a_refusing_proxy_is_named_and_the_alerts_wait(setup: CloudSetup, front: WebSocketFront, proxy: Proxy,
                                                       tmp_path: Path) -> None:
    # The hub's endpoint is named localhost, Graph's 127.0.0.1: NO_PROXY lets Graph go
    # directly while HTTPS_PROXY (the refusing proxy, with a password) applies to the hub.
    setup.forwarder["once_deadline"] = "3s"  # how long `run --once` keeps retrying the hub
    config = _cli_setup(setup, front, None, 3, endpoint_host="localhost")
    (tmp_path / "refusing").mkdir()
    with Proxy(tmp_path / "refusing", refuse=True) as refusing:
        secret_url = f"http://forwarder:PROXY0SECRET@127.0.0.1:{refusing.port}"
        first = run_cli("run", "--once", "--config", str(config),
                        env={"HTTPS_PROXY": secret_url, "NO_PROXY": "127.0.0.1"})
        refused = refusing.connects()
    output = first.stdout + first.stderr
    assert f"through proxy http://forwarder:***@127.0.0.1:{refusing.port}" in output, output
    assert "PROXY0SECRET" not in output
    assert refused and set(refused) == {f"localhost:{front.port}"}
    assert front.peer.events() == []
    # The alerts waited in the outbox: the next run, through a proxy that lets it out, sends them.
    second = run_cli("run", "--once", "--config", str(config), env={"HTTPS_PROXY": proxy.url})
    assert second.returncode == 0, second.stdout + second.stderr
    received = front.peer.wait_for(3)
    assert len(received) == 3 and len({e.message_id for e in received}) == 3
    assert f"localhost:{front.port}" in proxy.connects()
