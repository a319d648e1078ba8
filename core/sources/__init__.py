"""Alert sources: each yields pages of raw alerts for one tenant and one time window."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, AsyncGenerator, Protocol


@dataclass(frozen=True)
class Page:
    alerts: list[Any]  # raw alert objects as the API sent them (not yet validated)
    last: bool  # no page follows in this window: the cursor may advance with it


class SourceError(Exception):
    """The window could not be read to its end; what was committed stays, the cursor does not move."""


class AlertSource(Protocol):
    name: str

    def pages(self, since: datetime) -> AsyncGenerator[Page, None]: ...

    async def probe(self) -> str:
        """For `check`: authenticate and read one alert; return what was found."""
        ...
