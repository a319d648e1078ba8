"""The real-syslog-ng receiver (tests/peers/syslog_ng.py), driven by a hand-written stdlib sender.

This is about the receiver, not the forwarder: every frame below is built here, byte by byte.
"""
from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import syslog_ng
from tests.peers.syslog_ng import LISTENERS, SyslogNg, require_syslog_ng

# What CEF and RFC 5424 escape (\| \= \\ and \" \] in SD values), a quote, a TAB and non-ASCII:
# syslog-ng must hand all of it back untouched.
TRICKY = ('CEF:0|Microsoft|Microsoft Defender XDR|1.0|Suspicious|Suspicious \\| encoded PowerShell|8|'
          'cs2=powershell.exe -enc SQBFAFgA\\=\\= -File "C:\\\\Temp\\\\a b.ps1"\tsuser=CONTOSO\\\\alice '
          'cs3=Café — ünïcode ✓')


def rfc5424(test_id: str, body: str = TRICKY) -> bytes:
    sd = f'[defender@32473 testId="{test_id}" tenant="ten\\"a\\]nt\\\\x"]'
    return f"<164>1 2024-05-01T12:34:56.789Z wks-01 defender-fwd 4242 ALERT {sd} {body}".encode()


def rfc3164(body: str = TRICKY) -> bytes:
    return f"<13>May  1 12:34:56 wks-02 legacy-app[77]: {body}".encode()


def frame(listener: str, message: bytes) -> bytes:
    if listener.endswith("_lf"):
        return message + b"\n"
    return str(len(message)).encode() + b" " + message  # RFC 6587 octet-counting


def client_context(ca_file: Path, cert: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca_file))
    if cert:
        context.load_cert_chain(*cert)
    return context


def send(peer: SyslogNg, listener: str, messages: list[bytes], context: ssl.SSLContext | None = None) -> None:
    """Each message in its own datagram (udp), or all framed on one connection."""
    if listener == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for message in messages:
                udp.sendto(message, peer.address("udp"))
        return
    data = b"".join(frame(listener, message) for message in messages)
    with socket.create_connection(peer.address(listener), timeout=5) as sock:
        if not listener.startswith("tls"):
            sock.sendall(data)
            return
        context = context or client_context(peer.certs.ca_file)
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(data)
            tls.unwrap()  # close_notify, or syslog-ng logs "unexpected eof while reading"


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[SyslogNg]:
    require_syslog_ng()
    with SyslogNg(tmp_path / "syslog-ng") as server:
        yield server


@pytest.mark.parametrize("listener", LISTENERS)
def test_each_listener_delivers_both_formats_byte_for_byte(peer: SyslogNg, listener: str) -> None:
    modern, legacy = rfc5424(f"{listener}-1"), rfc3164()
    sent = time.time()
    send(peer, listener, [modern, legacy])

    got = {record["PROGRAM"]: record for record in peer.wait_for(2, listener)}
    received = [float(record.pop("RECEIVED")) for record in got.values()]
    assert all(sent - 0.01 <= moment <= time.time() for moment in received), (sent, received)
    assert sorted(peer.raw_messages(listener)) == sorted([modern, legacy])
    assert got["defender-fwd"] == {
        "listener": listener, "RAWMSG": modern.decode(), "MSG": TRICKY, "PROGRAM": "defender-fwd",
        "PID": "4242", "MSGID": "ALERT", "HOST": "wks-01", "PRI": 164, "FACILITY": "local4",
        "SEVERITY": "warning", "ISODATE": "2024-05-01T12:34:56.789000+00:00",
        "SDATA": {"defender@32473": {"testId": f"{listener}-1", "tenant": 'ten"a]nt\\x'}},
    }
    assert got["legacy-app"] | {"ISODATE": None} == {
        "listener": listener, "RAWMSG": legacy.decode(), "MSG": TRICKY, "PROGRAM": "legacy-app",
        "PID": "77", "MSGID": "", "HOST": "wks-02", "PRI": 13, "FACILITY": "user",
        "SEVERITY": "notice", "ISODATE": None,  # RFC 3164 has no year: syslog-ng guesses one
    }


@pytest.mark.parametrize("listener", ["tls", "tls_lf"])
def test_a_60_kb_message_over_tls_arrives_whole(peer: SyslogNg, listener: str) -> None:
    head = rfc5424(f"{listener}-big", body="")
    wide = "é" * ((60_000 - len(head)) // 2)  # two bytes each; an odd byte left over is ASCII
    big = head + (wide + "x" * (60_000 - len(head) - 2 * len(wide))).encode()

    send(peer, listener, [big])

    peer.wait_for(1, listener)
    assert len(big) == 60_000
    assert peer.raw_messages(listener) == [big]


def test_the_octet_counting_listener_refuses_lf_framing(peer: SyslogNg) -> None:
    with socket.create_connection(peer.address("tcp"), timeout=5) as sock:
        sock.sendall(frame("tcp_lf", rfc5424("lf-on-octet-port")))

    with pytest.raises(AssertionError, match="Invalid frame header"):
        peer.wait_for(1, "tcp", timeout=0.5)
    assert "Invalid frame header" in peer.errors()

    good = rfc5424("octet-after-lf")
    send(peer, "tcp", [good])
    peer.wait_for(1, "tcp")
    assert peer.raw_messages() == [good]


def test_restart_keeps_the_ports_and_receives_again(peer: SyslogNg) -> None:
    ports = dict(peer.ports)
    before, after = rfc5424("before-restart"), rfc5424("after-restart")
    send(peer, "tcp", [before])
    peer.wait_for(1, "tcp")

    peer.restart()

    assert peer.ports == ports
    send(peer, "tcp", [after])
    send(peer, "tls", [after])
    peer.wait_for(3)
    assert peer.raw_messages("tcp") == [before, after]
    assert peer.raw_messages("tls") == [after]


@pytest.mark.parametrize("listener", ["tls", "tls_lf"])
def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, listener: str) -> None:
    require_syslog_ng()
    with SyslogNg(tmp_path / "syslog-ng", require_client_cert=True) as peer:
        certs = peer.certs
        anonymous, signed = rfc5424("no-client-cert"), rfc5424("with-client-cert")

        # TLS 1.3 finishes the client's side of the handshake before the server checks the
        # client, so the refusal shows on the client's next read (the "certificate required"
        # alert) or, when syslog-ng has hung up by then, on its write (SSLEOFError).
        with (pytest.raises(ssl.SSLError),
              socket.create_connection(peer.address(listener), timeout=5) as sock,
              client_context(certs.ca_file).wrap_socket(sock, server_hostname="localhost") as tls):
            tls.sendall(frame(listener, anonymous))
            tls.recv(1)
        send(peer, listener, [signed], client_context(certs.ca_file, (certs.client_cert, certs.client_key)))

        peer.wait_for(1, listener)
        assert peer.raw_messages() == [signed]
        assert "peer did not return a certificate" in peer.errors()


def test_a_client_trusting_another_ca_rejects_the_server(peer: SyslogNg) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        send(peer, "tls", [rfc5424("untrusted")], client_context(peer.certs.untrusted_ca_file))


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1"])
def test_the_server_certificate_holds_both_loopback_names(peer: SyslogNg, name: str) -> None:
    context = client_context(peer.certs.ca_file)
    with (socket.create_connection(peer.address("tls"), timeout=5) as sock,
          context.wrap_socket(sock, server_hostname=name) as tls):
        tls.unwrap()


def test_stats_count_per_listener_and_show_drops(peer: SyslogNg) -> None:
    send(peer, "tcp_lf", [rfc5424("one"), rfc5424("two")])
    peer.wait_for(2, "tcp_lf")

    stats = peer.stats().splitlines()
    assert "source;tcp_lf;;a;processed;2" in stats
    assert f"dst.file;d_json#0;{peer.output};a;dropped;0" in stats


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_a_missing_syslog_ng_fails_under_ci_and_skips_elsewhere(
        monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]) -> None:
    monkeypatch.setattr(syslog_ng, "SYSLOG_NG", None)
    monkeypatch.setenv("CI", ci)

    with pytest.raises(outcome, match="apt-get install syslog-ng-core"):
        require_syslog_ng()
