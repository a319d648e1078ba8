"""Logging to stderr, as text or JSON lines, with every registered secret masked."""
from __future__ import annotations

import logging
import sys
import time

from core.model.secrets import REDACTOR


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
