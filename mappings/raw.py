"""`core.model.schema.Alert` -> the original Defender alert plus MSSP context, one JSON line.

Made for consumers that already understand Graph's alert JSON (Splunk's Microsoft add-ons,
Elastic's m365_defender ingest pipeline). Shape, which a README documents:

    {...every property of the alert exactly as Graph sent it...,
     "tenant": {"id": "<customer tenant id>", "label": "<customer label>"},
     "forwarder": {"version_key": "<tenant id>/<alert id>/<lastUpdateDateTime>"}}

`tenant` and `forwarder` are added at the top level (Graph has no properties of these
names); should Graph ever send one, its value is kept under `forwarder.shadowed`. An
alert that did not come from an API (`raw` is None) is encoded as the normalised model
(`Alert` fields, which carry `tenant` and `version_key` themselves).

An incident (`Incident`) is written the same way: the incident as Graph sent it (its alerts
linked by the forwarder's `alertIds`, never embedded) plus `tenant` and `forwarder`.
"""
from __future__ import annotations

from typing import Any

import msgspec

from core.model import jsonutil
from core.model.schema import Alert, Incident

_CONTEXT_KEYS = ("tenant", "forwarder")


def to_raw(alert: Alert | Incident) -> dict[str, Any]:
    """The document `encode` writes, as a dict."""
    original = alert.raw
    if not isinstance(original, dict):
        return {name: value for name, value in msgspec.to_builtins(alert).items() if name != "raw"}
    forwarder: dict[str, Any] = {"version_key": alert.version_key}
    shadowed = {key: original[key] for key in _CONTEXT_KEYS if key in original}
    if shadowed:
        forwarder["shadowed"] = shadowed
    return {**original, "tenant": {"id": alert.tenant.id, "label": alert.tenant.label}, "forwarder": forwarder}


def encode(alert: Alert | Incident) -> bytes:
    """One line of JSON (no trailing newline)."""
    return jsonutil.dumps(to_raw(alert))
