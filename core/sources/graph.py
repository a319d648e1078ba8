"""A Microsoft Graph collection (a source kind's path, e.g. `/v1.0/security/alerts_v2`), read
incrementally for one tenant: `$filter=<time property> ge <start>`, `@odata.nextLink` followed.

Status table (one place decides what every response means):
  200            page; a body that is not JSON is retried (a truncated response)
  401            token refreshed once, then the tenant is refused (TenantAuthError)
  403            tenant refused: permission or consent missing (TenantAuthError)
  408/429/5xx    retried after Retry-After, else exponential backoff with jitter
  other 4xx      the window fails (SourceError); the next cycle reads it again

A window whose every attempt ended in a 5xx (a 503 with Retry-After is throttling, not that)
or a malformed page fails with BrokenWindow: the API fails this window itself, and the
pipeline splits it after `split_after` such cycles. Every other failure (no answer at all,
throttling to the end) is a plain SourceError: the cursor waits for the API to come back.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from datetime import datetime, timezone
from typing import Any, AsyncGenerator, Callable

import httpx
import msgspec

from core.model import jsonutil, telemetry
from core.model.durations import backoff_delay
from core.model.neterr import describe
from core.sources.auth import endpoints, graph_refusal
from core.sources.contract import BrokenWindow, LiveContext, Page, SourceError, SourceKind

log = logging.getLogger("defender_forwarder.graph")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
MAX_ATTEMPTS = 8
# The longest a Retry-After may hold a tenant's window: a date from a server whose clock runs
# ahead, or an outlandish number of seconds, must not stall a run for hours.
RETRY_AFTER_CAP = 300.0
# Alert pages in memory at once, all tenants together (from reading a page's body until the
# pipeline is done with it). Requests still overlap up to max_concurrent_requests; a page
# waiting for a slot stays in the socket. Pages are handled one at a time on one thread, so a
# few slots keep the reading going; 32 full pages of 1,000 alerts held at once were 160 MB.
PAGES_IN_MEMORY = 4


def retry_after(response: httpx.Response) -> float | None:
    """Graph's Retry-After: seconds, or an HTTP date; at most RETRY_AFTER_CAP."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), RETRY_AFTER_CAP)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(max(0.0, (moment - datetime.now(timezone.utc)).total_seconds()), RETRY_AFTER_CAP)


class GraphSource:
    """The Graph collection of `kind` in one tenant, under the bounds of `context`.

    Another Microsoft API read the same way (the MDE API, core/sources/mde_alerts.py) is a
    subclass: its `API` name (in messages), `endpoint`, `tokens`, request budget (`_spend`),
    headers and paging (`pages`); the requests, retries and page slots are these."""

    API = "Graph"

    noun = "alert"  # what `check` says it read
    # Whether `pages` hands its records over as their JSON text (msgspec.Raw), which the
    # window parses only when they are not seen before (core/sources/incremental.py). A reader
    # that works on a page's new records itself (`complete`) wants them parsed.
    raw_records = True

    def __init__(self, kind: SourceKind, context: LiveContext) -> None:
        self.kind = kind
        self.client, self.tokens, self.app = context.client, context.tokens, context.app
        self.graph_endpoint = self.endpoint(context)
        self.tenant_id = context.tenant_id
        self.limiter, self.concurrency, self.page_slots = context.limiter, context.concurrency, context.page_slots
        self.page_size, self.max_pages = context.page_size, context.max_pages
        self.backoff_base = context.backoff_base
        self.requests = 0
        # The metrics of this tenant and kind (labels: the tenant's label, the kind's name).
        labels = (getattr(context.tokens, "label", context.tenant_id), kind.name)
        self._throttled = telemetry.THROTTLED.labels(*labels)
        self._retry_after = telemetry.RETRY_AFTER.labels(*labels)
        self._duration = telemetry.REQUEST_DURATION.labels(*labels)
        self.throttles = 0  # 429 answers, ever: the pipeline tells a throttled window from a failed one

    def endpoint(self, context: LiveContext) -> str:
        return endpoints(context.app).graph

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Prefer": "include-unknown-enum-members"}

    async def _spend(self) -> None:
        """Wait for the tenant's request budget of this API."""
        await self.limiter.acquire()

    def first_url(self, since: datetime, until: datetime | None = None) -> str:
        """The window's first page: `time ge since`, and `time lt until` for a bounded one."""
        clause = f"{self.kind.time_property} ge {_odata_time(since)}"
        if until is not None:
            clause += f" and {self.kind.time_property} lt {_odata_time(until)}"
        query = httpx.QueryParams({"$filter": clause, "$top": str(self.page_size)})
        return f"{self.graph_endpoint}{self.kind.path}?{query}"

    async def probe(self) -> str:
        query = httpx.QueryParams({"$top": "1"})
        body = await self._get_page(f"{self.graph_endpoint}{self.kind.path}?{query}")
        self.page_slots.release()
        newest = _page_values(body)[:1]
        seen = newest[0].get(self.kind.time_property, "?") if newest and isinstance(newest[0], dict) else None
        # Named, since a tenant may have consented to one source's permission and not another's.
        granted = f"token ok; {self.kind.permission.name} granted"
        return f"{granted}; read {len(newest)} {self.noun}" + (f" (last updated {seen})" if seen else "")

    async def pages(self, since: datetime, until: datetime | None = None, *,
                    attempts: int | None = None) -> AsyncGenerator[Page, None]:
        url: str | None = self.first_url(since, until)
        followed: set[str] = set()
        while url is not None:
            if url in followed:
                raise SourceError("Graph returned a nextLink that repeats; stopped paging this window")
            if len(followed) >= self.max_pages:
                raise SourceError(f"more than {self.max_pages} pages in one window; stopped paging")
            followed.add(url)
            body = await self._get_json(url, attempts=attempts or MAX_ATTEMPTS,
                                        decode=_split_page if self.raw_records else _json_or_none)
            try:
                # No local keeps the page while the generator waits (the values are read with
                # the page's own URL, then `url` moves on to the next).
                values, link = _values_and_link(body, url)
                yield Page(alerts=values, last=(url := link) is None)
            finally:
                # Done with the page: while this window waits its turn for the next request it
                # must keep neither the page nor its slot (with hundreds of windows waiting,
                # kept pages were most of the RSS).
                del body
                self.page_slots.release()

    async def _token(self, refresh: bool = False) -> str:
        # Login requests count against the same global bound as Graph requests.
        async with self.concurrency:
            return await (self.tokens.refresh() if refresh else self.tokens.token())

    async def _get_page(self, url: str, attempts: int = MAX_ATTEMPTS) -> dict[str, Any]:
        """The page at `url`, holding one of the page slots: the caller releases it."""
        return await self._get_json(url, attempts=attempts)

    async def _get_json(self, url: str, *, attempts: int = MAX_ATTEMPTS, slot: bool = True,
                        report_refusal: bool = True, decode: Callable[[bytes], Any] | None = None) -> Any:
        """The JSON body at `url`, after up to `attempts` tries. With `slot`, a page's: it holds
        one of the page slots, which the caller releases; without, a small answer (a list of
        ids) that takes none, so that it can be asked for while a page is held. Without
        `report_refusal`, a 403 fails this request only, not the tenant's auth state. `decode`
        reads the body (None: not JSON, tried again); by default into a dict."""
        decode = decode or _json_or_none
        token = await self._token()
        refreshed = False
        self._unreachable: str | None = None  # why the last request got no answer at all
        broken: str | None = None  # what the last answer was, if the server failed this request itself
        for attempt in range(attempts):
            response = await self._request(url, token, attempt, slot=slot)
            if response is None:
                broken = None
                continue
            self._unreachable = None
            broken = None
            if response.status_code == 200:
                body = decode(response.content)
                if body is not None:
                    return body
                if slot:
                    self.page_slots.release()
                broken = "a body that is not JSON"
                log.warning("tenant %s: %s sent a body that is not JSON; retrying", self.tenant_id, self.API)
                await asyncio.sleep(backoff_delay(attempt, self.backoff_base))
            elif response.status_code == 401 and not refreshed:
                token, refreshed = await self._token(refresh=True), True
            elif response.status_code in (401, 403):
                refusal = graph_refusal(response.status_code, self.app, self.tenant_id, self.kind.permission.name,
                                        self.API, self.kind.permission.api)
                refused = getattr(self.tokens, "refused", None)
                if refused is not None and report_refusal:
                    refused(refusal)
                raise refusal
            elif response.status_code in RETRY_STATUSES:
                wait = retry_after(response)
                if response.status_code == 429:
                    self.throttles += 1
                    self._throttled.inc()
                    if wait:
                        self._retry_after.inc(wait)
                elif response.status_code >= 500 and not (response.status_code == 503 and wait is not None):
                    # A 503 with Retry-After is Graph throttling; any other 5xx, the server failing.
                    broken = f"HTTP {response.status_code} ({_graph_error(response)})"
                await asyncio.sleep(wait or backoff_delay(attempt, self.backoff_base))
            else:
                raise SourceError(f"{self.API} answered {response.status_code}: {_graph_error(response)}")
        if broken is not None:
            raise BrokenWindow(f"{self.API} did not answer successfully after {attempts} attempts: {broken}", url)
        why = f": {self._unreachable}" if self._unreachable else ""
        raise SourceError(f"{self.API} did not answer successfully after {attempts} attempts{why}")

    async def _request(self, url: str, token: str, attempt: int, *, slot: bool = True) -> httpx.Response | None:
        """One GET under the global and per-tenant bounds; None after a transport failure.
        A 200 is returned holding a page slot, with `slot`."""
        headers = self.headers(token)
        async with self.concurrency:
            await self._spend()
            self.requests += 1
            started = time.monotonic()
            try:
                return await self._send(self.client.build_request("GET", url, headers=headers), slot)
            except httpx.TransportError as err:
                self._unreachable = describe(err)
                log.warning("tenant %s: %s unreachable: %s; retrying", self.tenant_id, self.API, self._unreachable)
            finally:
                self._duration.observe(time.monotonic() - started)
        await asyncio.sleep(backoff_delay(attempt, self.backoff_base))
        return None

    async def _send(self, request: httpx.Request, slot: bool = True) -> httpx.Response:
        """The response, its body read; a page's body only once a page slot is free."""
        response = await self.client.send(request, stream=True)
        try:
            if response.status_code != 200 or not slot:
                await response.aread()
                return response
            await self.page_slots.acquire()
            try:
                await response.aread()
            except BaseException:
                self.page_slots.release()
                raise
            return response
        finally:
            await response.aclose()


def _json_or_none(content: bytes) -> dict[str, Any] | None:
    try:
        body = jsonutil.loads(content)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


class _PageShape(msgspec.Struct):
    """A page with its records kept as their JSON text, unparsed."""

    value: list[msgspec.Raw]
    next_link: Any = msgspec.field(default=None, name="@odata.nextLink")


_PAGE_SHAPE = msgspec.json.Decoder(_PageShape)


def _split_page(content: bytes) -> _PageShape | dict[str, Any] | None:
    """A page split into its records' JSON texts, without parsing them; a page that does not
    split so (not JSON, no `value` list, a lone surrogate msgspec refuses) is read as a dict,
    the way every page was read before, so that what is an error stays the same error."""
    # msgspec checks the UTF-8 of what it parses, not of what it only delimits; orjson and the
    # standard library refuse a page with any invalid byte, and so must this.
    if content.isascii() or _is_utf8(content):
        try:
            return _PAGE_SHAPE.decode(content)
        except msgspec.MsgspecError:
            pass
    return _json_or_none(content)


def _is_utf8(content: bytes) -> bool:
    try:
        content.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _values_and_link(body: _PageShape | dict[str, Any], url: str) -> tuple[list[Any], str | None]:
    """A page's records and nextLink, from either reading of it."""
    if isinstance(body, _PageShape):
        link = body.next_link
        return body.value, link if isinstance(link, str) and link else None
    return _page_values(body, url), _next_link(body)


def _page_values(body: dict[str, Any], url: str | None = None) -> list[Any]:
    values = body.get("value")
    if not isinstance(values, list):
        raise BrokenWindow("Graph page has no 'value' list", url)
    return values


def _odata_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _next_link(body: dict[str, Any]) -> str | None:
    link = body.get("@odata.nextLink")
    return link if isinstance(link, str) and link else None


def _graph_error(response: httpx.Response) -> str:
    body = _json_or_none(response.content) or {}
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    return f"{error.get('code', 'unknown')}: {str(error.get('message', ''))[:300]}"


