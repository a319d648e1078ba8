"""Inspect and re-send dead letters.

A delivery dead letter goes back into its sink's outbox as it was. A normalisation dead
letter is normalised again (the mapping may have been fixed since) and routed like a
freshly polled alert; if it still fails it stays, with the new reason.
"""
from __future__ import annotations

from datetime import datetime, timezone

from rich.table import Table

from core import jsonutil
from core.config import Config, sinks_for_alert
from core.schema import TenantRef
from core.state import DeadLetter, SQLiteStore


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
    from mappings.graph_alerts_v2 import MappingError, normalise

    labels = {t.tenant_id: label for label, t in config.tenants.items()}
    routes = config.routes_or_default()
    replayed, kept = [], 0
    for letter in dead:
        if letter.stage == "deliver" and letter.sink in config.sinks:
            store.outbox_append(letter.sink, [(letter.tenant_id, letter.version_key or "", letter.payload)])
            replayed.append(letter.id)
            continue
        label = labels.get(letter.tenant_id)
        if letter.stage != "normalise" or label is None:
            kept += 1
            continue
        try:
            alert = normalise(jsonutil.loads(letter.payload), TenantRef(id=letter.tenant_id, label=label),
                              datetime.now(timezone.utc))
        except (MappingError, ValueError):
            kept += 1
            continue
        payload = alert.model_dump_json().encode()
        for sink in sinks_for_alert(routes, label, alert.severity, alert.service_source):
            store.outbox_append(sink, [(letter.tenant_id, alert.version_key, payload)])
        replayed.append(letter.id)
    store.dead_letters_remove(replayed)
    return len(replayed), kept
