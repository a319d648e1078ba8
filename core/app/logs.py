"""Logging to stderr, as text or JSON lines, with every registered secret masked."""
from __future__ import annotations

import logging
import re
import sys
import time
from typing import Any

from core.model.secrets import REDACTOR

# What every LogRecord has; any other attribute came from a call's `extra=` (tenant, sink,
# alert_id, a cycle's numbers) and becomes a key of the JSON line.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# A line that starts `sink NAME:` or `tenant NAME:` is about that sink or tenant, even when its
# call passed no `extra=` (a connector's own warning): the name becomes the key all the same.
_SUBJECTS = {"sink %s": "sink", "tenant %s": "tenant"}
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def extra_keys(record: logging.LogRecord) -> dict[str, Any]:
    keys = {key: value for key, value in vars(record).items() if key not in _STANDARD}
    return {**_subject(record), **keys}


def _subject(record: logging.LogRecord) -> dict[str, str]:
    """The sink or tenant a line's text names first, as a key: `tenant` for a tenant's label,
    `tenant_id` where the line names the tenant by its GUID (a source reader knows no label)."""
    if not isinstance(record.msg, str) or not isinstance(record.args, tuple) or not record.args:
        return {}
    name = record.args[0]
    for prefix, key in _SUBJECTS.items():
        if record.msg.startswith(prefix) and isinstance(name, str):
            return {"tenant_id" if key == "tenant" and _GUID.fullmatch(name) else key: name}
    return {}


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


class SplunkdFormatter(RedactingFormatter):
    """`LEVEL logger: message`, one line: splunkd files a modular input's stderr lines in
    splunkd.log at the level their first word names (it knows WARN, not WARNING)."""

    def __init__(self) -> None:
        super().__init__(as_json=False)

    def format(self, record: logging.LogRecord) -> str:
        level = "WARN" if record.levelname == "WARNING" else record.levelname
        text = f"{level} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += " " + self.formatException(record.exc_info)
        return REDACTOR.redact(text.replace("\n", " "))


def setup_logging(level: str = "info", as_json: bool = False, splunkd: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SplunkdFormatter() if splunkd else RedactingFormatter(as_json))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (one line per HTTP request) drowns the forwarder's own lines: azure-core
    # logs every request and answer at INFO, azure-identity every token it gets.
    for noisy in ("httpx", "httpcore", "msal", "urllib3", "azure"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # psycopg's pool warns of every failed reconnect, over two lines; while the database is down
    # the forwarder's own ERROR line per failed call says it once, naming the host.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
