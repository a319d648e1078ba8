"""The simulated Microsoft cloud, driven by the real msal and httpx over loopback HTTPS.

No mocking: every check below sends bytes across a socket to tests/peers/fake_cloud.py.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from core.model.schema import TenantRef
from mappings.graph_alerts_v2 import normalise
from tests.peers.fake_cloud import (
    TICKS_PER_SECOND,
    ClientCert,
    FakeCloud,
    Fault,
    LiveRelease,
    SyntheticAlerts,
    Tenant,
    alert_templates,
    make_client_cert,
    parse_ticks,
    standalone_tenant_id,
)

APP_ID = "6f1e8a4c-0d1b-4c53-9a57-1f2e3d4c5b6a"
SECRET = "correct-horse-battery-staple"
GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]
ALERTS = "/v1.0/security/alerts_v2"
REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    # One server for the module: tests stay independent by each using fresh tenants.
    with FakeCloud() as running:
        yield running


@pytest.fixture(scope="module")
def ca_file(cloud: FakeCloud, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cloud.write_ca(tmp_path_factory.mktemp("ca") / "ca.pem")


@pytest.fixture(scope="module")
def client_cert() -> ClientCert:
    return make_client_cert()


def new_tenant(cloud: FakeCloud, **settings: Any) -> Tenant:
    settings.setdefault("client_id", APP_ID)
    settings.setdefault("secret", SECRET)
    return cloud.add_tenant(str(uuid.uuid4()), **settings)


def msal_app(cloud: FakeCloud, ca_file: Path, tenant_id: str,
             credential: str | dict[str, str] = SECRET,
             client_id: str = APP_ID) -> msal.ConfidentialClientApplication:
    """The constructor the forwarder uses: own session (the image sets REQUESTS_CA_BUNDLE,
    which would beat `verify`), no instance discovery, no region probe."""
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca_file)
    session.request = functools.partial(session.request, timeout=10)  # type: ignore[method-assign]
    return msal.ConfidentialClientApplication(
        client_id, client_credential=credential, authority=f"{cloud.base_url}/{tenant_id}",
        instance_discovery=False, azure_region=False, http_client=session)


def access_token(cloud: FakeCloud, ca_file: Path, tenant_id: str,
                 scopes: list[str] = GRAPH_SCOPE) -> str:
    result = msal_app(cloud, ca_file, tenant_id).acquire_token_for_client(scopes)
    return result["access_token"]


def graph(cloud: FakeCloud, token: str | None, timeout: float = 10.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=cloud.base_url, verify=cloud.client_ssl_context(),
                        trust_env=False, headers=headers, timeout=timeout)


def alert(alert_id: str, updated: str, **fields: Any) -> dict[str, Any]:
    return {"id": alert_id, "lastUpdateDateTime": updated, "createdDateTime": updated,
            "severity": "medium", "status": "new", "title": alert_id,
            "serviceSource": "microsoftDefenderForEndpoint", "evidence": [], **fields}


def filtered_ids(client: httpx.Client, odata_filter: str) -> list[str]:
    response = client.get(ALERTS, params={"$filter": odata_filter, "$orderby": "lastUpdateDateTime asc"})
    assert response.status_code == 200, response.text
    return [a["id"] for a in response.json()["value"]]


def follow_pages(client: httpx.Client, url: str, params: dict[str, str] | None = None
                 ) -> list[list[dict[str, Any]]]:
    pages = []
    response = client.get(url, params=params)
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["value"])
        if "@odata.nextLink" not in body:
            return pages
        response = client.get(body["@odata.nextLink"])


def graph_error_code(response: httpx.Response) -> str:
    return response.json()["error"]["code"]


# ---------------------------------------------------------------- Entra: tokens

def test_secret_token_names_tenant_app_audience_and_expiry(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, expires_in=3599)
    app = msal_app(cloud, ca_file, tenant.tenant_id)
    before = time.time()
    result = app.acquire_token_for_client(GRAPH_SCOPE)

    assert result["token_type"] == "Bearer" and result["token_source"] == "identity_provider"
    with graph(cloud, None) as client:
        jwks = client.get(f"/{tenant.tenant_id}/discovery/v2.0/keys").json()
    claims = jwt.decode(result["access_token"], jwt.PyJWKSet.from_dict(jwks).keys[0].key,
                        algorithms=["RS256"], audience="https://graph.microsoft.com")
    assert claims["tid"] == tenant.tenant_id and claims["appid"] == APP_ID
    assert before + 3590 <= claims["exp"] <= time.time() + 3600
    assert cloud.count("discovery", tenant.tenant_id) == 1
    assert [h.auth for h in cloud.hits if h.kind == "token" and h.tenant == tenant.tenant_id] == ["client_secret"]

    assert app.acquire_token_for_client(GRAPH_SCOPE)["token_source"] == "cache"
    assert cloud.count("token", tenant.tenant_id) == 1


@pytest.mark.parametrize("fields, expected_auth", [
    (("private_key", "thumbprint"), "certificate:RS256:x5t"),
    (("private_key", "public_certificate"), "certificate:PS256:x5t#S256"),
    (("private_key", "thumbprint", "public_certificate"), "certificate:RS256:x5t"),
])
def test_certificate_assertions_are_verified(cloud: FakeCloud, ca_file: Path, client_cert: ClientCert,
                                             fields: tuple[str, ...], expected_auth: str) -> None:
    tenant = new_tenant(cloud, secret=None, cert=client_cert.cert)
    forms = {"private_key": client_cert.key_pem, "thumbprint": client_cert.sha1_hex,
             "public_certificate": client_cert.cert_pem}
    result = msal_app(cloud, ca_file, tenant.tenant_id,
                      {name: forms[name] for name in fields}).acquire_token_for_client(GRAPH_SCOPE)

    assert "access_token" in result, result
    assert jwt.decode(result["access_token"], options={"verify_signature": False})["appidacr"] == "2"
    assert cloud.hits[-1].kind == "token" and cloud.hits[-1].auth == expected_auth


@pytest.mark.parametrize("case, tenant_settings, client_id, status, error, code", [
    ("no consent", {"consent": False}, APP_ID, 400, "unauthorized_client", 700016),
    ("other app", {}, "0c0ffee0-0000-4000-8000-000000000000", 400, "unauthorized_client", 700016),
    ("wrong secret", {"secret": "rotated-secret"}, APP_ID, 401, "invalid_client", 7000215),
    ("expired secret", {"secret_expired": True}, APP_ID, 401, "invalid_client", 7000222),
])
def test_token_errors_reach_the_msal_result(cloud: FakeCloud, ca_file: Path, case: str,
                                            tenant_settings: dict[str, Any], client_id: str,
                                            status: int, error: str, code: int) -> None:
    tenant = new_tenant(cloud, **tenant_settings)
    result = msal_app(cloud, ca_file, tenant.tenant_id, client_id=client_id).acquire_token_for_client(GRAPH_SCOPE)

    assert result["error"] == error and result["error_codes"] == [code], case
    assert result["error_description"].startswith(f"AADSTS{code}: ")
    assert {"trace_id", "correlation_id", "timestamp"} <= result.keys()
    last = cloud.hits[-1]
    assert (last.kind, last.tenant, last.status, last.error_code) == ("token", tenant.tenant_id, status, code)


def test_unregistered_certificate_is_rejected(cloud: FakeCloud, ca_file: Path, client_cert: ClientCert) -> None:
    tenant = new_tenant(cloud, secret=None, cert=client_cert.cert)
    stranger = make_client_cert("not-registered")
    credential = {"private_key": stranger.key_pem, "thumbprint": stranger.sha1_hex}
    result = msal_app(cloud, ca_file, tenant.tenant_id, credential).acquire_token_for_client(GRAPH_SCOPE)

    assert result["error"] == "invalid_client" and result["error_codes"] == [700027]


def test_consent_revoked_mid_run(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    token = access_token(cloud, ca_file, tenant.tenant_id)
    tenant.consent = False
    # A fresh app: MSAL would otherwise answer from its token cache.
    result = msal_app(cloud, ca_file, tenant.tenant_id).acquire_token_for_client(GRAPH_SCOPE)

    assert result["error_codes"] == [700016]
    with graph(cloud, token) as client:  # as in Entra, an issued token stays valid until it expires
        assert client.get(ALERTS).status_code == 200


def test_unknown_tenant_is_aadsts90002(cloud: FakeCloud, ca_file: Path) -> None:
    with pytest.raises(ValueError) as raised:
        msal_app(cloud, ca_file, "no-such-tenant")
    assert "AADSTS90002" in str(raised.value.__context__)

    with graph(cloud, None) as client:
        response = client.post("/no-such-tenant/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": APP_ID, "client_secret": SECRET,
            "scope": GRAPH_SCOPE[0]})
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_token_endpoint_outage_raises_in_msal(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, token_fail_status=503)
    with pytest.raises(msal.exceptions.MsalServiceError):
        msal_app(cloud, ca_file, tenant.tenant_id).acquire_token_for_client(GRAPH_SCOPE)
    assert cloud.hits[-1].status == 503


# ---------------------------------------------------------------- Graph: authentication

def test_tenant_comes_from_the_token(cloud: FakeCloud, ca_file: Path) -> None:
    tenant_a, tenant_b = new_tenant(cloud, page_size=2), new_tenant(cloud)
    cloud.add_alerts(tenant_a.tenant_id, [alert(f"a{i}", f"2024-05-01T10:00:0{i}Z") for i in range(3)])
    cloud.add_alerts(tenant_b.tenant_id, [alert("b0", "2024-05-01T10:00:00Z")])

    with graph(cloud, access_token(cloud, ca_file, tenant_a.tenant_id)) as client_a:
        first_page = client_a.get(ALERTS).json()
        pages_a = follow_pages(client_a, ALERTS)
    with graph(cloud, access_token(cloud, ca_file, tenant_b.tenant_id)) as client_b:
        pages_b = follow_pages(client_b, ALERTS)
        # A nextLink of tenant A is no way into A's data with B's token.
        stolen = client_b.get(first_page["@odata.nextLink"])

    assert sorted(a["id"] for page in pages_a for a in page) == ["a0", "a1", "a2"]
    assert [a["id"] for page in pages_b for a in page] == ["b0"]
    assert stolen.status_code == 404
    assert cloud.count("alerts", tenant_b.tenant_id) == 2


def test_invalid_tokens_get_401(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    genuine = access_token(cloud, ca_file, tenant.tenant_id)
    claims = jwt.decode(genuine, options={"verify_signature": False})
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    candidates = {
        "missing": None,
        "garbage": "not-a-jwt",
        "foreign-signed": jwt.encode(claims, foreign_key, algorithm="RS256"),
        "other audience": access_token(cloud, ca_file, tenant.tenant_id,
                                       ["https://api.securitycenter.microsoft.com/.default"]),
    }
    for case, token in candidates.items():
        with graph(cloud, token) as client:
            response = client.get(ALERTS)
        assert response.status_code == 401, case
        assert graph_error_code(response) == "InvalidAuthenticationToken", case
        assert response.headers["WWW-Authenticate"].startswith("Bearer ")


def test_forbidden_tenant_gets_403(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, graph_forbidden=True)
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        response = client.get(ALERTS)
    assert response.status_code == 403 and graph_error_code(response) == "Forbidden"


def test_server_side_token_lifetime(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, graph_token_lifetime=0.5)
    app = msal_app(cloud, ca_file, tenant.tenant_id)
    first = app.acquire_token_for_client(GRAPH_SCOPE)["access_token"]
    with graph(cloud, first) as client:
        assert client.get(ALERTS).status_code == 200
        time.sleep(0.6)
        expired = client.get(ALERTS)
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]

    # MSAL cannot know: it still hands out the cached token until told to drop it.
    assert app.acquire_token_for_client(GRAPH_SCOPE)["access_token"] == first
    app.remove_tokens_for_client()
    with graph(cloud, app.acquire_token_for_client(GRAPH_SCOPE)["access_token"]) as client:
        assert client.get(ALERTS).status_code == 200


# ---------------------------------------------------------------- Graph: queries

FRACTION_FILTERS = [
    ("lastUpdateDateTime ge 2024-05-01T10:00:00.1234567Z", ["567", "568", "next-second"]),
    ("lastUpdateDateTime gt 2024-05-01T10:00:00.1234567Z", ["568", "next-second"]),
    # Fewer digits are zero-padded: a cursor cut to microseconds re-reads that microsecond.
    ("lastUpdateDateTime gt 2024-05-01T10:00:00.123456Z", ["566", "567", "568", "next-second"]),
    ("lastUpdateDateTime ge 2024-05-01T12:00:00.1234568+02:00", ["568", "next-second"]),
    ("lastUpdateDateTime ge 2024-05-01T10:00:00.1234567Z and lastUpdateDateTime lt 2024-05-01T10:00:01Z",
     ["567", "568"]),
    ("lastUpdateDateTime ge 2024-05-01T10:00:00Z and severity eq 'high'", ["567", "next-second"]),
]


def test_filter_compares_all_seven_fraction_digits(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_alerts(tenant.tenant_id, [
        alert("566", "2024-05-01T10:00:00.1234566Z"),
        alert("567", "2024-05-01T10:00:00.1234567Z", severity="high"),
        alert("568", "2024-05-01T10:00:00.1234568Z"),
        alert("next-second", "2024-05-01T10:00:01Z", severity="high"),
    ])
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        for odata_filter, expected in FRACTION_FILTERS:
            assert filtered_ids(client, odata_filter) == expected, odata_filter


@pytest.mark.parametrize("params", [
    {"$filter": "investigationState eq 'running'"},
    {"$filter": "status eq 'new' or status eq 'resolved'"},
    {"$filter": "lastUpdateDateTime ge '2024-05-01T10:00:00Z'"},
    {"$filter": "lastUpdateDateTime ge 2024-05-01T10:00:00.12345678Z"},
    {"$top": "1001"},
    {"$orderby": "severity desc"},
    {"$skip": "10"},
])
def test_unsupported_queries_get_400(cloud: FakeCloud, ca_file: Path, params: dict[str, str]) -> None:
    tenant = new_tenant(cloud)
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        response = client.get(ALERTS, params=params)
    assert response.status_code == 400 and graph_error_code(response) == "BadRequest"


@pytest.mark.parametrize("params, page_sizes, newest_first", [
    (None, [7, 7, 7, 4], True),  # server page size, Graph's default order
    ({"$orderby": "lastUpdateDateTime asc", "$top": "10"}, [10, 10, 5], False),
    ({"$orderby": "lastUpdateDateTime desc", "$filter": "lastUpdateDateTime ge 2024-05-01T10:00:00Z"},
     [7, 7, 7, 4], True),
])
def test_paging_returns_every_alert_exactly_once(cloud: FakeCloud, ca_file: Path,
                                                  params: dict[str, str] | None,
                                                  page_sizes: list[int], newest_first: bool) -> None:
    tenant = new_tenant(cloud, page_size=7)
    # Three alerts share each timestamp, so ties straddle page boundaries.
    stored = [alert(f"id-{i:02d}", f"2024-05-01T10:00:{i // 3:02d}.5000001Z") for i in range(25)]
    cloud.add_alerts(tenant.tenant_id, stored)
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        first = client.get(ALERTS, params=params).json()
        pages = follow_pages(client, ALERTS, params)

    assert first["@odata.context"] == f"{cloud.base_url}/v1.0/$metadata#security/alerts_v2"
    assert first["@odata.nextLink"].startswith(f"{cloud.base_url}{ALERTS}?")
    assert "$skiptoken=" in first["@odata.nextLink"]
    assert [len(page) for page in pages] == page_sizes
    seen = [a["lastUpdateDateTime"] + a["id"] for page in pages for a in page]
    assert seen == sorted(seen, reverse=newest_first)
    assert sorted(a["id"] for page in pages for a in page) == sorted(a["id"] for a in stored)


def test_update_replaces_the_stored_version(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_alerts(tenant.tenant_id, [alert("x", "2024-05-01T10:00:00Z"), alert("y", "2024-05-01T10:30:00Z")])
    cloud.add_alerts(tenant.tenant_id, [alert("x", "2024-05-01T11:00:00Z", status="resolved")])
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        listed = client.get(ALERTS).json()["value"]
        assert filtered_ids(client, "lastUpdateDateTime ge 2024-05-01T10:45:00Z") == ["x"]
    assert [(a["id"], a["status"]) for a in listed] == [("x", "resolved"), ("y", "new")]


def test_prefer_header_reveals_evolved_enum_members(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_alerts(tenant.tenant_id, [alert(
        "cloud", "2024-05-01T10:00:00Z", serviceSource="microsoftSentinel",
        detectionSource="microsoftDefenderForCloud",
        evidence=[{"@odata.type": "#microsoft.graph.security.ipEvidence", "remediationStatus": "active"}])])
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        plain = client.get(ALERTS)
        opted_in = client.get(ALERTS, headers={"Prefer": "include-unknown-enum-members"})

    masked, = plain.json()["value"]
    assert (masked["serviceSource"], masked["detectionSource"]) == ("unknownFutureValue", "unknownFutureValue")
    assert masked["evidence"][0]["remediationStatus"] == "unknownFutureValue"
    assert "Preference-Applied" not in plain.headers
    revealed, = opted_in.json()["value"]
    assert revealed["serviceSource"] == "microsoftSentinel"
    assert revealed["detectionSource"] == "microsoftDefenderForCloud"
    assert opted_in.headers["Preference-Applied"] == "include-unknown-enum-members"
    assert cloud.hits[-1].prefer == "include-unknown-enum-members"


# ---------------------------------------------------------------- Graph: faults

def test_throttling_faults_are_consumed_in_order(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.inject(tenant.tenant_id, Fault.status(429, retry_after=2), Fault.status(503))
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        throttled, unavailable, recovered = client.get(ALERTS), client.get(ALERTS), client.get(ALERTS)

    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "2"
    assert graph_error_code(throttled) == "TooManyRequests"
    assert unavailable.status_code == 503 and "Retry-After" not in unavailable.headers
    assert recovered.status_code == 200
    faults = [h.fault for h in cloud.hits if h.tenant == tenant.tenant_id and h.kind == "alerts"]
    assert faults == ["status", "status", None]


def test_truncated_json_fault(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_alerts(tenant.tenant_id, [alert("a", "2024-05-01T10:00:00Z")])
    cloud.inject(tenant.tenant_id, Fault.truncated_json())
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        cut, whole = client.get(ALERTS), client.get(ALERTS)

    assert cut.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        cut.json()
    assert whole.content.startswith(cut.content) and whole.json()["value"][0]["id"] == "a"


def test_delay_fault_trips_the_client_timeout(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.inject(tenant.tenant_id, Fault.delay(0.6))
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id), timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.get(ALERTS)
        assert client.get(ALERTS).status_code == 200


def test_a_slow_tenant_answers_every_request_late_and_no_other_tenant_waits(cloud: FakeCloud,
                                                                            ca_file: Path) -> None:
    slow, fast = new_tenant(cloud, graph_delay=0.6), new_tenant(cloud)
    with graph(cloud, access_token(cloud, ca_file, slow.tenant_id), timeout=0.2) as client:
        for _ in range(2):  # every request, not the next one only (as Fault.delay)
            with pytest.raises(httpx.ReadTimeout):
                client.get(ALERTS)
        with graph(cloud, access_token(cloud, ca_file, fast.tenant_id), timeout=0.2) as other:
            assert other.get(ALERTS).status_code == 200  # served while the slow one's requests hang
        slow.graph_delay = 0.0  # settable while the server runs
        assert client.get(ALERTS).status_code == 200


def test_next_link_faults(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, page_size=1)
    cloud.add_alerts(tenant.tenant_id, [alert("a", "2024-05-01T10:00:00Z"), alert("b", "2024-05-01T10:00:01Z")])
    cloud.inject(tenant.tenant_id, Fault.repeat_next_link(), Fault.next_link_404())
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        repeated = client.get(ALERTS, params={"$top": "1"})
        dangling = client.get(ALERTS).json()["@odata.nextLink"]
        missing = client.get(dangling)

    assert repeated.json()["@odata.nextLink"] == str(repeated.request.url)
    assert missing.status_code == 404 and graph_error_code(missing) == "ResourceNotFound"


# ---------------------------------------------------------------- performance knobs, standalone

def test_latency_applies_to_login_and_graph(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.latency = 0.15
    try:
        started = time.perf_counter()
        app = msal_app(cloud, ca_file, tenant.tenant_id)  # discovery
        token = app.acquire_token_for_client(GRAPH_SCOPE)["access_token"]
        with graph(cloud, token) as client:
            assert client.get(ALERTS).status_code == 200
        elapsed = time.perf_counter() - started
    finally:
        cloud.latency = 0.0
    assert elapsed >= 3 * 0.15


def test_concurrent_requests_overlap_and_are_all_counted(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, page_size=5)
    cloud.add_alerts(tenant.tenant_id, [alert(f"a{i}", f"2024-05-01T10:00:{i:02d}Z") for i in range(12)])
    clients = [graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) for _ in range(16)]

    def fetch_all(run: int) -> int:
        # Each run uses its own keep-alive connection, as a worker pool of the forwarder would.
        return sum(len(page) for page in follow_pages(clients[run % 16], ALERTS))

    cloud.latency = 0.05
    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=16) as pool:
            totals = list(pool.map(fetch_all, range(32)))
        elapsed = time.perf_counter() - started
    finally:
        cloud.latency = 0.0
        for client in clients:
            client.close()

    assert totals == [12] * 32
    assert cloud.count("alerts", tenant.tenant_id) == 32 * 3
    assert elapsed < 96 * 0.05 / 4  # serial would take 4.8 s


@pytest.mark.slow
def test_synthetic_tenants_page_a_backlog_then_release_live_alerts(cloud: FakeCloud, ca_file: Path) -> None:
    release = LiveRelease(rate=200.0, tenants=2)
    templates = alert_templates(3)
    backlog_start = datetime(2026, 1, 1, tzinfo=UTC)
    tenants = [new_tenant(cloud, page_size=4) for _ in range(2)]
    for index, tenant in enumerate(tenants):
        tenant.alerts = SyntheticAlerts(tenant.tenant_id, index, templates, backlog=10, backlog_start=backlog_start,
                                        step=timedelta(seconds=1.5), live=6, release=release)
    second = tenants[1].tenant_id
    with graph(cloud, access_token(cloud, ca_file, second)) as client:
        oldest_first = {"$orderby": "lastUpdateDateTime asc"}
        before = [a for page in follow_pages(client, ALERTS, oldest_first) for a in page]
        release.begin()
        time.sleep(6 * 2 / 200 + 0.05)  # every live alert of both tenants has appeared
        after = [a for page in follow_pages(client, ALERTS, oldest_first) for a in page]
        newest_first = [a for page in follow_pages(client, ALERTS) for a in page]
        since = after[12]["lastUpdateDateTime"]
        filtered = filtered_ids(client, f"lastUpdateDateTime ge {since}")

    assert [a["lastUpdateDateTime"] for a in before[:2]] == ["2026-01-01T00:00:00.0000000Z",
                                                             "2026-01-01T00:00:01.5000000Z"]
    assert len(before) == 10 and len(after) == 16 and after[:10] == before and newest_first == after[::-1]
    assert len({a["id"] for a in after}) == 16 and {a["tenantId"] for a in after} == {second}
    live_ticks = [parse_ticks(a["lastUpdateDateTime"]) for a in after[10:]]
    assert live_ticks == sorted(live_ticks) and live_ticks[0] / TICKS_PER_SECOND > time.time() - 5
    assert filtered == [a["id"] for a in after[12:]]
    for raw in after:  # the forwarder's own mapping takes every one of them
        assert normalise(raw, TenantRef(id=second, label="synthetic"), datetime.now(UTC)).id == raw["id"]


def test_standalone_process_serves_generated_tenants(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.fake_cloud", "--tenants", "3", "--alerts-per-tenant", "5",
         "--page-size", "2", "--ready-file", str(ready)],
        cwd=REPO, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert process.poll() is None and time.monotonic() < deadline, "fake cloud did not start"
            time.sleep(0.05)
        info = json.loads(ready.read_text())
        assert info["tenant_ids"] == [standalone_tenant_id(i) for i in range(3)]

        session = requests.Session()
        session.trust_env = False
        session.verify = info["ca_file"]
        app = msal.ConfidentialClientApplication(
            info["client_id"], client_credential=info["secret"],
            authority=f"{info['base_url']}/{info['tenant_ids'][1]}",
            instance_discovery=False, azure_region=False, http_client=session)
        token = app.acquire_token_for_client(GRAPH_SCOPE)["access_token"]
        with httpx.Client(verify=ssl.create_default_context(cafile=info["ca_file"]), trust_env=False,
                          headers={"Authorization": f"Bearer {token}"}) as client:
            pages = follow_pages(client, info["base_url"] + ALERTS)
        assert [len(page) for page in pages] == [2, 2, 1]
        assert {a["tenantId"] for page in pages for a in page} == {info["tenant_ids"][1]}
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert json.loads(stderr.strip().splitlines()[-1])["alerts"] == 3


# ---------------------------------------------------------------- the Defender for Endpoint API

MDE_SCOPE = ["https://api.securitycenter.microsoft.com/.default"]
MDE_ALERTS = "/api/alerts"


def mde_client(cloud: FakeCloud, ca_file: Path, tenant: Tenant) -> httpx.Client:
    return graph(cloud, access_token(cloud, ca_file, tenant.tenant_id, MDE_SCOPE))


def test_mde_serves_the_tenants_endpoint_alerts_in_mdes_shape(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    device = {"@odata.type": "#microsoft.graph.security.deviceEvidence", "mdeDeviceId": "m1",
              "deviceDnsName": "pc1.contoso.com"}
    user = {"@odata.type": "#microsoft.graph.security.userEvidence", "userAccount": {"accountName": "kim"}}
    cloud.add_alerts(tenant.tenant_id, [
        alert("da1_1", "2026-01-01T00:00:01Z", incidentId="42", evidence=[device, user]),
        alert("da1_2", "2026-01-01T00:00:02Z"),
        alert("fa1_3", "2026-01-01T00:00:03Z", serviceSource="microsoftDefenderForOffice365"),
    ])
    with mde_client(cloud, ca_file, tenant) as client:
        body = client.get(MDE_ALERTS, params={"$expand": "evidence"}).json()
        plain = client.get(MDE_ALERTS).json()
    assert "@odata.nextLink" not in body
    first = body["value"][0]
    assert [a["id"] for a in body["value"]] == ["da1_1", "da1_2"]  # Office's alert is not MDE's
    assert (first["incidentId"], first["severity"], first["status"]) == (42, "Medium", "New")
    assert first["lastUpdateTime"] == "2026-01-01T00:00:01Z" and first["machineId"] == "m1"
    assert first["evidence"] == [{"entityType": "User", "evidenceCreationTime": None, "accountName": "kim",
                                  "domainName": None, "userSid": None, "aadUserId": None,
                                  "userPrincipalName": None}]
    assert plain["value"][0]["evidence"] == []  # only with $expand=evidence


def test_mde_filter_orderby_top_and_skip(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_alerts(tenant.tenant_id, [alert(f"da_{i}", f"2026-01-01T00:00:0{i}Z") for i in range(6)])
    with mde_client(cloud, ca_file, tenant) as client:
        def ids(**params: str) -> list[str]:
            response = client.get(MDE_ALERTS, params=params)
            assert response.status_code == 200, response.text
            assert "@odata.nextLink" not in response.json()
            return [a["id"] for a in response.json()["value"]]

        assert ids(**{"$filter": "lastUpdateTime ge 2026-01-01T00:00:02Z"}) == ["da_2", "da_3", "da_4", "da_5"]
        assert ids(**{"$filter": "lastUpdateTime gt 2026-01-01T00:00:02Z and lastUpdateTime lt "
                                 "2026-01-01T00:00:05Z"}) == ["da_3", "da_4"]
        assert ids(**{"$orderby": "lastUpdateTime desc", "$top": "2"}) == ["da_5", "da_4"]
        assert ids(**{"$orderby": "lastUpdateTime asc", "$top": "2", "$skip": "3"}) == ["da_3", "da_4"]
        for bad in ({"$expand": "alerts"}, {"$top": "10001"}, {"$select": "id"},
                    {"$filter": "severity eq 'High'"}):
            response = client.get(MDE_ALERTS, params=bad)
            assert response.status_code == 400 and response.json()["error"]["code"] in ("ODataError", "InvalidInput")


def test_mde_wants_its_own_token_and_its_own_consent(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:  # a Graph token
        assert client.get(MDE_ALERTS).status_code == 401
    with mde_client(cloud, ca_file, tenant) as client:  # and an MDE token is no Graph token
        assert client.get(ALERTS).status_code == 401
    refused = new_tenant(cloud, mde_forbidden=True)
    with mde_client(cloud, ca_file, refused) as client:
        response = client.get(MDE_ALERTS)
    assert response.status_code == 403 and response.json()["error"]["code"] == "Forbidden"
    with graph(cloud, access_token(cloud, ca_file, refused.tenant_id)) as client:
        assert client.get(ALERTS).status_code == 200  # Graph's consent is another


def test_mde_quotas_per_tenant_minute_and_hour(cloud: FakeCloud, ca_file: Path) -> None:
    busy, other = new_tenant(cloud, mde_per_minute=3), new_tenant(cloud, mde_per_minute=50, mde_per_hour=2)
    with mde_client(cloud, ca_file, busy) as client:
        assert [client.get(MDE_ALERTS).status_code for _ in range(4)] == [200, 200, 200, 429]
        throttled = client.get(MDE_ALERTS)
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 60
    with mde_client(cloud, ca_file, other) as client:  # another tenant's budget, and the hour's
        codes = [client.get(MDE_ALERTS).status_code for _ in range(3)]
        assert codes == [200, 200, 429] and int(client.get(MDE_ALERTS).headers["Retry-After"]) > 60


def test_mde_faults_use_the_fault_queue(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.inject(tenant.tenant_id, Fault.status(503, retry_after=2), Fault.status(500))
    with mde_client(cloud, ca_file, tenant) as client:
        first, second, third = (client.get(MDE_ALERTS) for _ in range(3))
    assert (first.status_code, first.headers["Retry-After"]) == (503, "2")
    assert (second.status_code, third.status_code) == (500, 200)
    assert cloud.count("mde_alerts", tenant.tenant_id) == 3


# ---------------------------------------------------------------- Graph incidents

INCIDENTS = "/v1.0/security/incidents"


def incident(incident_id: str, updated: str, **fields: Any) -> dict[str, Any]:
    return {"id": incident_id, "lastUpdateDateTime": updated, "createdDateTime": updated,
            "severity": "medium", "status": "active", "displayName": incident_id, **fields}


def test_incidents_are_filtered_and_paged_like_alerts(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_incidents(tenant.tenant_id, [incident(str(100 + i), f"2026-11-20T10:0{i}:00Z") for i in range(5)])
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        pages = follow_pages(client, INCIDENTS, {"$filter": "lastUpdateDateTime ge 2026-11-20T10:01:00Z",
                                                 "$orderby": "lastUpdateDateTime asc", "$top": "2"})
        after = client.get(INCIDENTS, params={"$filter": "lastUpdateDateTime gt 2026-11-20T10:03:00Z"})
    assert [[i["id"] for i in page] for page in pages] == [["101", "102"], ["103", "104"]]
    assert [i["id"] for i in after.json()["value"]] == ["104"]
    links = [hit.path for hit in cloud.hits if hit.tenant == tenant.tenant_id and hit.kind == "incidents"]
    assert len(links) == 3 and all(path.startswith(INCIDENTS + "?") for path in links)


def test_incidents_take_their_own_faults(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud)
    cloud.add_incidents(tenant.tenant_id, [incident("7", "2026-11-20T10:00:00Z")])
    cloud.inject(tenant.tenant_id, Fault.status(429, retry_after=3), Fault.status(503), collection="incidents")
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        throttled, failed, served = (client.get(INCIDENTS) for _ in range(3))
        alerts = client.get(ALERTS)
    assert (throttled.status_code, throttled.headers["retry-after"]) == (429, "3")
    assert failed.status_code == 503 and served.status_code == 200
    assert alerts.status_code == 200  # the alerts' queue was not touched


def test_incident_alerts_by_id_follow_incident_id_and_page(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, page_size=2)
    cloud.add_alerts(tenant.tenant_id, [alert(f"a{i}", f"2026-11-20T10:0{i}:00Z", incidentId="9" if i < 3 else "8")
                                        for i in range(4)])
    cloud.add_incidents(tenant.tenant_id, [incident("9", "2026-11-20T10:05:00Z")])
    with graph(cloud, access_token(cloud, ca_file, tenant.tenant_id)) as client:
        pages = follow_pages(client, f"{INCIDENTS}/9/alerts", {"$select": "id"})
        unknown = client.get(f"{INCIDENTS}/404/alerts")
    assert pages == [[{"id": "a0"}, {"id": "a1"}], [{"id": "a2"}]]
    assert unknown.status_code == 404


def test_a_tenant_consented_to_alerts_only_is_refused_incidents(cloud: FakeCloud, ca_file: Path) -> None:
    tenant = new_tenant(cloud, permissions={"SecurityAlert.Read.All"})
    token = access_token(cloud, ca_file, tenant.tenant_id)
    with graph(cloud, token) as client:
        incidents, ids, alerts = client.get(INCIDENTS), client.get(f"{INCIDENTS}/1/alerts"), client.get(ALERTS)
    assert jwt.decode(token, options={"verify_signature": False})["roles"] == ["SecurityAlert.Read.All"]
    assert incidents.status_code == ids.status_code == 403 and alerts.status_code == 200
    assert "SecurityIncident.Read.All" in incidents.json()["error"]["message"]


def test_expand_alerts_fails_on_a_large_tenant_only(cloud: FakeCloud, ca_file: Path) -> None:
    from tests.peers.fake_cloud import EXPAND_ALERTS_LIMIT

    small, large = new_tenant(cloud), new_tenant(cloud)
    cloud.add_alerts(small.tenant_id, [alert("a1", "2026-11-20T10:00:00Z", incidentId="1")])
    cloud.add_incidents(small.tenant_id, [incident("1", "2026-11-20T10:00:00Z")])
    cloud.add_incidents(large.tenant_id, [incident(str(i), "2026-11-20T10:00:00Z") for i in range(EXPAND_ALERTS_LIMIT + 1)])
    expand = {"$expand": "alerts", "$top": "1"}
    with graph(cloud, access_token(cloud, ca_file, small.tenant_id)) as client:
        embedded = client.get(INCIDENTS, params=expand)
    with graph(cloud, access_token(cloud, ca_file, large.tenant_id)) as client:
        failed, plain = client.get(INCIDENTS, params=expand), client.get(INCIDENTS, params={"$top": "1"})
    assert [a["id"] for a in embedded.json()["value"][0]["alerts"]] == ["a1"]
    assert failed.status_code == 500 and plain.status_code == 200


def test_make_incidents_groups_alerts_by_incident_id() -> None:
    from tests.peers.alert_factory import make_alerts, make_incidents

    alerts = make_alerts(6, "tenant-x", datetime(2026, 11, 20, 10, tzinfo=UTC), timedelta(minutes=1))
    alerts[1]["incidentId"] = alerts[0]["incidentId"]
    incidents = {i["id"]: i for i in make_incidents(alerts)}
    joined = incidents[alerts[0]["incidentId"]]
    assert len(incidents) == len({a["incidentId"] for a in alerts})
    assert joined["lastUpdateDateTime"] == alerts[1]["lastUpdateDateTime"]
    assert joined["severity"] in {"informational", "low", "medium", "high"}


# ---------------------------------------------------------------- the managed identity endpoint

def test_the_managed_identity_endpoint_answers_as_app_service_does(cloud: FakeCloud) -> None:
    tenant_id, system, user = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    cloud.managed_identity(tenant_id, system)
    environment = cloud.managed_identity(tenant_id, user, user_assigned=True)
    url, secret = environment["IDENTITY_ENDPOINT"], environment["IDENTITY_HEADER"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/msi/token")

    def ask(headers: dict[str, str], **params: str) -> requests.Response:
        query = {"api-version": "2019-08-01", "resource": "https://monitor.azure.com"} | params
        return requests.get(url, params=query, headers=headers, timeout=5)

    answer = ask({"X-IDENTITY-HEADER": secret})
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"
    assert answer.json()["resource"] == "https://monitor.azure.com" and int(answer.json()["expires_on"]) > time.time()
    claims = cloud.verify_access_token(answer.json()["access_token"], "https://monitor.azure.com")
    assert (claims["appid"], claims["oid"], claims["tid"]) == (system, system, tenant_id)
    chosen = ask({"X-IDENTITY-HEADER": secret}, client_id=user)
    assert cloud.verify_access_token(chosen.json()["access_token"], "https://monitor.azure.com")["appid"] == user
    unknown = ask({"X-IDENTITY-HEADER": secret}, client_id=str(uuid.uuid4()))
    assert (unknown.status_code, unknown.json()["message"]) == (400, "Unable to load the proper Managed Identity.")
    assert ask({"X-IDENTITY-HEADER": "wrong"}).status_code == 400 and ask({}).status_code == 400
    assert ask({"X-IDENTITY-HEADER": secret}, resource="").status_code == 400
    assert [asked.status for asked in cloud.identity_requests[-6:]] == [200, 200, 400, 400, 400, 400]
    assert [asked.header_ok for asked in cloud.identity_requests[-6:]] == [True, True, True, False, False, True]
