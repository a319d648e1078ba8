"""Shared fixtures: the simulated Microsoft cloud and configs that point at it."""
from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path
from typing import Iterator

import pytest
import trustme

from tests.helpers import SECRET, CloudSetup
from tests.peers.fake_cloud import FakeCloud
from tests.peers.proxy import Proxy


@pytest.fixture(scope="session")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as server:
        yield server


@pytest.fixture
def setup(cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CloudSetup:
    monkeypatch.setenv("DF_TEST_CLIENT_SECRET", SECRET)
    return CloudSetup(cloud, tmp_path)


# ---- shared by the network-error and proxy tests --------------------------------------------------
@pytest.fixture
def untrusted_tls() -> Iterator[int]:
    """A TLS server on loopback whose certificate no CA of ours signed; yields its port."""
    ca = trustme.CA(organization_name="Untrusted Test CA")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            try:
                conn.settimeout(5)
                with context.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except OSError:
                pass
            finally:
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A loopback port where a connect never completes; yields the port. A listener whose
    accept queue is full and that never accepts leaves a new SYN unanswered (Linux drops it),
    so a client sees a true connect timeout, not a refusal."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(8):  # fill the accept queue
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                fillers.append(filler)
            yield port
        finally:
            for filler in fillers:
                filler.close()


@pytest.fixture
def no_machine_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test says exactly which proxy variables the forwarder sees (removed, not emptied:
    urllib, like curl, lets an empty lower-case variable cancel its upper-case twin)."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    (tmp_path / "proxy").mkdir()
    with Proxy(tmp_path / "proxy") as running:
        yield running
