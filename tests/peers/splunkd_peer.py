"""splunkd's management REST API on loopback, serving only `storage/passwords` (stdlib server).

The Splunk add-on reads each customer's client secret from splunkd's credential store through
splunklib (`service.storage_passwords`). No splunkd can run here, so this peer answers those
GETs the way splunkd does, over real sockets: HTTPS with a certificate from a trustme CA for
127.0.0.1 and localhost (`ca_file` / `client_ssl_context()` for the client), Atom XML bodies
(`Content-Type: text/xml; charset=UTF-8`), splunkd's XML error bodies.

  GET /services/storage/passwords                          every credential
  GET /servicesNS/<owner>/<app>/storage/passwords          the credentials of <app> (or `-`: any)
  GET .../storage/passwords/<url-encoded name>             one credential; 404 when absent
  anything else                                            404

Authentication: `Authorization: Splunk <session key>` (what splunklib sends for `token=`, and a
modular input gets as its session key) or `Bearer <key>` (what splunklib sends for
`splunkToken=`); anything else -> 401 with splunkd's body
`<response><messages><msg type="WARN">call not properly authenticated</msg></messages></response>`.

A credential's name is `realm:username:` with `:` inside realm or username escaped as `\\:`
(splunkd's own naming); its `content` holds realm, username, clear_password, encr_password
(a `$7$` string derived from the password, not splunkd's real encryption), password
(`********`) and `eai:acl` (app, owner `nobody`, sharing `app`, perms).

Choices where splunkd's documentation is silent or unverified here (documented so that a test
sees what it relies on):
  * `/services/...` lists every credential; `/servicesNS/<owner>/<app>/...` only those of <app>
    (app-shared credentials of another app are not visible there); the owner is not checked.
  * `count` <= 0 or absent -> all (splunklib sends `count=-1`); `offset` skips; `search=term`
    keeps entries whose title or any content value contains term (case-insensitive);
    `search=field=value` compares one content field (case-insensitive, `*` wildcards).
  * 404 for an absent name: `<msg type="ERROR">Could not find object id=<name></msg>` (the
    text splunkd's answers quote); for an unknown path `<msg type="ERROR">Not Found</msg>`.
  * Methods other than GET -> 404 too: creating or deleting credentials is not implemented.
"""
from __future__ import annotations

import base64
import hashlib
import ssl
import threading
import time
from dataclasses import dataclass
from fnmatch import fnmatchcase
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape

import trustme

from tests.peers.lifecycle import CaSignedPeer
from tests.peers.loopback_http import LoopbackHTTPServer

HOST = "127.0.0.1"
PASSWORDS = "storage/passwords"
OWNER = "nobody"  # the owner splunkd gives app-shared credentials
MASKED = "********"
ATOM_HEAD = ('<?xml version="1.0" encoding="UTF-8"?>\n'
             '<feed xmlns="http://www.w3.org/2005/Atom" xmlns:s="http://dev.splunk.com/ns/rest" '
             'xmlns:opensearch="http://a9.com/-/spec/opensearch/1.1/">\n')
AUTH_SCHEMES = ("Splunk", "Bearer")
UNAUTHENTICATED_TEXT = "call not properly authenticated"
NOT_FOUND_TEXT = "Not Found"


@dataclass(frozen=True)
class SplunkdRequest:
    """One request as the peer saw it and answered it (the key itself is not kept)."""

    number: int  # 1-based since the peer was built
    method: str
    path: str  # without the query, as sent (still URL-encoded)
    query: dict[str, list[str]]
    status: int
    auth_ok: bool
    auth_scheme: str | None  # "Splunk", "Bearer", another word, or None without the header
    t: float = 0.0


@dataclass(frozen=True)
class _Answer:
    status: int
    body: str


def credential_name(realm: str, username: str) -> str:
    """splunkd's name (and Atom title) of a credential: `realm:username:`, `:` escaped."""
    return f"{_escape_colons(realm)}:{_escape_colons(username)}:"


def _escape_colons(value: str) -> str:
    return value.replace(":", "\\:")


def _encrypted(password: str) -> str:
    # Looks like splunkd's `$7$...` and differs from the clear text; not reversible, not splunkd's.
    return "$7$" + base64.b64encode(hashlib.sha256(password.encode()).digest()).decode()


def _error(status: int, text: str, level: str = "ERROR") -> _Answer:
    return _Answer(status, '<?xml version="1.0" encoding="UTF-8"?>\n<response>\n  <messages>\n'
                           f'    <msg type="{level}">{escape(text)}</msg>\n  </messages>\n</response>\n')


def _key(name: str, value: str) -> str:
    return f'<s:key name="{name}">{escape(value)}</s:key>'


def _list(name: str, items: list[str]) -> str:
    inner = "".join(f"<s:item>{escape(item)}</s:item>" for item in items)
    return f'<s:key name="{name}"><s:list>{inner}</s:list></s:key>'


# ---------------------------------------------------------------- HTTP server

class _Server(LoopbackHTTPServer):
    def __init__(self, peer: SplunkdPeer, port: int, context: ssl.SSLContext | None) -> None:
        self.peer = peer
        super().__init__(port, _Handler, context)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Splunkd"
    sys_version = ""
    server: _Server

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # unread bytes would spoil the next request on the connection
        answer = self.server.peer._handle(self.command, self.path, self.headers.get("Authorization"))
        payload = answer.body.encode("utf-8")
        self.send_response(answer.status)
        self.send_header("Content-Type", "text/xml; charset=UTF-8")
        self.send_header("Content-Length", str(len(payload)))
        # splunklib sends `Connection: Close` and, unless the answer says Keep-Alive or Close,
        # closes the connection before reading the body (it then reads nothing): say which.
        closing = self.headers.get("Connection", "").lower() == "close"
        self.send_header("Connection", "Close" if closing else "Keep-Alive")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `SplunkdPeer.requests` is the request log."""


# ---------------------------------------------------------------- the peer

class SplunkdPeer(CaSignedPeer):
    """splunkd's storage/passwords on one loopback port that stays the same across restart().

    `credentials`: (realm, username) -> clear password, all stored in `app`. Thread-safe; the
    credentials and the request log survive stop() and restart()."""

    def __init__(self, credentials: dict[tuple[str, str], str] | None = None, *, session_key: str,
                 app: str = "search", ca: trustme.CA | None = None, port: int = 0) -> None:
        if not session_key:
            raise ValueError("session_key must not be empty")
        self.session_key = session_key
        self.app = app
        self.ca = ca or trustme.CA()
        self._credentials: dict[tuple[str, str], str] = dict(credentials or {})
        self._port = port
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._requests: list[SplunkdRequest] = []
        self._write_ca("splunkd-peer-")

    # ---- lifecycle

    @property
    def url(self) -> str:
        """`https://127.0.0.1:<port>`, known from the first start on, also while stopped."""
        return f"https://{HOST}:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("SplunkdPeer is already running")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert(HOST, "localhost").configure_cert(context)
        self._server = _Server(self, self._port, context)
        self._port = self._server.server_address[1]
        self._server.serve_in_background(f"splunkd-peer-{self._port}")
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop_serving()

    # ---- test controls and observation

    def set_credential(self, realm: str, username: str, password: str) -> None:
        with self._lock:
            self._credentials[(realm, username)] = password

    def remove_credential(self, realm: str, username: str) -> None:
        with self._lock:
            self._credentials.pop((realm, username), None)

    @property
    def requests(self) -> list[SplunkdRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ---- request handling

    def _handle(self, method: str, target: str, authorization: str | None) -> _Answer:
        split = urlsplit(target)
        query = parse_qs(split.query)
        scheme, _, key = (authorization or "").partition(" ")
        auth_ok = scheme in AUTH_SCHEMES and key.strip() == self.session_key
        if not auth_ok:
            answer = _error(401, UNAUTHENTICATED_TEXT, level="WARN")
        else:
            answer = self._route(method, split.path, query)
        with self._lock:
            self._requests.append(SplunkdRequest(
                number=len(self._requests) + 1, method=method, path=split.path, query=query,
                status=answer.status, auth_ok=auth_ok, auth_scheme=scheme or None, t=time.time()))
        return answer

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> _Answer:
        segments = path.strip("/").split("/")
        if segments[:1] == ["services"]:
            app, rest = None, segments[1:]
        elif segments[:1] == ["servicesNS"] and len(segments) >= 3:
            app, rest = (None if segments[2] == "-" else unquote(segments[2])), segments[3:]
        else:
            return _error(404, NOT_FOUND_TEXT)
        if method != "GET" or rest[:2] != PASSWORDS.split("/") or len(rest) > 3:
            return _error(404, NOT_FOUND_TEXT)
        visible = self._visible(app)
        if len(rest) == 2:
            return self._feed(visible, query)
        name = unquote(rest[2])
        chosen = [entry for entry in visible if credential_name(*entry[0]) == name]
        if not chosen:
            return _error(404, f"Could not find object id={name}")
        return self._feed(chosen, {})

    def _visible(self, app: str | None) -> list[tuple[tuple[str, str], str]]:
        if app is not None and app != self.app:
            return []
        with self._lock:
            return sorted(self._credentials.items())

    def _feed(self, entries: list[tuple[tuple[str, str], str]], query: dict[str, list[str]]) -> _Answer:
        search = query.get("search", [""])[0]
        if search:
            entries = [entry for entry in entries if _matches(entry, search)]
        offset = max(0, _int(query.get("offset", ["0"])[0]))
        count = _int(query.get("count", ["0"])[0])
        page = entries[offset:offset + count] if count > 0 else entries[offset:]
        body = [ATOM_HEAD,
                f"  <title>passwords</title>\n  <id>{self.url}/services/{PASSWORDS}</id>\n",
                f"  <updated>{_now()}</updated>\n  <generator build=\"peer\" version=\"10.0.0\"/>\n",
                "  <author><name>Splunk</name></author>\n",
                f"  <opensearch:totalResults>{len(entries)}</opensearch:totalResults>\n",
                f"  <opensearch:itemsPerPage>{max(count, 0)}</opensearch:itemsPerPage>\n",
                f"  <opensearch:startIndex>{offset}</opensearch:startIndex>\n"]
        body += [self._entry(realm, username, password) for (realm, username), password in page]
        body.append("</feed>\n")
        return _Answer(200, "".join(body))

    def _entry(self, realm: str, username: str, password: str) -> str:
        name = credential_name(realm, username)
        href = f"/servicesNS/{OWNER}/{quote(self.app, safe='')}/{PASSWORDS}/{quote(name, safe='')}"
        acl = ('<s:key name="eai:acl"><s:dict>' + _key("app", self.app) + _key("can_list", "1")
               + _key("can_write", "1") + _key("modifiable", "1") + _key("owner", OWNER)
               + '<s:key name="perms"><s:dict>' + _list("read", ["*"]) + _list("write", ["admin", "sc_admin"])
               + "</s:dict></s:key>" + _key("removable", "1") + _key("sharing", "app") + "</s:dict></s:key>")
        content = (_key("clear_password", password) + acl + _key("encr_password", _encrypted(password))
                   + _key("password", MASKED) + _key("realm", realm) + _key("username", username))
        return (f"  <entry>\n    <title>{escape(name)}</title>\n    <id>{self.url}{escape(href)}</id>\n"
                f"    <updated>{_now()}</updated>\n"
                f'    <link href="{escape(href)}" rel="alternate"/>\n'
                f"    <author><name>{OWNER}</name></author>\n"
                f'    <link href="{escape(href)}" rel="list"/>\n'
                f'    <content type="text/xml"><s:dict>{content}</s:dict></content>\n  </entry>\n')


def _matches(entry: tuple[tuple[str, str], str], search: str) -> bool:
    (realm, username), password = entry
    fields = {"realm": realm, "username": username, "clear_password": password, "password": MASKED,
              "title": credential_name(realm, username)}
    field, sep, value = search.partition("=")
    if sep and field in fields:
        return fnmatchcase(fields[field].lower(), value.lower())
    return any(search.lower() in text.lower() for text in fields.values())


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
