"""`type = "stdout"`: NDJSON on standard output, for pipes and container log collectors.

Status table: BrokenPipeError -> the sink stops (the reader is gone); other OSError -> retry.
"""
from __future__ import annotations

import sys

from connectors.base import DELIVERED, Connector, Event, EventResult, SinkConfig, SinkFatal


class StdoutSinkConfig(SinkConfig):
    type: str = "stdout"


class StdoutConnector(Connector):
    config_model = StdoutSinkConfig

    async def send(self, batch: list[Event]) -> list[EventResult]:
        out = sys.stdout.buffer
        try:
            out.write(b"".join(event.body + b"\n" for event in batch))
            out.flush()
        except BrokenPipeError:
            raise SinkFatal("standard output was closed by its reader") from None
        return [DELIVERED] * len(batch)

    async def probe(self) -> str:
        return "standard output"


CONNECTOR = StdoutConnector
