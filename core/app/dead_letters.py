"""Inspect and re-send dead letters.

A delivery dead letter goes back into its sink's outbox as it was. A normalisation dead
letter is normalised again, by the mapping of the source that read it (the mapping may have
been fixed since), and routed like a freshly polled record; an encoding dead letter
likewise, to its own sink only. One that still fails stays, and so does a slice of time
skipped (stage "poll"): `backfill --since` reads it again, not a replay.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from rich.markup import escape

from core.app.config import Config, sinks_for_alert
from core.app.output import Column, keyed
from core.app.pipeline import encode_for_sinks
from core.model import jsonutil
from core.model.schema import TenantRef
from core.sources import KINDS, graph_alerts
from core.state import DeadLetter
from core.state.sqlite import SQLiteStore
from mappings import Encoder, SourceMapping, encoder, source_mapping

# The source of a dead letter filed before dead letters kept theirs: only graph_alerts was read then.
OLDEST_SOURCE = graph_alerts.KIND.name


def labels_of(config: Config) -> dict[str, str]:
    """Tenant id -> the label the config gives it."""
    return {t.tenant_id: label for label, t in config.tenants.items()}


def label_of(letter: DeadLetter, labels: dict[str, str]) -> str:
    """The tenant's label: the config's, else the one stored with the event (a tenant since
    removed from the config), else its id."""
    if letter.tenant_id in labels:
        return labels[letter.tenant_id]
    return letter.meta.tenant_label if letter.meta is not None else letter.tenant_id


def source_of(letter: DeadLetter) -> str | None:
    """The source kind that read the letter's record. A delivery letter keeps none (its body is
    re-sent as it was); a normalise or encode letter filed before sources were kept was read by
    the only source there was."""
    if letter.source is not None or letter.stage not in ("normalise", "encode"):
        return letter.source
    return OLDEST_SOURCE


def _when(letter: DeadLetter) -> str:
    return datetime.fromtimestamp(letter.created, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def rows(dead: list[DeadLetter], labels: dict[str, str]) -> list[dict[str, Any]]:
    """One row per dead letter, for `dead-letters list` (table or JSON); the payload stays out."""
    return [
        {"id": d.id, "created": datetime.fromtimestamp(d.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
         "stage": d.stage, "sink": d.sink, "source": source_of(d), "tenant": label_of(d, labels),
         "tenant_id": d.tenant_id,
         "version_key": d.version_key, "reason": d.reason}
        for d in dead
    ]


COLUMNS = [
    keyed("id", right=True),
    Column("when", lambda row: row["created"].replace("T", " ").removesuffix("Z")),
    keyed("stage"), keyed("sink"), keyed("tenant"), keyed("version_key", header="alert version"),
    Column("reason", lambda row: escape(row["reason"])),
]


def describe(letter: DeadLetter, labels: dict[str, str]) -> str:
    """One dead letter in full: where it stopped, why, and the stored alert (indented when it is
    JSON; a CEF line as it is)."""
    held = {"deliver": "the body the sink refused",
            "poll": "the slice of time skipped (`backfill --since` its start reads it again)"}.get(
        letter.stage, "the alert as the API sent it")
    lines = [
        f"dead letter {letter.id}",
        f"stage: {letter.stage}",
        f"sink: {letter.sink or '-'}",
        f"source: {source_of(letter) or '-'}",
        f"tenant: {label_of(letter, labels)} ({letter.tenant_id})",
        f"alert version: {letter.version_key or '-'}",
        f"when: {_when(letter)} UTC",
        f"reason: {letter.reason}",
        f"{held}:",
        _readable(letter.payload),
    ]
    return "\n".join(lines)


def _readable(payload: bytes) -> str:
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except ValueError:  # not JSON (a CEF line), or not UTF-8
        return payload.decode("utf-8", "backslashreplace")


def replay(config: Config, store: SQLiteStore, dead: list[DeadLetter]) -> tuple[int, int]:
    """Returns (replayed, still failing)."""
    labels = labels_of(config)
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
    """Normalise (with the mapping of the source that read it), route and encode the record of a
    "normalise" or "encode" dead letter again."""
    mapping = _mapping_of(letter)
    if letter.stage not in ("normalise", "encode") or label is None or mapping is None:
        return False
    try:
        alert = mapping.normalise(jsonutil.loads(letter.payload), TenantRef(id=letter.tenant_id, label=label),
                                  datetime.now(timezone.utc))
    except (mapping.refusal, ValueError):
        return False
    sinks = sinks_for_alert(config.routes_or_default(), label, alert.severity, alert.service_source, alert.KIND)
    if letter.stage == "encode":
        sinks = {letter.sink} & set(config.sinks)
    queued, failures = encode_for_sinks(alert, sinks, encoders)
    if failures or not queued:
        return False
    for sink, meta, body in queued:
        store.outbox_append(sink, [(meta, body)])
    return True


def _mapping_of(letter: DeadLetter) -> SourceMapping | None:
    """The mapping of the letter's source; None for a source this version does not know (a
    letter of a newer version's source stays, rather than be normalised as something else)."""
    kind = KINDS.get(source_of(letter) or OLDEST_SOURCE)
    return source_mapping(kind.mapping) if kind is not None else None
