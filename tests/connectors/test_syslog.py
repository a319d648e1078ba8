"""The syslog connector against a real syslog-ng (tests/peers/syslog_ng.py): every transport
and framing byte for byte, TLS verification and mutual TLS, sizes, a receiver that restarts,
and the standard connector battery."""
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from connectors.base import Event, EventResult, Outcome
from connectors.syslog import SyslogConnector, SyslogSinkConfig
from core.model.schema import Alert, EventMeta, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import cef, raw, shortener
from mappings.graph_alerts_v2 import normalise
from tests.cef_parser import parse as parse_cef
from tests.connectors.battery import ConnectorBattery
from tests.helpers import CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.syslog_ng import SyslogCerts, SyslogNg, make_certs, require_syslog_ng

KEY_PASSWORD = "SECRET-syslog-key-pass-4c1e"  # recognisable, for the secret scan

RFC5424_HEADER = re.compile(r"<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (\S+) - - - ")
RFC3164_HEADER = re.compile(r"<(\d+)>([A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d) (\S+) (\S+): ")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> SyslogCerts:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def receiver(tmp_path: Path, certs: SyslogCerts) -> Iterator[SyslogNg]:
    require_syslog_ng()
    with SyslogNg(tmp_path / "syslog-ng", certs) as server:
        yield server


def _sink(receiver: SyslogNg, listener: str, **keys: Any) -> dict[str, Any]:
    protocol = {"udp": "udp", "tcp": "tcp", "tcp_lf": "tcp", "tls": "tls", "tls_lf": "tls"}[listener]
    table: dict[str, Any] = {"type": "syslog", "host": "127.0.0.1", "port": receiver.ports[listener],
                             "protocol": protocol, "hostname": "fwd-01", "retry_initial": "0.05s",
                             "retry_max": "0.2s"}
    if protocol != "udp":
        table["framing"] = "lf" if listener.endswith("_lf") else "octet-counting"
    if protocol == "tls":
        table["ca_file"] = str(receiver.certs.ca_file)
        table["tls_server_name"] = "localhost"
    return table | keys


def _alert(raw_alert: dict[str, Any], setup: CloudSetup, label: str) -> Alert:
    return normalise(raw_alert, TenantRef(id=setup.tenants[label], label=label), recent(0))


def _hostile(alerts: list[dict[str, Any]]) -> None:
    """Titles and descriptions with every character CEF must escape, and non-ASCII."""
    alerts[0]["title"] = "Pipe | back\\slash = equals — Café ünïcode ✓ 攻撃"
    alerts[0]["description"] = "line one\nline two a=b c\\d\r\nend | pipe"
    alerts[1]["title"] = "Injected\n<13>1 2026-01-01T00:00:00Z evil - - - CEF:0|fake|x|1|2|3|10|"
    alerts[1]["description"] = "x=1 y=2 \\= \\\\ trailing backslash\\"


# ---- byte for byte, per transport and framing ----------------------------------------------

@pytest.mark.parametrize("listener", ["udp", "tcp", "tcp_lf", "tls", "tls_lf"])
def test_alerts_arrive_byte_for_byte(setup: CloudSetup, receiver: SyslogNg, listener: str) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(6, tenant_id, recent(60), timedelta(minutes=1), seed=21)
    _hostile(alerts)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"siem": _sink(receiver, listener)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr

    got = receiver.wait_for(6, listener)
    lines = {cef.encode(_alert(a, setup, "contoso")) for a in alerts}
    if listener == "udp":  # 2048-byte datagrams: a longer line is shortened, as cef.fit documents
        by_id = {parse_cef(line.decode()).extension["cs3"]: line for line in lines}
        lines = set()
        for message in got:  # (the budget: 2048 less that message's own syslog header)
            budget = 2048 - (len(message["RAWMSG"].encode()) - len(message["MSG"].encode()))
            line = by_id[parse_cef(message["MSG"]).extension["cs3"]]  # (cs3, an id, is never cut)
            lines.add(cef.fit(line, budget)[0])
    assert {m["MSG"].encode() for m in got} == lines
    started = time.time()
    for message in got:
        header = RFC5424_HEADER.match(message["RAWMSG"])
        assert header, message["RAWMSG"][:120]
        assert message["RAWMSG"][header.end():] == message["MSG"]  # the CEF line is the whole MSG
        assert (message["HOST"], message["PROGRAM"]) == ("fwd-01", "defender-forwarder")
        assert message["FACILITY"] == "local4"
        assert abs(time.mktime(time.strptime(header[2], "%Y-%m-%dT%H:%M:%S.%fZ")) - time.timezone - started) < 120
    levels = {10: 2, 8: 3, 5: 4, 3: 5, 1: 6, 0: 6}  # CEF severity -> the syslog level it rides on
    assert all(m["PRI"] == 20 * 8 + levels[int(parse_cef(m["MSG"]).severity)] for m in got)


def test_rfc3164_with_a_fixed_facility_and_level(setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(3, tenant_id, recent(60), timedelta(minutes=1), seed=22)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"siem": _sink(receiver, "tcp", rfc="3164", facility="local7", severity="warning",
                                 app_name="mssp-cef")}
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    got = receiver.wait_for(3, "tcp")
    assert {m["MSG"].encode() for m in got} == {cef.encode(_alert(a, setup, "contoso")) for a in alerts}
    for message in got:
        header = RFC3164_HEADER.match(message["RAWMSG"])
        assert header and header[1] == str(23 * 8 + 4) and header[4] == "mssp-cef"
        assert (message["PROGRAM"], message["HOST"], message["SEVERITY"]) == ("mssp-cef", "fwd-01", "warning")


def test_a_60_kb_alert_over_tls(setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(2, tenant_id, recent(60), timedelta(minutes=1), seed=23)
    alerts[0]["description"] = ("Ünïcode and escapes = \\ | " * 2400)[:52_000]
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"cef": _sink(receiver, "tls"), "json": _sink(receiver, "tls", format="raw")}
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    got = receiver.wait_for(4, "tls")
    bodies = {m["MSG"].encode() for m in got}
    big_json = raw.encode(_alert(alerts[0], setup, "contoso"))
    assert 60_000 < len(big_json) < 65_000 and big_json in bodies  # the whole alert, one message
    assert cef.encode(_alert(alerts[0], setup, "contoso")) in bodies  # CEF: msg cut to its 1023 bytes


# ---- TLS: verification and mutual TLS --------------------------------------------------------

def _pending(setup: CloudSetup) -> int:
    store = SQLiteStore(setup.state)
    try:
        return store.outbox_depth("siem")
    finally:
        store.close()


def test_an_untrusted_server_certificate_stops_the_sink_and_sends_nothing(setup: CloudSetup,
                                                                          receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(3, tenant_id, recent(60), timedelta(minutes=1), seed=24))
    setup.sinks = {"siem": _sink(receiver, "tls", ca_file=str(receiver.certs.untrusted_ca_file))}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 1
    assert "fails verification" in result.stderr and "ca_file" in result.stderr
    assert _pending(setup) == 3  # kept for when the configuration is fixed
    time.sleep(0.3)
    assert receiver.messages() == []

    del setup.sinks["siem"]["ca_file"]  # the system store does not know the test CA either
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 1
    setup.sinks["siem"]["tls_verify"] = False  # explicit: then it sends, with a warning
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert "NOT checked" in result.stderr
    assert len(receiver.wait_for(3, "tls")) == 3


def _encrypted_key(certs: SyslogCerts, path: Path) -> Path:
    key = serialization.load_pem_private_key(certs.client_key.read_bytes(), password=None)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(KEY_PASSWORD.encode())))
    return path


def test_mutual_tls(setup: CloudSetup, tmp_path: Path, certs: SyslogCerts,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    require_syslog_ng()
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1), seed=25))
    with SyslogNg(tmp_path / "mtls", certs, require_client_cert=True) as strict:
        setup.sinks = {"siem": _sink(strict, "tls")}
        refused = run_cli("run", "--once", "--config", str(setup.write()))
        assert refused.returncode == 1 and "client certificate" in refused.stderr
        assert _pending(setup) == 2

        monkeypatch.setenv("DF_TEST_KEY_PASSWORD", KEY_PASSWORD)
        setup.sinks["siem"] |= {"client_cert": str(certs.client_cert),
                                "client_key": str(_encrypted_key(certs, tmp_path / "client-key.pem")),
                                "client_key_password": "env:DF_TEST_KEY_PASSWORD"}
        result = run_cli("run", "--once", "--config", str(setup.write()))
        assert result.returncode == 0, result.stderr
        assert len(strict.wait_for(2, "tls")) == 2


# ---- framing, sizes ------------------------------------------------------------------------

def test_syslog_ng_refuses_the_wrong_framing(setup: CloudSetup, receiver: SyslogNg) -> None:
    """The byte-for-byte tests would catch a framing bug: syslog() takes octet-counting only."""
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(2, tenant_id, recent(60), timedelta(minutes=1), seed=26))
    setup.sinks = {"siem": _sink(receiver, "tcp", framing="lf")}
    run_cli("run", "--once", "--config", str(setup.write()))
    time.sleep(0.3)
    assert receiver.messages("tcp") == []
    assert "Invalid frame header" in receiver.errors()


def test_oversize_lines_are_shortened_or_truncated_and_counted(setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(3, tenant_id, recent(60), timedelta(minutes=1), seed=27)
    for alert in alerts:  # (the evidence identity keys would make each line need more than one cut
        alert.pop("evidence", None)  # at 1024 bytes; tests/mappings/test_cef_fit.py covers them)
    alerts[0]["description"] = "long = description \\ " * 200  # only msg needs cutting
    alerts[1]["title"] = "T" * 500
    alerts[1]["alertWebUrl"] = "https://security.microsoft.com/alerts/" + "x" * 900
    alerts[2]["incidentId"] = "9" * 1000  # an id: fit never cuts one, so the line itself is cut
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.sinks = {"siem": _sink(receiver, "udp", max_message_bytes=1024)}
    result = run_cli("run", "--once", "--config", str(setup.write()))
    assert result.returncode == 0, result.stderr
    assert "ok (2 shortened, 1 truncated)" in result.stderr
    assert "sent truncated and marked" in result.stderr
    got = [m["MSG"] for m in receiver.wait_for(3, "udp")]
    assert all(len(m["RAWMSG"].encode()) <= 1024 for m in receiver.messages("udp"))
    shortened = [parse_cef(line) for a in alerts[:2] for line in got if f"cs3={a['id']}" in line]
    assert shortened[0].extension["msg"].endswith("\u2026") and shortened[0].name == alerts[0]["title"]
    assert shortened[1].extension["flexString1"].endswith("\u2026")
    (cut,) = [line for line in got if not any(f"cs3={a['id']}" in line for a in alerts[:2])]
    assert cut.startswith("CEF:0|Microsoft|") and cut.endswith("\u2026") and "|rt=" in cut
    time.sleep(0.3)
    assert len(receiver.messages("udp")) == 3  # each sent once, none split, none dropped


# ---- connections, backpressure, check ----------------------------------------------------------

def test_one_connection_carries_every_batch(setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(9, tenant_id, recent(60), timedelta(minutes=1), seed=28))
    setup.sinks = {"siem": _sink(receiver, "tls", batch_max_events=2)}
    assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    assert len(receiver.wait_for(9, "tls")) == 9
    assert receiver.errors().count("Syslog connection accepted") == 1  # five batches, one TLS session


def test_receiver_down_fills_the_outbox_then_pauses_polling_and_everything_arrives(
        setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    alerts = make_alerts(8, tenant_id, recent(60), timedelta(minutes=1), seed=29)
    setup.cloud.add_alerts(tenant_id, alerts)
    setup.forwarder.update(page_size=2, once_deadline="1s")
    setup.sinks = {"siem": _sink(receiver, "tcp", max_outbox=3)}
    receiver.stop()
    down = run_cli("run", "--once", "--config", str(setup.write()))
    assert down.returncode == 1 and "paused (outbox full)" in down.stderr
    assert _pending(setup) == 4  # two pages of two, then the bound stopped the polling
    receiver.start()
    for _ in range(3):  # each run drains the outbox, then polls on from the cursor
        assert run_cli("run", "--once", "--config", str(setup.write())).returncode == 0
    got = [m["MSG"].encode() for m in receiver.wait_for(8, "tcp")]
    assert sorted(got) == sorted(cef.encode(_alert(a, setup, "contoso")) for a in alerts)
    assert _pending(setup) == 0


def test_check_probes_the_receiver_and_sends_nothing(setup: CloudSetup, receiver: SyslogNg) -> None:
    tenant_id = setup.tenant("contoso")
    setup.cloud.add_alerts(tenant_id, make_alerts(1, tenant_id, recent(60), timedelta(minutes=1), seed=30))
    setup.sinks = {"siem": _sink(receiver, "tls"),
                   "bad": _sink(receiver, "tls", ca_file=str(receiver.certs.untrusted_ca_file))}
    result = run_cli("check", "--config", str(setup.write()))
    assert result.returncode == 1
    siem = next(line for line in result.stderr.splitlines() if "siem" in line and "nothing sent" in line)
    assert "connected" in siem and "TLSv1.3" in siem and "verified" in siem
    assert "fails verification" in result.stderr
    time.sleep(0.2)
    assert receiver.messages() == []


# ---- the standard battery ---------------------------------------------------------------------

class TestSyslogBattery(ConnectorBattery):
    @pytest.fixture
    def peer(self, receiver: SyslogNg) -> SyslogNg:
        return receiver

    def sink(self, peer: SyslogNg, tmp: Path) -> dict[str, Any]:
        return _sink(peer, "tls", client_cert=str(peer.certs.client_cert),
                     client_key=str(_encrypted_key(peer.certs, tmp / "client-key.pem")),
                     client_key_password=f"file:{_password_file(tmp)}")

    def received(self, peer: SyslogNg) -> list[bytes]:
        return [m["MSG"].encode() for m in peer.messages("tls")]

    def restart(self, peer: SyslogNg, while_down: Any) -> None:
        peer.stop()
        while_down()
        peer.start()

    def poison(self, peer: SyslogNg, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        # A CEF line is always cut to fit; a JSON body cannot be, so it must not be sent at all.
        sink["format"] = "raw"
        alert["description"] = "J" * 70_000
        return "cannot be cut"

    def secrets(self, peer: SyslogNg, tmp: Path) -> list[str]:
        return [KEY_PASSWORD]


def _password_file(tmp: Path) -> Path:
    path = tmp / "key-password"
    path.write_text(KEY_PASSWORD)
    path.chmod(0o600)  # a secret file others can read is refused
    return path


# ---- the format's shortener, handed over by the app ---------------------------------------------

def test_a_line_that_does_not_fit_is_shortened_only_by_a_shortener_it_was_given(receiver: SyslogNg) -> None:
    ref = TenantRef(id="44444444-4444-4444-8444-444444444444", label="contoso")
    alerts = make_alerts(2, ref.id, recent(60), timedelta(minutes=1), seed=31)[::-1]  # (the longer first)
    alerts[0]["description"] = "long = description \\ " * 200
    normalised = [normalise(a, ref, recent(0)) for a in alerts]
    lines = [cef.encode(alert) for alert in normalised]
    events = [Event(i, EventMeta.of(alert), line)
              for i, (alert, line) in enumerate(zip(normalised, lines, strict=True))]
    limit = len(lines[1]) + 200  # the second fits with its header, the first does not
    assert len(lines[0]) > limit
    config = SyslogSinkConfig.model_validate(_sink(receiver, "udp", max_message_bytes=limit))
    assert shortener("raw") is None and shortener("cef") is not None

    async def send(connector: SyslogConnector) -> list[EventResult]:
        try:
            return await connector.send(events)
        finally:
            await connector.close()

    bare = asyncio.run(send(SyslogConnector("siem", config)))
    assert [r.outcome for r in bare] == [Outcome.PERMANENT, Outcome.OK]
    assert bare[0].reason.endswith(f"exceed max_message_bytes {limit}; a cef event cannot be cut")
    assert [m["MSG"].encode() for m in receiver.wait_for(1, "udp")] == [lines[1]]

    given = SyslogConnector("siem", config, shortener=shortener("cef"))
    assert [r.outcome for r in asyncio.run(send(given))] == [Outcome.OK, Outcome.OK]
    assert given.counters == {"shortened": 1, "truncated": 0}
    shortened = next(m["MSG"] for m in receiver.wait_for(3, "udp") if f"cs3={alerts[0]['id']}" in m["MSG"])
    assert parse_cef(shortened).extension["msg"].endswith("\u2026")
