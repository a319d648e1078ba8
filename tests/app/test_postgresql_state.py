"""The PostgreSQL state store from the command line: config keys, `state migrate`, `state copy`
(nothing lost), a run on it, and a database that is not there at start.

Against the real PostgreSQL the session starts (tests/peers/postgres.py), over TLS verified
against its CA (`sslmode = verify-full`, the default)."""
from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest

from core.app.config import ConfigError, parse_config
from tests.helpers import REPO, run_cli, write_config

PASSWORD_ENV = "DF_TEST_PG_PASSWORD"
DEMO = REPO / "examples" / "demo"


def _config(tmp: Path, state: str, postgresql: dict[str, Any] | None = None,
            sink: dict[str, Any] | None = None, **forwarder: Any) -> Path:
    tables: dict[str, dict[str, Any]] = {"forwarder": {"state": state, "initial_lookback": "3650d", **forwarder}}
    if postgresql is not None:
        tables["forwarder.postgresql"] = postgresql
    for label in ("contoso", "fabrikam", "northwind"):
        tables[f"tenants.{label}"] = {"tenant_id": f"{label}.onmicrosoft.com", "replay": str(DEMO / label)}
    tables["sinks.archive"] = sink or {"type": "file", "path": str(tmp / "out" / "{tenant}.ndjson"), "format": "raw"}
    return write_config(tmp / "forwarder.toml", tables)


# ---- config (no database needed) ------------------------------------------------------------------
BASE = {"tenants": {"a": {"tenant_id": "22222222-2222-4222-8222-222222222222", "replay": "x"}},
        "sinks": {"o": {"type": "stdout"}}}


@pytest.mark.parametrize(("forwarder", "problem"), [
    ({"state": "postgresql://forwarder:hunter22@db/defender"},
     "forwarder.state: the URL holds a password; put it in [forwarder.postgresql] password"),
    ({"state": "postgresql://db.internal/defender"}, "is not a PostgreSQL URL; use postgresql://user@host"),
    ({"state": "postgresql://forwarder@db.internal"}, "is not a PostgreSQL URL"),
    ({"state": "forwarder.db", "postgresql": {"password": "env:X"}},
     "[forwarder.postgresql] is set but state is a SQLite file"),
    ({"state": "postgresql://forwarder@db/defender", "postgresql": {"sslmode": "allow"}},
     "forwarder.postgresql.sslmode"),
])
def test_a_wrong_postgresql_setting_names_its_key(forwarder: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({**BASE, "forwarder": forwarder})
    assert problem in str(caught.value)
    assert "hunter22" not in str(caught.value)


def test_verify_full_is_the_default() -> None:
    config = parse_config({**BASE, "forwarder": {"state": "postgresql://forwarder@db/defender",
                                                 "postgresql": {"password": "env:X"}}})
    assert config.forwarder.postgresql is not None and config.forwarder.postgresql.sslmode == "verify-full"


def test_state_migrate_on_a_sqlite_state_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli("state", "migrate", "--config", str(_config(tmp_path, str(tmp_path / "f.db"))))
    assert done.returncode == 2
    assert "forwarder.state is not a PostgreSQL URL" in done.stderr and "Traceback" not in done.stderr


# ---- against the real PostgreSQL ------------------------------------------------------------------
@pytest.fixture
def database(postgres: Any, tmp_path: Path) -> tuple[str, dict[str, Any], dict[str, str]]:
    """A fresh database: its URL, the [forwarder.postgresql] keys, and the environment with its password."""
    url = postgres.create_database("df_" + uuid.uuid4().hex[:12])
    keys = {"password": f"env:{PASSWORD_ENV}", "sslrootcert": str(postgres.ca_file), "connect_timeout": "5s"}
    return url, keys, {PASSWORD_ENV: postgres.password}


def test_migrate_applies_the_schema_once(database: tuple[str, dict[str, Any], dict[str, str]],
                                         tmp_path: Path) -> None:
    url, keys, env = database
    config = _config(tmp_path, url, keys)
    first = run_cli("state", "migrate", "--config", str(config), env=env)
    assert first.returncode == 0, first.stderr
    assert "applied " in first.stdout
    again = run_cli("state", "migrate", "--config", str(config), env=env)
    assert again.returncode == 0 and "nothing to apply" in again.stdout


def test_a_run_on_an_unmigrated_database_says_to_migrate(database: tuple[str, dict[str, Any], dict[str, str]],
                                                         tmp_path: Path) -> None:
    url, keys, env = database
    done = run_cli("run", "--once", "--config", str(_config(tmp_path, url, keys)), env=env)
    assert done.returncode == 2
    assert "state migrate" in done.stderr and "Traceback" not in done.stderr


def test_copy_moves_everything_and_the_run_goes_on_from_it(database: tuple[str, dict[str, Any], dict[str, str]],
                                                           tmp_path: Path) -> None:
    """A SQLite installation with cursors, seen versions, an outbox its sink could not take
    (the sink down) and tenant statuses; copied; then a run on PostgreSQL delivers the outbox
    and sends no version twice."""
    url, keys, env = database
    sqlite_path = tmp_path / "forwarder.db"
    out = tmp_path / "out"
    blocked = {"type": "file", "path": str(tmp_path / "not-a-dir" / "{tenant}.ndjson"), "format": "raw",
               "retry_initial": "0.01s", "retry_max": "0.05s"}
    (tmp_path / "not-a-dir").write_text("a file where the sink wants a directory")
    before = run_cli("run", "--once", "--config", str(_config(tmp_path, str(sqlite_path), sink=blocked)))
    assert before.returncode == 1, before.stderr  # read everything; the sink stopped: the outbox holds it
    counts = _sqlite_counts(sqlite_path)
    assert counts["outbox"] > 0 and counts["seen"] > 0 and counts["cursors"] > 0

    copy = run_cli("state", "copy", "--from", f"sqlite:{sqlite_path}", "--config",
                   str(_config(tmp_path, url, keys)), env=env)
    assert copy.returncode == 0, copy.stderr
    for table, rows in counts.items():
        assert f"{table:<18} sqlite {rows:>9,}  postgresql {rows:>9,}" in copy.stdout

    after = run_cli("run", "--once", "--config", str(_config(tmp_path, url, keys, sink={
        "type": "file", "path": str(out / "{tenant}.ndjson"), "format": "raw"})), env=env)
    assert after.returncode == 0, after.stderr
    delivered = sum(len(p.read_text().splitlines()) for p in out.glob("*.ndjson"))
    assert delivered == counts["outbox"], "the copied outbox delivered, and no seen version sent again"

    again = run_cli("state", "copy", "--from", f"sqlite:{sqlite_path}", "--config",
                    str(_config(tmp_path, url, keys)), env=env)
    assert again.returncode == 2 and "not empty" in again.stderr


def test_a_database_refusing_connections_is_one_line_naming_it(postgres: Any, tmp_path: Path) -> None:
    url = f"postgresql://forwarder@127.0.0.1:{_free_port()}/defender"
    done = run_cli("run", "--once", "--config", str(_config(tmp_path, url, {"password": f"env:{PASSWORD_ENV}"})),
                   env={PASSWORD_ENV: "irrelevant-pw"})
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:" in lines[0] and lines[0].startswith("error: forwarder.state"), lines
    assert "irrelevant-pw" not in done.stderr


def test_a_database_that_never_answers_times_out_naming_it(black_hole: int, tmp_path: Path) -> None:
    url = f"postgresql://forwarder@127.0.0.1:{black_hole}/defender"
    done = run_cli("run", "--once", "--config", str(_config(tmp_path, url, {"connect_timeout": "1s"})), timeout=60)
    assert done.returncode == 1
    assert f"127.0.0.1:{black_hole}" in done.stderr and "Traceback" not in done.stderr


def _sqlite_counts(path: Path) -> dict[str, int]:
    from core.state.postgresql import TABLES

    connection = sqlite3.connect(path)
    try:
        return {table: connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in TABLES}
    finally:
        connection.close()


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_tenant_another_instance_leases_is_left_to_it_and_named_by_tenants_and_backfill(
        database: tuple[str, dict[str, Any], dict[str, str]], postgres: Any, tmp_path: Path) -> None:
    """A live instance holds northwind: `run --once` polls the other two (exit 0), `backfill`
    of northwind names the holder (exit 1), `tenants` shows who holds what; once the holder is
    gone (its lease released), northwind is read."""
    import psycopg

    url, keys, env = database
    config = _config(tmp_path, url, keys)
    assert run_cli("state", "migrate", "--config", str(config), env=env).returncode == 0
    other = psycopg.connect(url, password=postgres.password, sslmode="verify-full", sslrootcert=str(postgres.ca_file),
                            autocommit=True)
    try:
        now = "extract(epoch FROM clock_timestamp())"
        other.execute(f"INSERT INTO instances VALUES ('vm2:4242', {now})")
        other.execute(f"INSERT INTO leases SELECT 'northwind.onmicrosoft.com', s, 'vm2:4242', 1, {now} + 3600 "
                      "FROM unnest(ARRAY['graph_alerts']) AS s")
        done = run_cli("run", "--once", "--config", str(config), env=env)
        assert done.returncode == 0, done.stderr
        assert "1 of 3 tenants are polled by other instances" in done.stderr
        assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["contoso.ndjson", "fabrikam.ndjson"]
        backfill = run_cli("backfill", "--since", "2016-01-01", "--tenant", "northwind", "--config", str(config), env=env)
        assert backfill.returncode == 1 and "leased to vm2:4242, which polls it" in backfill.stderr
        listing = run_cli("tenants", "--output", "json", "--config", str(config), env=env)
        assert listing.returncode == 0, listing.stderr
        holders = {row["tenant"]: row["instance"] for row in json.loads(listing.stdout)}
        assert holders == {"contoso": None, "fabrikam": None, "northwind": "vm2:4242"}  # run --once gave its back
        other.execute("UPDATE leases SET holder=NULL, expires=0; DELETE FROM instances")  # vm2 stopped cleanly
    finally:
        other.close()
    assert run_cli("run", "--once", "--config", str(config), env=env).returncode == 0
    assert (tmp_path / "out" / "northwind.ndjson").exists()


def test_run_once_whose_sink_is_down_exits_1_with_its_events_waiting(
        database: tuple[str, dict[str, Any], dict[str, str]], tmp_path: Path) -> None:
    """As on SQLite: the events of this run's tenants still wait when it ends, so cron sees exit 1
    (the leases it gives back at the end do not make them someone else's)."""
    url, keys, env = database
    down = {"type": "syslog", "host": "127.0.0.1", "port": _free_port(), "protocol": "tcp",
            "retry_initial": "0.05s", "retry_max": "0.2s"}
    config = _config(tmp_path, url, keys, sink=down, once_deadline="1s")
    assert run_cli("state", "migrate", "--config", str(config), env=env).returncode == 0
    done = run_cli("run", "--once", "--config", str(config), env=env)
    assert done.returncode == 1, done.stderr
    assert "connection refused" in done.stderr.lower()
