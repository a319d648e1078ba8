"""What every command that runs the pipeline needs before it reaches a tenant or a sink: the
documented exit codes, `CommandFailed` (one line and a code), the state store opened under
its lock, and the preflight checks. Shared by the CLI (`core.app.commands`) and the Splunk
add-on's modular input (`core.app.splunk_input`), which prints nothing on stdout but events.
"""
from __future__ import annotations

import contextlib
import sqlite3
import ssl
from pathlib import Path
from typing import Any, Iterator

from core.app.config import Config, PostgresqlSettings, apps_in_use, is_postgresql
from core.model.secrets import SecretUnavailable
from core.state import StateError, StateLocked
from core.state.sqlite import SQLiteStore, StateLock

# The documented exit codes (`defender-forwarder --help` lists them).
EXIT_OK, EXIT_PARTIAL, EXIT_CONFIG, EXIT_LOCKED = 0, 1, 2, 3


class CommandFailed(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def once_exit_code(results: list[Any], forwarder: Any) -> int:
    """The exit code of one cycle (`run --once`, the Splunk add-on's run): 1 when a tenant or a
    sink failed or events still wait, else 0."""
    failed = any(r.error for r in results) or any(w.fatal for w in forwarder.workers.values())
    # Rows a sink deferred by design (a digest not due yet) wait for a later run: not a failure.
    return EXIT_PARTIAL if failed or forwarder.left_waiting else EXIT_OK


@contextlib.contextmanager
def open_state(config: Config, lock: bool = True) -> Iterator[Any]:
    """The state store `[forwarder] state` names, open for the command, closed after it. A SQLite
    file is locked for a command that writes (`lock`); a PostgreSQL database is shared by
    instances, which split its tenants by leases."""
    if is_postgresql(config.forwarder.state):
        with _postgresql_state(config) as store:
            yield store
        return
    path = Path(config.forwarder.state)
    state_lock = StateLock(path)
    try:
        if lock:
            state_lock.acquire()
        store = SQLiteStore(path)
    except StateLocked as err:
        raise CommandFailed(f"{err}; wait for it to finish or stop it", EXIT_LOCKED) from None
    except StateError as err:
        state_lock.release()
        raise CommandFailed(str(err), EXIT_CONFIG) from None
    except (OSError, sqlite3.Error) as err:
        state_lock.release()
        raise _state_problem(path, err) from None
    try:
        yield store
    except sqlite3.Error as err:
        raise _state_problem(path, err) from None
    finally:
        store.close()
        state_lock.release()


def postgresql_settings(config: Config, url: str | None = None) -> Any:
    """`core.state.postgresql.PostgresSettings` of the config's database (or of `url`, reached
    with the config's [forwarder.postgresql] keys), its secrets resolved."""
    from core.state.postgresql import PostgresSettings

    keys = config.forwarder.postgresql or PostgresqlSettings()
    try:
        return PostgresSettings(
            url=url or config.forwarder.state,
            password=keys.password.get_secret_value() if keys.password is not None else None,
            sslmode=keys.sslmode, sslrootcert=keys.sslrootcert, sslcert=keys.sslcert, sslkey=keys.sslkey,
            sslpassword=keys.sslpassword.get_secret_value() if keys.sslpassword is not None else None,
            connect_timeout=keys.connect_timeout, pool_size=keys.pool_size)
    except SecretUnavailable as err:
        raise CommandFailed(str(err), EXIT_CONFIG) from None


@contextlib.contextmanager
def _postgresql_state(config: Config) -> Iterator[Any]:
    try:
        from core.state.postgresql import PostgresStore, StateUnavailable
    except ImportError as err:
        raise CommandFailed(f"forwarder.state: a PostgreSQL state needs the postgresql extra, which is not "
                            f"installed ({err}): pip install 'defender-forwarder[postgresql]'", EXIT_CONFIG) from None
    settings = postgresql_settings(config)
    try:
        store = PostgresStore(settings)
    except StateUnavailable as err:  # down, refused, slow: a restart may well find it back
        raise CommandFailed(f"forwarder.state: {err}", EXIT_PARTIAL) from None
    except StateError as err:
        raise CommandFailed(f"forwarder.state: {err}", EXIT_CONFIG) from None
    try:  # no lock: instances sharing the database split its tenants by leases (core/app/leases.py)
        yield store
    finally:
        store.close()


# ---- what the machine around the forwarder can get wrong ----------------------------------
# The one place that turns what an operator can cause (a state path that cannot be used, a
# full disk, a missing extra, an unreadable TLS file) into one line and exit 2. Anything else
# (an OSError without a file, an SQL error of our own) is a bug and keeps its traceback.

# SQLite's primary result codes an operator causes, each with its remedy.
_SQLITE_REMEDIES = {
    sqlite3.SQLITE_FULL: "its disk is full: free space there (df), then run again (nothing committed is lost; "
                         "what was not is read again)",
    sqlite3.SQLITE_CANTOPEN: "cannot open it: make its directory writable by this user, or set forwarder.state "
                             "to another path",
    sqlite3.SQLITE_READONLY: "it is read-only: make the file and its directory writable by this user",
    sqlite3.SQLITE_PERM: "permission denied: make the file and its directory writable by this user",
    # A write past a file-size limit (EFBIG) comes back as an I/O error, not SQLITE_FULL.
    sqlite3.SQLITE_IOERR: "writing or reading it failed: free space on its disk (df), lift a file-size limit "
                          "(ulimit -f, LimitFSIZE=) or check the disk (dmesg), then run again",
    sqlite3.SQLITE_NOTADB: "it is not a defender-forwarder state file: set forwarder.state to another path",
    sqlite3.SQLITE_CORRUPT: "it is damaged: move it aside to start afresh (its outbox is lost)",
}


def _state_problem(path: Path, err: OSError | sqlite3.Error) -> Exception:
    """CommandFailed naming the state file and the fix, or `err` itself when no operator caused it."""
    if isinstance(err, OSError):
        if err.filename is None:
            return err
        return CommandFailed(f"forwarder.state: cannot use {path}: {err.filename}: {err.strerror}; it must be a "
                             "file path this user can create and write, or set forwarder.state to another path",
                             EXIT_CONFIG)
    code = getattr(err, "sqlite_errorcode", None)
    remedy = _SQLITE_REMEDIES.get(code & 0xFF) if code is not None else None
    if remedy is None:
        return err
    return CommandFailed(f"forwarder.state: {path}: {remedy} (SQLite: {err})", EXIT_CONFIG)


def preflight(config: Config) -> None:
    """Before a command reaches a tenant or a destination: every app's certificate can sign a
    login, every sink's SDK is installed and every TLS file it names can be read, so that none
    fails later as a traceback, an error per tenant or a stopped sink."""
    from importlib import import_module

    from connectors import extra_of
    from connectors.tls import TlsFileError, TlsSettings, ssl_context
    from core.sources.auth import certificate_problem

    for name in apps_in_use(config):  # an app no enabled tenant reads through may lack its files here
        problem = certificate_problem(config.apps[name])
        if problem is not None:
            raise CommandFailed(f"apps.{name}.certificate: {problem}; it must be a PEM with the private key "
                                "and the certificate uploaded to the app", EXIT_CONFIG)
    for name, sink in config.sinks.items():
        extra = extra_of(sink.type)
        if extra is not None:
            try:
                import_module(extra.module)
            except ImportError as err:
                raise CommandFailed(f"sinks.{name}: type {sink.type} needs the {extra.name} extra, which is not "
                                    f"installed ({err}): pip install 'defender-forwarder[{extra.name}]'",
                                    EXIT_CONFIG) from None
        if isinstance(sink, TlsSettings):
            try:
                ssl_context(sink)
            except TlsFileError as err:
                raise CommandFailed(f"sinks.{name}.{err.key}: {_tls_reason(sink, err)}; it must name a readable "
                                    "PEM file", EXIT_CONFIG) from None


def _tls_reason(sink: Any, err: Any) -> str:
    """Why a TLS file failed, with the file: an OSError names it, an SSL error does not."""
    files = err.key.replace(" or ", " ").split()
    named = " ".join(str(getattr(sink, key)) for key in files if getattr(sink, key, None))
    if isinstance(err.error, OSError) and not isinstance(err.error, ssl.SSLError):
        return f"{err.error.filename or named}: {err.error.strerror or err.error}"
    reason = getattr(err.error, "reason", None) or err.error
    return f"{named}: not a usable PEM certificate or key ({reason})"
