r"""`core.model.schema.Alert` -> one ArcSight CEF:0 line (header + extension), for syslog receivers.

    CEF:0|Microsoft|<product>|<device version>|<event class id>|<name>|<severity>|<extension>

The header, the escaping, the keys and their lengths are the ArcSight CEF specification's;
the extension keys follow Microsoft's historical Defender -> ArcSight mapping, and
`docs/sentinel.md` says where they land in Sentinel's CommonSecurityLog. `encode` returns
one line of UTF-8 without a trailing newline. Choices `docs/formats.md` documents:

Header
- Device Vendor `Microsoft`. Device Product from `serviceSource` (table `PRODUCTS` in `mappings/products.py`); a
  source the table does not know gives `productName`, else the `serviceSource` value as
  sent, else `Microsoft Defender`.
- Device Version: the API the alert was read from, `alerts_v2` for Graph
  `security/alerts_v2` (table `DEVICE_VERSIONS`; any other source: its `Alert.source`).
  Defender states no product version per alert; the API resource is what fixes the alert's
  schema, which is what a parser keyed on vendor/product/version needs to know.
- Device Event Class ID ("a unique identifier per event-type", logstash's `signature`):
  `detectorId`, the id of the detection rule, stable across every alert it raises; else
  `alertPolicyId` (policy-based alerts), else `category`, else `alert`. The alert's own id
  is per-event and goes to `externalId`/`cs3`.
- Name: the alert title (else `Microsoft Defender alert`).
- Severity: informational 1, low 3, medium 5, high 8, critical 10, unknown (or a severity
  Graph adds later) 0, so that Sentinel's LogSeverity buckets (0-3 Low, 4-6 Medium,
  7-8 High, 9-10 Very-High) match Defender's.
- Header lengths (CEF key table): vendor 63, product 63, version 31, event class id 1023,
  name 512.

Extension
- Keys in the fixed order of the table below; a key whose value is absent or empty is left
  out, and a label (`cs1Label`, ...) is written, just before its value, only when the value
  is. Times are milliseconds since the epoch (the spec's other form, `MMM dd yyyy HH:mm:ss`,
  has no zone unless one is appended). `src`/`dst` take IPv4 addresses only (their CEF type);
  an IPv6 address goes to `c6a2`/`c6a3` as CEF's IPv6 fields do; a value that is no IP
  address (or has a scope id, `fe80::1%eth0`) is left out.

Text rules (every string value, header and extension)
- Escaping: header `\` -> `\\` and `|` -> `\|`; extension `\` -> `\\`,
  `=` -> `\=`, LF -> `\n`, CR -> `\r` (`|` needs no escape there). The header has no
  newline escape (decoders accept only `\|` and `\\` there), so CR and LF in a header
  field become a space, as logstash's CEF codec does.
- Control characters never reach the wire raw: TAB becomes a space; every other C0 control
  (NUL included), DEL, the C1 controls U+0080-U+009F, the line/paragraph separators
  U+2028/U+2029 and lone surrogates become U+FFFD (replaced, not dropped, so that the
  words either side stay apart and the reader sees that something was there). A line
  therefore holds no character any common reader splits lines on (`str.splitlines`).
- Leading and trailing spaces are removed (CEF has no escape for a space, and a value's
  end is only found by the next ` key=`), and then an empty value counts as absent.
- Lengths: the limits of CEF's key table (table below), counted in UTF-8 bytes of the value
  as the receiver stores it (unescaped). Bytes are the strictest reading of the spec's
  "String n": never fewer than characters or UTF-16 units. A longer value is cut at a
  code point boundary and ends with the marker `…` (U+2026, 3 bytes), the marker included
  in the limit; the cut happens before escaping, so it never splits an escape sequence.
  The `cs1`..`cs6` values are ids, so their limit is the older specs' 1023 (v25: 4000).

Extension keys (Microsoft's historical Defender -> ArcSight mapping where it has one; `cs1`
`cs4` `cs5` are re-purposed, their legacy contents ThreatName, Actor and Md5 dropped, for
the MSSP context; labels are written as given here):

| CEF key | Label | Alert field | Max length |
|---|---|---|---|
| `rt` |  | `times.last_updated` (ms since epoch) | timestamp |
| `start` |  | `times.first_activity` (ms since epoch) | timestamp |
| `end` |  | `times.last_activity` (ms since epoch) | timestamp |
| `externalId` |  | `id` (cut when longer; the full id is in `cs3`) | 40 |
| `cat` |  | `category`, else the first of `categories` | 1023 |
| `act` |  | `status` | 63 |
| `sourceServiceName` |  | `detection_source` | 1023 |
| `msg` |  | `description` | 1023 |
| `dhost` |  | first device evidence: `fqdn`, else `hostname` | 1023 |
| `dst` |  | that device's `last_ip`, else its first `ip_addresses` | IPv4 address |
| `c6a3` | `Destination IPv6 Address` | the same address when it is IPv6 | IPv6 address |
| `duser` |  | first user (or mailbox) evidence with an account: `upn`, else `domain\account`, else `account_name` (mailbox: else its `upn`, else `primary_address`) | 1023 |
| `src` |  | first IP evidence `address` | IPv4 address |
| `c6a2` | `Source IPv6 Address` | the same address when it is IPv6 | IPv6 address |
| `fname` |  | first file evidence (else first process evidence's image): `name` | 1023 |
| `filePath` |  | that file's full path: `path` + separator + `name` | 1023 |
| `fileHash` |  | that file's `sha1`, else `sha256`, else `md5` | 255 |
| `request` |  | first URL evidence `url` | 1023 |
| `flexString1` | `alertWebUrl` | `alert_web_url` | 1023 |
| `flexString2` | `incidentWebUrl` | `incident_web_url` | 1023 |
| `deviceCustomDate1` | `createdDateTime` | `times.created` (ms since epoch) | timestamp |
| `cs1` | `tenantId` | `tenant.id` | 1023 |
| `cs2` | `customer` | `tenant.label` | 1023 |
| `cs3` | `alertId` | `id` (whole) | 1023 |
| `cs4` | `mitreTechniques` | `mitre_techniques`, joined with `,` | 1023 |
| `cs5` | `incidentId` | `incident_id` | 1023 |
| `cs6` | `sha256` | that file's `sha256` | 1023 |

Evidence identity keys
- After the table's keys come the identifying values of every evidence, whatever its type:
  every row of `mappings.evidence.IDENTITIES` (ids, names, addresses, hashes, URLs, command
  lines, registry keys and values, resource ids) that has a value, so that no evidence type
  loses its identity (the table's keys above keep only the first device, user, IP, file and
  URL). The standard keys stay as they are; these are vendor keys, since CEF has no key
  for most of them (a mailbox cluster's urn, a Kubernetes namespace, an Azure resource id).
- Key: `ms` + the Graph evidence type + the row's property path in camelCase
  (`Identity.name`, first letter upper): `msDeviceEvidenceMdeDeviceId`,
  `msProcessEvidenceProcessCommandLine`, `msAzureResourceEvidenceResourceId`. The spec asks
  custom keys to be `VendornameProductnameExplanatoryKeyName`, alphanumeric, and named unlike
  any key of its dictionary: `ms` is the vendor, the rest is Graph's own names, so an
  analyst finds the property in Microsoft's documentation; every key holds `Evidence` once,
  where the type ends, so no two (type, property) pairs can make the same key (without it,
  `containerEvidence` `image.imageId` and `containerImageEvidence` `imageId` would).
  Letters and digits only. The table of all keys is `evidence_markdown_table()`.
- Several values for one key (two device evidence, or a list such as `ipInterfaces`): the
  first distinct value goes to the key, the n-th to the key + `N<n>`
  (`msDeviceEvidenceIpInterfaces`, `msDeviceEvidenceIpInterfacesN2`, ...); a value the key
  already holds is not written again. Each value is whole in its own key, so a receiver
  needs no second level of splitting (CEF has no separator that a value cannot hold).
- Order: evidence in the alert's order, then the table's rows, then the values. Text as
  sent, numbers (process ids, ports) in decimal; a value that is neither (an object where
  Graph documents a string) is left out. The text rules above apply; the limit is 1023 bytes
  (as `cs1`..`cs6`).

Fitting a line into a budget
- `fit(line, budget)` is for a sender that holds only the encoded line (bytes) and has to
  send it within `budget` bytes (a syslog connector: `max_message_bytes` minus its syslog
  header, e.g. 2048 for UDP). It returns the line to send (always at most `budget` bytes,
  UTF-8, one line: no CR, LF or NUL) and how it was made, a `Fit`:
- `INTACT`: the line is within the budget and is returned as it is, the same object.
- `SHORTENED`: values are cut, whole ones, in this fixed order until the line fits: `msg`
  (the description: the longest, prose, and whole in the portal), `ms*:command,url` (the
  evidence keys of kind command or url, in line order: command lines and URLs, long and
  with their start the telling part), `request` (URL evidence:
  long query strings; the host and path come first), `filePath` (its file name is in
  `fname`), `flexString2` then `flexString1` (the incident and alert portal links, which the
  ids in `cs5`, `cs3` and `cs1` rebuild), `cs4` (MITRE techniques), `sourceServiceName`,
  `cat`, `ms*:name,registry` (the evidence keys of kind name or registry, in line order:
  names, paths, registry keys and value data), `fname`, `duser`, `dhost`, and last the
  header Name (the title). The ids analysts
  join on, the times, addresses and hashes, and the short status are never cut: `rt`,
  `start`, `end`, `deviceCustomDate1`, `externalId`, `act`, `dst`, `src`, `c6a2`, `c6a3`,
  `fileHash`, `cs1` (tenantId), `cs2` (customer), `cs3` (alertId), `cs5` (incidentId), `cs6`
  (sha256), the evidence keys of every other kind (ids, hosts, addresses, MAC addresses,
  ports, users, e-mail addresses, hashes, domains, resource ids), the labels, and the other
  header fields. A value is cut as the length limits cut
  (Text rules): its unescaped text at a code point boundary, ending in `…` (the marker
  counts), then escaped again, so a cut never splits an escape sequence or a UTF-8 sequence.
  Each value is cut only as far as the line needs (a value before it in the order is left as
  the bare marker `…`; one after it is untouched), and the line parses as before: same
  header (Name possibly cut), same keys in the same order, every value either unchanged or a
  prefix of itself ending in `…`. Only when every value of that order is the bare marker and
  the line is still over the budget are whole keys dropped: the evidence keys at the end of
  the line, the last first (so the last evidence's last values go first, the first
  evidence's first rows, its ids, last), each `key=value` with the space before it, until the
  line fits. No other key is ever dropped, no id is ever cut, and the line still parses.
- `CUT`: when even every value of that list cut to the bare marker and every evidence key
  dropped leaves the line over the budget (what is never cut or dropped, with the labels,
  takes some 600-900 bytes of a typical alert),
  the line as encoded is cut at the last safe point at most `budget - 3` bytes in (never
  inside an escape sequence `\\`, `\=`, `\n`, `\r`, `\|` or a UTF-8 sequence) and ends in
  `…`. The receiver then holds a truncated, marked line that may not parse (the header or
  the last value may be cut anywhere); the connector counts these. A line `fit` cannot read
  as `encode` writes it is cut the same way. A budget under 3 bytes (no room for the marker)
  is a `ValueError`.
"""
from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from core.model.schema import Alert, FileInfo, Incident, Severity, UserInfo
from mappings.evidence import IDENTITIES, NAMESPACE, Identity, path_steps, type_name, values_along
from mappings.products import DEFAULT_PRODUCT, PRODUCTS

VENDOR = "Microsoft"
DEFAULT_NAME = "Microsoft Defender alert"
DEFAULT_EVENT_CLASS = "alert"
TRUNCATED = "\u2026"  # marks a value cut to its key's limit
_TRUNCATED_BYTES = len(TRUNCATED.encode())


# Alert.source -> CEF Device Version.
DEVICE_VERSIONS = {"graph_alerts": "alerts_v2"}

# Normalised severity -> CEF severity (0-10).
SEVERITIES = {
    Severity.unknown: 0,
    Severity.informational: 1,
    Severity.low: 3,
    Severity.medium: 5,
    Severity.high: 8,
    Severity.critical: 10,
}

# CEF header field -> max length (UTF-8 bytes, as for the extension).
HEADER_LIMITS = {
    "vendor": 63,
    "product": 63,
    "device_version": 31,
    "event_class_id": 1023,
    "name": 512,
}


# --------------------------------------------------------------------------- text rules

# Everything that must not reach the wire raw (see the module docstring); CR and LF are in
# here too, to be escaped (extension) or made spaces (header).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_EXTENSION_CONTROL = {"\t": " ", "\n": "\n", "\r": "\r"}
_HEADER_CONTROL = {"\t": " ", "\n": " ", "\r": " "}


def _extension_control(match: re.Match[str]) -> str:
    return _EXTENSION_CONTROL.get(match.group(), "\ufffd")


def _header_control(match: re.Match[str]) -> str:
    return _HEADER_CONTROL.get(match.group(), "\ufffd")


def _fit(text: str, limit: int) -> str:
    """`text` within `limit` UTF-8 bytes: cut at a code point boundary and marked when longer."""
    if len(text) * 4 <= limit:  # (no character is more than 4 bytes)
        return text
    if text.isascii():
        return text if len(text) <= limit else text[: limit - _TRUNCATED_BYTES] + TRUNCATED
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - _TRUNCATED_BYTES].decode("utf-8", "ignore") + TRUNCATED


def clean(text: str, limit: int, header: bool = False) -> str:
    """A value as the receiver stores it: controls replaced, spaces trimmed, fitted to `limit`
    (not escaped); "" counts as absent. The text rules of the module docstring, in one place."""
    if not text.isprintable():  # False for any control character; True for `\`, `=`, `|`
        text = _CONTROL.sub(_header_control if header else _extension_control, text)
    return _fit(text.strip(" "), limit)


def _extension(text: str, limit: int) -> str:
    """`clean`, then the extension escapes."""
    text = clean(text, limit)
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "=" in text:
        text = text.replace("=", "\\=")
    if "\n" in text:
        text = text.replace("\n", "\\n")
    if "\r" in text:
        text = text.replace("\r", "\\r")
    return text


def _header(text: str | None, limit: int, default: str) -> str:
    """`clean` (header flavour; `default` when nothing is left), then the header escapes."""
    text = (clean(text, limit, header=True) if text else "") or default
    if "\\" in text:
        text = text.replace("\\", "\\\\")
    if "|" in text:
        text = text.replace("|", "\\|")
    return text


# --------------------------------------------------------------------------- derived values

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _milliseconds(moment: datetime) -> int:
    """Milliseconds since the epoch, rounded down (integer arithmetic: exact for any date)."""
    d = moment - _EPOCH
    return d.days * 86400000 + d.seconds * 1000 + d.microseconds // 1000


# address text -> 4, 6, or 0 (not an IP address); the alerts of one tenant repeat addresses.
_IP_VERSIONS: dict[str, int] = {}


def _ip_version(text: str) -> int:
    version = _IP_VERSIONS.get(text)
    if version is None:
        try:
            # (a scope id, `fe80::1%eth0`, may hold any text; no CEF address type has one)
            version = 0 if "%" in text else ipaddress.ip_address(text).version
        except ValueError:
            version = 0
        if len(text) <= 64:  # (an address is shorter; garbage is not worth remembering)
            if len(_IP_VERSIONS) >= 4096:
                _IP_VERSIONS.clear()
            _IP_VERSIONS[text] = version
    return version


def ipv4(text: str | None) -> str | None:
    return text if text and _ip_version(text) == 4 else None


def ipv6(text: str | None) -> str | None:
    return text if text and _ip_version(text) == 6 else None


def account(user: UserInfo | None) -> str | None:
    """An account as `duser` writes it: UPN, else `domain\\account`, else the account name."""
    if user is None:
        return None
    if user.upn:
        return user.upn
    name, domain = user.account_name, user.domain
    if name and domain:
        return f"{domain}\\{name}"
    return name or None


def full_path(file: FileInfo) -> str | None:
    """Graph's filePath is the folder; CEF's filePath is the full path, file name included."""
    name, folder = file.name, file.path
    if not folder:
        return name
    if not name:
        return folder
    separator = "\\" if "\\" in folder else "/"
    return folder + name if folder.endswith(separator) else folder + separator + name


class Picks(NamedTuple):
    """The evidence the table reads, each from the first evidence of its kind that has one
    (the device's name and IP: from the first device evidence)."""

    device_name: str | None
    device_ip: str | None
    user: str | None
    ip: str | None
    file: FileInfo | None  # the first file evidence's file, else the first process evidence's image
    url: str | None


def picks(evidence: list[Any]) -> Picks:
    """`Picks` of an alert's evidence, in one pass. (Each item is a model of `EVIDENCE_KINDS`,
    told apart by its `kind`; each branch reads only its kind's fields.)"""
    device = user = ip = file = image = url = None
    for item in evidence:
        kind = item.kind
        if kind == "device":
            if device is None:
                device = item
        elif kind == "user":
            if not user:
                user = account(item.user)
        elif kind == "ip":
            if not ip:
                ip = item.address
        elif kind == "file":
            if file is None:
                file = item.file
        elif kind == "process":
            if image is None:
                image = item.image
        elif kind == "url":
            if not url:
                url = item.url
        elif kind == "mailbox" and not user:
            user = account(item.user) or item.upn or item.primary_address
    if device is None:
        device_name = device_ip = None
    else:
        addresses = device.ip_addresses
        device_name = device.fqdn or device.hostname
        device_ip = device.last_ip or (addresses[0] if addresses else None)
    return Picks(device_name, device_ip, user, ip, file or image, url)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Key:
    """One extension key.

    `field` says what it carries (for the README); `read` reads it from the alert and the
    `Picks` of its evidence (None or "" when absent). `kind` is "text" (cleaned, fitted to
    `limit` UTF-8 bytes, escaped), "time" (a datetime, written as ms since the epoch),
    "ipv4" or "ipv6" (written when it is an address of that version, else left out). `label`
    is written as `<key>Label` before the value. `repeats`: values recur across alerts
    (a tenant's hosts, users, categories), so the written text is remembered per value."""

    key: str
    field: str
    read: Callable[[Alert, Picks], Any]
    limit: int | None = None
    label: str | None = None
    kind: str = "text"
    repeats: bool = False

    @property
    def limit_text(self) -> str:
        if self.kind == "time":
            return "timestamp"
        if self.kind in ("ipv4", "ipv6"):
            return f"{self.kind[:2].upper()}{self.kind[2:]} address"
        return str(self.limit)

    @property
    def prefix(self) -> str:
        """What is written before the value: `key=`, after `keyLabel=label ` if labelled."""
        return f"{self.key}Label={_extension(self.label, 1023)} {self.key}=" if self.label else f"{self.key}="


def category(a: Alert) -> str | None:
    """`category`, else the first of `categories` (the cef `cat` key, the sentinel `Category` column)."""
    return a.category or (a.categories[0] if a.categories else None)


def _file_hash(file: FileInfo | None) -> str | None:
    return file.sha1 or file.sha256 or file.md5 if file else None


EXTENSION: tuple[Key, ...] = (
    Key("rt", "`times.last_updated` (ms since epoch)", lambda a, p: a.times.last_updated, kind="time"),
    Key("start", "`times.first_activity` (ms since epoch)", lambda a, p: a.times.first_activity, kind="time"),
    Key("end", "`times.last_activity` (ms since epoch)", lambda a, p: a.times.last_activity, kind="time"),
    Key("externalId", "`id` (cut when longer; the full id is in `cs3`)", lambda a, p: a.id, 40),
    Key("cat", "`category`, else the first of `categories`", lambda a, p: category(a), 1023, repeats=True),
    Key("act", "`status`", lambda a, p: a.status, 63, repeats=True),
    Key("sourceServiceName", "`detection_source`", lambda a, p: a.detection_source, 1023, repeats=True),
    Key("msg", "`description`", lambda a, p: a.description, 1023),
    Key("dhost", "first device evidence: `fqdn`, else `hostname`", lambda a, p: p.device_name, 1023, repeats=True),
    Key("dst", "that device's `last_ip`, else its first `ip_addresses`", lambda a, p: p.device_ip, kind="ipv4",
        repeats=True),
    Key("c6a3", "the same address when it is IPv6", lambda a, p: p.device_ip, label="Destination IPv6 Address",
        kind="ipv6", repeats=True),
    Key("duser", "first user (or mailbox) evidence with an account: `upn`, else `domain\\account`, else "
        "`account_name` (mailbox: else its `upn`, else `primary_address`)", lambda a, p: p.user, 1023, repeats=True),
    Key("src", "first IP evidence `address`", lambda a, p: p.ip, kind="ipv4", repeats=True),
    Key("c6a2", "the same address when it is IPv6", lambda a, p: p.ip, label="Source IPv6 Address", kind="ipv6",
        repeats=True),
    Key("fname", "first file evidence (else first process evidence's image): `name`",
        lambda a, p: p.file.name if p.file else None, 1023, repeats=True),
    Key("filePath", "that file's full path: `path` + separator + `name`",
        lambda a, p: full_path(p.file) if p.file else None, 1023, repeats=True),
    Key("fileHash", "that file's `sha1`, else `sha256`, else `md5`", lambda a, p: _file_hash(p.file), 255,
        repeats=True),
    Key("request", "first URL evidence `url`", lambda a, p: p.url, 1023, repeats=True),
    Key("flexString1", "`alert_web_url`", lambda a, p: a.alert_web_url, 1023, "alertWebUrl"),
    Key("flexString2", "`incident_web_url`", lambda a, p: a.incident_web_url, 1023, "incidentWebUrl"),
    Key("deviceCustomDate1", "`times.created` (ms since epoch)", lambda a, p: a.times.created,
        label="createdDateTime", kind="time"),
    Key("cs1", "`tenant.id`", lambda a, p: a.tenant.id, 1023, "tenantId", repeats=True),
    Key("cs2", "`tenant.label`", lambda a, p: a.tenant.label, 1023, "customer", repeats=True),
    Key("cs3", "`id` (whole)", lambda a, p: a.id, 1023, "alertId"),
    Key("cs4", "`mitre_techniques`, joined with `,`", lambda a, p: ",".join(a.mitre_techniques), 1023,
        "mitreTechniques", repeats=True),
    Key("cs5", "`incident_id`", lambda a, p: a.incident_id, 1023, "incidentId"),
    Key("cs6", "that file's `sha256`", lambda a, p: p.file.sha256 if p.file else None, 1023, "sha256",
        repeats=True),
)


def markdown_table() -> str:
    """The extension table as the module docstring (and the README) shows it."""
    lines = ["| CEF key | Label | Alert field | Max length |", "|---|---|---|---|"]
    for row in EXTENSION:
        label = f"`{row.label}`" if row.label else ""
        lines.append(f"| `{row.key}` | {label} | {row.field} | {row.limit_text} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing a row

# A row's writer: a present value (not None, not "") -> `key=value` as written (labelled,
# cleaned, escaped), or "" when the value is left out after all.
Writer = Callable[[Any], str]

_MEMO_MAX = 1024  # texts remembered per `repeats` key; emptied when full
_MEMO_LEN = 256  # longer values are not remembered (memory stays small whatever the data)


def _time_writer(prefix: str) -> Writer:
    def write(moment: datetime) -> str:
        return prefix + str(_milliseconds(moment))

    return write


def _address_writer(prefix: str, address: Callable[[str | None], str | None]) -> Writer:
    def write(text: str) -> str:
        return prefix + text if address(text) else ""

    return write


def _text_writer(prefix: str, limit: int) -> Writer:
    def write(text: str) -> str:
        # The usual value (printable ASCII within the limit, no space to trim) needs only the
        # two escapes it can hold; `_extension` applies every rule to the rest.
        if text.isprintable() and text.isascii() and len(text) <= limit and text[0] != " " and text[-1] != " ":
            if "\\" in text:
                text = text.replace("\\", "\\\\")
            if "=" in text:
                text = text.replace("=", "\\=")
            return prefix + text
        text = _extension(text, limit)
        return prefix + text if text else ""

    return write


def _remembered(write: Writer) -> Writer:
    """`write`, remembering what it wrote for recent values (short ones; emptied when full)."""
    memo: dict[str, str] = {}

    def remembered(value: str) -> str:
        part = memo.get(value)
        if part is None:
            part = write(value)
            if len(value) <= _MEMO_LEN:
                if len(memo) >= _MEMO_MAX:
                    memo.clear()
                memo[value] = part
        return part

    return remembered


def _writer(row: Key) -> Writer:
    if row.kind == "time":
        write = _time_writer(row.prefix)
    elif row.kind == "ipv4":
        write = _address_writer(row.prefix, ipv4)
    elif row.kind == "ipv6":
        write = _address_writer(row.prefix, ipv6)
    else:
        assert row.limit is not None, row.key
        write = _text_writer(row.prefix, row.limit)
    return _remembered(write) if row.repeats else write


# The table as it runs for every alert of every CEF sink: each row's reader and writer, built
# once (prefix, limit and kind are fixed per row, so they are bound now, not looked up per alert).
_ROWS: tuple[tuple[Callable[[Alert, Picks], Any], Writer], ...] = tuple((row.read, _writer(row)) for row in EXTENSION)


# --------------------------------------------------------------------------- evidence identity keys

EVIDENCE_KEY_PREFIX = "ms"  # the spec's "Vendorname" part of a custom key (Microsoft)
EVIDENCE_LIMIT = 1023  # String 1023, as the custom strings `cs1`..`cs6`
# Which evidence keys `fit` may cut, by the kind of their identity row (`mappings.evidence.KINDS`):
# long free text first, names and registry paths late; every other kind is never cut.
CUT_FIRST_KINDS = ("command", "url")
CUT_LATE_KINDS = ("name", "registry")
# The two groups as `FIT_ORDER` names them.
CUT_FIRST = "ms*:" + ",".join(CUT_FIRST_KINDS)
CUT_LATE = "ms*:" + ",".join(CUT_LATE_KINDS)


def evidence_key(evidence_type: str, row: Identity) -> str:
    """`ms` + the Graph evidence type + the identity's property path, camelCase:
    (`deviceEvidence`, `vmMetadata.resourceId`) -> `msDeviceEvidenceVmMetadataResourceId`."""
    name = row.name
    return EVIDENCE_KEY_PREFIX + evidence_type[:1].upper() + evidence_type[1:] + name[:1].upper() + name[1:]


def numbered(key: str, n: int) -> str:
    """The key of the `n`-th distinct value (from 1) of an evidence key in one alert:
    `key`, then `keyN2`, `keyN3`, ..."""
    return key if n == 1 else f"{key}N{n}"


@dataclass(frozen=True)
class EvidenceKey:
    """One vendor extension key: an identity row of one Graph evidence type."""

    evidence_type: str  # e.g. deviceEvidence
    row: Identity
    key: str

    @property
    def fit(self) -> str:
        """What `fit` may do to it (module docstring, "Fitting a line into a budget")."""
        if self.row.kind in CUT_FIRST_KINDS:
            return f"cut (`{CUT_FIRST}`)"
        if self.row.kind in CUT_LATE_KINDS:
            return f"cut (`{CUT_LATE}`)"
        return "never cut"


EVIDENCE_KEYS: tuple[EvidenceKey, ...] = tuple(
    EvidenceKey(name, row, evidence_key(name, row)) for name, rows in IDENTITIES.items() for row in rows)


def evidence_markdown_table() -> str:
    """The evidence keys as `docs/formats.md` shows them."""
    lines = ["| Evidence type | Graph property | CEF key | Kind | Fit |", "|---|---|---|---|---|"]
    for entry in EVIDENCE_KEYS:
        lines.append(f"| `{entry.evidence_type}` | `{entry.row.graph}` | `{entry.key}` | {entry.row.kind} "
                     f"| {entry.fit} |")
    return "\n".join(lines)


class _EvidenceRow:
    """An identity row as `encode` runs it: how to read its common-schema path (decided once:
    one attribute, an attribute of an attribute, one key of `extra`, else the general walk),
    and the `key=` prefixes of its numbered keys (made as an alert first needs them)."""

    __slots__ = ("first", "how", "key", "memo", "parts", "prefixes", "second")

    def __init__(self, entry: EvidenceKey) -> None:
        self.key = entry.key
        self.parts = path_steps(entry.row.common)
        plain = not any(many for _, many in self.parts)
        self.first = self.parts[0][0]
        self.second = self.parts[1][0] if len(self.parts) > 1 else ""
        if plain and len(self.parts) == 1:
            self.how = _ATTRIBUTE
        elif plain and len(self.parts) == 2:
            self.how = _EXTRA_KEY if self.first == "extra" else _ATTRIBUTE_OF_ATTRIBUTE
        else:
            self.how = _WALK
        self.prefixes = [self.key + "="]
        # value -> its first-key part as written: identities recur across alerts (a tenant's
        # devices, users, addresses); short values only, emptied when full.
        self.memo: dict[str, str] = {}

    def values(self, item: Any) -> list[Any]:
        """`mappings.evidence.values_at(item, row.common)`, on the split path."""
        return values_along(item, self.parts)

    def prefix(self, n: int) -> str:
        prefixes = self.prefixes
        while len(prefixes) < n:
            prefixes.append(numbered(self.key, len(prefixes) + 1) + "=")
        return prefixes[n - 1]


_ATTRIBUTE, _ATTRIBUTE_OF_ATTRIBUTE, _EXTRA_KEY, _WALK = range(4)
_EVIDENCE_MEMO_MAX = 256  # values remembered per evidence key

# Graph evidence type (lower case) -> its rows, as run.
_EVIDENCE_FOLDED: dict[str, tuple[_EvidenceRow, ...]] = {}
for _entry in EVIDENCE_KEYS:
    _EVIDENCE_FOLDED.setdefault(_entry.evidence_type.lower(), ())
    _EVIDENCE_FOLDED[_entry.evidence_type.lower()] += (_EvidenceRow(_entry),)
# ... and by @odata.type exactly as Graph sends it (the usual lookup: no case folding).
_EVIDENCE_BY_ODATA = {NAMESPACE + name: _EVIDENCE_FOLDED[name.lower()] for name in IDENTITIES}


def _evidence_text(value: Any) -> str | None:
    """An identity value as text: strings as they are, numbers in decimal; anything else
    (an object where Graph documents a value) is no identity and is left out."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def evidence_parts(evidence: list[Any]) -> list[str]:
    """`key=value` of every identity value of every evidence, in evidence order, then the
    table's row order, then value order; a value an earlier one of the same key already
    wrote is not written again; the n-th distinct value of a key goes to `numbered(key, n)`.
    (Runs for every evidence of every alert: the usual cases are inlined.)"""
    parts: list[str] = []
    seen: dict[_EvidenceRow, list[str]] = {}
    for item in evidence:
        rows = _EVIDENCE_BY_ODATA.get(item.odata_type)
        if rows is None:
            rows = _EVIDENCE_FOLDED.get(type_name(item).lower(), ())
        for row in rows:
            how = row.how
            if how == _ATTRIBUTE:
                value = getattr(item, row.first, None)
            elif how == _ATTRIBUTE_OF_ATTRIBUTE:
                value = getattr(item, row.first, None)
                if value is not None:
                    value = getattr(value, row.second, None)
            elif how == _EXTRA_KEY:
                value = item.extra.get(row.second)
            else:
                values = row.values(item)
                if not values:
                    continue
                value = None
            if value is not None:
                if value == "":
                    continue
                values = (value,)
            elif how != _WALK:
                continue
            written = seen.get(row)
            for value in values:
                if value.__class__ is not str:
                    value = _evidence_text(value)
                    if value is None:
                        continue
                if written is None:
                    part = row.memo.get(value)
                    if part is not None:
                        seen[row] = written = [value]
                        parts.append(part)
                        continue
                    written = seen[row] = []
                elif value in written:
                    continue
                # The usual value (printable ASCII within the limit, no space to trim) needs
                # only the two escapes it can hold; `_extension` applies every rule to the rest.
                if (value.isascii() and value.isprintable() and len(value) <= EVIDENCE_LIMIT and value[0] != " "
                        and value[-1] != " "):
                    text = value
                    if "\\" in text:
                        text = text.replace("\\", "\\\\")
                    if "=" in text:
                        text = text.replace("=", "\\=")
                else:
                    text = _extension(value, EVIDENCE_LIMIT)
                    if not text:
                        continue
                written.append(value)
                n = len(written)
                if n == 1:
                    part = row.prefixes[0] + text
                    if len(value) <= _MEMO_LEN:
                        memo = row.memo
                        if len(memo) >= _EVIDENCE_MEMO_MAX:
                            memo.clear()
                        memo[value] = part
                    parts.append(part)
                else:
                    parts.append(row.prefix(n) + text)
    return parts


def extension_text(alert: Alert) -> str:
    """The extension: `key=value` of each row whose value is present, in table order, then
    the evidence keys (`evidence_parts`)."""
    evidence = alert.evidence
    chosen = picks(evidence)
    parts = []
    for read, write in _ROWS:
        value = read(alert, chosen)
        if value:  # (None or "": absent; a datetime is always true)
            part = write(value)
            if part:
                parts.append(part)
    if evidence:
        parts += evidence_parts(evidence)
    return " ".join(parts)


# --------------------------------------------------------------------------- entry points


def header_fields(alert: Alert) -> list[str]:
    """The seven header fields, escaped."""
    service_source = alert.service_source
    product = (PRODUCTS.get(service_source) if service_source else None) or alert.product_name or service_source
    source = alert.source
    return [
        "CEF:0",
        VENDOR,
        _header(product, HEADER_LIMITS["product"], DEFAULT_PRODUCT),
        _header(DEVICE_VERSIONS.get(source, source), HEADER_LIMITS["device_version"], "unknown"),
        _header(alert.detector_id or alert.alert_policy_id or alert.category, HEADER_LIMITS["event_class_id"],
                DEFAULT_EVENT_CLASS),
        _header(alert.title, HEADER_LIMITS["name"], DEFAULT_NAME),
        str(SEVERITIES.get(alert.severity, 0)),
    ]


# The header text (with the `|` that ends it) of recent alerts, by what it is made of:
# alerts of one detector repeat it. Emptied when full.
_HEADERS: dict[tuple[Any, ...], str] = {}


def encode(alert: Alert | Incident) -> bytes:
    """One CEF:0 line (UTF-8, no trailing newline)."""
    if alert.__class__ is Incident:  # (one identity test: the alert path stays as it was)
        return encode_incident(alert)
    title = alert.title
    key = (alert.service_source, alert.product_name, alert.source, alert.detector_id, alert.alert_policy_id,
           alert.category, title, alert.severity)
    head = _HEADERS.get(key)
    if head is None:
        head = "|".join(header_fields(alert)) + "|"
        if len(title or "") <= 1024:  # (a title is short; a huge one is not worth remembering)
            if len(_HEADERS) >= 1024:
                _HEADERS.clear()
            _HEADERS[key] = head
    return (head + extension_text(alert)).encode()


# --------------------------------------------------------------------------- fitting a line into a budget


class Fit(enum.Enum):
    """What `fit` did to a line (see "Fitting a line into a budget" in the module docstring)."""

    INTACT = "intact"  # within the budget: sent as encoded
    SHORTENED = "shortened"  # values cut, in `FIT_ORDER`, each ending in `…`; parses as before
    CUT = "cut"  # the line itself cut and marked with `…`; may not parse


# The values `fit` may cut, first to last; "Name" is the header's Name (the title);
# `CUT_FIRST` and `CUT_LATE` are the evidence keys of those kinds, each group in line order.
FIT_ORDER: tuple[str, ...] = ("msg", CUT_FIRST, "request", "filePath", "flexString2", "flexString1", "cs4",
                              "sourceServiceName", "cat", CUT_LATE, "fname", "duser", "dhost", "Name")

_INTACT = Fit.INTACT
_MARK = TRUNCATED.encode()
_FIT_ORDER = tuple(key.encode() for key in FIT_ORDER)
# Evidence key (bytes) -> its group in FIT_ORDER (None: never cut); numbered keys by their base.
_EVIDENCE_GROUPS: dict[bytes, bytes | None] = {
    entry.key.encode(): (CUT_FIRST.encode() if entry.row.kind in CUT_FIRST_KINDS
                         else CUT_LATE.encode() if entry.row.kind in CUT_LATE_KINDS else None)
    for entry in EVIDENCE_KEYS}
_NUMBER = re.compile(rb"N[0-9]+\Z")


def _evidence_group(key: bytes) -> tuple[bool, bytes | None]:
    """(is an evidence key, its FIT_ORDER group or None)."""
    if key in _EVIDENCE_GROUPS:
        return True, _EVIDENCE_GROUPS[key]
    base = _NUMBER.sub(b"", key)
    if base != key and base in _EVIDENCE_GROUPS:
        return True, _EVIDENCE_GROUPS[base]
    return False, None
# A header field (unescaped `|` ends it; `\\.` is an escape), unrolled so it never backtracks.
_FIELD = rb"[^\\|]*(?:\\.[^\\|]*)*"
# The seven header fields; group 1 is the Name.
_HEADER = re.compile(rb"(?:%s\|){5}(%s)\|%s\|" % (_FIELD, _FIELD, _FIELD), re.DOTALL)


def fit(line: bytes, budget: int) -> tuple[bytes, Fit]:
    """`line` (from `encode`) within `budget` bytes, and how: the module docstring, "Fitting a
    line into a budget"."""
    if len(line) <= budget:
        return line, _INTACT
    return _shorten(line, budget)


def _safe_cut(line: bytes, start: int, end: int) -> int:
    """The last point at or before `end` (and not before `start`) where `line` can be cut:
    not inside a UTF-8 sequence, not between a `\\` and the character it escapes."""
    while end > start and 0x80 <= line[end] < 0xC0:  # (a UTF-8 continuation byte)
        end -= 1
    run = end
    while run > start and line[run - 1] == 0x5C:  # backslashes pair up from the left
        run -= 1
    return end - 1 if (end - run) & 1 else end


def _spans(line: bytes) -> dict[bytes, tuple[int, int]] | None:
    """Where each value lies (start, end) in `line`, by key (b"Name": the header's Name);
    None when `line` is not as `encode` writes it.

    `encode` writes every `=` of a value as `\\=`, so an `=` after anything but a backslash
    ends a key (letters and digits), which starts after the space before it (the first one:
    right after the header)."""
    header = _HEADER.match(line)
    if header is None:
        return None
    spans = {b"Name": header.span(1)}
    find, rfind = line.find, line.rfind
    key_start = header.end()
    key = None
    value_start = key_start
    equals = find(b"=", key_start)
    while equals != -1:
        if line[equals - 1] != 0x5C:  # (`\\=`: an `=` of a value)
            if key is not None:
                key_start = rfind(b" ", value_start, equals) + 1
                if not key_start:
                    return None
                spans[key] = (value_start, key_start - 1)
            key = line[key_start:equals]
            if not (key.isalnum() and key[:1].isalpha()):  # (bytes: ASCII only)
                return None
            value_start = equals + 1
        equals = find(b"=", equals + 1)
    if key is None:
        return None
    spans[key] = (value_start, len(line))
    return spans


def _shorten(line: bytes, budget: int) -> tuple[bytes, Fit]:
    """`fit` for a line over the budget: SHORTENED, else CUT."""
    if budget < _TRUNCATED_BYTES:
        raise ValueError(f"a budget of {budget} bytes leaves no room for the marker {TRUNCATED!r}")
    spans = _spans(line)
    if spans is not None:
        excess = len(line) - budget
        cuts: list[tuple[int, int, int]] = []
        for name in _cut_order(spans):
            start, end = spans[name]
            if end - start <= _TRUNCATED_BYTES:  # (the bare marker would save nothing)
                continue
            keep = _safe_cut(line, start, start + max(0, end - start - excess - _TRUNCATED_BYTES))
            cuts.append((start, keep, end))
            excess -= end - keep - _TRUNCATED_BYTES
            if excess <= 0:
                return _apply(line, cuts, len(line)), Fit.SHORTENED
        # Every value that may be cut is the bare marker: drop the evidence keys at the end of
        # the line whole, last first, each with the space before it.
        saved = 0
        cut_saves = {start: end - keep - _TRUNCATED_BYTES for start, keep, end in cuts}
        for name in reversed(spans):
            start, end = spans[name]
            space = start - len(name) - 2  # (the space before `name=`)
            if not _evidence_group(name)[0] or line[space] != 0x20:
                break
            saved += end - space - cut_saves.get(start, 0)
            if excess - saved <= 0:
                return _apply(line, [cut for cut in cuts if cut[0] < space], space), Fit.SHORTENED
    return line[:_safe_cut(line, 0, budget - _TRUNCATED_BYTES)] + _MARK, Fit.CUT


def _cut_order(spans: dict[bytes, tuple[int, int]]) -> list[bytes]:
    """The keys of the line that `fit` may cut, in `FIT_ORDER` (a group: in line order)."""
    groups: dict[bytes, list[bytes]] = {}
    for name in spans:
        if name[:2] == b"ms":
            evidence, group = _evidence_group(name)
            if group is not None:
                groups.setdefault(group, []).append(name)
    order = []
    for name in _FIT_ORDER:
        if name in groups:
            order += groups[name]
        elif name in spans:
            order.append(name)
    return order


def _apply(line: bytes, cuts: list[tuple[int, int, int]], length: int) -> bytes:
    """`line[:length]` with each cut (start, keep, end) made: `line[keep:end]` -> the marker."""
    parts, position = [], 0
    for _, keep, end in sorted(cuts):
        parts += (line[position:keep], _MARK)
        position = end
    parts.append(line[position:length])
    return b"".join(parts)


# --------------------------------------------------------------------------- incidents
#
# One CEF line per incident version: the same header rules, text rules and `fit` as an alert's
# line (the keys `fit` may cut are named alike: `msg`, `flexString2`, `flexString1`, `cs4`,
# `cat`; the ids are never cut). docs/formats.md has the table (`incident_markdown_table()`).

INCIDENT_PRODUCT = "Microsoft Defender XDR"
INCIDENT_EVENT_CLASS = "incident"
INCIDENT_NAME = "Microsoft Defender incident"
DEVICE_VERSIONS["graph_incidents"] = "incidents"

INCIDENT_EXTENSION: tuple[Key, ...] = (
    Key("rt", "`times.last_updated` (ms since epoch)", lambda i, p: i.times.last_updated, kind="time"),
    Key("externalId", "`id` (cut when longer; the full id is in `cs3`)", lambda i, p: i.id, 40),
    Key("act", "`status`", lambda i, p: i.status, 63),
    Key("cat", "`classification`", lambda i, p: i.classification, 1023),
    Key("msg", "`description`, else `summary`", lambda i, p: i.description or i.summary, 1023),
    Key("suser", "`assigned_to`", lambda i, p: i.assigned_to, 1023),
    Key("flexString1", "`determination`", lambda i, p: i.determination, 1023, "determination"),
    Key("flexString2", "`incident_web_url`", lambda i, p: i.incident_web_url, 1023, "incidentWebUrl"),
    Key("deviceCustomDate1", "`times.created` (ms since epoch)", lambda i, p: i.times.created,
        label="createdDateTime", kind="time"),
    Key("cn1", "`priority_score`", lambda i, p: None if i.priority_score is None else str(i.priority_score),
        20, "priorityScore"),
    Key("cs1", "`tenant.id`", lambda i, p: i.tenant.id, 1023, "tenantId"),
    Key("cs2", "`tenant.label`", lambda i, p: i.tenant.label, 1023, "customer"),
    Key("cs3", "`id` (whole)", lambda i, p: i.id, 1023, "incidentId"),
    Key("cs4", "`alert_ids`, joined with `,` (cut last-first by `fit`, as the alerts' MITRE list)",
        lambda i, p: ",".join(i.alert_ids), 1023, "alertIds"),
    Key("cs5", "`redirect_incident_id` (the incident this one was merged into)",
        lambda i, p: i.redirect_incident_id, 1023, "redirectIncidentId"),
    Key("cs6", "`custom_tags` then `system_tags`, joined with `,`",
        lambda i, p: ",".join([*i.custom_tags, *i.system_tags]), 1023, "tags"),
)
_INCIDENT_ROWS = tuple((row.read, _writer(row)) for row in INCIDENT_EXTENSION)


def incident_markdown_table() -> str:
    """The incident extension table, as docs/formats.md shows it."""
    lines = ["| CEF key | Label | Incident field | Max length |", "|---|---|---|---|"]
    for row in INCIDENT_EXTENSION:
        label = f"`{row.label}`" if row.label else ""
        lines.append(f"| `{row.key}` | {label} | {row.field} | {row.limit_text} |")
    return "\n".join(lines)


def incident_header_fields(incident: Incident) -> list[str]:
    """The seven header fields of an incident's line, escaped."""
    source = incident.source
    return [
        "CEF:0",
        VENDOR,
        INCIDENT_PRODUCT,
        _header(DEVICE_VERSIONS.get(source, source), HEADER_LIMITS["device_version"], "unknown"),
        INCIDENT_EVENT_CLASS,
        _header(incident.title, HEADER_LIMITS["name"], INCIDENT_NAME),
        str(SEVERITIES.get(incident.severity, 0)),
    ]


def encode_incident(incident: Incident) -> bytes:
    """One CEF:0 line of an incident version (UTF-8, no trailing newline)."""
    parts = []
    for read, write in _INCIDENT_ROWS:
        if value := read(incident, None):
            if part := write(value):
                parts.append(part)
    return ("|".join(incident_header_fields(incident)) + "|" + " ".join(parts)).encode()


# --------------------------------------------------------------------------- reading a line back
#
# For formats built from the CEF line's own fields (mappings/commonsecuritylog.py: the columns
# Azure Monitor Agent's CEF parser would fill from this line), so that both say exactly the same.

# The seven header fields, each as group (the first is `CEF:0`).
_HEADER_FIELDS = re.compile(rb"(%s)\|" % _FIELD * 7, re.DOTALL)
_HEADER_UNESCAPE = re.compile(r"\\([\\|])")
_EXTENSION_UNESCAPE = re.compile(r"\\([\\=nr])")
_EXTENSION_UNESCAPES = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}
# Where the next key starts: a space, then a key (letters and digits, a letter first) and `=`.
_KEY_START = re.compile(rb" (?=[A-Za-z][A-Za-z0-9]*=)")


class Fields(NamedTuple):
    """A line as `encode` wrote it, read back: the seven header fields and the extension's
    (key, value) pairs in line order, every value unescaped."""

    header: tuple[str, ...]
    extension: tuple[tuple[str, str], ...]


def fields(line: bytes) -> Fields:
    """`line` (from `encode`, not cut by `fit`) read back; a `ValueError` for any other line.

    `encode` writes every `=` of a value as `\\=`, so a space followed by letters and digits and
    an `=` starts a key: the extension splits there, each part at its first `=`."""
    header = _HEADER_FIELDS.match(line)
    if header is None:
        raise ValueError("not a CEF line as mappings.cef.encode writes it")
    head = tuple(_HEADER_UNESCAPE.sub(r"\1", value.decode()) for value in header.groups())
    extension = line[header.end():]
    pairs = []
    for part in _KEY_START.split(extension) if extension else ():
        key, equals, raw = part.partition(b"=")
        if not equals or not (key.isalnum() and key[:1].isalpha()):  # (bytes: ASCII only)
            raise ValueError("not a CEF line as mappings.cef.encode writes it")
        value = raw.decode()
        if "\\" in value:
            value = _EXTENSION_UNESCAPE.sub(_unescape, value)
        pairs.append((key.decode(), value))
    return Fields(head, tuple(pairs))


def _unescape(match: re.Match[str]) -> str:
    return _EXTENSION_UNESCAPES[match.group(1)]
