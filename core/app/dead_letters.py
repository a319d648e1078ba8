"""Inspect and re-send dead letters.

A delivery dead letter goes back into its sink's outbox as it was. A normalisation dead
letter is normalised again (the mapping may have been fixed since) and routed like a
freshly polled alert; an encoding dead letter likewise, to its own sink only. One that
still fails stays.
"""
from __future__ import annotations

from datetime import datetime, timezone

from rich.table import Table

from core.app.config import Config, sinks_for_alert
from core.app.pipeline import encode_for_sinks
from core.model import jsonutil
from core.model.schema import TenantRef
from core.state import DeadLetter
from core.state.sqlite import SQLiteStore
from mappings import Encoder, encoder


def table(dead: list[DeadLetter]) -> Table:
    view = Table(title=f"{len(dead)} dead letters", title_justify="left")
    for column in ("id", "when", "stage", "sink", "tenant", "alert version", "reason"):
        view.add_column(column, overflow="fold")
    for d in dead:
        when = datetime.fromtimestamp(d.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        view.add_row(str(d.id), when, d.stage, d.sink or "-", d.tenant_id, d.version_key or "-", d.reason)
    return view


def replay(config: Config, store: SQLiteStore, dead: list[DeadLetter]) -> tuple[int, int]:
    """Returns (replayed, still failing)."""
    labels = {t.tenant_id: label for label, t in config.tenants.items()}
    encoders = {name: encoder(sink.format) for name, sink in config.sinks.items()}
    replayed, kept = [], 0
    for letter in dead:
        if letter.stage == "deliver" and letter.sink in config.sinks and letter.meta is not None:
            store.outbox_append(letter.sink, [(letter.meta, letter.payload)])
            replayed.append(letter.id)
        elif _requeue(config, store, letter, labels.get(letter.tenant_id), encoders):
            replayed.append(letter.id)
        else:
            kept += 1
    store.dead_letters_remove(replayed)
    return len(replayed), kept


def _requeue(config: Config, store: SQLiteStore, letter: DeadLetter, label: str | None,
             encoders: dict[str, Encoder]) -> bool:
    """Normalise, route and encode the alert of a "normalise" or "encode" dead letter again."""
    from mappings.graph_alerts_v2 import MappingError, normalise

    if letter.stage not in ("normalise", "encode") or label is None:
        return False
    try:
        alert = normalise(jsonutil.loads(letter.payload), TenantRef(id=letter.tenant_id, label=label),
                          datetime.now(timezone.utc))
    except (MappingError, ValueError):
        return False
    sinks = sinks_for_alert(config.routes_or_default(), label, alert.severity, alert.service_source)
    if letter.stage == "encode":
        sinks = {letter.sink} & set(config.sinks)
    queued, failures = encode_for_sinks(alert, sinks, encoders)
    if failures or not queued:
        return False
    for sink, meta, body in queued:
        store.outbox_append(sink, [(meta, body)])
    return True
