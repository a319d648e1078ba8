"""The Event Hubs connector with the real azure-eventhub SDK against a stdlib AMQP 1.0 peer
(tests/peers/eventhub_peer.py): tenants and partition keys, both envelopes decoded on the
peer side, an oversize event, a refused token, a peer restart, `check`, an Entra app's token
from the simulated cloud, and the standard battery."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.base import Event, EventResult, Outcome, SinkFatal
from connectors.eventhub import (
    EVENTHUBS_SCOPE,
    INCIDENT_RECORD_CATEGORY,
    RECORD_CATEGORY,
    EventHubConnector,
    EventHubSinkConfig,
    credential_for,
)
from core.model.schema import SCHEMA_VERSION, EventMeta, Severity, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import ocsf
from mappings.graph_alerts_v2 import normalise
from tests.connectors.battery import ConnectorBattery
from tests.connectors.kinds import kind_events
from tests.helpers import CLIENT_ID, SECRET, CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.eventhub_peer import EventHubPeer

HUB_KEY = "SECRET-eventhub-sas-key-5e7f"  # recognisable, for the secret scan


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[EventHubPeer]:
    with EventHubPeer() as peer:
        monkeypatch.setenv("DF_TEST_EH_CONNECTION", peer.connection_string(key=HUB_KEY))
        yield peer


def _sink(**keys: Any) -> dict[str, Any]:
    return {"type": "eventhub", "connection_string": "env:DF_TEST_EH_CONNECTION", "retry_total": 0,
            "retry_initial": "0.05s", "retry_max": "0.3s"} | keys


def _alerts(setup: CloudSetup, label: str, count: int, seed: int) -> list[dict[str, Any]]:
    tenant_id = setup.tenant(label)
    alerts = make_alerts(count, tenant_id, recent(120), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return alerts


def _alert(setup: CloudSetup, label: str, alert: dict[str, Any]) -> Any:
    normalised = normalise(alert, TenantRef(id=setup.tenants[label], label=label), recent(0))
    normalised.first_sight = True  # as the pipeline marks a first version (OCSF's Create)
    return normalised


def _run(setup: CloudSetup, *args: str) -> Any:
    return run_cli(*(args or ("run", "--once")), "--config", str(setup.write()))


def _comparable(body: bytes) -> bytes:
    """An OCSF finding without `metadata.logged_time` (the forwarder's clock, not the alert's)."""
    finding = orjson.loads(body)
    finding["metadata"].pop("logged_time", None)
    return orjson.dumps(finding)


# ---- events --------------------------------------------------------------------------------

def test_each_tenant_keeps_its_partition_key_and_every_property(setup: CloudSetup, hub: EventHubPeer) -> None:
    sent = {"contoso": _alerts(setup, "contoso", 4, 81), "fabrikam": _alerts(setup, "fabrikam", 3, 82)}
    setup.sinks = {"hub": _sink()}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    events = hub.events()
    assert len(events) == 7
    for label, alerts in sent.items():
        tenant_id = setup.tenants[label]
        mine = [e for e in events if e.partition_key == tenant_id]
        assert len(mine) == len(alerts)  # every alert of a customer on its partition key
        by_key = {e.message_id: e for e in mine}
        for alert in alerts:
            normalised = _alert(setup, label, alert)
            event = by_key[normalised.version_key]
            assert _comparable(event.body) == _comparable(ocsf.encode(normalised))
            assert event.application_properties == {
                "tenant_id": tenant_id, "customer": label, "kind": "alert", "alert_id": alert["id"],
                "severity": normalised.severity.name, "format": "ocsf", "schema_version": SCHEMA_VERSION}
            assert event.content_type == "application/json"


def test_the_records_envelope_is_what_defenders_streaming_api_writes(setup: CloudSetup, hub: EventHubPeer) -> None:
    alerts = _alerts(setup, "contoso", 3, 83)
    setup.sinks = {"hub": _sink(envelope="records", format="raw")}
    assert _run(setup).returncode == 0
    by_id = {}
    for event in hub.events():
        (record,) = orjson.loads(event.body)["records"]  # one alert per event: its message id stays true
        assert (record["tenantId"], record["operationName"], record["category"]) == (
            setup.tenants["contoso"], "Publish", RECORD_CATEGORY)
        by_id[record["properties"]["id"]] = record
    for alert in alerts:
        normalised = _alert(setup, "contoso", alert)
        record = by_id[alert["id"]]
        assert record["properties"]["lastUpdateDateTime"] == alert["lastUpdateDateTime"]
        assert record["time"].startswith(normalised.times.last_updated.strftime("%Y-%m-%dT%H:%M:%S"))


def test_an_event_over_the_hubs_maximum_goes_to_the_dead_letters(setup: CloudSetup, hub: EventHubPeer) -> None:
    hub.max_message_size = 64 * 1024  # as a Basic-tier hub would announce a smaller limit
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(3, tenant_id, recent(120), timedelta(minutes=1), seed=84)
    big = alerts[1]
    big["description"] = "D" * 100_000
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"hub": _sink(format="raw")}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    store = SQLiteStore(setup.state)
    dead = store.dead_letters()
    store.close()
    assert [d.meta.alert_id for d in dead] == [big["id"]]
    assert "larger than the hub's maximum message size" in dead[0].reason
    assert {orjson.loads(e.body)["id"] for e in hub.events()} == {alerts[0]["id"], alerts[2]["id"]}


# ---- failures, check -----------------------------------------------------------------------------

def test_a_refused_token_stops_the_sink(setup: CloudSetup, hub: EventHubPeer) -> None:
    _alerts(setup, "contoso", 2, 85)
    hub.reject_tokens = True
    setup.sinks = {"hub": _sink()}
    result = _run(setup)
    assert result.returncode == 1 and "refused our credentials" in result.stderr
    store = SQLiteStore(setup.state)
    assert store.outbox_depth("hub") == 2  # kept for when the key is fixed
    store.close()
    check = _run(setup, "check")
    assert check.returncode == 1 and "refused our credentials" in check.stderr
    hub.reject_tokens = False
    check = _run(setup, "check")
    assert check.returncode == 0, check.stderr
    assert f"partitions {', '.join(hub.partition_ids)}" in check.stderr
    assert hub.events() == []


def _free_port_spelling_404() -> int:
    """A free loopback port whose digits contain "404" (as a random one sometimes does)."""
    for port in (*range(40400, 40500), *range(14040, 14050), *range(24040, 24050)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free loopback port spelling 404")


def _send(config: dict[str, Any], batch: list[Event]) -> list[EventResult]:
    connector = EventHubConnector("hub", EventHubSinkConfig.model_validate(config))

    async def send() -> list[EventResult]:
        try:
            return await connector.send(batch)
        finally:
            await connector.close()
    return asyncio.run(send())


def _events(count: int) -> list[Event]:
    return [Event(i, EventMeta("t-1", "acme", f"a{i}", f"t-1/a{i}/v", Severity.high, 1.5e9), b'{"n":%d}' % i)
            for i in range(count)]


@pytest.mark.parametrize("envelope", ["single", "records"])
def test_alerts_and_incidents_keep_apart_by_the_kind_property(hub: EventHubPeer, envelope: str) -> None:
    results = _send(_sink(envelope=envelope), kind_events(TenantRef(id="t-1", label="acme")))
    assert [result.outcome for result in results] == [Outcome.OK, Outcome.OK]
    by_kind = {event.application_properties["kind"]: event for event in hub.events()}
    alert, incident = by_kind["alert"], by_kind["incident"]
    assert incident.application_properties["incident_id"] == "2972395"
    assert "alert_id" not in incident.application_properties and "incident_id" not in alert.application_properties
    assert alert.partition_key == incident.partition_key == "t-1"  # one customer's events stay in order
    if envelope == "records":
        (record,) = orjson.loads(incident.body)["records"]
        assert record["category"] == INCIDENT_RECORD_CATEGORY and record["properties"]["kind"] == "incident"
        assert orjson.loads(alert.body)["records"][0]["category"] == RECORD_CATEGORY


def test_a_hub_down_is_retried_whatever_its_port_spells(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connection refused on port 40403 once read as "404: check eventhub_name" and stopped the sink."""
    port = _free_port_spelling_404()
    with EventHubPeer(port=port) as peer:
        monkeypatch.setenv("DF_TEST_EH_CONNECTION", peer.connection_string(key=HUB_KEY))
        peer.stop()
        results = _send(_sink(), _events(3))
    assert [result.outcome for result in results] == [Outcome.RETRY] * 3
    assert f":{port}: connection refused" in results[0].reason, results[0].reason
    assert HUB_KEY not in results[0].reason


def test_an_unknown_hub_stops_the_sink_naming_eventhub_name(hub: EventHubPeer) -> None:
    with pytest.raises(SinkFatal, match="check eventhub_name"):
        _send(_sink(eventhub_name="no-such-hub"), _events(1))
    assert hub.events() == []


def test_busy_periods_are_retried(setup: CloudSetup, hub: EventHubPeer) -> None:
    alerts = _alerts(setup, "contoso", 3, 86)
    hub.busy(3)
    setup.sinks = {"hub": _sink()}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    assert sorted(e.message_id for e in hub.events()) == sorted(
        _alert(setup, "contoso", a).version_key for a in alerts)


def test_an_entra_app_gets_its_event_hubs_token_from_entra(setup: CloudSetup, tmp_path: Path) -> None:
    """The Entra side of `fully_qualified_namespace` auth, against the simulated cloud (the AMQP
    side needs TLS on 5671, which the test peer does not serve)."""
    tenant_id = setup.tenant("mssp-home")
    ca_file = tmp_path / "cloud-ca.pem"
    setup.cloud.write_ca(ca_file)
    config = EventHubSinkConfig.model_validate({
        "fully_qualified_namespace": "mssp.servicebus.windows.net", "eventhub_name": "defender-alerts",
        "tenant_id": tenant_id, "client_id": CLIENT_ID, "client_secret": "env:DF_TEST_CLIENT_SECRET",
        "authority": setup.cloud.base_url, "ca_file": str(ca_file)})

    async def token() -> Any:
        credential = credential_for(config)
        try:
            return await credential.get_token(EVENTHUBS_SCOPE)
        finally:
            await credential.close()

    assert asyncio.run(token()).token.count(".") == 2  # a JWT from the simulated Entra
    assert SECRET not in repr(config)


# ---- the standard battery ---------------------------------------------------------------------------

class TestEventHubBattery(ConnectorBattery):
    @pytest.fixture
    def peer(self, hub: EventHubPeer) -> EventHubPeer:
        return hub

    def sink(self, peer: EventHubPeer, tmp: Path) -> dict[str, Any]:
        return _sink(format="raw")

    def received(self, peer: EventHubPeer) -> list[bytes]:
        return [event.body for event in peer.events()]

    def restart(self, peer: EventHubPeer, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def secrets(self, peer: EventHubPeer, tmp: Path) -> list[str]:
        return [HUB_KEY]

    def poison(self, peer: EventHubPeer, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        peer.max_message_size = 64 * 1024
        alert["description"] = "P" * 100_000
        return "larger than the hub's maximum message size"
