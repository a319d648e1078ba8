"""The standard battery every SIEM connector must pass (as Singer SDK's standard tap tests).

A connector's test module subclasses `ConnectorBattery` and says how to reach its peer; the
battery then runs the real forwarder (`defender-forwarder run`) against the simulated cloud
and that peer, and checks what the peer received:

  delivers every event        every alert of several tenants, each body exactly as encoded
  survives a peer restart     the peer goes away mid-run and comes back: nothing is lost
  dead-letters a poisoned event   one event the peer (or the wire) can never take goes to the
                              dead letters with the reason; the others are delivered
  keeps secrets out           the Graph secret and the connector's own never show in the
                              logs, the state file or what the peer received
"""
from __future__ import annotations

import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from core.state.sqlite import SQLiteStore
from tests.helpers import SECRET, CloudSetup, daemon, recent, run_cli, until
from tests.peers.alert_factory import make_alerts


class ConnectorBattery:
    """Subclasses implement the hooks below and provide a `peer` fixture. What the peer should
    hold for an alert is the alert in the sink's format (its `format`, or the connector's
    default)."""

    # ---- hooks -------------------------------------------------------------------------
    def sink(self, peer: Any, tmp: Path) -> dict[str, Any]:
        """The `[sinks.siem]` table that points at `peer`."""
        raise NotImplementedError

    def received(self, peer: Any) -> list[bytes]:
        """The event bodies the peer holds, in arrival order (duplicates included)."""
        raise NotImplementedError

    def restart(self, peer: Any, while_down: Any) -> None:
        """Stop the peer, call `while_down()`, start it again."""
        raise NotImplementedError

    def poison(self, peer: Any, alert: dict[str, Any], sink: dict[str, Any]) -> str:
        """Make `alert` one this connector must dead-letter (telling the peer to refuse it, or
        changing the `sink` table); return a phrase of the reason."""
        raise NotImplementedError

    def comparable(self, body: bytes) -> Any:
        """What of a body the comparison sees: all of it, unless the format stamps the
        forwarder's own clock (ECS's `defender_forwarder.ingested`)."""
        return body

    def secrets(self, peer: Any, tmp: Path) -> list[str]:
        """The connector's own secrets in `sink(...)` (Graph's is checked anyway)."""
        return []

    # ---- the battery --------------------------------------------------------------------
    def test_delivers_every_event(self, setup: CloudSetup, peer: Any) -> None:
        raws = self._tenants(setup, {"contoso": 7, "fabrikam": 5})
        setup.sinks = {"siem": self.sink(peer, setup.tmp)}
        result = run_cli("run", "--once", "--config", str(setup.write()))
        assert result.returncode == 0, result.stderr
        self._assert_exactly(peer, setup, raws)

    def test_survives_a_peer_restart(self, setup: CloudSetup, peer: Any) -> None:
        raws = self._tenants(setup, {"contoso": 4})
        setup.forwarder.update(poll_interval="1s")
        setup.sinks = {"siem": {**self.sink(peer, setup.tmp), "retry_initial": "0.05s", "retry_max": "0.3s"}}
        forwarder = daemon(setup.write())
        try:
            until(lambda: len(self.received(peer)) >= 4, forwarder)
            later = make_alerts(5, setup.tenants["contoso"], recent(1), timedelta(seconds=5), seed=11)

            def while_down() -> None:
                setup.cloud.add_alerts(setup.tenants["contoso"], later)
                time.sleep(2.5)  # the daemon polls them and fails to deliver them meanwhile

            self.restart(peer, while_down)
            raws["contoso"] += later
            until(lambda: len(self.received(peer)) >= 9, forwarder)
        finally:
            forwarder.send_signal(signal.SIGTERM)
            forwarder.wait(20)
        self._assert_exactly(peer, setup, raws, duplicates_allowed=True)

    def test_dead_letters_a_poisoned_event(self, setup: CloudSetup, peer: Any) -> None:
        tenant_id = setup.tenant("contoso")
        alerts = make_alerts(4, tenant_id, recent(60), timedelta(minutes=1), seed=12)
        setup.sinks = {"siem": self.sink(peer, setup.tmp)}
        reason = self.poison(peer, alerts[1], setup.sinks["siem"])
        setup.cloud.add_alerts(tenant_id, alerts)
        result = run_cli("run", "--once", "--config", str(setup.write()))
        assert result.returncode == 0, result.stderr  # a dead letter is handled, not a failure
        warning = [line for line in result.stderr.splitlines() if "WARNING" in line and "sink siem" in line]
        assert len(warning) == 1 and "1 new dead letter" in warning[0], result.stderr
        assert "defender-forwarder dead-letters list --sink siem" in warning[0]
        store = SQLiteStore(setup.state)
        (letter,) = store.dead_letters()
        store.close()
        assert (letter.stage, letter.sink, letter.meta and letter.meta.alert_id) == ("deliver", "siem", alerts[1]["id"])
        assert reason in letter.reason
        healthy = {"contoso": [alerts[0], *alerts[2:]]}
        self._assert_exactly(peer, setup, healthy)

    def test_keeps_secrets_out(self, setup: CloudSetup, peer: Any) -> None:
        self._tenants(setup, {"contoso": 3})
        setup.forwarder.update(log_level="debug")
        setup.sinks = {"siem": self.sink(peer, setup.tmp)}
        result = run_cli("run", "--once", "--config", str(setup.write()))
        assert result.returncode == 0, result.stderr
        assert len(self.received(peer)) == 3
        places = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode(),
                  "received": b"\n".join(self.received(peer))}
        places |= {path.name: path.read_bytes() for path in setup.tmp.glob("state.db*")}
        for secret in (SECRET, *self.secrets(peer, setup.tmp)):
            assert not [where for where, data in places.items() if secret.encode() in data]

    # ---- helpers ------------------------------------------------------------------------
    def _tenants(self, setup: CloudSetup, counts: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        raws = {}
        for seed, (label, count) in enumerate(counts.items(), start=1):
            tenant_id = setup.tenant(label)
            raws[label] = make_alerts(count, tenant_id, recent(120), timedelta(minutes=1), seed=seed)
            setup.cloud.add_alerts(tenant_id, raws[label])
        return raws

    def _assert_exactly(self, peer: Any, setup: CloudSetup, raws: dict[str, list[dict[str, Any]]],
                        duplicates_allowed: bool = False) -> None:
        from core.app.config import load_config
        from core.model.schema import TenantRef
        from mappings import encoder
        from mappings.graph_alerts_v2 import normalise

        encode = encoder(load_config(setup.write()).sinks["siem"].format)
        expected = {self.comparable(encode(normalise(raw, TenantRef(id=setup.tenants[label], label=label), _INGESTED)))
                    for label, alerts in raws.items() for raw in alerts}
        got = [self.comparable(body) for body in self.received(peer)]
        assert set(got) == expected
        if not duplicates_allowed:
            assert len(got) == len(expected)


_INGESTED = recent(0)
