"""The common alert schema every source maps into and every output format maps out of.

The models are `msgspec.Struct`s: typed, built and encoded in C, and read through plain
attributes. A mapping checks what it puts in (the Graph mapping checks every JSON type), so
building a model does not validate a second time; `decode_alert` validates what it reads.
Fields are declared in the order the `alert` format writes them.

Enum-like fields are plain strings on purpose: Defender adds members over time
(see `Prefer: include-unknown-enum-members`), and an unknown value must be kept,
never rejected. Known members are stored in Graph's lowerCamelCase spelling whatever
case the API used (the mapping folds case); unknown members are stored verbatim.
"""
from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Any, ClassVar, Literal, NamedTuple

import msgspec

SCHEMA_VERSION = "1.0"


class Severity(IntEnum):
    """Normalised severity; the order matters for `min_severity` routing."""

    unknown = 0
    informational = 1
    low = 2
    medium = 3
    high = 4
    critical = 5

    @classmethod
    def of_value(cls, value: int) -> "Severity":
        """The member of `value`, by a tuple look-up (the enum's own call is ten times slower)."""
        return _SEVERITY_BY_VALUE[value]

    @classmethod
    def parse(cls, value: str | None) -> "Severity":
        if not value:
            return cls.unknown
        return cls.__members__.get(value.strip().lower(), cls.unknown)


_SEVERITY_BY_VALUE = tuple(Severity)


class _Model(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Fields are given by keyword; reading a model (decode_alert) refuses a key it has no field for."""


class TenantRef(_Model, kw_only=True):
    id: str
    label: str


class FileInfo(_Model, kw_only=True):
    name: str | None = None
    path: str | None = None
    size: int | None = None
    sha1: str | None = None
    sha256: str | None = None
    md5: str | None = None
    publisher: str | None = None
    signer: str | None = None
    issuer: str | None = None


class UserInfo(_Model, kw_only=True):
    account_name: str | None = None
    domain: str | None = None
    upn: str | None = None
    sid: str | None = None
    aad_user_id: str | None = None
    display_name: str | None = None


class EvidenceBase(_Model, kw_only=True):
    """Fields every Graph evidence carries (alertEvidence)."""

    odata_type: str
    created: datetime | None = None
    verdict: str | None = None
    remediation_status: str | None = None
    roles: list[str] = []
    detailed_roles: list[str] = []
    tags: list[str] = []
    # Evidence properties with no typed field above, kept verbatim so nothing is lost.
    extra: dict[str, Any] = {}


class DeviceEvidence(EvidenceBase, kw_only=True):
    kind: Literal["device"] = "device"
    mde_device_id: str | None = None
    aad_device_id: str | None = None
    fqdn: str | None = None
    hostname: str | None = None
    dns_domain: str | None = None
    nt_domain: str | None = None
    os_platform: str | None = None
    os_build: int | None = None
    os_version: str | None = None
    ip_addresses: list[str] = []
    last_ip: str | None = None
    last_external_ip: str | None = None
    logged_on_users: list[UserInfo] = []
    health_status: str | None = None
    risk_score: str | None = None
    rbac_group: str | None = None


class UserEvidence(EvidenceBase, kw_only=True):
    kind: Literal["user"] = "user"
    user: UserInfo = msgspec.field(default_factory=UserInfo)  # empty when Graph sends none


class FileEvidence(EvidenceBase, kw_only=True):
    kind: Literal["file"] = "file"
    file: FileInfo = msgspec.field(default_factory=FileInfo)  # empty when Graph sends none
    mde_device_id: str | None = None
    detection_status: str | None = None


class ProcessEvidence(EvidenceBase, kw_only=True):
    kind: Literal["process"] = "process"
    pid: int | None = None
    parent_pid: int | None = None
    command_line: str | None = None
    # The process's creation time (Graph's processCreationDateTime); `created` (the base
    # field) is the evidence's own createdDateTime, as on every other evidence.
    process_created: datetime | None = None
    parent_created: datetime | None = None
    image: FileInfo | None = None
    parent_image: FileInfo | None = None
    user: UserInfo | None = None
    mde_device_id: str | None = None
    detection_status: str | None = None


class IpEvidence(EvidenceBase, kw_only=True):
    kind: Literal["ip"] = "ip"
    address: str | None = None
    country_code: str | None = None
    city: str | None = None
    state: str | None = None
    country_name: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class UrlEvidence(EvidenceBase, kw_only=True):
    kind: Literal["url"] = "url"
    url: str | None = None


class MailboxEvidence(EvidenceBase, kw_only=True):
    kind: Literal["mailbox"] = "mailbox"
    primary_address: str | None = None
    upn: str | None = None
    display_name: str | None = None
    user: UserInfo | None = None


class MailMessageEvidence(EvidenceBase, kw_only=True):
    kind: Literal["mail_message"] = "mail_message"
    network_message_id: str | None = None
    internet_message_id: str | None = None
    subject: str | None = None
    sender: str | None = None
    sender_display_name: str | None = None
    sender_ip: str | None = None
    recipient: str | None = None
    received: datetime | None = None
    delivery_action: str | None = None
    delivery_location: str | None = None
    direction: str | None = None
    urls: list[str] = []
    threats: list[str] = []


class CloudApplicationEvidence(EvidenceBase, kw_only=True):
    kind: Literal["cloud_application"] = "cloud_application"
    app_id: str | None = None
    display_name: str | None = None
    instance_name: str | None = None
    publisher: str | None = None


class RegistryEvidence(EvidenceBase, kw_only=True):
    kind: Literal["registry"] = "registry"
    hive: str | None = None
    key: str | None = None
    value_name: str | None = None
    value_data: str | None = None
    value_type: str | None = None
    mde_device_id: str | None = None


class OtherEvidence(EvidenceBase, kw_only=True):
    """An evidence type with no typed model (rare or new): the whole object is in `extra`."""

    kind: Literal["other"] = "other"


Evidence = (
    DeviceEvidence
    | UserEvidence
    | FileEvidence
    | ProcessEvidence
    | IpEvidence
    | UrlEvidence
    | MailboxEvidence
    | MailMessageEvidence
    | CloudApplicationEvidence
    | RegistryEvidence
    | OtherEvidence
)
# Each evidence model by its `kind`, the tag `decode_alert` reads an evidence back by.
EVIDENCE_KINDS: dict[str, type[EvidenceBase]] = {
    "device": DeviceEvidence,
    "user": UserEvidence,
    "file": FileEvidence,
    "process": ProcessEvidence,
    "ip": IpEvidence,
    "url": UrlEvidence,
    "mailbox": MailboxEvidence,
    "mail_message": MailMessageEvidence,
    "cloud_application": CloudApplicationEvidence,
    "registry": RegistryEvidence,
    "other": OtherEvidence,
}


class AlertTimes(_Model, kw_only=True):
    created: datetime | None = None
    last_updated: datetime
    first_activity: datetime | None = None
    last_activity: datetime | None = None
    resolved: datetime | None = None
    ingested: datetime


class Comment(_Model, kw_only=True):
    text: str | None = None
    author: str | None = None
    created: datetime | None = None


class Alert(_Model, kw_only=True):
    """One version of one Defender alert of one customer tenant."""

    KIND: ClassVar[str] = "alert"  # the event kind: routes choose by it, sinks keep kinds apart
    schema_version: str = SCHEMA_VERSION
    source: str  # "graph_alerts" (later "mde_alerts")
    tenant: TenantRef
    id: str
    provider_alert_id: str | None = None
    incident_id: str | None = None
    version_key: str
    times: AlertTimes
    severity: Severity
    severity_original: str | None = None
    status: str | None = None
    classification: str | None = None
    determination: str | None = None
    title: str | None = None
    description: str | None = None
    recommended_actions: str | None = None
    category: str | None = None
    categories: list[str] = []
    mitre_techniques: list[str] = []
    service_source: str | None = None
    detection_source: str | None = None
    product_name: str | None = None
    detector_id: str | None = None
    alert_policy_id: str | None = None
    alert_web_url: str | None = None
    incident_web_url: str | None = None
    assigned_to: str | None = None
    actor_display_name: str | None = None
    threat_display_name: str | None = None
    threat_family_name: str | None = None
    investigation_state: str | None = None
    system_tags: list[str] = []
    comments: list[Comment] = []
    custom_details: dict[str, Any] = {}
    additional_data: dict[str, Any] = {}
    evidence: list[EvidenceBase] = []  # each of a model of EVIDENCE_KINDS, by its `kind`
    # Alert properties with no typed field above (Graph's tenantId, properties Graph adds
    # later), verbatim, so that formats other than `raw` carry them too.
    extra: dict[str, Any] = {}
    # Set by the pipeline: True when no earlier version of this alert was ever queued
    # (OCSF's Create), False for an update; None where nobody knows (e.g. `convert`).
    first_sight: bool | None = None
    # The alert exactly as the API sent it; never validated, so it is kept whole.
    raw: Any = None


class IncidentTimes(_Model, kw_only=True):
    created: datetime | None = None
    last_updated: datetime
    ingested: datetime


class Incident(_Model, kw_only=True):
    """One version of one Defender XDR incident of one customer tenant: the alerts Defender
    correlated, as the SOC works them. Its alerts are linked by id (`alert_ids`, and each
    Alert's `incident_id`), never embedded: an alert is forwarded as its own event."""

    KIND: ClassVar[str] = "incident"
    kind: Literal["incident"] = "incident"  # what tells an incident from an alert in the `alert` format
    schema_version: str = SCHEMA_VERSION
    source: str  # "graph_incidents"
    tenant: TenantRef
    id: str
    version_key: str
    times: IncidentTimes
    severity: Severity
    severity_original: str | None = None
    status: str | None = None  # active, inProgress, resolved, redirected, awaitingAction, ...
    classification: str | None = None
    determination: str | None = None
    title: str | None = None  # Graph's displayName
    description: str | None = None
    summary: str | None = None
    assigned_to: str | None = None
    last_modified_by: str | None = None
    incident_web_url: str | None = None
    # Set when Defender merged this incident into another (status `redirected`): the one to follow.
    redirect_incident_id: str | None = None
    priority_score: int | None = None
    custom_tags: list[str] = []
    system_tags: list[str] = []
    comments: list[Comment] = []
    resolving_comment: str | None = None
    alert_ids: list[str] = []
    extra: dict[str, Any] = {}  # incident properties with no typed field above, verbatim
    first_sight: bool | None = None  # as Alert's
    raw: Any = None  # the incident exactly as the API sent it

    @property
    def service_source(self) -> None:
        """Routes filter alerts by their product; an incident spans products, so it has none."""
        return None


# One event of the common schema, of either kind.
Event = Alert | Incident


def version_key(tenant_id: str, alert_id: str, last_updated: datetime) -> str:
    """The identity of one alert version: what dedupe, `_id` and message ids are built on."""
    if last_updated.tzinfo is UTC and last_updated.year >= 1000:
        # What the mapping produces (UTC, 4-digit years): the same text as below, at half the cost.
        return f"{tenant_id}/{alert_id}/{last_updated.isoformat(timespec='microseconds')[:-6]}Z"
    return f"{tenant_id}/{alert_id}/{last_updated.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"



class EventMeta(NamedTuple):
    """What a connector may need of an alert besides its encoded body: the outbox keeps it
    in columns beside the body, so delivery never decodes an alert again. (A named tuple:
    the outbox builds one per event on the delivery hot path.)"""

    tenant_id: str
    tenant_label: str
    alert_id: str
    version_key: str
    severity: Severity
    time: float  # the version's lastUpdateDateTime, seconds since the epoch
    kind: str = "alert"  # Alert.KIND or Incident.KIND

    @classmethod
    def of(cls, event: Alert | Incident) -> "EventMeta":
        return cls(event.tenant.id, event.tenant.label, event.id, event.version_key, event.severity,
                   event.times.last_updated.timestamp(), event.KIND)


def encode_alert(alert: Alert) -> bytes:
    """The common schema itself as one line of JSON (the `alert` format): every field, in
    declaration order, times as RFC 3339 UTC with `Z`."""
    return msgspec.json.encode(alert)


def decode_alert(body: bytes) -> Alert:
    """`encode_alert` read back, every type checked; raises `msgspec.ValidationError` (a
    ValueError) for what is not an encoded Alert."""
    return alert_from_data(msgspec.json.decode(body))


def decode_event(body: bytes) -> Alert | Incident:
    """`encode_alert` of an alert or an incident read back (an incident says `kind`)."""
    data = msgspec.json.decode(body)
    if isinstance(data, dict) and data.get("kind") == Incident.KIND:
        return msgspec.convert(data, Incident)
    return alert_from_data(data)


def alert_from_data(data: Any) -> Alert:
    """An Alert from JSON-like data (an encoded alert, parsed), every type checked: the
    evidence by its `kind`, times from their RFC 3339 text."""
    if not isinstance(data, dict):
        raise msgspec.ValidationError("Expected `object`")
    fields = dict(data)
    evidence = fields.pop("evidence", [])
    alert = msgspec.convert(fields, Alert)
    alert.evidence = [msgspec.convert(item, EVIDENCE_KINDS[_kind(item)]) for item in evidence]
    return alert


def _kind(item: Any) -> str:
    kind = item.get("kind") if isinstance(item, dict) else None
    if kind not in EVIDENCE_KINDS:
        raise msgspec.ValidationError(f"evidence of unknown kind {kind!r}")
    return kind
