"""AMQP 1.0 types and messages, just enough for the Event Hubs test peer (stdlib only).

Written from the OASIS AMQP 1.0 spec (part 1 "Types", part 3 "Messaging"), vendored from the
spike the project started from, and cleaned up.

Decoding covers every constructor of part 1 (fixed width, variable width, compound, array,
described). Python values on decode: None, bool, int (every integer type), float, str (string),
`Symbol` (symbol, a str), bytes (binary), uuid.UUID, `Timestamp` (ms, an int), list (list and
array), dict (map), `Described`. decimal32/64/128 come back as their raw bytes; char as a
one-character str.

Encoding covers what the peer sends. A plain int is encoded as a long; the marker classes
(`UByte`, `UShort`, `UInt`, `ULong`, `Int`, `Timestamp`, `Symbol`) pick the AMQP type, and
`Array` an array of symbols or strings. Lists and maps always use the 32-bit forms.

Two constraints of azure-eventhub's pyamqp (<= 5.15.1) shape the encoder:
  * descriptors must be `00 53 <code>` (smallulong): pyamqp reads the performative code at a
    fixed offset, so `ULong` below 256 is always encoded as smallulong;
  * performatives must carry all their fields, trailing nulls included: pyamqp indexes them
    positionally. `performative()` pads them.

`decode_message()` / `encode_message()` handle the message sections of part 3.
"""
from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from typing import Any


class Symbol(str):
    """AMQP symbol (ASCII)."""


class UByte(int):
    """AMQP ubyte."""


class UShort(int):
    """AMQP ushort."""


class UInt(int):
    """AMQP uint."""


class ULong(int):
    """AMQP ulong (smallulong below 256)."""


class Int(int):
    """AMQP int (32-bit signed); a plain Python int is encoded as a long."""


class Timestamp(int):
    """AMQP timestamp: milliseconds since the Unix epoch."""


@dataclass
class Described:
    descriptor: Any
    value: Any


@dataclass
class Array:
    """A homogeneous AMQP array to encode; only symbols and strings are needed by the peer."""

    kind: str  # "symbol" | "string"
    items: list[str]


# ---------------------------------------------------------------- decoding

# constructor -> (size, struct format) of the fixed-width types
_FIXED: dict[int, tuple[int, str]] = {
    0x50: (1, ">B"), 0x51: (1, ">b"), 0x52: (1, ">B"), 0x53: (1, ">B"), 0x54: (1, ">b"), 0x55: (1, ">b"),
    0x60: (2, ">H"), 0x61: (2, ">h"), 0x70: (4, ">I"), 0x71: (4, ">i"), 0x72: (4, ">f"),
    0x80: (8, ">Q"), 0x81: (8, ">q"), 0x82: (8, ">d"), 0x83: (8, ">q"),
}
_RAW = {0x74: 4, 0x84: 8, 0x94: 16}  # decimal32/64/128: kept as bytes, nothing here needs them


class DecodeError(ValueError):
    """Bytes that are not valid AMQP."""


def decode_value(buf: memoryview, pos: int = 0) -> tuple[Any, int]:
    """The value starting at `pos` and the position after it."""
    try:
        code = buf[pos]
        return _decode_body(code, buf, pos + 1)
    except (IndexError, struct.error, UnicodeDecodeError) as error:
        raise DecodeError(f"truncated or malformed AMQP value at {pos}: {error}") from error


def decode_all(raw: bytes | memoryview) -> list[Any]:
    """Consecutive top-level values, e.g. the sections of a message."""
    buf = memoryview(raw)
    pos, values = 0, []
    while pos < len(buf):
        value, pos = decode_value(buf, pos)
        values.append(value)
    return values


def _decode_body(code: int, buf: memoryview, pos: int) -> tuple[Any, int]:
    if code == 0x00:
        descriptor, pos = decode_value(buf, pos)
        value, pos = decode_value(buf, pos)
        return Described(descriptor, value), pos
    if code == 0x40:
        return None, pos
    if code in (0x41, 0x42):
        return code == 0x41, pos
    if code == 0x56:
        return buf[pos] == 1, pos + 1
    if code in (0x43, 0x44):  # uint0, ulong0
        return 0, pos
    if code == 0x45:  # list0
        return [], pos
    if code in _FIXED:
        size, fmt = _FIXED[code]
        (value,) = struct.unpack_from(fmt, buf, pos)
        return (Timestamp(value) if code == 0x83 else value), pos + size
    if code == 0x73:  # char: one UTF-32 code point
        (point,) = struct.unpack_from(">I", buf, pos)
        return chr(point), pos + 4
    if code in _RAW:
        end = _need(buf, pos + _RAW[code])
        return bytes(buf[pos:end]), end
    if code == 0x98:
        end = _need(buf, pos + 16)
        return uuid.UUID(bytes=bytes(buf[pos:end])), end
    if code in (0xA0, 0xA1, 0xA3):
        end = _need(buf, pos + 1 + buf[pos])
        return _variable(code, buf[pos + 1:end]), end
    if code in (0xB0, 0xB1, 0xB3):
        (size,) = struct.unpack_from(">I", buf, pos)
        end = _need(buf, pos + 4 + size)
        return _variable(code, buf[pos + 4:end]), end
    if code in (0xC0, 0xC1):
        size, count = buf[pos], buf[pos + 1]
        return _compound(code, buf, pos + 2, count), _need(buf, pos + 1 + size)
    if code in (0xD0, 0xD1):
        size, count = struct.unpack_from(">II", buf, pos)
        return _compound(code, buf, pos + 8, count), _need(buf, pos + 4 + size)
    if code in (0xE0, 0xF0):
        return _array(code, buf, pos)
    raise DecodeError(f"unknown AMQP constructor 0x{code:02x} at {pos - 1}")


def _need(buf: memoryview, end: int) -> int:
    # memoryview slicing silently stops at the end; a length running past it is malformed
    if end > len(buf):
        raise DecodeError(f"value runs past the end of the buffer ({end} > {len(buf)})")
    return end


def _variable(code: int, raw: memoryview) -> Any:
    if code in (0xA1, 0xB1):
        return str(raw, "utf-8")
    if code in (0xA3, 0xB3):
        return Symbol(str(raw, "ascii"))
    return bytes(raw)


def _compound(code: int, buf: memoryview, pos: int, count: int) -> list[Any] | dict[Any, Any]:
    items = []
    for _ in range(count):
        value, pos = decode_value(buf, pos)
        items.append(value)
    if code in (0xC1, 0xD1):
        if count % 2:
            raise DecodeError("map with an odd number of items")
        return {items[i]: items[i + 1] for i in range(0, count, 2)}
    return items


def _array(code: int, buf: memoryview, pos: int) -> tuple[list[Any], int]:
    if code == 0xE0:
        size, count = buf[pos], buf[pos + 1]
        p, end = pos + 2, pos + 1 + size
    else:
        size, count = struct.unpack_from(">II", buf, pos)
        p, end = pos + 8, pos + 4 + size
    element = buf[p]
    p += 1
    descriptor = None
    if element == 0x00:  # described elements: one descriptor for all, then their constructor
        descriptor, p = decode_value(buf, p)
        element = buf[p]
        p += 1
    items = []
    for _ in range(count):
        value, p = _decode_body(element, buf, p)
        items.append(Described(descriptor, value) if descriptor is not None else value)
    return items, _need(buf, end)


# ---------------------------------------------------------------- encoding

def encode_value(value: Any) -> bytes:
    """The AMQP encoding of `value` (see the module docstring for the type mapping)."""
    if value is None:
        return b"\x40"
    if isinstance(value, Described):
        return b"\x00" + encode_value(value.descriptor) + encode_value(value.value)
    if isinstance(value, bool):  # before int: bool is an int to Python
        return b"\x41" if value else b"\x42"
    if isinstance(value, int):
        return _encode_int(value)
    if isinstance(value, float):
        return b"\x82" + struct.pack(">d", value)
    if isinstance(value, uuid.UUID):
        return b"\x98" + value.bytes
    if isinstance(value, Symbol):
        return _sized(0xB3, value.encode("ascii"))
    if isinstance(value, str):
        return _sized(0xB1, value.encode("utf-8"))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _sized(0xB0, bytes(value))
    if isinstance(value, Array):
        return _encode_array(value)
    if isinstance(value, (list, tuple)):
        return _compound32(0xD0, len(value), b"".join(encode_value(item) for item in value))
    if isinstance(value, dict):
        body = b"".join(encode_value(key) + encode_value(item) for key, item in value.items())
        return _compound32(0xD1, 2 * len(value), body)
    raise TypeError(f"cannot encode {type(value).__name__} as AMQP")


def _encode_int(value: int) -> bytes:
    if isinstance(value, UByte):
        return b"\x50" + struct.pack(">B", value)
    if isinstance(value, UShort):
        return b"\x60" + struct.pack(">H", value)
    if isinstance(value, UInt):
        return b"\x70" + struct.pack(">I", value)
    if isinstance(value, ULong):
        # smallulong whenever it fits: descriptors must be `00 53 <code>` for pyamqp
        return b"\x53" + struct.pack(">B", value) if value < 256 else b"\x80" + struct.pack(">Q", value)
    if isinstance(value, Int):
        return b"\x71" + struct.pack(">i", value)
    if isinstance(value, Timestamp):
        return b"\x83" + struct.pack(">q", value)
    return b"\x81" + struct.pack(">q", value)


def _sized(code: int, raw: bytes) -> bytes:
    return bytes([code]) + struct.pack(">I", len(raw)) + raw


def _compound32(code: int, count: int, body: bytes) -> bytes:
    payload = struct.pack(">I", count) + body
    return bytes([code]) + struct.pack(">I", len(payload)) + payload


def _encode_array(array: Array) -> bytes:
    code, encoding = {"symbol": (0xB3, "ascii"), "string": (0xB1, "utf-8")}[array.kind]
    raws = [item.encode(encoding) for item in array.items]
    body = b"".join(struct.pack(">I", len(raw)) + raw for raw in raws)
    return _compound32(0xF0, len(raws), bytes([code]) + body)


def performative(code: int, fields: list[Any], width: int) -> bytes:
    """A performative (or SASL frame body) with all `width` fields present, nulls padded."""
    if len(fields) > width:
        raise ValueError(f"performative 0x{code:02x} has {len(fields)} fields, more than {width}")
    return encode_value(Described(ULong(code), list(fields) + [None] * (width - len(fields))))


# ---------------------------------------------------------------- messages (part 3)

HEADER, DELIVERY_ANNOTATIONS, MESSAGE_ANNOTATIONS, PROPERTIES = 0x70, 0x71, 0x72, 0x73
APPLICATION_PROPERTIES, DATA, SEQUENCE, VALUE, FOOTER = 0x74, 0x75, 0x76, 0x77, 0x78
_SECTION_SYMBOLS = {
    "amqp:header:list": HEADER, "amqp:delivery-annotations:map": DELIVERY_ANNOTATIONS,
    "amqp:message-annotations:map": MESSAGE_ANNOTATIONS, "amqp:properties:list": PROPERTIES,
    "amqp:application-properties:map": APPLICATION_PROPERTIES, "amqp:data:binary": DATA,
    "amqp:amqp-sequence:list": SEQUENCE, "amqp:amqp-value:*": VALUE, "amqp:footer:map": FOOTER,
}
HEADER_FIELDS = ("durable", "priority", "ttl", "first_acquirer", "delivery_count")
PROPERTY_FIELDS = ("message_id", "user_id", "to", "subject", "reply_to", "correlation_id", "content_type",
                   "content_encoding", "absolute_expiry_time", "creation_time", "group_id", "group_sequence",
                   "reply_to_group_id")


@dataclass
class Message:
    """The sections of one AMQP message. `header` and `properties` are keyed by field name and
    hold only the fields that were present and not null."""

    header: dict[str, Any] = field(default_factory=dict)
    delivery_annotations: dict[Any, Any] = field(default_factory=dict)
    message_annotations: dict[Any, Any] = field(default_factory=dict)
    properties: dict[str, Any] = field(default_factory=dict)
    application_properties: dict[Any, Any] = field(default_factory=dict)
    data: list[bytes] = field(default_factory=list)  # one item per data section
    sequence: list[list[Any]] = field(default_factory=list)
    value: Any = None
    footer: dict[Any, Any] = field(default_factory=dict)


def _named(names: tuple[str, ...], values: Any) -> dict[str, Any]:
    return {name: value for name, value in zip(names, values or []) if value is not None}


def decode_message(raw: bytes | memoryview) -> Message:
    """Decode a bare message; DecodeError when a top-level value is not a section."""
    message = Message()
    for section in decode_all(raw):
        if not isinstance(section, Described):
            raise DecodeError(f"message section is not described: {section!r}")
        code = section.descriptor
        code = _SECTION_SYMBOLS.get(code) if isinstance(code, str) else code
        value = section.value
        if code == HEADER:
            message.header = _named(HEADER_FIELDS, value)
        elif code == DELIVERY_ANNOTATIONS:
            message.delivery_annotations = value or {}
        elif code == MESSAGE_ANNOTATIONS:
            message.message_annotations = value or {}
        elif code == PROPERTIES:
            message.properties = _named(PROPERTY_FIELDS, value)
        elif code == APPLICATION_PROPERTIES:
            message.application_properties = value or {}
        elif code == DATA:
            message.data.append(value)
        elif code == SEQUENCE:
            message.sequence.append(value)
        elif code == VALUE:
            message.value = value
        elif code == FOOTER:
            message.footer = value or {}
        else:
            raise DecodeError(f"unknown message section {section.descriptor!r}")
    return message


def encode_message(*, properties: dict[str, Any] | None = None,
                   application_properties: dict[Any, Any] | None = None, value: Any = None) -> bytes:
    """A reply message: properties (all 13 fields: pyamqp reads correlation-id positionally),
    application-properties, and an amqp-value body (null when `value` is None)."""
    unknown = set(properties or {}) - set(PROPERTY_FIELDS)
    if unknown:
        raise ValueError(f"unknown message properties {sorted(unknown)}")
    fields = [(properties or {}).get(name) for name in PROPERTY_FIELDS]
    return (encode_value(Described(ULong(PROPERTIES), fields))
            + encode_value(Described(ULong(APPLICATION_PROPERTIES), application_properties or {}))
            + encode_value(Described(ULong(VALUE), value)))
