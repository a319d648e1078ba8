"""The daemon's HTTP endpoint (`[forwarder.http] listen`): what a load balancer, systemd's
watchdog scripts or Kubernetes probe. It is off unless configured.

Served: `/healthz`, the process is alive and its event loop turns (a heartbeat task stamps
the time; a loop blocked for longer than `STALE_AFTER` answers 503); `/metrics` for
Prometheus (`core.app.metrics`); and the routes the daemon adds (`/readyz`, `/api/status` and
the status page `/`, `core.app.status_routes`).
"""
from __future__ import annotations

import asyncio
import errno
import time
from collections.abc import Callable
from typing import Any

HEARTBEAT = 1.0  # seconds between the loop's stamps
STALE_AFTER = 30.0  # a loop that has not stamped for this long is stuck


class ListenFailed(Exception):
    """The endpoint cannot listen where configured; the text names the key, the address and the fix."""


def split_listen(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError with what is expected."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError("use host:port, e.g. 127.0.0.1:9464 (or [::1]:9464)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"port {number} is out of range 1-65535")
    return host, number


def listen_problem(listen: str, err: OSError) -> str:
    """One line for a bind that failed: the key, the address, the cause and the fix."""
    where = f"forwarder.http.listen = {listen!r}"
    if err.errno == errno.EADDRINUSE:
        return (f"{where}: the address is already in use (another forwarder, or another exporter, "
                "listens there); choose another port or stop the process that holds it (ss -ltnp)")
    if err.errno == errno.EACCES:
        return (f"{where}: permission denied; ports below 1024 need root or CAP_NET_BIND_SERVICE, "
                "use a port above 1023 such as 9464")
    if err.errno == errno.EADDRNOTAVAIL:
        return f"{where}: no interface of this machine has that address; use 127.0.0.1, 0.0.0.0 or one of its own"
    return f"{where}: cannot listen there ({err.strerror or err}); check the address"


class StatusServer:
    """The endpoint, on the daemon's own event loop: started before the first poll (a bad
    address stops the daemon at once, with exit 2), stopped with it."""

    def __init__(self, listen: str, add_routes: Callable[[Any], None] | None = None) -> None:
        self.listen = listen
        self.add_routes = add_routes  # called with the aiohttp app: the routes besides /healthz
        self._runner: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.last_beat = time.monotonic()
        self.exposition: Any = None  # core.app.metrics.Exposition, made on the running loop

    async def __aenter__(self) -> "StatusServer":
        from aiohttp import web

        host, port = split_listen(self.listen)
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        if self.add_routes is not None:
            self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError as err:
            await self._runner.cleanup()
            raise ListenFailed(listen_problem(self.listen, err)) from None
        self._heartbeat = asyncio.create_task(self._beat())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _beat(self) -> None:
        while True:
            self.last_beat = time.monotonic()
            await asyncio.sleep(HEARTBEAT)

    async def _healthz(self, _: Any) -> Any:
        from aiohttp import web

        # The request itself is served by the loop, so a loop that answers turns; the stamp
        # also catches a heartbeat task that died.
        silent = time.monotonic() - self.last_beat
        alive = silent < STALE_AFTER and self._heartbeat is not None and not self._heartbeat.done()
        return web.json_response({"status": "ok" if alive else "stuck", "loop_silent_seconds": round(silent, 3)},
                                 status=200 if alive else 503)


    async def _metrics(self, request: Any) -> Any:
        """Prometheus's scrape: text, or OpenMetrics when the Accept header asks for it."""
        from aiohttp import web

        from core.app.metrics import Exposition

        if self.exposition is None:
            self.exposition = Exposition()
        body, content_type = await self.exposition.scrape(request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})
