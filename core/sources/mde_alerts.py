"""Source kind `mde_alerts`: the Microsoft Defender for Endpoint API `GET /api/alerts` of a
tenant (WindowsDefenderATP `Alert.Read.All`), read by `lastUpdateTime` with `$expand=evidence`.
The reader (`core/sources/mde.py`) is imported only when a tenant is read live."""
from __future__ import annotations

from core.sources.contract import Permission, SourceKind, VersionKey, lazy_reader

KIND = SourceKind(
    name="mde_alerts",
    permission=Permission(api="WindowsDefenderATP", name="Alert.Read.All"),
    mapping="mde_alerts",
    path="/api/alerts",
    # As Graph's alerts, an MDE alert is updated in place; each update is a new lastUpdateTime.
    version=VersionKey(id="id", time="lastUpdateTime"),
    reader=lazy_reader("core.sources.mde", "MdeSource"),
)
