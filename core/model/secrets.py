"""Secret references (`env:NAME`, `file:PATH`) and the redaction that keeps secrets out of output.

A reference is checked for its syntax when the config is read, and resolved on first use (a
connector opening, a token requested): a command that uses no secret, or only some, works in a
shell that lacks the others. `run` and `check` resolve what they need up front, so that a
missing one stops them at once, named.

Every resolved secret is registered with `REDACTOR`; the log handler and every error
message printed by the CLI pass through it, so a secret that leaks into an exception
text from a library is still masked.
"""
from __future__ import annotations

import os
import re
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, SecretStr

MASK = "***"


class Redactor:
    def __init__(self) -> None:
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def register(self, secret: str) -> None:
        # Very short values would mask ordinary words; they are too weak to be real secrets anyway.
        if len(secret) >= 6:
            with self._lock:
                self._secrets.add(secret)

    def redact(self, text: str) -> str:
        for secret in sorted(self._secrets, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, MASK)
        return text


REDACTOR = Redactor()


class LiteralSecretWarning(UserWarning):
    """A secret was written into the config file instead of referenced."""


class SecretUnavailable(ValueError):
    """A referenced secret cannot be read. The text names the key path and the variable or
    file, never a value."""


# What a shell accepts as a variable name: anything else is a typo to report when the config is read.
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretRef(SecretStr):
    """An `env:` or `file:` reference, read the first time its value is asked for.

    `where` is the key path (`apps.mssp.client_secret`), set by the configuration once it is
    parsed, so that the error of a missing secret says which key needs it."""

    def __init__(self, reference: str) -> None:
        super().__init__("")
        self.reference = reference  # the reference only: never a secret value
        self.where = ""
        self._value: str | None = None

    def get_secret_value(self) -> str:
        if self._value is None:
            try:
                self._value = resolve_secret(self.reference).get_secret_value()
            except ValueError as err:
                raise SecretUnavailable(f"{self.where}: {err}" if self.where else str(err)) from None
        return self._value

    # SecretStr compares and hashes by value; a reference must not be resolved for that.
    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretRef) and other.reference == self.reference

    def __hash__(self) -> int:
        return hash(self.reference)

    def __len__(self) -> int:
        return len(self.get_secret_value())

    def _display(self) -> str:
        return "**********"


def check_secret(value: Any) -> SecretStr:
    """The config's validator: a reference is checked for syntax only and resolved later; a
    literal is taken (with a warning) as it is."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a secret reference such as 'env:NAME' or 'file:/path'")
    if value.startswith("env:"):
        if not _ENV_NAME.fullmatch(value[4:]):
            raise ValueError(f"{value[4:]!r} is not an environment variable name (env:NAME)")
        return SecretRef(value)
    if value.startswith("file:"):
        if not value[5:].strip():
            raise ValueError("a file reference needs a path (file:/path)")
        return SecretRef(value)
    return resolve_secret(value)


def resolve_secret(value: Any) -> SecretStr:
    """Turn `env:NAME` / `file:PATH` / a literal into a SecretStr; the error never echoes the value."""
    if isinstance(value, SecretStr):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("expected a secret reference such as 'env:NAME' or 'file:/path'")
    if value.startswith("env:"):
        secret = _from_env(value[4:])
    elif value.startswith("file:"):
        secret = _from_file(value[5:])
    else:
        warnings.warn(
            "a literal secret is written in the config file; use 'env:NAME' or 'file:PATH'",
            LiteralSecretWarning,
            stacklevel=2,
        )
        secret = value
    REDACTOR.register(secret)
    return SecretStr(secret)


def _from_env(name: str) -> str:
    secret = os.environ.get(name)
    if not secret:
        raise ValueError(f"environment variable {name} is not set or empty; set it where the forwarder runs")
    return secret.strip()


def _from_file(path: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"cannot read secret file {path}: {err.strerror}; check the path and its permissions") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    if mode & 0o077:
        # Like ssh with a private key: a secret others can read is already leaked; refuse it.
        raise ValueError(f"secret file {path} is readable by group or others (mode {mode & 0o777:o}): "
                         f"chmod 600 {path}")
    # A PEM file keeps its line structure; a one-line secret file loses the trailing newline.
    return secret if "-----BEGIN" in secret else secret.strip()


# Dumped to JSON as the mask without reading the secret (pydantic's own dump would resolve it).
Secret = Annotated[SecretStr, BeforeValidator(check_secret), PlainSerializer(lambda secret: str(secret), when_used="json")]
