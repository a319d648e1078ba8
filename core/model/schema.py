"""The common alert schema every source maps into and every output format maps out of.

Enum-like fields are plain strings on purpose: Defender adds members over time
(see `Prefer: include-unknown-enum-members`), and an unknown value must be kept,
never rejected. Known members are stored in Graph's lowerCamelCase spelling whatever
case the API used (the mapping folds case); unknown members are stored verbatim.
"""
from __future__ import annotations

from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class TenantRef(_Model):
    id: str
    label: str


class FileInfo(_Model):
    name: str | None = None
    path: str | None = None
    size: int | None = None
    sha1: str | None = None
    sha256: str | None = None
    md5: str | None = None
    publisher: str | None = None
    signer: str | None = None
    issuer: str | None = None


class UserInfo(_Model):
    account_name: str | None = None
    domain: str | None = None
    upn: str | None = None
    sid: str | None = None
    aad_user_id: str | None = None
    display_name: str | None = None


class _EvidenceBase(_Model):
    """Fields every Graph evidence carries (alertEvidence)."""

    odata_type: str
    created: datetime | None = None
    verdict: str | None = None
    remediation_status: str | None = None
    roles: list[str] = Field(default_factory=list)
    detailed_roles: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    # Evidence properties with no typed field above, kept verbatim so nothing is lost.
    extra: dict[str, Any] = Field(default_factory=dict)


class DeviceEvidence(_EvidenceBase):
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
    ip_addresses: list[str] = Field(default_factory=list)
    last_ip: str | None = None
    last_external_ip: str | None = None
    logged_on_users: list[UserInfo] = Field(default_factory=list)
    health_status: str | None = None
    risk_score: str | None = None
    rbac_group: str | None = None


class UserEvidence(_EvidenceBase):
    kind: Literal["user"] = "user"
    user: UserInfo


class FileEvidence(_EvidenceBase):
    kind: Literal["file"] = "file"
    file: FileInfo
    mde_device_id: str | None = None
    detection_status: str | None = None


class ProcessEvidence(_EvidenceBase):
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


class IpEvidence(_EvidenceBase):
    kind: Literal["ip"] = "ip"
    address: str | None = None
    country_code: str | None = None
    city: str | None = None
    state: str | None = None
    country_name: str | None = None
    latitude: float | None = None
    longitude: float | None = None


class UrlEvidence(_EvidenceBase):
    kind: Literal["url"] = "url"
    url: str | None = None


class MailboxEvidence(_EvidenceBase):
    kind: Literal["mailbox"] = "mailbox"
    primary_address: str | None = None
    upn: str | None = None
    display_name: str | None = None
    user: UserInfo | None = None


class MailMessageEvidence(_EvidenceBase):
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
    urls: list[str] = Field(default_factory=list)
    threats: list[str] = Field(default_factory=list)


class CloudApplicationEvidence(_EvidenceBase):
    kind: Literal["cloud_application"] = "cloud_application"
    app_id: str | None = None
    display_name: str | None = None
    instance_name: str | None = None
    publisher: str | None = None


class RegistryEvidence(_EvidenceBase):
    kind: Literal["registry"] = "registry"
    hive: str | None = None
    key: str | None = None
    value_name: str | None = None
    value_data: str | None = None
    value_type: str | None = None
    mde_device_id: str | None = None


class OtherEvidence(_EvidenceBase):
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


class AlertTimes(_Model):
    created: datetime | None = None
    last_updated: datetime
    first_activity: datetime | None = None
    last_activity: datetime | None = None
    resolved: datetime | None = None
    ingested: datetime


class Comment(_Model):
    text: str | None = None
    author: str | None = None
    created: datetime | None = None


class Alert(_Model):
    """One version of one Defender alert of one customer tenant."""

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
    categories: list[str] = Field(default_factory=list)
    mitre_techniques: list[str] = Field(default_factory=list)
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
    system_tags: list[str] = Field(default_factory=list)
    comments: list[Comment] = Field(default_factory=list)
    custom_details: dict[str, Any] = Field(default_factory=dict)
    additional_data: dict[str, Any] = Field(default_factory=dict)
    # Discriminated on `kind`: pydantic picks the model from the tag instead of trying all
    # eleven (several times faster, and a dict can never land in the wrong model).
    evidence: list[Annotated[Evidence, Field(discriminator="kind")]] = Field(default_factory=list)
    # Alert properties with no typed field above (Graph's tenantId, properties Graph adds
    # later), verbatim, so that formats other than `raw` carry them too.
    extra: dict[str, Any] = Field(default_factory=dict)
    # Set by the pipeline: True when no earlier version of this alert was ever queued
    # (OCSF's Create), False for an update; None where nobody knows (e.g. `convert`).
    first_sight: bool | None = None
    # The alert exactly as the API sent it; never validated, so it is kept whole.
    raw: Any = None


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

    @classmethod
    def of(cls, alert: Alert) -> "EventMeta":
        return cls(alert.tenant.id, alert.tenant.label, alert.id, alert.version_key, alert.severity,
                   alert.times.last_updated.timestamp())
