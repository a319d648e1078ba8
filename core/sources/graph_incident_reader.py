"""The live reader of `graph_incidents`: Graph's incident list, read as any Graph collection
(core/sources/graph.py), and the alert ids of each new incident version.

The list is read with `$filter=lastUpdateDateTime ge <start>` and never with `$expand=alerts`
(HTTP 500 for good on large tenants). An incident's alert ids come from
`GET /security/incidents/{id}/alerts?$select=id` (its nextLink followed), asked only for the
versions not seen before, through the tenant's limiter and the global request bound. The
answers are small, so they take no page slot (the incident page holding one waits for them).

An incident whose ids cannot be read is forwarded without them, never held back: the list of
ids is a convenience (each alert carries its `incidentId`), the incident is the event. After
a few failures in a row on one page the rest of the page is not asked for (Graph is failing;
each try would cost the tenant's budget and the window's time), and one warning says so.
"""
from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx

from core.sources.auth import TenantAuthError, TransientAuthError
from core.sources.contract import LiveContext, SourceError, SourceKind
from core.sources.graph import GraphSource, _next_link, _page_values

log = logging.getLogger("defender_forwarder.graph")

# Where the ids go in the raw record (mappings/graph_incidents.py reads it): not a Graph property.
ALERT_IDS = "alertIds"
# Tries of one incident's alert ids: fewer than a page's, since giving up costs only the ids.
ALERT_IDS_ATTEMPTS = 3
# Incidents in a row whose ids failed, after which the rest of the page goes without asking.
FAILURES_BEFORE_GIVING_UP = 3
# The most incidents a page asks for (`$top`), whatever `page_size`: a page holds one of the few
# page slots of all tenants while its new incidents' ids are read at the tenant's pace (150
# requests a minute: 50 take 20 s; 1,000 would hold the slot for minutes). Elastic's default.
INCIDENT_PAGE_SIZE = 50


class GraphIncidentSource(GraphSource):
    """Graph incidents of one tenant, completed with their alert ids."""

    noun = "incident"
    raw_records = False  # `complete` adds each new incident's alert ids to its parsed record

    def __init__(self, kind: SourceKind, context: LiveContext) -> None:
        super().__init__(kind, context)
        self.page_size = min(self.page_size, INCIDENT_PAGE_SIZE)
        self.ids_failed = 0  # incidents forwarded without their alert ids, ever (tests, status)

    async def complete(self, records: list[Any]) -> None:
        """Add `alertIds` to each incident of `records` (the new versions of a page)."""
        in_a_row, failed, why = 0, 0, ""
        for record in records:
            incident_id = record.get("id") if isinstance(record, dict) else None
            if not isinstance(incident_id, str) or not incident_id or ALERT_IDS in record:
                continue  # not an incident the mapping will take; or already complete
            if in_a_row >= FAILURES_BEFORE_GIVING_UP:
                failed += 1
                continue
            try:
                record[ALERT_IDS] = await self.alert_ids(incident_id)
                in_a_row = 0
            except (SourceError, TenantAuthError, TransientAuthError, httpx.HTTPError) as err:
                in_a_row, failed, why = in_a_row + 1, failed + 1, str(err)
        if failed:
            self.ids_failed += failed
            log.warning("tenant %s: the alert ids of %d incident(s) could not be read (%s); forwarded "
                        "without them", self.tenant_id, failed, why)

    async def alert_ids(self, incident_id: str) -> list[str]:
        """The ids of the incident's alerts, every page of them."""
        query = httpx.QueryParams({"$select": "id"})
        url: str | None = f"{self.graph_endpoint}{self.kind.path}/{quote(incident_id, safe='')}/alerts?{query}"
        ids: list[str] = []
        followed: set[str] = set()
        while url is not None:
            if url in followed or len(followed) >= self.max_pages:
                raise SourceError("Graph's alert ids of an incident page without end")
            followed.add(url)
            body = await self._get_json(url, attempts=ALERT_IDS_ATTEMPTS, slot=False, report_refusal=False)
            ids.extend(item["id"] for item in _page_values(body)
                       if isinstance(item, dict) and isinstance(item.get("id"), str))
            url = _next_link(body)
        return ids
