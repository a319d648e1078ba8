"""Row helpers both state backends share, so that a row means the same in each: the digest
that files a dead letter once (copied with it by `state copy`, so it must match), and the
dead letter's event meta as columns and back."""
from __future__ import annotations

import hashlib

from core.model.schema import EventMeta, Severity
from core.state import DeadLetter


def meta_columns(meta: EventMeta | None) -> tuple[object, ...]:
    """A dead letter's (tenant_label, alert_id, severity, event_time, kind) columns."""
    if meta is None:
        return (None, None, None, None, None)
    return (meta.tenant_label, meta.alert_id, int(meta.severity), meta.time, meta.kind)


def dead_letter(stage: str, sink: str | None, tenant_id: str, version_key: str | None, payload: bytes, reason: str,
                row_id: int, created: float, label: str | None, alert_id: str | None, severity: int | None,
                when: float | None, kind: str | None, source: str | None) -> DeadLetter:
    """A DeadLetter from its row (the columns in the order the backends select them)."""
    meta = None
    if label is not None and alert_id is not None and version_key is not None and when is not None:
        meta = EventMeta(tenant_id, label, alert_id, version_key, Severity.of_value(severity or 0), when,
                         kind or "alert")
    return DeadLetter(stage, sink, tenant_id, version_key, payload, reason, meta, row_id, created, source)


def digest(dead: DeadLetter) -> str:
    """What makes a dead letter the same as one filed before: stage, sink, tenant and payload."""
    h = hashlib.sha256()
    for part in (dead.stage, dead.sink or "", dead.tenant_id):
        h.update(part.encode() + b"\0")
    h.update(dead.payload)
    return h.hexdigest()
