"""The source contract: what a source kind declares, and what its readers give the app.

A source kind is one collection of one Microsoft API that yields alert-like records,
read incrementally by a time property. It is declared once, as a `SourceKind` in its own
module of `core/sources` (`graph_alerts.py`), and registered in `core/sources/__init__.py`.
Everything else (the config's `sources` check, the app's readers and cursors, the mapping
that normalises the records, the incremental window's version key) takes it from there.
"""
from __future__ import annotations

import importlib
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio

    import httpx
    from pydantic import BaseModel

    from core.sources.auth import AppSettings, TokenProvider


@dataclass(frozen=True)
class Page:
    alerts: list[Any]  # raw records as the API sent them (not yet validated)
    last: bool  # no page follows in this window: the cursor may advance with it


class SourceError(Exception):
    """The window could not be read to its end; what was committed stays, the cursor does not move."""


class BrokenWindow(SourceError):
    """The API keeps failing this window itself: a server error (5xx) or a malformed page, every
    attempt. Not throttling, an outage (no answer at all) or a refusal (401/403): those say
    nothing about the window and the cursor waits for them. A window broken for
    `[forwarder] split_after` cycles in a row is read in halves by time, and a slice that
    still fails at the smallest span is skipped as a dead letter (core.app.pipeline)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url  # the request that failed (no secret: the token travels in a header)


@dataclass(frozen=True)
class VersionKey:
    """The properties that make one version of a record: the same (id, time) read again is the
    same version (a duplicate), a later time is an update (a new version)."""

    id: str
    # When the record last changed. The window filters on this same property (`time ge start`)
    # and the cursor is the largest of it read: were they two properties, the cursor would not
    # say what the window already covers.
    time: str
    # The id space of the records, where it is not that of alerts: the state keeps the seen-marks
    # and the versions taken of a tenant by (tenant, id), so records of another id space (Graph
    # incident ids are bare numbers, alert ids are not, but nothing promises it) are stored as
    # `<scope>:<id>`. Alerts keep no scope: graph_alerts and mde_alerts read the same alerts
    # under the same ids, and one seen-mark must cover both (one alert, forwarded once).
    scope: str = ""

    def stored(self, record_id: str) -> str:
        """The record id as the state keeps it."""
        return f"{self.scope}:{record_id}" if self.scope else record_id


@dataclass(frozen=True)
class Permission:
    """The application permission (the forwarder reads as an app, with no user) that the
    customer's admin consents to for the MSSP's app, as Entra ID names the API and it."""

    api: str
    name: str


class RequestPace(Protocol):
    """What a reader waits on before each request (an aiolimiter.AsyncLimiter is one)."""

    async def acquire(self) -> None: ...


@dataclass(frozen=True)
class LiveContext:
    """What the app lends the live readers of one tenant: its app and tokens, a connection pool,
    the request bounds (global, per tenant, pages in memory) and the paging settings."""

    tenant_id: str
    app: AppSettings
    tokens: TokenProvider  # Microsoft Graph tokens in the tenant
    client: httpx.AsyncClient
    limiter: RequestPace  # the tenant's request budget, shared by its kinds (and the app's, across tenants)
    concurrency: asyncio.Semaphore
    page_slots: asyncio.Semaphore
    page_size: int
    max_pages: int
    backoff_base: float


class AlertSource(Protocol):
    """A reader of one kind for one tenant: pages of raw records of a window, and a probe.

    A reader may also have `async def complete(self, records: list[Any]) -> None`: the app
    calls it with the records of each page whose version was not seen before, before they are
    normalised, so that the reader adds what its list API does not give (the alert ids of an
    incident) with requests of its own, in the tenant's budget, for new versions only. It must
    not raise: what it cannot add, it leaves out.
    """

    kind: SourceKind

    def pages(self, since: datetime, until: datetime | None = None, *,
              attempts: int | None = None) -> AsyncGenerator[Page, None]:
        """The records whose `kind.version.time` is at or after `since` (a closed start) and,
        with `until`, before it (an open end): `time ge since and time lt until`. `attempts`:
        how many times a page is tried before the window fails (None: the reader's own
        number); a window being split tries each slice less, since it failed whole already.
        Raises BrokenWindow when the API fails the window itself, SourceError otherwise."""
        ...

    async def probe(self) -> str:
        """For `check`: authenticate and read one record; return what was found."""
        ...


ReaderFactory = Callable[["SourceKind", LiveContext], AlertSource]


@dataclass(frozen=True)
class SourceKind:
    """One source kind, declared once. `name` is the config's `sources` value, the state's
    cursor key (with the tenant id) and the normalised alert's `source`."""

    name: str
    permission: Permission
    # The module of `mappings/` that normalises the records. Sources may not import mappings:
    # the app resolves it (core.app.pipeline).
    mapping: str
    path: str  # the collection's path on the API's endpoint
    version: VersionKey
    reader: ReaderFactory  # builds the live reader of a tenant
    # The event kind its mapping makes: `Alert.KIND` or `Incident.KIND` (core.model.schema), as
    # routes' `kinds` name them. The config check warns of a tenant reading a source whose
    # event kind no route of the tenant takes.
    event_kind: str
    settings: type[BaseModel] | None = None  # the kind's own configuration keys, if it has any
    # Another kind that reads the same records (same ids), whose fields win: in a tenant that
    # reads both, a record of this kind whose id the tenant has taken before (from either) is
    # left to that kind, which forwards its every version (docs/sources.md, "One alert,
    # forwarded once"). None: this kind's records are its own.
    defers_to: str | None = None

    @property
    def time_property(self) -> str:
        """The property a window filters on: the version's time (see VersionKey.time)."""
        return self.version.time

    def open(self, context: LiveContext) -> AlertSource:
        return self.reader(self, context)


def lazy_reader(module: str, attribute: str) -> ReaderFactory:
    """A reader factory that imports its module only when a tenant is read live: the HTTP
    stack costs a start-up (about 0.15 s) that `tenants`, `validate` or a replay run never need."""

    def build(kind: SourceKind, context: LiveContext) -> AlertSource:
        return getattr(importlib.import_module(module), attribute)(kind, context)

    return build
