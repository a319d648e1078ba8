"""`type = "file"`: NDJSON files, one per tenant if the path has `{tenant}`, and one per event
kind (`alert`, `incident`) if it has `{kind}`.

Status table (OSError errno -> outcome):
  ENOSPC, EDQUOT, EIO, EAGAIN, EINTR   retry (the disk may free up, the NFS server come back)
  anything else (EACCES, EROFS, ...)   the sink stops: a person must fix the path or rights
A batch counts as delivered once written, flushed and (with `fsync = true`) synced.
"""
from __future__ import annotations

import asyncio
import errno
import os
from collections import defaultdict
from pathlib import Path

from connectors.base import DELIVERED, Connector, Event, EventResult, SinkConfig, SinkFatal

TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EAGAIN, errno.EINTR})


class FileSinkConfig(SinkConfig):
    type: str = "file"
    path: str = "out/{tenant}.ndjson"
    fsync: bool = True


class FileConnector(Connector):
    config_model = FileSinkConfig
    config: FileSinkConfig

    async def send(self, batch: list[Event]) -> list[EventResult]:
        paths: dict[tuple[str, str], Path] = {}  # per (tenant label, kind): one Path a batch, not one an event
        by_path: dict[Path, list[bytes]] = defaultdict(list)
        for event in batch:
            key = (event.meta.tenant_label, event.meta.kind)
            if key not in paths:
                paths[key] = Path(self.config.path.replace("{tenant}", key[0]).replace("{kind}", key[1]))
            by_path[paths[key]].append(event.body)
        try:
            await asyncio.to_thread(self._write_all, by_path)
        except OSError as err:
            if err.errno in TRANSIENT_ERRNOS:
                raise
            raise SinkFatal(f"cannot write {err.filename}: {err.strerror}") from None
        return [DELIVERED] * len(batch)

    def _write_all(self, by_path: dict[Path, list[bytes]]) -> None:
        for path, lines in by_path.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as handle:
                handle.write(b"\n".join(lines) + b"\n")
                handle.flush()
                if self.config.fsync:
                    os.fsync(handle.fileno())

    async def probe(self) -> str:
        directory = Path(self.config.path.replace("{tenant}", "probe").replace("{kind}", "alert")).parent
        directory.mkdir(parents=True, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise SinkFatal(f"{directory} is not writable")
        return f"writable directory {directory}"


CONNECTOR = FileConnector
