"""Microsoft Defender for Endpoint API `GET /api/alerts` alert -> `core.model.schema.Alert`.

Tables on the machinery of the Graph mapping (`mappings.graph_alerts_v2`: converters, `fill`,
enums matched case-insensitively and stored in Graph's spelling, unknown values verbatim), so
an MDE alert and the same alert read from Graph land in the same fields:

- `id` is MDE's id, which is also Graph's `id` and `providerAlertId` of that alert: one id
  space for both sources (docs/sources.md, "One alert, forwarded once").
- `incidentId` and `investigationId` are numbers in MDE; the incident id becomes its decimal
  string as Graph's is. `mitreTechniques` is documented as a String but sent as an array:
  either is accepted (a string becomes a one-item list).
- Enumerations: MDE sends PascalCase (`New`, `InProgress`, `TruePositive`, `Benign`); they
  fold onto Graph's members (`new`, `inProgress`, `truePositive`, `benign`). Severity
  `UnSpecified` is unknown. `detectionSource` keeps MDE's own names (`WindowsDefenderAtp`,
  `WindowsDefenderAv`): they are not Graph's members, and the ECS document names them so.
- The alert's device (`machineId`, `computerDnsName`, `rbacGroupName`) becomes a device
  evidence, first in the list, as Graph gives it. Evidence (`$expand=evidence`, one flat shape
  for every type) dispatches on `entityType` into the typed evidence models; its `entityType`
  and any property no row knows stay in the evidence's `extra`, an unknown type is
  `OtherEvidence` with the whole object. Elastic's pipeline fixture splits the list into one
  object per document: a single object is read as a one-item list.
- `aadTenantId`, `investigationId`, `relatedUser` and any property MDE adds later are kept in
  the alert's `extra`, the alert whole in `raw`.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from core.model.schema import (
    Alert,
    AlertTimes,
    DeviceEvidence,
    EvidenceBase,
    FileEvidence,
    FileInfo,
    IpEvidence,
    OtherEvidence,
    ProcessEvidence,
    RegistryEvidence,
    Severity,
    TenantRef,
    UrlEvidence,
    UserEvidence,
    UserInfo,
    version_key,
)
from mappings.graph_alerts_v2 import (
    ALERT_CLASSIFICATION,
    ALERT_DETERMINATION,
    ALERT_STATUS,
    COMMENT,
    DETECTION_STATUS,
    ID_TEXT,
    INTEGER,
    INVESTIGATION_STATE,
    TEXT,
    TEXT_LIST,
    TIMESTAMP,
    Converter,
    MappingError,
    NestedList,
    Row,
    Table,
    _at,
    _expected,
    _Invalid,
    _object,
    fill,
    identity,
    severity_of,
)

SOURCE = "mde_alerts"
SERVICE_SOURCE = "microsoftDefenderForEndpoint"  # every alert of this API is Defender for Endpoint's
PRODUCT_NAME = "Microsoft Defender for Endpoint"

__all__ = ["MappingError", "normalise", "ALERT", "TIMES", "EVIDENCE_TABLES"]

_SEVERITIES = {
    "unspecified": Severity.unknown,
    "unknown": Severity.unknown,
    "informational": Severity.informational,
    "low": Severity.low,
    "medium": Severity.medium,
    "high": Severity.high,
}


class _Techniques(Converter):
    """mitreTechniques: documented as a String, sent as an array; both are taken."""

    def convert(self, value: Any) -> list[str]:
        if isinstance(value, str):
            return [value]
        return TEXT_LIST.convert(value)


# A field written `parent.child` fills `child` of the sub-model `parent` (FileInfo, UserInfo):
# MDE's evidence is flat where Graph's nests the image file and the user account.
_SUB_MODELS: Mapping[str, type] = {"file": FileInfo, "image": FileInfo, "parent_image": FileInfo, "user": UserInfo}

_BASE = (
    ("evidenceCreationTime", "created", TIMESTAMP),
)
_USER = (
    ("accountName", "user.account_name", TEXT),
    ("domainName", "user.domain", TEXT),
    ("userPrincipalName", "user.upn", TEXT),
    ("userSid", "user.sid", TEXT),
    ("aadUserId", "user.aad_user_id", TEXT),
)
_FILE = (
    ("fileName", "file.name", TEXT),
    ("filePath", "file.path", TEXT),
    ("sha1", "file.sha1", TEXT),
    ("sha256", "file.sha256", TEXT),
)

USER = Table(*_BASE, *_USER, model=UserEvidence)
FILE = Table(*_BASE, *_FILE, ("detectionStatus", "detection_status", DETECTION_STATUS), model=FileEvidence)
PROCESS = Table(
    *_BASE,
    ("processId", "pid", INTEGER),
    ("parentProcessId", "parent_pid", INTEGER),
    ("processCommandLine", "command_line", TEXT),
    ("processCreationTime", "process_created", TIMESTAMP),
    ("parentProcessCreationTime", "parent_created", TIMESTAMP),
    *((graph, field.replace("file.", "image."), convert) for graph, field, convert in _FILE),
    ("parentProcessFileName", "parent_image.name", TEXT),
    ("parentProcessFilePath", "parent_image.path", TEXT),
    *_USER,
    ("detectionStatus", "detection_status", DETECTION_STATUS),
    model=ProcessEvidence,
)
IP = Table(*_BASE, ("ipAddress", "address", TEXT), model=IpEvidence)
URL = Table(*_BASE, ("url", "url", TEXT), model=UrlEvidence)
REGISTRY = Table(
    *_BASE,
    ("registryHive", "hive", TEXT),
    ("registryKey", "key", TEXT),
    ("registryValueName", "value_name", TEXT),
    ("registryValue", "value_data", TEXT),
    ("registryValueType", "value_type", TEXT),
    model=RegistryEvidence,
)
DEVICE = Table(
    *_BASE,
    ("machineId", "mde_device_id", TEXT),
    ("computerDnsName", "fqdn", TEXT),
    ("rbacGroupName", "rbac_group", TEXT),
    model=DeviceEvidence,
)

_NAMESPACE = "#microsoft.graph.security."
# entityType (any case) -> (the Graph evidence type it is, its table). Every other type is
# OtherEvidence, the whole object kept.
EVIDENCE_TABLES: Mapping[str, tuple[str, Table]] = {
    "user": ("userEvidence", USER),
    "file": ("fileEvidence", FILE),
    "process": ("processEvidence", PROCESS),
    "ip": ("ipEvidence", IP),
    "url": ("urlEvidence", URL),
    "registry": ("registryValueEvidence", REGISTRY),
    "registryvalue": ("registryValueEvidence", REGISTRY),
    "registrykey": ("registryKeyEvidence", REGISTRY),
    "machine": ("deviceEvidence", DEVICE),
}


def _build(table: Table, odata_type: str, item: dict[str, Any]) -> EvidenceBase:
    rest = {key: value for key, value in item.items() if value is not None}
    fields = fill(table, rest)
    nested: dict[str, dict[str, Any]] = {}
    for name in [name for name in fields if "." in name]:
        value = fields.pop(name)
        if value is not None:
            parent, child = name.split(".", 1)
            nested.setdefault(parent, {})[child] = value
    for parent, values in nested.items():
        fields[parent] = _SUB_MODELS[parent](**values)
    # entityType stays in extra: the name MDE gave the type, which MDE's ECS shape writes.
    return table.make({**fields, "odata_type": _NAMESPACE + odata_type, "extra": rest})


def _other(item: dict[str, Any]) -> EvidenceBase:
    return OtherEvidence(odata_type=str(item.get("entityType") or ""), extra=dict(item))


class _Evidence(Converter):
    """The alert's evidence: each by its entityType, OtherEvidence for any other."""

    def put(self, value: Any, row: Row, fields: dict[str, Any], rest: dict[str, Any]) -> None:
        items = [value] if isinstance(value, dict) else value
        if not isinstance(items, list):
            raise _expected("a list", value)
        out: list[EvidenceBase] = []
        for index, item in enumerate(items):
            try:
                item = _object(item)
                kind = item.get("entityType")
                found = EVIDENCE_TABLES.get(kind.lower()) if isinstance(kind, str) else None
                out.append(_other(item) if found is None else _build(found[1], found[0], item))
            except _Invalid as error:
                raise _at(index, error) from None
        fields[row.field] = out


TIMES = Table(
    ("alertCreationTime", "created", TIMESTAMP),
    ("lastUpdateTime", "last_updated", TIMESTAMP),
    ("firstEventTime", "first_activity", TIMESTAMP),
    ("lastEventTime", "last_activity", TIMESTAMP),
    ("resolvedTime", "resolved", TIMESTAMP),
    # and `ingested`, the time the forwarder read the alert
)

# The MDE properties with a field of the common Alert (docs/sources.md prints this table).
ALERT = Table(
    ("id", "id", TEXT),
    ("incidentId", "incident_id", ID_TEXT),  # a number in MDE
    ("assignedTo", "assigned_to", TEXT),
    ("severity", "severity_original", TEXT),  # `severity` itself is derived from it
    ("status", "status", ALERT_STATUS),
    ("classification", "classification", ALERT_CLASSIFICATION),
    ("determination", "determination", ALERT_DETERMINATION),
    ("investigationState", "investigation_state", INVESTIGATION_STATE),
    ("detectionSource", "detection_source", TEXT),
    ("detectorId", "detector_id", TEXT),
    ("category", "category", TEXT),
    ("threatFamilyName", "threat_family_name", TEXT),
    ("threatName", "threat_display_name", TEXT),
    ("title", "title", TEXT),
    ("description", "description", TEXT),
    ("mitreTechniques", "mitre_techniques", _Techniques()),
    ("comments", "comments", NestedList(COMMENT)),
    ("evidence", "evidence", _Evidence()),
    model=Alert,
)
# The alert's device: one device evidence made of these top-level properties.
DEVICE_PROPERTIES = ("machineId", "computerDnsName", "rbacGroupName")


def normalise(raw: dict, tenant: TenantRef, ingested: datetime) -> Alert:
    """One MDE alert of `tenant`, read at `ingested` -> Alert (with `raw` = `raw`).

    Raises MappingError, and only MappingError, when the alert cannot be normalised.
    """
    if not isinstance(raw, dict):
        raise MappingError(f"alert: expected an object, got {type(raw).__name__}")
    rest = dict(raw)
    device = {name: rest.pop(name) for name in DEVICE_PROPERTIES if rest.get(name) is not None}
    for name in DEVICE_PROPERTIES:
        rest.pop(name, None)
    try:
        fields = fill(ALERT, rest)
        if device:
            fields["evidence"] = [_build(DEVICE, "deviceEvidence", device), *fields.get("evidence", ())]
        times = fill(TIMES, rest)
    except _Invalid as error:
        raise MappingError(f"{error.where()}: {error.reason}") from None
    alert_id, last_updated = identity(fields, times, "lastUpdateTime")
    severity = severity_of(fields.get("severity_original"), _SEVERITIES)
    extra = {key: value for key, value in rest.items() if value is not None}
    return Alert(**fields, source=SOURCE, tenant=tenant, provider_alert_id=alert_id, service_source=SERVICE_SOURCE,
                 product_name=PRODUCT_NAME, times=AlertTimes(**times, ingested=ingested), extra=extra,
                 version_key=version_key(tenant.id, alert_id, last_updated), raw=raw, severity=severity)
