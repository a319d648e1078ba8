"""The Elasticsearch connector and `setup elasticsearch`, with the real elasticsearch-py 9 async
client against a faithful Elasticsearch peer (tests/peers/es_peer.py) over HTTPS: per-tenant
data streams, idempotent `_id`s (a lost response re-sent is no duplicate), mixed per-item
failures, auth and TLS, the compatibility header, the template and ILM policy, and the
standard battery."""
from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from connectors.base import Event, Outcome
from connectors.elasticsearch import (
    ElasticsearchConnector,
    ElasticsearchSinkConfig,
    document_id,
    namespace,
)
from connectors.elasticsearch_setup import FIELD_TYPES, INCIDENT_TEMPLATE_NAME, TEMPLATE_NAME, requests
from core.model.neterr import CONNECT_TIMEOUT
from core.model.schema import EventMeta, Severity, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import ecs, raw
from mappings.graph_alerts_v2 import normalise
from tests.connectors.battery import ConnectorBattery
from tests.connectors.kinds import kind_events
from tests.helpers import SHARED_SAMPLES, CloudSetup, daemon, recent, run_cli, until
from tests.peers.alert_factory import make_alerts
from tests.peers.es_peer import EsPeer
from tests.peers.mutual_tls import client_certificate

API_KEY = "SECRET-es-api-key-9d2b"  # recognisable, for the secret scan


@pytest.fixture
def es(monkeypatch: pytest.MonkeyPatch) -> Iterator[EsPeer]:
    monkeypatch.setenv("DF_TEST_ES_KEY", API_KEY)
    with EsPeer(api_key=API_KEY) as peer:
        yield peer


def _sink(es: EsPeer, **keys: Any) -> dict[str, Any]:
    return {"type": "elasticsearch", "hosts": [es.url], "api_key": "env:DF_TEST_ES_KEY", "ca_file": str(es.ca_file),
            "retry_initial": "0.05s", "retry_max": "0.2s"} | keys


def _alerts(setup: CloudSetup, label: str, count: int, seed: int) -> list[dict[str, Any]]:
    tenant_id = setup.tenant(label)
    alerts = make_alerts(count, tenant_id, recent(120), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return alerts


def _alert(setup: CloudSetup, label: str, alert: dict[str, Any]) -> Any:
    return normalise(alert, TenantRef(id=setup.tenants[label], label=label), recent(0))


def _without_ingested(document: bytes) -> bytes:
    """An ECS document without the one field that is the forwarder's clock, not the alert."""
    parsed = orjson.loads(document)
    parsed["defender_forwarder"].pop("ingested", None)
    return orjson.dumps(parsed)


def _stream(label: str) -> str:
    return f"logs-defender_forwarder.alert-{namespace(label)}"


def _run(setup: CloudSetup, *args: str) -> Any:
    return run_cli(*(args or ("run", "--once")), "--config", str(setup.write()))


# ---- writing --------------------------------------------------------------------------------------

def test_each_tenant_gets_its_own_data_stream_and_stable_ids(setup: CloudSetup, es: EsPeer) -> None:
    sent = {"contoso": _alerts(setup, "contoso", 4, 61), "Fabrikam-EU": _alerts(setup, "Fabrikam-EU", 3, 62)}
    setup.sinks = {"elastic": _sink(es)}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    assert es.indices() == {_stream("contoso"), "logs-defender_forwarder.alert-fabrikam_eu"}
    assert all(es.kind(name) == "data_stream" for name in es.indices())
    for label, alerts in sent.items():
        stored = {doc["_id"]: doc for doc in es.documents(_stream(label))}
        for alert in alerts:
            normalised = _alert(setup, label, alert)
            doc = stored[document_id(normalised.version_key)]
            assert _without_ingested(orjson.dumps(doc["source"])) == _without_ingested(ecs.encode(normalised))
            assert doc["source"]["cloud"]["account"]["id"] == setup.tenants[label]  # never the other's
    bulk = es.bulk_requests[0]
    assert bulk.headers["authorization"] == f"ApiKey {API_KEY}"
    assert "compatible-with=9" in bulk.content_type and "compatible-with=9" in bulk.accept


def test_a_lost_response_is_sent_again_without_a_duplicate(setup: CloudSetup, es: EsPeer) -> None:
    alerts = _alerts(setup, "contoso", 5, 63)
    es.lose_responses(1)  # stored, but the answer never arrives
    setup.sinks = {"elastic": _sink(es)}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    assert es.count() == len(alerts)
    first, second = es.bulk_requests
    assert first.lost and second.status == 200 and second.items == len(alerts)  # 409 each: delivered


def test_mixed_per_item_failures(setup: CloudSetup, es: EsPeer) -> None:
    alerts = _alerts(setup, "contoso", 6, 64)
    ids = [document_id(_alert(setup, "contoso", a).version_key) for a in alerts]
    es.reject_once([ids[0]], status=429)
    es.unavailable_once([ids[1]])
    es.always_fail([ids[2]], status=400, type="document_parsing_exception", reason="failed to parse field [x]")
    es.reject_requests(1, status=429)  # and the first request as a whole
    setup.sinks = {"elastic": _sink(es)}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    assert {doc["_id"] for doc in es.documents()} == set(ids) - {ids[2]}
    store = SQLiteStore(setup.state)
    (letter,) = store.dead_letters()
    store.close()
    assert letter.sink == "elastic" and letter.meta.alert_id == alerts[2]["id"]
    assert letter.reason == "400 document_parsing_exception: failed to parse field [x]"
    retried = es.bulk_requests[2:]  # after the whole-request 429 and the first full attempt
    assert sorted(r.items for r in retried) == [2]  # only the two items rejected


def test_raw_with_the_integration_pipeline(setup: CloudSetup, es: EsPeer) -> None:
    alerts = _alerts(setup, "contoso", 2, 65)
    installed = httpx.put(f"{es.url}/_ingest/pipeline/logs-m365_defender.alert-2.20.0", json={"processors": []},
                          headers={"Authorization": f"ApiKey {API_KEY}"}, verify=ssl.create_default_context(cafile=es.ca_file))
    assert installed.status_code == 200, installed.text  # as Elastic's integration installs it
    setup.sinks = {"elastic": _sink(es, format="raw", data_stream="logs-m365_defender.alert-{tenant}",
                                    pipeline="logs-m365_defender.alert-2.20.0")}
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    docs = es.documents("logs-m365_defender.alert-contoso")
    assert {doc["pipeline"] for doc in docs} == {"logs-m365_defender.alert-2.20.0"}
    by_message = {doc["source"]["message"]: doc["source"]["@timestamp"] for doc in docs}
    for alert in alerts:
        normalised = _alert(setup, "contoso", alert)
        stamp = by_message[raw.encode(normalised).decode()]
        assert stamp.startswith(normalised.times.last_updated.strftime("%Y-%m-%dT%H:%M:%S"))


def test_compatibility_with_an_8_cluster_is_a_setting(setup: CloudSetup, es: EsPeer) -> None:
    _alerts(setup, "contoso", 1, 66)
    setup.sinks = {"elastic": _sink(es, api_compatibility=8)}
    assert _run(setup).returncode == 0
    (bulk,) = es.bulk_requests
    assert "compatible-with=8" in bulk.content_type and "compatible-with=8" in bulk.accept


# ---- auth, TLS ------------------------------------------------------------------------------------

def test_refused_credentials_stop_the_sink_clearly(setup: CloudSetup, es: EsPeer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _alerts(setup, "contoso", 2, 67)
    monkeypatch.setenv("DF_TEST_BAD_KEY", "not-the-key")
    setup.sinks = {"elastic": _sink(es, api_key="env:DF_TEST_BAD_KEY")}
    result = _run(setup)
    assert result.returncode == 1 and "refused the credentials (HTTP 401" in result.stderr
    es.forbidden = True
    setup.sinks = {"elastic": _sink(es)}
    result = _run(setup)
    assert result.returncode == 1 and "HTTP 403" in result.stderr and "create_doc" in result.stderr
    assert es.count() == 0
    store = SQLiteStore(setup.state)
    assert store.outbox_depth("elastic") == 2
    store.close()


def test_basic_auth_and_a_certificate_fingerprint(setup: CloudSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_ES_PASSWORD", "SECRET-es-password")
    with EsPeer(basic=("forwarder", "SECRET-es-password")) as es:
        _alerts(setup, "contoso", 2, 68)
        setup.sinks = {"elastic": {"type": "elasticsearch", "hosts": [es.url], "username": "forwarder",
                                   "password": "env:DF_TEST_ES_PASSWORD", "ssl_assert_fingerprint": es.fingerprint}}
        result = _run(setup)
        assert result.returncode == 0, result.stderr
        assert es.count() == 2


def test_an_untrusted_certificate_stops_the_sink(setup: CloudSetup, es: EsPeer) -> None:
    _alerts(setup, "contoso", 1, 69)
    sink = _sink(es)
    del sink["ca_file"]
    setup.sinks = {"elastic": sink}
    result = _run(setup)
    assert result.returncode == 1 and "fails verification" in result.stderr
    assert es.bulk_requests == []


# ---- setup and check ---------------------------------------------------------------------------------

def test_setup_installs_template_and_policy_once(setup: CloudSetup, es: EsPeer) -> None:
    setup.tenant("contoso")
    setup.sinks = {"elastic": _sink(es)}
    dry = _run(setup, "setup", "elasticsearch", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"PUT /_index_template/{TEMPLATE_NAME}" in dry.stdout and "PUT /_ilm/policy/" in dry.stdout
    assert es.index_templates() == {} and sum(es.puts.values()) == 0  # a dry run sends nothing

    check = _run(setup, "check")
    assert "MISSING" in check.stderr
    first = _run(setup, "setup", "elasticsearch")
    assert first.returncode == 0, first.stderr
    assert first.stderr.count(": installed") == 3  # the policy, the alerts' and the incidents' templates
    second = _run(setup, "setup", "elasticsearch")
    assert second.returncode == 0 and second.stderr.count(": unchanged") == 3
    assert sum(es.changes.values()) == 3  # the second run changed nothing
    template = es.index_templates()[TEMPLATE_NAME]
    assert template["index_patterns"] == ["logs-defender_forwarder.alert-*"] and "data_stream" in template
    properties = template["template"]["mappings"]["properties"]
    assert properties["@timestamp"] == {"type": "date"}
    assert properties["event"]["properties"]["id"]["type"] == "keyword"
    incidents = es.index_templates()[INCIDENT_TEMPLATE_NAME]
    assert incidents["index_patterns"] == ["logs-defender_forwarder.incident-*"] and "data_stream" in incidents
    incident = incidents["template"]["mappings"]["properties"]["m365_defender"]["properties"]["incident"]
    assert incident["properties"]["last_update_datetime"] == {"type": "date"}
    check = _run(setup, "check")
    elastic = next(line for line in check.stderr.splitlines() if "elastic" in line and "cluster" in line)
    assert "Elasticsearch 9." in elastic and f"template {TEMPLATE_NAME} installed" in elastic
    assert f"template {INCIDENT_TEMPLATE_NAME} installed" in elastic


def test_streams_of_one_pattern_share_one_template_mapped_for_both_kinds() -> None:
    made = requests("logs-defender-{tenant}", "ecs", "90d", "logs-defender-{tenant}")
    (template,) = [request for request in made if request.kind == "index template"]
    fields = template.body["template"]["mappings"]["properties"]["m365_defender"]["properties"]
    assert {"alert", "incident"} <= set(fields)


def test_alerts_and_incidents_land_in_their_own_data_streams(es: EsPeer) -> None:
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(_sink(es, format="cim")))

    async def go() -> list[Any]:
        try:
            return await connector.send(kind_events(TenantRef(id="t-1", label="Acme-EU")))
        finally:
            await connector.close()

    assert [r.outcome for r in asyncio.run(go())] == [Outcome.OK, Outcome.OK]
    assert es.indices() == {"logs-defender_forwarder.alert-acme_eu", "logs-defender_forwarder.incident-acme_eu"}
    (incident,) = es.documents("logs-defender_forwarder.incident-acme_eu")
    assert incident["source"]["kind"] == "incident" and incident["source"]["id"] == "2972395"
    assert es.kind("logs-defender_forwarder.incident-acme_eu") == "data_stream"


def test_incidents_go_through_their_own_pipeline_of_the_integration(es: EsPeer) -> None:
    for name in ("logs-m365_defender.alert-2.20.0", "logs-m365_defender.incident-2.20.0"):
        installed = httpx.put(f"{es.url}/_ingest/pipeline/{name}", json={"processors": []},
                              headers={"Authorization": f"ApiKey {API_KEY}"},
                              verify=ssl.create_default_context(cafile=es.ca_file))
        assert installed.status_code == 200, installed.text
    config = _sink(es, format="raw", data_stream="logs-m365_defender.alert-{tenant}",
                   data_stream_incident="logs-m365_defender.incident-{tenant}",
                   pipeline="logs-m365_defender.alert-2.20.0", pipeline_incident="logs-m365_defender.incident-2.20.0")
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(config))

    async def go() -> list[Any]:
        try:
            return await connector.send(kind_events(TenantRef(id="t-1", label="acme")))
        finally:
            await connector.close()

    assert [r.outcome for r in asyncio.run(go())] == [Outcome.OK, Outcome.OK]
    (alert,) = es.documents("logs-m365_defender.alert-acme")
    (incident,) = es.documents("logs-m365_defender.incident-acme")
    assert (alert["pipeline"], incident["pipeline"]) == ("logs-m365_defender.alert-2.20.0",
                                                         "logs-m365_defender.incident-2.20.0")


def _leaves(document: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else key)
    elif isinstance(document, list):
        for value in document:
            yield from _leaves(value, prefix)
    else:
        yield prefix


def _mapped(field: str) -> bool:
    parts = field.split(".")
    return field in FIELD_TYPES or any(FIELD_TYPES.get(".".join(parts[:n])) == "flattened"
                                       for n in range(1, len(parts)))


def test_the_template_maps_every_field_the_ecs_format_writes() -> None:
    ref = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")
    alerts = make_alerts(1500, ref.id, recent(600), timedelta(minutes=1), seed=70)
    sample = SHARED_SAMPLES / "elastic" / "m365_defender" / "alert" / "test-alert.log"
    if sample.exists():
        lines = [orjson.loads(line) for line in sample.read_text().splitlines() if line.strip()]
        alerts += [line for line in lines if "id" in line]  # (the fixture also holds an empty page)
    fields = {leaf for alert in alerts for leaf in _leaves(orjson.loads(ecs.encode(normalise(alert, ref, recent(0)))))}
    assert {field for field in fields if not _mapped(field)} == set()


# ---- a kill -9 mid-bulk -------------------------------------------------------------------------------

def test_kill_9_mid_bulk_then_every_alert_is_indexed_exactly_once(setup: CloudSetup, es: EsPeer) -> None:
    alerts = _alerts(setup, "contoso", 12, 71)
    es.reject_requests(1000, status=503)  # the daemon keeps re-sending its first bulk
    setup.sinks = {"elastic": _sink(es, batch_max_events=5)}
    first = daemon(setup.write())
    until(lambda: len(es.bulk_requests) >= 3, first)
    es.reset()  # lets the next bulk through; the daemon dies during or right after it
    es.lose_responses(1)
    until(lambda: es.count() >= 5, first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    ids = [document_id(_alert(setup, "contoso", a).version_key) for a in alerts]
    assert sorted(doc["_id"] for doc in es.documents()) == sorted(ids)  # every one, none twice


# ---- the standard battery ---------------------------------------------------------------------------

class TestElasticBattery(ConnectorBattery):
    @pytest.fixture
    def peer(self, es: EsPeer) -> EsPeer:
        return es

    def sink(self, peer: EsPeer, tmp: Path) -> dict[str, Any]:
        return _sink(peer)

    def received(self, peer: EsPeer) -> list[bytes]:
        return [orjson.dumps(doc["source"]) for doc in peer.documents()]

    def restart(self, peer: EsPeer, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def poison(self, peer: EsPeer, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        bad = normalise(alert, TenantRef(id=alert["tenantId"], label="contoso"), recent(0))
        peer.always_fail([document_id(bad.version_key)], status=400, type="document_parsing_exception",
                         reason="failed to parse")
        return "document_parsing_exception"

    def comparable(self, body: bytes) -> bytes:
        return _without_ingested(body)

    def secrets(self, peer: EsPeer, tmp: Path) -> list[str]:
        return [API_KEY]


def test_an_elastic_cloud_id_resolves_to_its_deployment(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import base64

    from connectors.elasticsearch import ElasticsearchSinkConfig, client_for

    cloud_id = "mssp-prod:" + base64.b64encode(b"westeurope.azure.elastic-cloud.com:443$es1234$kb5678").decode()
    monkeypatch.setenv("DF_TEST_CLOUD_ID", cloud_id)
    monkeypatch.setenv("DF_TEST_ES_KEY", API_KEY)
    config = ElasticsearchSinkConfig.model_validate({"cloud_id": "env:DF_TEST_CLOUD_ID",
                                                     "api_key": "env:DF_TEST_ES_KEY"})
    client = client_for(config)
    try:
        nodes = [(node.scheme, node.host, node.port) for node in client.transport.node_pool.all()]
    finally:
        asyncio.run(client.close())
    assert nodes == [("https", "es1234.westeurope.azure.elastic-cloud.com", 443)]
    with pytest.raises(ValueError, match="exactly one of hosts or cloud_id"):
        ElasticsearchSinkConfig.model_validate({"hosts": ["https://h:9200"], "cloud_id": "env:DF_TEST_CLOUD_ID"})


# ---- TLS keys, a pinned fingerprint, a cluster's size limit ----------------------------------------

CLIENT_KEY_PASSWORD = "SECRET-es-client-key-2f8a"


def test_a_client_certificate_for_mutual_tls(setup: CloudSetup, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_TEST_ES_KEY", API_KEY)
    client_ca = trustme.CA()
    files = client_certificate(client_ca, tmp_path, CLIENT_KEY_PASSWORD)
    plain_key = tmp_path / "client-key-plain.pem"  # the client takes no key password
    plain_key.write_bytes(serialization.load_pem_private_key(files.key.read_bytes(), CLIENT_KEY_PASSWORD.encode())
                          .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
    with EsPeer(api_key=API_KEY, client_ca=client_ca) as strict:
        _alerts(setup, "contoso", 2, 72)
        setup.forwarder["once_deadline"] = "1s"
        setup.sinks = {"elastic": _sink(strict)}  # no client certificate: the cluster hangs up
        refused = _run(setup)
        assert refused.returncode == 1 and strict.count() == 0
        setup.sinks = {"elastic": _sink(strict, client_cert=str(files.cert), client_key=str(plain_key))}
        result = _run(setup)
        assert result.returncode == 0, result.stderr
        assert strict.count() == 2


def test_tls_keys_the_client_cannot_honour_are_refused(setup: CloudSetup, es: EsPeer) -> None:
    setup.tenant("contoso")
    setup.sinks = {"elastic": _sink(es, client_cert="/etc/c.pem", client_key_password="env:DF_TEST_ES_KEY",
                                    tls_server_name="es.example")}
    result = _run(setup)
    assert result.returncode == 2
    assert "sinks.elastic.client_key_password: not supported by the elasticsearch sink" in result.stderr
    assert "sinks.elastic.tls_server_name: not supported by the elasticsearch sink" in result.stderr
    setup.sinks = {"elastic": _sink(es, client_cert="/etc/c.pem", ssl_assert_fingerprint=es.fingerprint)}
    result = _run(setup)
    assert result.returncode == 2 and "client_cert cannot be used with ssl_assert_fingerprint" in result.stderr


def test_a_fingerprint_that_does_not_match_stops_the_sink(setup: CloudSetup, es: EsPeer) -> None:
    _alerts(setup, "contoso", 1, 73)
    sink = _sink(es, ssl_assert_fingerprint="ab" * 32)
    del sink["ca_file"]
    setup.sinks = {"elastic": sink}
    result = _run(setup)
    assert result.returncode == 1 and "fails verification" in result.stderr
    assert es.bulk_requests == []


def _padded(sizes: list[int]) -> list[Event]:
    """One event per size, each a document of about that many bytes."""
    meta = EventMeta("t-1", "acme", "a", "t-1/a/2026", Severity.high, 1.5e9)
    return [Event(i, meta._replace(alert_id=f"a{i}", version_key=f"t-1/a{i}/2026"),
                  b'{"n":%d,"pad":"%b"}' % (i, b"x" * size)) for i, size in enumerate(sizes)]


def test_a_413_halves_the_bulk_and_later_batches_stay_under_the_learnt_limit(es: EsPeer) -> None:
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(_sink(es, format="cim")))
    events = _padded([1000] * 8)
    one = len(b"".join(connector._operation(events[0]))) + 2
    es.max_content_length = 2 * one + 100  # two documents fit a request, three do not

    async def go() -> list[list[Any]]:
        try:
            return [await connector.send(events[:4]), await connector.send(events[4:])]
        finally:
            await connector.close()

    first, second = asyncio.run(go())
    assert {r.outcome for r in first + second} == {Outcome.OK} and es.count() == 8
    assert [(r.status, r.items) for r in es.bulk_requests] == [(413, 0), (200, 2), (200, 2), (200, 2), (200, 2)]


def test_one_document_too_large_for_the_cluster_is_a_dead_letter(es: EsPeer) -> None:
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(_sink(es, format="cim")))
    events = _padded([100, 5000, 100])
    es.max_content_length = 3000

    async def go() -> list[Any]:
        try:
            return await connector.send(events)
        finally:
            await connector.close()

    results = asyncio.run(go())
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.PERMANENT, Outcome.OK]
    assert results[1].reason.startswith("document too large for the cluster (HTTP 413")
    assert es.count() == 2


# ---- timeouts: connecting is short, reading takes request_timeout ---------------------------------

def _send_alone(config: dict[str, Any], events: list[Event], limit: float) -> tuple[list[Any], float]:
    """One send of a fresh connector, and how long it took; a send that outlasts `limit` fails the
    test (the client would otherwise wait out its whole request_timeout)."""
    connector = ElasticsearchConnector("elastic", ElasticsearchSinkConfig.model_validate(config))

    async def go() -> list[Any]:
        try:
            return await asyncio.wait_for(connector.send(events), limit)
        finally:
            await connector.close()

    start = time.monotonic()
    return asyncio.run(go()), time.monotonic() - start


def test_an_unreachable_cluster_is_a_connect_timeout_within_seconds(black_hole: int) -> None:
    """A host that never accepts is told within the short connect timeout (neterr.CONNECT_TIMEOUT,
    10 s) although request_timeout is 60 s: a retry, named host:port and cause."""
    config = {"type": "elasticsearch", "hosts": [f"http://127.0.0.1:{black_hole}"], "request_timeout": "60s"}
    results, took = _send_alone(config, _padded([10, 10]), limit=20)
    assert [r.outcome for r in results] == [Outcome.RETRY] * 2
    assert results[0].reason == f"127.0.0.1:{black_hole}: connect timeout after {CONNECT_TIMEOUT:g}s", results[0].reason
    assert CONNECT_TIMEOUT - 1 < took < CONNECT_TIMEOUT + 5, took


def test_a_cluster_that_accepts_but_does_not_answer_is_a_read_timeout_of_request_timeout() -> None:
    """Once connected, the answer may take request_timeout (here 1.5 s), and its expiry is told
    as a read timeout, not as the connect timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever answers
        port = silent.getsockname()[1]
        config = {"type": "elasticsearch", "hosts": [f"http://127.0.0.1:{port}"], "request_timeout": "1.5s"}
        results, took = _send_alone(config, _padded([10]), limit=10)
    assert [r.outcome for r in results] == [Outcome.RETRY]
    assert results[0].reason == f"127.0.0.1:{port}: read timeout after 1.5s", results[0].reason
    assert 1.4 < took < 5, took
