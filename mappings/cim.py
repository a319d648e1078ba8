r"""`core.model.schema.Alert` -> flat JSON with the Splunk CIM "Alerts" fields, one line.

For Splunk searches without Microsoft's add-on: the CIM fields are in the event itself
(`KV_MODE = json` extracts them), placed as the Splunk Add-on for Microsoft Security's
props place them for Graph alerts (sourcetype `ms365:defender:incident:alerts`,
reference/sinks.md §1.9), so that searches and Splunk ES content written against the
add-on's CIM fields find the same values. Choices a README documents:

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
  in the schema's own names and shape: snake_case; `times` and evidence times as ISO 8601
  UTC strings ending in `Z`, with microseconds unless zero, as pydantic writes them;
  evidence with its `kind`; `extra` dicts verbatim; absent fields (None, empty lists and
  dicts) left out. Together with the exact CIM fields (`id`,
  `vendor_account`, `mssp_customer`, `version_key`, `severity`, `signature`, `description`,
  `mitre_technique_id`, `src`, `signature_id`) it rebuilds the Alert. Not `raw`, the
  original API object: the `raw` format carries that. The key is `defender`, not `vendor`,
  so as not to read like one of CIM's `vendor_*` fields.
- Deterministic: fixed key order (table above, then the schema's field order), the same
  Alert gives the same bytes.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, get_args, get_origin

import orjson
from pydantic import BaseModel

from core.model.schema import Alert, UserInfo
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
    """The fallback encoder's view of what orjson writes natively."""
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

_PLAIN: dict[type, Callable[[Any], dict[str, Any]]] = {}


def _plain(value: Any) -> Any:
    """A schema value as JSON data: models as dicts without absent fields (datetimes are left
    to the JSON encoder)."""
    convert = _PLAIN.get(value.__class__)
    if convert is not None:
        return convert(value)
    if isinstance(value, BaseModel):
        _PLAIN[value.__class__] = convert = _plain_function(type(value))
        return convert(value)
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value  # str, numbers, and `extra`-like dicts, which are JSON data already


def _plain_function(model: type[BaseModel], skip: frozenset[str] = frozenset(),
                    given: tuple[str, ...] = ()) -> Callable[..., dict[str, Any]]:
    """`_plain` for one model class, as straight-line code written from its fields (each
    field gets just the test its annotation needs). `skip` names fields to leave out;
    `given` fields are passed in already converted, as further arguments."""
    lines = [f"def plain(model{''.join(', ' + name for name in given)}):", "    d = model.__dict__", "    out = {}"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        if name in given:
            lines.append(f"    if {name}: out[{name!r}] = {name}")
            continue
        annotation, origin = info.annotation, get_origin(info.annotation)
        kinds = {arg for arg in get_args(annotation) or (annotation,) if arg is not type(None)}
        lines.append(f"    value = d[{name!r}]")
        if origin is Literal:  # the evidence `kind`: the discriminator, always written
            lines.append(f"    out[{name!r}] = value")
        elif origin is list:
            if get_args(annotation) == (str,):
                lines.append(f"    if value: out[{name!r}] = value")
            else:
                lines.append(f"    if value: out[{name!r}] = [_plain(item) for item in value]")
        elif origin is dict:
            lines.append(f"    if value: out[{name!r}] = value")
        elif kinds <= {str, int, float, bool, datetime}:  # (orjson writes datetimes)
            lines.append(f"    if value is not None: out[{name!r}] = value")
        else:  # sub-models (and anything else): the general case
            lines.append(f"    if value is not None: out[{name!r}] = _plain(value)")
    lines.append("    return out")
    namespace: dict[str, Any] = {"_plain": _plain}
    exec("\n".join(lines), namespace)  # noqa: S102 - code written above from the model's fields
    return namespace["plain"]


# (model, evidence already converted) -> `defender`.
_REMAINDER = _plain_function(Alert, _CARRIED, given=("evidence",))


# --------------------------------------------------------------------------- CIM fields


def account(user: UserInfo | None) -> tuple[str | None, str | None]:
    """(`user` text, `user_name` text) of one account: UPN, else `domain\\account`, else the
    account name; and the account name."""
    if user is None:
        return None, None
    u = user.__dict__
    name = u["account_name"]
    if u["upn"]:
        return u["upn"], name
    if name and u["domain"]:
        return f"{u['domain']}\\{name}", name
    return name, name


def product(a: dict[str, Any]) -> str:
    service_source = a["service_source"]
    return (PRODUCTS.get(service_source) if service_source else None) or a["product_name"] or service_source \
        or DEFAULT_PRODUCT


def _evidence(a: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str], list[str], list[str]]:
    """One pass over the evidence: (each as plain data, `dest`, `user` accounts, `user_name`)."""
    plain: list[dict[str, Any]] = []
    dest: dict[str, None] = {}  # (dicts: ordered sets)
    users: dict[str, None] = {}
    names: dict[str, None] = {}
    for evidence in a["evidence"]:
        convert = _PLAIN.get(evidence.__class__)
        plain.append(_plain(evidence) if convert is None else convert(evidence))
        e = evidence.__dict__
        kind = e["kind"]
        if kind == "device":
            name = e["fqdn"] or e["hostname"] or e["mde_device_id"]
            if name:
                dest[name] = None
        elif kind == "user" or kind == "process" or kind == "mailbox":  # the evidence with a userAccount
            user, name = account(e["user"])
            if kind == "mailbox" and not user:
                user = e["upn"] or e["primary_address"]
            if user:
                users[user] = None
            if name:
                names[name] = None
    return plain, list(dest), list(users), list(names)


def to_cim(alert: Alert) -> dict[str, Any]:
    """The document `encode` writes, as a dict."""
    a = alert.__dict__
    tenant = a["tenant"].__dict__
    evidence, dest, users, names = _evidence(a)
    doc: dict[str, Any] = {
        "time": _seconds(a["times"].__dict__["last_updated"]),
        "vendor_account": tenant["id"],
        "mssp_customer": tenant["label"],
        "version_key": a["version_key"],
        "app": APP,
        "type": TYPE,
        "vendor_product": product(a),
        "id": a["id"],
        "severity": a["severity"].name,
    }
    if (title := a["title"]) is not None:
        doc["signature"] = title
        doc["subject"] = title
    if (value := a["threat_family_name"]) is not None:
        doc["signature_id"] = value
    if (value := a["description"]) is not None:
        doc["description"] = value
    if value := a["mitre_techniques"]:
        doc["mitre_technique_id"] = value
    if dest:
        doc["dest"] = dest
    if (value := a["service_source"]) is not None:
        doc["src"] = value
    if actor := a["actor_display_name"]:
        doc["user"] = [actor]
    elif users:
        doc["user"] = users
    if names:
        doc["user_name"] = names
    doc[VENDOR_KEY] = _REMAINDER(alert, evidence)
    return doc


def encode(alert: Alert) -> bytes:
    """One line of JSON (no trailing newline)."""
    return _dumps(to_cim(alert))
