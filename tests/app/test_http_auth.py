"""Safe by default (`[forwarder.http]`): credentials on every route, a non-loopback address only
with credentials or `allow_unauthenticated = true`, TLS with the operator's certificate, and no
secret of the configuration in anything the endpoint answers. Real daemons, real sockets, httpx."""
from __future__ import annotations

import base64
import signal
import ssl
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme

from core.app.http import server_ssl_context
from tests.helpers import SECRET, CloudSetup, daemon, recent, run_cli, until, write_config, write_replay
from tests.peers.alert_factory import make_alerts
from tests.peers.lifecycle import free_port

TENANT_ID = "77777777-7777-4777-8777-777777777777"
ROUTES = ["/", "/api/status", "/metrics", "/readyz", "/healthz"]
TOKEN = "endpoint-token-4b1d9e-do-not-leak"
HEC_TOKEN = "hec-token-0c7e52-do-not-leak"
SMTP_PASSWORD = "smtp-password-9a3f10-do-not-leak"
BASIC_PASSWORD = "basic-password-5e8c21-do-not-leak"


def _replay_config(folder: Path, port: int, http: dict[str, Any]) -> Path:
    """A daemon over one replayed tenant into a file, its endpoint as `http` says."""
    replay = write_replay(folder / "replay", [make_alerts(2, TENANT_ID, recent(60), timedelta(seconds=1), seed=5)])
    return write_config(folder / "c.toml", {
        "forwarder": {"state": str(folder / "state.db"), "initial_lookback": "3650d", "poll_interval": "1h"},
        "forwarder.http": {"listen": f"127.0.0.1:{port}", **http},
        "tenants.acme": {"tenant_id": TENANT_ID, "replay": str(replay)},
        "sinks.out": {"type": "file", "path": str(folder / "out.ndjson"), "format": "raw"},
    })


def _answer(url: str, **options: Any) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5, **options)
    except httpx.TransportError:
        return None


def _running(process: subprocess.Popen[str], ready_url: str, **options: Any) -> None:
    """Wait until the daemon's first cycle is done (its /readyz answers 200 to `options`)."""
    def ready() -> bool:
        answer = _answer(ready_url, **options)
        return answer is not None and answer.status_code == 200
    until(ready, process, timeout=30)


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    return output


@pytest.fixture(scope="module")
def bearer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A daemon whose endpoint wants a bearer token (read from the environment), after its first
    cycle; yields its base URL."""
    port = free_port()
    config = _replay_config(tmp_path_factory.mktemp("bearer"), port, {"bearer_token": "env:DF_TEST_HTTP_TOKEN"})
    base = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DF_TEST_HTTP_TOKEN", TOKEN)
        process = daemon(config)
    try:
        _running(process, f"{base}/readyz", headers={"Authorization": f"Bearer {TOKEN}"})
        yield base
    finally:
        _stop(process)


@pytest.mark.parametrize("route", ROUTES)
def test_a_request_without_the_token_gets_401_on_every_route(bearer: str, route: str) -> None:
    answer = httpx.get(bearer + route, timeout=5)
    assert answer.status_code == 401
    assert answer.headers.get_list("WWW-Authenticate") == ["Bearer"]


@pytest.mark.parametrize("route", ROUTES)
def test_the_right_token_gets_200_on_every_route(bearer: str, route: str) -> None:
    answer = httpx.get(bearer + route, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("authorization", [
    f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}x", "Bearer", f"Token {TOKEN}", TOKEN,
    "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode(),
])
def test_a_wrong_token_gets_401_and_is_not_echoed(bearer: str, authorization: str) -> None:
    for route in ROUTES:
        answer = httpx.get(bearer + route, headers={"Authorization": authorization}, timeout=5)
        assert answer.status_code == 401, route
        assert TOKEN[:-1] not in answer.text and TOKEN[:-1] not in str(answer.headers)


def test_an_unknown_path_says_nothing_without_the_token(bearer: str) -> None:
    assert httpx.get(f"{bearer}/nothing-here", timeout=5).status_code == 401
    assert httpx.get(f"{bearer}/nothing-here", headers={"Authorization": f"Bearer {TOKEN}"},
                     timeout=5).status_code == 404


def test_basic_auth_over_tls_verified_with_the_ca(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("DF_TEST_HTTP_PASSWORD", BASIC_PASSWORD)
    port = free_port()
    config = _replay_config(tmp_path, port, {"username": "prometheus", "password": "env:DF_TEST_HTTP_PASSWORD",
                                             "tls_cert_file": str(cert), "tls_key_file": str(key)})
    base = f"https://127.0.0.1:{port}"
    verified = ssl.create_default_context(cafile=str(ca_file))
    process = daemon(config)
    try:
        _running(process, f"{base}/readyz", verify=verified, auth=("prometheus", BASIC_PASSWORD))
        for route in ROUTES:
            assert httpx.get(base + route, verify=verified, auth=("prometheus", BASIC_PASSWORD),
                             timeout=5).status_code == 200, route
            refused = httpx.get(base + route, verify=verified, auth=("prometheus", "wrong-password"), timeout=5)
            assert refused.status_code == 401, route
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="defender-forwarder"'
            assert httpx.get(base + route, verify=verified, auth=("grafana", BASIC_PASSWORD),
                             timeout=5).status_code == 401, route
        with pytest.raises(httpx.ConnectError):  # a certificate no CA of the client's signed
            httpx.get(f"{base}/healthz", timeout=5)
        assert _answer(f"http://127.0.0.1:{port}/healthz") is None  # no plain HTTP there
    finally:
        output = _stop(process)
    assert f" on https://127.0.0.1:{port}" in output  # the start line says where, with the scheme


def test_the_server_context_refuses_tls_below_1_2(tmp_path: Path) -> None:
    server = trustme.CA().issue_cert("localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "both.pem"))
    context = server_ssl_context(str(tmp_path / "both.pem"), None)  # the key in the certificate's file
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def _tls_files(tmp_path: Path) -> dict[str, str]:
    """A certificate, its key, another key, a file that is no PEM, and a path with no file."""
    first, second = trustme.CA().issue_cert("localhost"), trustme.CA().issue_cert("localhost")
    first.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    first.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    second.private_key_pem.write_to_path(str(tmp_path / "other-key.pem"))
    (tmp_path / "notes.txt").write_text("not a certificate\n")
    names = {"cert": "cert.pem", "key": "key.pem", "other_key": "other-key.pem", "notes": "notes.txt",
             "missing": "missing.pem"}
    return {name: str(tmp_path / file) for name, file in names.items()}


@pytest.mark.parametrize(("cert", "key", "expected"), [
    ("missing", "key", "forwarder.http.tls_cert_file = '{missing}': No such file or directory"),
    ("cert", "missing", "forwarder.http.tls_key_file = '{missing}': No such file or directory"),
    ("notes", "key", "forwarder.http.tls_cert_file = '{notes}': no PEM certificate in it"),
    ("cert", "other_key", "forwarder.http.tls_key_file = '{other_key}': the key does not belong to the "
                          "certificate in tls_cert_file '{cert}'"),
])
def test_an_unusable_certificate_or_key_is_one_line_naming_key_and_file(
        tmp_path: Path, cert: str, key: str, expected: str) -> None:
    files = _tls_files(tmp_path)
    config = _replay_config(tmp_path, free_port(), {"tls_cert_file": files[cert], "tls_key_file": files[key]})
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {expected.format(**files)}"), result.stderr
    assert not (tmp_path / "out.ndjson").exists()  # nothing was forwarded


def test_a_non_loopback_address_without_credentials_is_a_config_error(tmp_path: Path) -> None:
    config = _replay_config(tmp_path, free_port(), {})
    text = config.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:')
    config.write_text(text)
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines()[1:] if line.strip()]
    assert len(problems) == 1 and problems[0].startswith("forwarder.http: listen = '0.0.0.0:"), result.stderr
    assert "not a loopback address" in problems[0]
    assert 'bearer_token = "env:NAME"' in problems[0] and "allow_unauthenticated = true" in problems[0]


def test_a_missing_token_secret_names_its_key(tmp_path: Path) -> None:
    config = _replay_config(tmp_path, free_port(), {"bearer_token": "env:DF_TEST_NO_SUCH_TOKEN"})
    result = run_cli("run", "--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "forwarder.http.bearer_token: environment variable DF_TEST_NO_SUCH_TOKEN is not set" in result.stderr


def test_allow_unauthenticated_serves_a_wildcard_address_with_a_warning(tmp_path: Path) -> None:
    port = free_port()
    config = _replay_config(tmp_path, port, {"allow_unauthenticated": True})
    config.write_text(config.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:'))
    process = daemon(config)
    try:
        _running(process, f"http://127.0.0.1:{port}/readyz")  # open, as asked
    finally:
        output = _stop(process)
    warnings = [line for line in output.splitlines() if "WITHOUT authentication" in line]
    assert len(warnings) == 1, output
    assert f"http://0.0.0.0:{port}" in warnings[0] and "allow_unauthenticated = true" in warnings[0]


def _secrets_revealed(answer: httpx.Response, secrets: list[str]) -> list[str]:
    """Which secret, or its base64, appears in the answer's body or headers."""
    text = answer.text + "\n" + "\n".join(f"{name}: {value}" for name, value in answer.headers.multi_items())
    forms = {form: secret for secret in secrets
             for form in (secret, base64.b64encode(secret.encode()).decode(),
                          base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="))}
    return sorted({secret for form, secret in forms.items() if form in text})


def test_no_secret_of_the_configuration_in_any_answer(setup: CloudSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client secret, a HEC token, an SMTP password and the endpoint's own token: none of them, nor
    their base64, in what any page answers, after the sinks have failed to deliver (their errors
    are on the status page)."""
    for name, value in {"DF_TEST_HTTP_TOKEN": TOKEN, "DF_TEST_HEC_TOKEN": HEC_TOKEN,
                        "DF_TEST_SMTP_PASSWORD": SMTP_PASSWORD}.items():
        monkeypatch.setenv(name, value)
    tenant = setup.tenant("acme")
    setup.cloud.add_alerts(tenant, make_alerts(2, tenant, recent(30), timedelta(minutes=1)))
    setup.forwarder["poll_interval"] = "1h"
    setup.sinks = {
        "splunk": {"type": "splunk_hec", "url": f"http://127.0.0.1:{free_port()}", "token": "env:DF_TEST_HEC_TOKEN",
                   "retry_initial": 0.05, "retry_max": 0.2},
        "mail": {"type": "email", "host": "127.0.0.1", "port": free_port(), "security": "none", "from": "f@example.org",
                 "to": ["soc@example.org"], "username": "forwarder", "password": "env:DF_TEST_SMTP_PASSWORD",
                 "retry_initial": 0.05, "retry_max": 0.2},
    }
    config = setup.write()
    port = free_port()
    with config.open("a") as file:
        file.write(f'\n[forwarder.http]\nlisten = "127.0.0.1:{port}"\nbearer_token = "env:DF_TEST_HTTP_TOKEN"\n')
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}
    process = daemon(config)
    try:
        def both_failed() -> bool:
            status = _answer(f"{base}/api/status", headers=auth)
            states = {s["sink"]: s["state"] for s in status.json()["sinks"]} if status is not None and \
                status.status_code == 200 else {}
            return states == {"splunk": "retrying", "mail": "retrying"}
        until(both_failed, process, timeout=30)
        answers = [httpx.get(base + route, headers=auth, timeout=5) for route in [*ROUTES, "/nothing-here"]]
        answers += [httpx.get(base + route, timeout=5) for route in ROUTES]  # the 401s
    finally:
        output = _stop(process)
    secrets = [SECRET, TOKEN, HEC_TOKEN, SMTP_PASSWORD]
    for answer in answers:
        assert _secrets_revealed(answer, secrets) == [], answer.request.url
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 200, 404] + [401] * 5
    assert _secrets_revealed(httpx.Response(200, text=output), secrets) == []  # nor in the log
