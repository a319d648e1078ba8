"""What a Splunk event carries besides its body, shared by the two ways into Splunk: HEC
(`splunk_hec`) and the add-on's modular input (`splunk_modinput`).

`SOURCETYPES` is the one table of the sourcetype each format's events get; the add-on's
props.conf has a stanza for each (a test holds them together). Raw Graph alerts and incidents
keep the names Splunk's own Microsoft Security add-on gives them, so its props, searches and
Enterprise Security content apply; our own shapes get our own names.
"""
from __future__ import annotations

from pydantic import BaseModel, Field

ALERT = "alert"
INCIDENT = "incident"

# (format, kind) -> sourcetype.
SOURCETYPES: dict[tuple[str, str], str] = {
    ("raw", ALERT): "ms365:defender:incident:alerts",
    ("raw", INCIDENT): "ms365:defender:incident",
    ("cim", ALERT): "defender_forwarder:cim",
    ("cim", INCIDENT): "defender_forwarder:incident:cim",
    ("ocsf", ALERT): "defender_forwarder:ocsf",
    ("ocsf", INCIDENT): "defender_forwarder:incident:ocsf",
    ("ecs", ALERT): "defender_forwarder:ecs",
    ("ecs", INCIDENT): "defender_forwarder:incident:ecs",
    ("alert", ALERT): "defender_forwarder:alert",
    ("alert", INCIDENT): "defender_forwarder:incident:alert",
    ("cef", ALERT): "cef",
    ("cef", INCIDENT): "defender_forwarder:incident:cef",
}


def default_sourcetype(format_name: str, kind: str) -> str:
    """The sourcetype of a `kind` event in `format_name`; a format the table lacks gets a name of its own."""
    return SOURCETYPES.get((format_name, kind), f"defender_forwarder:{format_name}" if kind == ALERT
                           else f"defender_forwarder:{kind}:{format_name}")


class SplunkEventSettings(BaseModel):
    """The keys of a Splunk sink that place its events: index, sourcetype, source, host."""

    index: str | None = Field(default="mssp_{tenant}", description="templates: {tenant}, {tenant_id}; "
                              "empty: the default index of the token or input")
    indexes: dict[str, str] = Field(default_factory=dict, description="customer label -> its index (wins over index)")
    sourcetype: str | None = Field(default=None, description="default: ms365:defender:incident:alerts for raw")
    sourcetype_incident: str | None = Field(default=None, description="incidents' sourcetype; default: "
                                            "ms365:defender:incident for raw")
    index_incident: str | None = Field(default=None, description="incidents' index; default: index")
    source: str = "defender-forwarder:{tenant_id}"
    host: str | None = Field(default=None, description="default: this machine's name")

    def sourcetype_for_format(self, kind: str = ALERT) -> str:
        """The sourcetype of an event of `kind`: alerts as before incidents existed, incidents
        their own, so that searches and the add-on's props keep the two apart."""
        if kind != ALERT:
            return self.sourcetype_incident or default_sourcetype(self.format_name, kind)
        return self.sourcetype or default_sourcetype(self.format_name, kind)

    @property
    def format_name(self) -> str:
        return str(getattr(self, "format", "raw"))

    def index_for(self, kind: str, label: str) -> str | None:
        if kind == ALERT:
            return self.indexes.get(label) or self.index
        return self.index_incident or self.indexes.get(label) or self.index


class EventPlacement:
    """host, source, sourcetype and index of each (tenant, kind), worked out once per pair."""

    def __init__(self, settings: SplunkEventSettings, host: str) -> None:
        self.settings = settings
        self.host = host
        self._by_tenant: dict[tuple[str, str, str], dict[str, str]] = {}

    def of(self, tenant_id: str, label: str, kind: str) -> dict[str, str]:
        key = (tenant_id, label, kind)
        placement = self._by_tenant.get(key)
        if placement is None:
            placement = self._by_tenant[key] = self._work_out(tenant_id, label, kind)
        return placement

    def _work_out(self, tenant_id: str, label: str, kind: str) -> dict[str, str]:
        settings = self.settings
        placement = {"host": template(self.host, tenant_id, label),
                     "source": template(settings.source, tenant_id, label),
                     "sourcetype": settings.sourcetype_for_format(kind)}
        index = settings.index_for(kind, label)
        if index:
            placement["index"] = template(index, tenant_id, label)
        return placement


def template(text: str, tenant_id: str, label: str) -> str:
    return text.replace("{tenant_id}", tenant_id).replace("{tenant}", label)
