"""connectors/tls.py, the TLS part every network connector shares: the settings model (keys,
refusals, the one warning), the SSL context it builds (tried in real handshakes with a
loopback TLS server), and recognising a certificate that fails verification."""
from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from connectors.tls import TLS_KEYS, TlsFileError, TlsSettings, certificate_refused, ssl_context
from core.app.config import ConfigError, parse_config
from tests.peers.mutual_tls import ClientCertificate, client_certificate, require_client_certificate

KEY_PASSWORD = "SECRET-client-key-pass-7a3d"


class Settings(TlsSettings):
    """The TLS keys as a network sink's model mixes them in."""

    type: str = "test"


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(server_ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    server_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture
def client(tmp_path: Path) -> tuple[trustme.CA, ClientCertificate]:
    ca = trustme.CA()
    return ca, client_certificate(ca, tmp_path, KEY_PASSWORD)


@pytest.fixture
def password(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("DF_TEST_TLS_KEY_PASSWORD", KEY_PASSWORD)
    yield "env:DF_TEST_TLS_KEY_PASSWORD"


def _handshake(context: ssl.SSLContext, server_ca: trustme.CA, server_name: str = "localhost",
               client_ca: trustme.CA | None = None) -> tuple[bytes, dict[str, Any] | None]:
    """A real handshake with a loopback TLS server whose certificate `server_ca` signed for
    localhost, which greets every client it accepts: (the greeting the client read, b"" when
    the server hung up; the client certificate the server saw, None when none was presented)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ca.issue_cert("localhost", "127.0.0.1").configure_cert(server)
    require_client_certificate(server, client_ca)
    seen: list[dict[str, Any] | None] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(writer.get_extra_info("peercert") or None)
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    async def connect() -> bytes:
        listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server)
        port = listener.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context,
                                                           server_hostname=server_name)
            try:
                return await reader.read()  # under TLS 1.3 a refused client learns it only here
            except (ssl.SSLError, ConnectionError):
                return b""
            finally:
                writer.close()
        finally:
            listener.close()

    greeting = asyncio.run(connect())
    return greeting, (seen[0] if seen else None)


# ---- the context ---------------------------------------------------------------------------------

def test_the_system_store_does_not_know_a_private_ca(server_ca: trustme.CA) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        _handshake(ssl_context(Settings()), server_ca)
    assert certificate_refused(refused.value) == "unable to get local issuer certificate"


def test_ca_file_is_trusted_and_the_name_is_checked(server_ca: trustme.CA, ca_file: str) -> None:
    context = ssl_context(Settings(ca_file=ca_file))
    assert _handshake(context, server_ca) == (b"hello", None)  # verified; no client certificate asked for
    with pytest.raises(ssl.SSLCertVerificationError) as refused:
        _handshake(context, server_ca, server_name="siem.example")
    assert "Hostname mismatch" in (certificate_refused(refused.value) or "")


def test_tls_verify_false_checks_neither_certificate_nor_name(server_ca: trustme.CA) -> None:
    assert _handshake(ssl_context(Settings(tls_verify=False)), server_ca, server_name="siem.example")[0] == b"hello"


def test_a_client_certificate_with_an_encrypted_key(server_ca: trustme.CA, ca_file: str, password: str,
                                                    client: tuple[trustme.CA, ClientCertificate]) -> None:
    client_ca, files = client
    settings = Settings(ca_file=ca_file, client_cert=str(files.cert), client_key=str(files.key),
                        client_key_password=password)
    greeting, seen = _handshake(ssl_context(settings), server_ca, client_ca=client_ca)
    assert greeting == b"hello" and seen is not None
    assert ("DNS", "forwarder.client.example") in seen["subjectAltName"]
    # Without it, the server hangs up before serving.
    assert _handshake(ssl_context(Settings(ca_file=ca_file)), server_ca, client_ca=client_ca) == (b"", None)


def test_files_that_cannot_be_used_name_their_key(tmp_path: Path, ca_file: str,
                                                  client: tuple[trustme.CA, ClientCertificate],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, files = client
    with pytest.raises(TlsFileError) as missing:
        ssl_context(Settings(ca_file=str(tmp_path / "nowhere.pem")))
    assert missing.value.key == "ca_file" and isinstance(missing.value.error, FileNotFoundError)
    assert str(missing.value) == f"ca_file: {missing.value.error}"
    monkeypatch.setenv("DF_TEST_WRONG_PASSWORD", "not-the-password")
    with pytest.raises(TlsFileError) as locked:
        ssl_context(Settings(ca_file=ca_file, client_cert=str(files.cert), client_key=str(files.key),
                             client_key_password="env:DF_TEST_WRONG_PASSWORD"))
    assert locked.value.key == "client_cert or client_key" and isinstance(locked.value.error, ssl.SSLError)


# ---- recognising a refused certificate -------------------------------------------------------------

def test_a_verification_failure_is_found_behind_the_errors_that_wrap_it() -> None:
    failure = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    failure.verify_message = "self-signed certificate"
    wrapped = ConnectionError("connect failed")
    wrapped.__cause__ = failure  # raise ... from failure
    outer = RuntimeError("a client's own error")
    outer.__context__, outer.__suppress_context__ = wrapped, True  # raised from None inside `except`
    assert certificate_refused(outer) == "self-signed certificate"

    class ClientCertificateError(ssl.SSLCertVerificationError):  # as aiohttp's: no verify_message of its own
        pass

    client_error = ClientCertificateError("Cannot connect to host 127.0.0.1:9200")
    client_error.__cause__ = failure
    assert certificate_refused(client_error) == "self-signed certificate"
    client_error.__cause__ = None
    assert "Cannot connect to host 127.0.0.1:9200" in (certificate_refused(client_error) or "")
    assert certificate_refused(ConnectionResetError("reset")) is None
    assert certificate_refused(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")) is None


def test_a_clients_own_errors_may_mean_the_same() -> None:
    class Mismatch(Exception):
        pass

    try:
        raise ConnectionError("cannot connect") from Mismatch("expected fingerprint ab, got cd")
    except ConnectionError as err:
        assert certificate_refused(err) is None
        assert certificate_refused(err, also=(Mismatch,)) == "expected fingerprint ab, got cd"


# ---- the settings -------------------------------------------------------------------------------

def test_every_tls_key_and_its_default() -> None:
    assert {key: Settings.model_fields[key].default for key in TLS_KEYS} == {
        "ca_file": None, "client_cert": None, "client_key": None, "client_key_password": None,
        "tls_verify": True, "tls_server_name": None}


def test_a_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(ValueError, match="client_key needs client_cert"):
        Settings(client_key="/etc/key.pem")


def test_keys_a_sink_cannot_honour_are_refused_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_EH", "Endpoint=sb://hub.example/;SharedAccessKeyName=k;SharedAccessKey=v")
    sink = {"type": "eventhub", "connection_string": "env:DF_TEST_EH", "ca_file": "/etc/ca.pem",
            "client_cert": "/etc/c.pem", "tls_verify": False}
    with pytest.raises(ConfigError) as refused:
        parse_config({"tenants": {"a": {"tenant_id": "22222222-2222-4222-8222-222222222222", "replay": "r"}},
                      "sinks": {"hub": sink}})
    assert refused.value.problems == ["sinks.hub.client_cert: not supported by the eventhub sink",
                                      "sinks.hub.tls_verify: not supported by the eventhub sink"]


def test_tls_verify_false_is_said_once_on_the_sinks_own_logger(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("defender_forwarder.test_sink")
    with caplog.at_level(logging.WARNING):
        Settings().warn_if_unverified("siem", logger)
        Settings(tls_verify=False).warn_if_unverified("siem", logger)
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("defender_forwarder.test_sink", "sink siem: tls_verify = false: the server's certificate is NOT checked")]
