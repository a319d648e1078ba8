"""A strict CEF parser for the tests, written from the CEF specification ("Implementing
ArcSight Common Event Format", revisions 23-26), not
from `mappings/cef.py`, so that it can tell the encoder it is wrong.

    CEF:Version|Device Vendor|Device Product|Device Version|Device Event Class ID|Name|Severity|Extension

`parse` returns a `CefEvent` with every value unescaped, or raises `CefError` naming the
violation. What it enforces:

- The line is one line: no raw CR or LF (the spec: a newline inside a value is written
  `\\n`/`\\r`), and no other raw C0 control character or DEL either.
- The prefix `CEF:` and a version of `0` or `1`.
- Exactly seven unescaped `|` end the seven header fields; in the header the only escapes
  are `\\|` and `\\\\`, and any other backslash is an error. Vendor, product, version,
  event class id and name are not empty; severity is an integer 0-10 or one of
  Unknown, Low, Medium, High, Very-High.
- The extension (everything after the seventh `|`; `|` needs no escape there) is empty or
  `key=value` pairs separated by one space. Keys are a letter then letters/digits (the
  spec's key names); values may contain spaces; the only escapes are `\\\\`, `\\=`, `\\n`,
  `\\r`; an unescaped `=` in a value is an error (a value ends only where the next
  ` key=` starts, so an unescaped `=` would start a new key, or be a syntax error).
  Duplicate keys are an error.
- Stricter than the spec where the spec leaves a reader guessing: a value may not be
  empty, nor begin or end with a space (readers trim, so such a value does not survive),
  and a custom-field label (`cs1Label`, ...) goes with its field and the field with its
  label (`labels=True`). `known_keys` (e.g. `KNOWN_KEYS`, the spec's key dictionary)
  rejects any other key.
"""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = ["KNOWN_KEYS", "CefError", "CefEvent", "parse", "parse_bytes"]


class CefError(ValueError):
    """The line is not valid (strict) CEF; the message says why and where."""


@dataclass(frozen=True)
class CefEvent:
    version: int
    vendor: str
    product: str
    device_version: str
    signature_id: str
    name: str
    severity: str
    extension: dict[str, str] = field(default_factory=dict)


SEVERITY_WORDS = frozenset({"Unknown", "Low", "Medium", "High", "Very-High"})
_KEY = re.compile(r"[A-Za-z][A-Za-z0-9]*\Z")
_RAW_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_NAMES = {"\n": "LF", "\r": "CR", "\x00": "NUL", "\t": "TAB"}
_HEADER_ESCAPES = {"\\": "\\", "|": "|"}
_EXTENSION_ESCAPES = {"\\": "\\", "=": "=", "n": "\n", "r": "\r"}

# Custom fields that carry a label: (field prefix, numbers).
_LABELLED = (("cs", range(1, 7)), ("cn", range(1, 4)), ("cfp", range(1, 5)), ("c6a", range(1, 5)),
             ("flexString", range(1, 3)), ("flexNumber", range(1, 3)), ("flexDate", range(1, 2)),
             ("deviceCustomDate", range(1, 3)))
_LABEL_PAIRS = {f"{prefix}{n}Label": f"{prefix}{n}" for prefix, numbers in _LABELLED for n in numbers}

# The key dictionary of the CEF specification (short names, and the full names that have no
# short one), plus the custom fields and their labels.
KNOWN_KEYS = frozenset({
    "act", "app", "cat", "cnt", "destinationDnsDomain", "destinationServiceName",
    "destinationTranslatedAddress", "destinationTranslatedPort", "deviceDirection", "deviceDnsDomain",
    "deviceExternalId", "deviceFacility", "deviceInboundInterface", "deviceNtDomain", "deviceOutboundInterface",
    "devicePayloadId", "deviceProcessName", "deviceTranslatedAddress", "dhost", "dlat", "dlong", "dmac",
    "dntdom", "dpid", "dpriv", "dproc", "dpt", "dst", "dtz", "duid", "duser", "dvc", "dvchost", "dvcmac",
    "dvcpid", "end", "eventId", "externalId", "fileCreateTime", "fileHash", "fileId", "fileModificationTime",
    "filePath", "filePermission", "fileType", "fname", "fsize", "in", "msg", "oldFileCreateTime",
    "oldFileHash", "oldFileId", "oldFileModificationTime", "oldFileName", "oldFilePath", "oldFilePermission",
    "oldFileSize", "oldFileType", "out", "outcome", "proto", "reason", "request", "requestClientApplication",
    "requestContext", "requestCookies", "requestMethod", "rt", "shost", "slat", "slong", "smac", "sntdom",
    "sourceDnsDomain", "sourceServiceName", "sourceTranslatedAddress", "sourceTranslatedPort", "spid",
    "spriv", "sproc", "spt", "src", "start", "suid", "suser", "type",
    *_LABEL_PAIRS, *_LABEL_PAIRS.values(),
})


def parse_bytes(data: bytes, **options: object) -> CefEvent:
    """`parse` for a line as it comes off the wire: strict UTF-8 first."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CefError(f"not UTF-8: {error}") from None
    return parse(text, **options)  # type: ignore[arg-type]


def parse(line: str, *, known_keys: Collection[str] | None = None, labels: bool = True) -> CefEvent:
    if not isinstance(line, str):
        raise CefError(f"expected str, got {type(line).__name__}")
    bad = _RAW_CONTROL.search(line)
    if bad:
        char = bad.group()
        raise CefError(f"raw {_CONTROL_NAMES.get(char, f'U+{ord(char):04X}')} at {bad.start()}")
    if not line.startswith("CEF:"):
        raise CefError("does not start with 'CEF:'")
    fields, rest = _header(line, 4)
    version, vendor, product, device_version, signature_id, name, severity = fields
    if version not in ("0", "1"):
        raise CefError(f"version {version!r}: expected 0 or 1")
    for what, value in (("vendor", vendor), ("product", product), ("device version", device_version),
                        ("event class id", signature_id), ("name", name)):
        if not value:
            raise CefError(f"empty {what}")
    if severity not in SEVERITY_WORDS and not (severity.isdigit() and severity.isascii() and 0 <= int(severity) <= 10):
        raise CefError(f"severity {severity!r}: expected 0-10 or one of {sorted(SEVERITY_WORDS)}")
    extension = _extension(line[rest:], rest)
    if known_keys is not None:
        unknown = sorted(set(extension) - set(known_keys))
        if unknown:
            raise CefError(f"unknown keys {unknown}")
    if labels:
        for label, key in _LABEL_PAIRS.items():
            if (label in extension) != (key in extension):
                raise CefError(f"{label if label in extension else key} without "
                               f"{key if label in extension else label}")
    return CefEvent(int(version), vendor, product, device_version, signature_id, name, severity, extension)


def _header(line: str, start: int) -> tuple[list[str], int]:
    """The seven header fields (unescaped), and where the extension starts."""
    fields: list[str] = []
    chars: list[str] = []
    i, end = start, len(line)
    while len(fields) < 7:
        if i >= end:
            raise CefError(f"header has {len(fields)} unescaped '|' of the 7 it needs")
        char = line[i]
        if char == "\\":
            escaped = line[i + 1] if i + 1 < end else ""
            if escaped not in _HEADER_ESCAPES:
                raise CefError(f"invalid header escape {line[i:i + 2]!r} at {i}")
            chars.append(_HEADER_ESCAPES[escaped])
            i += 2
        elif char == "|":
            fields.append("".join(chars))
            chars = []
            i += 1
        else:
            chars.append(char)
            i += 1
    return fields, i


def _extension(text: str, offset: int) -> dict[str, str]:
    if not text:
        return {}
    # Unescape once, remembering which characters were escaped: an escaped `=` or space is
    # value text, an unescaped one is syntax.
    units: list[tuple[str, bool]] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            escaped = text[i + 1] if i + 1 < len(text) else ""
            if escaped not in _EXTENSION_ESCAPES:
                raise CefError(f"invalid extension escape {text[i:i + 2]!r} at {offset + i}")
            units.append((_EXTENSION_ESCAPES[escaped], True))
            i += 2
        else:
            units.append((char, False))
            i += 1
    equals = [n for n, (char, escaped) in enumerate(units) if char == "=" and not escaped]
    if not equals:
        raise CefError("extension has no key=value")
    out: dict[str, str] = {}
    key_start = 0
    for number, position in enumerate(equals):
        key_units = units[key_start:position]
        key = "".join(char for char, _ in key_units)
        if any(escaped for _, escaped in key_units) or not _KEY.match(key):
            raise CefError(f"invalid key {key!r} (or an unescaped '=' in the value before it)")
        if key in out:
            raise CefError(f"duplicate key {key!r}")
        value_start = position + 1
        if number + 1 < len(equals):
            following = equals[number + 1]
            space = next((n for n in range(following - 1, value_start - 1, -1) if units[n] == (" ", False)), None)
            if space is None:
                raise CefError(f"unescaped '=' in the value of {key!r}")
            value_units, key_start = units[value_start:space], space + 1
        else:
            value_units = units[value_start:]
        value = "".join(char for char, _ in value_units)
        if not value:
            raise CefError(f"empty value of {key!r}")
        if value_units[0] == (" ", False) or value_units[-1] == (" ", False):
            raise CefError(f"value of {key!r} begins or ends with a space: {value!r}")
        out[key] = value
    return out
