"""The splunkd storage/passwords peer, driven by the real splunklib client over verified HTTPS."""
from __future__ import annotations

import ssl
from collections.abc import Iterator

import pytest
from splunklib import binding, client

from tests.peers.splunkd_peer import SplunkdPeer, credential_name

APP = "TA-defender-forwarder"
KEY = "session-key-1234"
CREDENTIALS = {
    (APP, "contoso"): "s3cret<&>\"'",  # XML-special characters must round-trip
    (APP, "fabrikam:eu"): "other secret",  # a ':' in the username is escaped in the name
    ("another-realm", "contoso"): "third",
}


@pytest.fixture
def peer() -> Iterator[SplunkdPeer]:
    with SplunkdPeer(CREDENTIALS, session_key=KEY, app=APP) as running:
        yield running


def connect(peer: SplunkdPeer, token: str = KEY, **namespace: str) -> client.Service:
    # verify=True plus the peer's CA: splunklib checks the certificate and the host name.
    return client.connect(host="127.0.0.1", port=peer.port, scheme="https", token=token, verify=True,
                          context=peer.client_ssl_context(), **namespace)


def test_lists_every_credential_of_the_app_namespace(peer: SplunkdPeer) -> None:
    service = connect(peer, owner="nobody", app=APP)
    got = {(p.realm, p.username, p.clear_password) for p in service.storage_passwords.list()}
    assert got == {(realm, user, password) for (realm, user), password in CREDENTIALS.items()}
    names = {p.name for p in service.storage_passwords.list()}
    assert names == {f"{APP}:contoso:", f"{APP}:fabrikam\\:eu:", "another-realm:contoso:"}
    one = service.storage_passwords.list()[0]
    assert one.encrypted_password.startswith("$7$") and one.encrypted_password != one.clear_password
    assert one.content["password"] == "********"
    assert one.access["app"] == APP and one.access["owner"] == "nobody"
    request = peer.requests[-1]
    assert (request.method, request.path, request.status, request.auth_ok, request.auth_scheme) == (
        "GET", f"/servicesNS/nobody/{APP}/storage/passwords", 200, True, "Splunk")
    assert request.query == {"count": ["-1"], "offset": ["0"]}


def test_services_path_without_namespace_as_a_modular_input_uses(peer: SplunkdPeer) -> None:
    # splunklib's Script.service builds a Service from the session key alone: /services/...
    service = client.Service(host="127.0.0.1", port=peer.port, scheme="https", token=KEY, verify=True,
                             context=peer.client_ssl_context())
    assert len(service.storage_passwords.list()) == len(CREDENTIALS)
    assert peer.requests[-1].path == "/services/storage/passwords"


def test_another_apps_namespace_sees_none(peer: SplunkdPeer) -> None:
    assert connect(peer, owner="nobody", app="search").storage_passwords.list() == []


def test_fetches_one_by_name_and_absent_is_a_key_error(peer: SplunkdPeer) -> None:
    passwords = connect(peer, owner="nobody", app=APP).storage_passwords
    entry = passwords[credential_name(APP, "fabrikam:eu")]
    assert (entry.realm, entry.username, entry.clear_password) == (APP, "fabrikam:eu", "other secret")
    assert peer.requests[-1].path == f"/servicesNS/nobody/{APP}/storage/passwords/{APP}%3Afabrikam%5C%3Aeu%3A"
    with pytest.raises(KeyError):
        passwords[credential_name(APP, "nobody-here")]
    assert peer.requests[-1].status == 404


def test_absent_name_answers_splunkds_xml_error(peer: SplunkdPeer) -> None:
    service = connect(peer, owner="nobody", app=APP)
    with pytest.raises(binding.HTTPError) as raised:
        service.get("storage/passwords/" + binding.UrlEncoded("x:y:", encode_slash=True))
    assert raised.value.status == 404
    assert b'<msg type="ERROR">Could not find object id=x:y:</msg>' in raised.value.body


def test_count_offset_and_search(peer: SplunkdPeer) -> None:
    passwords = connect(peer, owner="nobody", app=APP).storage_passwords
    everything = [p.name for p in passwords.list()]
    assert [p.name for p in passwords.list(count=1, offset=1)] == everything[1:2]
    assert {p.realm for p in passwords.list(search="another")} == {"another-realm"}
    assert {p.username for p in passwords.list(search="username=contoso")} == {"contoso"}
    assert peer.requests[-1].query["search"] == ["username=contoso"]


def test_wrong_session_key_is_401_with_splunkds_message(peer: SplunkdPeer) -> None:
    service = connect(peer, token="wrong", owner="nobody", app=APP)
    with pytest.raises(binding.HTTPError) as raised:
        service.storage_passwords.list()
    assert raised.value.status == 401
    assert b'<msg type="WARN">call not properly authenticated</msg>' in raised.value.body
    assert (peer.requests[-1].status, peer.requests[-1].auth_ok) == (401, False)


def test_bearer_token_is_accepted(peer: SplunkdPeer) -> None:
    service = client.connect(host="127.0.0.1", port=peer.port, scheme="https", splunkToken=KEY, verify=True,
                             context=peer.client_ssl_context(), owner="nobody", app=APP)
    assert len(service.storage_passwords.list()) == len(CREDENTIALS)
    assert peer.requests[-1].auth_scheme == "Bearer"


def test_unknown_path_is_404(peer: SplunkdPeer) -> None:
    with pytest.raises(binding.HTTPError) as raised:
        connect(peer).get("server/info")
    assert raised.value.status == 404


def test_certificate_is_really_verified(peer: SplunkdPeer) -> None:
    # verify=True without the peer's CA: the system trust store does not know it.
    service = client.connect(host="127.0.0.1", port=peer.port, scheme="https", token=KEY, verify=True,
                             owner="nobody", app=APP)
    with pytest.raises(ssl.SSLCertVerificationError):
        service.storage_passwords.list()


def test_credentials_can_change_while_running(peer: SplunkdPeer) -> None:
    passwords = connect(peer, owner="nobody", app=APP).storage_passwords
    peer.set_credential(APP, "contoso", "rotated")
    assert passwords[credential_name(APP, "contoso")].clear_password == "rotated"
    peer.remove_credential(APP, "contoso")
    assert credential_name(APP, "contoso") not in passwords


def test_restart_keeps_the_port_and_the_credentials(peer: SplunkdPeer) -> None:
    port = peer.port
    peer.stop()
    with pytest.raises(ConnectionRefusedError):
        connect(peer, owner="nobody", app=APP).storage_passwords.list()
    peer.start()
    assert peer.port == port
    assert len(connect(peer, owner="nobody", app=APP).storage_passwords.list()) == len(CREDENTIALS)
