"""A command resolves only the secrets it uses: the admin commands work from a shell without the
service's environment; `run`, `check` and `setup` name a missing secret they need, exit 2."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import CLIENT_ID, run_cli, write_config

TENANT_ID = "77777777-7777-4777-8777-777777777777"
# Never set anywhere: the environment of an admin shell that lacks the service's variables.
ABSENT_CLIENT_SECRET = "DF_CLI_TEST_ABSENT_CLIENT_SECRET"
ABSENT_ES_KEY = "DF_CLI_TEST_ABSENT_ES_KEY"


@pytest.fixture(autouse=True)
def _absent_variables() -> None:
    assert ABSENT_CLIENT_SECRET not in os.environ and ABSENT_ES_KEY not in os.environ


def service_config(tmp_path: Path, **app: Any) -> Path:
    """A tenant read through the MSSP app and an Elasticsearch sink, both with secrets from the
    environment, and a replay tenant and a file sink that need none."""
    (tmp_path / "replay").mkdir(exist_ok=True)
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "apps.mssp": {"client_id": CLIENT_ID, "client_secret": f"env:{ABSENT_CLIENT_SECRET}", **app},
        "tenants.acme": {"tenant_id": TENANT_ID, "app": "mssp"},
        "tenants.lab": {"tenant_id": "88888888-8888-4888-8888-888888888888", "replay": str(tmp_path / "replay")},
        "sinks.archive": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson")},
        "sinks.es": {"type": "elasticsearch", "hosts": ["https://127.0.0.1:9"], "api_key": f"env:{ABSENT_ES_KEY}"},
    })


def assert_clean_exit(result: Any, code: int) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [
    ["tenants"],
    ["dead-letters", "list"],
    ["dead-letters", "replay"],
    ["dead-letters", "drop", "--all", "--yes"],
    ["setup", "elasticsearch", "--dry-run"],
])
def test_admin_commands_need_no_secret(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, "--config", str(service_config(tmp_path)))
    assert_clean_exit(result, 0)


def test_consent_url_needs_no_secret(tmp_path: Path) -> None:
    result = run_cli("consent-url", "--tenant", "acme", "--config", str(service_config(tmp_path)))
    assert_clean_exit(result, 0)
    assert f"/{TENANT_ID}/adminconsent?client_id={CLIENT_ID}" in result.stdout


@pytest.mark.parametrize("command", [["run", "--once"], ["check"], ["backfill", "--since", "2026-11-01"]])
def test_a_command_that_needs_a_missing_secret_names_it(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(*command, "--config", str(service_config(tmp_path)))
    assert_clean_exit(result, 2)
    assert f"apps.mssp.client_secret: environment variable {ABSENT_CLIENT_SECRET} is not set" in result.stderr
    assert f"sinks.es.api_key: environment variable {ABSENT_ES_KEY} is not set" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was started


def test_a_missing_secret_file_is_named_with_its_key(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "client-secret"
    config = service_config(tmp_path, client_secret=f"file:{missing}")
    result = run_cli("run", "--once", "--config", str(config), env={ABSENT_ES_KEY: "es-key-value-123"})
    assert_clean_exit(result, 2)
    assert f"apps.mssp.client_secret: cannot read secret file {missing}" in result.stderr
    assert "sinks.es" not in result.stderr


def test_setup_without_dry_run_names_the_missing_secret(tmp_path: Path) -> None:
    result = run_cli("setup", "elasticsearch", "--config", str(service_config(tmp_path)))
    assert_clean_exit(result, 2)
    assert f"sinks.es.api_key: environment variable {ABSENT_ES_KEY} is not set" in result.stderr
    assert "apps.mssp" not in result.stderr  # setup talks to the sink only

