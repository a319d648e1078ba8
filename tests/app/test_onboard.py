"""Onboarding commands through the real CLI: `app certificate` makes the app's credential,
`init` writes a starter config that `validate` accepts."""
from __future__ import annotations

import re
import stat
import tomllib
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.helpers import CLIENT_ID, CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts

SINK_TYPES = ["file", "syslog", "splunk_hec", "elasticsearch", "eventhub"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- app certificate


def test_app_certificate_writes_a_private_key_a_certificate_and_prints_the_thumbprint(tmp_path: Path) -> None:
    out = tmp_path / "creds"
    result = run_cli("app", "certificate", "--out", str(out), "--name", "acme", "--days", "30")
    assert result.returncode == 0, result.stderr
    key, cer, combined = out / "acme.key", out / "acme.cer", out / "acme.pem"
    for path in (key, combined):  # what holds the private key is the owner's alone
        assert _mode(path) == 0o600, path
        assert "PRIVATE KEY" in path.read_text()
    assert "PRIVATE KEY" not in cer.read_text()
    cert = x509.load_pem_x509_certificate(cer.read_bytes())
    thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()
    assert thumbprint in result.stdout  # as Entra shows it: 40 upper-case hex digits
    assert str(cer) in result.stdout and str(combined) in result.stdout
    assert f"--cert @{cer} --append" in result.stdout  # the upload, ready to paste
    assert "PRIVATE KEY" not in result.stdout + result.stderr
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(days=29) < lifetime <= timedelta(days=31)
    assert "CN=acme" in cert.subject.rfc4514_string()


def test_app_certificate_refuses_to_overwrite_a_key_unless_forced(tmp_path: Path) -> None:
    assert run_cli("app", "certificate", "--out", str(tmp_path)).returncode == 0
    first = (tmp_path / "mssp.key").read_text()
    again = run_cli("app", "certificate", "--out", str(tmp_path))
    assert again.returncode == 2
    assert "Traceback" not in again.stderr and "--force" in again.stderr
    assert (tmp_path / "mssp.key").read_text() == first
    forced = run_cli("app", "certificate", "--out", str(tmp_path), "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "mssp.key").read_text() != first
    assert _mode(tmp_path / "mssp.key") == 0o600


def test_app_certificate_into_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    # A path through a file cannot be a folder, for root too (the tests may run as root,
    # whom a read-only mode does not stop).
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    result = run_cli("app", "certificate", "--out", str(blocker / "sub"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_app_certificate_bad_days_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("app", "certificate", "--out", str(tmp_path), "--days", "0")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_the_generated_certificate_gets_a_token_through_msal(setup: CloudSetup, tmp_path: Path) -> None:
    made = run_cli("app", "certificate", "--out", str(tmp_path / "creds"))
    assert made.returncode == 0, made.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "creds" / "mssp.cer").read_bytes())
    tenant_id = str(uuid.uuid4())
    setup.cloud.add_tenant(tenant_id, client_id=CLIENT_ID, cert=cert)  # uploaded to the app registration
    setup.cloud.add_alerts(tenant_id, make_alerts(1, tenant_id, recent(30), timedelta(minutes=1)))
    setup.tenants["acme"] = tenant_id
    config = setup.write()
    config.write_text(config.read_text().replace('client_secret = "env:DF_TEST_CLIENT_SECRET"',
                                                 f'certificate = "file:{tmp_path / "creds" / "mssp.pem"}"'))
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "read 1 alert" in result.stderr
    token_hits = [h for h in setup.cloud.hits if h.tenant == tenant_id and h.kind == "token"]
    assert token_hits and all(h.auth and h.auth.startswith("certificate") for h in token_hits)


# --------------------------------------------------------------------------- init


def _init(tmp_path: Path, *extra: str) -> tuple[Path, object]:
    out = tmp_path / "forwarder.toml"
    result = run_cli("init", "--client-id", CLIENT_ID, "--client-secret-env", "MSSP_CLIENT_SECRET",
                     "--tenant", "contoso=22222222-2222-4222-8222-222222222222",
                     "--tenant", "fabrikam=fabrikam.onmicrosoft.com", "--out", str(out), *extra)
    return out, result


@pytest.mark.parametrize("sink", SINK_TYPES)
def test_init_writes_a_config_that_validates_for_each_sink(tmp_path: Path, sink: str) -> None:
    out, result = _init(tmp_path, "--sink", sink)
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    config = tomllib.loads(text)
    assert config["apps"]["mssp"]["client_secret"] == "env:MSSP_CLIENT_SECRET"
    assert set(config["tenants"]) == {"contoso", "fabrikam"}
    assert [s["type"] for s in config["sinks"].values()] == [sink]
    assert text.count("\n#") >= 3  # a starter file explains itself
    for value in _string_values(config):  # secrets only as references
        assert not re.search(r"(?i)secret|token|api_key|password", value) or value.startswith(("env:", "file:"))
    valid = run_cli("validate", "--config", str(out))
    assert valid.returncode == 0, valid.stderr
    assert "2 tenants, 1 sink" in valid.stdout


def _string_values(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for value in node.values() for v in _string_values(value)]
    if isinstance(node, list):
        return [v for value in node for v in _string_values(value)]
    return [node] if isinstance(node, str) else []


def test_init_with_a_certificate_names_it_by_file_reference(tmp_path: Path) -> None:
    out = tmp_path / "forwarder.toml"
    pem = tmp_path / "mssp.pem"
    result = run_cli("init", "--client-id", CLIENT_ID, "--certificate", str(pem),
                     "--tenant", "contoso=22222222-2222-4222-8222-222222222222", "--out", str(out))
    assert result.returncode == 0, result.stderr
    app = tomllib.loads(out.read_text())["apps"]["mssp"]
    assert app["certificate"] == f"file:{pem.resolve()}" and "client_secret" not in app
    assert run_cli("validate", "--config", str(out)).returncode == 0


def test_init_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / "forwarder.toml"
    out.write_text("# mine\n")
    _, result = _init(tmp_path)
    assert result.returncode == 2 and "--force" in result.stderr and "Traceback" not in result.stderr
    assert out.read_text() == "# mine\n"
    _, forced = _init(tmp_path, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "[apps.mssp]" in out.read_text()


@pytest.mark.parametrize("tenant", ["contoso", "contoso=not a tenant", "=22222222-2222-4222-8222-222222222222"])
def test_init_bad_tenant_value_is_one_line(tmp_path: Path, tenant: str) -> None:
    out = tmp_path / "forwarder.toml"
    result = run_cli("init", "--client-id", CLIENT_ID, "--client-secret-env", "S", "--tenant", tenant,
                     "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "--tenant" in result.stderr
    assert not out.exists()


def test_init_takes_no_literal_secret(tmp_path: Path) -> None:
    result = run_cli("init", "--client-id", CLIENT_ID, "--client-secret-env", "not a name!",
                     "--tenant", "contoso=22222222-2222-4222-8222-222222222222", "--out", str(tmp_path / "f.toml"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "not a name!" not in result.stderr  # it may be a pasted secret: never echoed
    assert not (tmp_path / "f.toml").exists()


def test_init_into_an_unwritable_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    _, result = _init(blocker)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_init_without_flags_off_a_terminal_says_what_it_needs(tmp_path: Path) -> None:
    result = run_cli("init", "--out", str(tmp_path / "f.toml"))
    assert result.returncode == 2 and "--client-id" in result.stderr and "Traceback" not in result.stderr


def test_init_on_a_terminal_without_flags_asks(tmp_path: Path) -> None:
    """The questions, answered through a real terminal (a pty): stdin must be a tty for them."""
    import os
    import pty
    import subprocess
    import sys

    from tests.helpers import REPO, read_terminal

    out = tmp_path / "forwarder.toml"
    answers = [CLIENT_ID, "", "MY_SECRET_VAR", "contoso", "contoso=contoso.onmicrosoft.com", "", "syslog"]
    main, child = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "core.app.cli", "init", "--out", str(out)], cwd=REPO,
                               env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=child, stdout=child, stderr=child)
    os.close(child)
    os.write(main, "".join(answer + "\n" for answer in answers).encode())
    seen = read_terminal(main)
    assert process.wait(timeout=60) == 0, seen.decode(errors="replace")
    os.close(main)
    text = seen.decode(errors="replace")
    assert "client) ID" in text and "LABEL=TENANT_ID" in text
    assert "write LABEL=TENANT_ID" in text  # the slip ("contoso") is named, and asked again
    config = tomllib.loads(out.read_text())
    assert config["apps"]["mssp"]["client_secret"] == "env:MY_SECRET_VAR"
    assert config["tenants"]["contoso"]["tenant_id"] == "contoso.onmicrosoft.com"
    assert [s["type"] for s in config["sinks"].values()] == ["syslog"]
    assert run_cli("validate", "--config", str(out)).returncode == 0
