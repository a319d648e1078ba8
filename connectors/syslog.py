"""`type = "syslog"`: each event as the MSG of one syslog message, over UDP, TCP or TLS.

The connector ArcSight, QRadar and Sentinel log forwarders (AMA) are fed by, with
`format = "cef"` (the default).

Wire shape
- RFC 5424: `<PRI>1 TIMESTAMP HOSTNAME APP-NAME - - - MSG` (PROCID, MSGID and
  STRUCTURED-DATA are the nil value `-`); RFC 3164: `<PRI>Mmm dd hh:mm:ss HOSTNAME APP-NAME: MSG`.
  TIMESTAMP is when the batch is sent, in UTC (RFC 3164 has no zone: UTC all the same); the
  alert's own times are in the event (CEF `rt`, `start`, `end`).
- PRI = facility x 8 + severity: the facility is `facility` (default local4, as Sentinel's
  own CEF tests use it); the severity follows the alert (critical 2, high 3, medium 4,
  low 5, informational and unknown 6), or is fixed with `severity = "<level name>"`.
- TCP and TLS: `framing = "octet-counting"` (`LEN SP MSG`, RFC 6587 3.4.1 and RFC 5425, the
  default) or `"lf"` (MSG then a newline; safe because no format writes a raw newline).
  UDP: one message per datagram (RFC 5426).

Sizes
- `max_message_bytes` (the syslog message, header included; the framing prefix is not)
  defaults to 2048 over UDP (what RFC 5426 receivers should accept) and 64 KiB over TCP/TLS
  (syslog-ng's default `log-msg-size`; a larger frame makes it drop the connection).
- A line that does not fit is shortened by its format's own shortener, which the app hands
  the connector (`Connector.shortener`; CEF's cuts whole values and marks them `…`, never
  mid-escape), and counted as shortened. If even that cannot fit it, the shortener cuts the
  line at a safe point and marks it: sent, and counted as truncated; a line is never split
  and never dropped. An event of a format without a shortener (JSON) cannot be cut without
  corrupting it: it goes to the dead letters with the reason.

Status table (what happened -> outcome)
  connected, every frame written and flushed, connection still open     delivered
  refused, reset, broken pipe, timeout, unreachable, DNS failure         retry the batch
  connection found closed by the receiver after the flush                retry the batch (a
                                                                           duplicate at worst)
  UDP: ICMP port unreachable reported while sending                      retry the batch
  TLS: the server's certificate fails verification (connectors.tls)      the sink stops
  TLS: the server refuses our session (e.g. client certificate)          the sink stops
  JSON event larger than max_message_bytes                               dead letter

What syslog can confirm: TCP and TLS have no application-level acknowledgement. "Delivered"
means written into a connection that was open before the write and still open after the
flush; a receiver that dies with our frames unread in its socket buffer loses them without
telling us. UDP confirms nothing. For an acknowledged path use the HEC or Elasticsearch
sinks, or a local relay with a disk buffer.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Literal

from pydantic import Field, field_validator, model_validator

from connectors.base import DELIVERED, Connector, Event, EventResult, Outcome, Shortener, SinkFatal
from connectors.tls import TlsFileError, TlsSinkConfig, certificate_refused, ssl_context
from core.model.durations import Duration
from core.model.neterr import describe
from core.model.schema import Severity

log = logging.getLogger("defender_forwarder.syslog")

FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7, "uucp": 8,
    "cron": 9, "authpriv": 10, "ftp": 11, "ntp": 12, "security": 13, "console": 14, "solaris-cron": 15,
    "local0": 16, "local1": 17, "local2": 18, "local3": 19, "local4": 20, "local5": 21, "local6": 22, "local7": 23,
}
LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
# Alert severity -> syslog severity, so a receiver's level filters see Defender's order.
ALERT_LEVELS = {
    Severity.critical: LEVELS["crit"],
    Severity.high: LEVELS["err"],
    Severity.medium: LEVELS["warning"],
    Severity.low: LEVELS["notice"],
    Severity.informational: LEVELS["info"],
    Severity.unknown: LEVELS["info"],
}
DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}
UDP_MAX_MESSAGE = 2048
UDP_MAX_DATAGRAM = 65507  # IPv4: 65,535 less the IP and UDP headers
STREAM_MAX_MESSAGE = 65536
# How long a fresh TLS session is watched for the server refusing it: under TLS 1.3 the
# server judges our client certificate after our side of the handshake has completed.
TLS_REFUSAL_WINDOW = 0.2
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HEADER_TEXT = "printable US-ASCII without spaces"


class SyslogSinkConfig(TlsSinkConfig):
    type: str = "syslog"
    format: str = "cef"
    batch_max_events: int = Field(default=1000, ge=1, le=100_000)
    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="default 514, or 6514 for tls")
    protocol: Literal["udp", "tcp", "tls"] = "tcp"
    framing: Literal["octet-counting", "lf"] = "octet-counting"
    rfc: Literal["5424", "3164"] = "5424"
    facility: str = "local4"
    severity: str = Field(default="from-alert", description="from-alert, or a fixed level: emerg ... debug")
    app_name: str = "defender-forwarder"
    hostname: str | None = Field(default=None, description="default: this machine's name")
    max_message_bytes: int | None = Field(default=None, ge=480, le=16 * 1024 * 1024)
    connect_timeout: Duration = 10.0
    send_timeout: Duration = 30.0

    @field_validator("rfc", mode="before")
    @classmethod
    def _rfc_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    @field_validator("facility")
    @classmethod
    def _known_facility(cls, value: str) -> str:
        if value not in FACILITIES:
            raise ValueError(f"unknown facility {value!r}; one of {', '.join(FACILITIES)}")
        return value

    @field_validator("severity")
    @classmethod
    def _known_severity(cls, value: str) -> str:
        if value != "from-alert" and value not in LEVELS:
            raise ValueError(f"{value!r}: use from-alert or one of {', '.join(LEVELS)}")
        return value

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        return _header_token(value, 48)

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str | None) -> str | None:
        return None if value is None else _header_token(value, 255)

    @model_validator(mode="after")
    def _consistent(self) -> SyslogSinkConfig:
        tls_only = self.tls_keys_set("ca_file", "client_cert", "tls_server_name")
        if self.protocol != "tls" and tls_only:
            raise ValueError(f"{', '.join(tls_only)} need protocol = \"tls\"")
        if self.protocol == "udp" and "framing" in self.model_fields_set:
            raise ValueError("framing applies to tcp and tls only (UDP sends one message per datagram)")
        if self.protocol == "udp" and self.message_limit > UDP_MAX_DATAGRAM:
            raise ValueError(f"max_message_bytes: a UDP datagram carries at most {UDP_MAX_DATAGRAM} bytes")
        return self

    @property
    def target_port(self) -> int:
        return self.port or DEFAULT_PORTS[self.protocol]

    @property
    def message_limit(self) -> int:
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        return UDP_MAX_MESSAGE if self.protocol == "udp" else STREAM_MAX_MESSAGE


def _header_token(value: str, limit: int) -> str:
    if not value or len(value) > limit or not all(33 <= ord(c) <= 126 for c in value):
        raise ValueError(f"{value!r}: {_HEADER_TEXT}, 1 to {limit} characters (RFC 5424)")
    return value


class SyslogConnector(Connector):
    config_model = SyslogSinkConfig
    direct_only = True
    config: SyslogSinkConfig

    def __init__(self, name: str, config: SyslogSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self.counters.update(shortened=0, truncated=0)
        self._tls: ssl.SSLContext | None = None
        self._stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._datagram: _Datagrams | None = None
        self._hostname = config.hostname or _header_token(socket.gethostname() or "localhost", 255)
        self._frame = _framer(config)

    async def open(self) -> None:
        if self.config.protocol == "tls":
            self._tls = self._tls_context()

    def _tls_context(self) -> ssl.SSLContext:
        try:
            context = ssl_context(self.config)
        except TlsFileError as err:
            raise SinkFatal(f"TLS set-up: {err.error}") from None
        self.config.warn_if_unverified(self.name, log)
        return context

    # ---- sending --------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        frames, results = self._frames(batch)
        if not frames:
            return results
        try:
            if self.config.protocol == "udp":
                await self._send_datagrams(frames)
            else:
                await self._send_stream(b"".join(frames))
        except (OSError, TimeoutError) as err:
            # Every framed event is sent again; the reason names the receiver and the cause.
            why = EventResult(Outcome.RETRY, self._unreachable(err))
            return [why if result is DELIVERED else result for result in results]
        return results

    def _unreachable(self, err: BaseException) -> str:
        where = f"{self.config.host}:{self.config.target_port}"
        if isinstance(err, TimeoutError) and str(err):  # ours: it names its phase
            return f"{where}: {err}"
        return describe(err, where)

    def _frames(self, batch: list[Event]) -> tuple[list[bytes], list[EventResult]]:
        """Each event's frame, or its dead-letter result when it cannot be sent whole."""
        headers = _Headers(self.config, self._hostname, time.time())
        limit = self.config.message_limit
        frames, results = [], []
        for event in batch:
            header = headers.for_event(event)
            body = event.body
            room = limit - len(header)
            if len(body) > room:
                fitted = self._fitted(event, room)
                if fitted is None:
                    results.append(EventResult(Outcome.PERMANENT, f"{len(header) + len(body)} bytes exceed "
                                               f"max_message_bytes {limit}; a {self.config.format} event "
                                               "cannot be cut"))
                    continue
                body = fitted
            frames.append(self._frame(header + body))
            results.append(DELIVERED)
        return frames, results

    def _fitted(self, event: Event, room: int) -> bytes | None:
        """The line within `room` bytes (counted); None for a format that cannot be cut."""
        if self.shortener is None:
            return None
        body, cut = self.shortener(event.body, room)
        if cut:
            self.counters["truncated"] += 1
            log.warning("sink %s: %s did not fit %d bytes even shortened: sent truncated and marked",
                        self.name, event.meta.version_key, self.config.message_limit)
        else:
            self.counters["shortened"] += 1
        return body

    async def _send_stream(self, data: bytes) -> None:
        reader, writer = await self._connection()
        try:
            writer.write(data)
            try:
                await asyncio.wait_for(writer.drain(), self.config.send_timeout)
            except TimeoutError:
                raise TimeoutError(f"send timeout after {self.config.send_timeout:g}s") from None
            await asyncio.sleep(0)  # let a close or reset that answered the write be seen
        except Exception:
            await self._drop_connection()
            raise
        if _closed(reader, writer):
            await self._drop_connection()
            raise ConnectionResetError("the receiver closed the connection during the batch")

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._stream is not None and _closed(*self._stream):
            await self._drop_connection()  # the receiver went away while we were idle
        if self._stream is None:
            self._stream = await self._connect()
        return self._stream

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        config = self.config
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(config.host, config.target_port, ssl=self._tls,
                                        server_hostname=(config.tls_server_name or config.host) if self._tls else None),
                config.connect_timeout,
            )
        except TimeoutError:
            raise TimeoutError(f"connect timeout after {config.connect_timeout:g}s") from None
        except ssl.SSLError as err:
            refused = certificate_refused(err)
            if refused:
                raise SinkFatal(f"TLS: {describe(err, f'{config.host}:{config.target_port}')}; "
                                "set ca_file to the CA that signed it") from None
            raise SinkFatal(f"TLS handshake with {config.host}:{config.target_port} failed: {err.reason}") from None
        _keep_alive(writer)
        if self._tls is not None:
            await self._watch_for_refusal(reader, writer)
        log.info("sink %s: connected to %s:%d over %s", self.name, config.host, config.target_port, config.protocol)
        return reader, writer

    async def _watch_for_refusal(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(1), TLS_REFUSAL_WINDOW)
        except TimeoutError:
            return  # silence is what a syslog receiver says when all is well
        except ssl.SSLError as err:
            writer.close()
            raise SinkFatal(f"TLS: {self.config.host}:{self.config.target_port} refused the session "
                            f"({err.reason}); does it require a client certificate (client_cert)?") from None
        writer.close()
        if not data:
            raise ConnectionResetError("the receiver closed the TLS session right after the handshake")
        raise SinkFatal("the receiver sent data on a syslog connection: is this a syslog port?")

    async def _drop_connection(self) -> None:
        if self._stream is None:
            return
        _, writer = self._stream
        self._stream = None
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (OSError, TimeoutError, ssl.SSLError):
            pass  # already broken: nothing left to flush

    async def _send_datagrams(self, frames: list[bytes]) -> None:
        if self._datagram is None:
            self._datagram = await _Datagrams.open(self.config.host, self.config.target_port)
        try:
            await self._datagram.send(frames)
        except OSError:
            self._datagram.close()
            self._datagram = None
            raise

    async def probe(self) -> str:
        config = self.config
        await self.open()
        where = f"{config.host}:{config.target_port}"
        if config.protocol == "udp":
            socket.getaddrinfo(config.host, config.target_port, type=socket.SOCK_DGRAM)
            return f"udp {where} (UDP cannot confirm a receiver; nothing sent)"
        _, writer = await self._connect()
        detail = ""
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None:
            detail = f", {ssl_object.version()}, certificate {'verified' if config.tls_verify else 'NOT verified'}"
        writer.close()
        return f"{config.protocol} {where} connected{detail}; nothing sent"

    async def close(self) -> None:
        await self._drop_connection()
        if self._datagram is not None:
            self._datagram.close()
            self._datagram = None


class _Headers:
    """The syslog header of each event of one batch: one timestamp per batch, one header per
    severity."""

    def __init__(self, config: SyslogSinkConfig, hostname: str, now: float) -> None:
        self.facility = FACILITIES[config.facility] * 8
        self.fixed = None if config.severity == "from-alert" else LEVELS[config.severity]
        moment = time.gmtime(now)
        if config.rfc == "5424":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", moment) + f".{int(now % 1 * 1000):03d}Z"
            self.rest = f"1 {stamp} {hostname} {config.app_name} - - - ".encode()
        else:
            stamp = f"{_MONTHS[moment.tm_mon - 1]} {moment.tm_mday:2d} {time.strftime('%H:%M:%S', moment)}"
            self.rest = f"{stamp} {hostname} {config.app_name}: ".encode()
        self.cache: dict[int, bytes] = {}

    def for_event(self, event: Event) -> bytes:
        level = self.fixed if self.fixed is not None else ALERT_LEVELS.get(event.meta.severity, LEVELS["info"])
        header = self.cache.get(level)
        if header is None:
            header = self.cache[level] = f"<{self.facility + level}>".encode() + self.rest
        return header


def _framer(config: SyslogSinkConfig) -> Callable[[bytes], bytes]:
    if config.protocol == "udp":
        return _unframed
    return _octet_counted if config.framing == "octet-counting" else _lf_terminated


def _octet_counted(message: bytes) -> bytes:
    return b"%d %b" % (len(message), message)


def _lf_terminated(message: bytes) -> bytes:
    return message + b"\n"


def _unframed(message: bytes) -> bytes:
    return message


def _closed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    return reader.at_eof() or reader.exception() is not None or writer.is_closing()


def _keep_alive(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)


class _Datagrams(asyncio.DatagramProtocol):
    """A connected UDP socket, so that the ICMP "port unreachable" of a missing receiver is
    reported (on loopback and most LANs) instead of vanishing."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.error: OSError | None = None

    @classmethod
    async def open(cls, host: str, port: int) -> _Datagrams:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(cls, remote_addr=(host, port))
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def error_received(self, exc: Exception) -> None:
        if isinstance(exc, OSError):
            self.error = exc

    async def send(self, frames: list[bytes]) -> None:
        assert self.transport is not None
        for frame in frames:
            self._raise_reported()
            self.transport.sendto(frame)
        await asyncio.sleep(0)  # an ICMP answer to this batch arrives while the loop turns
        self._raise_reported()

    def _raise_reported(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


CONNECTOR = SyslogConnector
