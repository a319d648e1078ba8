"""What a user expects of any command line: --version, an offline `validate`, global options
before or after the command, and a `make demo` that does not reinstall every time."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli, write_config


def _config(tmp_path: Path, **app: object) -> Path:
    (tmp_path / "replay").mkdir(exist_ok=True)
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db")},
        "apps.mssp": {"client_id": "11111111-1111-4111-8111-111111111111",
                      "client_secret": "env:DF_CLI_TEST_NEVER_SET", "login_endpoint": "https://127.0.0.1:9", **app},
        "tenants.acme": {"tenant_id": "77777777-7777-4777-8777-777777777777", "app": "mssp"},
        "tenants.lab": {"tenant_id": "88888888-8888-4888-8888-888888888888", "replay": str(tmp_path / "replay")},
        "sinks.archive": {"type": "file", "path": str(tmp_path / "out" / "{tenant}.ndjson")},
        "sinks.siem": {"type": "splunk_hec", "url": "https://127.0.0.1:9", "token": "file:/nonexistent/hec-token"},
    }, routes=[{"sinks": ["archive", "siem"]}])


# ---- --version ---------------------------------------------------------------------------------
def test_version_is_the_projects() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"defender-forwarder {version}"


# ---- validate ----------------------------------------------------------------------------------
def test_validate_counts_tenants_sinks_routes_offline_without_secrets(tmp_path: Path) -> None:
    result = run_cli("validate", "--config", str(_config(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "valid: 2 tenants, 2 sinks, 1 route"
    assert not (tmp_path / "state.db").exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.toml")))
def test_every_example_validates_as_it_is_without_its_secrets(example: str) -> None:
    """Their secrets and certificate files live on the production host, not here."""
    result = run_cli("validate", "--config", str(REPO / "examples" / example))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: ")


def test_validate_reports_every_problem_on_its_own_line(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {
        "tenants.acme": {"tenant_id": "t", "app": "nowhere"},
        "sinks.out": {"type": "file", "formt": "raw"},
        "sinks.siem": {"type": "splunk_hec", "url": "https://x", "token": "env:NOT-A-NAME"},
    })
    result = run_cli("validate", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    for problem in ('tenants.acme.app = "nowhere": no [apps.nowhere] table', "sinks.out.formt: unknown key",
                    "sinks.siem.token: 'NOT-A-NAME' is not an environment variable name"):
        assert sum(problem in line for line in lines) == 1, (problem, result.stderr)
    assert result.stdout == ""


def test_validate_without_a_config_file_names_it(tmp_path: Path) -> None:
    result = run_cli("validate", "--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2 and "nope.toml: no such config file" in result.stderr
    assert "Traceback" not in result.stderr


# ---- global options ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["before", "after"])
def test_config_is_accepted_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    config = ["--config", str(_config(tmp_path))]
    args = [*config, "validate"] if where == "before" else ["validate", *config]
    result = run_cli(*args, cwd=tmp_path)  # no config in the working directory: only --config finds it
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("valid: 2 tenants")


def test_run_once_takes_the_global_options_after_its_own(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    result = run_cli("run", "--once", "--config", config, "--log-level", "error", cwd=tmp_path)
    before = run_cli("--config", config, "--log-level", "error", "run", "--once", cwd=tmp_path)
    for outcome in (result, before):  # the same: the config was read and its missing secret named
        assert outcome.returncode == 2 and "sinks.siem.token: cannot read secret file" in outcome.stderr


@pytest.mark.parametrize("args", [["--log-level", "error", "validate"], ["validate", "--log-level", "error"]])
def test_log_level_overrides_the_configs(tmp_path: Path, args: list[str]) -> None:
    config = _config(tmp_path, client_secret="a-literal-secret-value")
    warned = run_cli("validate", "--config", str(config))
    assert warned.returncode == 0 and "literal secret" in warned.stderr
    quiet = run_cli(*args, "--config", str(config))
    assert quiet.returncode == 0 and "literal secret" not in quiet.stderr


def test_a_later_global_option_wins_and_a_bad_one_is_a_usage_error(tmp_path: Path) -> None:
    good = str(_config(tmp_path))
    result = run_cli("--config", str(tmp_path / "nope.toml"), "validate", "--config", good)
    assert result.returncode == 0, result.stderr
    bad = run_cli("validate", "--log-level", "loud", "--config", good)
    assert bad.returncode == 2 and "--log-level" in bad.stderr and "Traceback" not in bad.stderr


# ---- make demo ---------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_installs_once_then_skips_pip(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()

    def dry_run() -> str:
        env = {**os.environ, "MAKEFLAGS": ""}
        return subprocess.run(["make", "-n", "demo", f"VENV={venv}"], cwd=REPO, env=env, capture_output=True,
                              text=True, check=True).stdout

    first = dry_run()
    assert re.search(r"pip install .*-e \.", first), first
    stamps = [line for line in first.splitlines() if line.startswith("touch ")]
    assert stamps, first
    for stamp in stamps:
        Path(stamp.split(None, 1)[1]).touch()  # what the real run leaves behind
    second = dry_run()
    assert "pip" not in second and "defender-forwarder run --once" in second
