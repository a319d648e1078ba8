"""Every secret of a whole run stays out of every log, state file, output and error.

One configuration with every kind of secret the forwarder handles (the Graph app's client
secret, a HEC token, an Elasticsearch API key, an Event Hubs key, an SMTP password), each
recognisable, routed to every sink at once; then the commands an operator runs, including
ones that fail (a refused HEC token, `check`, `tenants`, `dead-letters list`). Every byte
those runs wrote (stdout, stderr, the state file and its WAL, the NDJSON archive, and what
every peer received) is searched for every secret: zero hits.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import SECRET, CloudSetup, recent, run_cli
from tests.peers.alert_factory import make_alerts
from tests.peers.smtp_server import SmtpServer
from tests.reliability.fleet import ES_KEY, HEC_TOKEN, HUB_KEY, Peers, sinks

SMTP_PASSWORD = "SECRET-fleet-smtp-password"
SECRETS = (SECRET, HEC_TOKEN, ES_KEY, HUB_KEY, SMTP_PASSWORD)


def _peer_bytes(peers: Peers, smtp: SmtpServer) -> dict[str, bytes]:
    return {
        "syslog-ng": "\n".join(m["RAWMSG"] for m in peers.syslog.messages()).encode(),
        "hec events": b"\n".join(r["raw"] for r in peers.hec.events()),
        "es documents": repr([d["source"] for d in peers.es.documents()]).encode(),
        "event hub": b"\n".join(e.body for e in peers.hub.events()),
        "sentinel rows": repr(peers.sentinel.records()).encode(),
        "smtp": b"\n".join(r.raw for r in smtp.messages()),
    }


def test_no_secret_anywhere(setup: CloudSetup, peers: Peers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DF_FLEET_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("DF_FLEET_BAD_HEC", HEC_TOKEN[:-2] + "99")  # refused: its error must not echo it
    with SmtpServer(users={"forwarder": SMTP_PASSWORD}) as smtp:
        for label, seed in (("contoso", 1), ("fabrikam", 2)):
            tenant_id = setup.tenant(label)
            setup.cloud.add_alerts(tenant_id, make_alerts(4, tenant_id, recent(60), timedelta(minutes=1), seed=seed))
        tables: dict[str, dict[str, Any]] = sinks(peers)
        tables["mail"] = {"type": "email", "host": "127.0.0.1", "port": smtp.port, "username": "forwarder",
                          "password": "env:DF_FLEET_SMTP_PASSWORD", "from": "defender@mssp.example",
                          "to": ["soc+{tenant}@mssp.example"], "ca_file": str(smtp.ca_file)}
        tables["archive"] = {"type": "file", "path": str(setup.tmp / "archive.ndjson"), "format": "raw"}
        tables["refused"] = {**tables["splunk"], "token": "env:DF_FLEET_BAD_HEC"}
        setup.sinks = tables
        setup.forwarder.update(log_level="debug", once_deadline="5s")
        config = str(setup.write())
        runs = [run_cli("run", "--once", "--config", config), run_cli("check", "--config", config),
                run_cli("tenants", "--config", config), run_cli("dead-letters", "list", "--config", config),
                run_cli("run", "--once", "--config", config)]
        assert runs[0].returncode == 1 and "Invalid token" in runs[0].stderr  # the refused sink failed...
        assert len(smtp.messages()) == 8 and len(peers.hec.events()) == 8  # ...and the others delivered
        written: dict[str, bytes] = {f"run {i} {stream}": getattr(run, stream).encode()
                                     for i, run in enumerate(runs) for stream in ("stdout", "stderr")}
        written |= {path.name: path.read_bytes() for path in Path(setup.tmp).glob("state.db*")}
        written["archive"] = (setup.tmp / "archive.ndjson").read_bytes()
        written |= _peer_bytes(peers, smtp)
    hits = {(where, secret) for where, data in written.items() for secret in SECRETS if secret.encode() in data}
    assert hits == set()
    assert all(data for where, data in written.items() if where.startswith(("state.db", "archive", "hec")))
