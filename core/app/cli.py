"""`defender-forwarder` command line. Heavy modules are imported inside each command so
that `--help` and cron start-up stay fast."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn, Sequence

from connectors import setup_offers  # the registry alone: no connector is imported
from core.app.version import version
from core.sources import KINDS  # the registry of source kinds: no reader is imported
from mappings import SOURCES  # the input shapes `convert` reads: no mapping is imported

DESCRIPTION = """\
Forward Microsoft Defender alerts of many customer tenants (Microsoft Graph
security/alerts_v2) into the MSSP's SIEM: syslog CEF, Splunk HEC, Elasticsearch,
Azure Event Hubs, or NDJSON files.

exit codes: 0 all well; 1 some tenants or sinks failed (the rest were forwarded);
2 bad configuration or usage, or a machine it cannot run on (a state path it
cannot use, a full disk, a missing extra, an unreadable certificate or secret file);
3 another run holds the state lock.
"""
CONFIG_HELP = "config file (default: ./defender-forwarder.toml or $DEFENDER_FORWARDER_CONFIG)"
LOG_LEVELS = ["debug", "info", "warning", "error"]  # the config's forwarder.log_level
OUTPUTS = ["table", "json"]  # core.app.output.OUTPUTS, not imported: `--help` stays light
SHELLS = ["bash", "zsh", "fish"]
OUTPUT_HELP = "table (default: for people) or json (one JSON document on stdout, for scripts)"


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name. The main parser holds the
    defaults; a command's parser leaves an option it was not given unset (SUPPRESS), so that
    `--config x run` is not undone by the command's own default."""
    default: Any = argparse.SUPPRESS if suppress else None
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--config", metavar="FILE", default=default, help=CONFIG_HELP)
    options.add_argument("--log-level", choices=LOG_LEVELS, default=default,
                         help="overrides the config's forwarder.log_level")
    return options


class _Version(argparse.Action):
    """`--version`, worked out only when asked: `--help` and every command stay fast."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> NoReturn:
        print(f"defender-forwarder {version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defender-forwarder", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[_global_options(suppress=False)],
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = _add(commands, "run", "poll every tenant and deliver; a daemon loop, or one cycle with --once (cron)",
               listing=True)
    run.add_argument("--once", action="store_true", help="one poll cycle, drain, exit")
    run.add_argument("--metrics-file", metavar="PATH", type=Path,
                     help="with --once: write the metrics there for node_exporter's textfile collector")
    convert = _add(commands, "convert", "convert saved alerts or incidents to an output format on stdout")
    convert.add_argument("--source", choices=list(SOURCES), default="graph",
                         help="shape of the input: graph (alerts_v2 alerts), graph_incidents, mde or mde_alerts "
                              "(Defender for Endpoint /api/alerts) (default graph)")
    convert.add_argument("--format", required=True, help="ocsf | ecs | cim | raw | cef | alert")
    convert.add_argument("--tenant-label", default="convert", help="customer label to stamp on the output")
    convert.add_argument("--ingested", metavar="TIME", help="when the alerts count as read, ISO 8601 "
                         "(default: each alert's lastUpdateDateTime, so the same input gives the same output)")
    convert.add_argument("file", nargs="?", default="-", help="Graph list response, one alert or incident, or NDJSON (- = stdin)")
    _add(commands, "validate", "check the config offline: no network, no state, secret references by syntax only")
    _add(commands, "check", "validate config, get a token per tenant, read one alert, probe every sink", listing=True)
    _add(commands, "tenants", "per tenant: cursor, lag, last success, last error, outbox depth per sink", listing=True)
    backfill = _add(commands, "backfill", "re-read history since a date and forward it, with a progress bar",
                    listing=True)
    backfill.add_argument("--since", required=True, help="ISO date or time, e.g. 2026-11-01 or 2026-11-01T12:00Z")
    backfill.add_argument("--tenant", help="one tenant label (default: every tenant)")
    backfill.add_argument("--source", choices=list(KINDS),
                          help="one source kind (default: every source each tenant reads)")
    backfill.add_argument("--resend", action="store_true",
                          help="send again the versions already taken (default: only what the sinks have not had)")
    dead = _add(commands, "dead-letters", "inspect, re-send or drop rejected events", listing=True)
    dead.add_argument("action", choices=["list", "show", "replay", "drop"])
    dead.add_argument("ident", nargs="?", type=int, metavar="ID", help="show: the dead letter to print")
    dead.add_argument("--sink", help="only this sink's dead letters")
    dead.add_argument("--id", type=int, action="append", dest="ids", help="only this dead letter (repeatable)")
    dead.add_argument("--all", action="store_true", help="drop: every dead letter (asks first, unless --yes)")
    dead.add_argument("--yes", action="store_true", help="drop --all: do not ask")
    _add_setup(commands)
    _add_onboarding(commands)
    consent = _add(commands, "consent-url", "print the admin-consent URL a customer opens to grant access")
    consent.add_argument("--tenant", required=True, help="tenant label from the config")
    _add_splunk_app(commands)
    _add_state(commands)
    completion = commands.add_parser(
        "completion", help="print the shell's tab-completion code: eval \"$(defender-forwarder completion bash)\"",
        description="print the tab-completion code for a shell; e.g. in ~/.bashrc: "
                    "eval \"$(defender-forwarder completion bash)\"")
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    return parser


def _add_onboarding(commands: Any) -> None:
    """`init` (a starter config) and `app certificate` (the app registration's credential)."""
    init = _add(commands, "init", "write a commented starter config from flags, or from a few questions on a terminal")
    init.add_argument("--client-id", help="Application (client) ID of the MSSP's multi-tenant app")
    credential = init.add_mutually_exclusive_group()
    credential.add_argument("--certificate", metavar="PATH", help="PEM with the private key and the certificate")
    credential.add_argument("--client-secret-env", metavar="NAME",
                            help="environment variable that holds the client secret (never the secret itself)")
    init.add_argument("--tenant", action="append", default=[], metavar="LABEL=TENANT_ID",
                      help="a customer: its label and tenant GUID or verified domain (repeatable)")
    init.add_argument("--sink", default="file", metavar="TYPE",
                      help="file | syslog | splunk_hec | elasticsearch | eventhub (default file)")
    init.add_argument("--out", metavar="FILE", help="where to write (default: ./defender-forwarder.toml)")
    init.add_argument("--force", action="store_true", help="replace an existing file")
    app = _add(commands, "app", "the MSSP app registration's credential: app certificate")
    actions = app.add_subparsers(dest="action", required=True, metavar="ACTION")
    cert = actions.add_parser("certificate", help="create a private key and a self-signed certificate to upload",
                              description="create a private key and a self-signed certificate to upload",
                              parents=[_global_options(suppress=True)])
    cert.add_argument("--out", metavar="DIR", required=True, help="folder for NAME.key, NAME.cer and NAME.pem")
    cert.add_argument("--name", default="mssp", help="file names and certificate subject (default mssp)")
    cert.add_argument("--days", type=int, default=730, help="validity in days (default 730)")
    cert.add_argument("--force", action="store_true", help="replace an existing private key")


def _add_state(commands: Any) -> None:
    """`state migrate` and `state copy`: the PostgreSQL state store's schema and moving into it."""
    state = _add(commands, "state", "the PostgreSQL state store: state migrate | state copy")
    actions = state.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("migrate", help="apply the pending schema migrations to the PostgreSQL database of "
                       "[forwarder] state", description="apply the pending schema migrations to the PostgreSQL "
                       "database [forwarder] state names (one transaction; safe to run again)",
                       parents=[_global_options(suppress=True)])
    copy = actions.add_parser(
        "copy", help="copy a SQLite state into an empty PostgreSQL database",
        description="copy a SQLite state (cursors, seen versions, outboxes, dead letters, everything) into an "
                    "empty PostgreSQL database, migrated first, in one transaction; then count both sides",
        parents=[_global_options(suppress=True)])
    copy.add_argument("--from", dest="source", required=True, metavar="sqlite:PATH",
                      help="the SQLite state file (stop the forwarder that uses it first)")
    copy.add_argument("--to", dest="target", metavar="postgresql://USER@HOST/DB",
                      help="the database (default: [forwarder] state); reached with [forwarder.postgresql]'s keys")


def _add_splunk_app(commands: Any) -> None:
    """`splunk-app build`: the Splunk add-on package."""
    splunk_app = _add(commands, "splunk-app", "the Splunk add-on TA-defender-forwarder: splunk-app build")
    actions = splunk_app.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = actions.add_parser(
        "build", help="build TA-defender-forwarder-<version>.tgz, the add-on Splunk installs",
        description="build TA-defender-forwarder-<version>.tgz: the modular input with this package and its "
                    "dependencies vendored, the CIM props, eventtypes and tags, and the dashboard",
        parents=[_global_options(suppress=True)])
    build.add_argument("--output", metavar="DIR", default=".", help="where to write the package (default .)")
    build.add_argument("--target", action="append", metavar="PYTHON-MACHINE",
                       help="a Python and machine splunkd runs the input with, whose compiled dependencies the "
                            "package carries (repeatable; default 3.13-x86_64 and 3.13-aarch64: Splunk "
                            "Enterprise 10.x and Splunk Cloud); `current`: this interpreter's, copied offline")
    build.add_argument("--wheels", metavar="DIR",
                       help="take the compiled dependencies' wheels from DIR instead of the package index")


def _add_setup(commands: Any) -> None:
    """`setup TYPE`, for each sink type that offers it, with the options each declares in the
    registry (read without importing any connector). An option left out is None here: the
    command fills in the default of the type named."""
    offers = setup_offers()
    prepares = "; ".join(f"for {sink_type}, {offer.prepares}" for sink_type, offer in offers.items())
    setup = _add(commands, "setup", f"install what a destination needs: {prepares}")
    setup.add_argument("target", choices=list(offers))
    setup.add_argument("--sink", help=f"the {' or '.join(offers)} sink to set up (default: every one in the config)")
    options = {option.name: option for offer in offers.values() for option in offer.options}
    for option in options.values():
        setup.add_argument("--" + option.name.replace("_", "-"), help=option.help)
    setup.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")


def _add(commands: Any, name: str, text: str, listing: bool = False) -> argparse.ArgumentParser:
    # `convert` takes the global options too (and reads no config): one rule for every command.
    parents = [_global_options(suppress=True)] + ([_output_option()] if listing else [])
    return commands.add_parser(name, help=text, description=text, parents=parents)


def _output_option() -> argparse.ArgumentParser:
    """`--output`, on the commands that print a listing (a table or the run summary) only: on
    any other command it would be accepted and do nothing."""
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument("--output", choices=OUTPUTS, default="table", help=OUTPUT_HELP)
    return option


def main(argv: list[str] | None = None) -> NoReturn:
    parser = build_parser()
    if "_ARGCOMPLETE" in os.environ:
        # The shell asks for completions (the code `completion` prints): argcomplete answers
        # on its own channel and exits. Imported only then, so every other start stays light.
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(argv)
    from core.app import commands  # here, not at the top: `--help` must not pay for its imports

    handler: Callable[[argparse.Namespace], int] = getattr(commands, "cmd_" + args.command.replace("-", "_"))
    sys.exit(handler(args))


if __name__ == "__main__":
    main()
