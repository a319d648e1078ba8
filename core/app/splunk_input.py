"""The Splunk add-on's modular input: the forwarder run as splunkd runs a modular input.

splunkd starts `bin/defender_forwarder.py` (the add-on, `core.app.splunk_app`) three ways,
and `splunklib.modularinput.Script` answers each:

- `--scheme`: the input's arguments (`ARGUMENTS`, also the source of `inputs.conf.spec`);
- `--validate-arguments`: a stanza being saved, on stdin; a bad one gets `<error><message>`
  naming the argument, and splunkd refuses to save it;
- no argument: the input definition on stdin (one stanza, `use_single_instance = false`);
  the process runs one poll cycle of the stanza's tenants, as `run --once` does, writes the
  events as an XML `<stream>` on stdout (`connectors.splunk_modinput`) and ends; splunkd
  starts it again after the stanza's `interval`.

A stanza becomes an ordinary configuration (`stanza_config`): one app (the MSSP's Entra app,
its secret or certificate read from splunkd's `storage/passwords` through splunklib's client,
never from a conf file), the stanza's tenants, one `splunk_modinput` sink. The same pipeline,
mappings and state store as the daemon run it; the state (cursors, seen versions, outbox,
dead letters) is a SQLite file of the stanza in the input's checkpoint directory.

Logging goes to stderr as `LEVEL logger: message` lines, which splunkd files in splunkd.log
(component ExecProcessor) at that level.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import ssl
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from core.app.config import Config, ConfigError, parse_config
from core.app.runtime import EXIT_CONFIG, EXIT_OK, CommandFailed, once_exit_code, open_state, preflight
from core.model.secrets import REDACTOR, SecretUnavailable
from core.sources import DEFAULT_SOURCES, KINDS

log = logging.getLogger("defender_forwarder.splunk")

APP_NAME = "TA-defender-forwarder"
SCHEME = "defender_forwarder"  # inputs.conf stanzas: [defender_forwarder://NAME]
# storage/passwords: the entry of realm REALM and user <client_id> holds the app's credential.
REALM = "defender_forwarder"
SINK = "splunk"


@dataclass(frozen=True)
class Argument:
    """One argument of the input: in the scheme splunkd asks for and in inputs.conf.spec."""

    name: str
    title: str
    description: str
    required: bool = False
    default: str | None = None


ARGUMENTS: tuple[Argument, ...] = (
    Argument("client_id", "Client ID", "The MSSP's multi-tenant Entra app (its application id, a GUID).",
             required=True),
    Argument("tenants", "Customer tenants", "The customers this input reads: label=tenant, separated by commas "
             "or new lines (contoso=22222222-2222-4222-8222-222222222222, fabrikam=fabrikam.onmicrosoft.com). "
             "A tenant without a label is its own label.", required=True),
    Argument("credential", "Credential", "secret or certificate: what storage/passwords holds for the app, "
             f"realm {REALM}, user = client_id (a client secret, or a PEM with the private key and the "
             "certificate).", default="secret"),
    Argument("sources", "Sources", f"Which Defender data to read, comma-separated: {', '.join(KINDS)}.",
             default=", ".join(DEFAULT_SOURCES)),
    Argument("format", "Event format", "raw (the Defender alert as Microsoft sends it, sourcetype "
             "ms365:defender:incident:alerts), cim, ocsf or ecs.", default="raw"),
    Argument("index_per_customer", "Index per customer", "label=index pairs, comma-separated; a customer "
             "without one goes to the input's index."),
    Argument("cloud", "Cloud", "public, gcc, gcc-high or dod.", default="public"),
    Argument("initial_lookback", "Initial lookback", "How far back the first run reads (e.g. 1d, 12h).",
             default="1d"),
    Argument("overlap", "Overlap", "How much of the last window each run reads again for late alerts "
             "(e.g. 15m); versions already sent are not sent again.", default="15m"),
    Argument("proxy", "Proxy", "http://host:port of the proxy to Microsoft; default: HTTPS_PROXY."),
    Argument("login_endpoint", "Login endpoint", "Override of the cloud's login host (a private cloud or "
             "a TLS-terminating proxy)."),
    Argument("graph_endpoint", "Graph endpoint", "Override of the cloud's Graph host."),
    Argument("mde_endpoint", "Defender for Endpoint endpoint", "Override of the Defender for Endpoint API host."),
    Argument("ca_file", "CA file", "A PEM bundle to verify Microsoft's hosts with, instead of the system's."),
)


def arguments_markdown() -> str:
    """The arguments as docs/splunk-addon.md shows them (a test holds the page to it)."""
    lines = ["| argument | required | default | what it is |", "|---|---|---|---|"]
    lines += [f"| `{a.name}` | {'yes' if a.required else ''} | {f'`{a.default}`' if a.default else ''} | "
              f"{a.description} |" for a in ARGUMENTS]
    return "\n".join(lines)
FORMATS = ("raw", "cim", "ocsf", "ecs")
CREDENTIALS = ("secret", "certificate")


class InputProblem(Exception):
    """A stanza that cannot run: its text names the argument and the fix (one line)."""


# ---- a stanza -> a configuration ------------------------------------------------------------
def pairs(text: str | None, argument: str) -> dict[str, str]:
    """`a=b, c=d` (commas or new lines) -> {a: b, c: d}; a bare `x` is {x: x}."""
    found: dict[str, str] = {}
    for item in re.split(r"[,\n]", text or ""):
        item = item.strip()
        if not item:
            continue
        label, sep, value = (part.strip() for part in item.partition("="))
        if sep and not (label and value):
            raise InputProblem(f"{argument}: {item!r} is not label=value")
        if label in found:
            raise InputProblem(f"{argument}: {label!r} appears twice")
        found[label] = value if sep else label
    return found


def _listed(text: str | None) -> list[str]:
    return [item.strip() for item in re.split(r"[,\s]+", text or "") if item.strip()]


def stanza_config(name: str, params: dict[str, Any], credential: str, checkpoint_dir: str | None,
                  server_host: str | None = None) -> Config:
    """The configuration of one stanza; InputProblem names the argument of the first problem."""
    params = {key: value for key, value in params.items() if value not in (None, "")}
    tenants = pairs(params.get("tenants"), "tenants")
    if not tenants:
        raise InputProblem("tenants: name at least one customer tenant (label=tenant id)")
    kind = params.get("credential", "secret")
    if kind not in CREDENTIALS:
        raise InputProblem(f"credential: {kind!r} is neither secret nor certificate")
    format_name = params.get("format", "raw")
    if format_name not in FORMATS:
        raise InputProblem(f"format: {format_name!r} is not one of {', '.join(FORMATS)}")
    indexes = pairs(params.get("index_per_customer"), "index_per_customer")
    if unknown := sorted(set(indexes) - set(tenants)):
        raise InputProblem(f"index_per_customer: {', '.join(unknown)} is not a label of tenants")
    secret = SecretStr(credential)
    REDACTOR.register(credential)
    app: dict[str, Any] = {"client_id": params.get("client_id", ""), "cloud": params.get("cloud", "public"),
                           ("client_secret" if kind == "secret" else "certificate"): secret}
    for key in ("login_endpoint", "graph_endpoint", "mde_endpoint", "ca_file"):
        if key in params:
            app[key] = params[key]
    forwarder: dict[str, Any] = {"state": str(state_path(name, checkpoint_dir)),
                                 "initial_lookback": params.get("initial_lookback", "1d"),
                                 "overlap": params.get("overlap", "15m")}
    if "proxy" in params:
        if urlsplit(params["proxy"]).password is not None:
            raise InputProblem("proxy: a password in the proxy URL would sit in inputs.conf in clear; "
                               "use a proxy that needs none, or HTTPS_PROXY in splunk-launch.conf")
        forwarder["proxy"] = params["proxy"]
    sink: dict[str, Any] = {"type": "splunk_modinput", "format": format_name, "stanza": name,
                            "indexes": indexes, "index": params.get("index")}
    # splunkd passes the stanza's host, `$decideOnStartup` unless one is set: then its own name.
    host = params.get("host") if not str(params.get("host", "$")).startswith("$") else server_host
    if host:
        sink["host"] = host
    sources = _listed(params.get("sources")) or list(DEFAULT_SOURCES)
    data = {"forwarder": forwarder, "apps": {"mssp": app},
            "tenants": {label: {"tenant_id": tenant, "app": "mssp", "sources": sources}
                        for label, tenant in tenants.items()},
            "sinks": {SINK: sink}}
    try:
        return parse_config(data, f"inputs.conf [{name}]", internal=True)
    except ConfigError as err:
        raise InputProblem(_argument_problem(err.problems[0])) from None


# Config key paths -> the stanza argument that set them.
_KEY_ARGUMENTS = (
    (re.compile(r"^tenants\.([^.]+)\.tenant_id: "), r"tenants: \1: "),
    (re.compile(r"^tenants\.[^.]+\.sources(\.\d+)?: "), "sources: "),
    (re.compile(r"^apps\.mssp: "), "client_id: "),
    (re.compile(r"^apps\.mssp\.(\w+): "), r"\1: "),
    (re.compile(r"^forwarder\.(\w+): "), r"\1: "),
    (re.compile(r"^sinks\.splunk\.(\w+): "), r"\1: "),
)


def _argument_problem(problem: str) -> str:
    for pattern, replacement in _KEY_ARGUMENTS:
        if pattern.search(problem):
            return pattern.sub(replacement, problem, count=1)
    return problem


def state_path(name: str, checkpoint_dir: str | None) -> Path:
    """The stanza's SQLite state: one file per stanza in the input's checkpoint directory."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.split("://", 1)[-1]).strip("._") or "input"
    return Path(checkpoint_dir or ".") / f"{stem}.sqlite"


# ---- storage/passwords ----------------------------------------------------------------------
def read_credential(server_uri: str, session_key: str, client_id: str) -> str:
    """The app's secret or PEM from splunkd's storage/passwords (realm REALM, user = client id)."""
    from splunklib import binding, client

    parts = urlsplit(server_uri)
    try:
        service = client.connect(scheme=parts.scheme or "https", host=parts.hostname, port=parts.port or 8089,
                                 token=session_key, owner="nobody", app=APP_NAME, autologin=False,
                                 verify=True, context=splunkd_ssl_context(parts.hostname or ""))
        for entry in service.storage_passwords.list(count=-1):
            if entry.content.get("realm") == REALM and entry.content.get("username") == client_id:
                return str(entry.content.get("clear_password") or "")
    except binding.HTTPError as err:
        raise InputProblem(f"storage/passwords at {server_uri}: splunkd answered {err.status} {err.reason}; "
                           "the input's session cannot read the app's credential (capability "
                           "list_storage_passwords)") from None
    except (OSError, ssl.SSLError) as err:
        raise InputProblem(f"storage/passwords at {server_uri}: cannot reach splunkd ({err})") from None
    raise InputProblem(f"client_id: storage/passwords has no credential for {client_id} (realm {REALM}); "
                       f"add it: curl -u admin https://localhost:8089/servicesNS/nobody/{APP_NAME}/"
                       f"storage/passwords -d realm={REALM} -d name={client_id} -d password=<secret>")


def splunkd_ssl_context(host: str) -> ssl.SSLContext:
    """Verify splunkd's certificate: against $SPLUNK_HOME/etc/auth/cacert.pem (splunkd's own CA)
    and the system's. On loopback the name is not checked: splunkd's default certificate names
    no host, and the connection does not leave the machine."""
    context = ssl.create_default_context()
    ca = Path(os.environ.get("SPLUNK_HOME", "/opt/splunk")) / "etc" / "auth" / "cacert.pem"
    if ca.is_file():
        context.load_verify_locations(cafile=str(ca))
    if _loopback(host):
        context.check_hostname = False
    return context


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the run --------------------------------------------------------------------------------
async def one_cycle(config: Config) -> int:
    """One poll cycle of the stanza's tenants, delivered to stdout; the exit code as `run --once`'s."""
    from core.app.pipeline import Forwarder

    started = time.time()
    with open_state(config) as store:
        forwarder = Forwarder(config, store)
        async with forwarder:
            results = await forwarder.run_once()
        forwarder.warn_of_dead_letters(since=started)  # (each failing tenant has had its ERROR line)
        return once_exit_code(results, forwarder)


def _script_class() -> type:
    from splunklib.modularinput import Argument as SplunkArgument
    from splunklib.modularinput import Scheme, Script

    class DefenderForwarderInput(Script):  # type: ignore[misc]
        """splunklib's modular input: scheme, validation and one streaming run."""

        exit_code = EXIT_OK

        def get_scheme(self) -> Scheme:
            scheme = Scheme("Microsoft Defender alerts (defender-forwarder)")
            scheme.description = ("Alerts and incidents of many customer tenants' Microsoft Defender, "
                                  "read through the MSSP's multi-tenant Entra app.")
            scheme.use_external_validation = True
            scheme.use_single_instance = False
            scheme.streaming_mode = Scheme.streaming_mode_xml
            for argument in ARGUMENTS:
                scheme.add_argument(SplunkArgument(argument.name, title=argument.title,
                                                   description=argument.description,
                                                   data_type=SplunkArgument.data_type_string,
                                                   required_on_create=argument.required,
                                                   required_on_edit=False))
            return scheme

        def validate_input(self, definition: Any) -> None:
            params = dict(definition.parameters)
            name = str(definition.metadata.get("name", "validation"))
            if not params.get("client_id"):
                raise ValueError("client_id: the MSSP app's client id is required")
            credential = read_credential(definition.metadata["server_uri"], definition.metadata["session_key"],
                                         params["client_id"])
            try:
                stanza_config(f"{SCHEME}://{name}", params, credential, None)
            except InputProblem as err:
                raise ValueError(str(err)) from None

        def stream_events(self, inputs: Any, writer: Any) -> None:
            metadata = inputs.metadata
            for name, params in inputs.inputs.items():
                try:
                    if not params.get("client_id"):
                        raise InputProblem("client_id: the MSSP app's client id is required")
                    credential = read_credential(metadata["server_uri"], metadata["session_key"], params["client_id"])
                    config = stanza_config(name, params, credential, metadata.get("checkpoint_dir"),
                                           metadata.get("server_host"))
                    code = _run(config)
                except (InputProblem, SecretUnavailable) as err:
                    log.error("%s: %s", name, err)
                    code = EXIT_CONFIG
                self.exit_code = max(self.exit_code, code)

    return DefenderForwarderInput


def _run(config: Config) -> int:
    try:
        preflight(config)
        return asyncio.run(one_cycle(config))
    except CommandFailed as err:
        raise InputProblem(str(err)) from None


def main(argv: list[str] | None = None) -> int:
    """The entry point of bin/defender_forwarder.py; returns the exit code."""
    from core.app.logs import setup_logging

    setup_logging("info", splunkd=True)
    script = _script_class()()
    code = script.run(argv if argv is not None else sys.argv)
    return code or script.exit_code
