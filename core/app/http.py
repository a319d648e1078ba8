"""The daemon's HTTP endpoint (`[forwarder.http] listen`): what a load balancer, systemd's
watchdog scripts or Kubernetes probe. It is off unless configured.

Served: `/healthz`, the process is alive and its event loop turns (a heartbeat task stamps
the time; a loop blocked for longer than `STALE_AFTER` answers 503); `/metrics` for
Prometheus (`core.app.metrics`); and the routes the daemon adds (`/readyz`, `/api/status` and
the status page `/`, `core.app.status_routes`).

Safe by default: a listen address that is not loopback needs credentials (`Credentials`,
checked on every route) or an explicit `allow_unauthenticated = true` (config.py refuses it
otherwise); TLS is served when a certificate is given (`server_ssl_context`).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import ipaddress
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host`: a loopback address, or a name that resolves
    to loopback addresses only. A wildcard (0.0.0.0, ::), a LAN address, or a name that does not
    resolve here is not (better a needless demand for credentials than an open endpoint)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass  # a name, resolved below
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses)


REALM = "defender-forwarder"


@dataclass(frozen=True)
class Credentials:
    """What a request must present: a bearer token, a user name and password (Basic), or either
    when both are configured. Values are compared in constant time, as bytes."""

    bearer_token: str | None = None
    username: str | None = None
    password: str | None = None

    def challenges(self) -> list[str]:
        """The `WWW-Authenticate` values of a 401: one per scheme configured."""
        schemes = ["Bearer"] if self.bearer_token is not None else []
        if self.password is not None:
            schemes.append(f'Basic realm="{REALM}"')
        return schemes

    def accept(self, authorization: str | None) -> bool:
        scheme, _, value = (authorization or "").strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.bearer_token is not None:
            return hmac.compare_digest(value.encode(), self.bearer_token.encode())
        if scheme == "basic" and self.username is not None and self.password is not None:
            return self._basic(value)
        return False

    def _basic(self, value: str) -> bool:
        try:
            user, sep, password = base64.b64decode(value, validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        # Both compared, always: which of the two was wrong must not show in the time taken.
        user_ok = hmac.compare_digest(user, (self.username or "").encode())
        password_ok = hmac.compare_digest(password, (self.password or "").encode())
        return bool(sep) and user_ok and password_ok


def auth_middleware(credentials: Credentials) -> Any:
    """An aiohttp middleware that answers 401 to every request without the credentials, on every
    route (a 404 too: which paths exist is not told to strangers)."""
    from aiohttp import web
    from multidict import CIMultiDict

    @web.middleware
    async def middleware(request: Any, handler: Any) -> Any:
        if credentials.accept(request.headers.get("Authorization")):
            return await handler(request)
        headers = CIMultiDict(("WWW-Authenticate", challenge) for challenge in credentials.challenges())
        # The body names no credential, least of all what the request sent.
        return web.Response(status=401, text="401: authentication required\n", headers=headers)

    return middleware


class TlsFilesFailed(Exception):
    """The endpoint's certificate or key cannot be used; the text names the key, the file and why."""


def server_ssl_context(cert_file: str, key_file: str | None) -> ssl.SSLContext:
    """The endpoint's TLS: TLS 1.2 at least, the certificate chain of `cert_file` with the key of
    `key_file` (or the key in `cert_file`). Raises TlsFilesFailed with one line naming the key."""
    key_name, key_path = ("tls_key_file", key_file) if key_file else ("tls_cert_file", cert_file)
    cert_text = _pem_text("tls_cert_file", cert_file)
    key_text = cert_text if key_file is None else _pem_text("tls_key_file", key_file)
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        raise TlsFilesFailed(f"forwarder.http.tls_cert_file = {cert_file!r}: no PEM certificate in it")
    if "PRIVATE KEY-----" not in key_text:
        raise TlsFilesFailed(f"forwarder.http.{key_name} = {key_path!r}: no PEM private key in it"
                             + ("; set tls_key_file" if key_file is None else ""))
    if "ENCRYPTED" in key_text:
        raise TlsFilesFailed(f"forwarder.http.{key_name} = {key_path!r}: the key is encrypted; the endpoint "
                             "needs it unencrypted (openssl pkey -in KEY -out KEY.plain), readable by this user only")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        # The password callback stops OpenSSL from prompting on a terminal, which a daemon has not.
        context.load_cert_chain(cert_file, key_file, password=lambda: b"")
    except ssl.SSLError as err:
        reason = err.reason or str(err)
        if "MISMATCH" in str(reason).upper():
            raise TlsFilesFailed(f"forwarder.http.{key_name} = {key_path!r}: the key does not belong to the "
                                 f"certificate in tls_cert_file {cert_file!r}") from None
        raise TlsFilesFailed(f"forwarder.http.tls_cert_file = {cert_file!r}: not a usable certificate and key "
                             f"({reason})") from None
    return context


def _pem_text(key: str, path: str) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as err:
        raise TlsFilesFailed(f"forwarder.http.{key} = {path!r}: {err.strerror}; it must name a PEM file this "
                             "user can read") from None
    except UnicodeDecodeError:
        raise TlsFilesFailed(f"forwarder.http.{key} = {path!r}: not a PEM file (not text)") from None


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

    def __init__(self, listen: str, add_routes: Callable[[Any], None] | None = None,
                 credentials: Credentials | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.listen = listen
        self.add_routes = add_routes  # called with the aiohttp app: the routes besides /healthz
        self.credentials = credentials  # None: every route is open
        self.ssl_context = ssl_context  # None: plain HTTP
        self._runner: Any = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.last_beat = time.monotonic()
        self.exposition: Any = None  # core.app.metrics.Exposition, made on the running loop

    async def __aenter__(self) -> "StatusServer":
        from aiohttp import web

        host, port = split_listen(self.listen)
        middlewares = [auth_middleware(self.credentials)] if self.credentials is not None else []
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        if self.add_routes is not None:
            self.add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port, ssl_context=self.ssl_context).start()
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
