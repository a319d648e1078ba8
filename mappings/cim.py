r"""`core.model.schema.Alert` -> flat JSON with the Splunk CIM "Alerts" fields, one line.

For Splunk searches without Microsoft's add-on: the CIM fields are in the event itself
(`KV_MODE = json` extracts them), placed as the Splunk Add-on for Microsoft Security's
props place them for Graph alerts (sourcetype `ms365:defender:incident:alerts`), so that
searches and Splunk ES content written against the add-on's CIM fields find the same
values. Choices `docs/formats.md` documents:

| Field | Value | As the add-on? |
|---|---|---|
| `time` | `lastUpdateDateTime` as epoch seconds with millisecond fraction (`1697795647.503`), the first key | the HEC envelope's `time` format; the add-on's TIME_PREFIX is lastUpdateDateTime too |
| `vendor_account` | the customer tenant id | the add-on sets none; CIM's field for the account |
| `mssp_customer` | the customer label of the forwarder's config | forwarder's own |
| `version_key` | `<tenant id>/<alert id>/<lastUpdateDateTime>`, one per alert version | forwarder's own |
| `app` | `ms:defender` | yes |
| `type` | `alert` | yes |
| `vendor_product` | product of `serviceSource` (table shared with the CEF format), else `productName`, else `serviceSource` | the add-on sets none |
| `id` | alert id | yes (`coalesce(id, alertId)`) |
| `severity` | `critical`, `high`, `medium`, `low`, `informational` or `unknown` (a severity Graph adds later: `unknown`; the value sent is in `defender.severity_original`) | yes (`lower(severity)`) |
| `signature`, `subject` | title | yes |
| `signature_id` | `threatFamilyName` | yes (the detector id is in `defender.detector_id`) |
| `description` | description | yes (raw `description`; `body` is deprecated) |
| `mitre_technique_id` | array of MITRE technique ids | yes (`mitreTechniques{}`) |
| `dest` | array: per device evidence, its DNS name, else host name, else MDE device id; then every other host name an evidence is identified by | yes, per device rather than per field; then ours |
| `src` | `serviceSource` | yes |
| `user` | array: `[actorDisplayName]` when there is one, else per evidence user account (user, process, mailbox evidence): UPN, else `domain\account`, else account name (mailbox: else its UPN, else its primary address); then every other account name and e-mail address an evidence is identified by | yes, plus the fallbacks for accounts without UPN; then ours |
| `user_name` | array: the account names of those accounts | `entities{}.accountName` in the add-on (MDE incidents); Graph's equivalent |
| `dest_ip`, `src_ip`, `file_hash`, `process`, ... `evidence_id` | each evidence's identifying values (`mappings.evidence.IDENTITIES`), in the CIM field for each (`IDENTITY_FIELD_OF_PATH`, `IDENTITY_FIELD_OF_KIND`; `identity_markdown()` is the full table) | CIM's Network Traffic, Endpoint, Web fields; `evidence_*` forwarder's own |
| `defender` | every other `Alert` field (see below) | forwarder's own |

- Multi-valued fields (`mitre_technique_id`, `dest`, `user`, `user_name` and the identity
  fields) are always JSON
  arrays (Splunk makes them multivalue fields), without duplicates, in evidence order.
- Absent values are left out (no nulls, no empty arrays): Splunk would show a null as the
  string "null" (the add-on's props test for it).
- Lossless: `defender` holds every `Alert` field that no CIM field above carries exactly,
  in the schema's own names and shape (`mappings.plain`): snake_case; `times` and evidence
  times as RFC 3339 UTC strings ending in `Z`, with microseconds unless zero; evidence with
  its `kind`; `extra` dicts verbatim; absent fields (None, empty lists and dicts) left out. Together with the exact CIM fields (`id`,
  `vendor_account`, `mssp_customer`, `version_key`, `severity`, `signature`, `description`,
  `mitre_technique_id`, `src`, `signature_id`) it rebuilds the Alert. Not `raw`, the
  original API object: the `raw` format carries that. The key is `defender`, not `vendor`,
  so as not to read like one of CIM's `vendor_*` fields.
- Deterministic: fixed key order (table above, then the schema's field order), the same
  Alert gives the same bytes.
"""
from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import orjson

from core.model.schema import Alert, Incident, UserInfo
from mappings.evidence import identities_of, path_steps, plain_names, plain_value, values_along
from mappings.plain import plain
from mappings.products import DEFAULT_PRODUCT, PRODUCTS

APP = "ms:defender"
TYPE = "alert"
VENDOR_KEY = "defender"

# Alert fields a CIM field carries exactly (so `defender` leaves them out); `raw` is left
# out too (see the module docstring).
_CARRIED = frozenset({"id", "tenant", "version_key", "severity", "title", "description", "mitre_techniques",
                      "service_source", "threat_family_name", "raw"})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _seconds(moment: datetime) -> float:
    """Epoch seconds with a millisecond fraction (what Splunk's HEC `time` takes)."""
    d = moment - _EPOCH
    return (d.days * 86400000 + d.seconds * 1000 + d.microseconds // 1000) / 1000


def _json_default(value: Any) -> Any:
    """What orjson writes natively, for the standard library's encoder."""
    if isinstance(value, datetime):
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        return utc.isoformat()[:-6] + "Z"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _dumps(doc: dict[str, Any]) -> bytes:
    """orjson, which writes datetimes itself (RFC 3339, `Z`, microseconds unless zero); the
    standard library for what orjson refuses (integers beyond 64 bits, lone surrogates in
    `extra` data), as `core.model.jsonutil` does."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_UTC_Z)
    except TypeError:
        return json.dumps(doc, ensure_ascii=True, default=_json_default, separators=(",", ":")).encode("ascii")


# --------------------------------------------------------------------------- lossless remainder


def remainder(alert: Alert) -> dict[str, Any]:
    """`defender`: every Alert field that no CIM field carries exactly, as plain JSON data
    (`mappings.plain`: the schema's order, absent fields left out, times as datetimes, which
    orjson writes as RFC 3339 text with `Z`, microseconds unless zero)."""
    return plain(alert, skip=_CARRIED)


# --------------------------------------------------------------------------- CIM fields


def account(user: UserInfo | None) -> tuple[str | None, str | None]:
    """(`user` text, `user_name` text) of one account: UPN, else `domain\\account`, else the
    account name; and the account name."""
    if user is None:
        return None, None
    name = user.account_name
    if user.upn:
        return user.upn, name
    if name and user.domain:
        return f"{user.domain}\\{name}", name
    return name, name


def product(alert: Alert) -> str:
    service_source = alert.service_source
    return (PRODUCTS.get(service_source) if service_source else None) or alert.product_name or service_source \
        or DEFAULT_PRODUCT


def _evidence(evidence: list[Any]) -> tuple[list[str], list[str], list[str]]:
    """One pass over the evidence (each of a model of `EVIDENCE_KINDS`, told apart by its
    `kind`; each branch reads only its kind's fields): (`dest`, `user` accounts, `user_name`)."""
    dest: dict[str, None] = {}  # (dicts: ordered sets)
    users: dict[str, None] = {}
    names: dict[str, None] = {}
    for item in evidence:
        kind = item.kind
        if kind == "device":
            name = item.fqdn or item.hostname or item.mde_device_id
            if name:
                dest[name] = None
        elif kind == "user" or kind == "process" or kind == "mailbox":  # the evidence with a userAccount
            user, name = account(item.user)
            if kind == "mailbox" and not user:
                user = item.upn or item.primary_address
            if user:
                users[user] = None
            if name:
                names[name] = None
    return list(dest), list(users), list(names)


# --------------------------------------------------------------------------- evidence identities

# Where each evidence's identifying values (mappings.evidence.IDENTITIES) go: by the Graph
# property path where a CIM data model has a field for exactly that value (Endpoint's
# Processes, Filesystem and Registry, Network Traffic's sources), else by the value's kind.
# `dest` and `user` keep the add-on's values first; the other fields are multivalue lists.
# The `evidence_*` fields are no CIM field (docs/formats.md lists them all: `identity_markdown`).
IDENTITY_FIELD_OF_PATH = {
    "sourceAddress.ipAddress": "src_ip",
    "senderIp": "src_ip",
    "senderIP": "src_ip",
    "sourcePort": "src_port",
    "fileDetails.fileName": "file_name",
    "fileDetails.filePath": "file_path",
    "processId": "process_id",
    "imageFile.fileName": "process_name",
    "imageFile.filePath": "process_path",
    "parentProcessId": "parent_process_id",
    "parentProcessImageFile.fileName": "parent_process_name",
    "registryHive": "registry_hive",
    "registryKey": "registry_key_name",
    "registryValueName": "registry_value_name",
    "registryValue": "registry_value_data",
}
IDENTITY_FIELD_OF_KIND = {
    "host": "dest",
    "ip": "dest_ip",
    "mac": "dest_mac",
    "port": "dest_port",
    "user": "user",
    "email": "user",
    "hash": "file_hash",
    "url": "url",
    "command": "process",
    "registry": "registry_path",
    "id": "evidence_id",
    "name": "evidence_name",
    "domain": "evidence_domain",
    "resource": "evidence_resource",
}
# The identity fields after `user_name`, in document order (`dest` and `user` have their place).
IDENTITY_FIELDS = ("dest_ip", "src_ip", "dest_mac", "dest_port", "src_port", "file_name", "file_path", "file_hash",
                   "process", "process_id", "process_name", "process_path", "parent_process_id",
                   "parent_process_name", "registry_hive", "registry_key_name", "registry_path",
                   "registry_value_name", "registry_value_data", "url", "evidence_id", "evidence_name",
                   "evidence_domain", "evidence_resource")
# The data model each identity field is a field of (Splunk CIM's names), for the docs' table.
_OURS = "none (the forwarder's own)"
FIELD_MODELS = {
    "dest": "Alerts", "user": "Alerts",
    "dest_ip": "Network Traffic, Intrusion Detection", "src_ip": "Network Traffic, Intrusion Detection",
    "dest_mac": "Network Traffic", "dest_port": "Network Traffic", "src_port": "Network Traffic",
    "file_name": "Endpoint.Filesystem", "file_path": "Endpoint.Filesystem", "file_hash": "Endpoint.Filesystem",
    "process": "Endpoint.Processes", "process_id": "Endpoint.Processes", "process_name": "Endpoint.Processes",
    "process_path": "Endpoint.Processes", "parent_process_id": "Endpoint.Processes",
    "parent_process_name": "Endpoint.Processes",
    "registry_hive": "Endpoint.Registry", "registry_key_name": "Endpoint.Registry",
    "registry_path": "Endpoint.Registry", "registry_value_name": "Endpoint.Registry",
    "registry_value_data": "Endpoint.Registry",
    "url": "Web, Email",
    "evidence_id": _OURS, "evidence_name": _OURS, "evidence_domain": _OURS, "evidence_resource": _OURS,
}


def identity_field(graph_path: str, kind: str) -> str:
    """The CIM field of an identity row (its Graph property path and kind)."""
    return IDENTITY_FIELD_OF_PATH.get(graph_path) or IDENTITY_FIELD_OF_KIND[kind]


def identity_markdown() -> str:
    """The table of docs/formats.md's cim section: each field that takes evidence identities,
    the Graph properties (by path) and kinds of identity (mappings/evidence.py) it takes."""
    lines = ["| CIM field | identities it takes | data model |", "|---|---|---|"]
    for field in ("dest", "user", *IDENTITY_FIELDS):
        taken = [f"`{path}`" for path, to in IDENTITY_FIELD_OF_PATH.items() if to == field]
        kinds = [kind for kind, to in IDENTITY_FIELD_OF_KIND.items() if to == field]
        if kinds:
            taken.append(("any other of kind " if taken else "kind ") + " / ".join(kinds))
        lines.append(f"| `{field}` | {', '.join(taken)} | {FIELD_MODELS[field]} |")
    return "\n".join(lines)


# odata_type -> ((the names of a path without `[]`, else None; the path's steps; CIM field), ...),
# worked out once per evidence type.
_IDENTITY_PLANS: dict[str, tuple[tuple[tuple[str, ...] | None, tuple[tuple[str, bool], ...], str], ...]] = {}
_SCALARS = frozenset({str, int, float})


def _plan(item: Any) -> tuple[tuple[tuple[str, ...] | None, tuple[tuple[str, bool], ...], str], ...]:
    odata_type = item.odata_type
    plan = _IDENTITY_PLANS.get(odata_type)
    if plan is None:
        if len(_IDENTITY_PLANS) >= 4096:
            _IDENTITY_PLANS.clear()
        plan = []
        for row in identities_of(item):
            steps = path_steps(row.common)
            plan.append((plain_names(steps), steps, identity_field(row.graph, row.kind)))
        plan = _IDENTITY_PLANS[odata_type] = tuple(plan)
    return plan


def _identities(evidence: list[Any]) -> dict[str, dict[Any, None]]:
    """CIM field -> its identifying values (an ordered set), over every evidence
    (`mappings.evidence.values_at` of each identity row, the usual one-value paths inline)."""
    found: dict[str, dict[Any, None]] = {}
    for item in evidence:
        for names, steps, field in _plan(item):
            if names is not None:
                value = plain_value(item, names)
                if value is None:
                    continue
                bucket = found.get(field)
                if bucket is None:
                    bucket = found[field] = {}
                if value.__class__ is str:
                    bucket[value] = None
                    continue
                values = [value]
            else:
                values = values_along(item, steps)
                if not values:
                    continue
                bucket = found.get(field)
                if bucket is None:
                    bucket = found[field] = {}
            for value in values:
                if value.__class__ is list:  # a list property named without `[]`
                    bucket.update(dict.fromkeys(v for v in value if v.__class__ in _SCALARS))
                elif value.__class__ in _SCALARS:
                    bucket[value] = None
    return found


def to_cim(alert: Alert) -> dict[str, Any]:
    """The document `encode` writes, as a dict."""
    tenant = alert.tenant
    dest, users, names = _evidence(alert.evidence)
    doc: dict[str, Any] = {
        "time": _seconds(alert.times.last_updated),
        "vendor_account": tenant.id,
        "mssp_customer": tenant.label,
        "version_key": alert.version_key,
        "app": APP,
        "type": TYPE,
        "vendor_product": product(alert),
        "id": alert.id,
        "severity": alert.severity.name,
    }
    if (title := alert.title) is not None:
        doc["signature"] = title
        doc["subject"] = title
    if (value := alert.threat_family_name) is not None:
        doc["signature_id"] = value
    if (value := alert.description) is not None:
        doc["description"] = value
    if value := alert.mitre_techniques:
        doc["mitre_technique_id"] = value
    identities = _identities(alert.evidence) if alert.evidence else None
    if identities and (more := identities.pop("dest", None)):
        dest = list({**dict.fromkeys(dest), **more})
    if dest:
        doc["dest"] = dest
    if (value := alert.service_source) is not None:
        doc["src"] = value
    if actor := alert.actor_display_name:
        users = [actor]
    if identities and (more := identities.pop("user", None)):
        users = list({**dict.fromkeys(users), **more})
    if users:
        doc["user"] = users
    if names:
        doc["user_name"] = names
    if identities:
        for field in IDENTITY_FIELDS:
            if (values := identities.get(field)) is not None:
                doc[field] = list(values)
    doc[VENDOR_KEY] = remainder(alert)
    return doc


def encode(alert: Alert | Incident) -> bytes:
    """One line of JSON (no trailing newline)."""
    if alert.__class__ is Incident:  # (one identity test: the alert path stays as it was)
        return _dumps(incident_to_cim(alert))
    return _dumps(to_cim(alert))


# --------------------------------------------------------------------------- incidents
#
# CIM has no incident model. Splunk's Microsoft Security add-on writes a Graph incident as
# sourcetype `ms365:defender:incident`, tagged `ticketing` and `incident`, with `ticket_id = id`,
# `description = displayName`, `dest = incidentWebUrl`, `user = src_user = assignedTo`,
# `comments = comments{}.comment`. An incident line has those fields, and the Alerts fields an
# alert line has (`app`, `type`, `id`, `severity`, `signature`, `subject`), so that searches over
# either model find it; `kind` = incident tells it from an alert. docs/formats.md has the table.

INCIDENT_TYPE = "alert"  # CIM Alerts' `type` (alarm, alert, event, task, warning)
INCIDENT_PRODUCT = "Microsoft Defender XDR"
# Incident fields a CIM field above carries exactly (so `defender` leaves them out).
_INCIDENT_CARRIED = frozenset({"id", "tenant", "version_key", "severity", "title", "status", "assigned_to",
                               "incident_web_url", "kind", "raw"})


def incident_to_cim(incident: Incident) -> dict[str, Any]:
    """The document `encode` writes for an incident, as a dict."""
    tenant = incident.tenant
    doc: dict[str, Any] = {
        "time": _seconds(incident.times.last_updated),
        "vendor_account": tenant.id,
        "mssp_customer": tenant.label,
        "version_key": incident.version_key,
        "app": APP,
        "type": INCIDENT_TYPE,
        "kind": incident.kind,
        "vendor_product": INCIDENT_PRODUCT,
        "id": incident.id,
        "ticket_id": incident.id,
        "severity": incident.severity.name,
    }
    if (value := incident.status) is not None:
        doc["status"] = value
    if (title := incident.title) is not None:
        doc["signature"] = title
        doc["subject"] = title
        doc["description"] = title  # the add-on's description is displayName (Graph's own: defender.description)
    if (value := incident.times.created) is not None:
        doc["time_submitted"] = _seconds(value)
    if (value := incident.incident_web_url) is not None:
        doc["dest"] = value
        doc["url"] = value
    if value := incident.assigned_to:
        doc["user"] = value
        doc["src_user"] = value
    if comments := [c.text for c in incident.comments if c.text]:
        doc["comments"] = comments
    if value := incident.alert_ids:
        doc["alert_id"] = value
    doc[VENDOR_KEY] = plain(incident, skip=_INCIDENT_CARRIED)
    return doc
