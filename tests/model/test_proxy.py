"""The one proxy decision: explicit over the environment, the scheme's variable then ALL_PROXY,
NO_PROXY exempting hosts and domain suffixes, a password masked."""
from __future__ import annotations

import pytest

from core.model.proxy import proxy_for, redacted
from core.model.secrets import REDACTOR


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_environment_by_scheme_then_all_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_for("https://graph.microsoft.com") is None
    monkeypatch.setenv("ALL_PROXY", "http://all:3128")
    assert proxy_for("https://graph.microsoft.com") == "http://all:3128"
    monkeypatch.setenv("HTTPS_PROXY", "http://tls:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain:3128")
    assert proxy_for("https://graph.microsoft.com") == "http://tls:3128"
    assert proxy_for("http://splunk.lan:8088") == "http://plain:3128"


def test_explicit_wins_and_no_proxy_exempts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example")
    assert proxy_for("https://graph.microsoft.com", "http://mine:8080") == "http://mine:8080"
    assert proxy_for("https://es.corp.example:9200", "http://mine:8080") is None
    assert proxy_for("https://localhost:8088") is None


def test_a_password_is_masked_and_registered() -> None:
    assert redacted("http://user:s3cret@proxy:3128") == "http://user:***@proxy:3128"
    assert redacted("http://proxy:3128") == "http://proxy:3128"
    proxy_for("https://graph.microsoft.com", "http://user:PROXY0CANARY@proxy:3128")
    assert "PROXY0CANARY" not in REDACTOR.redact("failed via http://user:PROXY0CANARY@proxy:3128")
