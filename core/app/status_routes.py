"""The status routes of the daemon's endpoint: `/readyz`, `/api/status` and the page `/`.
All three read `core.app.status.collect()`, the model the `tenants` command shows too."""
from __future__ import annotations

import sqlite3
from typing import Any

from core.app import status_page
from core.app.status import collect
from core.state import StateError


def add_status_routes(app: Any, forwarder: Any) -> None:
    """Route `/readyz`, `/api/status` and `/` of an aiohttp app to the running `forwarder`."""
    from aiohttp import web

    async def readyz(_: Any) -> Any:
        reasons = not_ready(forwarder)
        return web.json_response({"status": "not ready" if reasons else "ready", "reasons": reasons},
                                 status=503 if reasons else 200)

    async def api_status(_: Any) -> Any:
        return web.json_response(_collect(forwarder).as_json())

    async def page(request: Any) -> Any:
        html = status_page.render(_collect(forwarder), dict(request.query))
        return web.Response(text=html, content_type="text/html", charset="utf-8", headers=status_page.HEADERS)

    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/status", api_status)
    app.router.add_get("/", page)


def _collect(forwarder: Any) -> Any:
    return collect(forwarder.config, forwarder.store, forwarder.workers)


def not_ready(forwarder: Any) -> list[str]:
    """Why the daemon is not ready, [] when it is: its state store is open, a poll cycle has
    completed, and no sink is stopped."""
    reasons = []
    try:
        forwarder.store.ping()
    except (sqlite3.Error, StateError) as err:  # StateError: the PostgreSQL store's StateUnavailable
        reasons.append(f"the state store is not open ({err})")
    if not getattr(forwarder, "cycles", 0):
        reasons.append("no poll cycle has completed yet")
    for name, worker in sorted(forwarder.workers.items()):
        if worker.fatal:
            reasons.append(f"sink {name} is stopped; see its error on / or in the log, fix it and restart")
    return reasons
