"""The reader of source kind `mde_alerts` (core/sources/mde_alerts.py): the Microsoft Defender for
Endpoint API `GET /api/alerts` of a tenant, read by `lastUpdateTime`, with `$expand=evidence`.

The reader is `GraphSource`'s machinery (requests, retries, Retry-After, 401/403, page slots)
with what differs in this API (docs/sources.md):

- its own token, for the WindowsDefenderATP resource (`auth.mde_scope`), and its own host per
  cloud and region (`auth.endpoints(app).mde`, or `[apps.NAME] mde_endpoint`);
- its own budget per tenant, both of its quotas: 100 calls a minute and 1,500 an hour, apart
  from the tenant's Graph budget (a tenant reading both APIs spends each on its own);
- paging without `@odata.nextLink` (MDE sends none with `$top`): pages are asked in ascending
  `lastUpdateTime` order, and the next page's `ge` bound moves to the last record's time. The
  records stamped at that bound are read again (dedupe drops them); only when a whole page
  shares one time, which the bound cannot pass, does `$skip` step over that page. A window
  never asks for more than `max_pages_per_window` pages: then it ends early, as read to the
  highest time it read, and the next cycle goes on from there. So the cursor always moves
  forward, and no page of the window is asked twice (elastic/integrations#21461's cursor that
  never moved sent one alert 287 times).
"""
from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

import httpx
from aiolimiter import AsyncLimiter

from core.model.times import parse_timestamp
from core.sources.auth import endpoints, mde_scope
from core.sources.contract import LiveContext, Page, SourceError, SourceKind
from core.sources.graph import MAX_ATTEMPTS, GraphSource, _next_link, _odata_time, _page_values

# The documented quotas of `GET /api/alerts`, per tenant.
CALLS_PER_MINUTE = 100
CALLS_PER_HOUR = 1_500
MAX_TOP = 10_000  # "Maximum page size is 10,000"

class MdeSource(GraphSource):
    """`/api/alerts` of one tenant, under its own budget and token."""

    API = "Defender for Endpoint API"

    def __init__(self, kind: SourceKind, context: LiveContext) -> None:
        super().__init__(kind, context)
        scoped = getattr(context.tokens, "for_scope", None)
        self.tokens = scoped(mde_scope(context.app)) if scoped is not None else context.tokens
        self.page_size = min(context.page_size, MAX_TOP)
        # aiolimiter spreads the minute's calls over the minute (no burst past the quota);
        # the hour's bucket holds its 1,500 so that a quiet tenant can catch up at 100/min.
        self.minute = AsyncLimiter(CALLS_PER_MINUTE, 60)
        self.hour = AsyncLimiter(CALLS_PER_HOUR, 3600)

    def endpoint(self, context: LiveContext) -> str:
        return endpoints(context.app).mde

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def _spend(self) -> None:
        await self.hour.acquire()
        await self.minute.acquire()

    def page_url(self, bound: datetime, skip: int, until: datetime | None = None) -> str:
        """A page from `bound` on (`time lt until` for a bounded window, as a split reads)."""
        clause = f"{self.kind.time_property} ge {_odata_time(bound)}"
        if until is not None:
            clause += f" and {self.kind.time_property} lt {_odata_time(until)}"
        query: dict[str, str] = {"$filter": clause,
                                 "$orderby": f"{self.kind.time_property} asc",
                                 "$top": str(self.page_size), "$expand": "evidence"}
        if skip:
            query["$skip"] = str(skip)
        return f"{self.graph_endpoint}{self.kind.path}?{httpx.QueryParams(query)}"

    def first_url(self, since: datetime, until: datetime | None = None) -> str:
        return self.page_url(since, 0, until)

    async def pages(self, since: datetime, until: datetime | None = None, *,
                    attempts: int | None = None) -> AsyncGenerator[Page, None]:
        bound, skip = since, 0
        url: str | None = self.page_url(bound, skip, until)
        for asked in range(1, self.max_pages + 1):
            assert url is not None
            body = await self._get_page(url, attempts or MAX_ATTEMPTS)
            try:
                values = _page_values(body, url)
                link = _next_link(body)
                if link is not None:  # should MDE send one after all, it is followed as Graph's
                    url = link
                elif len(values) < self.page_size:
                    url = None
                else:
                    bound, skip = self._next_bound(values, bound, skip)
                    url = self.page_url(bound, skip, until)
                # The page limit ends the window here, as read to its highest time: the cursor
                # moves, and the next cycle goes on from there (a window never stalls).
                yield Page(alerts=values, last=url is None or asked == self.max_pages)
            finally:
                del body
                self.page_slots.release()
            if url is None:
                return

    def _next_bound(self, values: list[Any], bound: datetime, skip: int) -> tuple[datetime, int]:
        """The `ge` bound and `$skip` of the page after a full one: the last record's time, or,
        when the whole page is stamped at the bound already, the same bound a page further."""
        times = [_time_of(record, self.kind.time_property) for record in values]
        if any(later < earlier for earlier, later in zip(times, times[1:])):
            # The next bound is only sound on an ordered page: records between two pages'
            # times would be skipped. The window fails and is read again next cycle.
            raise SourceError(f"{self.API} did not order the page by {self.kind.time_property}; stopped paging")
        last = times[-1]
        if last > bound:
            return last, 0
        return bound, skip + len(values)


def _time_of(record: Any, name: str) -> datetime:
    try:
        return parse_timestamp(record[name])
    except (KeyError, TypeError, ValueError) as err:
        raise SourceError(f"a record without a readable {name} in a full page: {err}") from None
