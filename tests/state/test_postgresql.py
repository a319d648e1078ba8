"""The PostgreSQL state store's own concerns: its schema versions and migrations, its refusal of
a database it does not know, a clear error naming host:port (never the password) when the
server cannot be used, and `state copy`'s import into an empty store. The store contract
itself runs on both backends in the other tests of this folder."""
from __future__ import annotations

import socket
import threading
from datetime import datetime, timezone

import psycopg
import pytest

from core.model.schema import EventMeta, Severity
from core.state import DeadLetter, PageCommit, StateError
from core.state.postgresql import (
    MIGRATIONS,
    SCHEMA_VERSION,
    TABLES,
    PostgresSettings,
    PostgresStore,
    StateUnavailable,
    current_version,
    import_tables,
    migrate,
    table_counts,
)
from core.state.sqlite import SQLiteStore
from tests.peers.postgres import PostgresCluster


def test_a_fresh_database_is_migrated_once_and_a_store_refuses_it_before(pg_settings: PostgresSettings) -> None:
    assert current_version(pg_settings) is None
    with pytest.raises(StateError, match="run `defender-forwarder state migrate`"):
        table_counts(pg_settings)
    with pytest.raises(StateError, match=r"has no state schema.*run `defender-forwarder state migrate`"):
        PostgresStore(pg_settings)
    assert migrate(pg_settings) == [description for _, description, _ in MIGRATIONS]
    assert current_version(pg_settings) == SCHEMA_VERSION
    assert migrate(pg_settings) == []
    PostgresStore(pg_settings).close()


def test_two_migrations_at_once_apply_it_once(pg_settings: PostgresSettings) -> None:
    """The advisory lock makes the second wait, then find nothing pending."""
    results: list[list[str]] = []
    threads = [threading.Thread(target=lambda: results.append(migrate(pg_settings))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(len, results)) == [0, len(MIGRATIONS)]


def test_a_newer_schema_is_refused_naming_both_versions(pg_settings: PostgresSettings) -> None:
    migrate(pg_settings)
    with psycopg.connect(pg_settings.url, **pg_settings.connect_kwargs()) as db:
        db.execute("INSERT INTO schema_version VALUES (%s, 'from the future', 0)", (SCHEMA_VERSION + 1,))
    with pytest.raises(StateError, match=rf"state schema {SCHEMA_VERSION + 1}, newer .*\({SCHEMA_VERSION}\)"):
        PostgresStore(pg_settings)
    with pytest.raises(StateError, match="newer"):
        migrate(pg_settings)


def test_a_wrong_password_names_the_host_and_the_fix_never_the_password(postgres: PostgresCluster,
                                                                          pg_contract: PostgresSettings) -> None:
    wrong = PostgresSettings(pg_contract.url, password="Wrong-Secret-123", sslrootcert=pg_contract.sslrootcert)
    with pytest.raises(StateUnavailable) as refused:
        PostgresStore(wrong)
    message = str(refused.value)
    assert f"127.0.0.1:{postgres.port}" in message and "password authentication failed" in message
    assert "check the password secret" in message and "Wrong-Secret-123" not in message


def test_a_server_that_is_not_there_is_named_with_its_reason() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = PostgresSettings(f"postgresql://forwarder@127.0.0.1:{port}/defender", password="Pw-Not-Shown-9")
    with pytest.raises(StateUnavailable, match=rf"127\.0\.0\.1:{port} cannot be used: .*refused.*PostgreSQL runs"):
        current_version(settings)


def test_a_server_certificate_of_another_ca_is_refused(postgres: PostgresCluster, pg_contract: PostgresSettings,
                                                       tmp_path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    settings = PostgresSettings(pg_contract.url, password=postgres.password, sslrootcert=str(other))
    with pytest.raises(StateUnavailable, match="certificate verify failed.*check the TLS settings"):
        current_version(settings)


T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


def test_a_restarted_server_fails_one_call_naming_the_host_then_the_store_goes_on(
        postgres: PostgresCluster, pg_empty: PostgresSettings) -> None:
    """The pooled connection the restart broke is StateUnavailable once (the caller retries:
    issue 22, point 3), then thrown away; the next call gets a new one."""
    store = PostgresStore(pg_empty)
    try:
        store.outbox_append("siem", [(_meta("a1"), b"kept")])
        postgres.restart()
        with pytest.raises(StateUnavailable, match=rf"127\.0\.0\.1:{postgres.port} cannot be used"):
            store.outbox_depth("siem")
        assert [row.payload for row in store.outbox_batch("siem", 10)] == [b"kept"]
    finally:
        store.close()


def _meta(alert_id: str) -> EventMeta:
    return EventMeta("t1", "acme", alert_id, f"t1/{alert_id}/v", Severity.high, T0.timestamp())


def test_import_fills_an_empty_store_and_its_ids_go_on_past_the_copied_ones(tmp_path,
                                                                              pg_empty: PostgresSettings) -> None:
    """What `state copy` does with it: every row of every table, ids kept, in one transaction."""
    lite = SQLiteStore(tmp_path / "state.db")
    lite.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", "2026-11-20T12:00:00.000000Z")],
                                outbox=[("siem", _meta(f"a{i}"), b"\x00body%d" % i) for i in range(5)],
                                dead=[DeadLetter("normalise", None, "t1", None, b"{bad", "normalise: id: missing")],
                                cursor=T0, held_back={"below min_severity": 2}))
    lite.outbox_delivered("siem", [row.id for row in lite.outbox_batch("siem", 2)])
    lite.memory_put("mail", {"k": "v"})
    lite.record_success("t1", "acme", 3)
    rows = {table: lite.db.execute(f"SELECT {', '.join(cols)} FROM {table}").fetchall()
            for table, cols in TABLES.items()}
    lite.close()

    assert import_tables(pg_empty, rows) == {table: len(r) for table, r in rows.items()}
    assert table_counts(pg_empty) == {table: len(r) for table, r in rows.items()}
    store = PostgresStore(pg_empty)
    try:
        batch = store.outbox_batch("siem", 10)
        assert [(r.id, r.payload) for r in batch] == [(i + 1, b"\x00body%d" % i) for i in range(2, 5)]
        assert store.outbox_depths() == {"siem": 3} and store.cursor("t1", "graph_alerts") == T0
        # the same letter again is the one filed (its digest came along)
        assert store.commit_page(PageCommit("t1", "graph_alerts", dead=[
            DeadLetter("normalise", None, "t1", None, b"{bad", "normalise: id: missing")])) == []
        store.outbox_append("siem", [(_meta("new"), b"new")])
        assert store.outbox_batch("siem", 10)[-1].id == 6
    finally:
        store.close()
    with pytest.raises(StateError, match="not empty"):
        import_tables(pg_empty, {"seen": []})


def test_a_server_that_never_answers_the_connect_is_named_after_the_timeout(black_hole: int) -> None:
    settings = PostgresSettings(f"postgresql://forwarder@127.0.0.1:{black_hole}/defender", password="Pw-Not-Shown-9",
                                connect_timeout=2)  # libpq's least
    with pytest.raises(StateUnavailable, match=rf"127\.0\.0\.1:{black_hole} cannot be used: .*timeout") as slow:
        PostgresStore(settings)
    assert "Pw-Not-Shown-9" not in str(slow.value)
