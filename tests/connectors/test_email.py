"""The e-mail sink against a real SMTP server (aiosmtpd, STARTTLS and AUTH, tests/peers/smtp_server.py):
messages parsed with the `email` package, header injection, HTML escaping, each and digest,
on_update, the per-recipient rate limit, a server down then back, refused recipients, and
the standard battery."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from connectors.base import Outcome
from connectors.email import EmailConnector, EmailSinkConfig
from core.model.schema import TenantRef
from core.state.sqlite import SQLiteStore
from tests.connectors.battery import ConnectorBattery
from tests.connectors.kinds import INCIDENT_URL, kind_events
from tests.helpers import CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.mutual_tls import client_certificate
from tests.peers.smtp_server import SmtpServer

PASSWORD = "SECRET-smtp-password-1b9e"  # recognisable, for the secret scan
SOC = "soc+{tenant}@mssp.example"


@pytest.fixture
def smtp(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpServer]:
    monkeypatch.setenv("DF_TEST_SMTP_PASSWORD", PASSWORD)
    with SmtpServer(tls="starttls", users={"forwarder": PASSWORD}) as server:
        yield server


def _sink(smtp: SmtpServer, **keys: Any) -> dict[str, Any]:
    return {"type": "email", "host": "127.0.0.1", "port": smtp.port, "security": "starttls",
            "username": "forwarder", "password": "env:DF_TEST_SMTP_PASSWORD", "from": "defender@mssp.example",
            "to": [SOC], "ca_file": str(smtp.ca_file), "retry_initial": "0.05s", "retry_max": "0.2s"} | keys


def _alerts(setup: CloudSetup, label: str, count: int, seed: int) -> list[dict[str, Any]]:
    tenant_id = setup.tenant(label)
    alerts = make_alerts(count, tenant_id, recent(120), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return alerts


def _run(setup: CloudSetup, *args: str) -> Any:
    return run_cli(*(args or ("run", "--once")), "--config", str(setup.write()))


def _parts(message: Any) -> tuple[str, str]:
    return (message.get_body(preferencelist=("plain",)).get_content(),
            message.get_body(preferencelist=("html",)).get_content())


def _pending(setup: CloudSetup, sink: str = "mail") -> int:
    store = SQLiteStore(setup.state)
    try:
        return store.outbox_depth(sink)
    finally:
        store.close()


# ---- messages -------------------------------------------------------------------------------

def test_one_message_per_new_alert_to_each_customers_team(setup: CloudSetup, smtp: SmtpServer) -> None:
    sent = {"contoso": _alerts(setup, "contoso", 2, 91), "fabrikam": _alerts(setup, "fabrikam", 1, 92)}
    setup.sinks = {"mail": _sink(smtp)}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    received = smtp.wait_for(3)
    assert all(r.tls and r.authenticated_as == "forwarder" for r in received)
    for label, alerts in sent.items():
        mine = [r for r in received if r.recipients == [f"soc+{label}@mssp.example"]]
        assert len(mine) == len(alerts)
        by_id = {r.message["X-Defender-Alert-Ids"]: r.message for r in mine}
        for alert in alerts:
            message = by_id[alert["id"]]
            # (compared with whitespace normalised: a folded header comes back with its fold's space)
            assert " ".join(message["Subject"].split()) == f"[{label}] {alert['severity'].capitalize()}: {alert['title']}"
            assert message["From"] == "Defender forwarder <defender@mssp.example>"
            text, page = _parts(message)
            for expected in (label, setup.tenants[label], alert["status"], alert["alertWebUrl"],
                             alert["incidentWebUrl"], *alert["mitreTechniques"]):
                assert expected in text
            assert f'<a href="{alert["alertWebUrl"]}">' in page.replace("&amp;", "&")
            devices = [e["deviceDnsName"] for e in alert["evidence"] if e.get("deviceDnsName")]
            assert all(device in text for device in devices)


def test_no_header_injection_and_no_html_from_the_alert(setup: CloudSetup, smtp: SmtpServer) -> None:
    tenant_id = setup.tenant("contoso")
    alert = make_alerts(1, tenant_id, recent(60), timedelta(minutes=1), seed=93)[0]
    alert["title"] = "Urgent\r\nBcc: attacker@evil.example\r\nX-Injected: yes\r\n\r\n<b>body</b>"
    alert["description"] = "<script>alert(1)</script> & <img src=x onerror=steal()>"
    setup.cloud.add_alerts(tenant_id, [alert])
    setup.sinks = {"mail": _sink(smtp)}
    assert _run(setup).returncode == 0
    (received,) = smtp.wait_for(1)
    message = received.message
    assert received.recipients == ["soc+contoso@mssp.example"]  # no Bcc reached the envelope
    assert message["Bcc"] is None and message["X-Injected"] is None
    assert "\n" not in message["Subject"] and "Bcc: attacker@evil.example" in message["Subject"]
    _, page = _parts(message)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img" not in page and "<b>body</b>" not in page


# ---- noise control ------------------------------------------------------------------------------

def test_an_update_mails_again_only_when_its_severity_rises(setup: CloudSetup, smtp: SmtpServer) -> None:
    tenant_id = setup.tenant("contoso")
    alert = make_alerts(1, tenant_id, recent(60), timedelta(minutes=1), seed=94)[0]
    alert["severity"] = "low"
    setup.cloud.add_alerts(tenant_id, [alert])
    setup.sinks = {"mail": _sink(smtp)}
    assert _run(setup).returncode == 0
    assert len(smtp.wait_for(1)) == 1
    setup.cloud.add_alerts(tenant_id, [updated_version(alert, recent(30), status="inProgress")])
    result = _run(setup)
    assert result.returncode == 0 and "1 not_mailed_again" in result.stderr
    time.sleep(0.3)
    assert len(smtp.messages()) == 1
    setup.cloud.add_alerts(tenant_id, [updated_version(alert, recent(20), severity="high")])
    assert _run(setup).returncode == 0
    received = smtp.wait_for(2)
    assert received[1].message["Subject"].strip().startswith("[contoso] High: ")


def test_digest_one_message_per_customer_per_interval(setup: CloudSetup, smtp: SmtpServer) -> None:
    first = {"contoso": _alerts(setup, "contoso", 3, 95), "fabrikam": _alerts(setup, "fabrikam", 2, 96)}
    setup.sinks = {"mail": _sink(smtp, mode="digest", digest_interval="3s")}
    assert _run(setup).returncode == 0
    received = smtp.wait_for(2)
    subjects = sorted(" ".join(r.message["Subject"].split()) for r in received)
    assert subjects[0].startswith("[contoso] 3 Defender alerts (") and subjects[1].startswith("[fabrikam] 2 Defender")
    contoso = next(r.message for r in received if r.recipients == ["soc+contoso@mssp.example"])
    assert set(contoso["X-Defender-Alert-Ids"].split()) == {a["id"] for a in first["contoso"]}

    later = make_alerts(2, setup.tenants["contoso"], recent(5), timedelta(seconds=30), seed=97)
    setup.cloud.add_alerts(setup.tenants["contoso"], later)
    started = time.monotonic()
    assert _run(setup).returncode == 0  # waits for the digest to fall due (before once_deadline)
    assert time.monotonic() - started >= 1.5
    third = smtp.wait_for(3)[2].message
    assert set(third["X-Defender-Alert-Ids"].split()) == {a["id"] for a in later}


def test_a_digest_not_due_waits_in_the_outbox_for_the_next_run(setup: CloudSetup, smtp: SmtpServer) -> None:
    _alerts(setup, "contoso", 1, 98)
    setup.sinks = {"mail": _sink(smtp, mode="digest", digest_interval="1h")}
    assert _run(setup).returncode == 0
    setup.cloud.add_alerts(setup.tenants["contoso"], make_alerts(2, setup.tenants["contoso"], recent(5),
                                                                   timedelta(seconds=30), seed=99))
    result = _run(setup)
    assert result.returncode == 0 and "wait for their digest or rate limit" in result.stderr
    assert _pending(setup) == 2 and len(smtp.messages()) == 1


def test_the_rate_limit_holds_back_and_never_drops(setup: CloudSetup, smtp: SmtpServer) -> None:
    _alerts(setup, "contoso", 5, 100)
    setup.sinks = {"mail": _sink(smtp, max_per_recipient=2)}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    time.sleep(0.3)
    assert len(smtp.messages()) == 2 and _pending(setup) == 3
    assert _run(setup).returncode == 0  # a later run remembers the hour's two messages
    time.sleep(0.3)
    assert len(smtp.messages()) == 2 and _pending(setup) == 3


# ---- delivery -------------------------------------------------------------------------------------

def test_a_server_down_then_back_loses_nothing(setup: CloudSetup, smtp: SmtpServer) -> None:
    alerts = _alerts(setup, "contoso", 3, 101)
    setup.forwarder["once_deadline"] = "1s"
    setup.sinks = {"mail": _sink(smtp)}
    smtp.stop()
    assert _run(setup).returncode == 1
    assert _pending(setup) == 3
    smtp.start()
    assert _run(setup).returncode == 0
    received = smtp.wait_for(3)
    assert sorted(r.message["X-Defender-Alert-Ids"] for r in received) == sorted(a["id"] for a in alerts)


def test_a_refused_recipient_is_a_dead_letter_with_the_servers_reply(setup: CloudSetup, smtp: SmtpServer) -> None:
    _alerts(setup, "contoso", 1, 102)
    smtp.reject_recipient("gone@mssp.example", 550, "5.1.1 <gone@mssp.example>: Recipient address rejected")
    setup.sinks = {"mail": _sink(smtp, to=[SOC, "gone@mssp.example"])}
    assert _run(setup).returncode == 0
    (received,) = smtp.wait_for(1)
    assert received.recipients == ["soc+contoso@mssp.example"]  # the others still got it
    store = SQLiteStore(setup.state)
    (letter,) = store.dead_letters()
    store.close()
    assert "gone@mssp.example: SMTP 550 5.1.1" in letter.reason and "Recipient address rejected" in letter.reason


def test_a_4xx_recipient_is_retried_without_mailing_the_others_twice(setup: CloudSetup, smtp: SmtpServer) -> None:
    _alerts(setup, "contoso", 1, 103)
    smtp.reject_recipient("busy@mssp.example", 451, "4.7.1 Greylisted, try again", times=1)
    setup.sinks = {"mail": _sink(smtp, to=[SOC, "busy@mssp.example"])}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    received = smtp.wait_for(2)
    assert sorted(tuple(r.recipients) for r in received) == [("busy@mssp.example",), ("soc+contoso@mssp.example",)]


def test_a_refused_login_stops_the_sink(setup: CloudSetup, smtp: SmtpServer, monkeypatch: pytest.MonkeyPatch) -> None:
    _alerts(setup, "contoso", 1, 104)
    monkeypatch.setenv("DF_TEST_BAD_PASSWORD", "wrong")
    setup.sinks = {"mail": _sink(smtp, password="env:DF_TEST_BAD_PASSWORD")}
    result = _run(setup)
    assert result.returncode == 1 and "SMTP login refused (535" in result.stderr
    assert _pending(setup) == 1
    check = _run(setup, "check")
    assert check.returncode == 1 and "535" in check.stderr


# ---- the standard battery ---------------------------------------------------------------------------

class TestEmailBattery(ConnectorBattery):
    """What the server received, compared by alert id: a message is not the alert's bytes."""

    @pytest.fixture
    def peer(self, smtp: SmtpServer) -> SmtpServer:
        return smtp

    def sink(self, peer: SmtpServer, tmp: Path) -> dict[str, Any]:
        return _sink(peer, on_update=True)

    def received(self, peer: SmtpServer) -> list[bytes]:
        return [r.message["X-Defender-Alert-Ids"].encode() for r in peer.messages()]

    def comparable(self, body: bytes) -> bytes:
        return orjson.loads(body)["id"].encode() if body.startswith(b"{") else body

    def restart(self, peer: SmtpServer, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def poison(self, peer: SmtpServer, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        alert["title"] = "POISON " + alert["title"]
        peer.reject_data(lambda message: "POISON" in str(message["Subject"]), 554, "5.7.1 Message rejected as spam")
        return "SMTP 554 5.7.1 Message rejected as spam"

    def secrets(self, peer: SmtpServer, tmp: Path) -> list[str]:
        return [PASSWORD]


# ---- TLS keys ---------------------------------------------------------------------------------------

CLIENT_KEY_PASSWORD = "SECRET-smtp-client-key-8e4b"


def test_a_client_certificate_for_mutual_tls(setup: CloudSetup, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    client_ca = trustme.CA()
    files = client_certificate(client_ca, tmp_path, CLIENT_KEY_PASSWORD)
    monkeypatch.setenv("DF_TEST_SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("DF_TEST_CLIENT_KEY_PASSWORD", CLIENT_KEY_PASSWORD)
    with SmtpServer(tls="starttls", users={"forwarder": PASSWORD}, client_ca=client_ca) as strict:
        _alerts(setup, "contoso", 1, 105)
        setup.forwarder["once_deadline"] = "1s"
        setup.sinks = {"mail": _sink(strict)}
        assert _run(setup).returncode == 1 and _pending(setup) == 1
        setup.sinks = {"mail": _sink(strict, client_cert=str(files.cert), client_key=str(files.key),
                                     client_key_password="env:DF_TEST_CLIENT_KEY_PASSWORD")}
        result = _run(setup)
        assert result.returncode == 0, result.stderr
        (received,) = strict.wait_for(1)
        assert received.tls and received.recipients == ["soc+contoso@mssp.example"]


def test_tls_keys_smtplib_cannot_honour_are_refused(setup: CloudSetup, smtp: SmtpServer) -> None:
    setup.tenant("contoso")
    setup.sinks = {"mail": _sink(smtp, tls_server_name="mail.example")}
    result = _run(setup)
    assert result.returncode == 2 and "sinks.mail.tls_server_name: not supported by the email sink" in result.stderr
    setup.sinks = {"mail": _sink(smtp, security="none", client_cert="/etc/c.pem")}
    result = _run(setup)
    assert result.returncode == 2 and 'client_cert needs security = "starttls" or "tls"' in result.stderr


# ---- incidents ----------------------------------------------------------------------------------

class _Memory(dict):
    """The sink's notes, in memory (the state store keeps them in a run)."""

    def put(self, items: dict[str, str]) -> None:
        self.update(items)


def _send_kinds(smtp: SmtpServer, **keys: Any) -> list[Any]:
    connector = EmailConnector("mail", EmailSinkConfig.model_validate(_sink(smtp, **keys)))
    connector.memory = _Memory()
    return asyncio.run(connector.send(kind_events(TenantRef(id="t-1", label="acme"))))


def test_an_incident_is_mailed_with_its_own_template(smtp: SmtpServer) -> None:
    assert [r.outcome for r in _send_kinds(smtp)] == [Outcome.OK, Outcome.OK]
    by_subject = {r.message["Subject"]: r.message for r in smtp.wait_for(2)}
    alert = by_subject["[acme] High: Suspicious PowerShell command line"]
    incident = by_subject["[acme] Medium incident 2972395: Multi-stage incident involving Execution & Initial access"]
    assert alert["X-Defender-Alert-Ids"] == "da637551227677560813_-961444813"
    assert incident["X-Defender-Incident-Ids"] == "2972395" and incident["X-Defender-Alert-Ids"] is None
    text, page = _parts(incident)
    for fact in ("Incident 2972395: Multi-stage", "Status:", "active", "Assigned to:", "soc@mssp.example",
                 "Alerts (2):", "da637551227677560813_-961444813, fa9e6a1e2c-5d4b-4a3b", INCIDENT_URL):
        assert fact in text, fact
    assert f'<a href="{INCIDENT_URL}">' in page.replace("&amp;", "&") and "Execution &amp; Initial access" in page
    assert PASSWORD not in incident.as_string() and "Service source" not in text


def test_a_digest_names_alerts_and_incidents_apart(smtp: SmtpServer) -> None:
    assert {r.outcome for r in _send_kinds(smtp, mode="digest")} == {Outcome.OK}
    (received,) = smtp.wait_for(1)
    assert received.message["Subject"] == "[acme] 1 Defender alert and 1 Defender incident (1 high, 1 medium)"
    text, _ = _parts(received.message)
    assert "Suspicious PowerShell" in text and "Incident 2972395" in text
