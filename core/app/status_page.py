"""The daemon's status page (`/`): the `core.app.status` model as one server-rendered HTML page.

No script and no external asset, so it works offline behind a strict Content-Security-Policy
(`CSP`: its one style block is allowed by its hash); it refreshes itself with a meta refresh.
Sorted and filtered by query parameters (`?status=failing`, `?sort=lag`), which a plain GET form
sets. Every value is escaped; health is said in words, the colour only repeats it.
"""
from __future__ import annotations

import base64
import hashlib
from html import escape
from html.parser import HTMLParser
from urllib.parse import urlencode

from core.app.status import HEALTHS, Status, TenantRow, age

REFRESH_SECONDS = 30
SORTS = ("tenant", "health", "lag", "last_success")

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1b1b1b}
table{border-collapse:collapse;margin:0 0 2rem;min-width:60%}
caption{text-align:left;font-weight:bold;font-size:1.1rem;padding:.4rem 0}
th,td{border:1px solid #bbb;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#eee}
td.n{text-align:right}
td.t{white-space:nowrap}
.h{font-weight:bold;padding:.1rem .4rem;border-radius:.2rem}
.h-ok{background:#d7f5dd;color:#0b5b1d}
.h-degraded,.h-paused,.h-retrying,.h-unknown{background:#fff1c2;color:#6b4a00}
.h-failing,.h-stopped{background:#ffd9d6;color:#8a1010}
.h-disabled{background:#e6e6e6;color:#333}
code{font-size:.9em}
"""
STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
CSP = (f"default-src 'none'; style-src 'sha256-{STYLE_HASH}'; img-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
           "Cache-Control": "no-store"}


def chosen(query: dict[str, str]) -> tuple[str | None, str]:
    """(health filter or None, sort key) from the query; unknown values are ignored."""
    status = query.get("status")
    sort = query.get("sort", "tenant")
    return (status if status in HEALTHS else None), (sort if sort in SORTS else "tenant")


def shown_tenants(rows: list[TenantRow], status: str | None, sort: str) -> list[TenantRow]:
    rows = [r for r in rows if status is None or r.health == status]
    if sort == "health":  # worst first
        return sorted(rows, key=lambda r: (-HEALTHS.index(r.health), r.tenant))
    if sort == "lag":  # most behind first; never read last
        return sorted(rows, key=lambda r: (r.lag_seconds is None, -(r.lag_seconds or 0), r.tenant))
    if sort == "last_success":  # oldest first
        return sorted(rows, key=lambda r: (r.last_success is not None, r.last_success or "", r.tenant))
    return sorted(rows, key=lambda r: r.tenant)


def render(status: Status, query: dict[str, str]) -> str:
    health, sort = chosen(query)
    tenants = shown_tenants(status.tenants, health, sort)
    counts = {h: sum(1 for r in status.tenants if r.health == h) for h in HEALTHS}
    summary = ", ".join(f"{n} {h}" for h, n in counts.items() if n) or "no tenants"
    out = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>defender-forwarder status</title>", f"<style>{STYLE}</style></head><body>",
        "<h1>defender-forwarder status</h1>",
        f'<p>At <time datetime="{escape(status.generated)}">{escape(status.generated)}</time>: '
        f"{_count(len(status.tenants), 'tenant')} ({escape(summary)}), {_count(len(status.sinks), 'sink')}. "
        f"This page refreshes every {REFRESH_SECONDS} s. The same data as JSON: "
        '<a href="/api/status">/api/status</a>.</p>',
        _form(health, sort),
        _tenant_table(tenants, health, sort, len(status.tenants)),
        _source_table(tenants),
        _sink_table(status),
        "</body></html>",
    ]
    return "\n".join(out)


def _form(health: str | None, sort: str) -> str:
    options = "".join(f'<option value="{h}"{" selected" if h == health else ""}>{h}</option>' for h in HEALTHS)
    sorts = "".join(f'<option value="{s}"{" selected" if s == sort else ""}>{s.replace("_", " ")}</option>'
                    for s in SORTS)
    return ('<form method="get" action="/"><label>Health <select name="status">'
            f'<option value="">all</option>{options}</select></label> '
            f'<label>Sort by <select name="sort">{sorts}</select></label> '
            '<button type="submit">Show</button></form>')


def _sort_link(key: str, text: str, health: str | None, sort: str) -> str:
    query = urlencode({k: v for k, v in (("status", health), ("sort", key)) if v})
    current = ' aria-sort="descending"' if key == sort and key in ("health", "lag") else (
        ' aria-sort="ascending"' if key == sort else "")
    return f'<th scope="col"{current}><a href="/?{escape(query)}">{escape(text)}</a></th>'


def _health_cell(word: str) -> str:
    return f'<td><span class="h h-{escape(word)}">{escape(word)}</span></td>'


def _tenant_table(rows: list[TenantRow], health: str | None, sort: str, total: int) -> str:
    which = f"tenants with health {health}" if health else "all tenants"
    caption = f"Tenants: {len(rows)} of {total} shown ({which}, sorted by {sort.replace('_', ' ')})"
    head = [_sort_link("tenant", "Tenant", health, sort), '<th scope="col">Tenant id</th>',
            '<th scope="col">Sources</th>', _sort_link("health", "Health", health, sort),
            _sort_link("lag", "Lag", health, sort), _sort_link("last_success", "Last success", health, sort),
            '<th scope="col">Last error and remedy</th>', '<th scope="col">Waiting per sink</th>']
    body = []
    for r in rows:
        waiting = ", ".join(f"{sink} {n}" for sink, n in r.outbox.items()) or "-"
        body.append(
            f'<tr data-tenant="{escape(r.tenant)}" data-health="{escape(r.health)}">'
            f"<td>{escape(r.tenant)}</td><td><code>{escape(r.tenant_id)}</code></td>"
            f"<td>{escape(', '.join(r.sources))}</td>{_health_cell(r.health)}"
            f'<td class="n">{escape(age(r.lag_seconds))}</td><td class="t">{escape(_time(r.last_success))}</td>'
            f'<td class="reason">{escape(r.health_reason or "-")}</td><td>{escape(waiting)}</td></tr>')
    if not rows:
        body.append(f'<tr><td colspan="{len(head)}">no tenant matches</td></tr>')
    return (f'<table id="tenants"><caption>{escape(caption)}</caption><thead><tr>{"".join(head)}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _source_table(tenants: list[TenantRow]) -> str:
    """Each source of the tenants shown, in their order: a source refused (an API permission
    missing) is told apart from those of its tenant that flow."""
    head = "".join(f'<th scope="col">{h}</th>' for h in (
        "Tenant", "Source", "Health", "Lag", "Last success", "Forwarded", "Last error and remedy"))
    body = []
    for t in tenants:
        for r in t.per_source:
            body.append(
                f'<tr data-source-of="{escape(t.tenant)}" data-source="{escape(r.source)}" '
                f'data-health="{escape(r.health)}"><td>{escape(t.tenant)}</td><td>{escape(r.source)}</td>'
                f'{_health_cell(r.health)}<td class="n">{escape(age(r.lag_seconds))}</td>'
                f'<td class="t">{escape(_time(r.last_success))}</td><td class="n">{r.forwarded_total}</td>'
                f'<td class="reason">{escape(r.health_reason or "-")}</td></tr>')
    if not body:
        body.append('<tr><td colspan="7">no tenant matches</td></tr>')
    count = sum(len(t.per_source) for t in tenants)
    return (f'<table id="sources"><caption>Sources of the tenants shown ({count})</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _sink_table(status: Status) -> str:
    head = "".join(f'<th scope="col">{h}</th>' for h in (
        "Sink", "Type", "State", "Outbox depth", "Oldest event waiting", "Dead letters", "Why"))
    body = []
    for s in status.sinks:
        body.append(
            f'<tr data-sink="{escape(s.sink)}" data-state="{escape(s.state)}"><td>{escape(s.sink)}</td>'
            f"<td>{escape(s.type)}</td>{_health_cell(s.state)}<td class=\"n\">{s.outbox}</td>"
            f'<td class="n">{escape(age(s.oldest_seconds))}</td><td class="n">{s.dead_letters}</td>'
            f'<td class="reason">{escape(s.state_reason or "-")}</td></tr>')
    return (f'<table id="sinks"><caption>Sinks ({len(status.sinks)})</caption><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _time(iso: str | None) -> str:
    return iso.replace("T", " ").removesuffix("Z") + " UTC" if iso else "never"


# ---- accessibility basics, checked on the served HTML ------------------------------------------
class _Audit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.tables = 0
        self._table: dict[str, int] | None = None
        self._status_text: list[str] | None = None
        self._status_class = ""
        self.has_lang = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.has_lang = bool(a.get("lang"))
        elif tag == "table":
            self.tables += 1
            self._table = {"caption": 0, "th": 0, "th_scoped": 0}
        elif self._table is not None and tag in ("caption", "th"):
            self._table[tag] += 1
            if tag == "th" and a.get("scope") in ("col", "row", "colgroup", "rowgroup"):
                self._table["th_scoped"] += 1
        classes = (a.get("class") or "").split()
        if any(c.startswith("h-") for c in classes):
            self._status_text, self._status_class = [], " ".join(classes)

    def handle_data(self, data: str) -> None:
        if self._status_text is not None:
            self._status_text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._status_text is not None and tag in ("span", "td"):
            if not "".join(self._status_text).strip():
                self.problems.append(f"a status shown by colour alone (class {self._status_class!r} has no words)")
            self._status_text = None
        if tag == "table" and self._table is not None:
            n = self.tables
            if not self._table["caption"]:
                self.problems.append(f"table {n} has no caption")
            if not self._table["th"]:
                self.problems.append(f"table {n} has no header cells (<th>)")
            elif self._table["th_scoped"] < self._table["th"]:
                self.problems.append(f"table {n} has header cells without a scope")
            self._table = None


def accessibility_problems(page: str) -> list[str]:
    """The basics a status page must not miss: a language, tables with a caption and scoped
    headers, and no status told by colour alone. [] when the page passes."""
    audit = _Audit()
    audit.feed(page)
    audit.close()
    return ([] if audit.has_lang else ["the page declares no language (<html lang>)"]) + audit.problems
