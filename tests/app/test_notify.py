"""`[notify]` (core/app/notify.py) against the real SMTP server the e-mail tests use (aiosmtpd,
STARTTLS and AUTH, tests/peers/smtp_server.py) and the simulated cloud: one mail per change of
a tenant's health, a sink's state or a certificate's, none for a cycle that changed nothing,
none of any secret; a mail server down or hanging neither stops nor slows the polling, and
what it did not take is sent once it is back.

Each `_cycle` is one `run --once` in this process with a fresh Forwarder (as cron runs it), so
what is remembered between cycles is what the state store keeps."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from core.app.config import ConfigError, load_config, parse_config
from core.app.pipeline import Forwarder
from core.state.sqlite import SQLiteStore
from tests.helpers import SECRET, CloudSetup, daemon, recent, run_cli, toml_value, until
from tests.peers.alert_factory import make_alerts
from tests.peers.fake_cloud import make_client_cert
from tests.peers.smtp_server import Received, SmtpServer

PASSWORD = "SECRET-notify-smtp-password-7c1d"  # recognisable, for the secret scan
SOC = "soc@mssp.example"
SENDER = "forwarder@mssp.example"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    monkeypatch.setenv("DF_TEST_SMTP_PASSWORD", PASSWORD)
    with SmtpServer(tls="starttls", users={"forwarder": PASSWORD}) as server:
        yield server


def _own_server(smtp: SmtpServer, **keys: Any) -> dict[str, Any]:
    return {"to": [SOC], "sender": SENDER, "host": "127.0.0.1", "port": smtp.port, "security": "starttls",
            "username": "forwarder", "password": "env:DF_TEST_SMTP_PASSWORD", "ca_file": str(smtp.ca_file),
            "timeout": "2s"} | keys


def _write(setup: CloudSetup, notify: dict[str, Any]) -> Path:
    """The setup's config with a [notify] table (after [[routes]]: a table header ends them)."""
    path = setup.write()
    lines = ["", "[notify]", *(f"{key} = {toml_value(value)}" for key, value in notify.items()), ""]
    path.write_text(path.read_text() + "\n".join(lines))
    return path


def _cycle(config: Path) -> None:
    """One `run --once` cycle in this process: poll, deliver, notify (and wait for the mail)."""
    settings = load_config(config)

    async def go() -> None:
        store = SQLiteStore(Path(settings.forwarder.state))
        try:
            async with Forwarder(settings, store) as forwarder:
                await forwarder.run_once()
        finally:
            store.close()

    asyncio.run(go())


def _notified(setup: CloudSetup) -> dict[str, str]:
    store = SQLiteStore(setup.state)
    try:
        return store.notified()
    finally:
        store.close()


def _mails(smtp: SmtpServer) -> list[Received]:
    """The messages [notify] sent (an e-mail sink's alert mails go to other recipients)."""
    return [m for m in smtp.messages() if m.recipients == [SOC]]


def _subject(mail: Received) -> str:
    return " ".join(str(mail.message["Subject"]).split())  # a folded header comes back with its fold's space


def _text(mail: Received) -> str:
    return mail.message.get_body(preferencelist=("plain",)).get_content()


def _assert_no_secret(mails: list[Received]) -> None:
    for mail in mails:
        raw = mail.raw.decode("utf-8", "replace")
        assert PASSWORD not in raw and SECRET not in raw, raw


# ---- tenants -------------------------------------------------------------------------------------

def test_a_tenant_that_fails_is_mailed_once_and_its_recovery_once(setup: CloudSetup, smtp: SmtpServer) -> None:
    contoso = setup.tenant("contoso")
    fabrikam = setup.tenant("fabrikam", consent=False)  # never consented: failing at first sight
    config = _write(setup, _own_server(smtp))

    _cycle(config)  # contoso is ok at first sight: nothing to say of it
    (first,) = _mails(smtp)
    assert _subject(first) == "[defender-forwarder] fabrikam: failing — consent missing"
    assert first.tls and first.authenticated_as == "forwarder" and first.sender == SENDER

    setup.cloud.tenants[contoso].consent = False  # the customer's admin removes the app
    _cycle(config)
    mails = _mails(smtp)
    assert len(mails) == 2
    revoked = mails[1]
    assert _subject(revoked) == "[defender-forwarder] contoso: failing — consent revoked"
    text = _text(revoked)
    assert f"contoso ({contoso})" in text and "Health: ok -> failing (consent revoked)" in text
    assert "AADSTS700016" in text and f"/{contoso}/adminconsent?client_id=" in text and "Remedy" in text
    assert "fabrikam" not in text  # an unchanged tenant is not mailed again

    _cycle(config)  # the same states: no mail
    assert len(_mails(smtp)) == 2

    setup.cloud.tenants[contoso].consent = True
    _cycle(config)
    mails = _mails(smtp)
    assert len(mails) == 3
    assert _subject(mails[2]) == "[defender-forwarder] contoso: recovered"
    assert "Health: failing -> ok" in _text(mails[2])
    _assert_no_secret(mails)
    assert fabrikam not in _text(mails[2])


def test_a_failing_source_of_a_tenant_is_named_in_the_mail(setup: CloudSetup, smtp: SmtpServer) -> None:
    acme = setup.tenant("acme")
    setup.tenant_keys["acme"] = {"sources": ["graph_alerts", "graph_incidents"]}
    config = _write(setup, _own_server(smtp))
    _cycle(config)  # both sources ok at first sight: nothing to say
    assert _mails(smtp) == []

    setup.cloud.tenants[acme].permissions = {"SecurityAlert.Read.All"}  # SecurityIncident.Read.All removed
    _cycle(config)
    (mail,) = _mails(smtp)
    assert _subject(mail) == "[defender-forwarder] acme (graph_incidents): failing — consent revoked"
    text = _text(mail)
    assert "Source graph_alerts: ok, last success 20" in text and "Source graph_incidents: failing" in text
    assert "graph_incidents: Graph refused access (403)" in text and "SecurityIncident.Read.All" in text
    _assert_no_secret([mail])


# ---- sinks ---------------------------------------------------------------------------------------

def test_a_stopped_sink_is_mailed_once_through_an_email_sinks_server(
        setup: CloudSetup, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1), seed=171))
    monkeypatch.setenv("DF_TEST_WRONG_PASSWORD", "not-the-password-42")
    mail_sink = {"type": "email", "host": "127.0.0.1", "port": smtp.port, "username": "forwarder",
                 "from": SENDER, "to": ["soc+{tenant}@mssp.example"], "ca_file": str(smtp.ca_file),
                 "retry_initial": "0.05s", "retry_max": "0.2s"}
    setup.sinks = {"alerts": mail_sink | {"password": "env:DF_TEST_WRONG_PASSWORD"},  # refused: the sink stops
                   "relay": mail_sink | {"password": "env:DF_TEST_SMTP_PASSWORD"}}  # [notify] sends through it
    setup.routes = [{"tenants": ["*"], "sinks": ["alerts"]}]
    config = _write(setup, {"to": [SOC], "sender": SENDER, "smtp_sink": "relay", "timeout": "2s"})

    _cycle(config)
    (stopped,) = _mails(smtp)
    assert _subject(stopped) == "[defender-forwarder] sink alerts: stopped"
    text = _text(stopped)
    assert "SMTP login refused" in text and "check username and password" in text
    assert "Events waiting in its outbox: 2" in text and "restart" in text
    assert "relay" not in text  # a sink running from the start is not mailed
    assert stopped.authenticated_as == "forwarder"  # the relay sink's login

    _cycle(config)  # stopped again in the next run: the same state, no mail
    assert len(_mails(smtp)) == 1

    monkeypatch.setenv("DF_TEST_WRONG_PASSWORD", PASSWORD)  # the operator fixes the password
    _cycle(config)
    mails = _mails(smtp)
    assert [_subject(m) for m in mails[1:]] == ["[defender-forwarder] sink alerts: running again"]
    assert len([m for m in smtp.messages() if m.recipients == ["soc+contoso@mssp.example"]]) == 2  # delivered
    _assert_no_secret(mails)


# ---- certificates --------------------------------------------------------------------------------

def test_a_certificate_expiring_within_certificate_days_is_mailed_once(setup: CloudSetup, smtp: SmtpServer) -> None:
    cert = make_client_cert()  # valid for 30 days
    pem = setup.tmp / "mssp.pem"
    pem.write_text(_text_of(cert.key_pem) + _text_of(cert.cert_pem))
    pem.chmod(0o600)
    setup.tenant("contoso", cert=cert.cert)

    def config(days: int) -> Path:
        path = _write(setup, _own_server(smtp, certificate_days=days))
        path.write_text(path.read_text().replace('client_secret = "env:DF_TEST_CLIENT_SECRET"',
                                                 f'certificate = "file:{pem}"'))
        return path

    _cycle(config(14))  # 30 days left: fine with the default of 14
    assert _mails(smtp) == []
    _cycle(config(45))
    (mail,) = _mails(smtp)
    expiry = cert.cert.not_valid_after_utc
    assert _subject(mail) == f"[defender-forwarder] app mssp: certificate expires in 29 days ({expiry:%Y-%m-%d})"
    text = _text(mail)
    assert "defender-forwarder app certificate" in text and "apps.mssp.certificate" in text
    assert "BEGIN" not in text  # neither the key nor the certificate itself
    _cycle(config(45))
    assert len(_mails(smtp)) == 1


def _text_of(pem: str | bytes) -> str:
    return pem.decode() if isinstance(pem, bytes) else pem


# ---- a mail server down or hanging -----------------------------------------------------------------

def test_a_mail_server_down_costs_no_cycle_and_the_mail_goes_once_it_is_back(
        setup: CloudSetup, smtp: SmtpServer, caplog: pytest.LogCaptureFixture) -> None:
    setup.tenant("contoso", consent=False)
    config = _write(setup, _own_server(smtp))
    smtp.stop()
    with caplog.at_level(logging.WARNING, "defender_forwarder.notify"):
        _cycle(config)  # completes: the failure is a log line
    warnings = [r.getMessage() for r in caplog.records if r.name == "defender_forwarder.notify"]
    assert len(warnings) == 1 and "did not take the message about contoso: failing" in warnings[0]
    assert PASSWORD not in warnings[0]
    assert "tenant:contoso" not in _notified(setup)  # not marked as sent
    smtp.start()
    _cycle(config)
    (mail,) = _mails(smtp)
    assert _subject(mail) == "[defender-forwarder] contoso: failing — consent missing"
    _cycle(config)
    assert len(_mails(smtp)) == 1


def test_the_daemon_polls_on_while_the_mail_server_hangs_and_mails_once_it_answers(
        setup: CloudSetup, smtp: SmtpServer) -> None:
    """A server that takes the connection and never greets: the daemon's cycles go on (the SMTP
    timeout is 3 s, the poll interval 0.2 s); once a real server answers there, the mail goes, once."""
    setup.tenant("contoso", consent=False)
    steady = setup.tenant("fabrikam")  # its Graph requests count the cycles
    setup.forwarder = {"poll_interval": "0.2s"}
    config = _write(setup, _own_server(smtp, timeout="3s"))
    port = smtp.port
    smtp.stop()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    silent.bind(("127.0.0.1", port))
    silent.listen(16)  # connections wait in the backlog: connected, never greeted
    process = daemon(config)

    def cycles() -> int:
        return setup.cloud.count("alerts", steady)

    try:
        until(lambda: cycles() >= 1, process)
        started = cycles()
        time.sleep(2.0)  # within one SMTP timeout
        assert cycles() - started >= 3  # cycles went on meanwhile (none would, were they waiting for it)
        silent.close()
        smtp.start()
        until(lambda: len(_mails(smtp)) >= 1, process)
        polled = cycles()
        until(lambda: cycles() >= polled + 5, process)  # more cycles, the same state
    finally:
        silent.close()
        process.terminate()
        output = process.communicate(timeout=20)[0]
    (mail,) = _mails(smtp)
    assert _subject(mail) == "[defender-forwarder] contoso: failing — consent missing"
    assert "did not take the message about contoso" in output, output
    assert PASSWORD not in output


def test_run_once_mails_from_the_command_line(setup: CloudSetup, smtp: SmtpServer) -> None:
    setup.tenant("contoso", consent=False)
    result = run_cli("run", "--once", "--config", str(_write(setup, _own_server(smtp))))
    assert result.returncode == 1, result.stderr  # the tenant fails; the notification does not change that
    (mail,) = _mails(smtp)
    assert _subject(mail) == "[defender-forwarder] contoso: failing — consent missing"
    assert "notify: mailed contoso: failing" in result.stderr


# ---- configuration ---------------------------------------------------------------------------------

def _problems(notify: dict[str, Any], sinks: dict[str, Any] | None = None) -> list[str]:
    data = {"tenants": {"t": {"tenant_id": "22222222-2222-4222-8222-222222222222", "replay": "examples/demo/contoso"}},
            "sinks": sinks or {"out": {"type": "stdout"}}, "notify": notify}
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


def test_configuration_slips_are_named_with_their_fix() -> None:
    base = {"to": [SOC], "sender": SENDER}
    (line,) = _problems(base | {"smtp_sink": "mail"})
    assert line == 'notify.smtp_sink = "mail": no email sink of that name; email sinks: none (or set host instead)'
    (line,) = _problems(base)
    assert line.startswith("notify: name the mail server: smtp_sink") and "host" in line
    (line,) = _problems(base | {"smtp_sink": "mail", "host": "smtp.example"},
                        {"mail": {"type": "email", "host": "smtp.example", "from": SENDER, "to": [SOC]}})
    assert line == "notify: smtp_sink uses that sink's server: remove host, or remove smtp_sink"
    (line,) = _problems(base | {"host": "smtp.example", "username": "fwd"})
    assert line == 'notify: username and password go together (password = "env:NAME")'
    (line,) = _problems(base | {"host": "smtp.example", "certificate_days": 0})
    assert line.startswith("notify.certificate_days: ")
    (line,) = _problems({"sender": SENDER, "host": "smtp.example"})
    assert line == "notify.to: missing; this key is required"
