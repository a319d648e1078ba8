"""Secret references (`env:NAME`, `file:PATH`) and the redaction that keeps secrets out of output.

Every resolved secret is registered with `REDACTOR`; the log handler and every error
message printed by the CLI pass through it, so a secret that leaks into an exception
text from a library is still masked.
"""
from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr

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
        raise ValueError(f"environment variable {name} is not set or empty")
    return secret.strip()


def _from_file(path: str) -> str:
    try:
        secret = Path(path).read_text(encoding="utf-8")
        mode = os.stat(path).st_mode
    except OSError as err:
        raise ValueError(f"cannot read secret file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ValueError(f"secret file {path} is not UTF-8 text") from None
    if mode & 0o077:
        # Like ssh with a private key: a secret others can read is already leaked; refuse it.
        raise ValueError(f"secret file {path} is readable by group or others (mode {mode & 0o777:o}): "
                         f"chmod 600 {path}")
    # A PEM file keeps its line structure; a one-line secret file loses the trailing newline.
    return secret if "-----BEGIN" in secret else secret.strip()


Secret = Annotated[SecretStr, BeforeValidator(resolve_secret)]
