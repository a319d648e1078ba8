r"""`core.model.schema.Alert` / `Incident` -> one row of Sentinel's `CommonSecurityLog` table, as JSON.

For the Logs Ingestion API (the `sentinel` sink with `format = "commonsecuritylog"`): rows of the
stream `Custom-DefenderCommonSecurityLog`, which the DCR declares with `COLUMNS` and sends on to
the `Microsoft-CommonSecurityLog` output stream, the standard table (the API takes the streams a
DCR declares; `Microsoft-` input streams are the agents'). The row the Azure Monitor Agent's CEF parser would
make of the `cef` format's line, without a syslog daemon and an agent VM in between, so that
Sentinel's CEF content (queries, workbooks, analytics rules on CommonSecurityLog) works
unchanged. Built from the CEF line itself (`mappings.cef.encode`, read back by
`mappings.cef.fields`): every value is the CEF line's value, unescaped, with the CEF format's
length limits and text rules. Choices `docs/formats.md` documents:

- Header fields and extension keys go to the columns Microsoft's "CEF and CommonSecurityLog
  field mapping" (learn.microsoft.com/azure/sentinel/cef-name-mapping) names for them (table
  below); a label key (`cs1Label`, ...) to the column's `...Label` column.
- Column names and types are those of the official table reference
  (learn.microsoft.com/azure/azure-monitor/reference/tables/commonsecuritylog;
  `tests/mappings/commonsecuritylog_reference.py` holds it and a test checks every column).
- `externalId` (the alert id, text) goes to `ExtID` (string), not to `ExternalID`, which is an
  `int` column; the whole id is in `DeviceCustomString3` too.
- Times (CEF: milliseconds since the epoch) are RFC 3339 UTC text with milliseconds and `Z`
  (`2026-12-01T10:00:00.000Z`), for the datetime columns (`StartTime`, `EndTime`) and the
  string ones (`ReceiptTime`, `DeviceCustomDate1`) alike. `DeviceCustomNumber1` (an
  incident's priority score) is a number.
- `LogSeverity` is the CEF header's severity (`0`..`10`, text as the column's type);
  `OriginalLogSeverity` the severity Defender sent (`high`, as read: `severity_original`, else
  the normalised name), which the 0-10 scale hides.
- Every CEF key without a column of its own (the `ms...Evidence...` keys of every evidence)
  goes to `AdditionalExtensions` as `key=value` pairs joined by `;`, in line order, as the
  agent keeps keys outside its dictionary (docs/sentinel.md shows the KQL that reads them).
- `TimeGenerated` is not sent: the DCR's `transformKql` sets it (`now()`), as for the custom
  tables. Absent values are left out (no nulls). Deterministic: same event, same bytes.

The mapping (`markdown_table()`):

| CEF | CommonSecurityLog column | Type |
|---|---|---|
| header Device Vendor | `DeviceVendor` | string |
| header Device Product | `DeviceProduct` | string |
| header Device Version | `DeviceVersion` | string |
| header Device Event Class ID | `DeviceEventClassID` | string |
| header Name | `Activity` | string |
| header Severity | `LogSeverity` | string |
| (the alert's `severity_original`, else its severity name) | `OriginalLogSeverity` | string |
| `rt` | `ReceiptTime` | string |
| `start` | `StartTime` | datetime |
| `end` | `EndTime` | datetime |
| `externalId` | `ExtID` | string |
| `cat` | `DeviceEventCategory` | string |
| `act` | `DeviceAction` | string |
| `sourceServiceName` | `SourceServiceName` | string |
| `msg` | `Message` | string |
| `dhost` | `DestinationHostName` | string |
| `dst` | `DestinationIP` | string |
| `c6a3Label` | `DeviceCustomIPv6Address3Label` | string |
| `c6a3` | `DeviceCustomIPv6Address3` | string |
| `duser` | `DestinationUserName` | string |
| `suser` | `SourceUserName` | string |
| `src` | `SourceIP` | string |
| `c6a2Label` | `DeviceCustomIPv6Address2Label` | string |
| `c6a2` | `DeviceCustomIPv6Address2` | string |
| `fname` | `FileName` | string |
| `filePath` | `FilePath` | string |
| `fileHash` | `FileHash` | string |
| `request` | `RequestURL` | string |
| `flexString1Label` | `FlexString1Label` | string |
| `flexString1` | `FlexString1` | string |
| `flexString2Label` | `FlexString2Label` | string |
| `flexString2` | `FlexString2` | string |
| `deviceCustomDate1Label` | `DeviceCustomDate1Label` | string |
| `deviceCustomDate1` | `DeviceCustomDate1` | string |
| `cn1Label` | `DeviceCustomNumber1Label` | string |
| `cn1` | `DeviceCustomNumber1` | int |
| `cs1Label` | `DeviceCustomString1Label` | string |
| `cs1` | `DeviceCustomString1` | string |
| `cs2Label` | `DeviceCustomString2Label` | string |
| `cs2` | `DeviceCustomString2` | string |
| `cs3Label` | `DeviceCustomString3Label` | string |
| `cs3` | `DeviceCustomString3` | string |
| `cs4Label` | `DeviceCustomString4Label` | string |
| `cs4` | `DeviceCustomString4` | string |
| `cs5Label` | `DeviceCustomString5Label` | string |
| `cs5` | `DeviceCustomString5` | string |
| `cs6Label` | `DeviceCustomString6Label` | string |
| `cs6` | `DeviceCustomString6` | string |
| (any other key, e.g. the `ms...Evidence...` keys), as `key=value` joined by `;` | `AdditionalExtensions` | string |
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

from core.model.schema import Alert, Incident
from mappings import cef
from mappings.sentinel import cut

STREAM = "Custom-DefenderCommonSecurityLog"  # the DCR's declared input stream
OUTPUT_STREAM = "Microsoft-CommonSecurityLog"  # where the DCR sends it: the CommonSecurityLog table
ADDITIONAL = "AdditionalExtensions"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Column(NamedTuple):
    """Where one CEF header field or extension key lands: its column, the column's type (as the
    table reference spells it), and how the CEF text becomes the value."""

    cef: str
    column: str
    type: str
    convert: Callable[[str], Any]


def _text(value: str) -> str:
    return value


def _time(value: str) -> str:
    """CEF milliseconds since the epoch -> RFC 3339 UTC with milliseconds and `Z`."""
    moment = _EPOCH + timedelta(milliseconds=int(value))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _number(value: str) -> int:
    return int(value)


# The header fields, by position in `cef.fields(line).header` (0 is `CEF:0`, not a column).
HEADER: tuple[tuple[int, Column], ...] = (
    (1, Column("Device Vendor", "DeviceVendor", "string", _text)),
    (2, Column("Device Product", "DeviceProduct", "string", _text)),
    (3, Column("Device Version", "DeviceVersion", "string", _text)),
    (4, Column("Device Event Class ID", "DeviceEventClassID", "string", _text)),
    (5, Column("Name", "Activity", "string", _text)),
    (6, Column("Severity", "LogSeverity", "string", _text)),
)


def _custom(key: str, column: str, kind: str = "string", convert: Callable[[str], Any] = _text) -> tuple[Column, ...]:
    """A custom field and its label."""
    return (Column(f"{key}Label", f"{column}Label", "string", _text), Column(key, column, kind, convert))


# CEF extension key -> column, every key the cef format writes outside the evidence keys
# (alerts' and incidents'; a key absent here goes to AdditionalExtensions).
EXTENSION: tuple[Column, ...] = (
    Column("rt", "ReceiptTime", "string", _time),
    Column("start", "StartTime", "datetime", _time),
    Column("end", "EndTime", "datetime", _time),
    Column("externalId", "ExtID", "string", _text),
    Column("cat", "DeviceEventCategory", "string", _text),
    Column("act", "DeviceAction", "string", _text),
    Column("sourceServiceName", "SourceServiceName", "string", _text),
    Column("msg", "Message", "string", _text),
    Column("dhost", "DestinationHostName", "string", _text),
    Column("dst", "DestinationIP", "string", _text),
    *_custom("c6a3", "DeviceCustomIPv6Address3"),
    Column("duser", "DestinationUserName", "string", _text),
    Column("suser", "SourceUserName", "string", _text),
    Column("src", "SourceIP", "string", _text),
    *_custom("c6a2", "DeviceCustomIPv6Address2"),
    Column("fname", "FileName", "string", _text),
    Column("filePath", "FilePath", "string", _text),
    Column("fileHash", "FileHash", "string", _text),
    Column("request", "RequestURL", "string", _text),
    *_custom("flexString1", "FlexString1"),
    *_custom("flexString2", "FlexString2"),
    *_custom("deviceCustomDate1", "DeviceCustomDate1", "string", _time),
    *_custom("cn1", "DeviceCustomNumber1", "int", _number),
    *(column for n in range(1, 7) for column in _custom(f"cs{n}", f"DeviceCustomString{n}")),
)
_BY_KEY = {column.cef: column for column in EXTENSION}
OTHER = Column("(any other key, e.g. the `ms...Evidence...` keys)", ADDITIONAL, "string", _text)
ORIGINAL_SEVERITY = "OriginalLogSeverity"

# Every (name, type) this format may emit, in row order.
COLUMNS: tuple[tuple[str, str], ...] = (
    *((c.column, c.type) for _, c in HEADER),
    (ORIGINAL_SEVERITY, "string"),
    *((c.column, c.type) for c in EXTENSION),
    (ADDITIONAL, "string"),
)
_ORDER = {name: n for n, (name, _) in enumerate(COLUMNS)}


def markdown_table() -> str:
    """The mapping as docs/formats.md shows it."""
    lines = ["| CEF | CommonSecurityLog column | Type |", "|---|---|---|"]
    lines += [f"| header {c.cef} | `{c.column}` | {c.type} |" for _, c in HEADER]
    lines.append(f"| (the alert's `severity_original`, else its severity name) | `{ORIGINAL_SEVERITY}` | string |")
    lines += [f"| `{c.cef}` | `{c.column}` | {c.type} |" for c in EXTENSION]
    lines.append(f"| {OTHER.cef}, as `key=value` joined by `;` | `{ADDITIONAL}` | string |")
    return "\n".join(lines)


def row(event: Alert | Incident) -> dict[str, Any]:
    """The row `encode` writes, as a dict: the CEF line's fields in their columns."""
    found = cef.fields(cef.encode(event))
    values: dict[str, Any] = {}
    for position, column in HEADER:
        if text := found.header[position]:
            values[column.column] = column.convert(text)
    values[ORIGINAL_SEVERITY] = event.severity_original or event.severity.name
    other = []
    for key, text in found.extension:
        column = _BY_KEY.get(key)
        if column is None:
            other.append(f"{key}={text}")
        else:
            values[column.column] = column.convert(text)
    if other:
        # (every value is within its CEF limit, but an alert of many evidence has many keys)
        values[ADDITIONAL] = cut(";".join(other))
    return dict(sorted(values.items(), key=lambda item: _ORDER[item[0]]))


def encode(event: Alert | Incident) -> bytes:
    """One JSON object (no trailing newline): a row of `CommonSecurityLog` (stream `STREAM`)."""
    return orjson.dumps(row(event))
