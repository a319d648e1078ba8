"""The Splunk HEC connector against a faithful HEC peer (tests/peers/hec_peer.py) over HTTPS:
envelopes and per-tenant indexes, gzip, sizes, every documented code, busy periods, indexer
acknowledgement (lost acks re-sent), a kill -9 mid-batch, `check`, and the standard battery."""
from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme

from connectors.base import Event, Outcome, SinkFatal
from connectors.splunk_hec import (
    EVENT_PATH,
    HEC_CODES,
    NO_CODE_OUTCOMES,
    OUTCOMES,
    Action,
    SplunkHecConnector,
    SplunkHecSinkConfig,
    markdown_table,
)
from core.model.schema import EventMeta, Severity, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import raw
from mappings.graph_alerts_v2 import normalise
from tests.connectors.battery import ConnectorBattery
from tests.connectors.kinds import kind_events
from tests.helpers import CloudSetup, daemon, recent, run_cli, until
from tests.peers.alert_factory import make_alerts
from tests.peers.hec_peer import HecPeer, HecRequest, TokenSettings
from tests.peers.mutual_tls import client_certificate

TOKEN = "11111111-aaaa-4bbb-8ccc-SECRET0hec0token"  # recognisable, for the secret scan
ACK_TOKEN = "22222222-aaaa-4bbb-8ccc-SECRET0ack0token"


@pytest.fixture
def hec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HecPeer]:
    monkeypatch.setenv("DF_TEST_HEC_TOKEN", TOKEN)
    monkeypatch.setenv("DF_TEST_HEC_ACK_TOKEN", ACK_TOKEN)
    tokens = {TOKEN: TokenSettings(), ACK_TOKEN: TokenSettings(use_ack=True)}
    with HecPeer(tokens=tokens) as peer:
        yield peer


def _sink(hec: HecPeer, **keys: Any) -> dict[str, Any]:
    table = {"type": "splunk_hec", "url": hec.url, "token": "env:DF_TEST_HEC_TOKEN", "ca_file": str(hec.ca_file),
             "retry_initial": "0.05s", "retry_max": "0.2s"}
    if keys.pop("ack", False):
        table |= {"ack": True, "token": "env:DF_TEST_HEC_ACK_TOKEN", "ack_poll_interval": "0.05s"}
    return table | keys


def _posts(hec: HecPeer) -> list[HecRequest]:
    """The event requests the peer served (ack queries left out)."""
    return [r for r in hec.requests if r.path == EVENT_PATH]


def _bodies(hec: HecPeer, index: str | None = None) -> list[bytes]:
    return [orjson.dumps(record["event"]) for record in hec.events(index)]


def _alerts(setup: CloudSetup, label: str, count: int, seed: int) -> list[dict[str, Any]]:
    tenant_id = setup.tenant(label)
    alerts = make_alerts(count, tenant_id, recent(120), timedelta(minutes=1), seed=seed)
    setup.cloud.add_alerts(tenant_id, alerts)
    return alerts


def _raw(setup: CloudSetup, label: str, alert: dict[str, Any]) -> bytes:
    return raw.encode(normalise(alert, TenantRef(id=setup.tenants[label], label=label), recent(0)))


# ---- envelopes, routing, requests ----------------------------------------------------------------

def test_each_tenant_lands_in_its_own_index_with_its_metadata(setup: CloudSetup, hec: HecPeer) -> None:
    alerts = {"contoso": _alerts(setup, "contoso", 4, 41), "fabrikam": _alerts(setup, "fabrikam", 3, 42)}
    setup.sinks = {"splunk": _sink(hec, host="fwd-01")}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert hec.indexes() == {"mssp_contoso", "mssp_fabrikam"}
    for label, sent in alerts.items():
        stored = hec.events(f"mssp_{label}")
        assert sorted(_bodies(hec, f"mssp_{label}")) == sorted(_raw(setup, label, a) for a in sent)
        assert {r["fields"]["tenant_id"] for r in stored} == {setup.tenants[label]}  # never the other's
        by_id = {r["event"]["id"]: r for r in stored}
        for alert in sent:
            record = by_id[alert["id"]]
            alert_time = normalise(alert, TenantRef(id="t", label="l"), recent(0)).times.last_updated.timestamp()
            assert record["time"] == round(alert_time, 3)
            assert (record["sourcetype"], record["host"]) == ("ms365:defender:incident:alerts", "fwd-01")
            assert record["source"] == f"defender-forwarder:{setup.tenants[label]}"
            assert record["fields"] == {"tenant_id": setup.tenants[label], "customer": label,
                                        "severity": record["fields"]["severity"],
                                        "version_key": f"{setup.tenants[label]}/{alert['id']}/"
                                                       f"{record['fields']['version_key'].rsplit('/', 1)[1]}",
                                        "kind": "alert"}
            assert record["fields"]["severity"] == alert["severity"].lower()
    assert all(r.gzip and r.authorization == f"Splunk {TOKEN}" for r in _posts(hec))


@pytest.mark.parametrize(("keys", "alert_type", "incident_type", "incident_index"), [
    ({}, "ms365:defender:incident:alerts", "ms365:defender:incident", "mssp_acme"),
    ({"format": "ocsf", "index_incident": "soc_{tenant}"}, "defender_forwarder:ocsf",
     "defender_forwarder:incident:ocsf", "soc_acme"),
    ({"sourcetype": "a:st", "sourcetype_incident": "i:st"}, "a:st", "i:st", "mssp_acme"),
])
def test_alerts_and_incidents_land_apart(hec: HecPeer, keys: dict[str, Any], alert_type: str,
                                         incident_type: str, incident_index: str) -> None:
    results = asyncio.run(_send(_connector(hec, **keys), kind_events(TenantRef(id="t-1", label="acme"))))
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK]
    stored = {record["fields"]["kind"]: record for record in hec.events()}
    assert (stored["alert"]["sourcetype"], stored["alert"]["index"]) == (alert_type, "mssp_acme")
    assert (stored["incident"]["sourcetype"], stored["incident"]["index"]) == (incident_type, incident_index)
    assert stored["incident"]["event"]["id"] == "2972395" and stored["incident"]["event"]["kind"] == "incident"


def test_batches_respect_events_and_bytes(setup: CloudSetup, hec: HecPeer) -> None:
    _alerts(setup, "contoso", 7, 43)
    setup.sinks = {"splunk": _sink(hec, batch_max_events=3, compress=False)}
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    assert [r.events for r in _posts(hec)] == [3, 3, 1]
    assert not any(r.gzip for r in _posts(hec))

    hec.reset()
    _alerts(setup, "fabrikam", 6, 44)
    setup.sinks = {"splunk": _sink(hec, batch_max_bytes=12_000, compress=False)}
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    assert len(hec.events("mssp_fabrikam")) == 6
    assert len(_posts(hec)) > 1 and all(r.content_length <= 12_000 for r in _posts(hec))


def test_a_server_limit_learnt_from_413(setup: CloudSetup, tmp_path: Path, hec: HecPeer) -> None:
    hec.max_content_length = 15_000
    sent = _alerts(setup, "contoso", 8, 45)
    setup.sinks = {"splunk": _sink(hec, compress=False)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert sorted(_bodies(hec)) == sorted(_raw(setup, "contoso", a) for a in sent)
    assert _posts(hec)[0].status == 413 and "requests now stay under" in result.stderr


# ---- every code, busy periods, a bad token -----------------------------------------------------

def _events(n: int) -> list[Event]:
    meta = EventMeta("t-1", "acme", "a", "t-1/a/2026", Severity.high, 1.5e9)
    return [Event(i, meta._replace(alert_id=f"a{i}", version_key=f"t-1/a{i}/2026"), b'{"n":%d}' % i)
            for i in range(n)]


def _connector(hec: HecPeer, **keys: Any) -> SplunkHecConnector:
    return SplunkHecConnector("splunk", SplunkHecSinkConfig.model_validate(_sink(hec, **keys)))


async def _send(connector: SplunkHecConnector, events: list[Event]) -> list[Any]:
    try:
        return await connector.send(events)
    finally:
        await connector.close()


def test_the_code_table_covers_every_documented_code() -> None:
    assert sorted(HEC_CODES) == list(range(23))
    assert {code for code, c in HEC_CODES.items() if c.action is Action.RETRY} == {8, 9, 18, 19, 20}
    assert {code for code, c in HEC_CODES.items() if c.action is Action.SPLIT} == {6, 7, 12, 13, 15}


@pytest.mark.parametrize("code", sorted(HEC_CODES))
def test_each_code_from_the_server_gets_its_outcome(hec: HecPeer, code: int) -> None:
    hec.force(code)
    action = HEC_CODES[code].action
    if action is Action.STOP:
        with pytest.raises(SinkFatal, match=f"code {code} "):
            asyncio.run(_send(_connector(hec), _events(3)))
        assert hec.events() == []
        return
    results = asyncio.run(_send(_connector(hec), _events(3)))
    outcomes = [r.outcome for r in results]
    if action is Action.RETRY:
        assert outcomes == [Outcome.RETRY] * 3 and hec.events() == []
    elif action is Action.SPLIT:  # the peer names event 0: it is refused, the others sent again
        assert outcomes == [Outcome.PERMANENT, Outcome.OK, Outcome.OK] and len(hec.events()) == 2
        assert results[0].reason == f"Splunk HEC code {code}: {HEC_CODES[code].text}"
    else:
        assert outcomes == [Outcome.OK] * 3 and len(hec.events()) == 3


def test_a_split_delivers_before_dead_letters_the_bad_one_and_resends_the_rest(hec: HecPeer) -> None:
    hec.reject_events(lambda envelope: envelope.get("event") == {"n": 2})
    results = asyncio.run(_send(_connector(hec), _events(5)))
    assert [r.outcome for r in results] == [Outcome.OK, Outcome.OK, Outcome.PERMANENT, Outcome.OK, Outcome.OK]
    assert "Invalid data format" in results[2].reason
    assert sorted(r["event"]["n"] for r in hec.events()) == [0, 1, 3, 4]  # none twice
    first, second = _posts(hec)  # the two after the bad one went again at once, without a backoff
    assert (first.code, first.invalid_event_number, second.events) == (6, 2, 2)


def test_busy_periods_are_waited_out(setup: CloudSetup, hec: HecPeer) -> None:
    sent = _alerts(setup, "contoso", 5, 46)
    hec.busy(requests=4)
    setup.sinks = {"splunk": _sink(hec, batch_max_events=2)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert sorted(_bodies(hec)) == sorted(_raw(setup, "contoso", a) for a in sent)
    assert [r.code for r in _posts(hec)[:4]] == [9] * 4


def test_a_bad_token_stops_only_this_sink_and_check_says_so(setup: CloudSetup, hec: HecPeer,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _alerts(setup, "contoso", 2, 47)
    monkeypatch.setenv("DF_TEST_BAD_TOKEN", "33333333-aaaa-4bbb-8ccc-000000000000")
    setup.sinks = {"splunk": _sink(hec, token="env:DF_TEST_BAD_TOKEN"),
                   "archive": {"type": "file", "path": str(setup.tmp / "out" / "{tenant}.ndjson")}}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1
    assert 'code 4 "Invalid token"' in result.stderr and "check `token`" in result.stderr
    assert len((setup.tmp / "out" / "contoso.ndjson").read_text().splitlines()) == 2  # the other sink went on
    store = SQLiteStore(setup.state)
    assert store.outbox_depth("splunk") == 2
    store.close()
    check = run_cli("check", "--config", str(setup.write()))
    assert check.returncode == 1 and "Invalid token" in check.stderr
    setup.sinks["splunk"]["token"] = "env:DF_TEST_HEC_TOKEN"
    check = run_cli("check", "--config", str(setup.write()))
    assert check.returncode == 0, check.stderr
    assert "HEC is healthy" in check.stderr and "token accepted" in check.stderr
    assert hec.events() == []  # check sends nothing


def test_an_untrusted_certificate_stops_the_sink(setup: CloudSetup, hec: HecPeer, tmp_path: Path) -> None:
    _alerts(setup, "contoso", 1, 48)
    setup.sinks = {"splunk": _sink(hec, ca_file=None)}
    del setup.sinks["splunk"]["ca_file"]
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1 and "fails verification" in result.stderr
    assert _posts(hec) == []


# ---- indexer acknowledgement -----------------------------------------------------------------------

def test_rows_are_released_only_when_acknowledged(hec: HecPeer) -> None:
    hec.ack_delay = 0.4
    started = time.monotonic()
    results = asyncio.run(_send(_connector(hec, ack=True), _events(4)))
    assert [r.outcome for r in results] == [Outcome.OK] * 4
    assert time.monotonic() - started >= 0.4
    assert any(r.path == "/services/collector/ack" for r in hec.requests)


def test_a_lost_ack_is_sent_again_without_loss(setup: CloudSetup, hec: HecPeer) -> None:
    sent = _alerts(setup, "contoso", 6, 49)
    hec.drop_acks(1)  # Splunk lost the first request's events and will never acknowledge them
    setup.sinks = {"splunk": _sink(hec, ack=True, batch_max_events=3, ack_timeout="0.5s")}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert sorted(_bodies(hec)) == sorted(_raw(setup, "contoso", a) for a in sent)  # each exactly once
    assert "no indexer acknowledgement within 0.5s" in result.stderr


def test_kill_9_mid_batch_then_restart_delivers_everything(setup: CloudSetup, hec: HecPeer) -> None:
    sent = _alerts(setup, "contoso", 8, 50)
    hec.ack_delay = 30  # the first batch is stored but not acknowledged when the forwarder dies
    setup.sinks = {"splunk": _sink(hec, ack=True, batch_max_events=4)}
    first = daemon(setup.write())
    until(lambda: len(hec.events()) >= 4, first)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    hec.ack_delay = 0
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    bodies = _bodies(hec)
    assert set(bodies) == {_raw(setup, "contoso", a) for a in sent}
    assert len(bodies) - len(sent) <= 4  # at most the batch in flight, twice


# ---- the standard battery -------------------------------------------------------------------------

class TestHecBattery(ConnectorBattery):
    @pytest.fixture
    def peer(self, hec: HecPeer) -> HecPeer:
        return hec

    def sink(self, peer: HecPeer, tmp: Path) -> dict[str, Any]:
        return _sink(peer, ack=True)

    def received(self, peer: HecPeer) -> list[bytes]:
        return _bodies(peer)

    def restart(self, peer: HecPeer, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def poison(self, peer: HecPeer, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        peer.reject_events(lambda envelope: envelope.get("event", {}).get("id") == alert["id"])
        return "Invalid data format"

    def secrets(self, peer: HecPeer, tmp: Path) -> list[str]:
        return [TOKEN, ACK_TOKEN]


# ---- TLS: a client certificate, another server name, the status table for the docs ------------------

CLIENT_KEY_PASSWORD = "SECRET-hec-client-key-5d1c"


def test_a_client_certificate_for_mutual_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client_ca = trustme.CA()
    files = client_certificate(client_ca, tmp_path, CLIENT_KEY_PASSWORD)
    monkeypatch.setenv("DF_TEST_HEC_TOKEN", TOKEN)
    monkeypatch.setenv("DF_TEST_CLIENT_KEY_PASSWORD", CLIENT_KEY_PASSWORD)
    with HecPeer(tokens={TOKEN: TokenSettings()}, client_ca=client_ca) as strict:
        refused = asyncio.run(_send(_connector(strict), _events(2)))
        assert [r.outcome for r in refused] == [Outcome.RETRY] * 2 and strict.events() == []
        results = asyncio.run(_send(_connector(strict, client_cert=str(files.cert), client_key=str(files.key),
                                               client_key_password="env:DF_TEST_CLIENT_KEY_PASSWORD"), _events(2)))
        assert [r.outcome for r in results] == [Outcome.OK] * 2 and len(strict.events()) == 2


def test_tls_server_name_is_the_name_the_certificate_must_carry(hec: HecPeer) -> None:
    # The peer's certificate names 127.0.0.1 and localhost; the URL says 127.0.0.1.
    results = asyncio.run(_send(_connector(hec, tls_server_name="localhost"), _events(1)))
    assert [r.outcome for r in results] == [Outcome.OK]
    with pytest.raises(SinkFatal, match="fails verification .*Hostname mismatch"):
        asyncio.run(_send(_connector(hec, tls_server_name="splunk.example"), _events(1)))
    assert len(hec.events()) == 1


def test_tls_keys_of_a_plain_http_url_are_refused(hec: HecPeer) -> None:
    with pytest.raises(ValueError, match="client_cert, tls_server_name need an https url"):
        SplunkHecSinkConfig.model_validate(_sink(hec, url="http://127.0.0.1:8088", client_cert="/c.pem",
                                                 tls_server_name="splunk.example"))


def test_the_status_table_for_the_docs_comes_from_the_code_table() -> None:
    rows = markdown_table().splitlines()[2:]
    by_code = {row.split(" | ")[0].removeprefix("| "): row for row in rows}
    for code, hec_code in HEC_CODES.items():
        assert by_code[str(code)] == (f"| {code} | {hec_code.status} | {hec_code.text} | "
                                      f"{OUTCOMES[hec_code.action]} |")
    assert [row for row in rows if row.startswith("| none |")] == [
        f"| none | {statuses} | | {outcome} |" for statuses, outcome in NO_CODE_OUTCOMES]
    assert len(rows) == len(HEC_CODES) + len(NO_CODE_OUTCOMES)
