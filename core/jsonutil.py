"""JSON in and out, fast with orjson and still correct for what orjson refuses.

orjson rejects integers beyond 64 bits and lone UTF-16 surrogates; the standard library
accepts both. Hostile or odd API data must not stall a tenant, so those fall back. orjson
also refuses to write nesting deeper than 254 levels, and the standard library's encoder
stops at the interpreter's recursion limit (1,000) while both parsers accept 1,024: what
was parsed can always be written back, with the limit raised for that one call.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (JSONDecodeError) when it is not JSON at all."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


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
    return json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":")).encode("ascii")
