"""JSON in and out, fast with orjson and still correct for what orjson refuses.

orjson rejects integers beyond 64 bits and lone UTF-16 surrogates; the standard library
accepts both. Hostile or odd API data must not stall a tenant, so those fall back.
"""
from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ValueError (JSONDecodeError) when it is not JSON at all."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(obj: Any) -> bytes:
    try:
        return orjson.dumps(obj)
    except TypeError:
        text = json.dumps(obj, ensure_ascii=True, default=str, separators=(",", ":"))
        return text.encode("ascii")
