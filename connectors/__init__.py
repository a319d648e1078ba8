"""The destinations: one module per sink type, their shared parts, and the sink registry.

The registry maps each `type =` of a sink to its module, which is imported only when a
config uses that type, so that `--help` and cron start-up pay for none of them (this module
imports nothing but the standard library). It also says which sink types offer
`defender-forwarder setup` and which options that takes, so the command line is built
without importing any connector.

Shared parts (each used by every connector that needs it): `base` (the contract, batch
results), `tls` (the TLS settings, their SSL context, recognising a refused certificate),
`sizes` (requests within the destination's size limit, learnt from its 413s).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connectors.base import Connector


@dataclass(frozen=True)
class SetupOption:
    """One option of `defender-forwarder setup <type>`: `--<name> VALUE`."""

    name: str
    default: str
    help: str


@dataclass(frozen=True)
class SetupOffer:
    """What `setup <type>` prepares at the destination (for the command's help), and its options."""

    prepares: str
    options: tuple[SetupOption, ...] = ()


@dataclass(frozen=True)
class Extra:
    """A sink type's SDK, installed by the extra of that name: `pip install
    'defender-forwarder[<name>]'` (pyproject's optional dependencies)."""

    name: str
    module: str  # what the connector imports; importing it tells whether the extra is there


@dataclass(frozen=True)
class SinkType:
    module: str
    setup: SetupOffer | None = None  # None: nothing to prepare before the first delivery
    extra: Extra | None = None  # None: the standard library and the core dependencies suffice
    # Set up by the app itself, not by an operator's config (listed nowhere, refused in a file).
    internal: bool = False


# Sink type -> its module and what it offers; the order is the one error messages list.
SINKS: dict[str, SinkType] = {
    "file": SinkType("connectors.file"),
    "stdout": SinkType("connectors.stdout"),
    "syslog": SinkType("connectors.syslog"),
    "splunk_hec": SinkType("connectors.splunk_hec"),
    "elasticsearch": SinkType("connectors.elasticsearch", SetupOffer(
        "the index template and ILM policy of the data streams",
        (SetupOption("retention", "365d", "ILM: delete backing indices this old (default 365d)"),)),
        Extra("elastic", "elasticsearch")),
    "eventhub": SinkType("connectors.eventhub", extra=Extra("eventhub", "azure.eventhub")),
    "sentinel": SinkType("connectors.sentinel", extra=Extra("sentinel", "azure.monitor.ingestion")),
    "email": SinkType("connectors.email"),
    # The Splunk add-on's modular input writes its events with this sink (core.app.splunk_input).
    "splunk_modinput": SinkType("connectors.splunk_modinput", extra=Extra("splunk", "splunklib"), internal=True),
}


def sink_types(internal: bool = False) -> tuple[str, ...]:
    """The sink types an operator's config may name (`internal`: also those the app sets up itself)."""
    return tuple(name for name, kind in SINKS.items() if internal or not kind.internal)


def setup_offers() -> dict[str, SetupOffer]:
    """The sink types that offer `setup`, with what each prepares and its options."""
    return {name: kind.setup for name, kind in SINKS.items() if kind.setup is not None}


def extra_of(sink_type: str) -> Extra | None:
    return SINKS[sink_type].extra


def connector_class(sink_type: str) -> type[Connector]:
    """The connector of `sink_type` (a key of `SINKS`), its module imported now."""
    return import_module(SINKS[sink_type].module).CONNECTOR
