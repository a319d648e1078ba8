"""What an operator can get wrong in the machine around the forwarder: each is one line on
stderr naming the file, key or package and the fix, exit 2, and never a Python traceback."""
from __future__ import annotations

import os
import resource
import signal
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, read_ndjson, recent, run_cli, write_config, write_replay
from tests.peers.alert_factory import make_alerts

TENANT_ID = "66666666-6666-4666-8666-666666666666"


def _config(tmp_path: Path, state: Path | None = None, sinks: dict[str, dict[str, Any]] | None = None,
            alerts: int = 3) -> Path:
    replay = write_replay(tmp_path / "replay", [make_alerts(alerts, TENANT_ID, recent(300), timedelta(seconds=1),
                                                            seed=5)])
    tables: dict[str, dict[str, Any]] = {
        "forwarder": {"state": str(state or tmp_path / "state.db"), "initial_lookback": "3650d"},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
    }
    for name, sink in (sinks or {"out": {"type": "file", "path": str(tmp_path / "out.ndjson"), "format": "raw"}}).items():
        tables[f"sinks.{name}"] = sink
    return write_config(tmp_path / "c.toml", tables)


def _one_clear_line(result: Any, *words: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def test_a_state_directory_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    state = tmp_path / "a-file" / "state" / "forwarder.db"  # its "directory" is a file
    result = run_cli("run", "--once", "--config", str(_config(tmp_path, state)))
    _one_clear_line(result, str(tmp_path / "a-file"), "forwarder.state")


def test_a_state_path_that_is_a_directory_is_named(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    result = run_cli("tenants", "--config", str(_config(tmp_path, state)))
    _one_clear_line(result, str(state), "forwarder.state")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into any directory: no permission to refuse")
def test_an_unwritable_state_directory_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "locked"
    folder.mkdir(mode=0o500)
    result = run_cli("run", "--once", "--config", str(_config(tmp_path, folder / "state.db")))
    _one_clear_line(result, str(folder), "forwarder.state")


def _file_size_limit(limit: int) -> Any:
    """In the child: files may grow to `limit` bytes, a write past it fails with EFBIG instead of
    killing the process with SIGXFSZ. A full disk without mounting one: SQLite reports EFBIG as
    an I/O error where ENOSPC is SQLITE_FULL; both take the same way out."""

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return limit_writes


def test_a_full_disk_while_writing_the_state_is_one_line(tmp_path: Path) -> None:
    config = _config(tmp_path, alerts=400)
    assert run_cli("tenants", "--config", str(config)).returncode == 0  # the state exists, empty
    result = run_cli("run", "--once", "--config", str(config), preexec_fn=_file_size_limit(256 * 1024))
    _one_clear_line(result, str(tmp_path / "state.db"), "free space on its disk", "ulimit -f")
    again = run_cli("run", "--once", "--config", str(config))  # space freed: nothing was lost
    assert again.returncode == 0, again.stderr
    assert len({alert["id"] for alert in read_ndjson(tmp_path / "out.ndjson")}) == 400


def test_a_sink_whose_extra_is_not_installed_names_the_pip_command(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked" / "elasticsearch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'elasticsearch'\", "
                                         "name='elasticsearch')\n")
    config = _config(tmp_path, sinks={"siem": {"type": "elasticsearch", "hosts": ["https://127.0.0.1:9"],
                                               "api_key": "env:DF_TEST_KEY"}})
    result = run_cli("run", "--once", "--config", str(config),
                     env={"PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO}", "DF_TEST_KEY": "key-123456"})
    _one_clear_line(result, "sinks.siem", "pip install 'defender-forwarder[elastic]'")


def test_an_unreadable_ca_file_of_a_sink_is_named(tmp_path: Path) -> None:
    for ca_file in (tmp_path / "missing.pem", tmp_path):  # missing; a directory
        config = _config(tmp_path, sinks={"siem": {"type": "elasticsearch", "hosts": ["https://127.0.0.1:9"],
                                                   "api_key": "env:DF_TEST_KEY", "ca_file": str(ca_file)}})
        result = run_cli("run", "--once", "--config", str(config), env={"DF_TEST_KEY": "key-123456"})
        _one_clear_line(result, "sinks.siem.ca_file", str(ca_file))


def test_a_garbage_client_certificate_is_named(tmp_path: Path) -> None:
    garbage = tmp_path / "client.pem"
    garbage.write_text("not a certificate\n")
    config = _config(tmp_path, sinks={"siem": {"type": "syslog", "host": "127.0.0.1", "port": 9,
                                               "protocol": "tls", "client_cert": str(garbage)}})
    result = run_cli("run", "--once", "--config", str(config))
    _one_clear_line(result, "sinks.siem.client_cert", str(garbage))


def test_a_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "token"
    secret.write_text("hec-token-123456\n")
    secret.chmod(0o644)
    config = _config(tmp_path, sinks={"siem": {"type": "splunk_hec", "url": "https://127.0.0.1:9",
                                               "token": f"file:{secret}"}})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = next(line for line in result.stderr.splitlines() if str(secret) in line)
    assert "sinks.siem.token" in line and f"chmod 600 {secret}" in line
    secret.chmod(0o600)
    assert "chmod" not in run_cli("check", "--config", str(config)).stderr


def test_a_missing_secret_file_is_named(tmp_path: Path) -> None:
    config = _config(tmp_path, sinks={"siem": {"type": "splunk_hec", "url": "https://127.0.0.1:9",
                                               "token": f"file:{tmp_path / 'nope'}"}})
    result = run_cli("check", "--config", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert any("sinks.siem.token" in line and str(tmp_path / "nope") in line for line in result.stderr.splitlines())


def test_a_genuine_bug_still_shows_its_traceback(tmp_path: Path) -> None:
    """The guard knows what an operator can cause; anything else is a bug to report."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import core.state.sqlite as s\n"
        "def broken(self, *a, **k):\n    raise OSError('a bug')\n"
        "s.SQLiteStore.tenant_statuses = broken\n")
    result = run_cli("tenants", "--config", str(_config(tmp_path)),
                     env={"PYTHONPATH": f"{shim}{os.pathsep}{REPO}"})
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_the_systemd_unit_does_not_restart_on_a_configuration_error() -> None:
    unit = (REPO / "examples" / "systemd" / "defender-forwarder.service").read_text()
    assert "RestartPreventExitStatus=2" in unit.splitlines()


@pytest.mark.parametrize("content", ["not a pem at all\n",
                                     "-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"])
def test_an_unusable_app_certificate_is_named(setup: Any, content: str) -> None:
    pem = setup.tmp / "mssp.pem"
    pem.write_text(content)
    pem.chmod(0o600)
    setup.tenant("acme")
    config = setup.write()
    config.write_text(config.read_text().replace('client_secret = "env:DF_TEST_CLIENT_SECRET"',
                                                 f'certificate = "file:{pem}"'))
    result = run_cli("run", "--once", "--config", str(config))
    _one_clear_line(result, "apps.mssp.certificate", "PEM")


def test_a_certificate_not_uploaded_is_named_in_the_summary_with_its_brackets(setup: Any) -> None:
    """A usable certificate the app does not know is the tenant's error (exit 1), and the
    summary shows the key as written: `[apps.mssp]` is text, not markup to swallow."""
    from tests.peers.fake_cloud import make_client_cert

    uploaded, other = make_client_cert(), make_client_cert("another")
    pem = setup.tmp / "mssp.pem"
    pem.write_text(other.key_pem.decode() + other.cert_pem.decode() if isinstance(other.key_pem, bytes)
                   else other.key_pem + other.cert_pem)
    pem.chmod(0o600)
    setup.tenant("acme", cert=uploaded.cert)
    config = setup.write()
    config.write_text(config.read_text().replace('client_secret = "env:DF_TEST_CLIENT_SECRET"',
                                                 f'certificate = "file:{pem}"'))
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    status = [line for line in result.stderr.splitlines() if line.startswith("│ acme")]
    assert status and "[apps.mssp]" in status[0], result.stderr


def test_a_config_path_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"\xff\xfe not text")
    for path in (tmp_path, binary):  # a directory; not UTF-8
        result = run_cli("check", "--config", str(path))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert str(path) in result.stderr


def _http_config(tmp_path: Path, listen: str) -> Path:
    config = _config(tmp_path)
    return write_config(config, {**_tables_of(config), "forwarder.http": {"listen": listen}})


def _tables_of(config: Path) -> dict[str, dict[str, Any]]:
    import tomllib

    data = tomllib.loads(config.read_text())
    tables: dict[str, dict[str, Any]] = {"forwarder": data["forwarder"]}
    tables |= {f"tenants.{k}": v for k, v in data["tenants"].items()}
    tables |= {f"sinks.{k}": v for k, v in data["sinks"].items()}
    return tables


def test_a_port_already_in_use_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        result = run_cli("run", "--config", str(_http_config(tmp_path, listen)), timeout=60)
    line = _one_clear_line(result, "forwarder.http.listen", listen, "already in use", "another port")
    assert "Traceback" not in result.stdout
    assert not (tmp_path / "out.ndjson").exists(), line  # it stopped before the first poll


def test_a_listen_address_that_is_not_host_port_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli("validate", "--config", str(_http_config(tmp_path, "9464")))
    _one_clear_line(result)
    assert "forwarder.http.listen" in result.stderr and "host:port" in result.stderr, result.stderr
