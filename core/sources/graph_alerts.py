"""Source kind `graph_alerts`: Microsoft Graph `GET /v1.0/security/alerts_v2`, the Defender XDR
alerts of a tenant (every Defender product, one schema), read by `lastUpdateDateTime`."""
from __future__ import annotations

from core.model.schema import Alert
from core.sources.contract import Permission, SourceKind, VersionKey, lazy_reader

KIND = SourceKind(
    name="graph_alerts",
    permission=Permission(api="Microsoft Graph", name="SecurityAlert.Read.All"),
    mapping="graph_alerts_v2",
    path="/v1.0/security/alerts_v2",
    # An alert is updated in place (status, classification, evidence...); each update gives it
    # a new lastUpdateDateTime, and it is a new version to forward.
    version=VersionKey(id="id", time="lastUpdateDateTime"),
    reader=lazy_reader("core.sources.graph", "GraphSource"),
    event_kind=Alert.KIND,
)
