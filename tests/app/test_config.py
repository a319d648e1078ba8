"""Configuration: strict keys, key paths in every error, durations, secret references."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from core.app.config import ConfigError, load_config, parse_config, secret_refs, unresolved_secrets
from core.model.secrets import SecretUnavailable
from tests.helpers import REPO

BASE = {
    "apps": {"mssp": {"client_id": "11111111-1111-1111-1111-111111111111", "client_secret": "env:DF_TEST_SECRET"}},
    "tenants": {"contoso": {"tenant_id": "22222222-2222-2222-2222-222222222222", "app": "mssp"}},
    "sinks": {"archive": {"type": "file", "path": "out/{tenant}.ndjson"}},
}


def _with(**changes: object) -> dict:
    import copy

    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return data


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    return caught.value.problems


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_SECRET", "s3cr3t-value-from-env")


def test_valid_config_resolves_secret_reference() -> None:
    config = parse_config(BASE)
    assert config.apps["mssp"].client_secret.get_secret_value() == "s3cr3t-value-from-env"
    assert config.forwarder.overlap == 900.0


def test_typo_in_a_key_is_an_error_naming_its_path() -> None:
    assert _problems(_with(forwarder__overlapp="10m")) == ["forwarder.overlapp: unknown key (check the spelling)"]
    problems = _problems(_with(sinks__archive__pth="x"))
    assert problems == ["sinks.archive.pth: unknown key (check the spelling)"]


def test_wrong_value_names_its_key_path() -> None:
    problems = _problems(_with(sinks__archive__batch_max_events=0))
    assert len(problems) == 1 and problems[0].startswith("sinks.archive.batch_max_events: ")
    problems = _problems(_with(forwarder__poll_interval="5 minutes"))
    assert problems[0].startswith("forwarder.poll_interval: ") and "'5m'" in problems[0]


def test_unknown_sink_types_are_refused_clearly() -> None:
    problem = _problems(_with(sinks__archive__type="kafka"))[0]
    assert problem.startswith("sinks.archive.type: unknown sink type 'kafka'; available: file, stdout, syslog")


def test_unknown_format_is_refused_with_its_path() -> None:
    problem = _problems(_with(sinks__archive__format="leef"))[0]
    assert problem.startswith("sinks.archive.format: ") and "unknown format 'leef'" in problem


def test_references_between_tables_are_checked() -> None:
    assert _problems(_with(tenants__contoso__app="nope")) == [
        'tenants.contoso.app = "nope": no [apps.nope] table; defined apps: mssp']
    data = _with(routes=[{"sinks": ["siem"]}])
    assert _problems(data) == ["routes[0].sinks: no sink named 'siem'; sinks: archive"]


def test_missing_env_secret_is_reported_when_resolved_without_any_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DF_TEST_SECRET")
    config = parse_config(BASE)  # a reference is read on first use, not when the config is
    problems = unresolved_secrets(secret_refs(config, apps=["mssp"]))
    assert problems == ["apps.mssp.client_secret: environment variable DF_TEST_SECRET is not set or empty; "
                        "set it where the forwarder runs"]
    with pytest.raises(SecretUnavailable, match="apps.mssp.client_secret: environment variable DF_TEST_SECRET"):
        config.apps["mssp"].client_secret.get_secret_value()


def test_bad_literal_secret_never_appears_in_errors() -> None:
    literal = "Very-Secret-Literal-123"
    data = _with(apps__mssp__client_secret=None, apps__mssp__certificate="file:/nonexistent/x.pem",
                 apps__mssp__certificate_password=literal)
    del data["apps"]["mssp"]["client_secret"]
    text = "\n".join(unresolved_secrets(secret_refs(parse_config(data), apps=["mssp"])))
    assert "apps.mssp.certificate: cannot read secret file /nonexistent/x.pem" in text
    assert literal not in text and literal not in "\n".join(_problems(_with(apps__mssp__client_secret=7)))


@pytest.mark.parametrize(("reference", "message"), [
    ("env:", "'' is not an environment variable name"),
    ("env:DF-SECRET", "'DF-SECRET' is not an environment variable name"),
    ("file:", "a file reference needs a path"),
])
def test_a_reference_is_checked_for_syntax_when_the_config_is_read(reference: str, message: str) -> None:
    assert _problems(_with(apps__mssp__client_secret=reference)) == [f"apps.mssp.client_secret: {message} "
                                                                    + ("(env:NAME)" if "env" in reference
                                                                       else "(file:/path)")]


def test_literal_secret_is_accepted_with_a_warning() -> None:
    config = parse_config(_with(apps__mssp__client_secret="literal-secret-value"))
    assert config._literal_secret_warnings and "literal secret" in config._literal_secret_warnings[0]


def test_file_secret_reference(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)  # a secret file others can read is refused
    config = parse_config(_with(apps__mssp__client_secret=f"file:{secret}"))
    assert config.apps["mssp"].client_secret.get_secret_value() == "from-a-file"


def test_exactly_one_credential() -> None:
    data = _with(apps__mssp__certificate="env:DF_TEST_SECRET")
    assert _problems(data) == ["apps.mssp: set exactly one of client_secret or certificate"]


def test_tenant_label_must_be_file_name_safe() -> None:
    data = _with()
    data["tenants"]["../etc"] = {"tenant_id": "x", "replay": "y"}
    assert "tenant label '../etc'" in _problems(data)[0]


def test_toml_file_and_its_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[forwarder\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "not valid TOML" in caught.value.problems[0]
    path.write_text(textwrap.dedent("""
        [tenants.demo]
        tenant_id = "22222222-2222-4222-8222-222222222222"
        replay = "examples/demo/contoso"
        [sinks.out]
        type = "stdout"
        format = "raw"
    """))
    config = load_config(path)
    assert config.sinks["out"].format == "raw"
    assert config.routes_or_default()[0].sinks == ["out"]


@pytest.mark.parametrize("example", sorted(p.name for p in (REPO / "examples").glob("*.toml")))
def test_every_example_config_is_valid(example: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomllib

    data = tomllib.loads((REPO / "examples" / example).read_text())
    monkeypatch.setenv("DF_TEST_SECRET", "s3cr3t-value-from-env")
    for app in data.get("apps", {}).values():  # their certificate files live on the production host
        app.pop("certificate", None)
        app["client_secret"] = "env:DF_TEST_SECRET"
    for sink in data.get("sinks", {}).values():  # the secrets they reference live there too
        for key, value in sink.items():
            if isinstance(value, str) and value.startswith("env:"):
                monkeypatch.setenv(value[4:], "example-secret")
            elif isinstance(value, str) and value.startswith("file:"):
                sink[key] = "env:DF_TEST_SECRET"
    config = parse_config(data, example)
    assert config.sinks and all(sink is not None for sink in config.sinks.values())


def test_syslog_sink_keys_are_checked() -> None:
    sink = {"type": "syslog", "host": "logs.example", "protocol": "udp", "framing": "lf", "facility": "local9",
            "app_name": "has space", "ca_file": "/ca.pem", "max_message_bytes": 70000}
    with pytest.raises(ConfigError) as caught:
        parse_config(_with(sinks={"siem": sink}))
    problems = "\n".join(caught.value.problems)
    assert "sinks.siem.facility: unknown facility 'local9'; one of kern," in problems
    assert "sinks.siem.app_name: 'has space': printable US-ASCII without spaces" in problems
    ok = parse_config(_with(sinks={"siem": {"type": "syslog", "host": "logs.example", "rfc": 3164}})).sinks["siem"]
    assert (ok.protocol, ok.target_port, ok.rfc, ok.facility, ok.message_limit) == ("tcp", 514, "3164", "local4", 65536)
    udp = parse_config(_with(sinks={"siem": {"type": "syslog", "host": "h", "protocol": "udp"}})).sinks["siem"]
    tls = parse_config(_with(sinks={"siem": {"type": "syslog", "host": "h", "protocol": "tls"}})).sinks["siem"]
    assert (udp.message_limit, tls.target_port, tls.tls_verify) == (2048, 6514, True)
    for bad, phrase in ((dict(protocol="tcp", ca_file="/ca.pem"), 'need protocol = "tls"'),
                        (dict(protocol="udp", framing="lf"), "framing applies to tcp and tls only"),
                        (dict(protocol="udp", max_message_bytes=70000), "at most 65507")):
        with pytest.raises(ConfigError, match=phrase):
            parse_config(_with(sinks={"siem": {"type": "syslog", "host": "h", **bad}}))


def test_a_misspelt_table_does_not_hide_the_other_problems() -> None:
    data = _with(tenants__contoso__tenant_id="t")
    data["tenant"] = {"fabrikam": {"tenant_id": "x"}}
    problems = _problems(data)
    assert problems[0] == "tenant: unknown key (check the spelling)"
    assert any(p.startswith("tenants.contoso.tenant_id: 't' is not a tenant id") for p in problems), problems


def test_a_route_with_no_tenants_is_a_slip() -> None:
    data = _with(routes=[{"tenants": ["*"], "sinks": ["archive"]}, {"tenants": [], "sinks": ["archive"]}])
    assert _problems(data) == ['routes[1].tenants: empty, so the route takes no tenant; name tenants, or "*" for '
                               "every one"]
