"""An Azure Event Hubs namespace on loopback, for tests and benchmarks (stdlib AMQP 1.0 peer).

No Event Hubs (nor its Docker emulator) can run here, so this peer speaks the part of AMQP 1.0
that the real `azure-eventhub` producer (sync and aio, pure-Python pyamqp transport, >= 5.12)
uses, over plain TCP: the client connects with `UseDevelopmentEmulator=true` in its connection
string, which switches TLS off and keeps the port.
Vendored from the spike the project started from. Off-the-shelf AMQP servers do not
work as the peer: pyamqp <= 5.15.1 indexes performative fields positionally and crashes on the
compact (trailing nulls omitted) encoding, so every frame here carries all its fields
(amqp_codec.performative).

Every connection (the SDK opens one per producer and one per management call) goes through:
  SASL: header `AMQP 3 1 0 0`, mechanisms [ANONYMOUS], init -> outcome ok (a client that skips
     SASL is served too);
  open / begin / attach / flow / transfer / disposition / detach / end / close, answered in kind;
  $cbs put-token -> 202 "Accepted" on the reply link (correlation-id = the request's
     message-id); 401 when `reject_tokens` is set, or when `keys` is given and the SAS token is
     not signed by one of them or has expired (the SDK then raises AuthenticationError). Every
     request is kept in `tokens` (type, audience, key name, expiry, status);
  $management READ com.microsoft:eventhub -> 200 {name, created_at, partition_count,
     partition_ids}; com.microsoft:partition -> 200 with an always-empty partition; 404 for an
     unknown hub or partition id, 400 for another operation or type. Kept in `management`;
  event links (target `amqps://<host:port>/<hub>` or `.../<hub>/Partitions/<id>`, hub names
     case-insensitive): attach answered with `max_message_size` (1 MiB default, what a Standard
     namespace advertises; 256 KiB mimics Basic), link credit kept topped up, transfers
     reassembled across frames (`max_frame_size`, 64 KiB default, forces large batches into
     several frames). Each delivery is accepted and settled, unless:
       - it is larger than `max_message_size` at that moment -> rejected with
         amqp:link:message-size-exceeded (lower `max_message_size` after a producer attached
         to make the peer refuse a batch the SDK believes fits);
       - `busy(n)` is pending -> rejected with com.microsoft:server-busy and the text the
         service uses for throttling (error 50002), see SERVER_BUSY_DESCRIPTION.
     An unknown hub or partition: the link is attached, then detached with amqp:not-found.
A batch (message-format 0x80013700, what the SDK sends for send_batch) carries one `data`
section per event, each a complete encoded message: it is unpacked into one `ReceivedEvent`
per inner message; any other format is one event. Every delivery, accepted or not, is kept in
`deliveries` (except in count_only mode, which keeps only the totals of stats()).

Choices where the service's behaviour is not known or not needed:
  * busy() and the size limit reject the delivery (the service's disposition for throttling,
    Azure/azure-sdk-for-python#20308, azure-uamqp-c#251); they do not detach the link (tried:
    the SDK then fails with odd errors, and even busy once is not recovered).
    What azure-eventhub 5.15.1 (pyamqp) does with a rejected delivery, whatever the condition:
    pyamqp's own retry policy is hard-wired to 0 retries, the producer raises it as
    EventDataSendError without consulting retry_total, and EventHubProducerClient.send_batch
    (sync and aio) rebuilds its producer and sends once more after any EventHubError. So busy(1)
    is invisible to the caller and busy(2) raises EventDataSendError even with retry_total=3
    (the uamqp transport used to retry server-busy after 4 s). A connector must retry it itself.
  * The peer does not assign partitions: an event sent to the hub (with or without a partition
    key) has partition_id None; partition properties always say "empty".
  * Key checking is off unless `keys` ({key name: key}) is given; JWT tokens (a TokenCredential
    client) are never checked.
Deliberately not implemented: receiving (consumer links are refused with amqp:not-implemented),
TLS and WebSockets (tests/peers/eventhub_ws.py serves both in front of this peer), idle time-outs and heartbeats of its own, session flow-control limits
(windows are advertised large and not enforced), link stealing / epochs, the other management
operations, geo-replication, the Kafka endpoint.

Thread-safe: one thread per connection, a lock around everything recorded; tests may flip
`reject_tokens`, `max_message_size`, `keys` and call busy() while clients are connected.
Received events survive stop() and restart() on the same port (connections are dropped).

Standalone, for benchmarks (the peer in its own process): serves until SIGTERM/SIGINT, prints
one JSON line {"connection_string", "stats_port", "pid"} and writes it to the ready file when
given. `--count-only` decodes every batch and each inner message but keeps nothing, so memory
stays flat. Totals: connect to 127.0.0.1:<stats_port>, read one JSON line
({"events", "deliveries", "rejected", "bytes", "connections"}), the peer closes; e.g.
  socket.create_connection(("127.0.0.1", stats_port)).makefile().readline()
  python -m tests.peers.eventhub_peer --port 0 [--hub H] [--partitions 0,1,2,3] [--max-message-size N]
      [--count-only] [--ready-file F]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote_plus, urlsplit

from tests.peers.amqp_codec import (
    Array,
    DecodeError,
    Described,
    Int,
    Message,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
    decode_message,
    decode_value,
    encode_message,
    performative,
)
from tests.peers.lifecycle import LoopbackPeer

HOST = "127.0.0.1"
MIB = 1024 * 1024
DEFAULT_HUB = "defender-alerts"
DEFAULT_PARTITION_IDS = ("0", "1", "2", "3")
DEFAULT_KEY_NAME = "send"
DEFAULT_KEY = "peer-test-key-not-a-secret"
DEFAULT_MAX_MESSAGE_SIZE = MIB  # Standard/Premium publication limit (event-hubs-quotas)
DEFAULT_MAX_FRAME_SIZE = 64 * 1024  # smaller than the SDK's 1 MiB, so big batches span frames
LINK_CREDIT = 300
MAX_FRAME_READ = 16 * MIB  # a sanity bound on frames read: the SDK keeps to our max_frame_size

SASL_HEADER = b"AMQP\x03\x01\x00\x00"
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
BATCH_FORMAT = 0x80013700  # azure pyamqp BatchMessage._code

# performatives (AMQP 1.0 part 2.7) and the number of fields each must carry
OPEN, BEGIN, ATTACH, FLOW, TRANSFER, DISPOSITION, DETACH, END, CLOSE = range(0x10, 0x19)
WIDTH = {OPEN: 10, BEGIN: 8, ATTACH: 14, FLOW: 11, TRANSFER: 11, DISPOSITION: 6, DETACH: 3, END: 1, CLOSE: 1}
SASL_MECHANISMS, SASL_INIT, SASL_OUTCOME = 0x40, 0x41, 0x44
SOURCE, TARGET, ERROR, ACCEPTED, REJECTED = 0x28, 0x29, 0x1D, 0x24, 0x25
SOURCE_WIDTH, TARGET_WIDTH = 11, 7

CBS_NODE, MANAGEMENT_NODE = "$cbs", "$management"
SAS_TOKEN_TYPE = "servicebus.windows.net:sastoken"
SERVER_BUSY = "com.microsoft:server-busy"
# The service's throttling text (Azure/azure-sdk-for-python#20308), without its tracking ids.
SERVER_BUSY_DESCRIPTION = ("The request was terminated because the entity is being throttled. Error code : 50002. "
                           "Sub error : 102. Please wait 4 seconds and try again.")
MESSAGE_SIZE_EXCEEDED = "amqp:link:message-size-exceeded"
NOT_FOUND = "amqp:not-found"
NOT_IMPLEMENTED = "amqp:not-implemented"
INTERNAL_ERROR = "amqp:internal-error"


# ---------------------------------------------------------------- public records

@dataclass(frozen=True)
class ReceivedEvent:
    """One event as the hub received it (an inner message of a batch, or a plain message)."""

    hub: str  # the configured spelling
    target: str  # the link's target address as the client sent it
    partition_id: str | None  # from a `.../Partitions/<id>` target; None: sent to the hub
    body: bytes  # the data section(s) joined
    properties: dict[str, Any]  # message properties present, by name: message_id, content_type, ...
    application_properties: dict[str, Any]  # EventData.properties
    annotations: dict[str, Any]  # the event's message annotations
    partition_key: str | None  # x-opt-partition-key of the event, else of its batch
    connection: int  # 1-based number of the TCP connection it came on (counts across restarts)
    delivery: int  # 1-based number of the AMQP delivery (one per send_batch) that carried it
    batch: bool  # it came inside a 0x80013700 batch
    value: Any = None  # an amqp-value body, for a message that has one instead of data

    @property
    def message_id(self) -> Any:
        return self.properties.get("message_id")

    @property
    def content_type(self) -> str | None:
        return self.properties.get("content_type")

    @property
    def correlation_id(self) -> Any:
        return self.properties.get("correlation_id")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Delivery:
    """One AMQP delivery on an event link (a whole batch), accepted or rejected."""

    number: int  # 1-based, peer-wide
    connection: int
    target: str
    message_format: int
    size: int  # bytes of the (reassembled) message
    frames: int
    events: int  # events decoded from it (0 when rejected)
    outcome: str  # "accepted" or the rejection's error condition


@dataclass(frozen=True)
class TokenRequest:
    """One $cbs put-token request."""

    connection: int
    type: str  # servicebus.windows.net:sastoken, or jwt for a TokenCredential
    audience: str  # the `name`: sb://<host:port>/<hub>
    key_name: str | None  # skn of a SAS token
    expires: int | None  # se of a SAS token (epoch seconds)
    status: int  # what the peer answered


@dataclass(frozen=True)
class ManagementRequest:
    """One $management request."""

    connection: int
    operation: str | None
    type: str | None
    name: str | None
    partition: str | None
    status: int


@dataclass
class _Link:
    name: str
    remote_handle: int
    local_handle: int
    client_sends: bool
    source: str | None
    target: str | None
    hub: str | None = None  # event links only
    partition_id: str | None = None
    delivery_count: int = 0  # the client's, as far as we have received
    # the delivery being reassembled
    pieces: list[bytes] = field(default_factory=list)
    size: int = 0
    frames: int = 0
    delivery_id: int | None = None
    message_format: int = 0
    settled: bool = False


@dataclass
class _Session:
    channel: int  # we answer on the channel the client chose
    next_incoming_id: int
    next_outgoing_id: int = 0
    next_delivery_id: int = 0
    next_handle: int = 0
    links: dict[int, _Link] = field(default_factory=dict)  # by the client's handle
    reply_links: dict[str, _Link] = field(default_factory=dict)  # client receivers, by source address


class _Closed(Exception):
    """The client closed the connection (close performative)."""


def _error(condition: str, description: str | None = None) -> Described:
    return Described(ULong(ERROR), [Symbol(condition), description, None])


def _rejected(condition: str, description: str) -> Described:
    return Described(ULong(REJECTED), [_error(condition, description)])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _plain(mapping: Mapping[Any, Any]) -> dict[str, Any]:
    # keys arrive as Symbol (a str) or sometimes binary; tests compare with plain str
    return {_text(key) or "": value for key, value in mapping.items()}


def parse_target(address: str) -> tuple[str, str | None] | None:
    """(hub, partition id) of an event link target `[amqps://host:port]/<hub>[/Partitions/<id>]`."""
    path = urlsplit(address).path if "://" in address else address
    parts = [part for part in path.split("/") if part]
    if len(parts) == 1:
        return parts[0], None
    if len(parts) == 3 and parts[1].lower() == "partitions":
        return parts[0], parts[2]
    return None


# ---------------------------------------------------------------- one connection

class _Connection:
    """Serves one TCP connection in its own thread; everything shared goes through the peer."""

    def __init__(self, peer: EventHubPeer, sock: socket.socket, number: int) -> None:
        self.peer = peer
        self.sock = sock
        self.number = number
        self.reader: BinaryIO = sock.makefile("rb", buffering=256 * 1024)
        self.sessions: dict[int, _Session] = {}
        self.thread = threading.Thread(target=self._run, name=f"eventhub-peer-conn-{number}", daemon=True)

    # ---- frame I/O

    def _read(self, n: int) -> bytes:
        data = self.reader.read(n)
        if len(data) < n:
            raise ConnectionError("client hung up")
        return data

    def _read_frame(self) -> tuple[int, int, Described | None, bytes]:
        size, doff, frame_type, channel = struct.unpack(">IBBH", self._read(8))
        if size < 8 or doff < 2 or size > MAX_FRAME_READ:
            raise DecodeError(f"bad frame header: size {size}, doff {doff}")
        body = self._read(size - 8)[doff * 4 - 8:]
        if not body:
            return frame_type, channel, None, b""  # heartbeat
        perf, pos = decode_value(memoryview(body), 0)
        if not isinstance(perf, Described):
            raise DecodeError(f"frame body is not a performative: {perf!r}")
        return frame_type, channel, perf, body[pos:]

    def _send(self, channel: int, code: int, fields: list[Any], payload: bytes = b"", frame_type: int = 0) -> None:
        body = performative(code, fields, 2 if code == SASL_OUTCOME else WIDTH.get(code, 1)) + payload
        self.sock.sendall(struct.pack(">IBBH", 8 + len(body), 2, frame_type, channel) + body)

    # ---- main loop

    def _run(self) -> None:
        try:
            self._handshake()
            while True:
                _, channel, perf, payload = self._read_frame()
                if perf is not None:
                    self._dispatch(channel, int(perf.descriptor), list(perf.value or []), payload)
        except _Closed:
            pass
        except OSError:
            pass  # the client hung up, or stop() hung up on it
        except ValueError as error:  # DecodeError among them: bytes the peer cannot read
            self.peer._note_error(f"connection {self.number}: {error!r}")
        except Exception:  # noqa: BLE001 - a bug in the peer: keep it visible to the test
            self.peer._note_error(f"connection {self.number}: {traceback.format_exc()}")
        finally:
            self._close_socket()
            self.peer._forget(self)

    def _close_socket(self) -> None:
        for closing in (self.reader.close, self.sock.close):
            try:
                closing()
            except OSError:
                pass

    def hang_up(self) -> None:
        """From another thread (stop()): wakes the blocked read, the thread then exits."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handshake(self) -> None:
        header = self._read(8)
        if header == SASL_HEADER:
            self.sock.sendall(SASL_HEADER)
            self._sasl()
            header = self._read(8)
        if header != AMQP_HEADER:
            self.sock.sendall(AMQP_HEADER)  # the spec's answer to an unsupported header, then close
            raise ConnectionError(f"unsupported protocol header {header!r}")
        self.sock.sendall(AMQP_HEADER)

    def _sasl(self) -> None:
        self._send(0, SASL_MECHANISMS, [Array("symbol", ["ANONYMOUS"])], frame_type=1)
        _, _, init, _ = self._read_frame()
        if init is None or int(init.descriptor) != SASL_INIT:
            raise ConnectionError(f"expected sasl-init, got {init!r}")
        ok = _text(init.value[0]) == "ANONYMOUS"
        self._send(0, SASL_OUTCOME, [UByte(0 if ok else 1), None], frame_type=1)
        if not ok:
            raise ConnectionError(f"SASL mechanism {init.value[0]!r} refused")

    def _dispatch(self, channel: int, code: int, fields: list[Any], payload: bytes) -> None:
        fields += [None] * (WIDTH.get(code, 0) - len(fields))
        if code == OPEN:
            self._send(0, OPEN, ["eventhub-peer", None, UInt(self.peer.max_frame_size), UShort(65535), None,
                                 None, None, None, None, {Symbol("product"): "eventhub-peer"}])
        elif code == CLOSE:
            self._send(0, CLOSE, [None])
            raise _Closed
        elif code == BEGIN:
            self.sessions[channel] = _Session(channel, next_incoming_id=fields[1] or 0)
            self._send(channel, BEGIN, [UShort(channel), UInt(0), UInt(65536), UInt(65536), UInt(4095),
                                        None, None, None])
        elif channel not in self.sessions:
            pass  # pyamqp sends a detach after it ended the session: ignore
        elif code == ATTACH:
            self._attach(self.sessions[channel], fields)
        elif code == TRANSFER:
            self._transfer(self.sessions[channel], fields, payload)
        elif code == DETACH:
            self._detach(self.sessions[channel], fields)
        elif code == END:
            del self.sessions[channel]
            self._send(channel, END, [None])
        # FLOW (credit for our replies, which are few and always sent) and DISPOSITION (the
        # client settling our replies) need no answer

    # ---- links

    def _attach(self, session: _Session, fields: list[Any]) -> None:
        name, handle, role = fields[0], fields[1], fields[2]
        source = list(fields[5].value or []) if isinstance(fields[5], Described) else []
        target = list(fields[6].value or []) if isinstance(fields[6], Described) else []
        link = _Link(name=name, remote_handle=handle, local_handle=session.next_handle, client_sends=role is False,
                     source=_text(source[0]) if source else None, target=_text(target[0]) if target else None,
                     delivery_count=fields[9] or 0)
        session.next_handle += 1
        session.links[handle] = link
        # echo the termini with all their fields
        answer_source = Described(ULong(SOURCE), source + [None] * (SOURCE_WIDTH - len(source)))
        answer_target = Described(ULong(TARGET), target + [None] * (TARGET_WIDTH - len(target)))
        if link.client_sends:
            self._attach_receiver(session, link, answer_source, answer_target)
        else:
            self._attach_sender(session, link, answer_source, answer_target)

    def _attach_receiver(self, session: _Session, link: _Link, source: Described, target: Described) -> None:
        """The client sends on this link: $cbs / $management requests, or events."""
        self._send(session.channel, ATTACH, [link.name, UInt(link.local_handle), True, UByte(0), UByte(0), source,
                                             target, None, None, None, ULong(self.peer.max_message_size), None,
                                             None, {}])
        problem = None
        if link.target not in (CBS_NODE, MANAGEMENT_NODE):
            problem = self._resolve_event_link(link)
        if problem is not None:
            self._refuse(session, link, NOT_FOUND, problem)
            return
        self._grant(session, link)

    def _resolve_event_link(self, link: _Link) -> str | None:
        """Fills link.hub / partition_id; the reason the target is unknown, if it is."""
        parsed = parse_target(link.target or "")
        hub = self.peer._hub_name(parsed[0]) if parsed else None
        if parsed is None or hub is None:
            return f"The messaging entity '{link.target}' could not be found."
        if parsed[1] is not None and parsed[1] not in self.peer.partition_ids:
            return f"The messaging entity '{link.target}' could not be found. Partition {parsed[1]} does not exist."
        link.hub, link.partition_id = hub, parsed[1]
        return None

    def _attach_sender(self, session: _Session, link: _Link, source: Described, target: Described) -> None:
        """The client receives on this link: only the reply links of $cbs / $management."""
        self._send(session.channel, ATTACH, [link.name, UInt(link.local_handle), False, UByte(0), UByte(0), source,
                                             target, None, None, UInt(0), ULong(self.peer.max_message_size), None,
                                             None, {}])
        if link.source in (CBS_NODE, MANAGEMENT_NODE):
            session.reply_links[link.source] = link
        else:
            self._refuse(session, link, NOT_IMPLEMENTED, "This test peer does not deliver events to consumers.")

    def _refuse(self, session: _Session, link: _Link, condition: str, description: str) -> None:
        session.links.pop(link.remote_handle, None)
        self._send(session.channel, DETACH, [UInt(link.local_handle), True, _error(condition, description)])

    def _grant(self, session: _Session, link: _Link) -> None:
        # The client computes its credit as delivery-count(ours) + link-credit - delivery-count(its),
        # so the delivery count must follow what was received, or the credit runs out.
        self._send(session.channel, FLOW, [UInt(session.next_incoming_id), UInt(65536),
                                           UInt(session.next_outgoing_id), UInt(65536), UInt(link.local_handle),
                                           UInt(link.delivery_count), UInt(LINK_CREDIT), None, False, False, None])

    def _detach(self, session: _Session, fields: list[Any]) -> None:
        link = session.links.pop(fields[0], None)
        if link is None:
            return  # a link we already detached (refused): its detach answers ours
        if session.reply_links.get(link.source or "") is link:
            del session.reply_links[link.source or ""]
        self._send(session.channel, DETACH, [UInt(link.local_handle), bool(fields[1]), None])

    # ---- transfers

    def _transfer(self, session: _Session, fields: list[Any], payload: bytes) -> None:
        session.next_incoming_id += 1  # every transfer frame uses one transfer-id
        link = session.links.get(fields[0])
        if link is None or not link.client_sends:
            return  # a frame for a refused link
        if fields[1] is not None and link.frames == 0:  # the first frame of a delivery
            link.delivery_id, link.message_format, link.settled = fields[1], fields[3] or 0, bool(fields[4])
        link.frames += 1
        link.size += len(payload)
        if link.size <= self.peer.max_message_size:  # past the limit the rest is read and dropped
            link.pieces.append(payload)
        if fields[9]:  # aborted: the client gave the delivery up
            self._reset_delivery(link)
            return
        if fields[5]:  # more frames follow
            return
        raw, size, frames = b"".join(link.pieces), link.size, link.frames
        delivery_id, message_format, settled = link.delivery_id, link.message_format, link.settled
        self._reset_delivery(link)
        link.delivery_count += 1
        outcome = self._deliver(session, link, raw, size, frames, message_format)
        if not settled and delivery_id is not None:
            self._send(session.channel, DISPOSITION, [True, UInt(delivery_id), UInt(delivery_id), True, outcome,
                                                      False])
        if link.target not in (CBS_NODE, MANAGEMENT_NODE):
            self._grant(session, link)

    @staticmethod
    def _reset_delivery(link: _Link) -> None:
        link.pieces, link.size, link.frames, link.delivery_id = [], 0, 0, None

    def _deliver(self, session: _Session, link: _Link, raw: bytes, size: int, frames: int,
                 message_format: int) -> Described:
        """The outcome of a complete delivery."""
        try:
            if link.target == CBS_NODE:
                self._on_cbs(session, decode_message(raw))
            elif link.target == MANAGEMENT_NODE:
                self._on_management(session, decode_message(raw))
            else:
                return self.peer._receive(self.number, link, raw, size, frames, message_format)
        except DecodeError as error:
            return _rejected("amqp:decode-error", str(error))
        return Described(ULong(ACCEPTED), [])

    def _reply(self, session: _Session, node: str, request: Message, status: int, description: str,
               body: Any = None) -> None:
        link = session.reply_links.get(node)
        if link is None:
            raise ConnectionError(f"{node} request without a reply link")
        raw = encode_message(properties={"correlation_id": request.properties.get("message_id")},
                             application_properties={"status-code": Int(status), "status-description": description},
                             value=body)
        delivery_id = session.next_delivery_id
        session.next_delivery_id += 1
        session.next_outgoing_id += 1
        tag = struct.pack(">I", delivery_id)
        self._send(session.channel, TRANSFER, [UInt(link.local_handle), UInt(delivery_id), tag, UInt(0), True, False,
                                               None, None, None, None, None], payload=raw)

    def _on_cbs(self, session: _Session, request: Message) -> None:
        status, description = self.peer._check_token(self.number, _plain(request.application_properties),
                                                      request.value)
        self._reply(session, CBS_NODE, request, status, description)

    def _on_management(self, session: _Session, request: Message) -> None:
        status, description, body = self.peer._manage(self.number, _plain(request.application_properties))
        self._reply(session, MANAGEMENT_NODE, request, status, description, body)


# ---------------------------------------------------------------- the peer

class EventHubPeer(LoopbackPeer):
    """An Event Hubs namespace with one hub (and `other_hubs`) on one loopback port that stays
    the same across restart(). See the module docstring for what it does."""

    def __init__(self, hub: str = DEFAULT_HUB, *, partition_ids: Iterable[str] = DEFAULT_PARTITION_IDS,
                 other_hubs: Iterable[str] = (), port: int = 0, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                 max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, keys: Mapping[str, str] | None = None,
                 count_only: bool = False) -> None:
        if max_frame_size < 512:
            raise ValueError("max_frame_size must be at least 512 (AMQP's minimum)")
        self.hub = hub
        self.other_hubs = list(other_hubs)
        self.partition_ids = [str(pid) for pid in partition_ids]
        self.max_message_size = max_message_size  # advertised on attach, enforced per delivery
        self.max_frame_size = max_frame_size
        self.keys = dict(keys) if keys is not None else None  # None: any SAS token is fine
        self.reject_tokens = False  # True: every put-token gets 401
        self.count_only = count_only  # decode and count, keep no events or deliveries
        self.created_at = time.time()
        self._port = port
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when events arrive
        self._connections: dict[int, _Connection] = {}
        self._connection_count = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self._events: list[ReceivedEvent] = []
        self._deliveries: list[Delivery] = []
        self._tokens: list[TokenRequest] = []
        self._management: list[ManagementRequest] = []
        self._errors: list[str] = []
        self._busy = 0
        self._event_count = self._delivery_count = self._rejected_count = self._byte_count = 0

    # ---- lifecycle

    @property
    def host(self) -> str:
        return HOST

    @property
    def running(self) -> bool:
        return self._listener is not None

    def connection_string(self, hub: str | None = None, key_name: str = DEFAULT_KEY_NAME,
                          key: str = DEFAULT_KEY) -> str:
        """For `EventHubProducerClient.from_connection_string`; `hub` defaults to the peer's
        (any name may be given, e.g. to see an unknown hub refused)."""
        return (f"Endpoint=sb://{HOST}:{self.port};SharedAccessKeyName={key_name};SharedAccessKey={key};"
                f"EntityPath={hub or self.hub};UseDevelopmentEmulator=true")

    def start(self) -> str:
        """Listen (on the same port as before after a stop); returns the connection string."""
        if self._listener is not None:
            raise RuntimeError("EventHubPeer is already running")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind at once after restart
        listener.bind((HOST, self._port))
        listener.listen(128)
        self._port = listener.getsockname()[1]
        self._listener = listener
        self._accept_thread = threading.Thread(target=self._accept_loop, args=(listener,),
                                               name=f"eventhub-peer-{self._port}", daemon=True)
        self._accept_thread.start()
        return self.connection_string()

    def stop(self) -> None:
        """Stop listening and drop every connection; what was received is kept."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        try:
            listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        except OSError:
            pass
        listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
        with self._lock:
            connections = list(self._connections.values())
        for connection in connections:
            connection.hang_up()
        for connection in connections:
            connection.thread.join(timeout=5)


    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:
                return  # stop() closed the listener
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # replies must not wait for ACKs
            with self._lock:
                self._connection_count += 1
                connection = _Connection(self, sock, self._connection_count)
                self._connections[connection.number] = connection
            connection.thread.start()

    def _forget(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.pop(connection.number, None)

    # ---- test controls

    def busy(self, transfers: int) -> None:
        """The next `transfers` event deliveries are rejected with com.microsoft:server-busy.
        The SDK resends once by itself, then raises EventDataSendError (module docstring)."""
        with self._lock:
            self._busy = transfers

    def reset(self) -> None:
        """Forget events, deliveries, requests, errors and a pending busy(); settings stay."""
        with self._lock:
            self._reset_state()

    # ---- observation

    def events(self, hub: str | None = None) -> list[ReceivedEvent]:
        """Received events in arrival order, of one hub or of all."""
        with self._lock:
            return [event for event in self._events if hub is None or event.hub.lower() == hub.lower()]

    def wait_for(self, count: int, timeout: float = 10.0, hub: str | None = None) -> list[ReceivedEvent]:
        """At least `count` events (of `hub`, or of any; counted ones in count_only mode);
        AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._count_of(hub) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"Event Hubs peer got {self._count_of(hub)} of {count} event(s) within "
                                         f"{timeout} s; last deliveries: {self._deliveries[-5:]}; "
                                         f"errors: {self._errors[-3:]}")
                self._changed.wait(remaining)
            return [event for event in self._events if hub is None or event.hub.lower() == hub.lower()]

    def _count_of(self, hub: str | None) -> int:
        if hub is None or self.count_only:
            return self._event_count
        return sum(1 for event in self._events if event.hub.lower() == hub.lower())

    @property
    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self._deliveries)

    @property
    def tokens(self) -> list[TokenRequest]:
        with self._lock:
            return list(self._tokens)

    @property
    def management(self) -> list[ManagementRequest]:
        with self._lock:
            return list(self._management)

    @property
    def errors(self) -> list[str]:
        """Protocol errors and peer bugs seen on connections (a healthy run has none)."""
        with self._lock:
            return list(self._errors)

    def stats(self) -> dict[str, int]:
        """Totals since start or reset(); kept in count_only mode too."""
        with self._lock:
            return {"events": self._event_count, "deliveries": self._delivery_count,
                    "rejected": self._rejected_count, "bytes": self._byte_count,
                    "connections": self._connection_count}

    # ---- called from connection threads

    def _note_error(self, text: str) -> None:
        with self._lock:
            self._errors.append(text)

    def _hub_name(self, name: str | None) -> str | None:
        """The configured spelling of hub `name` (names are case-insensitive), None if unknown."""
        for hub in [self.hub, *self.other_hubs]:
            if name is not None and hub.lower() == name.lower():
                return hub
        return None

    def _check_token(self, connection: int, request: dict[str, Any], token: Any) -> tuple[int, str]:
        token_type = _text(request.get("type")) or ""
        audience = _text(request.get("name")) or ""
        sas = _parse_sas(_text(token) or "") if token_type == SAS_TOKEN_TYPE else {}
        key_name = sas.get("skn")
        expires = int(sas["se"]) if sas.get("se", "").isdigit() else None
        if _text(request.get("operation")) != "put-token":
            status, description = 400, f"The operation '{request.get('operation')}' is not supported."
        elif self.reject_tokens:
            status, description = 401, "InvalidSignature: The token has an invalid signature."
        else:
            status, description = self._verify_sas(sas) if token_type == SAS_TOKEN_TYPE else (202, "Accepted")
        with self._lock:
            self._tokens.append(TokenRequest(connection, token_type, audience, key_name, expires, status))
        return status, description

    def _verify_sas(self, sas: dict[str, str]) -> tuple[int, str]:
        keys = self.keys
        if keys is None:
            return 202, "Accepted"
        key = keys.get(sas.get("skn", ""))
        if key is None:
            return 401, f"InvalidIssuer: Token issuer is invalid. The key name '{sas.get('skn')}' is unknown."
        signed = f"{quote_plus(sas.get('sr', ''))}\n{sas.get('se', '')}".encode()
        expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
        if not hmac.compare_digest(expected, sas.get("sig", "")):
            return 401, "InvalidSignature: The token has an invalid signature."
        if not sas.get("se", "").isdigit() or int(sas["se"]) < time.time():
            return 401, "ExpiredToken: The token is expired."
        return 202, "Accepted"

    def _manage(self, connection: int, request: dict[str, Any]) -> tuple[int, str, Any]:
        operation, kind = _text(request.get("operation")), _text(request.get("type"))
        name, partition = _text(request.get("name")), _text(request.get("partition"))
        status, description, body = self._management_answer(operation, kind, name, partition)
        with self._lock:
            self._management.append(ManagementRequest(connection, operation, kind, name, partition, status))
        return status, description, body

    def _management_answer(self, operation: str | None, kind: str | None, name: str | None,
                           partition: str | None) -> tuple[int, str, Any]:
        hub = self._hub_name(name)
        if operation != "READ" or kind not in ("com.microsoft:eventhub", "com.microsoft:partition"):
            return 400, f"The operation '{operation}' on '{kind}' is not supported by this test peer.", None
        if hub is None:
            return 404, f"The messaging entity '{name}' could not be found.", None
        if kind == "com.microsoft:eventhub":
            return 200, "OK", {"name": hub, "type": kind, "created_at": Timestamp(int(self.created_at * 1000)),
                               "partition_count": Int(len(self.partition_ids)),
                               "partition_ids": Array("string", list(self.partition_ids))}
        if partition not in self.partition_ids:
            return 404, f"The partition '{partition}' of '{hub}' could not be found.", None
        return 200, "OK", {"name": hub, "type": kind, "partition": partition, "begin_sequence_number": 0,
                           "last_enqueued_sequence_number": -1, "last_enqueued_offset": "-1",
                           "last_enqueued_time_utc": Timestamp(0), "is_partition_empty": True}

    def _receive(self, connection: int, link: _Link, raw: bytes, size: int, frames: int,
                 message_format: int) -> Described:
        """Decide the outcome of an event delivery and record it."""
        outcome, rejection = self._fault(size)
        messages: list[Message] = []
        batch_key: str | None = None
        if rejection is None:
            try:  # decoded in count_only mode too: a benchmark must not count garbage
                messages, batch_key = _unpack(raw, message_format)
            except DecodeError as error:
                outcome, rejection = "amqp:decode-error", _rejected("amqp:decode-error", str(error))
        batch = message_format == BATCH_FORMAT
        with self._changed:
            self._delivery_count += 1
            number = self._delivery_count
            if rejection is not None:
                self._rejected_count += 1
            else:
                self._event_count += len(messages)
                self._byte_count += size
            if not self.count_only:
                self._deliveries.append(Delivery(number, connection, link.target or "", message_format, size,
                                                 frames, len(messages), outcome))
                self._events.extend(_event(connection, number, link, message, batch, batch_key)
                                    for message in messages)
            self._changed.notify_all()
        return rejection or Described(ULong(ACCEPTED), [])

    def _fault(self, size: int) -> tuple[str, Described | None]:
        if size > self.max_message_size:
            return MESSAGE_SIZE_EXCEEDED, _rejected(
                MESSAGE_SIZE_EXCEEDED, f"The received message (size:{size} bytes) exceeds the limit "
                                       f"({self.max_message_size} bytes) currently allowed on the link.")
        with self._lock:
            if self._busy > 0:
                self._busy -= 1
                return SERVER_BUSY, _rejected(SERVER_BUSY, SERVER_BUSY_DESCRIPTION)
        return "accepted", None


def _unpack(raw: bytes, message_format: int) -> tuple[list[Message], str | None]:
    """The events of a delivery (the inner messages of a batch, else the message itself) and
    the batch's partition key."""
    outer = decode_message(raw)
    if message_format != BATCH_FORMAT:
        return [outer], None
    return [decode_message(data) for data in outer.data], _text(outer.message_annotations.get("x-opt-partition-key"))


def _event(connection: int, delivery: int, link: _Link, message: Message, batch: bool,
           batch_key: str | None) -> ReceivedEvent:
    annotations = _plain(message.message_annotations)
    key = _text(annotations.get("x-opt-partition-key")) or batch_key
    return ReceivedEvent(hub=link.hub or "", target=link.target or "", partition_id=link.partition_id,
                         body=b"".join(message.data), properties=dict(message.properties),
                         application_properties=_plain(message.application_properties), annotations=annotations,
                         partition_key=key, connection=connection, delivery=delivery, batch=batch,
                         value=message.value)


def _parse_sas(token: str) -> dict[str, str]:
    """The fields of `SharedAccessSignature sr=..&sig=..&se=..&skn=..` (empty if it is not one)."""
    scheme, _, query = token.partition(" ")
    if scheme != "SharedAccessSignature":
        return {}
    return {name: values[0] for name, values in parse_qs(query).items()}


# ---------------------------------------------------------------- standalone mode

def _serve_stats(peer: EventHubPeer, listener: socket.socket) -> None:
    """One JSON line of peer.stats() per connection, then close."""
    while True:
        try:
            sock, _ = listener.accept()
        except OSError:
            return
        with sock:
            try:
                sock.sendall(json.dumps(peer.stats()).encode() + b"\n")
            except OSError:
                pass


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.peers.eventhub_peer",
                                     description="Serve an Event Hubs test peer until SIGTERM/SIGINT.")
    parser.add_argument("--port", type=int, default=0, help="0: a free port")
    parser.add_argument("--hub", default=DEFAULT_HUB)
    parser.add_argument("--partitions", default=",".join(DEFAULT_PARTITION_IDS), help="comma-separated ids")
    parser.add_argument("--max-message-size", type=int, default=DEFAULT_MAX_MESSAGE_SIZE)
    parser.add_argument("--count-only", action="store_true", help="decode and count, keep nothing")
    parser.add_argument("--ready-file", help="JSON written once serving: connection_string, stats_port, pid")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    peer = EventHubPeer(args.hub, partition_ids=args.partitions.split(","), port=args.port,
                        max_message_size=args.max_message_size, count_only=args.count_only)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    peer.start()
    stats = socket.create_server((HOST, 0))
    threading.Thread(target=_serve_stats, args=(peer, stats), name="eventhub-peer-stats", daemon=True).start()
    info = json.dumps({"connection_string": peer.connection_string(), "stats_port": stats.getsockname()[1],
                       "pid": os.getpid()})
    if args.ready_file:
        # write-then-rename, so a driver polling for the file never reads half of it
        partial = f"{args.ready_file}.partial"
        with open(partial, "w", encoding="utf-8") as out:
            out.write(info)
        os.replace(partial, args.ready_file)
    print(info, flush=True)
    stopping.wait()
    peer.stop()
    stats.close()
    print(json.dumps(peer.stats()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
