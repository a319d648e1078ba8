"""Mappings: Defender source shapes -> `core.model.schema.Alert` -> each output format.

Every output format is a module with `encode(event: Alert | Incident) -> bytes` returning
one line (no trailing newline; an incident has its own shape in each format, chosen inside
`encode` by one class test so the alert path pays nothing more); a format whose lines can be cut to fit a budget offers a
shortener too (`shortener(name)`); every source is a module with
`normalise(raw, tenant, ingested) -> Alert`. Modules are imported on first use so that
`--help` and cron start-up stay fast.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from importlib import import_module
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from core.model.schema import Alert, Incident, TenantRef

# Every format a sink or `convert` may name -> its module.
AVAILABLE_FORMATS = {
    "raw": "mappings.raw",
    "ocsf": "mappings.ocsf",
    "ecs": "mappings.ecs",
    "cim": "mappings.cim",
    "cef": "mappings.cef",
    # Microsoft Sentinel through the Logs Ingestion API (the `sentinel` sink): a row of the
    # custom tables DefenderAlerts_CL / DefenderIncidents_CL, or of CommonSecurityLog.
    "sentinel": "mappings.sentinel",
    "commonsecuritylog": "mappings.commonsecuritylog",
}
OUTPUT_FORMATS = tuple(AVAILABLE_FORMATS)
# The common schema itself, as JSON: what a sink that renders alerts (e-mail) reads. Not one of
# the SIEM formats above, but any sink or `convert` may name it.
AVAILABLE_FORMATS["alert"] = "mappings.alert"

# `convert --source` names -> the mapping module of that source shape.
SOURCES = {"graph": "graph_alerts_v2", "graph_incidents": "graph_incidents", "mde": "mde_alerts",
           "mde_alerts": "mde_alerts"}


Encoder = Callable[["Alert | Incident"], bytes]
# (line, budget in bytes) -> the line within the budget, and whether it had to be cut (it may
# no longer parse) rather than only shortened value by value.
Shortener = Callable[[bytes, int], tuple[bytes, bool]]


class FormatNotAvailable(ValueError):
    """A format name that no module implements."""


def encoder(name: str) -> Encoder:
    """The `encode` function of output format `name`."""
    module = AVAILABLE_FORMATS.get(name)
    if module is None:
        raise FormatNotAvailable(f"unknown format {name!r}; formats: {', '.join(OUTPUT_FORMATS)}")
    return import_module(module).encode


def shortener(name: str) -> Shortener | None:
    """How format `name` shortens a line that does not fit a budget; None for a format whose
    lines cannot be cut without corrupting them (JSON)."""
    if name != "cef":
        return None
    from mappings.cef import Fit, fit

    def shorten(line: bytes, budget: int) -> tuple[bytes, bool]:
        fitted, how = fit(line, budget)
        return fitted, how is Fit.CUT

    return shorten


class SourceMapping(NamedTuple):
    """What a source's mapping module offers: `normalise`, and the error by which it refuses a
    record (dead-lettered with its message; any other error is a bug of the mapping)."""

    normalise: Callable[[Any, TenantRef, datetime], Alert]
    refusal: type[Exception]


def source_mapping(module: str) -> SourceMapping:
    """The mapping module `mappings.<module>` (what a source kind names as its `mapping`)."""
    found = import_module(f"mappings.{module}")
    return SourceMapping(found.normalise, found.MappingError)


def normaliser(source: str) -> Callable[[Any, TenantRef, datetime], Alert]:
    """The `normalise` function of source `source` (a `SOURCES` key)."""
    module = SOURCES.get(source)
    if module is None:
        raise ValueError(f"unknown source {source!r}; sources: {', '.join(SOURCES)}")
    return source_mapping(module).normalise
