"""The TOML configuration, validated by pydantic; every error names its key path."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Iterable, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from connectors import connector_class, sink_types
from core.app.http import is_loopback, split_listen
from core.model.durations import Duration
from core.model.schema import Alert, Incident, Severity
from core.model.secrets import LiteralSecretWarning, Secret, SecretRef, SecretUnavailable
from core.sources import DEFAULT_SOURCES, KINDS
from core.sources.auth import AppSettings

DEFAULT_CONFIG = "defender-forwarder.toml"
CONFIG_ENV = "DEFENDER_FORWARDER_CONFIG"



class ConfigError(Exception):
    """Invalid configuration; `problems` are lines of the form `key.path: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)


class HttpSettings(_Strict):
    """`[forwarder.http]`: the daemon's HTTP endpoint (core/app/http.py); off when absent.

    Safe by default: it serves the status of every customer tenant, so an address that is not
    loopback needs credentials, or `allow_unauthenticated = true` said on purpose."""

    listen: str = Field(description="host:port the daemon serves /healthz on; 127.0.0.1:9464 is the "
                        "recommended one (loopback: only this machine reaches it)")
    bearer_token: Secret | None = Field(default=None, description="requests must send "
                                        "`Authorization: Bearer <token>` (a secret reference)")
    username: str | None = Field(default=None, description="Basic authentication's user, with password")
    password: Secret | None = Field(default=None, description="Basic authentication's password (a secret "
                                    "reference)")
    allow_unauthenticated: bool = Field(default=False, description="serve a non-loopback address without "
                                        "credentials (a firewall or a proxy guards it); logged as a warning")
    tls_cert_file: str | None = Field(default=None, description="PEM certificate (chain): serve HTTPS")
    tls_key_file: str | None = Field(default=None, description="the private key of tls_cert_file (default: in it)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        split_listen(listen)
        return listen

    @model_validator(mode="after")
    def _safe(self) -> HttpSettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together (Basic authentication)")
        if self.tls_key_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_key_file needs tls_cert_file")
        if self.authenticated and self.allow_unauthenticated:
            raise ValueError("allow_unauthenticated = true and credentials contradict each other; remove one")
        if not self.authenticated and not self.allow_unauthenticated and not self.loopback:
            raise ValueError(f"listen = {self.listen!r} is not a loopback address, so anyone who reaches it "
                             "could read the status of every tenant; set bearer_token = \"env:NAME\" (or "
                             "username + password), listen on 127.0.0.1, or set allow_unauthenticated = true "
                             "if a firewall guards it")
        return self

    @property
    def authenticated(self) -> bool:
        return self.bearer_token is not None or self.password is not None

    @property
    def loopback(self) -> bool:
        return is_loopback(split_listen(self.listen)[0])

    @property
    def url(self) -> str:
        """Where the endpoint is, as the log and a browser say it."""
        return f"{'https' if self.tls_cert_file else 'http'}://{self.listen}"


POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(state: str) -> bool:
    """Whether `[forwarder] state` names a PostgreSQL database rather than a SQLite file."""
    return state.startswith(POSTGRESQL_SCHEMES)


class PostgresqlSettings(_Strict):
    """`[forwarder.postgresql]`: how to reach the database `[forwarder] state` names."""

    password: Secret | None = Field(default=None, description="the role's password (env:NAME or file:PATH)")
    sslmode: Literal["verify-full", "verify-ca", "require", "prefer", "disable"] = Field(
        default="verify-full", description="libpq's sslmode; verify-full checks the server's certificate and name")
    sslrootcert: str | None = Field(default=None, description="CA of the server's certificate (default: "
                                    "~/.postgresql/root.crt, or `system` for the system's store)")
    sslcert: str | None = Field(default=None, description="client certificate (PEM file), if the server asks for one")
    sslkey: str | None = Field(default=None, description="its private key (PEM file, mode 0600)")
    sslpassword: Secret | None = Field(default=None, description="the private key's password (env:NAME or file:PATH)")
    connect_timeout: Duration = Field(default=10.0, gt=0, description="how long connecting may take")
    pool_size: int = Field(default=4, ge=1, le=100, description="connections kept open")


class ForwarderSettings(_Strict):
    state: str = Field(default="forwarder.db", description="a SQLite file, or postgresql://user@host[:port]/database")
    postgresql: PostgresqlSettings | None = None
    poll_interval: Duration = 300.0
    overlap: Duration = 900.0
    overlap_every: Duration = Field(default=300.0, description="how often the daemon re-reads the overlap window "
                                    "(at least); between, a poll reads from 30 s before the cursor. 0: every poll")
    initial_lookback: Duration = 86400.0
    max_concurrent_requests: int = Field(default=32, ge=1, le=1000)
    tenant_requests_per_minute: int = Field(default=150, ge=1)
    app_requests_per_10s: int = Field(default=130_000, ge=1, description="Graph's budget of one app across all "
                                      "tenants; instances sharing a PostgreSQL state each keep their share of it")
    lease_ttl: Duration = Field(default=60.0, ge=1.0, description="PostgreSQL state: how long an instance's hold "
                                "on its tenants lasts unrenewed (renewed every third of it); a dead instance's "
                                "tenants move to the others after it")
    page_size: int = Field(default=1000, ge=1, le=1000)
    request_timeout: Duration = 60.0
    retry_initial: Duration = Field(default=1.0, gt=0, description="first backoff after a Graph 5xx or timeout")
    max_pages_per_window: int = Field(default=10_000, ge=1)
    split_after: int = Field(default=3, ge=1, description="cycles in a row the API fails a window itself (5xx, a "
                             "malformed page) before it is read in halves and what still fails is skipped")
    once_deadline: Duration = Field(default=300.0, description="how long `run --once` keeps retrying deliveries")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"
    http: HttpSettings | None = None
    proxy: str | None = Field(default=None, description="http(s)://[user:password@]host:port of the proxy every "
                              "connection goes through; default: HTTPS_PROXY/HTTP_PROXY (NO_PROXY exempts hosts)")

    @field_validator("state")
    @classmethod
    def _state_url(cls, state: str) -> str:
        if not is_postgresql(state):
            return state
        parts = urlsplit(state)
        if parts.password is not None:  # the value is not echoed: it holds a password
            raise ValueError("the URL holds a password; put it in [forwarder.postgresql] password as a secret "
                             "reference (env:NAME or file:PATH)")
        if not parts.hostname or not parts.path.strip("/") or not parts.username:
            raise ValueError(f"{state!r} is not a PostgreSQL URL; use postgresql://user@host[:port]/database")
        return state

    @model_validator(mode="after")
    def _postgresql_needs_it(self) -> "ForwarderSettings":
        if self.postgresql is not None and not is_postgresql(self.state):
            raise ValueError("[forwarder.postgresql] is set but state is a SQLite file; set state = "
                             "\"postgresql://user@host/database\" or remove the table")
        return self

    @field_validator("proxy")
    @classmethod
    def _proxy_url(cls, proxy: str | None) -> str | None:
        if proxy is None:
            return None
        parts = urlsplit(proxy)
        try:
            port = parts.port
        except ValueError:
            port = None
        # The value is not echoed: a proxy URL may hold a password.
        if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
            raise ValueError("not a proxy URL; use http://host:port (or http://user:password@host:port)")
        return proxy


class NotifySettings(_Strict):
    """`[notify]`: mail the MSSP's operators when a tenant turns failing or recovers, consent is
    revoked, an app's certificate nears its end, or a sink stops (core/app/notify.py); off when absent.
    The server is an e-mail sink's (`smtp_sink`) or one of its own (`host` and the keys after it)."""

    to: list[str] = Field(min_length=1, description="the operators' addresses")
    sender: str = Field(description="the From address")
    smtp_sink: str | None = Field(default=None, description="an email sink whose server, login and TLS to use")
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535, description="default 587, 465 for tls, 25 for none")
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    ca_file: str | None = Field(default=None, description="PEM of the CA that signed the server's certificate")
    certificate_days: int = Field(default=14, ge=1, description="mail when an app's certificate expires within this")
    timeout: Duration = Field(default=30.0, gt=0, description="how long one SMTP conversation may take")

    @model_validator(mode="after")
    def _one_server(self) -> NotifySettings:
        own = [key for key in ("host", "port", "username", "password", "ca_file") if getattr(self, key) is not None]
        if self.smtp_sink is not None and own:
            raise ValueError(f"smtp_sink uses that sink's server: remove {', '.join(own)}, or remove smtp_sink")
        if self.smtp_sink is None and self.host is None:
            raise ValueError('name the mail server: smtp_sink = "<an email sink>", or host (with port, security, '
                             "username, password)")
        if (self.username is None) != (self.password is None):
            raise ValueError('username and password go together (password = "env:NAME")')
        return self


# A tenant is named to Entra by its GUID or by one of its verified domains; anything else
# fails only at the first token request, long after the operator's edit.
TENANT_GUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
TENANT_DOMAIN = re.compile(r"(?=.{4,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}")


class TenantSettings(_Strict):
    tenant_id: str
    app: str | None = None
    sources: list[str] = Field(default_factory=lambda: list(DEFAULT_SOURCES))
    replay: str | None = None
    enabled: bool = True

    @field_validator("tenant_id")
    @classmethod
    def _tenant_id(cls, tenant_id: str) -> str:
        if not (TENANT_GUID.fullmatch(tenant_id) or TENANT_DOMAIN.fullmatch(tenant_id)):
            raise ValueError(f"{tenant_id!r} is not a tenant id; use the tenant's GUID "
                             "(e.g. 22222222-2222-4222-8222-222222222222) or a verified domain "
                             "such as contoso.onmicrosoft.com")
        return tenant_id

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, sources: list[str]) -> list[str]:
        available = ", ".join(KINDS)
        if not sources:
            # Without a source the tenant would never be read, and nothing would say so.
            raise ValueError(f"at least one source is needed; available: {available}")
        for source in sources:
            if source not in KINDS:
                raise ValueError(f"unknown source {source!r}; available: {available}")
        return sources


# Why an alert is held back, counted per tenant in the run summary and in `tenants`.
BELOW_MIN_SEVERITY = "below min_severity"
SOURCE_NOT_ROUTED = "service source not routed"
# A route with `service_sources` takes alerts of those products; an incident spans products
# and has no service source, so such a route holds it back (counted, never silently dropped).
NO_SERVICE_SOURCE = "no service source"
KIND_NOT_ROUTED = "kind not routed"  # the route's `kinds` leaves the event's kind out
HELD_BACK_REASONS = (KIND_NOT_ROUTED, BELOW_MIN_SEVERITY, SOURCE_NOT_ROUTED, NO_SERVICE_SOURCE)
NO_ROUTE = "no route for the tenant"  # the config check refuses this for an enabled tenant
# The event kinds a route may choose (core.model.schema: Alert.KIND, Incident.KIND).
EVENT_KINDS = (Alert.KIND, Incident.KIND)


class RouteSettings(_Strict):
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    sinks: list[str]
    # Every kind by default: incidents flow only from tenants whose `sources` name
    # graph_incidents, so an upgraded config's routes keep taking exactly what they took.
    kinds: list[str] = Field(default_factory=lambda: list(EVENT_KINDS))
    min_severity: str = "unknown"
    service_sources: list[str] = Field(default_factory=list)

    @field_validator("min_severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value.lower() not in Severity.__members__:
            raise ValueError(f"unknown severity {value!r}; one of {', '.join(Severity.__members__)}")
        return value.lower()

    @field_validator("kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        valid = ", ".join(EVENT_KINDS)
        if not kinds:
            raise ValueError(f"empty, so the route takes nothing; valid kinds: {valid}")
        for kind in kinds:
            if kind.lower() not in EVENT_KINDS:
                raise ValueError(f"unknown kind {kind!r}; valid kinds: {valid}")
        return [kind.lower() for kind in kinds]

    def covers(self, tenant_label: str) -> bool:
        return any(fnmatch.fnmatchcase(tenant_label, pattern) for pattern in self.tenants)

    def matches(self, tenant_label: str, severity: Severity, service_source: str | None,
                kind: str = Alert.KIND) -> bool:
        return self.covers(tenant_label) and self.holds_back(severity, service_source, kind) is None

    def holds_back(self, severity: Severity, service_source: str | None, kind: str = Alert.KIND) -> str | None:
        """Which of this route's filters keeps an event out of its sinks, if one does."""
        if kind not in self.kinds:
            return KIND_NOT_ROUTED
        if severity < Severity[self.min_severity] and severity != Severity.unknown:
            return BELOW_MIN_SEVERITY
        if self.service_sources:
            if service_source is None and kind != Alert.KIND:
                return NO_SERVICE_SOURCE
            wanted = {s.lower() for s in self.service_sources}
            if (service_source or "").lower() not in wanted:
                return SOURCE_NOT_ROUTED
        return None


def sinks_for_alert(
    routes: list[RouteSettings], label: str, severity: Severity, service_source: str | None, kind: str = Alert.KIND
) -> list[str]:
    """The sinks one event goes to: the union of the sinks of every route it matches."""
    return sorted({sink for route in routes if route.matches(label, severity, service_source, kind)
                   for sink in route.sinks})


def held_back_reason(
    routes: list[RouteSettings], label: str, severity: Severity, service_source: str | None, kind: str = Alert.KIND
) -> str:
    """Why an event no route takes is held back: the filter of each route of its tenant that
    refused it (all of them, joined, when its routes refused it for different reasons). The
    reason of an event of another kind than an alert starts with its kind (`incident: ...`),
    so that `tenants` and the run summary tell whose it is."""
    reasons = {route.holds_back(severity, service_source, kind) for route in routes if route.covers(label)}
    named = " and ".join(reason for reason in HELD_BACK_REASONS if reason in reasons) or NO_ROUTE
    return named if kind == Alert.KIND else f"{kind}: {named}"


def unrouted_sources(config: Config) -> list[str]:
    """A warning per enabled tenant and source whose event kind (SourceKind.event_kind) no route
    of the tenant takes: what it reads of that source would all be held back. Not an error: a
    route may be meant to come later, and held-back events are counted (`tenants`)."""
    warnings = []
    routes = config.routes_or_default()
    for label, tenant in config.tenants.items():
        if not tenant.enabled:
            continue
        taken = {kind for route in routes if route.covers(label) for kind in route.kinds}
        for source in tenant.sources:
            event_kind = KINDS[source].event_kind
            if event_kind not in taken:
                warnings.append(
                    f"tenants.{label} reads {source}, whose events are of kind {event_kind!r}, but no route of "
                    f"{label} takes that kind, so every one would be held back: add {event_kind!r} to the `kinds` "
                    f"of a [[routes]] entry covering {label}, or remove {source} from tenants.{label}.sources")
    return warnings


TENANT_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Config(_Strict):
    """The whole configuration, built by `parse_config` from sections validated one by one."""

    forwarder: ForwarderSettings = Field(default_factory=ForwarderSettings)
    apps: dict[str, AppSettings] = Field(default_factory=dict)
    tenants: dict[str, TenantSettings]
    sinks: dict[str, Any]
    routes: list[RouteSettings] = Field(default_factory=list)
    notify: NotifySettings | None = None
    _source: str = PrivateAttr(default="<config>")
    _literal_secret_warnings: list[str] = PrivateAttr(default_factory=list)

    def routes_or_default(self) -> list[RouteSettings]:
        """Without [[routes]], every tenant goes to every sink."""
        return self.routes or [RouteSettings(sinks=list(self.sinks))]


class _Sections(_Strict):
    """The file's top level alone: its tables are validated entry by entry afterwards, so that
    one bad entry does not hide the problems of the others."""

    forwarder: dict[str, Any] = Field(default_factory=dict)
    apps: dict[str, Any] = Field(default_factory=dict)
    tenants: dict[str, Any] = Field(default_factory=dict)  # its absence is a problem of its own (below)
    sinks: dict[str, Any] = Field(default_factory=dict)
    routes: list[Any] = Field(default_factory=list)
    notify: dict[str, Any] | None = None


def config_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)


def load_config(path: Path) -> Config:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError([f"{path}: no such config file"]) from None
    except OSError as err:  # a directory, no permission: the operator's to fix, not a bug
        raise ConfigError([f"{path}: cannot read the config file: {err.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text (a TOML file is)"]) from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([f"{path}: not valid TOML: {err}"]) from None
    return parse_config(data, str(path))


def parse_config(data: dict[str, Any], source: str = "<config>", internal: bool = False) -> Config:
    """The configuration, or a ConfigError listing every problem of the file, one per line.
    `internal`: a configuration the app made itself, which may use its internal sink types."""
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LiteralSecretWarning)
        parts = _validate_sections(data, problems, internal)
    if parts is not None:
        problems += _cross_check(data, parts)
    if problems or parts is None:
        raise ConfigError(problems)
    config = Config.model_validate(parts)  # every part is validated already: this only assembles
    config._source = source
    config._literal_secret_warnings = [str(w.message) for w in caught]
    _name_secrets(config)
    return config


def _validate_sections(data: dict[str, Any], problems: list[str], internal: bool) -> dict[str, Any] | None:
    """Each section and each entry of it validated on its own, their problems appended; the
    valid parts (an invalid entry left out), or None when the top level itself is wrong."""
    try:
        sections = _Sections.model_validate(data)
    except ValidationError as err:
        problems.extend(_problems(err))
        # A misspelt table (`[tenant.x]`) must not hide the problems of the others.
        known = {key: value for key, value in data.items() if key in _Sections.model_fields}
        try:
            sections = _Sections.model_validate(known)
        except ValidationError:
            return None
    if not sections.tenants:
        problems.append("tenants: at least one tenant is needed; add a [tenants.NAME] table")
    labels = _valid_labels(sections.tenants, problems)
    return {
        "forwarder": _validated(ForwarderSettings, sections.forwarder, ("forwarder",), problems),
        "apps": _entries(AppSettings, sections.apps, "apps", problems),
        "tenants": _entries(TenantSettings, {label: sections.tenants[label] for label in labels}, "tenants", problems),
        "sinks": {name: _validate_sink(name, raw, problems, internal) for name, raw in sections.sinks.items()},
        "routes": [_validated(RouteSettings, raw, ("routes", index), problems)
                   for index, raw in enumerate(sections.routes)],
        "notify": None if sections.notify is None else _validated(NotifySettings, sections.notify, ("notify",),
                                                                   problems),
    }


def _valid_labels(tenants: dict[str, Any], problems: list[str]) -> list[str]:
    labels = []
    for label in tenants:
        if TENANT_LABEL.fullmatch(label):
            labels.append(label)
        else:
            problems.append(f"tenants: tenant label {label!r}: use letters, digits, '-', '_' or '.' (it names files)")
    return labels


def _entries(model: type[BaseModel], raw: dict[str, Any], section: str, problems: list[str]) -> dict[str, Any]:
    """The entries of one `[section.NAME]` family, each validated by `model`; None for an invalid one."""
    return {name: _validated(model, value, (section, name), problems) for name, value in raw.items()}


def _validated(model: type[BaseModel], raw: Any, where: tuple[Any, ...], problems: list[str]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems(err, where))
        return None


def key_path(parts: tuple[Any, ...]) -> str:
    """A key as the file spells it: `routes[1].sinks`, `tenants.contoso.tenant_id`."""
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


# pydantic's wording, where it names no fix, in the operator's terms.
_MESSAGES = {
    "extra_forbidden": "unknown key (check the spelling)",
    "missing": "missing; this key is required",
}


def _name_secrets(config: Config) -> None:
    """Tell every secret reference its key path, for the error it raises if it cannot be read."""
    for path, ref in _secrets_in(config, ""):
        ref.where = path


def _secrets_in(value: Any, path: str) -> Iterable[tuple[str, SecretRef]]:
    """Every secret reference under a model, with its key path. Walks every model, so that a
    secret key added to any sink is found without a list to keep."""
    if isinstance(value, SecretRef):
        yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _secrets_in(getattr(value, name), f"{path}.{name}" if path else name)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _secrets_in(item, f"{path}.{key}")


def secret_refs(config: Config, apps: Iterable[str] = (), sinks: Iterable[str] = (),
                notify: bool = False) -> list[SecretRef]:
    """The secret references of the apps and sinks named (and of [notify], if asked)."""
    models: list[BaseModel] = [config.apps[name] for name in apps] + [config.sinks[name] for name in sinks]
    if notify and config.notify is not None:
        models.append(config.notify)
    return [ref for model in models for _, ref in _secrets_in(model, "")]


def apps_in_use(config: Config) -> list[str]:
    """The apps that enabled tenants read through (a replay tenant reads its folder, no app)."""
    return sorted({t.app for t in config.tenants.values() if t.enabled and t.replay is None and t.app})


def unresolved_secrets(refs: Iterable[SecretRef]) -> list[str]:
    """Resolve every reference now; a line per one that cannot be read (key path, variable or
    file, the fix). Resolved values stay in their references, registered for redaction."""
    problems = []
    for ref in refs:
        try:
            ref.get_secret_value()
        except SecretUnavailable as err:
            problems.append(str(err))
    return problems


def _problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for item in err.errors():
        message = _MESSAGES.get(item["type"], item["msg"])
        lines.append(f"{key_path((*prefix, *item['loc']))}: {message.removeprefix('Value error, ')}")
    return lines


def _validate_sink(name: str, raw: Any, problems: list[str], internal: bool) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"sinks.{name}: expected a table")
        return None
    sink_type = raw.get("type")
    if sink_type not in sink_types(internal):
        problems.append(f"sinks.{name}.type: {_unknown_sink_type(sink_type)}")
        return None
    return _validated(connector_class(sink_type).config_model, raw, ("sinks", name), problems)


def _unknown_sink_type(sink_type: Any) -> str:
    return f"unknown sink type {sink_type!r}; available: {', '.join(sink_types())}"


def _cross_check(data: dict[str, Any], parts: dict[str, Any]) -> list[str]:
    """What refers to what: apps, sinks and tenants named elsewhere. Read from the file's own
    names, so that an entry with a problem of its own is still checked here."""
    return [
        *_check_apps(data, parts),
        *_check_formats(parts["sinks"]),
        *_check_routes(data),
        *_check_notify(data),
        *([] if parts["sinks"] else ["sinks: at least one sink is needed; add a [sinks.NAME] table"]),
    ]


def _strings(value: Any) -> list[str]:
    """The strings of a list the file gives (its wrong types are reported by the models)."""
    return [item for item in value if isinstance(item, str)] if isinstance(value, list) else []


def _tables(data: dict[str, Any], section: str) -> dict[str, dict[str, Any]]:
    found = data.get(section)
    if not isinstance(found, dict):
        return {}
    return {name: table for name, table in found.items() if isinstance(table, dict)}


def _check_apps(data: dict[str, Any], parts: dict[str, Any]) -> list[str]:
    apps = ", ".join(_tables(data, "apps")) or "none"
    problems = []
    for label, tenant in _tables(data, "tenants").items():
        app = tenant.get("app")
        if tenant.get("replay") is None and app is None:
            problems.append(f"tenants.{label}.app: missing; name an [apps.NAME] table (defined apps: {apps}), "
                            "or set replay")
        elif isinstance(app, str) and app not in _tables(data, "apps"):
            problems.append(f"tenants.{label}.app = {json.dumps(app)}: no [apps.{app}] table; defined apps: {apps}")
    return problems


def _check_formats(sinks: dict[str, Any]) -> list[str]:
    from mappings import FormatNotAvailable, encoder

    problems = []
    for name, sink in sinks.items():
        if sink is None:
            continue
        try:
            encoder(sink.format)
        except FormatNotAvailable as err:
            problems.append(f"sinks.{name}.format: {err}")
    return problems


def _check_notify(data: dict[str, Any]) -> list[str]:
    """`notify.smtp_sink` names an email sink (a sink of another type has no mail server)."""
    notify = data.get("notify")
    name = notify.get("smtp_sink") if isinstance(notify, dict) else None
    if not isinstance(name, str):
        return []
    emails = [sink for sink, table in _tables(data, "sinks").items() if table.get("type") == "email"]
    if name in emails:
        return []
    return [f"notify.smtp_sink = {json.dumps(name)}: no email sink of that name; email sinks: "
            f"{', '.join(emails) or 'none'} (or set host instead)"]


def _check_routes(data: dict[str, Any]) -> list[str]:
    """Every route's sinks exist and each of its globs takes a tenant; every enabled tenant is
    taken by some route (an alert of a tenant no route takes would be read and dropped)."""
    routes = data.get("routes")
    if not isinstance(routes, list) or not routes:
        return []  # no [[routes]]: every tenant goes to every sink
    tenants = _tables(data, "tenants")
    sinks = ", ".join(_tables(data, "sinks")) or "none"
    problems = []
    globs: list[tuple[int, list[str]]] = []
    for index, route in enumerate(routes):
        if not isinstance(route, dict):
            continue
        for sink_name in _strings(route.get("sinks")):
            if sink_name not in _tables(data, "sinks"):
                problems.append(f"routes[{index}].sinks: no sink named {sink_name!r}; sinks: {sinks}")
        patterns = _strings(route.get("tenants", ["*"]))
        globs.append((index, patterns))
        if route.get("tenants") == []:
            problems.append(f"routes[{index}].tenants: empty, so the route takes no tenant; "
                            'name tenants, or "*" for every one')
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(label, pattern) for label in tenants):
                problems.append(f"routes[{index}].tenants: {json.dumps(pattern)} matches no tenant; "
                                f"tenants: {', '.join(tenants) or 'none'}")
    return problems + _untaken_tenants(tenants, globs)


def _untaken_tenants(tenants: dict[str, dict[str, Any]], globs: list[tuple[int, list[str]]]) -> list[str]:
    named = ", ".join(f"routes[{index}].tenants = {json.dumps(patterns)}" for index, patterns in globs)
    problems = []
    for label, tenant in tenants.items():
        if tenant.get("enabled", True) is False:
            continue  # a disabled tenant is not read: nothing of it can be lost
        if not any(fnmatch.fnmatchcase(label, p) for _, patterns in globs for p in patterns):
            problems.append(f"tenants.{label}: no route takes its alerts ({named}); "
                            "add it to a route's tenants, or set enabled = false")
    return problems
