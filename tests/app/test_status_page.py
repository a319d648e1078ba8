"""The daemon's `/readyz`, `/api/status` and status page `/`: one model (`core.app.status`) shown
three ways, the same as `tenants --output json`; the page checked in a real browser (Debian's
chromium, headless) and for the accessibility basics."""
from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from core.app.status_page import _time, accessibility_problems
from core.app.status_routes import not_ready
from tests.helpers import REPO, SECRET, CloudSetup, daemon, recent, run_cli, until
from tests.peers.alert_factory import make_alerts, make_incidents
from tests.peers.lifecycle import free_port

ARTIFACTS = REPO / "tests" / "artifacts"  # ignored by git: the browser's screenshots
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=5)
    except httpx.TransportError:
        return None


@contextlib.contextmanager
def _daemon_with_a_failing_tenant(setup: CloudSetup) -> Iterator[str]:
    """The daemon over three tenants, `good`, `revoked` (no admin consent) and `partial` (its
    alerts flow, its incidents are refused: no SecurityIncident.Read.All), after its first
    cycle; yields the endpoint's base URL."""
    good = setup.tenant("good")
    setup.cloud.add_alerts(good, make_alerts(3, good, recent(30), timedelta(minutes=1)))
    setup.tenant("revoked", consent=False)
    partial = setup.tenant("partial", permissions={"SecurityAlert.Read.All"})
    alerts = make_alerts(2, partial, recent(30), timedelta(minutes=1))
    setup.cloud.add_alerts(partial, alerts)
    setup.cloud.add_incidents(partial, make_incidents(alerts))
    setup.tenant_keys["partial"] = {"sources": ["graph_alerts", "graph_incidents"]}
    setup.forwarder["poll_interval"] = "1h"
    config = setup.write()
    port = free_port()
    with config.open("a") as file:
        file.write(f'\n[forwarder.http]\nlisten = "127.0.0.1:{port}"\n')
    base = f"http://127.0.0.1:{port}"
    process = daemon(config)
    try:
        def cycled() -> bool:
            ready = _get(f"{base}/readyz")
            return ready is not None and ready.status_code == 200
        until(cycled, process, timeout=30)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
        assert process.returncode == 0, output
        assert SECRET not in output


class _Rows(HTMLParser):
    """The status page's tenant rows: label -> {health, cells}; its source rows: (label,
    source) -> {health, cells}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, Any]] = {}
        self.sources: dict[tuple[str, str], dict[str, Any]] = {}
        self._row: dict[str, Any] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-tenant"):
            self._row = {"health": a["data-health"], "cells": []}
            self.rows[str(a["data-tenant"])] = self._row
        elif tag == "tr" and a.get("data-source-of"):
            self._row = {"health": a["data-health"], "cells": []}
            self.sources[(str(a["data-source-of"]), str(a["data-source"]))] = self._row
        elif tag == "td" and self._row is not None:
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr":
            self._row = None


def page_rows(html: str) -> dict[str, dict[str, Any]]:
    return _parsed(html).rows


def _parsed(html: str) -> _Rows:
    parser = _Rows()
    parser.feed(html)
    return parser


# Columns of the tenant table: tenant, id, sources, health, lag, last success, last error and remedy, waiting.
HEALTH, REASON = 3, 6


def test_tenants_api_status_and_the_page_show_the_same_state(setup: CloudSetup) -> None:
    with _daemon_with_a_failing_tenant(setup) as base:
        ready = httpx.get(f"{base}/readyz", timeout=5)
        api = httpx.get(f"{base}/api/status", timeout=5)
        page = httpx.get(f"{base}/", timeout=5)
        cli = run_cli("tenants", "--output", "json", "--config", str(setup.tmp / "forwarder.toml"))
    assert ready.json() == {"status": "ready", "reasons": []}
    assert cli.returncode == 0, cli.stderr
    status, tenants = api.json(), json.loads(cli.stdout)

    def steady(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # the lag grows between the reads
        return [{k: steady(v) if k == "per_source" else v for k, v in row.items() if k != "lag_seconds"}
                for row in rows]

    assert steady(status["tenants"]) == steady(tenants)
    by_label = {row["tenant"]: row for row in tenants}
    assert (by_label["good"]["health"], by_label["revoked"]["health"]) == ("ok", "failing")
    assert "consent" in by_label["revoked"]["last_error"] and "adminconsent" in by_label["revoked"]["last_error"]
    assert [(s["sink"], s["state"], s["outbox"], s["dead_letters"]) for s in status["sinks"]] == [
        ("archive", "ok", 0, 0)]

    partial = {s["source"]: s for s in by_label["partial"]["per_source"]}
    assert (partial["graph_alerts"]["health"], partial["graph_incidents"]["health"]) == ("ok", "failing")
    assert "SecurityIncident.Read.All" in partial["graph_incidents"]["health_reason"]
    assert by_label["partial"]["health_reason"].startswith("graph_incidents: ")

    parsed = _parsed(page.text)
    rows = parsed.rows
    assert {label: row["health"] for label, row in rows.items()} == {r["tenant"]: r["health"] for r in tenants}
    for row in tenants:
        cells = rows[row["tenant"]]["cells"]
        assert cells[:4] == [row["tenant"], row["tenant_id"], ", ".join(row["sources"]), row["health"]]
        assert cells[REASON] == (row["health_reason"] or "-")
    # Each source of each tenant, in its own row of the sources table.
    assert list(parsed.sources) == [(r["tenant"], s["source"]) for r in tenants for s in r["per_source"]]
    for row in tenants:
        for source in row["per_source"]:
            cells = parsed.sources[(row["tenant"], source["source"])]["cells"]
            assert cells[:3] == [row["tenant"], source["source"], source["health"]]
            assert cells[4:] == [_time(source["last_success"]), str(source["forwarded_total"]),
                                 source["health_reason"] or "-"]
    for body in (ready.text, api.text, page.text, cli.stdout):
        assert SECRET not in body


def test_the_page_is_strict_and_passes_the_accessibility_basics(setup: CloudSetup) -> None:
    with _daemon_with_a_failing_tenant(setup) as base:
        page = httpx.get(f"{base}/?status=failing&sort=lag", timeout=5)
        nonsense = httpx.get(f"{base}/?status=<script>&sort=';drop", timeout=5)
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp and "unsafe" not in csp
    assert page.headers["content-type"].startswith("text/html")
    assert "<script" not in page.text.lower() and "http-equiv=\"refresh\"" in page.text
    assert "src=" not in page.text and "<link" not in page.text and "url(" not in page.text  # no external asset
    assert list(page_rows(page.text)) == ["partial", "revoked"]
    # A failing tenant's sources, each with its health: partial's alerts flow while its incidents fail.
    assert {key: row["health"] for key, row in _parsed(page.text).sources.items()} == {
        ("partial", "graph_alerts"): "ok", ("partial", "graph_incidents"): "failing",
        ("revoked", "graph_alerts"): "failing"}
    assert accessibility_problems(page.text) == []
    assert nonsense.status_code == 200 and "<script>" not in nonsense.text  # ignored, and escaped anyway
    assert set(page_rows(nonsense.text)) == {"good", "partial", "revoked"}


def test_the_accessibility_check_catches_a_bad_page() -> None:
    good = ('<html lang="en"><table><caption>T</caption><tr><th scope="col">Health</th></tr>'
            '<tr><td><span class="h h-failing">failing</span></td></tr></table></html>')
    assert accessibility_problems(good) == []
    no_headers = '<html lang="en"><table><caption>T</caption><tr><td>a</td></tr></table></html>'
    assert accessibility_problems(no_headers) == ["table 1 has no header cells (<th>)"]
    colour_only = good.replace(">failing</span>", "></span>")
    assert accessibility_problems(colour_only) == ["a status shown by colour alone (class 'h h-failing' has no words)"]
    unscoped = good.replace(' scope="col"', "").replace("<caption>T</caption>", "").replace(' lang="en"', "")
    assert accessibility_problems(unscoped) == ["the page declares no language (<html lang>)",
                                                "table 1 has no caption", "table 1 has header cells without a scope"]


def test_readyz_says_why_it_is_not_ready(tmp_path: Path) -> None:
    from core.state.sqlite import SQLiteStore

    store = SQLiteStore(tmp_path / "s.db")
    stopped = SimpleNamespace(fatal="401 from the SIEM; check its token")
    forwarder = SimpleNamespace(store=store, cycles=0, workers={"siem": stopped})
    assert not_ready(forwarder) == ["no poll cycle has completed yet",
                                    "sink siem is stopped; see its error on / or in the log, fix it and restart"]
    store.close()
    forwarder.cycles, stopped.fatal = 1, None
    [closed] = not_ready(forwarder)
    assert closed.startswith("the state store is not open")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/run installs Debian's chromium)")
def test_the_page_in_a_real_browser(setup: CloudSetup, tmp_path: Path) -> None:
    with _daemon_with_a_failing_tenant(setup) as base:
        everything = _browse(f"{base}/?sort=health", tmp_path)
        failing = _browse(f"{base}/?status=failing", tmp_path)
        ok = _browse(f"{base}/?status=ok", tmp_path)
        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "status-page.png"
        _screenshot(f"{base}/?sort=health", shot, tmp_path)
    rows = page_rows(everything)
    assert list(rows) == ["partial", "revoked", "good"]  # worst first
    revoked = rows["revoked"]
    assert revoked["health"] == "failing" and revoked["cells"][HEALTH] == "failing"
    assert "consent" in revoked["cells"][REASON] and "adminconsent" in revoked["cells"][REASON]  # its remedy
    assert list(page_rows(failing)) == ["partial", "revoked"] and list(page_rows(ok)) == ["good"]
    assert {key: row["cells"][2] for key, row in _parsed(everything).sources.items()
            if key[0] == "partial"} == {("partial", "graph_alerts"): "ok", ("partial", "graph_incidents"): "failing"}
    for dom in (everything, failing, ok):
        assert SECRET not in dom
    assert accessibility_problems(everything) == []
    assert shot.stat().st_size > 10_000, "the screenshot is empty"
    print(f"screenshot: {shot}")


def _chromium(*args: str, tmp_path: Path) -> str:
    result = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--no-first-run", f"--user-data-dir={tmp_path / 'chromium-profile'}", *args],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _browse(url: str, tmp_path: Path) -> str:
    """The DOM chromium built of the page (after its parsing, as a user's browser shows it)."""
    return _chromium("--dump-dom", url, tmp_path=tmp_path)


def _screenshot(url: str, path: Path, tmp_path: Path) -> None:
    _chromium(f"--screenshot={path}", "--window-size=1400,700", "--hide-scrollbars", url, tmp_path=tmp_path)
