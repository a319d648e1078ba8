"""The Event Hubs test peer, driven by the real azure-eventhub SDK (sync and aio producers).

No mocking: every check sends AMQP over a loopback socket to tests/peers/eventhub_peer.py, the
way the connector will. Every SDK call is bounded: retry_total 0 (or small) with a tiny
backoff, auth_timeout 3 s, and send timeouts, so a broken peer fails fast instead of hanging.
The exception classes asserted here are what azure-eventhub 5.15.1 raises; they document what
the connector has to handle.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.eventhub import EventData, EventHubProducerClient
from azure.eventhub.aio import EventHubProducerClient as AsyncProducerClient
from azure.eventhub.exceptions import AuthenticationError, ConnectError, EventDataSendError

from tests.peers import amqp_codec
from tests.peers.amqp_codec import Described, Symbol, Timestamp, UInt, ULong
from tests.peers.eventhub_peer import BATCH_FORMAT, DEFAULT_HUB, DEFAULT_KEY, EventHubPeer

REPO = Path(__file__).resolve().parents[2]
FAST = {"retry_total": 0, "auth_timeout": 3}  # fail at once: a hang is a bug in the peer
SEND_TIMEOUT = 10


@pytest.fixture
def peer() -> Iterator[EventHubPeer]:
    with EventHubPeer(other_hubs=["audit-alerts"]) as running:
        yield running
    assert running.errors == []  # a protocol error the SDK survived is still a peer bug
    assert [t.name for t in threading.enumerate() if t.name.startswith("eventhub-peer")] == []  # stop() joined


def producer(peer: EventHubPeer, hub: str | None = None, *, key: str = DEFAULT_KEY,
             **options: Any) -> EventHubProducerClient:
    return EventHubProducerClient.from_connection_string(peer.connection_string(hub, key=key),
                                                         **{**FAST, **options})


def alert(i: int, tenant: str = "tenant-1") -> EventData:
    """An event shaped like Defender XDR's streaming API output."""
    record = {"time": "2024-01-01T00:00:00Z", "tenantId": tenant, "operationName": "Publish",
              "category": "AdvancedHunting-AlertInfo", "properties": {"AlertId": f"da{i}"}}
    event = EventData(json.dumps({"records": [record]}))
    event.message_id = f"msg-{i}"
    event.content_type = "application/json"
    event.properties = {"tenant": tenant, "seq": i}
    return event


# ---------------------------------------------------------------- management and a batch

def test_partition_ids_and_hub_properties(peer: EventHubPeer) -> None:
    with producer(peer) as client:
        assert client.get_partition_ids() == ["0", "1", "2", "3"]
        properties = client.get_eventhub_properties()
        partition = client.get_partition_properties("2")
    assert properties["eventhub_name"] == DEFAULT_HUB
    assert properties["partition_ids"] == ["0", "1", "2", "3"]
    assert abs(properties["created_at"].timestamp() - peer.created_at) < 1
    assert (partition["id"], partition["is_empty"]) == ("2", True)
    assert [(r.operation, r.type, r.name, r.partition, r.status) for r in peer.management] == [
        ("READ", "com.microsoft:eventhub", DEFAULT_HUB, None, 200),
        ("READ", "com.microsoft:eventhub", DEFAULT_HUB, None, 200),
        ("READ", "com.microsoft:partition", DEFAULT_HUB, "2", 200)]


def test_unknown_hub_is_404(peer: EventHubPeer) -> None:
    with producer(peer, "no-such-hub") as client, pytest.raises(ConnectError, match="404"):
        client.get_eventhub_properties()
    assert [r.status for r in peer.management] == [404]


def test_batch_with_partition_key_arrives_intact(peer: EventHubPeer) -> None:
    with producer(peer) as client:
        batch = client.create_batch(partition_key="tenant-1")
        for i in range(3):
            batch.add(alert(i))
        client.send_batch(batch, timeout=SEND_TIMEOUT)
    events = peer.wait_for(3, timeout=5)
    assert [e.json()["records"][0]["properties"]["AlertId"] for e in events] == ["da0", "da1", "da2"]
    first = events[0]
    assert (first.message_id, first.content_type) == ("msg-0", "application/json")
    assert first.application_properties == {"tenant": "tenant-1", "seq": 0}
    assert first.annotations["x-opt-partition-key"] == "tenant-1"
    assert first.partition_key == "tenant-1"
    assert (first.hub, first.partition_id, first.batch) == (DEFAULT_HUB, None, True)
    assert first.target == f"amqps://127.0.0.1:{peer.port}/{DEFAULT_HUB}"  # amqps even without TLS
    assert {e.delivery for e in events} == {1} and len({e.connection for e in events}) == 1
    [delivery] = peer.deliveries
    assert (delivery.message_format, delivery.events, delivery.outcome) == (BATCH_FORMAT, 3, "accepted")
    # every connection (here only the producer's) puts a SAS token for the hub
    assert {(t.type, t.audience, t.key_name, t.status) for t in peer.tokens} == {
        ("servicebus.windows.net:sastoken", f"sb://127.0.0.1:{peer.port}/{DEFAULT_HUB}", "send", 202)}
    assert all(t.expires and t.expires > time.time() for t in peer.tokens)


def test_async_producer_to_a_partition_of_another_hub(peer: EventHubPeer) -> None:
    async def send() -> list[str]:
        async with AsyncProducerClient.from_connection_string(peer.connection_string("audit-alerts"),
                                                              **FAST) as client:
            batch = await client.create_batch(partition_id="3")
            batch.add(EventData(b"to partition 3"))
            await client.send_batch(batch, timeout=SEND_TIMEOUT)
            return await client.get_partition_ids()

    assert asyncio.run(send()) == ["0", "1", "2", "3"]
    [event] = peer.wait_for(1, timeout=5, hub="audit-alerts")
    assert (event.hub, event.partition_id, event.body, event.partition_key) == ("audit-alerts", "3",
                                                                                 b"to partition 3", None)
    assert event.target.endswith("/audit-alerts/Partitions/3")
    assert peer.events(DEFAULT_HUB) == []


def test_token_credential_sends_a_jwt(peer: EventHubPeer) -> None:
    # What an azure-identity credential does; use_tls=False is the constructor's emulator switch.
    class Credential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            assert scopes == ("https://eventhubs.azure.net//.default",)
            return AccessToken("header.payload.signature", int(time.time()) + 3600)

    credential: Any = Credential()  # duck-typed like azure-identity's credentials
    with EventHubProducerClient(f"127.0.0.1:{peer.port}", DEFAULT_HUB, credential, use_tls=False, **FAST) as client:
        client.send_batch([EventData(b"jwt")], timeout=SEND_TIMEOUT)
    assert peer.wait_for(1, timeout=5)[0].body == b"jwt"
    assert {(t.type, t.key_name) for t in peer.tokens} == {("jwt", None)}


def test_more_sends_than_link_credit_on_one_link(peer: EventHubPeer) -> None:
    # the peer grants 300 credits and must keep topping them up, or the 301st send hangs
    with producer(peer) as client:
        for i in range(400):
            client.send_batch([EventData(b"%d" % i)], timeout=SEND_TIMEOUT)
    events = peer.wait_for(400, timeout=5)
    assert [e.body for e in events] == [b"%d" % i for i in range(400)]
    assert len({e.connection for e in events}) == 1


# ---------------------------------------------------------------- sizes

def test_batch_size_follows_advertised_max_message_size() -> None:
    limit = 256 * 1024  # a Basic namespace
    with EventHubPeer(max_message_size=limit, max_frame_size=16 * 1024) as small, producer(small) as client:
        batch = client.create_batch()
        assert batch.max_size_in_bytes == limit
        with pytest.raises(ValueError, match="too large"):
            client.create_batch(max_size_in_bytes=limit + 1)
        with pytest.raises(ValueError, match="size limit"):
            batch.add(EventData(b"x" * limit))  # one event bigger than the batch: the SDK refuses it
        added = 0
        with pytest.raises(ValueError, match="size limit"):
            while True:
                batch.add(alert(added))
                added += 1
        client.send_batch(batch, timeout=SEND_TIMEOUT)
        events = small.wait_for(added, timeout=5)
        [delivery] = small.deliveries
        assert len(events) == added > 100
        assert limit - 1024 < delivery.size <= limit
        assert delivery.frames > 10  # reassembled from 16 KiB frames
        assert small.errors == []


def test_oversize_transfer_is_rejected(peer: EventHubPeer) -> None:
    with producer(peer) as client:
        client.send_batch([EventData(b"attach the link first")], timeout=SEND_TIMEOUT)
        peer.max_message_size = 1000  # the producer still believes in the 1 MiB it was told
        batch = client.create_batch()
        batch.add(EventData(b"y" * 5000))
        with pytest.raises(EventDataSendError, match="message-size-exceeded|MessageSizeExceeded"):
            client.send_batch(batch, timeout=SEND_TIMEOUT)
    # the SDK resends once on a fresh link before giving up
    assert [d.outcome for d in peer.deliveries] == ["accepted"] + ["amqp:link:message-size-exceeded"] * 2
    assert [e.body for e in peer.events()] == [b"attach the link first"]


# ---------------------------------------------------------------- faults

def test_busy_once_is_resent_by_the_sdk(peer: EventHubPeer) -> None:
    # EventHubProducerClient.send_batch rebuilds its producer and sends once more after any
    # EventHubError, whatever retry_total says (here 0).
    with producer(peer) as client:
        peer.busy(1)
        client.send_batch([EventData(b"after one busy")], timeout=SEND_TIMEOUT)
    assert [d.outcome for d in peer.deliveries] == ["com.microsoft:server-busy", "accepted"]
    assert [e.body for e in peer.wait_for(1, timeout=5)] == [b"after one busy"]


@pytest.mark.parametrize("transfers", [2, 1_000_000], ids=["twice", "forever"])
def test_busy_twice_raises_whatever_retry_total(peer: EventHubPeer, transfers: int) -> None:
    # pyamqp's own retry policy is fixed at 0 retries and azure-eventhub raises a rejected
    # delivery as EventDataSendError without consulting retry_total: the connector must retry.
    with producer(peer, retry_total=3, retry_backoff_factor=0.01) as client:
        peer.busy(transfers)
        with pytest.raises(EventDataSendError) as raised:
            client.send_batch([EventData(b"throttled")], timeout=SEND_TIMEOUT)
    assert "com.microsoft:server-busy" in str(raised.value)
    assert "50002" in str(raised.value)
    assert [d.outcome for d in peer.deliveries] == ["com.microsoft:server-busy"] * 2
    assert peer.events() == []


def test_rejected_token_raises_authentication_error(peer: EventHubPeer) -> None:
    peer.reject_tokens = True
    with producer(peer) as client, pytest.raises(AuthenticationError, match="401"):
        client.send_batch([EventData(b"never")], timeout=SEND_TIMEOUT)
    assert [t.status for t in peer.tokens] == [401]
    assert peer.events() == []


def test_keys_are_checked_when_given() -> None:
    with EventHubPeer(keys={"send": "right-key"}) as checking:
        with producer(checking, key="right-key") as client:
            client.send_batch([EventData(b"signed")], timeout=SEND_TIMEOUT)
        with producer(checking, key="wrong-key") as client, pytest.raises(AuthenticationError):
            client.get_partition_ids()
        assert [t.status for t in checking.tokens] == [202, 401]
        assert [e.body for e in checking.events()] == [b"signed"]


def test_restart_keeps_events_and_the_producer_reconnects(peer: EventHubPeer) -> None:
    port = peer.port
    with producer(peer, retry_total=2, retry_backoff_factor=0.01) as client:
        client.send_batch([EventData(b"before")], timeout=SEND_TIMEOUT)
        peer.restart()
        assert peer.port == port
        client.send_batch([EventData(b"after")], timeout=SEND_TIMEOUT)
        peer.stop()
        with pytest.raises(ConnectError, match="Connection refused"):
            client.send_batch([EventData(b"peer down")], timeout=SEND_TIMEOUT)
        peer.start()
    before, after = peer.wait_for(2, timeout=5)
    assert (before.body, after.body) == (b"before", b"after")
    assert after.connection > before.connection  # a new TCP connection after the restart


# ---------------------------------------------------------------- standalone mode

def read_stats(port: int) -> dict[str, int]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        return json.loads(sock.makefile().readline())


def test_standalone_count_only(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.eventhub_peer", "--port", "0", "--count-only",
         "--max-message-size", "65536", "--ready-file", str(ready)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "Event Hubs peer did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["pid"] == process.pid
        with EventHubProducerClient.from_connection_string(info["connection_string"], **FAST) as client:
            batch = client.create_batch()
            assert batch.max_size_in_bytes == 65536
            for i in range(7):
                batch.add(alert(i))
            client.send_batch(batch, timeout=SEND_TIMEOUT)
            client.send_batch([EventData(b"one"), EventData(b"two")], timeout=SEND_TIMEOUT)
        stats = read_stats(info["stats_port"])
        assert (stats["events"], stats["deliveries"], stats["rejected"]) == (9, 2, 0)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert json.loads(stdout.splitlines()[0])["connection_string"] == info["connection_string"]
    assert json.loads(stderr.splitlines()[-1])["events"] == 9


# ---------------------------------------------------------------- codec

def test_codec_round_trip() -> None:
    value = {Symbol("sym"): [None, True, False, 7, -3, 2.5, "text", b"\x00\xff", uuid.UUID(int=5),
                             Timestamp(1_700_000_000_000), UInt(9), {"nested": []}]}
    assert amqp_codec.decode_all(amqp_codec.encode_value(value) * 2) == [value, value]


def test_codec_performatives_carry_every_field() -> None:
    encoded = amqp_codec.performative(0x18, [], 1)  # close with its one (null) field
    assert encoded == b"\x00\x53\x18" + b"\xd0" + struct.pack(">II", 5, 1) + b"\x40"
    assert amqp_codec.decode_all(encoded) == [Described(0x18, [None])]
    assert amqp_codec.encode_value(ULong(0x70))[:1] == b"\x53"  # descriptors: smallulong


def test_codec_decodes_compact_forms_and_refuses_truncation() -> None:
    # compact forms other AMQP implementations use: str8, map8 with sym8 keys, array8 of sym8
    assert amqp_codec.decode_value(memoryview(bytes([0xA1, 0x02]) + b"hi"))[0] == "hi"
    assert amqp_codec.decode_value(memoryview(bytes([0xC1, 0x05, 0x02, 0xA3, 0x01]) + b"k" + b"\x41"))[0] == {"k": True}
    assert amqp_codec.decode_value(memoryview(bytes([0xE0, 0x06, 0x02, 0xA3, 0x01]) + b"a" + b"\x01b"))[0] == ["a", "b"]
    with pytest.raises(amqp_codec.DecodeError):
        amqp_codec.decode_value(memoryview(bytes([0xB1, 0, 0, 0, 9]) + b"short"))
    with pytest.raises(amqp_codec.DecodeError):
        amqp_codec.decode_value(memoryview(b"\xff"))
