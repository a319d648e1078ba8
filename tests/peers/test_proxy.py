"""The tinyproxy peer: a CONNECT through it reaches the target and is logged; a refusing
proxy answers 403."""
from __future__ import annotations

import socket
from pathlib import Path

from tests.peers.proxy import HOST, Proxy


def _connect(proxy: Proxy, target: str) -> bytes:
    with socket.create_connection((HOST, proxy.port), timeout=5) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        return sock.recv(200)


def test_connect_goes_through_and_is_logged(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind((HOST, 0))
        server.listen()
        target = f"{HOST}:{server.getsockname()[1]}"
        with Proxy(tmp_path) as proxy:
            assert b" 200 " in _connect(proxy, target)
            assert target in proxy.connects()


def test_refusing_proxy_answers_403(tmp_path: Path) -> None:
    with Proxy(tmp_path, refuse=True) as proxy:
        assert b" 403 " in _connect(proxy, f"{HOST}:9")


def test_authenticating_proxy_wants_its_credentials(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind((HOST, 0))
        server.listen()
        target = f"{HOST}:{server.getsockname()[1]}"
        with Proxy(tmp_path, auth=("forwarder", "PROXY0SECRET")) as proxy:
            assert proxy.url == f"http://forwarder:PROXY0SECRET@{HOST}:{proxy.port}"
            assert b" 407 " in _connect(proxy, target)
            with socket.create_connection((HOST, proxy.port), timeout=5) as sock:
                sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
                             "Proxy-Authorization: Basic Zm9yd2FyZGVyOlBST1hZMFNFQ1JFVA==\r\n\r\n".encode())
                assert b" 200 " in sock.recv(200)
