"""Network failures say where and why: real sockets, a real httpx client and requests
(MSAL's), nothing mocked."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest
import requests

from core.model.neterr import address, describe
from tests.peers.lifecycle import free_port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def _httpx_error(url: str, timeout: httpx.Timeout | float = 5.0) -> httpx.HTTPError:
    with httpx.Client(timeout=timeout) as client, pytest.raises(httpx.HTTPError) as caught:
        client.get(url)
    return caught.value


def _requests_error(url: str, timeout: float | tuple[float, float] = 5.0) -> Exception:
    with pytest.raises(requests.RequestException) as caught:
        requests.get(url, timeout=timeout)
    return caught.value


def test_refused_names_the_port() -> None:
    port = free_port()
    assert describe(_httpx_error(f"http://127.0.0.1:{port}/x")) == f"127.0.0.1:{port}: connection refused"
    assert describe(_requests_error(f"http://127.0.0.1:{port}/x")) == f"127.0.0.1:{port}: connection refused"


def test_unresolvable_name() -> None:
    assert describe(_httpx_error("https://nonexistent.invalid/v1.0")) == "nonexistent.invalid:443: name not resolved (DNS)"
    assert describe(_requests_error("https://nonexistent.invalid/t")) == "nonexistent.invalid:443: name not resolved (DNS)"


def test_read_timeout_names_its_phase(silent_port: int) -> None:
    err = _httpx_error(f"http://127.0.0.1:{silent_port}/", httpx.Timeout(0.3, connect=10))
    assert describe(err) == f"127.0.0.1:{silent_port}: read timeout after 0.3s"
    assert describe(_requests_error(f"http://127.0.0.1:{silent_port}/", (10, 0.3))) == \
        f"127.0.0.1:{silent_port}: read timeout"


def test_untrusted_certificate_names_subject_and_issuer(untrusted_tls: int) -> None:
    text = describe(_httpx_error(f"https://127.0.0.1:{untrusted_tls}/"))
    assert text.startswith(f"127.0.0.1:{untrusted_tls}: TLS certificate fails verification ("), text
    assert "its subject" in text and "issuer" in text and "Untrusted Test CA" in text, text
    assert "Untrusted Test CA" in describe(_requests_error(f"https://127.0.0.1:{untrusted_tls}/"))


def test_connect_timeout_text(black_hole: int) -> None:
    """A connect timeout, produced honestly on loopback (the `black_hole` fixture: a listener
    whose backlog is full leaves a new SYN unanswered)."""
    err = _httpx_error(f"http://127.0.0.1:{black_hole}/", httpx.Timeout(5, connect=0.5))
    if not isinstance(err, httpx.ConnectTimeout):
        pytest.skip(f"this kernel answered a full backlog with {type(err).__name__}")
    assert describe(err) == f"127.0.0.1:{black_hole}: connect timeout after 0.5s"


def test_address_keeps_no_path_or_query() -> None:
    assert address("https://hec.example:8088/services/collector?token=SECRET") == "hec.example:8088"
    assert address("https://graph.example/v1.0?$skiptoken=abc") == "graph.example:443"


def test_where_when_the_error_does_not_say() -> None:
    assert describe(ConnectionRefusedError(111, "Connection refused"), "syslog.example:6514") == \
        "syslog.example:6514: connection refused"
    assert describe(socket.gaierror(-2, "Name or service not known"), "x.invalid:514") == \
        "x.invalid:514: name not resolved (DNS)"


def test_a_proxy_that_refuses_the_tunnel() -> None:
    """A proxy on loopback that answers CONNECT with 403: httpx's ProxyError, told as such."""
    with socket.socket() as proxy:
        proxy.bind(("127.0.0.1", 0))
        proxy.listen(4)
        port = proxy.getsockname()[1]

        def refuse() -> None:
            conn, _ = proxy.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=refuse, daemon=True)
        thread.start()
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", timeout=5) as client, \
                pytest.raises(httpx.ProxyError) as caught:
            client.get("https://graph.example/v1.0/security/alerts_v2?$skiptoken=SECRET")
        thread.join()
    text = describe(caught.value)
    assert text.startswith("graph.example:443: proxy refused the connection: "), text
    assert "403" in text and "SECRET" not in text
