"""`core.model.schema.Alert` -> the common schema itself, one JSON line (format `alert`).

For sinks that render the alert themselves (the e-mail sink writes its messages from it) and
for anyone who wants the normalised schema as it is: every `Alert` field, `raw` included.
`Alert.model_validate_json` reads it back into the same model.
"""
from __future__ import annotations

from core.model.schema import Alert


def encode(alert: Alert) -> bytes:
    return alert.model_dump_json().encode()


def decode(body: bytes) -> Alert:
    return Alert.model_validate_json(body)
