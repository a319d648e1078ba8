"""The TOML configuration, validated by pydantic; every error names its key path."""
from __future__ import annotations

import fnmatch
import os
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from connectors import connector_class, sink_types
from core.model.durations import Duration
from core.model.schema import Severity
from core.model.secrets import LiteralSecretWarning
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


class ForwarderSettings(_Strict):
    state: str = "forwarder.db"
    poll_interval: Duration = 300.0
    overlap: Duration = 900.0
    initial_lookback: Duration = 86400.0
    max_concurrent_requests: int = Field(default=32, ge=1, le=1000)
    tenant_requests_per_minute: int = Field(default=150, ge=1)
    page_size: int = Field(default=1000, ge=1, le=1000)
    request_timeout: Duration = 60.0
    retry_initial: Duration = Field(default=1.0, gt=0, description="first backoff after a Graph 5xx or timeout")
    max_pages_per_window: int = Field(default=10_000, ge=1)
    once_deadline: Duration = Field(default=300.0, description="how long `run --once` keeps retrying deliveries")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


class TenantSettings(_Strict):
    tenant_id: str
    app: str | None = None
    sources: list[str] = Field(default_factory=lambda: list(DEFAULT_SOURCES))
    replay: str | None = None
    enabled: bool = True

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


class RouteSettings(_Strict):
    tenants: list[str] = Field(default_factory=lambda: ["*"])
    sinks: list[str]
    min_severity: str = "unknown"
    service_sources: list[str] = Field(default_factory=list)

    @field_validator("min_severity")
    @classmethod
    def _severity(cls, value: str) -> str:
        if value.lower() not in Severity.__members__:
            raise ValueError(f"unknown severity {value!r}; one of {', '.join(Severity.__members__)}")
        return value.lower()

    def covers(self, tenant_label: str) -> bool:
        return any(fnmatch.fnmatchcase(tenant_label, pattern) for pattern in self.tenants)

    def matches(self, tenant_label: str, severity: Severity, service_source: str | None) -> bool:
        if not self.covers(tenant_label):
            return False
        if severity < Severity[self.min_severity] and severity != Severity.unknown:
            return False
        if self.service_sources:
            wanted = {s.lower() for s in self.service_sources}
            return (service_source or "").lower() in wanted
        return True


def sinks_for_alert(
    routes: list[RouteSettings], label: str, severity: Severity, service_source: str | None
) -> list[str]:
    """The sinks one alert goes to: the union of the sinks of every route it matches."""
    return sorted({sink for route in routes if route.matches(label, severity, service_source) for sink in route.sinks})


TENANT_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Config(_Strict):
    forwarder: ForwarderSettings = Field(default_factory=ForwarderSettings)
    apps: dict[str, AppSettings] = Field(default_factory=dict)
    tenants: dict[str, TenantSettings]
    sinks: dict[str, Any]
    routes: list[RouteSettings] = Field(default_factory=list)
    _source: str = PrivateAttr(default="<config>")
    _literal_secret_warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("tenants")
    @classmethod
    def _labels(cls, tenants: dict[str, TenantSettings]) -> dict[str, TenantSettings]:
        for label in tenants:
            if not TENANT_LABEL.fullmatch(label):
                raise ValueError(f"tenant label {label!r}: use letters, digits, '-', '_' or '.' (it names files)")
        return tenants

    def routes_or_default(self) -> list[RouteSettings]:
        """Without [[routes]], every tenant goes to every sink."""
        return self.routes or [RouteSettings(sinks=list(self.sinks))]


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


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    problems: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LiteralSecretWarning)
        try:
            config = Config.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_problems(err)) from None
        sinks = {name: _validate_sink(name, raw, problems) for name, raw in config.sinks.items()}
    config.sinks = sinks
    problems += _cross_check(config)
    if problems:
        raise ConfigError(problems)
    config._source = source
    config._literal_secret_warnings = [str(w.message) for w in caught]
    return config


def _problems(err: ValidationError, prefix: tuple[Any, ...] = ()) -> list[str]:
    lines = []
    for item in err.errors():
        loc = ".".join(str(part) for part in (*prefix, *item["loc"]))
        message = "unknown key (check the spelling)" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"{loc}: {message.removeprefix('Value error, ')}")
    return lines


def _validate_sink(name: str, raw: Any, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"sinks.{name}: expected a table")
        return None
    sink_type = raw.get("type")
    if sink_type not in sink_types():
        problems.append(f"sinks.{name}.type: {_unknown_sink_type(sink_type)}")
        return None
    model = connector_class(sink_type).config_model
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        problems.extend(_problems(err, ("sinks", name)))
        return None


def _unknown_sink_type(sink_type: Any) -> str:
    return f"unknown sink type {sink_type!r}; available: {', '.join(sink_types())}"


def _cross_check(config: Config) -> list[str]:
    from mappings import FormatNotAvailable, encoder

    problems = []
    for label, tenant in config.tenants.items():
        if tenant.replay is None and tenant.app is None:
            problems.append(f"tenants.{label}.app: required unless the tenant has `replay`")
        elif tenant.app is not None and tenant.app not in config.apps:
            problems.append(f"tenants.{label}.app: no [apps.{tenant.app}] table")
    for name, sink in config.sinks.items():
        if sink is None:
            continue
        try:
            encoder(sink.format)
        except FormatNotAvailable as err:
            problems.append(f"sinks.{name}.format: {err}")
    for index, route in enumerate(config.routes):
        for sink_name in route.sinks:
            if sink_name not in config.sinks:
                problems.append(f"routes[{index}].sinks: no sink named {sink_name!r}")
    if not config.sinks:
        problems.append("sinks: at least one sink is needed")
    return problems
