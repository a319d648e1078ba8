"""The WebSocket front of the loopback Event Hubs peer: AMQP over WebSockets, over TLS.

What azure-eventhub's async WebSocket transport (pyamqp `aio/_transport_async.py`,
WebSocketTransportAsync, 5.15.1) does: aiohttp `ws_connect` to
`wss://<host>:<port>/$servicebus/websocket` with the subprotocol `AMQPWSB10`, through
`http_proxy` by CONNECT when one is given, then every AMQP frame as binary WebSocket
messages (a frame may span messages and a message may hold several frames: the AMQP layer
reads a byte stream). The port is always 443 unless `custom_endpoint_address` names another
(`https://127.0.0.1:<port>`: the SDK appends the path); `UseDevelopmentEmulator=true` in the
connection string switches TLS off (ws://). The real service is wss on 443.

`WebSocketFront(peer)` serves that on its own loopback port with an aiohttp.web server in a
thread, TLS with a certificate for 127.0.0.1 and localhost from a trustme CA (`ca_file`;
`tls=False` serves ws://), and bridges each WebSocket to a new TCP connection to the peer's
AMQP port: the AMQP handling is the peer's own, and every byte crosses real sockets. Each
upgrade request is kept in `requests` (path, subprotocol offered, Host header, peer address).
A request to another path, or without `AMQPWSB10` among its subprotocols, is refused (404,
400), as the service does not speak anything else there.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from aiohttp import WSMsgType, web

from tests.peers.eventhub_peer import HOST, EventHubPeer

PATH = "/$servicebus/websocket"
SUBPROTOCOL = "AMQPWSB10"


@dataclass(frozen=True)
class UpgradeRequest:
    path: str
    subprotocols: tuple[str, ...]
    host: str  # the Host header
    remote: str  # who connected: the proxy when there is one
    tls: bool


class WebSocketFront:
    """AMQP over WebSockets in front of `peer` (which must be running while clients connect)."""

    def __init__(self, peer: EventHubPeer, *, tls: bool = True, ca: trustme.CA | None = None) -> None:
        self.peer = peer
        self.tls = tls
        self.ca = ca or trustme.CA()
        self._directory = Path(tempfile.mkdtemp(prefix="eventhub-ws-"))
        self.ca_file = self._directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.requests: list[UpgradeRequest] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if not self._port:
            raise RuntimeError("WebSocketFront has not been started")
        return self._port

    @property
    def endpoint(self) -> str:
        """What `custom_endpoint_address` takes to reach this front."""
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    def connection_string(self, key_name: str = "send", key: str = "peer-test-key-not-a-secret") -> str:
        """The peer's namespace as a real (TLS) namespace's connection string would name it."""
        return (f"Endpoint=sb://{HOST}:{self.port}/;SharedAccessKeyName={key_name};SharedAccessKey={key};"
                f"EntityPath={self.peer.hub}")

    # ---- lifecycle

    def __enter__(self) -> WebSocketFront:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        ready = threading.Event()
        failure: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as error:  # noqa: BLE001 - handed to start()
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup() if self._runner else asyncio.sleep(0))
            loop.close()

        self._thread = threading.Thread(target=serve, name="eventhub-ws-front", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"WebSocketFront did not start: {failure[0] if failure else 'timeout'}")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        context = None
        if self.tls:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self.ca.issue_cert(HOST, "localhost").configure_cert(context)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self._port))  # the same port again after a stop
        self._port = listener.getsockname()[1]
        await web.SockSite(self._runner, listener, ssl_context=context).start()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    # ---- one WebSocket

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        offered = tuple(p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip())
        peername: Any = request.transport.get_extra_info("peername") if request.transport else None
        with self._lock:
            self.requests.append(UpgradeRequest(request.path, offered, request.headers.get("Host", ""),
                                                f"{peername[0]}:{peername[1]}" if peername else "", self.tls))
        if request.path != PATH:
            return web.Response(status=404, text="not an Event Hubs WebSocket path")
        if SUBPROTOCOL not in offered:
            return web.Response(status=400, text=f"subprotocol {SUBPROTOCOL} required")
        ws = web.WebSocketResponse(protocols=(SUBPROTOCOL,), max_msg_size=0)
        await ws.prepare(request)
        reader, writer = await asyncio.open_connection(HOST, self.peer.port)

        async def to_peer() -> None:
            async for message in ws:
                if message.type == WSMsgType.BINARY:
                    writer.write(message.data)
                    await writer.drain()
                elif message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
            writer.close()

        async def to_client() -> None:
            while data := await reader.read(256 * 1024):
                await ws.send_bytes(data)
            await ws.close()

        tasks = [asyncio.ensure_future(to_peer()), asyncio.ensure_future(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            if not ws.closed:
                await ws.close()
        return ws
