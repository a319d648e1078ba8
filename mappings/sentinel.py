r"""`core.model.schema.Alert` / `Incident` -> one row of a Microsoft Sentinel custom table, as JSON.

For the Logs Ingestion API (the `sentinel` sink): an alert is a row of the DCR stream
`Custom-DefenderAlerts_CL` (table `DefenderAlerts_CL`), an incident a row of
`Custom-DefenderIncidents_CL` (table `DefenderIncidents_CL`); `stream_of(event)` says which.
`examples/sentinel/azuredeploy.json` declares both streams with exactly these columns and
types (tests/mappings/test_sentinel_template.py checks it). Choices `docs/formats.md`
documents:

- One row per alert (incident) version; keys in the table's order; absent values left out
  (no nulls, no empty arrays): Log Analytics leaves a column the row does not hold empty.
- `TimeGenerated` is not sent: the DCR's `transformKql` (`source | extend TimeGenerated =
  now()`) sets it, so that analytics rules see every row once whatever the clocks. `TenantId`
  and `Type` are reserved column names in Log Analytics: the customer's tenant id is
  `CustomerTenantId`.
- Times (`datetime`) are RFC 3339 UTC text with microseconds and `Z`
  (`2026-12-01T10:00:00.000000Z`), the text `version_key` uses, so `Version` joins with it.
- `Severity` is the name of the normalised severity (`high`), `SeverityId` its number
  (`core.model.schema.Severity`: unknown 0, informational 1, low 2, medium 3, high 4,
  critical 5).
- Entity columns are arrays of distinct strings in evidence order.
- `Alert` / `Incident` (dynamic) is the whole common-schema event as `mappings.plain` writes
  it (the schema's names, absent fields left out), without `raw`, the original API object
  (it would double the row; the `raw` format carries it).
- Lengths: a string value, or a string inside the dynamic column, longer than 32,766 UTF-8
  bytes is cut at a character boundary and ends with `…` (U+2026; 32,766 bytes in all).
  Log Analytics truncates a field value beyond 32 KB (Azure Monitor service limits, "Maximum
  size for field values: 32 KB. Fields longer than 32 KB are truncated", Data Collector API
  and Log Analytics workspace limits,
  https://learn.microsoft.com/azure/azure-monitor/service-limits#log-analytics-workspaces;
  the same page gives the Logs Ingestion API 64 KB per field and 1 MB per call): cutting at
  the stricter figure ourselves keeps the marker visible and a row of a 10 MB description
  far below the 1 MB of a call. The dynamic column is one field value too: when it is over
  32,766 bytes as a whole (a long description, written in `Description` and again in it),
  its strings are cut shorter, to 4096, else 1024, else 256 bytes each, until it fits (an
  alert of that size keeps its ids, times and evidence whole; long texts end in `…`). A lone
  surrogate in a string (not encodable as UTF-8) becomes U+FFFD.
- Deterministic: the same event gives the same bytes.

The alert columns (`markdown_table(ALERT_COLUMNS)`), stream `Custom-DefenderAlerts_CL`:

| Column | Type | Holds |
|---|---|---|
| `Customer` | string | `tenant.label`, the customer label of the forwarder's config |
| `CustomerTenantId` | string | `tenant.id` |
| `AlertId` | string | `id` |
| `Version` | string | `times.last_updated` as RFC 3339 UTC with microseconds and `Z`: the text in `version_key` |
| `VersionKey` | string | `version_key` (`<tenant id>/<alert id>/<Version>`) |
| `Source` | string | `source`: the API the alert was read from (`graph_alerts`, `mde_alerts`) |
| `Severity` | string | the name of `severity` (`informational` ... `critical`, `unknown`) |
| `SeverityId` | int | the number of `severity` (0 unknown, 1 informational ... 5 critical) |
| `Status` | string | `status` |
| `Classification` | string | `classification` |
| `Determination` | string | `determination` |
| `Title` | string | `title` |
| `Description` | string | `description` |
| `Category` | string | `category`, else the first of `categories` |
| `ServiceSource` | string | `service_source` |
| `DetectionSource` | string | `detection_source` |
| `ProductName` | string | `product_name` |
| `IncidentId` | string | `incident_id` |
| `AlertWebUrl` | string | `alert_web_url` |
| `IncidentWebUrl` | string | `incident_web_url` |
| `AssignedTo` | string | `assigned_to` |
| `MitreTechniques` | dynamic | `mitre_techniques` (array) |
| `CreatedDateTime` | datetime | `times.created` |
| `LastUpdateDateTime` | datetime | `times.last_updated` |
| `FirstActivityDateTime` | datetime | `times.first_activity` |
| `LastActivityDateTime` | datetime | `times.last_activity` |
| `ResolvedDateTime` | datetime | `times.resolved` |
| `Devices` | dynamic | per device evidence: `fqdn`, else `hostname`, else `mde_device_id` (array) |
| `Accounts` | dynamic | per user, process and mailbox evidence: the account's UPN, else `domain\account`, else its account name (mailbox: else its `upn`, else `primary_address`), as the cim format's `user` (array) |
| `IpAddresses` | dynamic | per IP evidence: `address` (array) |
| `Urls` | dynamic | per URL evidence: `url` (array) |
| `FileHashes` | dynamic | per file evidence (and process evidence's image): `sha256`, else `sha1`, else `md5` (array) |
| `FileNames` | dynamic | per file evidence (and process evidence's image): `name` (array) |
| `Alert` | dynamic | the whole alert in the common schema (`mappings.plain`: the schema's names, absent fields left out), without `raw` |

The incident columns (`markdown_table(INCIDENT_COLUMNS)`), stream `Custom-DefenderIncidents_CL`:

| Column | Type | Holds |
|---|---|---|
| `Customer` | string | `tenant.label`, the customer label of the forwarder's config |
| `CustomerTenantId` | string | `tenant.id` |
| `IncidentId` | string | `id` |
| `Version` | string | `times.last_updated` as RFC 3339 UTC with microseconds and `Z`: the text in `version_key` |
| `VersionKey` | string | `version_key` (`<tenant id>/<incident id>/<Version>`) |
| `Source` | string | `source` (`graph_incidents`) |
| `Severity` | string | the name of `severity` |
| `SeverityId` | int | the number of `severity` |
| `Status` | string | `status` |
| `Classification` | string | `classification` |
| `Determination` | string | `determination` |
| `Title` | string | `title` (Graph's `displayName`) |
| `Description` | string | `description` |
| `AssignedTo` | string | `assigned_to` |
| `RedirectIncidentId` | string | `redirect_incident_id` (the incident this one was merged into) |
| `IncidentWebUrl` | string | `incident_web_url` |
| `PriorityScore` | int | `priority_score` |
| `AlertIds` | dynamic | `alert_ids` (array) |
| `CustomTags` | dynamic | `custom_tags` (array) |
| `SystemTags` | dynamic | `system_tags` (array) |
| `CreatedDateTime` | datetime | `times.created` |
| `LastUpdateDateTime` | datetime | `times.last_updated` |
| `Incident` | dynamic | the whole incident in the common schema (`mappings.plain`), without `raw` |
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, NamedTuple

import orjson

from core.model.schema import Alert, Incident
from mappings.cef import category
from mappings.cim import account
from mappings.plain import plain

ALERT_STREAM = "Custom-DefenderAlerts_CL"
INCIDENT_STREAM = "Custom-DefenderIncidents_CL"
ALERT_TABLE = "DefenderAlerts_CL"
INCIDENT_TABLE = "DefenderIncidents_CL"

# Longest string value written, in UTF-8 bytes (the marker included): under Log Analytics'
# 32 KB per field value (module docstring).
MAX_VALUE_BYTES = 32_766
TRUNCATED = "\u2026"
_TRUNCATED_BYTES = len(TRUNCATED.encode())
_SURROGATES = re.compile("[\ud800-\udfff]")

# The column types a DCR stream declaration may name.
TYPES = ("string", "int", "long", "real", "boolean", "datetime", "dynamic")


class Column(NamedTuple):
    """One column of a stream: its name and type (as a DCR stream declaration spells them),
    what it holds (for the docs), and how it is read from the event (None, "" or an empty list:
    absent, left out of the row)."""

    name: str
    type: str
    holds: str
    read: Callable[[Any], Any]


# --------------------------------------------------------------------------- values


def rfc3339(moment: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds and `Z`: the text `core.model.schema.version_key` writes."""
    if moment is None:
        return None
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _version(event: Alert | Incident) -> str:
    # The version key ends with the time text (which holds no `/`): the same text, exactly.
    return event.version_key.rsplit("/", 1)[1]


def cut(text: str, limit: int = MAX_VALUE_BYTES) -> str:
    """`text` within `limit` UTF-8 bytes: cut at a character boundary, ending in `…`, when
    longer; lone surrogates made U+FFFD."""
    if len(text) * 4 <= limit:  # (no character is more than 4 bytes)
        return text if text.isascii() or not _SURROGATES.search(text) else _SURROGATES.sub("\ufffd", text)
    if not text.isascii():
        text = _SURROGATES.sub("\ufffd", text)
        data = text.encode()
        if len(data) <= limit:
            return text
        return data[: limit - _TRUNCATED_BYTES].decode("utf-8", "ignore") + TRUNCATED
    return text if len(text) <= limit else text[: limit - _TRUNCATED_BYTES] + TRUNCATED


def cut_all(value: Any, limit: int = MAX_VALUE_BYTES) -> Any:
    """`value` (plain JSON data) with every string, keys included, `cut` to `limit`."""
    cls = value.__class__
    if cls is str:
        return cut(value, limit)
    if cls is dict:
        return {cut(k, limit) if k.__class__ is str else k: cut_all(v, limit) for k, v in value.items()}
    if cls is list:
        return [cut_all(v, limit) for v in value]
    return value


# The per-string limits the dynamic column tries, in turn, when it is over MAX_VALUE_BYTES as a
# whole (module docstring).
_DYNAMIC_LIMITS = (4096, 1024, 256)


def dynamic(event: Alert | Incident) -> dict[str, Any]:
    """The `Alert` / `Incident` column: the event as plain JSON data, without `raw`, every string
    `cut`; when the whole is still over MAX_VALUE_BYTES, its strings cut shorter, in turn, to
    `_DYNAMIC_LIMITS` until it fits (or the last is reached)."""
    data = plain(event, skip=_SKIP)
    try:
        # The usual event: within the limit as a whole, so every string of it is too (and orjson
        # refused no lone surrogate): nothing to walk.
        if len(orjson.dumps(data, option=orjson.OPT_UTC_Z)) <= MAX_VALUE_BYTES:
            return data
    except TypeError:
        pass
    value = cut_all(data)
    if _size(value) <= MAX_VALUE_BYTES:
        return value
    for limit in _DYNAMIC_LIMITS:
        value = cut_all(data, limit)
        if _size(value) <= MAX_VALUE_BYTES:
            break
    return value


def _size(value: Any) -> int:
    try:
        return len(orjson.dumps(value, option=orjson.OPT_UTC_Z))
    except TypeError:  # (integers beyond 64 bits)
        return len(json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":")).encode())


class Entities(NamedTuple):
    """The main entities of an alert's evidence, each an ordered set of strings."""

    devices: list[str]
    accounts: list[str]
    ips: list[str]
    urls: list[str]
    hashes: list[str]
    files: list[str]


def entities(evidence: list[Any]) -> Entities:
    """One pass over the evidence (each of a model of `EVIDENCE_KINDS`, told apart by its
    `kind`; each branch reads only its kind's fields)."""
    devices: dict[str, None] = {}  # (dicts: ordered sets)
    accounts: dict[str, None] = {}
    ips: dict[str, None] = {}
    urls: dict[str, None] = {}
    hashes: dict[str, None] = {}
    files: dict[str, None] = {}
    for item in evidence:
        kind = item.kind
        if kind == "device":
            if name := item.fqdn or item.hostname or item.mde_device_id:
                devices[name] = None
        elif kind == "user" or kind == "process" or kind == "mailbox":
            # (the accounts as the cim format's `user` writes them: one rule for both formats)
            user = account(item.user)[0]
            if kind == "mailbox" and not user:
                user = item.upn or item.primary_address
            if user:
                accounts[user] = None
            if kind == "process" and (image := item.image) is not None:
                if digest := image.sha256 or image.sha1 or image.md5:
                    hashes[digest] = None
                if image.name:
                    files[image.name] = None
        elif kind == "ip":
            if item.address:
                ips[item.address] = None
        elif kind == "url":
            if item.url:
                urls[item.url] = None
        elif kind == "file":
            file = item.file
            if digest := file.sha256 or file.sha1 or file.md5:
                hashes[digest] = None
            if file.name:
                files[file.name] = None
    return Entities(list(devices), list(accounts), list(ips), list(urls), list(hashes), list(files))


# --------------------------------------------------------------------------- the tables

# Readers of the entity columns take (alert, Entities); every other reader takes the event.
_ENTITY = "entity"

ALERT_COLUMNS: tuple[Column, ...] = (
    Column("Customer", "string", "`tenant.label`, the customer label of the forwarder's config", lambda a: a.tenant.label),
    Column("CustomerTenantId", "string", "`tenant.id`", lambda a: a.tenant.id),
    Column("AlertId", "string", "`id`", lambda a: a.id),
    Column("Version", "string", "`times.last_updated` as RFC 3339 UTC with microseconds and `Z`: the text in "
           "`version_key`", _version),
    Column("VersionKey", "string", "`version_key` (`<tenant id>/<alert id>/<Version>`)", lambda a: a.version_key),
    Column("Source", "string", "`source`: the API the alert was read from (`graph_alerts`, `mde_alerts`)",
           lambda a: a.source),
    Column("Severity", "string", "the name of `severity` (`informational` ... `critical`, `unknown`)",
           lambda a: a.severity.name),
    Column("SeverityId", "int", "the number of `severity` (0 unknown, 1 informational ... 5 critical)",
           lambda a: int(a.severity)),
    Column("Status", "string", "`status`", lambda a: a.status),
    Column("Classification", "string", "`classification`", lambda a: a.classification),
    Column("Determination", "string", "`determination`", lambda a: a.determination),
    Column("Title", "string", "`title`", lambda a: a.title),
    Column("Description", "string", "`description`", lambda a: a.description),
    Column("Category", "string", "`category`, else the first of `categories`", category),
    Column("ServiceSource", "string", "`service_source`", lambda a: a.service_source),
    Column("DetectionSource", "string", "`detection_source`", lambda a: a.detection_source),
    Column("ProductName", "string", "`product_name`", lambda a: a.product_name),
    Column("IncidentId", "string", "`incident_id`", lambda a: a.incident_id),
    Column("AlertWebUrl", "string", "`alert_web_url`", lambda a: a.alert_web_url),
    Column("IncidentWebUrl", "string", "`incident_web_url`", lambda a: a.incident_web_url),
    Column("AssignedTo", "string", "`assigned_to`", lambda a: a.assigned_to),
    Column("MitreTechniques", "dynamic", "`mitre_techniques` (array)", lambda a: a.mitre_techniques),
    Column("CreatedDateTime", "datetime", "`times.created`", lambda a: rfc3339(a.times.created)),
    Column("LastUpdateDateTime", "datetime", "`times.last_updated`", lambda a: rfc3339(a.times.last_updated)),
    Column("FirstActivityDateTime", "datetime", "`times.first_activity`", lambda a: rfc3339(a.times.first_activity)),
    Column("LastActivityDateTime", "datetime", "`times.last_activity`", lambda a: rfc3339(a.times.last_activity)),
    Column("ResolvedDateTime", "datetime", "`times.resolved`", lambda a: rfc3339(a.times.resolved)),
    Column("Devices", "dynamic", "per device evidence: `fqdn`, else `hostname`, else `mde_device_id` (array)",
           lambda e: e.devices),
    Column("Accounts", "dynamic", "per user, process and mailbox evidence: the account's UPN, else "
           "`domain\\account`, else its account name (mailbox: else its `upn`, else `primary_address`), as the "
           "cim format's `user` (array)", lambda e: e.accounts),
    Column("IpAddresses", "dynamic", "per IP evidence: `address` (array)", lambda e: e.ips),
    Column("Urls", "dynamic", "per URL evidence: `url` (array)", lambda e: e.urls),
    Column("FileHashes", "dynamic", "per file evidence (and process evidence's image): `sha256`, else `sha1`, else "
           "`md5` (array)", lambda e: e.hashes),
    Column("FileNames", "dynamic", "per file evidence (and process evidence's image): `name` (array)",
           lambda e: e.files),
    Column("Alert", "dynamic", "the whole alert in the common schema (`mappings.plain`: the schema's names, absent "
           "fields left out), without `raw`", dynamic),
)
_ENTITY_COLUMNS = frozenset({"Devices", "Accounts", "IpAddresses", "Urls", "FileHashes", "FileNames"})

INCIDENT_COLUMNS: tuple[Column, ...] = (
    Column("Customer", "string", "`tenant.label`, the customer label of the forwarder's config",
           lambda i: i.tenant.label),
    Column("CustomerTenantId", "string", "`tenant.id`", lambda i: i.tenant.id),
    Column("IncidentId", "string", "`id`", lambda i: i.id),
    Column("Version", "string", "`times.last_updated` as RFC 3339 UTC with microseconds and `Z`: the text in "
           "`version_key`", _version),
    Column("VersionKey", "string", "`version_key` (`<tenant id>/<incident id>/<Version>`)", lambda i: i.version_key),
    Column("Source", "string", "`source` (`graph_incidents`)", lambda i: i.source),
    Column("Severity", "string", "the name of `severity`", lambda i: i.severity.name),
    Column("SeverityId", "int", "the number of `severity`", lambda i: int(i.severity)),
    Column("Status", "string", "`status`", lambda i: i.status),
    Column("Classification", "string", "`classification`", lambda i: i.classification),
    Column("Determination", "string", "`determination`", lambda i: i.determination),
    Column("Title", "string", "`title` (Graph's `displayName`)", lambda i: i.title),
    Column("Description", "string", "`description`", lambda i: i.description),
    Column("AssignedTo", "string", "`assigned_to`", lambda i: i.assigned_to),
    Column("RedirectIncidentId", "string", "`redirect_incident_id` (the incident this one was merged into)",
           lambda i: i.redirect_incident_id),
    Column("IncidentWebUrl", "string", "`incident_web_url`", lambda i: i.incident_web_url),
    Column("PriorityScore", "int", "`priority_score`", lambda i: i.priority_score),
    Column("AlertIds", "dynamic", "`alert_ids` (array)", lambda i: i.alert_ids),
    Column("CustomTags", "dynamic", "`custom_tags` (array)", lambda i: i.custom_tags),
    Column("SystemTags", "dynamic", "`system_tags` (array)", lambda i: i.system_tags),
    Column("CreatedDateTime", "datetime", "`times.created`", lambda i: rfc3339(i.times.created)),
    Column("LastUpdateDateTime", "datetime", "`times.last_updated`", lambda i: rfc3339(i.times.last_updated)),
    Column("Incident", "dynamic", "the whole incident in the common schema (`mappings.plain`), without `raw`",
           dynamic),
)

STREAMS: dict[str, tuple[Column, ...]] = {ALERT_STREAM: ALERT_COLUMNS, INCIDENT_STREAM: INCIDENT_COLUMNS}
# The table each stream lands in (the DCR's outputStream is `Custom-<table>`).
TABLES = {ALERT_STREAM: ALERT_TABLE, INCIDENT_STREAM: INCIDENT_TABLE}

_SKIP = frozenset({"raw"})


def stream_of(event: Alert | Incident) -> str:
    """The DCR stream a row of `event` belongs to."""
    return INCIDENT_STREAM if event.__class__ is Incident else ALERT_STREAM


def markdown_table(columns: tuple[Column, ...] = ALERT_COLUMNS) -> str:
    """A column table as docs/formats.md shows it."""
    lines = ["| Column | Type | Holds |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {c.holds} |" for c in columns]
    return "\n".join(lines)


# --------------------------------------------------------------------------- rows

# (name, reader, is an entity column, is a string column), as `row` runs them.
_ALERT_ROWS = tuple((c.name, c.read, c.name in _ENTITY_COLUMNS, c.type == "string") for c in ALERT_COLUMNS)
_INCIDENT_ROWS = tuple((c.name, c.read, False, c.type == "string") for c in INCIDENT_COLUMNS)


def row(event: Alert | Incident) -> dict[str, Any]:
    """The row `encode` writes, as a dict (what the Logs Ingestion SDK takes)."""
    if event.__class__ is Incident:
        rows, found = _INCIDENT_ROWS, None
    else:
        rows, found = _ALERT_ROWS, entities(event.evidence)
    out: dict[str, Any] = {}
    for name, read, entity, text in rows:
        value = read(found) if entity else read(event)
        if value is None or value == "" or value == []:
            continue
        if text:
            value = cut(value)
        elif value.__class__ is list:
            value = [cut(v) if v.__class__ is str else v for v in value]
        out[name] = value
    return out


def _json_default(value: Any) -> Any:
    """What orjson writes natively, for the standard library's encoder."""
    if isinstance(value, datetime):
        utc = value if value.tzinfo is UTC else value.astimezone(UTC)
        return utc.isoformat()[:-6] + "Z"
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode(event: Alert | Incident) -> bytes:
    """One JSON object (no trailing newline): the row of `stream_of(event)`."""
    doc = row(event)
    try:
        return orjson.dumps(doc, option=orjson.OPT_UTC_Z)
    except TypeError:  # (integers beyond 64 bits in `extra` data: the standard library writes them)
        return json.dumps(doc, ensure_ascii=False, default=_json_default, separators=(",", ":")).encode()
