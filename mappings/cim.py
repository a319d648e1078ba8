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
| `dest` | array: per device evidence, its DNS name, else host name, else MDE device id | yes, per device rather than per field |
| `src` | `serviceSource` | yes |
| `user` | array: `[actorDisplayName]` when there is one, else per evidence user account (user, process, mailbox evidence): UPN, else `domain\account`, else account name (mailbox: else its UPN, else its primary address) | yes, plus the fallbacks for accounts without UPN |
| `user_name` | array: the account names of those accounts | `entities{}.accountName` in the add-on (MDE incidents); Graph's equivalent |
| `defender` | every other `Alert` field (see below) | forwarder's own |

- Multi-valued fields (`mitre_technique_id`, `dest`, `user`, `user_name`) are always JSON
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

from core.model.schema import Alert, UserInfo
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
    if dest:
        doc["dest"] = dest
    if (value := alert.service_source) is not None:
        doc["src"] = value
    if actor := alert.actor_display_name:
        doc["user"] = [actor]
    elif users:
        doc["user"] = users
    if names:
        doc["user_name"] = names
    doc[VENDOR_KEY] = remainder(alert)
    return doc


def encode(alert: Alert) -> bytes:
    """One line of JSON (no trailing newline)."""
    return _dumps(to_cim(alert))
