"""Alert sources: one module per source kind, the readers of their APIs, auth, and the
incremental window (`incremental.py`).

The registry below is the one list of source kinds. Adding one = its module here (a
`SourceKind`, see `contract.py`), its entry in `KINDS`, its mapping in `mappings/`, and tests.
"""
from __future__ import annotations

from core.sources import graph_alerts, graph_incidents, mde_alerts
from core.sources.contract import (
    AlertSource,
    BrokenWindow,
    LiveContext,
    Page,
    Permission,
    SourceError,
    SourceKind,
    VersionKey,
    lazy_reader,
)

KINDS: dict[str, SourceKind] = {kind.name: kind for kind in (graph_alerts.KIND, graph_incidents.KIND, mde_alerts.KIND)}
# What a tenant reads when its config names no `sources`.
DEFAULT_SOURCES: tuple[str, ...] = (graph_alerts.KIND.name,)

__all__ = [
    "DEFAULT_SOURCES", "KINDS", "AlertSource", "BrokenWindow", "LiveContext", "Page", "Permission", "SourceError",
    "SourceKind", "VersionKey", "lazy_reader",
]
