"""Source kind `mde_alerts`: the Microsoft Defender for Endpoint API `GET /api/alerts` of a
tenant (WindowsDefenderATP `Alert.Read.All`), read by `lastUpdateTime` with `$expand=evidence`.
The reader (`core/sources/mde.py`) is imported only when a tenant is read live."""
from __future__ import annotations

from core.model.schema import Alert
from core.sources import graph_alerts
from core.sources.contract import Permission, SourceKind, VersionKey, lazy_reader

KIND = SourceKind(
    name="mde_alerts",
    permission=Permission(api="WindowsDefenderATP", name="Alert.Read.All"),
    mapping="mde_alerts",
    path="/api/alerts",
    # As Graph's alerts, an MDE alert is updated in place; each update is a new lastUpdateTime.
    version=VersionKey(id="id", time="lastUpdateTime"),
    reader=lazy_reader("core.sources.mde", "MdeSource"),
    event_kind=Alert.KIND,
    # Graph's alerts_v2 serves every MDE alert too, under the same id: where a tenant reads
    # both, Graph's versions are the ones forwarded; MDE forwards only an alert that no source
    # has taken yet (one Graph has not indexed yet), and never marks a version seen for Graph.
    defers_to=graph_alerts.KIND.name,
)
