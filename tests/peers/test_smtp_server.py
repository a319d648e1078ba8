"""The SMTP test server (tests/peers/smtp_server.py), driven by the stdlib smtplib client.

No mocking: every check sends real SMTP across a loopback socket to aiosmtpd. Expected reply
codes and texts are written out here, not taken from the server module, so a typo there fails.
"""
from __future__ import annotations

import smtplib
import ssl
from collections.abc import Iterator
from email.message import EmailMessage

import pytest
import trustme

from tests.peers.smtp_server import SmtpServer

USERS = {"alice": "s3cret-Pa55"}
SENDER = "alerts@forwarder.example"
TO = "soc@example.com"
OTHER = "oncall@example.com"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()  # one CA for the module: generating keys is the slow part


@pytest.fixture
def plain(ca: trustme.CA) -> Iterator[SmtpServer]:
    with SmtpServer(tls="none", ca=ca) as server:
        yield server


@pytest.fixture
def secure(ca: trustme.CA) -> Iterator[SmtpServer]:
    with SmtpServer(users=USERS, ca=ca) as server:  # STARTTLS required, AUTH required
        yield server


def message(subject: str = "Alert: impossible travel", to: list[str] | None = None) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = SENDER
    msg["To"] = ", ".join(to or [TO])
    msg["Subject"] = subject
    msg.set_content("Sign-in from two countries within 5 minutes.\n.leading dot line\n")
    return msg


def client(server: SmtpServer) -> smtplib.SMTP:
    return smtplib.SMTP(server.host, server.port, timeout=5)


def secure_client(server: SmtpServer) -> smtplib.SMTP:
    smtp = client(server)
    smtp.starttls(context=server.client_ssl_context())
    smtp.login("alice", USERS["alice"])
    return smtp


def test_plain_send(plain: SmtpServer) -> None:
    with client(plain) as smtp:
        smtp.ehlo()
        assert not smtp.has_extn("starttls") and not smtp.has_extn("auth")
        assert smtp.send_message(message()) == {}
    [got] = plain.wait_for(1)
    assert (got.sender, got.recipients) == (SENDER, [TO])
    assert got.message["Subject"] == "Alert: impossible travel"
    # Parsed from the wire's bytes: the body keeps CRLF line ends (stdlib email behaviour).
    assert got.message.get_content() == "Sign-in from two countries within 5 minutes.\r\n.leading dot line\r\n"
    assert b"\r\n.leading dot line\r\n" in got.raw  # dot-unstuffed, CRLF as on the wire
    assert (got.tls, got.tls_version, got.authenticated_as) == (False, None, None)
    assert [(r.command, r.address, r.code) for r in plain.transactions] == [
        ("MAIL", SENDER, 250), ("RCPT", TO, 250), ("DATA", None, 250)]


def test_null_sender_and_smtputf8(plain: SmtpServer) -> None:
    with client(plain) as smtp:
        smtp.sendmail("", ["ünï@exämple.com"], b"Subject: bounce\r\n\r\nhi\r\n", mail_options=["SMTPUTF8"])
    [got] = plain.wait_for(1)
    assert (got.sender, got.recipients, got.message["Subject"]) == ("", ["ünï@exämple.com"], "bounce")
    assert "SMTPUTF8" in got.mail_options
    assert plain.transactions[0].address == ""


def test_starttls_login_send_with_the_ca_verified(secure: SmtpServer) -> None:
    with client(secure) as smtp:
        smtp.ehlo()
        assert smtp.has_extn("starttls") and not smtp.has_extn("auth")  # AUTH only after TLS
        smtp.starttls(context=secure.client_ssl_context())  # verifies chain and 127.0.0.1
        smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_features["auth"] and "LOGIN" in smtp.esmtp_features["auth"]
        smtp.login("alice", USERS["alice"])
        smtp.send_message(message())
    [got] = secure.wait_for(1)
    assert got.tls and got.tls_version is not None and got.tls_version.startswith("TLSv1.")
    assert got.authenticated_as == "alice"


def test_starttls_with_an_untrusted_ca_fails(secure: SmtpServer) -> None:
    context = ssl.create_default_context(cafile=None)
    trustme.CA().configure_trust(context)  # some other CA
    with client(secure) as smtp, pytest.raises(ssl.SSLCertVerificationError):
        smtp.starttls(context=context)


def test_sending_without_starttls_gets_530(secure: SmtpServer) -> None:
    with client(secure) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.send_message(message())
    assert refused.value.smtp_code == 530
    assert refused.value.smtp_error == b"Must issue a STARTTLS command first"
    assert secure.messages() == []


def test_mail_without_auth_gets_530(secure: SmtpServer) -> None:
    with client(secure) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.starttls(context=secure.client_ssl_context())
        smtp.send_message(message())
    assert (refused.value.smtp_code, refused.value.smtp_error) == (530, b"5.7.0 Authentication required")
    assert [(r.command, r.code, r.tls) for r in secure.refused] == [("MAIL", 530, True)]


def test_bad_password_gets_535(secure: SmtpServer) -> None:
    with client(secure) as smtp:
        smtp.starttls(context=secure.client_ssl_context())
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            smtp.login("alice", "wrong")
        assert failed.value.smtp_code == 535
        assert failed.value.smtp_error == b"5.7.8 Authentication credentials invalid"
        with pytest.raises(smtplib.SMTPAuthenticationError):
            smtp.login("mallory", USERS["alice"])
        smtp.login("alice", USERS["alice"])  # the session is still usable
        smtp.send_message(message())
    assert secure.wait_for(1)[0].authenticated_as == "alice"


def test_implicit_tls(ca: trustme.CA) -> None:
    with SmtpServer(tls="implicit", users=USERS, ca=ca) as server:
        with smtplib.SMTP_SSL(server.host, server.port, context=server.client_ssl_context(), timeout=5) as smtp:
            smtp.ehlo()
            assert not smtp.has_extn("starttls")
            smtp.login("alice", USERS["alice"])
            smtp.send_message(message())
        [got] = server.wait_for(1)
        assert got.tls and got.authenticated_as == "alice"
        with pytest.raises(smtplib.SMTPServerDisconnected, match="timed out"):  # no greeting in plain text
            smtplib.SMTP(server.host, server.port, timeout=0.3)


def test_reject_recipient_550(plain: SmtpServer) -> None:
    plain.reject_recipient(TO)
    with client(plain) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.send_message(message())
    assert refused.value.recipients == {
        TO: (550, f"5.1.1 <{TO}>: Recipient address rejected: User unknown".encode())}
    assert plain.messages() == []
    assert [(r.command, r.address, r.code, r.text) for r in plain.refused] == [
        ("RCPT", TO, 550, f"5.1.1 <{TO}>: Recipient address rejected: User unknown")]


def test_one_of_two_recipients_refused(plain: SmtpServer) -> None:
    plain.reject_recipient(OTHER.upper(), 550, "5.1.1 Mailbox unavailable")  # case-insensitive
    with client(plain) as smtp:
        refused = smtp.send_message(message(to=[TO, OTHER]))
    assert refused == {OTHER: (550, b"5.1.1 Mailbox unavailable")}
    [got] = plain.wait_for(1)
    assert got.recipients == [TO]
    assert got.message["To"] == f"{TO}, {OTHER}"


def test_4xx_recipient_refusal_clears_after_one_attempt(plain: SmtpServer) -> None:
    plain.reject_recipient(TO, 451, "4.7.1 Try again later", times=1)
    with client(plain) as smtp:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            smtp.send_message(message())
        assert refused.value.recipients == {TO: (451, b"4.7.1 Try again later")}
        assert smtp.send_message(message()) == {}  # same connection, after smtplib's RSET
    assert len(plain.wait_for(1)) == 1
    assert [(r.command, r.code) for r in plain.transactions if r.command == "RCPT"] == [("RCPT", 451), ("RCPT", 250)]


def test_reject_data_554(plain: SmtpServer) -> None:
    plain.reject_data(lambda msg: "[REJECT-ME]" in str(msg["Subject"]))
    with client(plain) as smtp:
        with pytest.raises(smtplib.SMTPDataError) as refused:
            smtp.send_message(message("Alert [REJECT-ME]"))
        assert (refused.value.smtp_code, refused.value.smtp_error) == (554, b"5.7.1 Message content rejected")
        smtp.send_message(message("Alert: fine"))
    assert [got.message["Subject"] for got in plain.wait_for(1)] == ["Alert: fine"]
    assert [(r.command, r.code) for r in plain.refused] == [("DATA", 554)]


def test_temporary_failure_421_then_ok(secure: SmtpServer) -> None:
    secure.temporary_failure(1)
    with secure_client(secure) as smtp, pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.send_message(message())
    assert isinstance(refused.value, smtplib.SMTPResponseException)
    assert (refused.value.smtp_code, refused.value.smtp_error) == (
        421, b"4.3.2 Service not available, closing transmission channel")
    with secure_client(secure) as smtp:
        assert smtp.send_message(message()) == {}
    assert len(secure.wait_for(1)) == 1
    assert [(r.session, r.command, r.code) for r in secure.transactions if r.command == "MAIL"] == [
        (1, "MAIL", 421), (2, "MAIL", 250)]


def test_421_closes_the_connection(plain: SmtpServer) -> None:
    plain.temporary_failure(1)
    smtp = client(plain)
    smtp.ehlo()
    assert smtp.mail(SENDER)[0] == 421
    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.noop()
    smtp.close()


def test_restart_keeps_port_and_messages(plain: SmtpServer) -> None:
    plain.reject_recipient(OTHER)
    with client(plain) as smtp:
        smtp.send_message(message("before"))
    port = plain.port
    plain.restart()
    assert plain.port == port and plain.running
    with client(plain) as smtp:
        assert smtp.send_message(message("after", to=[TO, OTHER])) == {
            OTHER: (550, f"5.1.1 <{OTHER}>: Recipient address rejected: User unknown".encode())}
    assert [got.message["Subject"] for got in plain.wait_for(2)] == ["before", "after"]


def test_stopped_server_refuses_connections(plain: SmtpServer) -> None:
    connected = client(plain)
    connected.ehlo()
    plain.stop()
    assert not plain.running
    with pytest.raises(smtplib.SMTPServerDisconnected):  # an open session is dropped too
        connected.noop()
    connected.close()
    with pytest.raises(ConnectionRefusedError):
        smtplib.SMTP(plain.host, plain.port, timeout=2)
    plain.start()
    with client(plain) as smtp:
        smtp.send_message(message())
    assert len(plain.wait_for(1)) == 1


def test_wait_for_times_out_with_the_last_replies(plain: SmtpServer) -> None:
    plain.reject_recipient(TO)
    with client(plain) as smtp, pytest.raises(smtplib.SMTPRecipientsRefused):
        smtp.send_message(message())
    with pytest.raises(AssertionError, match="550"):
        plain.wait_for(1, timeout=0.2)
