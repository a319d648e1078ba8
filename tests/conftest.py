"""Shared fixtures: the simulated Microsoft cloud and configs that point at it."""
from __future__ import annotations

import itertools
import socket
import ssl
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import trustme

from tests.helpers import SECRET, CloudSetup
from tests.peers.fake_cloud import FakeCloud
from tests.peers.postgres import PostgresCluster, postgres_bin
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


# ---- the state store's backends -------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One PostgreSQL cluster for the session (initdb as a non-root user, TLS, a free port)."""
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL server here (/usr/lib/postgresql/*/bin/initdb is absent; "
                    ".ci/run installs Debian's postgresql-15)")
    with PostgresCluster() as cluster:
        yield cluster


_databases = itertools.count(1)


@pytest.fixture
def pg_settings(postgres: PostgresCluster) -> Iterator[Any]:
    """A fresh, empty (not migrated) database of the session cluster, as PostgresSettings."""
    from core.state.postgresql import PostgresSettings

    name = f"store_{next(_databases)}"
    url = postgres.create_database(name)
    yield PostgresSettings(url, password=postgres.password, sslrootcert=str(postgres.ca_file))
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def pg_contract(postgres: PostgresCluster) -> Any:
    """One migrated database the contract tests share, emptied before each (deleting the rows
    and restarting the ids takes a few ms; a database per test took ~0.5 s: CREATE DATABASE
    copies a template and the migration creates every table)."""
    from core.state.postgresql import PostgresSettings, migrate

    settings = PostgresSettings(postgres.create_database("contract"), password=postgres.password,
                                sslrootcert=str(postgres.ca_file))
    migrate(settings)
    return settings


@pytest.fixture
def pg_empty(pg_contract: Any) -> Any:
    """The settings of the shared migrated database, emptied (its ids restarted)."""
    # A new connection each time: a test may have restarted the cluster since the last.
    import psycopg

    from core.state.postgresql import LEASE_TABLES, TABLES

    settings = pg_contract
    with psycopg.connect(settings.url, autocommit=True, **settings.connect_kwargs()) as db:
        db.execute("; ".join([*(f"DELETE FROM {table}" for table in (*TABLES, *LEASE_TABLES)),
                              *(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 1, false)"
                                for table in ("outbox", "dead_letters"))]))
    return settings


@pytest.fixture(params=["sqlite", "postgresql"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Any]]:
    """Opens a store on one state, as often as a test reopens it: a SQLite file, or the
    PostgreSQL contract database, emptied. Every store it opened is closed afterwards."""
    opened: list[Any] = []
    if request.param == "sqlite":
        from core.state.sqlite import SQLiteStore

        def make() -> Any:
            return SQLiteStore(tmp_path / "state" / "forwarder.db")
    else:
        from core.state.postgresql import PostgresStore

        settings = request.getfixturevalue("pg_empty")

        def make() -> Any:
            return PostgresStore(settings)

    def opener() -> Any:
        opened.append(make())
        return opened[-1]

    yield opener
    for store in opened:
        store.close()  # closing twice is harmless on both backends
