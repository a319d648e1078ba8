"""The WebSocket front of the Event Hubs peer, driven by the real SDK over wss (and ws), and
refusing what the service would not speak."""
from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
from azure.eventhub import EventData, TransportType
from azure.eventhub.aio import EventHubProducerClient

from tests.peers.eventhub_peer import EventHubPeer
from tests.peers.eventhub_ws import PATH, SUBPROTOCOL, WebSocketFront


async def _produce(front: WebSocketFront, bodies: list[bytes], **options: object) -> None:
    producer = EventHubProducerClient.from_connection_string(
        front.connection_string(), custom_endpoint_address=front.endpoint,
        transport_type=TransportType.AmqpOverWebsocket, retry_total=0, **options)
    async with producer:
        batch = await producer.create_batch(partition_key="k")
        for body in bodies:
            batch.add(EventData(body))
        await producer.send_batch(batch)


def test_the_sdk_sends_over_wss_to_the_peer() -> None:
    with EventHubPeer() as peer, WebSocketFront(peer) as front:
        asyncio.run(_produce(front, [b"one", b"two" * 40000], connection_verify=str(front.ca_file)))
        assert [e.body for e in peer.wait_for(2)] == [b"one", b"two" * 40000]
        assert front.requests and all(r.path == PATH and r.subprotocols == (SUBPROTOCOL,) and r.tls
                                      for r in front.requests)
        assert peer.errors == []


def test_the_sdk_does_not_trust_the_front_without_its_ca() -> None:
    with EventHubPeer() as peer, WebSocketFront(peer) as front:
        with pytest.raises(Exception, match="(?i)certificate"):
            asyncio.run(_produce(front, [b"x"]))
        assert peer.events() == []


def test_plain_ws_when_asked() -> None:
    with EventHubPeer() as peer, WebSocketFront(peer, tls=False) as front:
        asyncio.run(_produce_plain(front))
        assert len(peer.wait_for(1)) == 1
        assert front.requests[0].tls is False


async def _produce_plain(front: WebSocketFront) -> None:
    producer = EventHubProducerClient.from_connection_string(
        front.connection_string() + ";UseDevelopmentEmulator=true", custom_endpoint_address=front.endpoint,
        transport_type=TransportType.AmqpOverWebsocket, retry_total=0)
    async with producer:
        batch = await producer.create_batch()
        batch.add(EventData(b"x"))
        await producer.send_batch(batch)


@pytest.mark.parametrize(("path", "protocols", "status"), [("/other", (SUBPROTOCOL,), 404), (PATH, ("mqtt",), 400)])
def test_other_paths_and_subprotocols_are_refused(path: str, protocols: tuple[str, ...], status: int) -> None:
    async def connect(front: WebSocketFront) -> int:
        context = ssl.create_default_context(cafile=str(front.ca_file))
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"wss://127.0.0.1:{front.port}{path}", protocols=protocols,
                                              ssl=context):
                    return 101
            except aiohttp.WSServerHandshakeError as err:
                return err.status

    with EventHubPeer() as peer, WebSocketFront(peer) as front:
        assert asyncio.run(connect(front)) == status
        assert peer.stats()["connections"] == 0
