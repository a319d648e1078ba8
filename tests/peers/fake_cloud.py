"""A simulated Microsoft cloud for tests: Entra ID login plus Graph `security/alerts_v2` and
`security/incidents`, and the Defender for Endpoint API `/api/alerts` (tests/peers/fake_mde.py).

One HTTPS server on 127.0.0.1 (certificate from a trustme CA) plays both hosts, so a client
uses login endpoint = Graph endpoint = `base_url`:

  GET  /{tenant}/v2.0/.well-known/openid-configuration  MSAL reads it in its constructor
  GET  /{tenant}/discovery/v2.0/keys                    JWKS of the fake STS
  POST /{tenant}/oauth2/v2.0/token                      client_credentials, secret or certificate
  GET  /v1.0/security/alerts_v2                         tenant taken from the bearer token
  GET  /api/alerts                                      MDE: a WindowsDefenderATP token, quotas
  GET  /v1.0/security/incidents                         the same options, plus `$expand=alerts`
  GET  /v1.0/security/incidents/{id}/alerts             the alerts whose incidentId is {id}

and, once `managed_identity()` registered one, a managed identity endpoint as App Service
serves it (plain http on loopback, `identity_endpoint`):

  GET  /msi/token?api-version=2019-08-01&resource=..[&client_id=..]   X-IDENTITY-HEADER

Incidents are served as alerts are (filter, paging, faults). `$expand=alerts` answers HTTP 500
on a tenant of more than EXPAND_ALERTS_LIMIT incidents, as Graph does on large tenants for good,
so that a test can prove the forwarder never asks for it. A tenant's `permissions` are the
application permissions its admin consented to: they are the token's `roles`, and a collection
whose permission is missing answers 403 (per-source consent).

The login half is adapted from the MSAL spike the project started from.
The Graph half follows Microsoft Graph's documentation of alerts_v2 (list, $filter, paging,
throttling, errors). Limits of the
simulation: `$filter` takes only `and`-joined comparisons (no `or`, no parentheses, no
`any()`), and the only query options are `$filter`, `$orderby`, `$top` and `$skiptoken`.

Standalone, for benchmarks, with alerts from tests/peers/alert_factory.py; it serves until
SIGTERM or SIGINT and writes a JSON ready file (base_url, ca_file, client_id, secret, tenant_ids):
  python -m tests.peers.fake_cloud --tenants 1000 --alerts-per-tenant 50 --latency 0.1 \
      --ready-file /tmp/cloud.json
With --synthetic, alerts are stamped from templates when a page asks for them (a million cost
nothing to keep), and --live-per-tenant more per tenant appear at --live-rate a second from the
moment the process gets SIGUSR1, each last updated when it appears: what bench/soak.py uses.
"""
from __future__ import annotations

import argparse
import base64
import calendar
import datetime as dt
import hashlib
import json
import os
import re
import secrets
import signal
import ssl
import sys
import threading
import time
import uuid
from bisect import bisect_left, bisect_right, insort
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from itertools import takewhile
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qs, parse_qsl, quote, urlencode, urlsplit

import jwt
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.peers import fake_mde
from tests.peers.alert_factory import make_alerts
from tests.peers.loopback_http import LoopbackHTTPServer

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
ALERTS_PATH = "/v1.0/security/alerts_v2"
INCIDENTS_PATH = "/v1.0/security/incidents"
_INCIDENT_ALERTS = re.compile(r"/v1\.0/security/incidents/([^/]+)/alerts", re.IGNORECASE)
ALERTS_PERMISSION = "SecurityAlert.Read.All"
INCIDENTS_PERMISSION = "SecurityIncident.Read.All"
# A tenant with more incidents than this answers `$expand=alerts` with HTTP 500 (elastic/integrations#18144).
EXPAND_ALERTS_LIMIT = 20
MAX_TOP = 1000
PREFER_UNKNOWN_ENUMS = "include-unknown-enum-members"
UNKNOWN_FUTURE_VALUE = "unknownFutureValue"
TICKS_PER_SECOND = 10_000_000  # Graph timestamps have 7 fractional digits, i.e. 100 ns ticks

# Members Graph lists after `unknownFutureValue` (evolvable enums). A client sees them
# only with `Prefer: include-unknown-enum-members`; otherwise they read `unknownFutureValue`.
EVOLVED_ALERT_ENUMS: dict[str, frozenset[str]] = {
    "serviceSource": frozenset({
        "microsoftDefenderForCloud", "microsoftSentinel", "microsoftInsiderRiskManagement",
        "microsoftThreatIntelligence", "microsoftSecurityForAI"}),
    "detectionSource": frozenset({
        "microsoftDefenderForCloud", "microsoftDefenderForIoT", "microsoftDefenderForServers",
        "microsoftDefenderForStorage", "microsoftDefenderForDNS", "microsoftDefenderForDatabases",
        "microsoftDefenderForContainers", "microsoftDefenderForNetwork",
        "microsoftDefenderForAppService", "microsoftDefenderForKeyVault",
        "microsoftDefenderForResourceManager", "microsoftDefenderForApiManagement", "nrtAlerts",
        "scheduledAlerts", "microsoftDefenderThreatIntelligenceAnalytics", "builtInMl",
        "microsoftInsiderRiskManagement", "microsoftThreatIntelligence",
        "microsoftDefenderForAIServices", "securityCopilot", "microsoftSentinel"}),
}
EVOLVED_EVIDENCE_ENUMS: dict[str, frozenset[str]] = {
    "remediationStatus": frozenset({
        "active", "pendingApproval", "declined", "unremediated", "running", "partiallyRemediated"}),
}

# Properties `$filter` accepts (Graph's alerts_v2 list documentation).
DATETIME_PROPERTIES = ("lastUpdateDateTime", "createdDateTime")
STRING_PROPERTIES = ("assignedTo", "classification", "determination", "serviceSource",
                     "severity", "status")

_ODATA_DATETIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,7}))?)?(Z|[+-]\d{2}:\d{2})",
    re.IGNORECASE)
_RANGE_CLAUSE = re.compile(r"(\w+)\s+(eq|ge|gt|le|lt)\s+(\S+)", re.IGNORECASE)
_STRING_CLAUSE = re.compile(r"(\w+)\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
_AND = re.compile(r"\s+and\s+", re.IGNORECASE)
_ORDERBY = re.compile(r"lastUpdateDateTime(?:\s+(asc|desc))?", re.IGNORECASE)

Key = tuple[int, str]  # (lastUpdateDateTime in ticks, alert id): the paging order
Bounds = tuple[int, int]  # inclusive tick range
_UNBOUNDED: Bounds = (-(2**63), 2**63)


# ---------------------------------------------------------------- timestamps

def parse_ticks(text: str) -> int:
    """An ISO 8601 DateTimeOffset as 100 ns ticks since the epoch.

    `datetime` keeps only 6 fractional digits, so comparing datetimes would make
    `…00.1234567Z` equal `…00.1234568Z`; Graph compares all 7."""
    match = _ODATA_DATETIME.fullmatch(text)
    if match is None:
        raise ValueError(f"not an ISO 8601 DateTimeOffset with at most 7 fractional digits: {text!r}")
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    moment = dt.datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0))
    seconds = calendar.timegm(moment.timetuple()) - _offset_seconds(zone)
    return seconds * TICKS_PER_SECOND + int((fraction or "").ljust(7, "0"))


def _offset_seconds(zone: str) -> int:
    if zone.upper() == "Z":
        return 0
    sign = -1 if zone[0] == "-" else 1
    return sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)


# ---------------------------------------------------------------- public model

@dataclass(frozen=True)
class Fault:
    """One misbehaviour of Graph, consumed by a tenant's next authenticated alerts request."""

    kind: Literal["status", "delay", "truncated_json", "repeat_next_link", "next_link_404"]
    code: int = 200
    retry_after: int | str | None = None
    body: dict[str, Any] | str | None = None
    seconds: float = 0.0

    @classmethod
    def status(cls, code: int, retry_after: int | str | None = None,
               body: dict[str, Any] | str | None = None) -> Fault:
        """Answer `code` (429, 500, 503, 504...) with a Graph error body unless `body` is given;
        a str body is sent as text/plain, the way a gateway error page arrives."""
        return cls("status", code=code, retry_after=retry_after, body=body)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Hang `seconds`, then answer normally: lets a client's read timeout fire."""
        return cls("delay", seconds=seconds)

    @classmethod
    def truncated_json(cls) -> Fault:
        """200 whose body is the first half of the page (Content-Length matches the cut body)."""
        return cls("truncated_json")

    @classmethod
    def repeat_next_link(cls) -> Fault:
        """Answer the page, but with `@odata.nextLink` equal to the request URL."""
        return cls("repeat_next_link")

    @classmethod
    def next_link_404(cls) -> Fault:
        """Answer the page, with a nextLink whose skiptoken is unknown (following it gives 404)."""
        return cls("next_link_404")


@dataclass
class Tenant:
    """A customer tenant with the MSSP app registered. Attributes may be changed while
    the server runs, e.g. `consent = False` to revoke admin consent mid-test."""

    tenant_id: str
    client_id: str
    secret: str | None = None
    cert: x509.Certificate | None = None
    consent: bool = True
    secret_expired: bool = False
    graph_forbidden: bool = False
    expires_in: int = 3599
    graph_token_lifetime: float | None = None
    page_size: int = 100
    token_fail_status: int | None = None
    mde_forbidden: bool = False  # the app lacks WindowsDefenderATP Alert.Read.All here
    mde_per_minute: int = 100  # the MDE API's quotas (documented: 100 a minute, 1,500 an hour)
    mde_per_hour: int = 1500
    # Seconds every authenticated request of this tenant to Graph or the MDE API hangs before
    # its answer (not used up, unlike Fault.delay): a slow tenant, all its requests slow.
    graph_delay: float = 0.0
    # The application permissions of Microsoft Graph consented in this tenant: the token's roles.
    permissions: frozenset[str] = frozenset({ALERTS_PERMISSION, INCIDENTS_PERMISSION})
    # Alert ids Graph chokes on: every page that would hold one answers 500, for good (as
    # `$expand=alerts` does on a large tenant), so only a window around it can be read.
    poisoned: set[str] = field(default_factory=set, repr=False)
    alerts: _AlertStore | SyntheticAlerts = field(init=False, repr=False)
    incidents: _AlertStore = field(init=False, repr=False)
    faults: deque[Fault] = field(init=False, repr=False)  # for alerts requests
    incident_faults: deque[Fault] = field(init=False, repr=False)  # for incidents requests, ids too
    mde_quota: fake_mde.Quota = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.alerts = _AlertStore()
        self.incidents = _AlertStore()
        self.faults = deque()
        self.mde_quota = fake_mde.Quota(self.mde_per_minute, self.mde_per_hour)
        self.incident_faults = deque()


@dataclass(frozen=True)
class Hit:
    """One request as the server saw it."""

    kind: str  # discovery | keys | token | alerts | other
    tenant: str | None
    status: int
    path: str  # path and query as sent
    prefer: str | None
    authorization: bool  # an Authorization header was present
    fault: str | None = None  # the injected Fault.kind that shaped the answer
    error_code: int | None = None  # AADSTS code of a failed token request
    auth: str | None = None  # how a token request authenticated, e.g. "certificate:PS256:x5t#S256"
    t: float = 0.0


class ClientCert(NamedTuple):
    """An app-registration certificate credential, in the forms MSAL takes."""

    cert: x509.Certificate
    key_pem: str
    cert_pem: str
    sha1_hex: str


def make_client_cert(common_name: str = "defender-forwarder-test") -> ClientCert:
    """A self-signed RSA certificate and key, like one uploaded to an app registration."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=30))
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return ClientCert(cert, key_pem, cert_pem, cert.fingerprint(hashes.SHA1()).hex().upper())


# ---------------------------------------------------------------- alert store and queries

@dataclass(frozen=True)
class _Query:
    bounds: dict[str, Bounds]  # datetime property -> inclusive tick range
    equals: tuple[tuple[str, str], ...]
    descending: bool
    top: int
    options: tuple[tuple[str, str], ...]  # the client's options, repeated in nextLink
    expand: str | None = None  # `$expand` (incidents only: `alerts`)


@dataclass(frozen=True)
class _Entry:
    """One stored alert version, encoded once when added: pages are joins of these bytes,
    so serving costs no per-request encoding, and a test mutating its dict afterwards
    cannot change what Graph serves."""

    key: Key
    ticks: dict[str, int]
    fields: dict[str, Any]  # the STRING_PROPERTIES `$filter` compares
    json: bytes  # as sent with `Prefer: include-unknown-enum-members`
    masked_json: bytes  # as sent without it
    incident: str | None = None  # an alert's incidentId

    @classmethod
    def of(cls, alert: dict[str, Any]) -> _Entry:
        ticks = {name: parse_ticks(alert[name]) for name in DATETIME_PROPERTIES if alert.get(name)}
        if "lastUpdateDateTime" not in ticks or not alert.get("id"):
            raise ValueError("an alert needs `id` and `lastUpdateDateTime`")
        plain = json.dumps(alert).encode()
        masked = _mask_alert(alert)
        return cls(key=(ticks["lastUpdateDateTime"], alert["id"]), ticks=ticks,
                   fields={name: alert.get(name) for name in STRING_PROPERTIES}, json=plain,
                   masked_json=plain if masked == alert else json.dumps(masked).encode(),
                   incident=None if alert.get("incidentId") is None else str(alert["incidentId"]))

    def matches(self, query: _Query) -> bool:
        in_range = all(low <= self.ticks.get(name, _UNBOUNDED[0] - 1) <= high
                       for name, (low, high) in query.bounds.items())
        return in_range and all(self.fields[name] == value for name, value in query.equals)


class _AlertStore:
    """One tenant's alerts, kept sorted by (lastUpdateDateTime, id) so a page is a bisect
    plus a scan of the matching range, whatever the number of tenants."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._keys: list[Key] = []

    def upsert(self, alert: dict[str, Any]) -> None:
        entry = _Entry.of(alert)
        old = self._entries.get(entry.key[1])
        if old is not None:
            del self._keys[bisect_left(self._keys, old.key)]
        insort(self._keys, entry.key)
        self._entries[entry.key[1]] = entry

    def __len__(self) -> int:
        return len(self._entries)

    def has(self, record_id: str) -> bool:
        return record_id in self._entries

    def of_incident(self, incident_id: str) -> list[_Entry]:
        """The alerts whose incidentId is `incident_id`, in (lastUpdateDateTime, id) order."""
        return [self._entries[key[1]] for key in self._keys if self._entries[key[1]].incident == incident_id]

    def page(self, query: _Query, after: Key | None) -> tuple[list[_Entry], Key | None]:
        """Up to `query.top` matching alerts past `after`, and the key to continue from
        (None when nothing matching is left)."""
        taken: list[_Entry] = []
        for key in self._scan(query, after):
            entry = self._entries[key[1]]
            if not entry.matches(query):
                continue
            if len(taken) == query.top:
                return taken, taken[-1].key
            taken.append(entry)
        return taken, None

    def _scan(self, query: _Query, after: Key | None) -> Iterator[Key]:
        low, high = query.bounds.get("lastUpdateDateTime", _UNBOUNDED)
        keys = self._keys
        if query.descending:
            end = bisect_right(keys, high, key=_key_ticks)
            if after is not None:
                end = min(end, bisect_left(keys, after))
            return takewhile(lambda key: key[0] >= low, (keys[i] for i in range(end - 1, -1, -1)))
        start = bisect_left(keys, low, key=_key_ticks)
        if after is not None:
            start = max(start, bisect_right(keys, after))
        return takewhile(lambda key: key[0] <= high, (keys[i] for i in range(start, len(keys))))


def _key_ticks(key: Key) -> int:
    return key[0]


class _Made(NamedTuple):
    """A synthetic alert as served: the same shape `_AlertStore.page` returns."""

    key: Key
    json: bytes
    masked_json: bytes


class _Template(NamedTuple):
    """An alert's JSON with its id, tenant id and lastUpdateDateTime hollowed out."""

    json: bytes
    masked_json: bytes

    @classmethod
    def of(cls, alert: dict[str, Any]) -> _Template:
        def hollow(body: bytes) -> bytes:
            return (body.replace(alert["id"].encode(), b"@ID@")
                    .replace(alert["tenantId"].encode(), b"@TENANT@")
                    .replace(json.dumps(alert["lastUpdateDateTime"]).encode(), b'"@UPDATED@"'))

        return cls(hollow(json.dumps(alert).encode()), hollow(json.dumps(_mask_alert(alert)).encode()))

    def fill(self, alert_id: str, tenant_id: str, updated: str) -> tuple[bytes, bytes]:
        values = ((b"@ID@", alert_id.encode()), (b"@TENANT@", tenant_id.encode()), (b"@UPDATED@", updated.encode()))
        bodies = [self.json, self.masked_json]
        for placeholder, value in values:
            bodies = [body.replace(placeholder, value) for body in bodies]
        return bodies[0], bodies[1]


def alert_templates(count: int, seed: int = 0) -> list[_Template]:
    """`count` varied alerts of the factory, ready to be stamped with any id, tenant and time."""
    made = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)  # older than anything a template stands in for
    return [_Template.of(alert) for alert in
            make_alerts(count, "00000000-0000-4000-8000-00000000feed", made, dt.timedelta(minutes=1), seed)]


@dataclass
class LiveRelease:
    """When synthetic tenants' live alerts appear: none before `begin()`, then `rate` a second
    across all `tenants`, round robin, each last updated the moment it appears."""

    rate: float
    tenants: int
    started_ticks: int | None = None

    def begin(self) -> None:
        self.started_ticks = time.time_ns() // 100

    def visible(self, tenant_index: int, live: int) -> int:
        """How many of a tenant's `live` alerts have appeared."""
        if self.started_ticks is None:
            return 0
        released = (time.time_ns() // 100 - self.started_ticks) * self.rate / TICKS_PER_SECOND
        return max(0, min(live, int((released - tenant_index) // self.tenants) + 1))

    def ticks(self, tenant_index: int, number: int) -> int:
        assert self.started_ticks is not None
        return self.started_ticks + round((number * self.tenants + tenant_index) * TICKS_PER_SECOND / self.rate)


def synthetic_alert_id(tenant_index: int, index: int) -> str:
    """The id of a synthetic tenant's `index`-th alert (backlog first, then live)."""
    return f"da{tenant_index:06d}{index:012d}_synthetic"


class SyntheticAlerts:
    """One tenant's alerts, made when a page asks for them: `backlog` alerts already there (the
    i-th last updated at backlog_start + i * step), then `live` ones appearing as `release`
    says. Memory stays a few templates whatever the count; `$filter` takes lastUpdateDateTime
    bounds only, which is what a poller asks for."""

    def __init__(self, tenant_id: str, tenant_index: int, templates: list[_Template], *, backlog: int,
                 backlog_start: dt.datetime, step: dt.timedelta, live: int, release: LiveRelease) -> None:
        self.tenant_id, self.tenant_index, self.templates = tenant_id, tenant_index, templates
        self.backlog, self.live, self.release = backlog, live, release
        self.backlog_start = calendar.timegm(backlog_start.utctimetuple()) * TICKS_PER_SECOND
        self.step = round(step.total_seconds() * TICKS_PER_SECOND)

    def of_incident(self, incident_id: str) -> list[_Entry]:
        return []  # synthetic alerts belong to no incident the cloud serves

    def page(self, query: _Query, after: Key | None) -> tuple[list[_Made], Key | None]:
        if query.equals or set(query.bounds) - {"lastUpdateDateTime"}:
            raise _bad_request("a synthetic tenant serves lastUpdateDateTime ranges only")
        taken: list[_Made] = []
        for index in self._scan(query, after):
            if len(taken) == query.top:
                return taken, taken[-1].key
            taken.append(self._make(index, self._ticks(index)))
        return taken, None

    def _scan(self, query: _Query, after: Key | None) -> Iterator[int]:
        """Indexes in paging order; ticks grow with the index, so bisecting indexes is bisecting keys."""
        low, high = query.bounds.get("lastUpdateDateTime", _UNBOUNDED)
        indexes = range(self.backlog + self.release.visible(self.tenant_index, self.live))
        if query.descending:
            end = bisect_right(indexes, high, key=self._ticks)
            if after is not None:
                end = min(end, bisect_left(indexes, after[0], key=self._ticks))
            return takewhile(lambda index: self._ticks(index) >= low, reversed(indexes[:end]))
        start = bisect_left(indexes, low, key=self._ticks)
        if after is not None:
            start = max(start, bisect_right(indexes, after[0], key=self._ticks))
        return takewhile(lambda index: self._ticks(index) <= high, indexes[start:])

    def _ticks(self, index: int) -> int:
        if index < self.backlog:
            return self.backlog_start + index * self.step
        return self.release.ticks(self.tenant_index, index - self.backlog)

    def _make(self, index: int, ticks: int) -> _Made:
        alert_id = synthetic_alert_id(self.tenant_index, index)
        seconds, fraction = divmod(ticks, TICKS_PER_SECOND)
        updated = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{fraction:07d}Z"
        template = self.templates[(self.tenant_index + index) % len(self.templates)]
        plain, masked = template.fill(alert_id, self.tenant_id, updated)
        return _Made((ticks, alert_id), plain, masked)


class _GraphError(Exception):
    """A Graph error answer: `{"error": {"code", "message", "innerError"}}`."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


class _EntraError(Exception):
    """An Entra token-endpoint error: `error`, `error_description` "AADSTSnnnn: ...", ..."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.code, self.description = status, error, code, description


def parse_query(raw_query: str, default_top: int, expandable: tuple[str, ...] = ()) -> _Query:
    """The OData options of a first-page request; raises _GraphError 400 on anything unsupported.
    `expandable`: the navigation properties `$expand` may name (incidents: `alerts`)."""
    options = _single_valued(parse_qs(raw_query, keep_blank_values=True))
    known = ("$filter", "$orderby", "$top", *(("$expand",) if expandable else ()))
    unsupported = sorted(name for name in options if name.startswith("$") and name not in known)
    if unsupported:
        raise _bad_request(f"Query option '{unsupported[0]}' is not supported by this simulation.")
    expand = options.get("$expand")
    if expand is not None and expand not in expandable:
        raise _bad_request(f"Could not find a property named '{expand}' to expand.")
    bounds, equals = _parse_filter(options.get("$filter", ""))
    return _Query(bounds=bounds, equals=equals,
                  descending=_parse_orderby(options.get("$orderby")),
                  top=_parse_top(options.get("$top"), default_top),
                  options=tuple((name, options[name]) for name in known if name in options),
                  expand=expand)


def _single_valued(params: dict[str, list[str]]) -> dict[str, str]:
    repeated = [name for name, values in params.items() if len(values) > 1]
    if repeated:
        raise _bad_request(f"Query option '{repeated[0]}' was specified more than once.")
    return {name: values[0] for name, values in params.items()}


def _parse_filter(text: str) -> tuple[dict[str, Bounds], tuple[tuple[str, str], ...]]:
    bounds: dict[str, Bounds] = {}
    equals: list[tuple[str, str]] = []
    if not text.strip():
        return bounds, ()
    for clause in _AND.split(text.strip()):
        string_match = _STRING_CLAUSE.fullmatch(clause)
        range_match = _RANGE_CLAUSE.fullmatch(clause)
        if string_match and (name := _canonical(string_match[1], STRING_PROPERTIES)):
            equals.append((name, string_match[2].replace("''", "'")))
        elif range_match and (name := _canonical(range_match[1], DATETIME_PROPERTIES)):
            bounds[name] = _narrow(bounds.get(name, _UNBOUNDED), range_match[2].lower(),
                                   _filter_ticks(range_match[3]))
        else:
            raise _bad_request(f"Invalid filter clause: '{clause}'.")
    return bounds, tuple(equals)


def _canonical(name: str, known: tuple[str, ...]) -> str | None:
    return next((k for k in known if k.lower() == name.lower()), None)


def _filter_ticks(literal: str) -> int:
    try:
        return parse_ticks(literal)
    except ValueError:
        raise _bad_request(f"Invalid DateTimeOffset literal '{literal}' in filter.") from None


def _narrow(bounds: Bounds, operator: str, ticks: int) -> Bounds:
    """Intersect a tick range with one comparison; ticks are integers, so `gt t` is `ge t+1`."""
    low, high = bounds
    if operator in ("ge", "gt", "eq"):
        low = max(low, ticks + (operator == "gt"))
    if operator in ("le", "lt", "eq"):
        high = min(high, ticks - (operator == "lt"))
    return low, high


def _parse_orderby(text: str | None) -> bool:
    """True for newest first, which is also Graph's order when none is asked for."""
    if text is None:
        return True
    match = _ORDERBY.fullmatch(text.strip())
    if match is None:
        raise _bad_request(f"$orderby '{text}' is not supported; use 'lastUpdateDateTime asc|desc'.")
    return (match[1] or "asc").lower() == "desc"


def _parse_top(text: str | None, default_top: int) -> int:
    if text is None:
        return default_top
    if not text.isdigit() or not 1 <= int(text) <= MAX_TOP:
        raise _bad_request(f"Invalid page size specified: '{text}'. "
                           f"Must be between 1 and {MAX_TOP} inclusive.")
    return int(text)


def _bad_request(message: str) -> _GraphError:
    return _GraphError(400, "BadRequest", message)


def _mask_alert(alert: dict[str, Any]) -> dict[str, Any]:
    """The alert as Graph sends it to a client that did not opt in to evolved enum members."""
    masked = _mask(alert, EVOLVED_ALERT_ENUMS)
    if isinstance(alert.get("evidence"), list):
        masked["evidence"] = [_mask_evidence(item) for item in alert["evidence"]]
    return masked


def _mask_evidence(value: Any) -> Any:
    """Evidence nests evidence (e.g. networkConnection.sourceAddress), so mask recursively."""
    if isinstance(value, list):
        return [_mask_evidence(item) for item in value]
    if isinstance(value, dict):
        return {k: _mask_evidence(v) for k, v in _mask(value, EVOLVED_EVIDENCE_ENUMS).items()}
    return value


def _mask(obj: dict[str, Any], evolved: dict[str, frozenset[str]]) -> dict[str, Any]:
    return {k: UNKNOWN_FUTURE_VALUE if v in evolved.get(k, ()) else v for k, v in obj.items()}


# ---------------------------------------------------------------- HTTP plumbing

@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # path and query as sent
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class _Response:
    status: int
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True)
class _Outcome:
    kind: str
    tenant: str | None
    response: _Response
    fault: str | None = None
    error_code: int | None = None
    auth: str | None = None


@dataclass(frozen=True)
class _Cursor:
    tenant_id: str
    query: _Query
    after: Key


def _json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> _Response:
    return _Response(status, json.dumps(body).encode(),
                     {"Content-Type": "application/json; charset=utf-8",
                      "Cache-Control": "no-store, no-cache", **(headers or {})})


def _identity_error(status: int, message: str) -> _Response:
    """App Service's managed identity endpoint's error body."""
    return _json_response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})


def _prefers_unknown_enums(prefer: str | None) -> bool:
    return any(p.strip().lower() == PREFER_UNKNOWN_ENUMS for p in (prefer or "").split(","))


class _TLSServer(LoopbackHTTPServer):
    def __init__(self, cloud: FakeCloud, context: ssl.SSLContext) -> None:
        self.cloud = cloud
        super().__init__(0, _Handler, context)

class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse their TLS connections
    server: _TLSServer

    def do_GET(self) -> None:
        self._serve(b"")

    def do_POST(self) -> None:
        self._serve(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _serve(self, body: bytes) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        response = self.server.cloud._handle(_Request(self.command, self.path, headers, body))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the `hits` list is the request log."""


@dataclass(frozen=True)
class IdentityRequest:
    """One request to the managed identity endpoint, as it came."""
    client_id: str | None  # the `client_id` parameter: None asks for the system-assigned identity
    resource: str | None
    header_ok: bool  # X-IDENTITY-HEADER was the secret of IDENTITY_HEADER
    status: int


@dataclass(frozen=True)
class _Identity:
    tenant_id: str
    client_id: str
    expires_in: int


class _IdentityServer(LoopbackHTTPServer):
    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud
        # Plain http, as App Service's own endpoint (IDENTITY_ENDPOINT=http://127.0.0.1:<port>/msi/token):
        # azure-identity trusts only the system's CAs for it, so a test CA could not serve it over TLS.
        super().__init__(0, _IdentityHandler, None)


class _IdentityHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _IdentityServer

    def do_GET(self) -> None:
        response = self.server.cloud._identity_token(self.path, self.headers.get("X-IDENTITY-HEADER"))
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: `identity_requests` is the request log."""


# ---------------------------------------------------------------- the cloud

class FakeCloud:
    """Entra ID login and Graph alerts_v2 for many tenants on one loopback HTTPS port.

    Thread-safe: tests may configure tenants, add alerts and inject faults while clients
    are being served."""

    def __init__(self, ca: trustme.CA | None = None, *, latency: float = 0.0,
                 record_hits: bool = True) -> None:
        self.ca = ca or trustme.CA()
        self.latency = latency  # seconds added to every request, login included
        self.record_hits = record_hits  # a long benchmark run would otherwise grow `hits` forever
        self.tenants: dict[str, Tenant] = {}
        self.hits: list[Hit] = []
        self._counts: Counter[tuple[str, str | None]] = Counter()
        self._cursors: dict[str, _Cursor] = {}
        self._issued: dict[str, float] = {}  # token `uti` -> monotonic issue time
        self._lock = threading.Lock()
        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._kid = uuid.uuid4().hex
        self._server: _TLSServer | None = None
        self._identities: dict[str | None, _Identity] = {}  # None: the system-assigned one
        self._identity_server: _IdentityServer | None = None
        self.identity_header = secrets.token_hex(16)  # App Service's IDENTITY_HEADER secret
        self.identity_requests: list[IdentityRequest] = []

    # ---- configuration

    def add_tenant(self, tenant_id: str, *, client_id: str, secret: str | None = None,
                   cert: x509.Certificate | None = None, consent: bool = True,
                   secret_expired: bool = False, graph_forbidden: bool = False,
                   expires_in: int = 3599, graph_token_lifetime: float | None = None,
                   page_size: int = 100, token_fail_status: int | None = None,
                   mde_forbidden: bool = False, mde_per_minute: int = 100, mde_per_hour: int = 1500,
                   permissions: Iterable[str] | None = None, graph_delay: float = 0.0) -> Tenant:
        """Register a tenant with the app `client_id` consented. `page_size` applies when a
        request has no `$top`; `graph_token_lifetime` (seconds) makes Graph reject tokens
        older than that with 401 although MSAL still caches them; `token_fail_status`
        (e.g. 503) makes the token endpoint fail. `mde_forbidden` leaves WindowsDefenderATP
        Alert.Read.All out of the MDE token's roles (403 on /api/alerts); `mde_per_minute` and
        `mde_per_hour` are the MDE quotas; `permissions` are the Graph permissions consented
        (default: alerts and incidents), e.g. `{"SecurityAlert.Read.All"}` alone; `graph_delay`
        (seconds) delays every authenticated Graph and MDE request of the tenant (settable later)."""
        tenant = Tenant(tenant_id, client_id, secret, cert, consent, secret_expired,
                        graph_forbidden, expires_in, graph_token_lifetime, page_size,
                        token_fail_status, mde_forbidden, mde_per_minute, mde_per_hour)
        if permissions is not None:
            tenant.permissions = frozenset(permissions)
        tenant.graph_delay = graph_delay
        with self._lock:
            self.tenants[tenant_id] = tenant
        return tenant

    def managed_identity(self, tenant_id: str, client_id: str, *, user_assigned: bool = False,
                         expires_in: int = 86399) -> dict[str, str]:
        """Give the machine the forwarder runs on a managed identity of `tenant_id` whose app id is
        `client_id`: the system-assigned one (asked for with no `client_id` parameter), or with
        `user_assigned` one asked for by its client id. Its tokens are signed by this cloud
        (`verify_access_token`), `appid` and `oid` the client id. Returns the environment App
        Service gives its apps, which azure-identity's ManagedIdentityCredential reads:
        IDENTITY_ENDPOINT and IDENTITY_HEADER (the endpoint starts with the first identity)."""
        with self._lock:
            self._identities[client_id if user_assigned else None] = _Identity(tenant_id, client_id, expires_in)
            if self._identity_server is None:
                self._identity_server = _IdentityServer(self)
                self._identity_server.serve_in_background("fake-cloud-identity")
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    @property
    def identity_endpoint(self) -> str:
        if self._identity_server is None:
            raise RuntimeError("no managed identity registered (FakeCloud.managed_identity)")
        return f"http://127.0.0.1:{self._identity_server.server_address[1]}/msi/token"

    def add_alerts(self, tenant_id: str, alerts: Iterable[dict[str, Any]]) -> None:
        """Upsert by `id`: a newer version replaces the stored one, as in Graph."""
        tenant = self.tenants[tenant_id]
        with self._lock:
            for alert in alerts:
                tenant.alerts.upsert(alert)

    def add_incidents(self, tenant_id: str, incidents: Iterable[dict[str, Any]]) -> None:
        """Upsert by `id`, as add_alerts (tests.peers.alert_factory.make_incidents derives
        incidents from alerts)."""
        tenant = self.tenants[tenant_id]
        with self._lock:
            for incident in incidents:
                tenant.incidents.upsert(incident)

    def inject(self, tenant_id: str, *faults: Fault, collection: Literal["alerts", "incidents"] = "alerts") -> None:
        """Queue faults; each is used up by one of the tenant's next authenticated requests of
        `collection` (for incidents: the list and the alert ids of an incident alike)."""
        tenant = self.tenants[tenant_id]
        with self._lock:
            (tenant.faults if collection == "alerts" else tenant.incident_faults).extend(faults)

    # ---- observation

    def count(self, kind: str | None = None, tenant: str | None = None) -> int:
        """Requests served, by kind and/or tenant; counted even when `record_hits` is off."""
        with self._lock:
            return sum(n for (k, t), n in self._counts.items()
                       if (kind is None or k == kind) and (tenant is None or t == tenant))

    def verify_access_token(self, token: str, audience: str | Iterable[str]) -> dict[str, Any]:
        """The claims of an access token this cloud issued, checked as a resource server checks
        one: RS256 signature by this cloud's key, `aud` one of `audience`, not expired. Raises
        jwt.PyJWTError (ExpiredSignatureError, InvalidAudienceError, ...) otherwise. For the
        peers of other Azure services (tests.peers.logs_ingestion_peer)."""
        return jwt.decode(token, self._signing_key.public_key(), algorithms=["RS256"],
                          audience=audience if isinstance(audience, str) else list(audience),
                          options={"require": ["exp", "iat", "tid"]})

    # ---- lifecycle

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeCloud is not started")
        return f"https://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
        self._server = _TLSServer(self, context)
        self._server.serve_in_background("fake-cloud", poll_interval=0.1)
        return self.base_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop_serving()
        if self._identity_server is not None:
            self._identity_server.stop_serving()
            self._identity_server = None

    def __enter__(self) -> FakeCloud:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def write_ca(self, path: str | Path) -> Path:
        """The CA certificate as PEM, for clients that take a file (requests' `verify`)."""
        self.ca.cert_pem.write_to_path(str(path))
        return Path(path)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this cloud's CA (httpx `verify=`)."""
        return ssl.create_default_context(cadata=self.ca.cert_pem.bytes().decode())

    # ---- request dispatch

    def _handle(self, request: _Request) -> _Response:
        if self.latency > 0:
            time.sleep(self.latency)  # outside every lock: concurrent requests overlap
        outcome = self._route(request)
        self._record(outcome, request)
        return outcome.response

    def _route(self, request: _Request) -> _Outcome:
        path = urlsplit(request.path).path
        tenant_id, _, rest = path.strip("/").partition("/")
        if request.method == "GET" and path.lower() == ALERTS_PATH:
            return self._alerts(request)
        if request.method == "GET" and path.lower() in (fake_mde.MDE_PATH, "/api/v1.0/alerts"):
            return self._mde_alerts(request)
        if request.method == "GET" and path.lower() == INCIDENTS_PATH:
            return self._incidents(request)
        if request.method == "GET" and (match := _INCIDENT_ALERTS.fullmatch(path)):
            return self._incident_alerts(request, match[1])
        if request.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
            return self._discovery(tenant_id, request)
        if request.method == "GET" and rest == "discovery/v2.0/keys":
            return _Outcome("keys", tenant_id, _json_response(200, self._jwks()))
        if request.method == "POST" and rest == "oauth2/v2.0/token":
            return self._token(tenant_id, request)
        error = _GraphError(404, "ResourceNotFound", f"Resource not found for the segment '{path}'.")
        return _Outcome("other", None, self._graph_error(error, request))

    def _record(self, outcome: _Outcome, request: _Request) -> None:
        hit = Hit(kind=outcome.kind, tenant=outcome.tenant, status=outcome.response.status,
                  path=request.path, prefer=request.headers.get("prefer"),
                  authorization="authorization" in request.headers, fault=outcome.fault,
                  error_code=outcome.error_code, auth=outcome.auth, t=time.time())
        with self._lock:
            self._counts[(hit.kind, hit.tenant)] += 1
            if self.record_hits:
                self.hits.append(hit)

    # ---- login: discovery and keys

    def _discovery(self, tenant_id: str, request: _Request) -> _Outcome:
        if tenant_id not in self.tenants:
            # Entra answers discovery of an unknown tenant with 400 AADSTS90002; MSAL's
            # constructor then raises ValueError.
            error = _EntraError(400, "invalid_tenant", 90002, _tenant_not_found(tenant_id))
            return _Outcome("discovery", tenant_id, self._entra_error(error, request), error_code=90002)
        return _Outcome("discovery", tenant_id, _json_response(200, self._openid_configuration(tenant_id)))

    def _openid_configuration(self, tenant_id: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant_id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "issuer": f"{base}/v2.0",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def _jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._signing_key.public_key()))
        jwk.update({"kid": self._kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    # ---- login: token endpoint

    def _token(self, tenant_id: str, request: _Request) -> _Outcome:
        form = dict(parse_qsl(request.body.decode()))
        try:
            tenant = self._token_tenant(tenant_id)
            auth = self._authenticate_client(tenant, form)
            scope = _client_credentials_scope(form)
        except _EntraError as error:
            return _Outcome("token", tenant_id, self._entra_error(error, request), error_code=error.code)
        body = {"token_type": "Bearer", "expires_in": tenant.expires_in,
                "ext_expires_in": tenant.expires_in,
                "access_token": self._access_token(tenant, scope.removesuffix("/.default"), auth)}
        return _Outcome("token", tenant_id, _json_response(200, body), auth=auth)

    def _token_tenant(self, tenant_id: str) -> Tenant:
        tenant = self.tenants.get(tenant_id)
        if tenant is None:
            raise _EntraError(400, "invalid_request", 90002, _tenant_not_found(tenant_id))
        if tenant.token_fail_status is not None:
            raise _EntraError(tenant.token_fail_status, "temporarily_unavailable", 90033,
                              "A transient error has occurred. Please try again.")
        return tenant

    def _authenticate_client(self, tenant: Tenant, form: dict[str, str]) -> str:
        """Check the app and its credential; returns how it authenticated (for `Hit.auth`)."""
        client_id = form.get("client_id", "")
        if form.get("grant_type") != "client_credentials":
            raise _EntraError(400, "unsupported_grant_type", 70003,
                              "The app requested an unsupported grant type.")
        if client_id != tenant.client_id or not tenant.consent:
            raise _EntraError(400, "unauthorized_client", 700016, (
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.tenant_id}'. This can happen if the application has not been installed "
                "by the administrator of the tenant or consented to by any user in the tenant. "
                "You may have sent your authentication request to the wrong tenant."))
        if form.get("client_assertion_type") == JWT_BEARER:
            return self._verify_assertion(tenant, form.get("client_assertion", ""))
        if "client_secret" in form:
            return _verify_secret(tenant, form["client_secret"])
        raise _EntraError(401, "invalid_client", 7000218, (
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'."))

    def _verify_assertion(self, tenant: Tenant, assertion: str) -> str:
        """Verify a certificate client assertion for real: RS256 with `x5t` or PS256 with
        `x5t#S256`, signed by the registered certificate's key, aimed at this token endpoint."""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.PyJWTError as error:
            raise _assertion_failed(f"malformed assertion: {error}") from None
        alg = header.get("alg")
        if alg not in ("RS256", "PS256"):
            raise _assertion_failed(f"algorithm {alg!r} is not allowed")
        if tenant.cert is None:
            raise _assertion_failed("the app has no registered certificate")
        thumb = _matching_thumbprint(tenant.cert, header)
        if thumb is None:
            raise _assertion_failed("no registered certificate matches the x5t/x5t#S256 header")
        try:
            # No jti replay check: MSAL re-sends the same assertion for about 9 minutes.
            jwt.decode(assertion, tenant.cert.public_key(), algorithms=[alg],
                       audience=self._openid_configuration(tenant.tenant_id)["token_endpoint"],
                       issuer=tenant.client_id, leeway=60,
                       options={"require": ["exp", "aud", "iss", "sub", "jti"]})
        except jwt.PyJWTError as error:
            raise _assertion_failed(f"{type(error).__name__}: {error}") from None
        return f"certificate:{alg}:{thumb}"

    def _access_token(self, tenant: Tenant, resource: str, auth: str) -> str:
        """A v1 access token as Graph receives one: Graph reads `tid` to pick the tenant."""
        now = int(time.time())
        uti = secrets.token_urlsafe(16)
        with self._lock:
            self._issued[uti] = time.monotonic()
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{tenant.tenant_id}/",
            "iat": now, "nbf": now, "exp": now + tenant.expires_in,
            "tid": tenant.tenant_id, "appid": tenant.client_id,
            "appidacr": "2" if auth.startswith("certificate") else "1",
            "idtyp": "app", "oid": tenant.client_id, "sub": tenant.client_id,
            "roles": _roles(tenant, resource), "uti": uti, "ver": "1.0",
        }
        return jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid})

    # ---- the managed identity endpoint (App Service, api-version 2019-08-01)

    def _identity_token(self, path: str, header: str | None) -> _Response:
        """App Service's token endpoint: `resource` and `api-version` required, X-IDENTITY-HEADER
        the secret it put in IDENTITY_HEADER, `client_id` picks a user-assigned identity. An
        unknown identity is a 400 with App Service's body (statusCode, message, correlationId:
        "Unable to load the proper Managed Identity.", as reported in Azure/azure-sdk-for-net
        issue 43691); a missing header or parameter is a 400 too here (the service's words for
        those are not documented)."""
        split = urlsplit(path)
        params = dict(parse_qsl(split.query))
        client_id, resource = params.get("client_id"), params.get("resource")
        header_ok = header is not None and secrets.compare_digest(header, self.identity_header)
        with self._lock:
            identity = self._identities.get(client_id)
        if split.path != "/msi/token":
            response = _identity_error(404, f"No route for {split.path}.")
        elif not header_ok:
            response = _identity_error(400, "The X-IDENTITY-HEADER header is missing or wrong.")
        elif params.get("api-version") != "2019-08-01" or not resource:
            response = _identity_error(400, "api-version 2019-08-01 and resource are required.")
        elif identity is None:
            response = _identity_error(400, "Unable to load the proper Managed Identity.")
        else:
            response = self._identity_answer(identity, resource.removesuffix("/.default"))
        with self._lock:
            self.identity_requests.append(IdentityRequest(client_id, resource, header_ok, response.status))
        return response

    def _identity_answer(self, identity: _Identity, resource: str) -> _Response:
        now = int(time.time())
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{identity.tenant_id}/",
            "iat": now, "nbf": now, "exp": now + identity.expires_in, "tid": identity.tenant_id,
            "appid": identity.client_id, "appidacr": "2", "idtyp": "app", "oid": identity.client_id,
            "sub": identity.client_id, "uti": secrets.token_urlsafe(16), "ver": "1.0",
        }
        token = jwt.encode(claims, self._signing_key, algorithm="RS256", headers={"kid": self._kid})
        return _json_response(200, {"access_token": token, "expires_on": str(now + identity.expires_in),
                                    "resource": resource, "token_type": "Bearer", "client_id": identity.client_id})

    def _entra_error(self, error: _EntraError, request: _Request) -> _Response:
        trace_id = str(uuid.uuid4())
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        timestamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        return _json_response(error.status, {
            "error": error.error,
            "error_description": (f"AADSTS{error.code}: {error.description} Trace ID: {trace_id} "
                                  f"Correlation ID: {correlation_id} Timestamp: {timestamp}"),
            "error_codes": [error.code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"{self.base_url}/error?code={error.code}",
        })

    # ---- the Defender for Endpoint API

    def _mde_alerts(self, request: _Request) -> _Outcome:
        tenant_id: str | None = None
        fault: Fault | None = None
        try:
            tenant = self._mde_tenant(request.headers.get("authorization"))
            tenant_id = tenant.tenant_id
            if tenant.graph_delay > 0:
                time.sleep(tenant.graph_delay)
            tenant.mde_quota.spend()
            fault = self._next_fault(tenant, tenant.faults)
            if fault is not None and fault.kind == "status":
                return _Outcome("mde_alerts", tenant_id, _fault_response(fault), fault=fault.kind)
            if fault is not None and fault.kind == "delay":
                time.sleep(fault.seconds)
            with self._lock:
                graph = [json.loads(entry.json) for entry in getattr(tenant.alerts, "_entries", {}).values()]
            body = fake_mde.answer(graph, urlsplit(request.path).query)
            response = _Response(200, body, {"Content-Type": "application/json; odata.metadata=minimal"})
        except fake_mde.MdeError as error:
            headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
            response = _json_response(error.status, error.body(), headers=headers)
        return _Outcome("mde_alerts", tenant_id, response, fault=fault.kind if fault else None)

    def _mde_tenant(self, authorization: str | None) -> Tenant:
        """The tenant of a valid WindowsDefenderATP token with the Alert.Read.All role."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise fake_mde.MdeError(401, "Unauthorized", "Authorization header is missing.")
        try:
            claims = jwt.decode(token.strip(), self._signing_key.public_key(), algorithms=["RS256"],
                                audience=fake_mde.MDE_RESOURCE, options={"require": ["exp", "iat", "tid"]})
        except jwt.PyJWTError:
            # A Graph token is not accepted (defender-source.md §4.6).
            raise fake_mde.MdeError(401, "Unauthorized", "Invalid or expired authorization header.") from None
        tenant = self.tenants.get(claims["tid"])
        if tenant is None:
            raise fake_mde.MdeError(401, "Unauthorized", "Invalid or expired authorization header.")
        if fake_mde.MDE_ROLE not in claims.get("roles", []):
            raise fake_mde.MdeError(403, "Forbidden", "The application does not have any of the required "
                                    "application permissions (Alert.ReadWrite.All, Alert.Read.All) to access "
                                    "the resource.")
        return tenant

    # ---- Graph alerts_v2

    def _alerts(self, request: _Request) -> _Outcome:
        return self._serve_graph("alerts", request, lambda tenant, roles, fault: self._alerts_page(
            tenant, request, fault, roles=roles))

    def _incidents(self, request: _Request) -> _Outcome:
        return self._serve_graph("incidents", request, lambda tenant, roles, fault: self._alerts_page(
            tenant, request, fault, roles=roles, collection=INCIDENTS_PATH))

    def _incident_alerts(self, request: _Request, incident_id: str) -> _Outcome:
        return self._serve_graph("incident_alerts", request, lambda tenant, roles, fault: self._incident_alerts_page(
            tenant, request, fault, roles, incident_id))

    def _serve_graph(self, kind: str, request: _Request, serve: Any) -> _Outcome:
        """Authenticate, take the collection's next fault, and serve (Graph errors answered)."""
        tenant_id: str | None = None
        fault: Fault | None = None
        try:
            tenant, roles = self._authenticate_bearer(request.headers.get("authorization"))
            tenant_id = tenant.tenant_id
            if tenant.graph_delay > 0:
                time.sleep(tenant.graph_delay)  # outside every lock: other tenants are served meanwhile
            fault = self._next_fault(tenant, tenant.faults if kind == "alerts" else tenant.incident_faults)
            response = serve(tenant, roles, fault)
        except _GraphError as error:
            response = self._graph_error(error, request)
        return _Outcome(kind, tenant_id, response, fault=fault.kind if fault else None)

    def _authenticate_bearer(self, authorization: str | None) -> tuple[Tenant, list[str]]:
        """The tenant named by a valid token's `tid`, exactly as Graph picks it."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthenticated("Access token is empty.")
        try:
            claims = jwt.decode(token.strip(), self._signing_key.public_key(), algorithms=["RS256"],
                                audience=[GRAPH_RESOURCE, GRAPH_APP_ID, self.base_url],
                                options={"require": ["exp", "iat", "tid", "uti"]})
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("Lifetime validation failed, the token is expired.") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated("Invalid audience.") from None
        except jwt.PyJWTError:
            raise _unauthenticated("Access token validation failure.") from None
        tenant = self.tenants.get(claims["tid"])
        if tenant is None:
            raise _unauthenticated("Access token validation failure.")
        if self._outlived(tenant, claims["uti"]):
            raise _unauthenticated("Lifetime validation failed, the token is expired.")
        return tenant, list(claims.get("roles") or [])

    def _outlived(self, tenant: Tenant, uti: str) -> bool:
        """Server-side expiry/revocation that MSAL cannot see: the token is older than
        `graph_token_lifetime`. Measured from the recorded issue time, not the whole-second
        `iat`, so a one-second lifetime is not off by up to a second."""
        if tenant.graph_token_lifetime is None:
            return False
        with self._lock:
            issued = self._issued.get(uti)
        return issued is None or time.monotonic() - issued > tenant.graph_token_lifetime

    def _next_fault(self, tenant: Tenant, faults: deque[Fault]) -> Fault | None:
        with self._lock:
            return faults.popleft() if faults else None

    def _alerts_page(self, tenant: Tenant, request: _Request, fault: Fault | None, *, roles: list[str],
                     collection: str = ALERTS_PATH) -> _Response:
        """A page of alerts, or of incidents (`collection`): the same options, paging and faults."""
        if fault is not None and fault.kind == "status":
            return _fault_response(fault)
        if fault is not None and fault.kind == "delay":
            time.sleep(fault.seconds)
        _require_role(tenant, roles, ALERTS_PERMISSION if collection == ALERTS_PATH else INCIDENTS_PERMISSION)
        store = tenant.alerts if collection == ALERTS_PATH else tenant.incidents
        expandable = ("alerts",) if collection == INCIDENTS_PATH else ()
        query, after = self._resolve_query(tenant, urlsplit(request.path).query, expandable)
        if query.expand and len(tenant.incidents) > EXPAND_ALERTS_LIMIT:
            # What Graph does on a large tenant, whatever the page size (elastic/integrations#18144).
            raise _GraphError(500, "InternalServerError", "An unexpected error occurred.")
        with self._lock:
            entries, next_key = store.page(query, after)
        if tenant.poisoned and any(entry.key[1] in tenant.poisoned for entry in entries):
            raise _GraphError(500, "InternalServerError", "An unexpected error occurred while processing the request.")
        include_unknown = _prefers_unknown_enums(request.headers.get("prefer"))
        name = collection.removeprefix("/v1.0/")
        head: dict[str, str] = {"@odata.context": f"{self.base_url}/v1.0/$metadata#{name}"}
        next_link = self._next_link(tenant, query, next_key, request, fault, collection)
        if next_link is not None:
            head["@odata.nextLink"] = next_link
        alerts = [entry.json if include_unknown else entry.masked_json for entry in entries]
        if query.expand:
            alerts = [self._expanded(tenant, entry) for entry in entries]
        body = json.dumps(head).encode()[:-1] + b', "value": [' + b", ".join(alerts) + b"]}"
        headers = {"Content-Type": _GRAPH_CONTENT_TYPE, **self._graph_headers(request)}
        if include_unknown:
            headers["Preference-Applied"] = PREFER_UNKNOWN_ENUMS
        if fault is not None and fault.kind == "truncated_json":
            body = body[: len(body) // 2]
        return _Response(200, body, headers)

    def _expanded(self, tenant: Tenant, entry: _Entry) -> bytes:
        """An incident with its alerts embedded (`$expand=alerts`, on a small tenant)."""
        incident = json.loads(entry.json)
        with self._lock:
            incident["alerts"] = [json.loads(alert.json) for alert in tenant.alerts.of_incident(incident["id"])]
        return json.dumps(incident).encode()

    def _incident_alerts_page(self, tenant: Tenant, request: _Request, fault: Fault | None, roles: list[str],
                              incident_id: str) -> _Response:
        """`/incidents/{id}/alerts`: the alerts whose incidentId is `incident_id`, `$select=id`
        giving ids only; `tenant.page_size` a page, then an offset `$skiptoken` nextLink."""
        if fault is not None and fault.kind == "status":
            return _fault_response(fault)
        _require_role(tenant, roles, INCIDENTS_PERMISSION)
        options = _single_valued(parse_qs(urlsplit(request.path).query, keep_blank_values=True))
        unsupported = sorted(name for name in options if name not in ("$select", "$skiptoken"))
        if unsupported:
            raise _bad_request(f"Query option '{unsupported[0]}' is not supported by this simulation.")
        with self._lock:
            known = tenant.incidents.has(incident_id)
            alerts = [json.loads(entry.json) for entry in tenant.alerts.of_incident(incident_id)]
        if not known:
            raise _GraphError(404, "NotFound", f"Incident {incident_id} was not found.")
        offset = int(options.get("$skiptoken", "0") or 0)
        chunk = alerts[offset: offset + tenant.page_size]
        if options.get("$select") == "id":
            chunk = [{"id": alert["id"]} for alert in chunk]
        body: dict[str, Any] = {"@odata.context": f"{self.base_url}/v1.0/$metadata#security/alerts_v2", "value": chunk}
        if offset + tenant.page_size < len(alerts):
            rest = urlencode({**{k: v for k, v in options.items() if k != "$skiptoken"},
                              "$skiptoken": str(offset + tenant.page_size)}, quote_via=quote, safe="$:',")
            body["@odata.nextLink"] = f"{self.base_url}{urlsplit(request.path).path}?{rest}"
        return _json_response(200, body, self._graph_headers(request))

    def _resolve_query(self, tenant: Tenant, raw_query: str,
                       expandable: tuple[str, ...] = ()) -> tuple[_Query, Key | None]:
        """A first page's query, or the saved state behind a nextLink's `$skiptoken`."""
        skiptoken = parse_qs(raw_query).get("$skiptoken")
        if skiptoken is None:
            return parse_query(raw_query, tenant.page_size, expandable), None
        with self._lock:
            cursor = self._cursors.get(skiptoken[0])
        if cursor is None or cursor.tenant_id != tenant.tenant_id:
            raise _GraphError(404, "ResourceNotFound", "The skip token is unknown or has expired.")
        return cursor.query, cursor.after

    def _next_link(self, tenant: Tenant, query: _Query, next_key: Key | None,
                   request: _Request, fault: Fault | None, collection: str = ALERTS_PATH) -> str | None:
        if fault is not None and fault.kind == "repeat_next_link":
            return self.base_url + request.path
        if fault is not None and fault.kind == "next_link_404":
            return self._skiptoken_link(query, secrets.token_urlsafe(24), collection)
        if next_key is None:
            return None
        token = secrets.token_urlsafe(24)
        with self._lock:
            self._cursors[token] = _Cursor(tenant.tenant_id, query, next_key)
        return self._skiptoken_link(query, token, collection)

    def _skiptoken_link(self, query: _Query, token: str, collection: str = ALERTS_PATH) -> str:
        options = urlencode([*query.options, ("$skiptoken", token)], quote_via=quote, safe="$:',")
        return f"{self.base_url}{collection}?{options}"

    def _graph_headers(self, request: _Request) -> dict[str, str]:
        request_id = str(uuid.uuid4())
        return {"request-id": request_id,
                "client-request-id": request.headers.get("client-request-id", request_id),
                "OData-Version": "4.0", "Cache-Control": "no-cache"}

    def _graph_error(self, error: _GraphError, request: _Request) -> _Response:
        headers = self._graph_headers(request)
        inner = {"date": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                 "request-id": headers["request-id"],
                 "client-request-id": headers["client-request-id"]}
        return _json_response(error.status,
                              {"error": {"code": error.code, "message": error.message,
                                         "innerError": inner}},
                              headers={**headers, **error.headers})


_GRAPH_CONTENT_TYPE = ("application/json;odata.metadata=minimal;odata.streaming=true;"
                       "IEEE754Compatible=false;charset=utf-8")


def _roles(tenant: Tenant, resource: str) -> list[str]:
    """The application roles consented for `resource` (a token carries those of its resource)."""
    if resource == fake_mde.MDE_RESOURCE:
        return [] if tenant.mde_forbidden else [fake_mde.MDE_ROLE]
    return sorted(tenant.permissions)


def _require_role(tenant: Tenant, roles: list[str], permission: str) -> None:
    """Graph's 403 for a token without the collection's application permission (its roles are
    what the tenant's admin consented to), or for a tenant that forbids Graph altogether."""
    if tenant.graph_forbidden or permission not in roles:
        write = permission.replace(".Read.", ".ReadWrite.")
        raise _GraphError(403, "Forbidden", (
            f"Missing application roles. API required roles: {permission}, {write}. "
            f"Application roles shown: {', '.join(roles)}."))


def _tenant_not_found(tenant_id: str) -> str:
    return (f"Tenant '{tenant_id}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud.")


def _client_credentials_scope(form: dict[str, str]) -> str:
    scope = form.get("scope", "")
    if not scope.endswith("/.default"):
        raise _EntraError(400, "invalid_scope", 1002012, (
            f"The provided value for scope {scope} is not valid. Client credential flows must "
            "have a scope value with /.default suffixed to the resource identifier."))
    return scope


def _verify_secret(tenant: Tenant, secret: str) -> str:
    if tenant.secret is None or not secrets.compare_digest(secret, tenant.secret):
        raise _EntraError(401, "invalid_client", 7000215, (
            "Invalid client secret provided. Ensure the secret being sent in the request is the "
            f"client secret value, not the client secret ID, for a secret added to app "
            f"'{tenant.client_id}'."))
    if tenant.secret_expired:
        raise _EntraError(401, "invalid_client", 7000222, (
            f"The provided client secret keys for app '{tenant.client_id}' are expired. Visit the "
            "Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or "
            "consider using certificate credentials for added security: "
            "https://aka.ms/certCreds."))
    return "client_secret"


def _assertion_failed(why: str) -> _EntraError:
    return _EntraError(401, "invalid_client", 700027,
                       f"Client assertion failed signature validation. ({why})")


def _matching_thumbprint(cert: x509.Certificate, header: dict[str, Any]) -> str | None:
    """Which thumbprint header names `cert`. MSAL keeps base64url `=` padding; Entra ignores it."""
    der = cert.public_bytes(serialization.Encoding.DER)
    expected = {"x5t#S256": _b64url(hashlib.sha256(der).digest()),
                "x5t": _b64url(hashlib.sha1(der).digest())}
    return next((name for name, value in expected.items()
                 if str(header.get(name, "")).rstrip("=") == value), None)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unauthenticated(message: str) -> _GraphError:
    return _GraphError(401, "InvalidAuthenticationToken", message, {
        "WWW-Authenticate": ('Bearer realm="", authorization_uri='
                             '"https://login.microsoftonline.com/common/oauth2/authorize", '
                             f'client_id="{GRAPH_APP_ID}"')})


def _fault_response(fault: Fault) -> _Response:
    headers = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
    if isinstance(fault.body, str):
        return _Response(fault.code, fault.body.encode(),
                         {"Content-Type": "text/plain; charset=utf-8", **headers})
    phrase = HTTPStatus(fault.code).phrase
    body = fault.body or {"error": {"code": phrase.replace(" ", ""), "message": f"{phrase}."}}
    return _json_response(fault.code, body, headers=headers)


# ---------------------------------------------------------------- standalone mode

STANDALONE_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "defender-forwarder/fake-cloud")
DEFAULT_CLIENT_ID = str(uuid.uuid5(STANDALONE_NAMESPACE, "client"))
DEFAULT_SECRET = "fake-cloud-secret"  # a test credential for a simulated tenant, nothing real


def standalone_tenant_id(index: int) -> str:
    """Deterministic, so a benchmark driver can name tenants without reading the ready file."""
    return str(uuid.uuid5(STANDALONE_NAMESPACE, f"tenant-{index}"))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.peers.fake_cloud",
        description="Serve a simulated Entra ID + Graph alerts_v2 until SIGTERM/SIGINT.")
    parser.add_argument("--tenants", type=int, default=10)
    parser.add_argument("--alerts-per-tenant", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--page-size", type=int, default=100, help="page size when a client sends no $top")
    parser.add_argument("--step-seconds", type=float, default=1.0,
                        help="spacing of lastUpdateDateTime; the newest alert is at start-up time")
    parser.add_argument("--seed", type=int, default=0, help="seed of the alert factory")
    parser.add_argument("--synthetic", action="store_true",
                        help="make alerts when a page asks for them, so millions cost no memory; "
                             "--live-per-tenant more appear at --live-rate a second from SIGUSR1 on")
    parser.add_argument("--live-per-tenant", type=int, default=0)
    parser.add_argument("--live-rate", type=float, default=100.0, help="live alerts a second, all tenants")
    parser.add_argument("--client-id", default=DEFAULT_CLIENT_ID)
    parser.add_argument("--secret", default=DEFAULT_SECRET)
    parser.add_argument("--ready-file", type=Path, required=True,
                        help="JSON written once serving: base_url, ca_file, client_id, secret, tenant_ids")
    parser.add_argument("--ca-file", type=Path, help="default: <ready-file>.ca.pem")
    return parser.parse_args(argv)


def build_standalone(args: argparse.Namespace) -> tuple[FakeCloud, list[str], LiveRelease]:
    cloud = FakeCloud(latency=args.latency, record_hits=False)
    step = dt.timedelta(seconds=args.step_seconds)
    # The newest alert is "now", so a poller's default look-back window finds the data.
    start = dt.datetime.now(dt.UTC) - (args.alerts_per_tenant - 1) * step
    tenant_ids = [standalone_tenant_id(i) for i in range(args.tenants)]
    release = LiveRelease(args.live_rate, args.tenants)
    templates = alert_templates(64, args.seed) if args.synthetic else []
    for index, tenant_id in enumerate(tenant_ids):
        tenant = cloud.add_tenant(tenant_id, client_id=args.client_id, secret=args.secret,
                                  page_size=args.page_size)
        if args.synthetic:
            tenant.alerts = SyntheticAlerts(tenant_id, index, templates, backlog=args.alerts_per_tenant,
                                            backlog_start=start, step=step, live=args.live_per_tenant,
                                            release=release)
        else:
            cloud.add_alerts(tenant_id, make_alerts(args.alerts_per_tenant, tenant_id, start, step, args.seed))
    return cloud, tenant_ids, release


def _write_ready_file(path: Path, info: dict[str, Any]) -> None:
    # Write-then-rename, so a driver polling for the file never reads half of it.
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(info, indent=1))
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    cloud, tenant_ids, release = build_standalone(args)
    stopping = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: release.begin())
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    base_url = cloud.start()
    ca_file = cloud.write_ca(args.ca_file or args.ready_file.with_suffix(".ca.pem"))
    _write_ready_file(args.ready_file, {
        "base_url": base_url, "ca_file": str(ca_file.resolve()), "client_id": args.client_id,
        "secret": args.secret, "tenant_ids": tenant_ids, "pid": os.getpid()})
    stopping.wait()
    cloud.stop()
    print(json.dumps({kind: cloud.count(kind) for kind in ("discovery", "keys", "token", "alerts", "other")}),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
