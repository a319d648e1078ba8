"""Times as the state and the dedupe keys write them (UTC, microseconds, a `Z`), and the
ISO 8601 timestamps of the Defender APIs read into UTC datetimes."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from core.model.checks import InvalidValue, preview

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
UTC = timezone.utc


def format_time(moment: datetime) -> str:
    return moment.strftime(TIME_FORMAT)


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=timezone.utc)


# The timestamps parsed lately: an alert's evidence mostly share one createdDateTime, and a
# window re-read in the overlap brings the same lastUpdateDateTime again; datetimes are
# immutable, so equal strings may share one. Emptied when full.
_PARSED: dict[str, datetime] = {}
_PARSED_MAX = 1024


def parse_timestamp(value: Any) -> datetime:
    """An API's ISO 8601 date-time string -> an aware UTC datetime.

    'Z' or an offset is converted to UTC; a value without offset is taken as UTC (the
    Defender APIs document every DateTimeOffset as UTC); a 7th fractional digit (Graph's
    100 ns) is truncated to microseconds. Raises InvalidValue with the reason.
    """
    if value.__class__ is not str and not isinstance(value, str):
        raise InvalidValue(f"expected an ISO 8601 date-time string, got {type(value).__name__}")
    parsed = _PARSED.get(value)
    if parsed is not None:
        return parsed
    try:
        parsed = datetime.fromisoformat(value)  # 3.11+: 'Z', any number of fraction digits
    except ValueError:
        raise InvalidValue(f"not an ISO 8601 date-time: {preview(value)}") from None
    if parsed.tzinfo is not UTC:  # what Graph sends, 'Z' (or +00:00), gives the UTC singleton
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        else:
            try:
                parsed = parsed.astimezone(UTC)
            except OverflowError:
                raise InvalidValue(f"out of range once converted to UTC: {preview(value)}") from None
    if len(_PARSED) >= _PARSED_MAX:
        _PARSED.clear()
    _PARSED[value] = parsed
    return parsed
