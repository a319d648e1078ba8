"""Configuration slips as an operator meets them through the CLI: a tenant no route takes, a
route glob that takes no tenant, a tenant id or app that is not one; every problem of the file
in one run, one line each, exit 2, no traceback."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import CloudSetup, run_cli, write_config

GUID = "77777777-7777-4777-8777-777777777777"


def _config_problems(result: object) -> list[str]:
    """The problem lines of an 'invalid configuration' error, as the operator reads them."""
    stderr: str = result.stderr  # type: ignore[attr-defined]
    assert "Traceback" not in stderr, stderr
    assert result.returncode == 2, stderr  # type: ignore[attr-defined]
    assert "invalid configuration" in stderr, stderr
    return [line.strip() for line in stderr.splitlines()[1:] if line.strip()]


@pytest.mark.parametrize("command", ["check", "tenants", "run"])
def test_a_tenant_no_route_takes_is_an_error_in_every_command(setup: CloudSetup, command: str) -> None:
    setup.tenant("contoso")
    setup.tenant("fabrikam")
    setup.routes = [{"tenants": ["contoso"], "sinks": ["archive"]}]
    args = [command, "--once"] if command == "run" else [command]
    problems = _config_problems(run_cli(*args, "--config", str(setup.write())))
    assert problems == ["tenants.fabrikam: no route takes its alerts (routes[0].tenants = [\"contoso\"]); "
                        "add it to a route's tenants, or set enabled = false"]
    assert not (setup.tmp / "out").exists()  # nothing was read, nothing forwarded


def test_a_disabled_tenant_needs_no_route(setup: CloudSetup) -> None:
    setup.tenant("contoso")
    setup.tenant("fabrikam")
    setup.tenant_keys["fabrikam"] = {"enabled": False}
    setup.routes = [{"tenants": ["contoso"], "sinks": ["archive"]}]
    result = run_cli("tenants", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr


def test_a_route_glob_that_takes_no_tenant_is_an_error(setup: CloudSetup) -> None:
    setup.tenant("contoso")
    setup.routes = [{"tenants": ["contoso", "fabricam*"], "sinks": ["archive"]}]
    problems = _config_problems(run_cli("check", "--config", str(setup.write())))
    assert problems == ["routes[0].tenants: \"fabricam*\" matches no tenant; tenants: contoso"]


def test_a_glob_matching_only_a_disabled_tenant_is_not_a_slip(setup: CloudSetup) -> None:
    setup.tenant("contoso")
    setup.tenant("fabrikam")
    setup.tenant_keys["fabrikam"] = {"enabled": False}
    setup.routes = [{"tenants": ["*"], "sinks": ["archive"]}, {"tenants": ["fab*"], "sinks": ["archive"]}]
    assert run_cli("tenants", "--config", str(setup.write())).returncode == 0


def test_an_app_no_table_defines_is_named_with_the_apps_there_are(setup: CloudSetup) -> None:
    setup.tenant("contoso")
    setup.tenant_keys["contoso"] = {"app": "mssp2"}
    problems = _config_problems(run_cli("check", "--config", str(setup.write())))
    assert problems == ['tenants.contoso.app = "mssp2": no [apps.mssp2] table; defined apps: mssp']


@pytest.mark.parametrize("tenant_id", ["t", "contoso", "not a guid", "22222222-2222-4222-8222", "http://x.com"])
def test_a_tenant_id_that_is_no_guid_or_domain_is_an_error(setup: CloudSetup, tenant_id: str) -> None:
    setup.tenant("contoso")
    setup.tenant_keys["contoso"] = {"tenant_id": tenant_id}
    problems = _config_problems(run_cli("tenants", "--config", str(setup.write())))
    assert len(problems) == 1 and problems[0].startswith("tenants.contoso.tenant_id: "), problems
    assert "GUID" in problems[0] and "contoso.onmicrosoft.com" in problems[0]


def test_a_verified_domain_is_a_tenant_id(setup: CloudSetup) -> None:
    setup.tenant("contoso")
    setup.tenant_keys["contoso"] = {"tenant_id": "contoso.onmicrosoft.com"}
    result = run_cli("tenants", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert "contoso.onmicrosoft.com" in result.stdout


def test_every_problem_of_the_file_in_one_run_in_one_spelling(tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "overlapp": "10m"},
        "tenants.contoso": {"tenant_id": "t", "app": "mssp2"},
        "tenants.fabrikam": {"tenant_id": GUID, "replay": "x"},
        "sinks.archive": {"type": "file", "pth": "out.ndjson"},
        "sinks.siem": {"type": "stdout"},
        "sinks.syslog": {"type": "syslog"},
    }, routes=[
        {"tenants": ["contoso"], "sinks": ["siem"]},
        {"tenants": ["nobody*"], "sinks": ["siem", "splunk"], "min_severity": "urgent"},
    ])
    problems = _config_problems(run_cli("run", "--once", "--config", str(config)))
    assert sorted(problem.split(":")[0].split(" =")[0] for problem in problems) == sorted([
        "forwarder.overlapp",
        "tenants.contoso.tenant_id",
        "tenants.contoso.app",
        "tenants.fabrikam",
        "sinks.archive.pth",
        "sinks.syslog.host",
        "routes[1].min_severity",
        "routes[1].sinks",
        "routes[1].tenants",
    ]), problems
    assert not any("routes.1" in problem for problem in problems)
    assert "sinks.syslog.host: missing; this key is required" in problems
