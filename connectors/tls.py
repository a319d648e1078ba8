"""TLS for every network connector: one settings model, one SSL context, one way to recognise
a server certificate that fails verification.

`TlsSettings` is mixed into the config model of each network sink (`TlsSinkConfig`: a sink's
keys and the TLS keys), so every one of them reads the same keys the same way. A key that a
sink's protocol or SDK cannot honour is listed in its `tls_unsupported` and refused when set,
with one line naming the key: a TLS setting is never silently ignored.
"""
from __future__ import annotations

import logging
import ssl
from typing import ClassVar

from pydantic import BaseModel, Field, ValidationInfo, field_validator, model_validator

from connectors.base import SinkConfig
from core.model.secrets import Secret

TLS_KEYS = ("ca_file", "client_cert", "client_key", "client_key_password", "tls_verify", "tls_server_name")


class TlsSettings(BaseModel):
    """The TLS keys of a sink (mixed into its config model)."""

    # Keys this sink's protocol or SDK cannot honour (set by each sink's model).
    tls_unsupported: ClassVar[frozenset[str]] = frozenset()

    ca_file: str | None = Field(default=None, description="PEM of the CA that signed the server's certificate; "
                                "default: the system store")
    client_cert: str | None = Field(default=None, description="PEM certificate (chain) this forwarder presents")
    client_key: str | None = Field(default=None, description="the private key of client_cert (default: in it)")
    client_key_password: Secret | None = None
    tls_verify: bool = True
    tls_server_name: str | None = Field(default=None, description="the name the server's certificate must carry; "
                                        "default: host")

    @field_validator(*TLS_KEYS)
    @classmethod
    def _supported(cls, value: object, info: ValidationInfo) -> object:
        if info.field_name in cls.tls_unsupported:
            raise ValueError(f"not supported by the {cls.model_fields['type'].default} sink")
        return value

    @model_validator(mode="after")
    def _key_with_its_certificate(self) -> TlsSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key needs client_cert")
        return self

    def tls_keys_set(self, *keys: str) -> list[str]:
        """Which of `keys` this sink's table sets, in that order (for a rule that they need TLS on)."""
        return [key for key in keys if getattr(self, key) is not None]

    def warn_if_unverified(self, sink: str, log: logging.Logger) -> None:
        """Say it when a sink starts (on its own logger): nothing else shows that it would
        talk to anyone who answers."""
        if not self.tls_verify:
            log.warning("sink %s: tls_verify = false: the server's certificate is NOT checked", sink)


class TlsSinkConfig(TlsSettings, SinkConfig):
    """The keys every network sink has: those of every sink, then the TLS keys."""


class TlsFileError(Exception):
    """A file a TLS key names cannot be read or used; `error` is why (OSError or ssl.SSLError)."""

    def __init__(self, key: str, error: Exception) -> None:
        super().__init__(f"{key}: {error}")
        self.key = key
        self.error = error


def ssl_context(settings: TlsSettings) -> ssl.SSLContext:
    """The client side of TLS as `settings` say: the system store or `ca_file`; our own
    certificate chain when `client_cert` is set (its key unlocked with `client_key_password`);
    the server's certificate and name checked unless `tls_verify = false`.

    Raises TlsFileError naming the key whose file cannot be read or does not fit."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file)
    except (OSError, ssl.SSLError) as err:
        raise TlsFileError("ca_file", err) from err
    if settings.client_cert:
        password = settings.client_key_password.get_secret_value() if settings.client_key_password else None
        try:
            context.load_cert_chain(settings.client_cert, settings.client_key, password)
        except (OSError, ssl.SSLError) as err:
            raise TlsFileError("client_cert" if settings.client_key is None else "client_cert or client_key",
                               err) from err
    if not settings.tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def certificate_refused(err: BaseException, also: tuple[type[BaseException], ...] = ()) -> str | None:
    """Why the server's certificate failed verification, when that failure is `err` or
    anywhere behind it (its causes and contexts: clients wrap it in their own errors); None
    when it is not there. `also`: a client's own errors that mean the same (a pinned
    fingerprint that does not match), told by their text."""
    seen: set[int] = set()
    found: str | None = None
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, also):
            return str(cause)
        if isinstance(cause, ssl.SSLCertVerificationError):
            # A client's own subclass (aiohttp's) carries no verify_message: the one it wraps does.
            message = getattr(cause, "verify_message", None)
            if message:
                return message
            found = found or str(cause)
        cause = cause.__cause__ or cause.__context__
    return found
