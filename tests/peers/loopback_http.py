"""The HTTP(S) server under the test peers that speak HTTP (simulated cloud, HEC, Elasticsearch).

Threaded, keep-alive, on 127.0.0.1: the TLS handshake happens in each connection's thread
(wrapping the listening socket would serialise every handshake in the accept loop); Nagle is
off (a small keep-alive answer would otherwise wait ~40 ms for the client's delayed ACK); the
open connections are kept so that stopping a peer really hangs up on its clients.
"""
from __future__ import annotations

import socket
import socketserver
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOST = "127.0.0.1"
IDLE_TIMEOUT = 60.0  # seconds a keep-alive connection may sit idle before the server drops it


class LoopbackHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stopping must not wait for clients idling on keep-alive connections
    request_queue_size = 1024  # ~100 clients connect at once; a backlog of 5 drops SYNs (1 s retry)

    def __init__(self, port: int, handler: type[BaseHTTPRequestHandler], context: ssl.SSLContext | None) -> None:
        self.context = context
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__((HOST, port), handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (getfqdn); skip that lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request: socket.socket, client_address: Any) -> None:  # type: ignore[override]
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request.settimeout(IDLE_TIMEOUT)
        connection: socket.socket = request
        if self.context is not None:
            try:
                connection = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # a client that does not trust the CA, or gave up
        with self._open_lock:
            self._open.add(connection)
        try:
            super().finish_request(connection, client_address)
        finally:
            with self._open_lock:
                self._open.discard(connection)
            connection.close()

    def serve_in_background(self, name: str, poll_interval: float = 0.05) -> None:
        self._serving = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": poll_interval},
                                         name=name, daemon=True)
        self._serving.start()

    def stop_serving(self) -> None:
        """Stop accepting, hang up on every client, free the port."""
        self.shutdown()
        self.close_connections()
        self.server_close()
        self._serving.join(timeout=5)

    def close_connections(self) -> None:
        """Hang up on keep-alive clients, so a stopped peer really is gone."""
        with self._open_lock:
            open_sockets = list(self._open)
        for sock in open_sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-answer (stop(), timeouts) are normal here, not errors.
        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError, TimeoutError)):
            super().handle_error(request, client_address)
