"""Which proxy a connection goes through, decided once for every client (login, Graph, sinks).

An explicit `[forwarder] proxy` wins over the environment; otherwise HTTPS_PROXY / HTTP_PROXY
(by the URL's scheme, either case), then ALL_PROXY, as curl and httpx read them. NO_PROXY exempts its hosts in
both cases, so a sink on the local network is reached directly whatever the proxy.
"""
from __future__ import annotations

import urllib.request
from urllib.parse import unquote, urlsplit, urlunsplit

from core.model.neterr import address, through_proxy
from core.model.secrets import REDACTOR


def proxy_for(url: str, explicit: str | None = None) -> str | None:
    """The proxy URL for a connection to `url`, or None to connect directly."""
    parts = urlsplit(url if "://" in url else f"https://{url}")
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    # proxy_bypass_environment reads no_proxy/NO_PROXY the way urllib does (suffixes, `*`).
    proxy = None
    if not (host and urllib.request.proxy_bypass_environment(netloc)):
        environment = urllib.request.getproxies_environment()
        # ALL_PROXY is the fallback of every scheme, as curl and httpx read it.
        proxy = explicit or environment.get(parts.scheme or "https") or environment.get("all")
    if proxy:
        _register_password(proxy)
    # A refusal by the proxy is then told with the proxy's name (core.model.neterr).
    through_proxy(address(urlunsplit(parts)), redacted(proxy) if proxy else None)
    return proxy


def _register_password(proxy: str) -> None:
    """A proxy's password is a secret: the redactor masks it in every log line and error,
    whatever library's message repeats the URL."""
    password = urlsplit(proxy).password
    if password:
        REDACTOR.register(password)
        REDACTOR.register(unquote(password))


def redacted(proxy: str) -> str:
    """The proxy URL for a log line: a password in it is a secret."""
    parts = urlsplit(proxy)
    if parts.password is None:
        return proxy
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
