"""The test PostgreSQL cluster: it starts, takes TLS connections verified against its CA, keeps
its data across a restart, and refuses a wrong password."""
from __future__ import annotations

import psycopg
import pytest

from tests.peers.postgres import PostgresCluster


def _connect(cluster: PostgresCluster, dbname: str, password: str) -> psycopg.Connection:
    return psycopg.connect(cluster.url(dbname), password=password, sslmode="verify-full",
                           sslrootcert=str(cluster.ca_file), connect_timeout=5, autocommit=True)


def test_the_cluster_takes_verified_tls_keeps_data_across_a_restart_and_refuses_a_wrong_password(
        postgres: PostgresCluster) -> None:
    url = postgres.create_database("peer_check")
    assert url == f"postgresql://forwarder@127.0.0.1:{postgres.port}/peer_check"
    with _connect(postgres, "peer_check", postgres.password) as db:
        assert db.info.pgconn.ssl_in_use
        assert db.execute("SELECT current_user").fetchone() == ("forwarder",)
        db.execute("CREATE TABLE kept (n int)")
        db.execute("INSERT INTO kept VALUES (42)")

    postgres.restart()
    with _connect(postgres, "peer_check", postgres.password) as db:
        assert db.execute("SELECT n FROM kept").fetchall() == [(42,)]

    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(postgres, "peer_check", "not-" + postgres.password)
    with pytest.raises(psycopg.OperationalError):  # TCP without TLS is refused (hostssl only)
        psycopg.connect(postgres.url("peer_check"), password=postgres.password, sslmode="disable", connect_timeout=5)
    postgres.drop_database("peer_check")
