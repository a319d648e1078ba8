"""The work behind each CLI command."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.app.config import (
    Config,
    ConfigError,
    TenantSettings,
    apps_in_use,
    config_path,
    load_config,
    secret_refs,
    unresolved_secrets,
)
from core.app.logs import setup_logging
from core.model import jsonutil
from core.model.secrets import REDACTOR, SecretUnavailable
from core.state import StateError, StateLocked
from core.state.sqlite import SQLiteStore, StateLock

# The documented exit codes (`defender-forwarder --help` lists them).
EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3

log = logging.getLogger("defender_forwarder")
err_console = Console(stderr=True, highlight=False)
WAIT_REFRESH = 0.25  # seconds between updates of what a run on a terminal waits for


class CommandFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> int:
    # Escaped: a message names TOML tables (`[apps.mssp2]`), which rich would take for markup and drop.
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


def _need_secrets(config: Config, apps: list[str], sinks: list[str]) -> None:
    """Resolve up front the secrets a command will use, so that a missing one stops it before
    anything starts, every one named; the others stay unread."""
    problems = unresolved_secrets(secret_refs(config, apps, sinks))
    if problems:
        raise CommandFailed("a secret this command needs cannot be read:\n  " + "\n  ".join(problems), EXIT_CONFIG)


def _need_run_secrets(config: Config) -> None:
    """What polling and delivering use: the apps of the enabled tenants, and every sink."""
    _need_secrets(config, apps_in_use(config), list(config.sinks))


@contextlib.contextmanager
def _state(config: Config, lock: bool = True) -> Iterator[SQLiteStore]:
    path = Path(config.forwarder.state)
    state_lock = StateLock(path)
    if lock:
        try:
            state_lock.acquire()
        except StateLocked as err:
            raise CommandFailed(f"{err}; wait for it to finish or stop it", EXIT_LOCKED) from None
    try:
        store = SQLiteStore(path)
    except StateError as err:
        state_lock.release()
        raise CommandFailed(str(err), EXIT_CONFIG) from None
    try:
        yield store
    finally:
        store.close()
        state_lock.release()


def _guarded(func: Any) -> Any:
    """Turn the expected failures of a command into a clear line and its exit code."""

    def wrapper(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except CommandFailed as err:
            return _fail(str(err), err.code)
        except SecretUnavailable as err:  # read on first use, where no command resolved it up front
            return _fail(str(err), EXIT_CONFIG)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_PARTIAL)

    return wrapper


# ---- run / backfill ---------------------------------------------------------------
@_guarded
def cmd_run(args: argparse.Namespace) -> int:
    from core.app.pipeline import Forwarder

    config = _load(args)
    _need_run_secrets(config)
    with _state(config) as store:
        if args.once:
            return asyncio.run(_once(Forwarder(config, store)))
        asyncio.run(_forever(Forwarder(config, store)))
    return EXIT_OK


async def _once(forwarder: Any, since: datetime | None = None, only: str | None = None) -> int:
    async with forwarder:
        async with _showing_the_wait(forwarder):
            results = await forwarder.run_once(since, only)
    _print_summary(results, forwarder)
    failed = any(r.error for r in results) or any(w.fatal for w in forwarder.workers.values())
    # Rows a sink deferred by design (a digest not due yet) wait for a later run: not a failure.
    pending = sum(forwarder.store.outbox_depth(name) for name, w in forwarder.workers.items()
                  if w.deferred_until is None)
    return EXIT_PARTIAL if failed or pending else EXIT_OK


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


async def _forever(forwarder: Any) -> None:
    async with forwarder:
        log.info("forwarding %d tenants to %d sinks", len(forwarder.readers), len(forwarder.workers))
        await forwarder.run_forever()


def _print_summary(results: list[Any], forwarder: Any) -> None:
    table = Table(title="defender-forwarder: this cycle", title_justify="left")
    for column in ("tenant", "read", "new versions", "duplicates", "held back", "dead letters", "status"):
        table.add_column(column, justify="left" if column in ("tenant", "held back", "status") else "right")
    for r in sorted(results, key=lambda r: r.label):
        status = "[red]" + escape(r.error) + "[/]" if r.error else ("paused (outbox full)" if r.paused else "[green]ok[/]")
        table.add_row(r.label, str(r.read), str(r.queued), str(r.duplicates), _held_back(r.held_back, "0"),
                      str(r.dead), status)
    err_console.print(table)
    sinks = Table(title="sinks", title_justify="left")
    for column in ("sink", "delivered", "dead letters", "pending", "status"):
        sinks.add_column(column, justify="left" if column in ("sink", "status") else "right")
    for name, worker in forwarder.workers.items():
        pending = forwarder.store.outbox_depth(name)
        status = _sink_status(worker, pending)
        altered = ", ".join(f"{count} {kind}" for kind, count in worker.connector.counters.items() if count)
        if altered:
            status += f" ({altered})"
        sinks.add_row(name, str(worker.stats.delivered), str(worker.stats.dead), str(pending), status)
    err_console.print(sinks)


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
    with _state(config) as store, Progress(console=err_console, transient=False) as progress:
        forwarder = Forwarder(config, store)
        forwarder.resend = args.resend
        labels = [args.tenant] if args.tenant else [label for label, t in config.tenants.items() if t.enabled]
        tasks = {label: progress.add_task(f"{label}: alerts read", total=None) for label in labels}
        forwarder.on_page = lambda label, n: progress.advance(tasks[label], n)
        return asyncio.run(_once(forwarder, since, args.tenant))


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
    for Graph alerts): the source kind whose mapping reads that shape says it."""
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
    routes = _count(len(config.routes), "route") + ("" if config.routes else " (every tenant to every sink)")
    print(f"valid: {_count(len(config.tenants), 'tenant')}, {_count(len(config.sinks), 'sink')}, {routes}")
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@_guarded
def cmd_check(args: argparse.Namespace) -> int:
    from core.app.pipeline import Forwarder

    config = _load(args)
    _need_run_secrets(config)
    err_console.print(f"configuration {config_path(args.config)}: [green]valid[/]")
    with _state(config, lock=False) as store:
        rows = asyncio.run(_check(Forwarder(config, store)))
    table = Table(title="check", title_justify="left")
    for column in ("what", "name", "result"):
        table.add_column(column)
    for kind, name, ok, text in rows:
        table.add_row(kind, name, ("[green]ok[/] " if ok else "[red]FAILED[/] ") + text)
    err_console.print(table)
    return EXIT_OK if all(ok for _, _, ok, _ in rows) else EXIT_PARTIAL


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
    with _state(config, lock=False) as store:
        table = _tenant_table(config, store)
    Console(highlight=False).print(table)
    return EXIT_OK


def _tenant_table(config: Config, store: SQLiteStore) -> Table:
    now = datetime.now(timezone.utc)
    statuses, cursors, depths = store.tenant_statuses(), store.cursors(), store.outbox_depths_by_tenant()
    held_back = store.held_back_counts()
    table = Table(title=f"tenants (state {config.forwarder.state})", title_justify="left")
    for column in ("tenant", "tenant id", "cursor", "lag", "last success", "last error", "held back", *config.sinks):
        table.add_column(column, overflow="fold")
    for label, tenant in sorted(config.tenants.items()):
        status = statuses.get(tenant.tenant_id)
        cursor = _tenant_cursor(cursors, tenant)
        table.add_row(
            label,
            tenant.tenant_id,
            cursor.strftime("%Y-%m-%d %H:%M:%S") if cursor else "-",
            _age(now, cursor),
            _when(status.last_success if status else None),
            escape(status.last_error or "-") if status else "-",
            _held_back(held_back.get(tenant.tenant_id, {}), "-"),
            *(str(depths.get((tenant.tenant_id, sink), 0)) for sink in config.sinks),
        )
    return table


def _tenant_cursor(cursors: dict[tuple[str, str], datetime], tenant: TenantSettings) -> datetime | None:
    """The cursor of a tenant's sources (one per kind it reads): the one furthest behind, so that
    the lag shown is the worst; none until every kind has one."""
    wanted = [(tenant.tenant_id, kind) for kind in dict.fromkeys(tenant.sources)]
    found = [cursors[key] for key in wanted if key in cursors]
    return min(found) if found and len(found) == len(wanted) else None


def _age(now: datetime, then: datetime | None) -> str:
    if then is None:
        return "-"
    seconds = int((now - then).total_seconds())
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h" if seconds >= 86400 else f"{seconds // 60}m"


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


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
    return EXIT_OK


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

    config = _load(args)
    with _state(config) as store:
        chosen = [d for d in store.dead_letters(args.sink, limit=1_000_000) if not args.ids or d.id in args.ids]
        if args.action == "list":
            Console(highlight=False).print(dead_letters.table(chosen))
            return EXIT_OK
        if args.action == "drop":
            store.dead_letters_remove(d.id for d in chosen)
            err_console.print(f"dropped {len(chosen)} dead letters")
            return EXIT_OK
        replayed, kept = dead_letters.replay(config, store, chosen)
        err_console.print(f"replayed {replayed} dead letters into the outbox; {kept} still fail and stay")
        return EXIT_OK if not kept else EXIT_PARTIAL
