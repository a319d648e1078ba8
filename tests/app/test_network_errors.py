"""Network errors say where and why, through `run --once` as an operator meets them: the
host and port, the cause, and the tenant or sink they belong to. Real sockets."""
from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from tests.helpers import CloudSetup, run_cli
from tests.peers.lifecycle import free_port

# The 8 attempts of a page back off from this (doubling): what the message says is the same,
# the test a tenth as long as with the setup's default.
QUICK_RETRY = "0.005s"


def flat(text: str) -> str:
    """The summary's text with the table's borders and wrapping taken out."""
    return re.sub(r"\s+", " ", re.sub(r"[│┃┏┓┗┛┡┩└┘┌┐━─╇╈┼┬┴├┤╭╮╰╯]", " ", text))


def tenant_row(stderr: str, label: str) -> str:
    """A tenant's row of the summary, its wrapped lines joined."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"│ {label} "))
    rows = [lines[start]]
    for line in lines[start + 1:]:
        if line.startswith(("└", "├")) or not line.startswith("│ ") or line.startswith("│ ") and line[2] != " ":
            break
        rows.append(line)
    return flat("\n".join(rows))


def test_login_host_that_does_not_resolve(setup: CloudSetup) -> None:
    setup.tenant("acme")
    setup.app["login_endpoint"] = "https://nonexistent.invalid"
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "login service unreachable: nonexistent.invalid:443: name not resolved (DNS)" in tenant_row(
        result.stderr, "acme"), result.stderr


def test_graph_port_refused_names_tenant_host_and_port(setup: CloudSetup) -> None:
    setup.tenant("acme")
    setup.forwarder["retry_initial"] = QUICK_RETRY
    port = free_port()
    setup.app["graph_endpoint"] = f"https://127.0.0.1:{port}"
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1
    assert f"127.0.0.1:{port}: connection refused" in tenant_row(result.stderr, "acme"), result.stderr
    log = flat(result.stderr)
    assert f"tenant acme: Graph did not answer successfully after 8 attempts: 127.0.0.1:{port}: connection refused" \
        in log, result.stderr


def test_graph_with_an_untrusted_certificate(setup: CloudSetup, untrusted_tls: int) -> None:
    setup.tenant("acme")
    setup.forwarder["retry_initial"] = QUICK_RETRY
    setup.app["graph_endpoint"] = f"https://127.0.0.1:{untrusted_tls}"
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1
    row = tenant_row(result.stderr, "acme")
    assert f"127.0.0.1:{untrusted_tls}: TLS certificate fails verification (" in row, result.stderr
    assert "its subject" in row and re.search(r"issuer [^;]*O=Untrusted Test CA", row), row


def test_tenants_shows_the_last_network_error(setup: CloudSetup, tmp_path: Path) -> None:
    setup.tenant("acme")
    setup.forwarder["retry_initial"] = QUICK_RETRY
    port = free_port()
    setup.app["graph_endpoint"] = f"https://127.0.0.1:{port}"
    config = setup.write()
    run_cli("run", "--once", "--config", str(config))
    table = run_cli("tenants", "--config", str(config))
    assert f"127.0.0.1:{port}: connection refused" in flat(table.stdout), table.stdout


# ---- sinks: the run summary shows a sink's real state ----------------------------------------

def _replay_setup(tmp_path: Path, sink: dict, n: int = 3) -> Path:
    from datetime import timedelta

    from tests.helpers import recent, write_config, write_replay
    from tests.peers.alert_factory import make_alerts

    tenant_id = "77777777-7777-4777-8777-777777777777"
    replay = write_replay(tmp_path / "replay", [make_alerts(n, tenant_id, recent(300), timedelta(minutes=1), seed=3)])
    return write_config(tmp_path / "c.toml", {
        "forwarder": {"state": str(tmp_path / "state.db"), "initial_lookback": "3650d", "once_deadline": "2s"},
        "tenants.acme": {"tenant_id": tenant_id, "replay": str(replay)},
        "sinks.siem": {"retry_initial": "0.2s", "retry_max": "0.5s", **sink},
    })


def sink_row(stderr: str, name: str) -> str:
    return tenant_row(stderr, name)


def test_a_sink_that_cannot_connect_shows_retrying_never_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    config = _replay_setup(tmp_path, {"type": "splunk_hec", "url": f"http://127.0.0.1:{port}",
                                      "token": "env:DF_TEST_HEC_TOKEN"})
    result = run_cli("run", "--once", "--config", str(config),
                     env={"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    row = sink_row(result.stderr, "siem")
    assert re.search(rf"retrying since \d\d:\d\d:\d\d UTC: 127\.0\.0\.1:{port}: connection refused; 3 waiting", row), \
        result.stderr
    assert " ok" not in row
    assert f"sink siem: 127.0.0.1:{port}: connection refused; retrying in" in flat(result.stderr)


@pytest.mark.parametrize("sink_type", ["splunk_hec", "elasticsearch", "syslog"])
def test_every_network_sink_says_where_and_why(tmp_path: Path, sink_type: str) -> None:
    port = free_port()
    sink = {"splunk_hec": {"url": f"http://127.0.0.1:{port}", "token": "env:DF_TEST_HEC_TOKEN"},
            "elasticsearch": {"hosts": [f"http://127.0.0.1:{port}"]},
            "syslog": {"host": "127.0.0.1", "port": port, "protocol": "tcp"}}[sink_type]
    config = _replay_setup(tmp_path, {"type": sink_type, **sink})
    result = run_cli("run", "--once", "--config", str(config),
                     env={"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}: connection refused; 3 waiting" in sink_row(result.stderr, "siem"), result.stderr


def test_a_syslog_receiver_that_does_not_resolve(tmp_path: Path) -> None:
    config = _replay_setup(tmp_path, {"type": "syslog", "host": "nonexistent.invalid", "port": 6514,
                                      "protocol": "tcp"})
    result = run_cli("run", "--once", "--config", str(config))
    assert "nonexistent.invalid:6514: name not resolved (DNS); 3 waiting" in sink_row(result.stderr, "siem"), \
        result.stderr


@pytest.mark.parametrize("sink_type", ["splunk_hec", "elasticsearch", "syslog"])
def test_an_untrusted_sink_certificate_names_subject_and_issuer(tmp_path: Path, untrusted_tls: int,
                                                                sink_type: str) -> None:
    sink = {"splunk_hec": {"url": f"https://127.0.0.1:{untrusted_tls}", "token": "env:DF_TEST_HEC_TOKEN"},
            "elasticsearch": {"hosts": [f"https://127.0.0.1:{untrusted_tls}"]},
            "syslog": {"host": "127.0.0.1", "port": untrusted_tls, "protocol": "tls"}}[sink_type]
    config = _replay_setup(tmp_path, {"type": sink_type, **sink})
    result = run_cli("run", "--once", "--config", str(config),
                     env={"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    row = sink_row(result.stderr, "siem")
    assert result.returncode == 1 and "stopped: TLS: " in row, result.stderr
    assert f"127.0.0.1:{untrusted_tls}: TLS certificate fails verification (" in row, row
    assert re.search(r"its subject .*, issuer [^;]*O=Untrusted Test CA", row), row


def test_a_read_timeout_names_its_phase(tmp_path: Path) -> None:
    """A HEC that accepts the connection and never answers: the wait ends after
    request_timeout, and says it was the read."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        config = _replay_setup(tmp_path, {"type": "splunk_hec", "url": f"http://127.0.0.1:{port}",
                                          "token": "env:DF_TEST_HEC_TOKEN", "request_timeout": "0.5s"})
        result = run_cli("run", "--once", "--config", str(config),
                         env={"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    assert f"127.0.0.1:{port}: read timeout after 0.5s; 3 waiting" in sink_row(result.stderr, "siem"), result.stderr


# ---- on a terminal, a long wait says what it waits for -------------------------------------------

def _run_on_a_terminal(config: Path, env: dict[str, str]) -> str:
    """`run --once` with stderr on a pseudo-terminal (stdout a pipe); all it wrote there."""
    import os
    import pty
    import subprocess
    import sys

    from tests.helpers import REPO, read_terminal

    master, slave = pty.openpty()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", "TERM": "xterm", **env}
    full_env.pop("NO_COLOR", None)
    process = subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--once", "--config", str(config)],
                               cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    written = read_terminal(master)
    process.wait(timeout=60)
    os.close(master)
    return written.decode(errors="replace")


def test_on_a_terminal_a_long_wait_says_what_it_waits_for(tmp_path: Path) -> None:
    port = free_port()
    config = _replay_setup(tmp_path, {"type": "splunk_hec", "url": f"http://127.0.0.1:{port}",
                                      "token": "env:DF_TEST_HEC_TOKEN"})
    screen = _run_on_a_terminal(config, {"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    assert f"waiting for sink siem: 3 events, retrying: 127.0.0.1:{port}: connection refused" in screen, screen


def test_off_a_terminal_no_spinner(tmp_path: Path) -> None:
    port = free_port()
    config = _replay_setup(tmp_path, {"type": "splunk_hec", "url": f"http://127.0.0.1:{port}",
                                      "token": "env:DF_TEST_HEC_TOKEN"})
    result = run_cli("run", "--once", "--config", str(config),
                     env={"DF_TEST_HEC_TOKEN": "00000000-0000-4000-8000-00000000beef"})
    assert "waiting for" not in result.stderr and "\x1b[" not in result.stderr


def test_an_smtp_server_out_of_reach(tmp_path: Path) -> None:
    port = free_port()
    config = _replay_setup(tmp_path, {"type": "email", "host": "127.0.0.1", "port": port, "security": "none",
                                      "from": "forwarder@mssp.example", "to": ["soc@mssp.example"]})
    result = run_cli("run", "--once", "--config", str(config))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"127.0.0.1:{port}: connection refused; 3 waiting" in sink_row(result.stderr, "siem"), result.stderr


def test_graph_that_never_answers_is_a_read_timeout(setup: CloudSetup) -> None:
    """The pipeline's Graph client: connecting and reading have their own limits, and the
    message says which one ran out."""
    setup.tenant("acme")
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        port = silent.getsockname()[1]
        setup.app["graph_endpoint"] = f"http://127.0.0.1:{port}"
        setup.forwarder["request_timeout"] = "0.5s"
        setup.forwarder["retry_initial"] = QUICK_RETRY
        result = run_cli("run", "--once", "--config", str(setup.write()))
    assert f"127.0.0.1:{port}: read timeout after 0.5s" in tenant_row(result.stderr, "acme"), result.stderr
