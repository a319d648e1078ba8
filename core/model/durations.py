"""Durations written the way operators write them: `30s`, `5m`, `1h`, `1d`, or plain seconds."""
from __future__ import annotations

import random
import re
from typing import Annotated

from pydantic import BeforeValidator

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(value: object) -> float:
    """Seconds in `value`; compound forms like `1h30m` are accepted."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '5m'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        seconds = _parse_text(value.strip().lower())
    else:
        raise ValueError("a duration is a number of seconds or a string like '5m'")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


def _parse_text(text: str) -> float:
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or _PART.sub("", text):
        raise ValueError(f"{text!r} is not a duration; write e.g. '90s', '5m', '1h30m', '1d'")
    return sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(text))


Duration = Annotated[float, BeforeValidator(parse_duration)]


BACKOFF_BASE = 1.0
BACKOFF_CAP = 60.0


def backoff_delay(attempt: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Exponential backoff with jitter, so many tenants retrying do not retry in step."""
    ceiling = min(cap, base * 2 ** attempt)
    return random.uniform(ceiling / 2, ceiling)
