"""JSON in and out, fast with orjson and still correct for what orjson refuses.

orjson rejects integers beyond 64 bits and lone UTF-16 surrogates; the standard library
accepts both. Hostile or odd API data must not stall a tenant, so those fall back. orjson
also refuses to write nesting deeper than 254 levels, and the standard library's encoder
stops at the interpreter's recursion limit (1,000) while both parsers accept 1,024: what
was parsed can always be written back, with the limit raised for that one call.

A number beyond a double's range (`1e400`) is valid JSON, but neither a float nor JSON output
can hold it (orjson would write `null`, the standard library `Infinity`, which is not JSON):
it is read as a `NonFinite`, which a typed field refuses and which `dumps` refuses to write,
so the alert goes to the dead letters with the reason instead of being changed silently.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from typing import Any

import orjson


class NonFinite:
    """A JSON number that no double holds, kept as its text."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"NonFinite({self.text})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NonFinite) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


def _float(text: str) -> float | NonFinite:
    value = float(text)
    return value if math.isfinite(value) else NonFinite(text)


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (JSONDecodeError) when it is not JSON at all."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data, parse_float=_float, parse_constant=NonFinite)


# Deeper than any parser here accepts (orjson: 1,024 levels), with room for the callers' frames.
_DEEP_RECURSION_LIMIT = 4_000
_limit_lock = threading.Lock()


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        try:
            return _stdlib_dumps(obj)
        except RecursionError:
            with _limit_lock:
                previous = sys.getrecursionlimit()
                sys.setrecursionlimit(max(previous, _DEEP_RECURSION_LIMIT))
                try:
                    return _stdlib_dumps(obj)
                finally:
                    sys.setrecursionlimit(previous)


def _stdlib_dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=True, default=_other, separators=(",", ":"), allow_nan=False).encode("ascii")


def _other(value: Any) -> str:
    if isinstance(value, NonFinite):
        raise ValueError(f"a number beyond the range of a double cannot be written as JSON: {value.text}")
    return str(value)


def dumps_for_keeping(obj: Any) -> bytes:
    """`dumps` for a dead letter, which must hold any alert: a `NonFinite` is written as its
    text, in a string (the reason says the alert was not sent)."""
    try:
        return dumps(obj)
    except ValueError:
        return json.dumps(obj, ensure_ascii=True, default=_as_text, separators=(",", ":")).encode("ascii")


def _as_text(value: Any) -> str:
    return value.text if isinstance(value, NonFinite) else str(value)
