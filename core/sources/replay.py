"""Saved API responses replayed as if the API served them (demo, tests, air-gapped trials).

The folder holds list responses (`{"value": [...]}`) in files read in name order: a source
kind's in a subfolder named after it (`graph_incidents/`), or, for the kinds a tenant reads by
default (graph_alerts), at the top of the folder, the layout from before there were other
kinds. The reader applies the same `<time property> ge <since>` (and `lt <until>`) filter the
API would, on the kind's time property, so cursors, overlap and dedupe behave exactly as they
do against the live API.
"""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, AsyncGenerator

from core.model import jsonutil
from core.sources import DEFAULT_SOURCES
from core.sources.contract import Page, SourceError, SourceKind


class ReplaySource:
    def __init__(self, kind: SourceKind, folder: str, page_size: int) -> None:
        self.kind = kind
        self.folder = _kind_folder(Path(folder), kind)
        self.page_size = page_size

    async def pages(self, since: datetime, until: datetime | None = None, *,
                    attempts: int | None = None) -> AsyncGenerator[Page, None]:
        time_property = self.kind.time_property
        matching = [record for record in self._all_records() if _in_window(record, time_property, since, until)]
        if not matching:
            yield Page(alerts=[], last=True)
            return
        for start in range(0, len(matching), self.page_size):
            chunk = matching[start : start + self.page_size]
            yield Page(alerts=chunk, last=start + self.page_size >= len(matching))

    async def probe(self) -> str:
        return f"replay folder {self.folder}: {len(self._all_records())} records"

    def _all_records(self) -> list[Any]:
        if not self.folder.is_dir():
            raise SourceError(f"replay folder {self.folder} does not exist")
        records: list[Any] = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                body = jsonutil.loads(path.read_bytes())
            except ValueError as err:
                raise SourceError(f"{path}: not JSON ({err})") from None
            values = body.get("value") if isinstance(body, dict) else None
            if not isinstance(values, list):
                raise SourceError(f"{path}: not a Graph list response (no 'value' list)")
            records.extend(values)
        return records


def _kind_folder(folder: Path, kind: SourceKind) -> Path:
    """Where `kind`'s pages are: its own subfolder if there is one, else the folder itself for a
    top-level kind. Another kind without its subfolder has nothing to replay: an error, rather
    than the alerts' pages fed to its mapping."""
    own = folder / kind.name
    if own.is_dir() or kind.name not in DEFAULT_SOURCES:
        return own
    return folder


def _in_window(record: Any, time_property: str, since: datetime, until: datetime | None) -> bool:
    """The API's `ge` (and `lt`) filter; a record whose time cannot be read is passed on to be
    dead-lettered (in an open window: a bounded one is a slice of a window read whole before)."""
    stamp = record.get(time_property) if isinstance(record, dict) else None
    try:
        moment = datetime.fromisoformat(str(stamp))
    except ValueError:
        return until is None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment >= since and (until is None or moment < until)
