"""What every source record is checked for before its id and times are trusted, whatever its shape.

The errors give the reason only ("blank", "not an ISO 8601 date-time: 'x'"): the caller
knows where the value sat and puts the property path in front (`id: blank`), as a mapping
does for every complaint.
"""
from __future__ import annotations

from typing import Any


class InvalidValue(ValueError):
    """A value a record cannot be read by; the message is the reason, without the property path."""


def preview(value: Any) -> str:
    """A short rendering of a bad value for an error message (a description may be 10 MB)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_record_id(record_id: str) -> None:
    """A record's id keys the dedupe state (UTF-8 text) and names the record in every format:
    it may be neither blank nor carry a lone surrogate (which no UTF-8 text can hold)."""
    if record_id.isspace():
        raise InvalidValue("blank")
    if not record_id.isascii():
        try:
            record_id.encode()
        except UnicodeEncodeError:
            raise InvalidValue("not valid Unicode (a lone surrogate)") from None
