"""Logging to stderr, as text or JSON lines, with every registered secret masked."""
from __future__ import annotations

import logging
import sys
import time
from typing import Any

from core.model.secrets import REDACTOR

# What every LogRecord has; any other attribute came from a call's `extra=` (tenant, sink,
# alert_id, a cycle's numbers) and becomes a key of the JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def extra_keys(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


class RedactingFormatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        if self.as_json:
            import orjson

            text = orjson.dumps(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
                    "level": record.levelname.lower(),
                    "logger": record.name,
                    "message": record.getMessage(),
                    **extra_keys(record),
                    **({"exception": self.formatException(record.exc_info)} if record.exc_info else {}),
                }
            ).decode()
        else:
            text = super().format(record)
        return REDACTOR.redact(text)


def setup_logging(level: str = "info", as_json: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (one line per HTTP request) drowns the forwarder's own lines.
    for noisy in ("httpx", "httpcore", "msal", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
