"""The Sentinel connector with the real azure-monitor-ingestion SDK and azure-identity against a
Logs Ingestion API peer (tests/peers/logs_ingestion_peer.py) on loopback HTTPS, signed in as
an Entra app of the simulated cloud: both landing shapes checked against the DCR's stream
declarations of examples/sentinel/azuredeploy.json, every answer of the status table, `check`,
and the standard battery."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import Event, Outcome, SinkFatal
from connectors.sentinel import (
    ALERTS_STREAM,
    CEF_STREAM,
    INCIDENTS_STREAM,
    INGESTION_STATUSES,
    SentinelConnector,
    SentinelSinkConfig,
)
from core.model.schema import EventMeta, TenantRef
from mappings import commonsecuritylog, sentinel
from tests.connectors.battery import ConnectorBattery
from tests.connectors.kinds import an_alert, an_incident
from tests.connectors.sentinel_dcr import declared_streams
from tests.helpers import CLIENT_ID, SECRET, CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.fake_cloud import FakeCloud
from tests.peers.logs_ingestion_peer import LogsIngestionPeer
from tests.peers.proxy import Proxy

RULE_ID = "dcr-5f1c0e9a7b2d4c3e8f6a1b0c9d8e7f6a"
HOME = "9a8b7c6d-0000-4000-8000-5e171e1a0001"  # the MSSP's own tenant, where the workspace is


@pytest.fixture
def peer(cloud: FakeCloud) -> Iterator[LogsIngestionPeer]:
    cloud.add_tenant(HOME, client_id=CLIENT_ID, secret=SECRET)
    with LogsIngestionPeer(cloud, streams=declared_streams(), rule_id=RULE_ID, ca=cloud.ca) as running:
        yield running


def _table(cloud: FakeCloud, tmp: Path, /, **keys: Any) -> dict[str, Any]:
    ca_file = cloud.write_ca(tmp / "login-ca.pem")
    return {"type": "sentinel", "endpoint": "", "rule_id": RULE_ID, "tenant_id": HOME, "client_id": CLIENT_ID,
            "client_secret": "env:DF_TEST_CLIENT_SECRET", "authority": cloud.base_url, "ca_file": str(ca_file),
            "retry_total": 0, "retry_initial": "0.05s", "retry_max": "0.3s"} | keys


def _sink(peer: LogsIngestionPeer, cloud: FakeCloud, tmp: Path, /, **keys: Any) -> dict[str, Any]:
    return _table(cloud, tmp, endpoint=peer.endpoint, **keys)


def _send(table: dict[str, Any], batch: list[Event], probe: bool = False) -> Any:
    connector = SentinelConnector("sentinel", SentinelSinkConfig.model_validate(table))

    async def send() -> Any:
        try:
            return await (connector.probe() if probe else connector.send(batch))
        finally:
            await connector.close()
    return asyncio.run(send())


def _events(fmt: str, count: int, description: str = "") -> list[Event]:
    encode = sentinel.encode if fmt == "sentinel" else commonsecuritylog.encode
    events = []
    for n in range(count):
        alert = an_alert(TenantRef(id="t-1", label="acme"))
        alert.id = f"alert-{n}"
        alert.description = description or f"alert number {n}"
        events.append(Event(n + 1, EventMeta.of(alert), encode(alert)))
    return events


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_CLIENT_SECRET", SECRET)


# ---- the two landing shapes ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["sentinel", "commonsecuritylog"])
def test_alerts_and_incidents_land_in_their_streams_as_declared(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                                tmp_path: Path, fmt: str) -> None:
    tenant = TenantRef(id="t-1", label="acme")
    encode = sentinel.encode if fmt == "sentinel" else commonsecuritylog.encode
    batch = [Event(n, EventMeta.of(event), encode(event))  # type: ignore[arg-type]
             for n, event in enumerate((an_alert(tenant), an_incident(tenant)), start=1)]
    results = _send(_sink(peer, cloud, tmp_path, format=fmt), batch)
    assert [result.outcome for result in results] == [Outcome.OK, Outcome.OK]
    if fmt == "sentinel":
        (alert,) = peer.records(ALERTS_STREAM)
        (incident,) = peer.records(INCIDENTS_STREAM)
        assert (alert["AlertId"], alert["Customer"], alert["CustomerTenantId"]) == (
            "da637551227677560813_-961444813", "acme", "t-1")
        assert incident["IncidentId"] == "2972395"
    else:
        assert len(peer.records(CEF_STREAM)) == 2
    streams = 2 if fmt == "sentinel" else 1
    assert [request.status for request in peer.requests] == [204] * streams  # a request per stream, each accepted
    assert all(request.content_encoding == "gzip" for request in peer.requests)


def test_one_connection_carries_every_upload_with_a_ca_file(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                            tmp_path: Path) -> None:
    """azure-core, given a CA file, made a new SSL context per request and aiohttp a new TLS
    connection for each: the connector's own session keeps one."""
    connector = SentinelConnector("sentinel", SentinelSinkConfig.model_validate(_sink(peer, cloud, tmp_path)))

    async def send_three() -> list[Any]:
        try:
            return [await connector.send(_events("sentinel", 2)) for _ in range(3)]
        finally:
            await connector.close()
    assert [r.outcome for results in asyncio.run(send_three()) for r in results] == [Outcome.OK] * 6
    assert (len(peer.requests), peer.connections) == (3, 1)


# ---- the status table ------------------------------------------------------------------------------

def test_a_413_halves_the_request_and_one_row_too_large_alone_is_a_dead_letter(
        peer: LogsIngestionPeer, cloud: FakeCloud, tmp_path: Path) -> None:
    peer.max_body = 20_000
    batch = _events("sentinel", 12, description="x" * 2_000)
    batch.append(_events("sentinel", 1, description="y" * 30_000)[0]._replace(row_id=99))
    results = _send(_sink(peer, cloud, tmp_path), batch)
    assert [result.outcome for result in results] == [Outcome.OK] * 12 + [Outcome.PERMANENT]
    assert "larger than the Logs Ingestion API takes" in results[-1].reason
    assert sorted(r["AlertId"] for r in peer.records()) == sorted(f"alert-{n}" for n in range(12))
    assert 413 in [request.status for request in peer.requests]
    assert max(request.uncompressed_bytes for request in peer.requests if request.status == 204) <= 20_000


def test_a_bad_row_is_dead_lettered_with_the_apis_message_and_the_rest_delivered(
        peer: LogsIngestionPeer, cloud: FakeCloud, tmp_path: Path) -> None:
    peer.refuse_when(lambda record: record.get("AlertId") == "alert-5")
    results = _send(_sink(peer, cloud, tmp_path), _events("sentinel", 8))
    assert [result.outcome for result in results] == [Outcome.OK] * 5 + [Outcome.PERMANENT] + [Outcome.OK] * 2
    assert "the API refused the row" in results[5].reason and "400" in results[5].reason
    assert sorted(r["AlertId"] for r in peer.records()) == sorted(f"alert-{n}" for n in (0, 1, 2, 3, 4, 6, 7))


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_failures_are_retried_and_nothing_is_counted(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                                    tmp_path: Path, status: int) -> None:
    if status == 429:
        peer.throttle(1, retry_after=1)
    else:
        peer.fail(1, status=status)
    results = _send(_sink(peer, cloud, tmp_path), _events("sentinel", 3))
    assert [result.outcome for result in results] == [Outcome.RETRY] * 3
    assert str(status) in results[0].reason
    assert peer.records() == []
    assert [result.outcome for result in _send(_sink(peer, cloud, tmp_path), _events("sentinel", 3))] == [
        Outcome.OK] * 3


def test_the_sdk_waits_retry_after_itself_when_retries_are_allowed(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                                   tmp_path: Path) -> None:
    peer.throttle(1, retry_after=1)
    results = _send(_sink(peer, cloud, tmp_path, retry_total=2), _events("sentinel", 2))
    assert [result.outcome for result in results] == [Outcome.OK] * 2
    assert [request.status for request in peer.requests] == [429, 204]


@pytest.mark.parametrize(("keys", "phrase"), [
    ({"rule_id": "dcr-00000000000000000000000000000bad"}, "check rule_id"),
    ({"stream": "Custom-NoSuchTable_CL"}, "streamDeclarations"),
])
def test_the_wrong_dcr_or_stream_stops_the_sink_with_the_remedy(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                                tmp_path: Path, keys: dict[str, Any],
                                                                phrase: str) -> None:
    with pytest.raises(SinkFatal, match=phrase):
        _send(_sink(peer, cloud, tmp_path, **keys), _events("sentinel", 2))
    assert peer.records() == []


def test_an_app_without_the_role_stops_the_sink_naming_the_role(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.add_tenant(HOME, client_id=CLIENT_ID, secret=SECRET)
    with LogsIngestionPeer(cloud, streams=declared_streams(), rule_id=RULE_ID, ca=cloud.ca,
                           allowed_apps={"another-app"}) as peer:
        with pytest.raises(SinkFatal, match="Monitoring Metrics Publisher"):
            _send(_sink(peer, cloud, tmp_path), _events("sentinel", 1))
        with pytest.raises(SinkFatal, match="Monitoring Metrics Publisher"):
            _send(_sink(peer, cloud, tmp_path), [], probe=True)


def test_a_refused_secret_stops_the_sink_and_never_shows_it(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_CLIENT_SECRET", "SECRET-wrong-one-4411")
    with pytest.raises(SinkFatal, match="login service refused the app") as refused:
        _send(_sink(peer, cloud, tmp_path), _events("sentinel", 1))
    assert "SECRET-wrong-one-4411" not in str(refused.value) and SECRET not in str(refused.value)


def test_an_endpoint_down_is_retried_naming_host_and_port(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                          tmp_path: Path) -> None:
    peer.stop()
    results = _send(_sink(peer, cloud, tmp_path), _events("sentinel", 2))
    assert [result.outcome for result in results] == [Outcome.RETRY] * 2
    assert peer.endpoint.removeprefix("https://") in results[0].reason, results[0].reason


@pytest.mark.usefixtures("no_machine_proxy")
def test_the_login_and_the_rows_go_through_the_forwarders_proxy(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                                tmp_path: Path, proxy: Proxy) -> None:
    connector = SentinelConnector("sentinel", SentinelSinkConfig.model_validate(_sink(peer, cloud, tmp_path)))
    connector.proxy = proxy.url  # [forwarder] proxy, as the app sets it

    async def send() -> Any:
        try:
            return await connector.send(_events("sentinel", 2))
        finally:
            await connector.close()
    assert [result.outcome for result in asyncio.run(send())] == [Outcome.OK] * 2
    assert {cloud.base_url.removeprefix("https://"), peer.endpoint.removeprefix("https://")} <= set(proxy.connects())
    assert len(peer.records()) == 2


def test_us_government_cloud_asks_for_its_own_scope(cloud: FakeCloud, tmp_path: Path) -> None:
    cloud.add_tenant(HOME, client_id=CLIENT_ID, secret=SECRET)
    with LogsIngestionPeer(cloud, streams=declared_streams(), rule_id=RULE_ID, ca=cloud.ca,
                           audience="https://monitor.azure.us") as peer:
        results = _send(_sink(peer, cloud, tmp_path, cloud="usgov"), _events("sentinel", 1))
        assert [result.outcome for result in results] == [Outcome.OK]
        with pytest.raises(SinkFatal, match="401"):
            _send(_sink(peer, cloud, tmp_path), _events("sentinel", 1))  # the public cloud's token


def test_the_sinks_default_streams_are_the_formats() -> None:
    """The connector cannot import the mappings (the layers): its stream names are theirs."""
    assert (ALERTS_STREAM, INCIDENTS_STREAM, CEF_STREAM) == (sentinel.ALERT_STREAM, sentinel.INCIDENT_STREAM,
                                                             commonsecuritylog.STREAM)


def test_the_status_table_covers_what_the_api_answers() -> None:
    assert {204, 400, 401, 403, 404, 413, 429, 500, 503} <= set(INGESTION_STATUSES)
    assert INGESTION_STATUSES[400].action == "bisect" and INGESTION_STATUSES[413].action == "shrink"
    assert {INGESTION_STATUSES[status].action for status in (401, 403, 404)} == {"stop"}


# ---- check --------------------------------------------------------------------------------------------

def test_check_uploads_nothing_and_names_the_streams(setup: CloudSetup, peer: LogsIngestionPeer) -> None:
    setup.tenant("contoso")
    setup.sinks = {"sentinel": _sink(peer, setup.cloud, setup.tmp)}
    check = run_cli("check", "--config", str(setup.write()))
    assert check.returncode == 0, check.stderr
    assert f"takes stream {ALERTS_STREAM}, {INCIDENTS_STREAM}" in check.stderr and "nothing written" in check.stderr
    assert peer.records() == [] and {request.status for request in peer.requests} == {204}
    setup.sinks = {"sentinel": _sink(peer, setup.cloud, setup.tmp, stream="Custom-Nope_CL")}
    check = run_cli("check", "--config", str(setup.write()))
    assert check.returncode == 1 and "Custom-Nope_CL" in check.stderr and "Traceback" not in check.stderr


def test_the_sdks_request_log_stays_out_of_the_forwarders_log(setup: CloudSetup, peer: LogsIngestionPeer) -> None:
    """azure-core logs every request and answer at INFO (HttpLoggingPolicy): a line a row batch
    drowned the forwarder's own, and a daemon whose log pipe filled blocked writing them."""
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(3, tenant_id, recent(60), timedelta(minutes=1), seed=202))
    setup.sinks = {"sentinel": _sink(peer, setup.cloud, setup.tmp)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert len(peer.records()) == 3
    assert "Request URL" not in result.stderr and "Response status" not in result.stderr, result.stderr[-2000:]
    assert "get_token" not in result.stderr  # azure-identity's INFO line for every token


def test_an_alert_with_a_10_mb_description_lands_cut_and_the_others_too(setup: CloudSetup,
                                                                        peer: LogsIngestionPeer) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(3, tenant_id, recent(60), timedelta(minutes=1), seed=201)
    alerts[1]["description"] = "<script>\u2028'; DROP TABLE x; --" + "D" * 10_000_000
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"sentinel": _sink(peer, setup.cloud, setup.tmp)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    rows = {row["AlertId"]: row for row in peer.records(ALERTS_STREAM)}
    assert set(rows) == {alert["id"] for alert in alerts}
    assert rows[alerts[1]["id"]]["Description"].startswith("<script>\u2028'; DROP TABLE x; --")
    assert len(orjson.dumps(rows[alerts[1]["id"]])) < 1_000_000


# ---- the standard battery ---------------------------------------------------------------------------

class TestSentinelBattery(ConnectorBattery):
    def sink(self, peer: LogsIngestionPeer, tmp: Path) -> dict[str, Any]:
        return _table(self.cloud, tmp, endpoint=peer.endpoint)

    @pytest.fixture(autouse=True)
    def _cloud(self, cloud: FakeCloud) -> None:
        self.cloud = cloud

    def received(self, peer: LogsIngestionPeer) -> list[bytes]:
        return [orjson.dumps(record) for record in peer.records()]

    def comparable(self, body: bytes) -> Any:
        """A row without what the forwarder adds of its own: its clock (`Alert.times.ingested`),
        and whether it saw the alert before (`Alert.first_sight`)."""
        row = orjson.loads(body)
        row["Alert"]["times"].pop("ingested", None)
        row["Alert"].pop("first_sight", None)
        return orjson.dumps(row)

    def restart(self, peer: LogsIngestionPeer, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def poison(self, peer: LogsIngestionPeer, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        peer.refuse_when(lambda record: record.get("AlertId") == alert["id"])
        return "the API refused the row"




# ---- managed identity: the real ManagedIdentityCredential against App Service's endpoint ------------

MI_CLIENT_ID = "44444444-4444-4444-8444-444444444444"
USER_ASSIGNED_ID = "55555555-5555-4555-8555-555555555555"


def _on_app_service(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> None:
    """The environment App Service gives its apps (IDENTITY_ENDPOINT, IDENTITY_HEADER), which
    azure-identity's ManagedIdentityCredential detects; nothing else that would pick another
    source, nor a proxy for the loopback endpoint."""
    for name in ("IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
                 "AZURE_FEDERATED_TOKEN_FILE", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def _managed(peer: LogsIngestionPeer, cloud: FakeCloud, tmp: Path, /, **keys: Any) -> dict[str, Any]:
    table = _sink(peer, cloud, tmp, managed_identity=True, **keys)
    for key in ("tenant_id", "client_id", "client_secret", "authority"):
        del table[key]
    return table


def test_a_system_assigned_managed_identity_delivers_the_rows(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _on_app_service(monkeypatch, cloud.managed_identity(HOME, MI_CLIENT_ID))
    asked_before, hits_before = len(cloud.identity_requests), len(cloud.hits)  # the cloud is the session's
    results = _send(_managed(peer, cloud, tmp_path), _events("sentinel", 3))
    assert [result.outcome for result in results] == [Outcome.OK] * 3
    assert sorted(row["AlertId"] for row in peer.records()) == ["alert-0", "alert-1", "alert-2"]
    assert {request.app for request in peer.requests} == {MI_CLIENT_ID}
    (asked,) = cloud.identity_requests[asked_before:]
    assert (asked.client_id, asked.resource, asked.header_ok, asked.status) == (
        None, "https://monitor.azure.com", True, 200)
    assert not [hit for hit in cloud.hits[hits_before:] if hit.kind == "token" and hit.tenant == HOME]  # no app


def test_a_user_assigned_identity_is_the_one_asked_for_and_one_without_the_role_stops_the_sink(
        cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud.managed_identity(HOME, MI_CLIENT_ID)  # the system-assigned one, not asked for
    _on_app_service(monkeypatch, cloud.managed_identity(HOME, USER_ASSIGNED_ID, user_assigned=True))
    asked_before = len(cloud.identity_requests)
    with LogsIngestionPeer(cloud, streams=declared_streams(), rule_id=RULE_ID, ca=cloud.ca,
                           allowed_apps={USER_ASSIGNED_ID}) as peer:
        results = _send(_managed(peer, cloud, tmp_path, managed_identity_client_id=USER_ASSIGNED_ID),
                        _events("sentinel", 2))
        assert [result.outcome for result in results] == [Outcome.OK] * 2
        assert [asked.client_id for asked in cloud.identity_requests[asked_before:]] == [USER_ASSIGNED_ID]
        assert {request.app for request in peer.requests} == {USER_ASSIGNED_ID}
        peer.allowed_apps = {"another-app"}  # the role went to someone else
        with pytest.raises(SinkFatal, match="Monitoring Metrics Publisher"):
            _send(_managed(peer, cloud, tmp_path, managed_identity_client_id=USER_ASSIGNED_ID),
                  _events("sentinel", 1))
        assert len(peer.records()) == 2


def test_an_identity_the_endpoint_does_not_know_stops_the_sink_naming_it(
        peer: LogsIngestionPeer, cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _on_app_service(monkeypatch, cloud.managed_identity(HOME, MI_CLIENT_ID))
    asked_before = len(cloud.identity_requests)
    unknown = "66666666-6666-4666-8666-666666666666"  # assigned to no machine
    with pytest.raises(SinkFatal, match="managed_identity_client_id") as stopped:
        _send(_managed(peer, cloud, tmp_path, managed_identity_client_id=unknown), _events("sentinel", 2))
    assert "Unable to load the proper Managed Identity" in str(stopped.value)
    assert "\n" not in str(stopped.value) and cloud.identity_header not in str(stopped.value)
    assert [asked.status for asked in cloud.identity_requests[asked_before:]] == [400] and peer.requests == []


def test_no_managed_identity_endpoint_is_retried_naming_it(peer: LogsIngestionPeer, cloud: FakeCloud,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    _on_app_service(monkeypatch, {"IDENTITY_ENDPOINT": f"http://127.0.0.1:{port}/msi/token",
                                  "IDENTITY_HEADER": "not-used"})
    results = _send(_managed(peer, cloud, tmp_path), _events("sentinel", 2))
    assert [result.outcome for result in results] == [Outcome.RETRY] * 2
    assert f"127.0.0.1:{port}" in results[0].reason, results[0].reason
    assert peer.requests == []
