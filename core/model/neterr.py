"""Network failures told as `host:port: cause`, the same way for Graph, the login service and
every network sink.

Clients wrap the operating system's error in their own (httpx in httpcore's, requests in
urllib3's), so the cause is looked for along the whole chain: `__cause__`, `__context__` and a
`reason` attribute (urllib3's). Classes are recognised by name along their MRO, so this module
imports no client: the model layer stays free of them and `--help` stays fast.
"""
from __future__ import annotations

import re
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

DEFAULT_PORTS = {"https": 443, "http": 80}
CONNECT_TIMEOUT = 10.0  # seconds: a host that does not accept within this will not accept at all
# host:port -> the proxy (its password masked) that connections to it go through, as
# core.model.proxy decided: a proxy's refusal is told with the proxy it came from.
_PROXIES: dict[str, str] = {}
# The proxy's status line, as httpx (`407 Proxy Authentication Required`) or urllib3 (`Tunnel
# connection failed: 407 ...`, inside requests' text) carries it.
_PROXY_STATUS = re.compile(r"(?:Tunnel connection failed: |^)([1-5][0-9][0-9] [^'\"()]*[^'\"() ])")


def connect_and_read(read: float) -> tuple[float, float]:
    """(connect, read) timeouts: connecting gets CONNECT_TIMEOUT (or `read`, when shorter), so
    an unreachable host is told within seconds while a slow answer may take `read`."""
    return min(CONNECT_TIMEOUT, read), read


def through_proxy(peer: str, proxy: str | None) -> None:
    """Connections to `peer` (host:port) go through `proxy` (None: directly); the proxy as a
    log line may show it, its password masked."""
    if proxy is None:
        _PROXIES.pop(peer, None)
    else:
        _PROXIES[peer] = proxy


def describe(err: BaseException, where: str | None = None) -> str:
    """`host:port: cause` for a failed network operation; `where` (host:port) when the error
    does not say which peer it was."""
    peer = _peer(err) or where
    cause = _cause(err, peer)
    return f"{peer}: {cause}" if peer else cause


def address(url: str) -> str:
    """`host:port` of a URL (the scheme's port when it names none); never its path or query,
    which may carry a token."""
    parts = urlsplit(url)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme, 0)
    return f"{parts.hostname}:{port}"


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for nxt in (current.__cause__, current.__context__, getattr(current, "reason", None)):
            if isinstance(nxt, BaseException):
                todo.append(nxt)


def _names(err: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(err).__mro__}


def _peer(err: BaseException) -> str | None:
    """host:port from the request the error carries (httpx, requests), if any."""
    for current in _chain(err):
        try:
            url = getattr(current, "request", None)
        except RuntimeError:  # httpx raises when an error has no request
            url = None
        url = getattr(url, "url", None)
        if url:
            return address(str(url))
        # aiohttp's connector errors (Elasticsearch's transport) carry the host and port.
        host, port = getattr(current, "host", None), getattr(current, "port", None)
        if isinstance(host, str) and isinstance(port, int):
            return f"{host}:{port}"
    return None


def _timeout(err: BaseException, phase: str) -> str:
    """`connect timeout after 10s`, the limit taken from the request when it says."""
    for current in _chain(err):
        try:
            request = getattr(current, "request", None)
        except RuntimeError:
            request = None
        limits = getattr(request, "extensions", {}).get("timeout", {}) if request is not None else {}
        if limits.get(phase):
            return f"{phase} timeout after {limits[phase]:g}s"
    return f"{phase} timeout"


def _cause(err: BaseException, peer: str | None) -> str:  # noqa: PLR0911 - one line per cause
    chain = list(_chain(err))
    for current in chain:
        names = _names(current)
        if "ProxyError" in names:
            return _proxy_refused(chain, peer)
        if "ConnectTimeout" in names:
            return _timeout(current, "connect")
        if "ReadTimeout" in names:
            return _timeout(current, "read")
        if "WriteTimeout" in names:
            return _timeout(current, "write")
        if "PoolTimeout" in names:
            return "no free connection in the pool in time"
    for current in chain:
        # elastic_transport's, wrapping the client's own: told only when nothing behind it
        # tells the phase (the aiohttp node's one total timeout does not).
        if "ConnectionTimeout" in _names(current):
            return "timeout (connecting or waiting for the answer)"
    for current in chain:
        if isinstance(current, ssl.SSLCertVerificationError) and getattr(current, "verify_message", None):
            return _tls_refused(current, peer)
    for current in chain:
        if isinstance(current, socket.gaierror) or "NameResolutionError" in _names(current):
            return "name not resolved (DNS)"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, ConnectionResetError):
            return "connection reset by the peer"
        if isinstance(current, TimeoutError):
            return "timeout"
    # Some clients keep the OS error only in their text (httpcore's ConnectError).
    text = _text(err)
    if "Name or service not known" in text or "nodename nor servname" in text or "getaddrinfo" in text:
        return "name not resolved (DNS)"
    if "Connection refused" in text or "Errno 111" in text:
        return "connection refused"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"TLS certificate fails verification{_certificate(peer)}"
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _proxy_refused(chain: list[BaseException], peer: str | None) -> str:
    """`proxy http://user:***@host:port refused the connection: 407 Proxy Authentication
    Required; ...`: the proxy (when known) and its own status line, not the client's wrapping."""
    proxy = _PROXIES.get(peer) if peer else None
    who = f"proxy {proxy}" if proxy else "proxy"
    for current in chain:
        said = _PROXY_STATUS.search(_text(current))
        if said:
            status = said.group(1)
            hint = ("; check the user and password in the proxy URL"
                    if status[:3] in ("401", "407") else "")
            return f"{who} refused the connection: {status}{hint}"
    return f"{who} refused the connection: {_text(chain[0])}"


def _text(err: BaseException) -> str:
    return str(err).strip()


def _tls_refused(err: ssl.SSLCertVerificationError, peer: str | None) -> str:
    return f"TLS certificate fails verification ({err.verify_message}){_certificate(peer)}"


def _certificate(peer: str | None) -> str:
    """`; certificate subject ..., issuer ...` of the peer's certificate, fetched again without
    verifying it: the verification error does not carry it, and the operator needs it to see
    which CA to trust (or that it is the wrong host). Empty when it cannot be had."""
    if not peer or ":" not in peer:
        return ""
    if peer in _CERTIFICATE_NAMES:
        return _CERTIFICATE_NAMES[peer]
    host, _, port = peer.rpartition(":")
    try:
        der = _peer_certificate(host, int(port))
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
    except Exception:  # noqa: BLE001 - an extra detail: the message stands without it
        return ""
    names = f"; its subject {cert.subject.rfc4514_string()}, issuer {cert.issuer.rfc4514_string()}"
    if len(_CERTIFICATE_NAMES) >= 64:  # a handful of peers in practice; bounded all the same
        _CERTIFICATE_NAMES.clear()
    _CERTIFICATE_NAMES[peer] = names
    return names


# host:port -> the names `_certificate` found: the fetch is a blocking connection of up to 3 s,
# and a refused certificate is described again on every retry (Graph tries 8 times a cycle).
_CERTIFICATE_NAMES: dict[str, str] = {}


def _peer_certificate(host: str, port: int, timeout: float = 3.0) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    if not der:
        raise ValueError("no certificate")
    return der
