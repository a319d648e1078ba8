"""The work behind each CLI command."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape

from core.app import output as output_
from core.app.config import (
    Config,
    ConfigError,
    apps_in_use,
    config_path,
    is_postgresql,
    load_config,
    secret_refs,
    unresolved_secrets,
    unrouted_sources,
)
from core.app.logs import setup_logging
from core.app.runtime import (
    EXIT_CONFIG,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_PARTIAL,
    CommandFailed,
    once_exit_code,
    open_state,
    preflight,
)
from core.model import jsonutil
from core.model.secrets import REDACTOR, SecretRef, SecretUnavailable
from core.state import StateError, StateLocked
from core.state.sqlite import SQLiteStore, StateLock

log = logging.getLogger("defender_forwarder")
err_console = Console(stderr=True, highlight=False)
WAIT_REFRESH = 0.25  # seconds between updates of what a run on a terminal waits for


def _fail(message: str, code: int) -> int:
    # Escaped: a message names TOML tables (`[apps.mssp2]`) and extras ('defender-forwarder[elastic]'),
    # which rich would take for markup and drop.
    err_console.print(f"[bold red]error:[/] {escape(REDACTOR.redact(message))}", markup=True, soft_wrap=True)
    return code


def _load(args: argparse.Namespace) -> Config:
    try:
        config = load_config(config_path(getattr(args, "config", None)))
    except ConfigError as err:
        raise CommandFailed("invalid configuration:\n  " + "\n  ".join(err.problems), EXIT_CONFIG) from None
    # --log-level, before or after the command, overrides the config for this one command.
    setup_logging(getattr(args, "log_level", None) or config.forwarder.log_level,
                  config.forwarder.log_format == "json")
    for warning in config._literal_secret_warnings:
        log.warning("%s", warning)
    return config


def _need_secrets(config: Config, apps: list[str], sinks: list[str], notify: bool = False) -> None:
    """Resolve up front the secrets a command will use, so that a missing one stops it before
    anything starts, every one named; the others stay unread."""
    problems = unresolved_secrets(secret_refs(config, apps, sinks, notify))
    if problems:
        raise CommandFailed("a secret this command needs cannot be read:\n  " + "\n  ".join(problems), EXIT_CONFIG)


def _need_run_secrets(config: Config) -> None:
    """What polling, delivering and notifying use: the apps of the enabled tenants, every sink, [notify]."""
    _need_secrets(config, apps_in_use(config), list(config.sinks), notify=True)


def _http_endpoint(config: Config) -> tuple[Any, ssl.SSLContext | None]:
    """The daemon endpoint's credentials and TLS context, or (None, None) without one: its
    secrets read and its certificate loaded now, so that a missing one stops the command
    before anything starts, in one line naming the key."""
    from core.app.http import Credentials, TlsFilesFailed, server_ssl_context

    http = config.forwarder.http
    if http is None:
        return None, None
    refs = [ref for ref in (http.bearer_token, http.password) if isinstance(ref, SecretRef)]
    problems = unresolved_secrets(refs)
    if problems:
        raise CommandFailed("a secret this command needs cannot be read:\n  " + "\n  ".join(problems), EXIT_CONFIG)
    credentials = None
    if http.authenticated:
        credentials = Credentials(
            bearer_token=http.bearer_token.get_secret_value() if http.bearer_token is not None else None,
            username=http.username,
            password=http.password.get_secret_value() if http.password is not None else None,
        )
    try:
        context = server_ssl_context(http.tls_cert_file, http.tls_key_file) if http.tls_cert_file else None
    except TlsFilesFailed as err:
        raise CommandFailed(str(err), EXIT_CONFIG) from None
    return credentials, context


def _guarded(func: Any) -> Any:
    """Turn the expected failures of a command into a clear line and its exit code."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandFailed as err:
            return _fail(str(err), err.code)
        except SecretUnavailable as err:  # read on first use, where no command resolved it up front
            return _fail(str(err), EXIT_CONFIG)
        except StateError as err:  # the state store went away mid-command (a database restart)
            return _fail(f"forwarder.state: {err}", EXIT_PARTIAL)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_PARTIAL)

    return wrapper


# ---- run / backfill ---------------------------------------------------------------
@_guarded
def cmd_run(args: argparse.Namespace) -> int:
    from core.app.pipeline import Forwarder

    if args.output == "json" and not args.once:
        # The daemon prints no summary to format: its cycle lines are in the log.
        raise CommandFailed("--output json: the daemon prints no summary (each cycle is a log line); "
                            "use it with run --once", EXIT_CONFIG)
    if args.metrics_file is not None and not args.once:
        raise CommandFailed("--metrics-file is for run --once (cron); the daemon serves /metrics: set "
                            "[forwarder.http] listen", EXIT_CONFIG)
    config = _load(args)
    _need_run_secrets(config)
    preflight(config)
    with open_state(config) as store:
        if args.once:
            return asyncio.run(_once(Forwarder(config, store), output=args.output, metrics_file=args.metrics_file))
        asyncio.run(_forever(Forwarder(config, store), *_http_endpoint(config)))
    return EXIT_OK


async def _once(forwarder: Any, since: datetime | None = None, only: str | None = None,
                output: str = "table", metrics_file: Path | None = None) -> int:
    started = time.time()
    async with forwarder:
        async with _showing_the_wait(forwarder):
            results = await forwarder.run_once(since, only)
        if metrics_file is not None:  # while the forwarder is open: its state gauges are read now
            from core.app.metrics import write_textfile

            try:
                write_textfile(metrics_file)
            except OSError as err:
                log.error("--metrics-file %s: cannot write it (%s)", metrics_file, err.strerror or err)
    _print_summary(results, forwarder, output)
    forwarder.warn_of_dead_letters(since=started)
    return once_exit_code(results, forwarder)


@contextlib.asynccontextmanager
async def _showing_the_wait(forwarder: Any) -> Any:
    """On a terminal, a spinner on stderr saying what the run waits for (a sink retrying, the
    events still waiting): a long `run --once` must not look hung. Elsewhere (cron, a pipe)
    nothing is added to the output."""
    if not err_console.is_terminal:
        yield
        return
    with err_console.status(_waiting_for(forwarder)) as status:
        async def follow() -> None:
            while True:
                await asyncio.sleep(WAIT_REFRESH)
                status.update(_waiting_for(forwarder))

        task = asyncio.create_task(follow())
        try:
            yield
        finally:
            task.cancel()


def _waiting_for(forwarder: Any) -> str:
    """`waiting for sink siem: 12 events, retrying: <why>`, or the tenants being read."""
    parts = []
    for name, worker in forwarder.workers.items():
        pending = forwarder.store.outbox_depth(name)
        if pending and not worker.fatal:
            why = f", retrying: {REDACTOR.redact(worker.last_error)}" if worker.last_error else ""
            parts.append(f"sink {name}: {pending} events{why}")
    if not parts:
        return f"reading {len(forwarder.readers)} tenants"
    return escape("waiting for " + "; ".join(parts))


async def _forever(forwarder: Any, credentials: Any = None, ssl_context: ssl.SSLContext | None = None) -> None:
    from core.app.http import ListenFailed, StatusServer
    from core.app.status_routes import add_status_routes

    async with contextlib.AsyncExitStack() as stack:
        http = forwarder.settings.http
        if http is not None:
            # Before the first poll: a port already taken stops the daemon now, with exit 2.
            try:
                await stack.enter_async_context(StatusServer(
                    http.listen, lambda app: add_status_routes(app, forwarder), credentials, ssl_context))
            except ListenFailed as err:
                raise CommandFailed(str(err), EXIT_CONFIG) from None
            log.info("serving the status page, /metrics, /healthz, /readyz and /api/status on %s", http.url)
            if http.allow_unauthenticated and not http.loopback:
                log.warning("forwarder.http: %s serves the status of every tenant WITHOUT authentication "
                            "(allow_unauthenticated = true): anyone who reaches it can read it", http.url)
        await stack.enter_async_context(forwarder)
        log.info("forwarding %d tenants to %d sinks", len(forwarder.readers), len(forwarder.workers))
        await forwarder.run_forever()


def _print_summary(results: list[Any], forwarder: Any, output: str) -> None:
    """The run summary: a JSON object on stdout with --output json; else two tables on stderr,
    unless the logs are JSON lines (the cycle's log line says it there: no table in a log stream)."""
    tenants = [_tenant_summary(r) for r in sorted(results, key=lambda r: r.label)]
    sinks = [_sink_summary(name, worker, forwarder) for name, worker in forwarder.workers.items()]
    if output == "json":
        output_.print_json({"tenants": _plain_status(tenants), "sinks": _plain_status(sinks)})
    elif forwarder.config.forwarder.log_format != "json":
        err = output_.console(stderr=True)
        err.print(output_.table("defender-forwarder: this cycle", SUMMARY_TENANT_COLUMNS, tenants))
        err.print(output_.table("sinks", SUMMARY_SINK_COLUMNS, sinks))


SUMMARY_TENANT_COLUMNS = [
    output_.keyed("tenant"), output_.keyed("read", right=True), output_.keyed("new_versions", right=True),
    output_.keyed("duplicates", right=True), output_.Column("held back", lambda row: _held_back(row["held_back"], "0")),
    output_.keyed("dead_letters", right=True), output_.keyed("status"),
]
SUMMARY_SINK_COLUMNS = [
    output_.keyed("sink"), output_.keyed("delivered", right=True), output_.keyed("dead_letters", right=True),
    output_.keyed("pending", right=True), output_.keyed("status"),
]


def _tenant_summary(r: Any) -> dict[str, Any]:
    # Escaped: an error names keys in brackets ([apps.mssp]) that are text, not markup.
    status = "[red]" + escape(r.error) + "[/]" if r.error else ("paused (outbox full)" if r.paused else "[green]ok[/]")
    return {"tenant": r.label, "tenant_id": r.tenant_id, "read": r.read, "new_versions": r.queued,
            "duplicates": r.duplicates, "held_back": dict(sorted(r.held_back.items())), "dead_letters": r.dead,
            "status": status}


def _sink_summary(name: str, worker: Any, forwarder: Any) -> dict[str, Any]:
    pending = forwarder.store.outbox_depth(name)
    status = _sink_status(worker, pending)
    altered = ", ".join(f"{count} {kind}" for kind, count in worker.connector.counters.items() if count)
    if altered:
        status += f" ({altered})"
    return {"sink": name, "delivered": worker.stats.delivered, "dead_letters": worker.stats.dead,
            "pending": pending, "status": status}


def _plain_status(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with the status as plain text: the colours are the table's, not the data's."""
    from rich.text import Text

    return [{**row, "status": Text.from_markup(row["status"]).plain} for row in rows]


def _sink_status(worker: Any, pending: int) -> str:
    """A sink's real state at the end of a run: `ok` only when nothing it could not deliver is
    waiting; a sink still failing says since when, why, and how many events wait."""
    if worker.fatal:
        return f"[red]stopped: {escape(REDACTOR.redact(worker.fatal))}[/]"
    if pending and worker.deferred_until is not None:
        return "[green]ok[/] (the pending wait for their digest or rate limit)"
    if pending and worker.failing_since is not None:
        since = datetime.fromtimestamp(worker.failing_since, timezone.utc).strftime("%H:%M:%S UTC")
        why = escape(REDACTOR.redact(worker.last_error or "unknown"))
        return f"[red]retrying since {since}: {why}; {pending} waiting[/]"
    if pending:
        return f"[yellow]{pending} waiting[/]"
    return "[green]ok[/]"


def _held_back(counts: dict[str, int], none: str) -> str:
    """`4 below min_severity, 2 service source not routed`: why alerts no route took stayed here."""
    return ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()) if count) or none


@_guarded
def cmd_backfill(args: argparse.Namespace) -> int:
    from rich.progress import Progress

    from core.app.pipeline import Forwarder

    since = _parse_since(args.since)
    config = _load(args)
    if args.tenant and args.tenant not in config.tenants:
        raise CommandFailed(f"--tenant: no tenant labelled {args.tenant!r} in the config", EXIT_CONFIG)
    _need_run_secrets(config)
    preflight(config)
    # JSON log lines are the stream a SIEM reads: no progress bar drawn into it.
    with open_state(config) as store, Progress(console=err_console, transient=False,
                                           disable=config.forwarder.log_format == "json") as progress:
        forwarder = Forwarder(config, store)
        forwarder.resend = args.resend
        labels = [args.tenant] if args.tenant else [label for label, t in config.tenants.items() if t.enabled]
        if args.source:
            labels = _reading(config, labels, args.source)
            forwarder.sources = {args.source}
        tasks = {label: progress.add_task(f"{label}: alerts read", total=None) for label in labels}
        forwarder.on_page = lambda label, n: progress.advance(tasks[label], n)
        return asyncio.run(_once(forwarder, since, labels[0] if len(labels) == 1 else None, args.output))


def _reading(config: Any, labels: list[str], source: str) -> list[str]:
    """Those of `labels` whose tenant reads `source`; none is a mistake of the command line."""
    reading = [label for label in labels if source in config.tenants[label].sources]
    if not reading:
        which = f"tenants.{labels[0]}" if len(labels) == 1 else "no tenant"
        raise CommandFailed(f"--source: {which} reads {source}; add it to the tenant's `sources`", EXIT_CONFIG)
    return reading


def _parse_since(text: str) -> datetime:
    return _parse_time_option("--since", text)


def _parse_time_option(option: str, text: str) -> datetime:
    """An ISO 8601 date or time given on the command line (UTC where it has no offset)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandFailed(f"{option}: {text!r} is not an ISO date such as 2026-11-01",
                            EXIT_CONFIG) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


# ---- convert ------------------------------------------------------------------------
@_guarded
def cmd_convert(args: argparse.Namespace) -> int:
    from mappings import FormatNotAvailable, encoder, normaliser

    try:
        encode = encoder(args.format)
    except FormatNotAvailable as err:
        raise CommandFailed(f"--format: {err}", EXIT_CONFIG) from None
    normalise = normaliser(args.source)
    ingested = _parse_time_option("--ingested", args.ingested) if args.ingested else None
    time_property = _time_property(args.source)
    data = sys.stdin.buffer.read() if args.file == "-" else _read_file(args.file)
    failures = 0
    out = sys.stdout.buffer
    for where, alert in _alerts_in(data):
        try:
            out.write(encode(_convert_one(normalise, alert, args.tenant_label, ingested or _time_in(alert, time_property)))
                      + b"\n")
        except Exception as err:  # noqa: BLE001 - one bad alert must not stop the others
            failures += 1
            err_console.print(f"error: {where}: {err}", markup=False, soft_wrap=True)
    out.flush()
    return EXIT_PARTIAL if failures else EXIT_OK


def _read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise CommandFailed(f"{path}: {err.strerror}", EXIT_CONFIG) from None


def _convert_one(normalise: Any, raw: Any, label: str, ingested: datetime) -> Any:
    from core.model.schema import TenantRef

    if isinstance(raw, ValueError):
        raise raw
    tenant_id = raw.get("tenantId") if isinstance(raw, dict) and isinstance(raw.get("tenantId"), str) else ""
    return normalise(raw, TenantRef(id=tenant_id or "unknown", label=label), ingested)


def _time_property(source: str) -> str:
    """The property whose time makes a version of `convert --source` records (lastUpdateDateTime
    for Graph alerts): the source kind whose mapping reads that shape says it (every shape
    `convert` reads is a registered kind's; tests/sources/test_registry.py checks it)."""
    from core.sources import KINDS
    from mappings import SOURCES

    return next(kind.version.time for kind in KINDS.values() if kind.mapping == SOURCES[source])


def _time_in(raw: Any, time_property: str) -> datetime:
    """The record's own version time, for its ingestion time: `convert` writes the same bytes
    for the same input every time. (A record without one is refused by normalise.)"""
    from core.model.checks import InvalidValue
    from core.model.times import parse_timestamp

    try:
        return parse_timestamp(raw.get(time_property) if isinstance(raw, dict) else None)
    except InvalidValue:
        return datetime(1970, 1, 1, tzinfo=timezone.utc)


def _alerts_in(data: bytes) -> Iterator[tuple[str, Any]]:
    """Alerts of a list response, one alert object, or NDJSON, each with where it came from."""
    try:
        whole = jsonutil.loads(data)
    except ValueError:
        yield from _ndjson(data)
        return
    if isinstance(whole, dict) and isinstance(whole.get("value"), list):
        yield from ((f"value[{i}] (id {_id(a)})", a) for i, a in enumerate(whole["value"]))
    elif isinstance(whole, list):
        yield from ((f"[{i}] (id {_id(a)})", a) for i, a in enumerate(whole))
    else:
        yield f"alert (id {_id(whole)})", whole


def _ndjson(data: bytes) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            alert = jsonutil.loads(line)
        except ValueError as err:
            yield f"line {number}", ValueError(f"not JSON: {err}")
            continue
        if isinstance(alert, dict) and isinstance(alert.get("value"), list):
            # A saved list response per line (how Elastic's fixtures store pages).
            yield from ((f"line {number} value[{i}] (id {_id(a)})", a) for i, a in enumerate(alert["value"]))
        else:
            yield f"line {number} (id {_id(alert)})", alert


def _id(alert: Any) -> str:
    return str(alert.get("id")) if isinstance(alert, dict) else "?"


# ---- validate / check / tenants / consent-url ------------------------------------------
@_guarded
def cmd_validate(args: argparse.Namespace) -> int:
    """The parsing every command does, so every check of the config, and nothing more: no
    state, no network, no secret read (a reference is checked for its syntax only)."""
    config = _load(args)
    _warn_of_unrouted_sources(config)
    routes = _count(len(config.routes), "route") + ("" if config.routes else " (every tenant to every sink)")
    print(f"valid: {_count(len(config.tenants), 'tenant')}, {_count(len(config.sinks), 'sink')}, {routes}")
    return EXIT_OK


def _warn_of_unrouted_sources(config: Config) -> None:
    for warning in unrouted_sources(config):
        log.warning("%s", warning)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@_guarded
def cmd_check(args: argparse.Namespace) -> int:
    from core.app.pipeline import Forwarder

    config = _load(args)
    _need_run_secrets(config)
    preflight(config)
    _http_endpoint(config)  # what the daemon would serve with: its secrets and TLS files
    _warn_of_unrouted_sources(config)
    # With JSON logs stderr is a log stream: what check says goes there as log lines, its table to stdout.
    json_logs = config.forwarder.log_format == "json"
    if json_logs:
        log.info("configuration %s: valid", config_path(args.config))
    else:
        err_console.print(f"configuration {config_path(args.config)}: [green]valid[/]")
    with open_state(config, lock=False) as store:
        results = asyncio.run(_check(Forwarder(config, store)))
    rows = [{"what": kind, "name": name, "ok": ok, "result": text} for kind, name, ok, text in results]
    output_.show(args.output, "check", CHECK_COLUMNS, rows, stderr=not json_logs)
    return EXIT_OK if all(row["ok"] for row in rows) else EXIT_PARTIAL


CHECK_COLUMNS = [
    output_.keyed("what"), output_.keyed("name"),
    output_.Column("result", lambda row: ("[green]ok[/] " if row["ok"] else "[red]FAILED[/] ") + escape(row["result"])),
]


async def _check(forwarder: Any) -> list[tuple[str, str, bool, str]]:
    async with forwarder:
        # A row per (tenant, source kind); named by the tenant alone when it reads one kind.
        tenants = await asyncio.gather(*(
            _probe("tenant", label if len(readers) == 1 else f"{label} ({kind})", reader.probe())
            for label, readers in forwarder.readers.items() for kind, reader in readers.items()
        ))
        sinks = await asyncio.gather(*(_probe("sink", n, w.connector.probe()) for n, w in forwarder.workers.items()))
    return [*tenants, *sinks]


async def _probe(kind: str, name: str, probe: Any) -> tuple[str, str, bool, str]:
    try:
        return kind, name, True, await probe
    except Exception as err:  # noqa: BLE001 - check reports every failure, whatever its kind
        return kind, name, False, REDACTOR.redact(str(err))


@_guarded
def cmd_tenants(args: argparse.Namespace) -> int:
    config = _load(args)
    with open_state(config, lock=False) as store:
        rows = _tenant_rows(config, store)
        shared = store.shared
    output_.show(args.output, f"tenants (state {config.forwarder.state})", _tenant_columns(config, shared), rows)
    return EXIT_OK


def _tenant_rows(config: Config, store: SQLiteStore) -> list[dict[str, Any]]:
    """One row per tenant of the config: the status model's rows (`core.app.status`), the same
    the daemon's `/api/status` and status page show."""
    from dataclasses import asdict

    from core.app.status import tenant_rows

    return [asdict(row) for row in tenant_rows(config, store)]


def _tenant_columns(config: Config, shared: bool = False) -> list[output_.Column]:
    """The table's columns; `shared`: the state is shared by instances, which one holds each tenant."""
    instance = [output_.Column("instance", lambda row: escape(row["instance"] or "-"))] if shared else []
    return [
        output_.keyed("tenant"),
        output_.keyed("tenant_id"),
        output_.Column("health", lambda row: HEALTH_COLOURS.get(row["health"], "{}").format(row["health"])),
        output_.Column("sources", _sources_cell),
        output_.Column("cursor", lambda row: _shown_time(row["cursor"])),
        output_.Column("lag", lambda row: _age(row["lag_seconds"])),
        output_.Column("last success", lambda row: _shown_time(row["last_success"])),
        output_.Column("last error", lambda row: escape(row["last_error"] or "-")),
        output_.Column("held back", lambda row: _held_back(row["held_back"], "-")),
        *instance,
        *(output_.Column(sink, lambda row, sink=sink: str(row["outbox"][sink])) for sink in config.sinks),
    ]


def _sources_cell(row: dict[str, Any]) -> str:
    """Each source of the tenant with its health and its last success: `graph_alerts ok 12:00:00`."""
    return "\n".join(
        f"{escape(s['source'])} " + HEALTH_COLOURS.get(s["health"], "{}").format(s["health"])
        + f" {_shown_time(s['last_success'])}" for s in row["per_source"])


def _shown_time(iso: str | None) -> str:
    """An ISO time of a row as the table shows it: `2026-11-30 12:00:00` (UTC)."""
    return iso.replace("T", " ").removesuffix("Z") if iso else "-"


def _age(seconds: int | None) -> str:
    from core.app.status import age

    return age(seconds)


HEALTH_COLOURS = {"ok": "[green]{}[/]", "degraded": "[yellow]{}[/]", "failing": "[red]{}[/]"}


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    print(argcomplete.shellcode(["defender-forwarder"], shell=args.shell), end="")
    return EXIT_OK


@_guarded
def cmd_consent_url(args: argparse.Namespace) -> int:
    from core.sources.auth import consent_url

    config = _load(args)
    tenant = config.tenants.get(args.tenant)
    if tenant is None:
        raise CommandFailed(f"--tenant: no tenant labelled {args.tenant!r} in the config", EXIT_CONFIG)
    if tenant.app is None:
        raise CommandFailed(f"tenants.{args.tenant}: a replay tenant has no app to consent to", EXIT_CONFIG)
    print(consent_url(config.apps[tenant.app], tenant.tenant_id))
    # The consent grants what the app registration asks for: it must ask for the permission of
    # each source the tenant reads (on stderr: stdout stays the URL alone, for scripts).
    err_console.print(escape(f"tenants.{args.tenant} reads {', '.join(tenant.sources)}: app "
                             f"{config.apps[tenant.app].client_id} needs {_permissions(tenant.sources)}"),
                      soft_wrap=True)
    return EXIT_OK


def _permissions(sources: list[str]) -> str:
    """The application permissions `sources` need, each with the sources that need it."""
    from core.sources import KINDS

    needed: dict[str, list[str]] = {}
    for name in dict.fromkeys(sources):
        permission = KINDS[name].permission
        needed.setdefault(f"{permission.api} {permission.name}", []).append(name)
    return ", ".join(f"{permission} ({', '.join(names)})" for permission, names in needed.items())


# ---- setup ------------------------------------------------------------------------------
@_guarded
def cmd_setup(args: argparse.Namespace) -> int:
    from connectors import connector_class

    config = _load(args)
    target = args.target
    options = _setup_options(args, target)
    sinks = {name: sink for name, sink in config.sinks.items() if sink.type == target}
    if args.sink is not None:
        if args.sink not in sinks:
            raise CommandFailed(f"--sink: no {target} sink named {args.sink!r} in the config", EXIT_CONFIG)
        sinks = {args.sink: sinks[args.sink]}
    if not sinks:
        raise CommandFailed(f"the config has no sink of type {target}", EXIT_CONFIG)
    if not args.dry_run:
        _need_secrets(config, [], list(sinks))
    for name, sink in sinks.items():
        plan = connector_class(target).setup(sink, options)
        if plan is not None:
            plan.proxy = config.forwarder.proxy
        if plan is None:
            err_console.print(f"sink {name}: nothing to prepare")
        elif args.dry_run:
            print(plan.describe())
        else:
            try:
                lines = asyncio.run(plan.apply())
            except Exception as err:  # noqa: BLE001 - the destination's refusal, whatever its kind, is the message
                raise CommandFailed(f"sink {name}: {type(err).__name__}: {err}", EXIT_PARTIAL) from None
            for line in lines:
                err_console.print(f"sink {name}: {line}")
    return EXIT_OK


def _setup_options(args: argparse.Namespace, target: str) -> dict[str, str]:
    """The setup options of sink type `target`, defaults filled in; an option of another
    type's setup is a usage error."""
    from connectors import setup_offers

    offers = setup_offers()
    own = {option.name: option for option in offers[target].options}
    for offer in offers.values():
        for option in offer.options:
            if option.name not in own and getattr(args, option.name) is not None:
                raise CommandFailed(f"--{option.name.replace('_', '-')}: not an option of setup {target}", EXIT_CONFIG)
    return {name: option.default if getattr(args, name) is None else getattr(args, name)
            for name, option in own.items()}


# ---- dead letters ----------------------------------------------------------------------
@_guarded
def cmd_dead_letters(args: argparse.Namespace) -> int:
    from core.app import dead_letters

    if args.action != "list" and args.output == "json":
        # replay and drop print a count, not a listing: a script must not wait for a document.
        raise CommandFailed(f"--output json: only dead-letters list prints a listing, not {args.action}", EXIT_CONFIG)
    config = _load(args)
    if (args.action == "show") != (args.ident is not None):
        raise CommandFailed("dead-letters show ID prints one dead letter; list, replay and drop pick some with "
                            "--sink and --id", EXIT_CONFIG)
    with open_state(config) as store:
        chosen = _chosen_dead_letters(config, store, args)
        labels = dead_letters.labels_of(config)
        if args.action == "show":
            print(dead_letters.describe(chosen[0], labels))
            return EXIT_OK
        if args.action == "list":
            output_.show(args.output, f"{len(chosen)} dead letters", dead_letters.COLUMNS, dead_letters.rows(chosen, labels))
            return EXIT_OK
        if args.action == "drop":
            _confirm_drop(args, len(chosen))
            store.dead_letters_remove(d.id for d in chosen)
            err_console.print(f"dropped {len(chosen)} dead letters")
            return EXIT_OK
        replayed, kept = dead_letters.replay(config, store, chosen)
        err_console.print(f"replayed {replayed} dead letters into the outbox; {kept} still fail and stay")
        return EXIT_OK if not kept else EXIT_PARTIAL


def _chosen_dead_letters(config: Config, store: SQLiteStore, args: argparse.Namespace) -> list[Any]:
    """The dead letters `--sink`, `--id` or `show ID` pick; a name or id that picks nothing is
    an error, so that a typo is not mistaken for "none"."""
    stored = store.dead_letters(args.sink, limit=1_000_000)
    # A sink since removed from the config may still hold dead letters: those can be seen.
    if args.sink is not None and args.sink not in config.sinks and not stored:
        raise CommandFailed(f"--sink: no sink named {args.sink!r} in the config, and no dead letters of one",
                            EXIT_CONFIG)
    wanted = [args.ident] if args.ident is not None else (args.ids or [])
    missing = sorted(set(wanted) - {d.id for d in stored})
    if missing:
        of = f" of sink {args.sink}" if args.sink is not None else ""
        raise CommandFailed(f"no dead letter{of} with id {', '.join(map(str, missing))} "
                            "(defender-forwarder dead-letters list shows them)", EXIT_CONFIG)
    return [d for d in stored if not wanted or d.id in wanted]


def _confirm_drop(args: argparse.Namespace, count: int) -> None:
    """Dropping loses alerts for good: without a filter it takes --all and a yes, typed at a
    terminal or given as --yes (cron and scripts have no terminal to ask)."""
    if args.sink is not None or args.ids:
        return
    if not args.all:
        raise CommandFailed("dead-letters drop: pick some with --sink or --id, or say --all to drop every one",
                            EXIT_CONFIG)
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise CommandFailed(f"dead-letters drop --all would drop all {count} dead letters: add --yes to confirm "
                            "(there is no terminal to ask)", EXIT_CONFIG)
    answer = input(f"drop all {count} dead letters for good? [y/N] ")
    if answer.strip().lower() not in ("y", "yes"):
        raise CommandFailed("nothing dropped", EXIT_CONFIG)


# ---- init / app certificate ----------------------------------------------------------------
@_guarded
def cmd_init(args: argparse.Namespace) -> int:
    from core.app import onboard

    out = Path(args.out) if args.out else Path("defender-forwarder.toml")
    options = onboard.InitOptions(args.client_id or "", Path(args.certificate) if args.certificate else None,
                                  args.client_secret_env, sink=args.sink)
    try:
        options.tenants = [onboard.parse_tenant(value) for value in args.tenant]
        if _no_init_flags(args) and sys.stdin.isatty():
            options = onboard.ask(options, onboard.Prompt())
        onboard.write_config(onboard.render_config(options), out, args.force)
    except onboard.OnboardError as err:
        raise CommandFailed(str(err), EXIT_CONFIG) from None
    except EOFError:
        raise CommandFailed("no answer; nothing written", EXIT_CONFIG) from None
    err_console.print(f"wrote {escape(str(out))}; next: defender-forwarder validate --config {escape(str(out))}")
    return EXIT_OK


def _no_init_flags(args: argparse.Namespace) -> bool:
    return not (args.client_id or args.certificate or args.client_secret_env or args.tenant)


@_guarded
def cmd_app(args: argparse.Namespace) -> int:
    from core.app import onboard

    try:
        files = onboard.make_certificate(Path(args.out), args.name, args.days, args.force)
    except onboard.OnboardError as err:
        raise CommandFailed(str(err), EXIT_CONFIG) from None
    print(f"thumbprint (SHA-1): {files.thumbprint}")
    print(f"upload to the app registration: {files.certificate}")
    print(f"private key (0600): {files.key}")
    print(f'for the config (0600): certificate = "file:{files.combined}"')
    print(f"upload with: az ad app credential reset --id <client id> --cert @{files.certificate} --append")
    return EXIT_OK


def cmd_splunk_app(args: argparse.Namespace) -> int:
    from core.app import splunk_app

    try:
        targets = [splunk_app.Target.parse(text) for text in args.target or splunk_app.DEFAULT_TARGETS]
        package = splunk_app.build(Path(args.output), targets, Path(args.wheels) if args.wheels else None)
    except splunk_app.BuildFailed as err:
        return _fail(str(err), EXIT_CONFIG)
    except OSError as err:
        return _fail(f"--output {args.output}: cannot write the package there: {err.strerror or err}", EXIT_CONFIG)
    print(f"{package} ({', '.join(t.tag for t in targets)})")
    return EXIT_OK


# ---- state migrate / copy -----------------------------------------------------------------------
@_guarded
def cmd_state(args: argparse.Namespace) -> int:
    from core.app.runtime import postgresql_settings

    config = _load(args)
    target = args.target if args.action == "copy" and args.target else config.forwarder.state
    if not is_postgresql(target):
        raise CommandFailed(f"state {args.action}: {'--to' if args.action == 'copy' and args.target else 'forwarder.state'} "
                            "is not a PostgreSQL URL (postgresql://user@host/database)", EXIT_CONFIG)
    try:
        from core.state import postgresql
    except ImportError as err:
        raise CommandFailed(f"state {args.action} needs the postgresql extra, which is not installed ({err}): "
                            "pip install 'defender-forwarder[postgresql]'", EXIT_CONFIG) from None
    settings = postgresql_settings(config, target)
    try:
        applied = postgresql.migrate(settings)
        print(f"{settings.where}: " + ("; ".join(f"applied {step}" for step in applied) if applied
                                       else f"schema {postgresql.SCHEMA_VERSION}, nothing to apply"))
        return _copy_state(args.source, settings) if args.action == "copy" else EXIT_OK
    except postgresql.StateUnavailable as err:
        raise CommandFailed(str(err), EXIT_PARTIAL) from None
    except StateError as err:
        raise CommandFailed(str(err), EXIT_CONFIG) from None


def _copy_state(source: str, settings: Any) -> int:
    from core.state.copy import copy_sqlite_to_postgresql

    if not source.startswith("sqlite:"):
        raise CommandFailed(f"--from {source}: expected sqlite:PATH (the SQLite state file)", EXIT_CONFIG)
    path = Path(source.removeprefix("sqlite:"))
    lock = StateLock(path)
    try:
        lock.acquire()
    except StateLocked as err:
        raise CommandFailed(f"--from {path}: {err}; stop the forwarder that uses it, then copy", EXIT_LOCKED) from None
    try:
        copies = copy_sqlite_to_postgresql(path, settings)
    finally:
        lock.release()
    for copy in copies:
        print(f"{copy.table:<18} sqlite {copy.sqlite_rows:>9,}  postgresql {copy.postgresql_rows:>9,}"
              + ("" if copy.complete else "  MISSING"))
    if not all(copy.complete for copy in copies):
        raise CommandFailed("the copy is incomplete: the counts above differ", EXIT_PARTIAL)
    print(f"copied {sum(c.sqlite_rows for c in copies):,} rows of {len(copies)} tables into {settings.where}; "
          "point [forwarder] state at it")
    return EXIT_OK
