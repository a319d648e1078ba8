"""`core.model.schema.Alert` -> the common schema itself, one JSON line (format `alert`).

For sinks that render the alert themselves (the e-mail sink writes its messages from it) and
for anyone who wants the normalised schema as it is: every `Alert` field, `raw` included.
`core.model.schema.decode_alert` reads it back into the same model.
"""
from __future__ import annotations

from core.model.schema import decode_alert, encode_alert

encode = encode_alert
decode = decode_alert
