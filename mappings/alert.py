"""`core.model.schema.Alert` -> the common schema itself, one JSON line (format `alert`).

For sinks that render the alert themselves (the e-mail sink writes its messages from it) and
for anyone who wants the normalised schema as it is: every `Alert` field, `raw` included.
`decode` reads it back into the same model: an Alert, or an Incident (which says
`"kind": "incident"`; `core.model.schema.decode_event`).
"""
from __future__ import annotations

from core.model.schema import decode_event, encode_alert

encode = encode_alert
decode = decode_event
