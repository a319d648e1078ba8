"""Several forwarders on one PostgreSQL state: they split the tenants by leases, and a killed,
paused or cut-off one costs no alert.

Three daemons (`defender-forwarder run`, real processes) share one configuration and one
database of the real PostgreSQL the session starts, and deliver to the HEC peer. Each version
of every alert must arrive; a version may arrive twice only as part of a batch its instance had
sent when it was stopped, so the duplicates stay within one batch per kill (or pause, or
database restart). `lease_ttl` is 3 s here (60 s by default), so that a dead instance's
tenants move within seconds.

The kill scenario runs at the issue's size, 200 tenants and 25 SIGKILLs spread over the three
instances, in CI too.
"""
from __future__ import annotations

import random
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from core.model.schema import TenantRef
from mappings import graph_alerts_v2
from tests.helpers import CloudSetup, daemon, recent
from tests.peers.alert_factory import make_alerts, updated_version
from tests.peers.hec_peer import HecPeer, TokenSettings
from tests.reliability.fleet import BATCH, Version, version

HEC_TOKEN = "44444444-aaaa-4bbb-8ccc-SECRETleases1"
LEASE_TTL = 3.0
PASSWORD_ENV = "DF_TEST_PG_PASSWORD"


def _just_now() -> datetime:
    """A few seconds ago, by the clock (tests.helpers.recent counts from the session's start)."""
    return datetime.now(timezone.utc) - timedelta(seconds=10)


@dataclass
class Fleet:
    """Three daemons on one configuration; the alerts put in the cloud, as versions expected."""

    setup: CloudSetup
    hec: HecPeer
    settings: Any  # PostgresSettings of the shared database
    config: Path = Path()
    expected: set[Version] = field(default_factory=set)
    alerts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    instances: list[subprocess.Popen[str]] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)  # the output of every instance stopped

    def start(self, count: int = 3) -> None:
        self.instances = [daemon(self.config) for _ in range(count)]

    def restart(self, index: int) -> None:
        self.logs.append(self.instances[index].communicate(timeout=30)[0])
        self.instances[index] = daemon(self.config)

    def add(self, tenants: list[str], per_tenant: int, seed: int, minutes_ago: float | None = None) -> None:
        """New alerts in each tenant: last updated `minutes_ago` (before the start), or just now,
        as Graph stamps a new alert (behind the cursors by more than the overlap, it is never read)."""
        start = recent(minutes_ago) if minutes_ago is not None else _just_now()
        for label in tenants:
            tenant_id = self.setup.tenants[label]
            self._put(label, make_alerts(per_tenant, tenant_id, start, timedelta(seconds=1), seed=seed))

    def update(self, every: int) -> None:
        """A later version, updated just now, of every `every`-th alert put so far."""
        for label, alert in self.alerts[::every]:
            self._put(label, [updated_version(alert, _just_now(), status="inProgress")])

    def _put(self, label: str, alerts: list[dict[str, Any]]) -> None:
        tenant = TenantRef(id=self.setup.tenants[label], label=label)
        self.setup.cloud.add_alerts(tenant.id, alerts)
        for alert in alerts:
            self.alerts.append((label, alert))
            self.expected.add(version(graph_alerts_v2.normalise(alert, tenant, recent(0)).version_key))

    def received(self) -> Counter[Version]:
        return Counter(version(event["fields"]["version_key"], event["fields"]["kind"]) for event in self.hec.events())

    def wait_for_all(self, timeout: float) -> None:
        """Until every expected version arrived and no outbox row waits; fails with the logs."""
        deadline = time.monotonic() + timeout
        while not (self.expected <= set(self.received()) and self.outbox() == 0):
            for process in self.instances:
                if process.poll() is not None:
                    raise AssertionError(f"an instance exited ({process.returncode}):\n{process.stdout.read()}")
            if time.monotonic() > deadline:
                missing = self._missing()
                raise AssertionError(f"{missing}; outbox {self.outbox()}\n{self.stop()[-4000:]}")
            time.sleep(0.5)

    def _missing(self) -> str:
        """The versions not received: how many, how many the state saw (committed), dead letters."""
        missing = self.expected - set(self.received())
        with self._db() as db:
            seen = {(tenant, alert) for tenant, alert in db.execute("SELECT tenant_id, alert_id FROM seen")}
            dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
        committed = sum(1 for _, tenant, alert, _ in missing if (tenant, alert) in seen)
        labels = {tenant_id: label for label, tenant_id in self.setup.tenants.items()}
        return (f"{len(missing)} versions missing ({committed} of their alerts seen in the state), dead letters "
                f"{dead}, in {Counter(labels[tenant] for _, tenant, _, _ in missing)}, e.g. {sorted(missing)[:3]}")

    def outbox(self) -> int:
        with self._db() as db:
            return db.execute("SELECT count(*) FROM outbox").fetchone()[0]

    def holders(self) -> dict[str, str | None]:
        """Tenant id -> the instance whose lease on it is current (None: nobody's)."""
        with self._db() as db:
            rows = db.execute("SELECT tenant_id, holder, expires > extract(epoch FROM clock_timestamp()) "
                              "FROM leases WHERE tenant_id <> '*'").fetchall()
        return {tenant: holder if current else None for tenant, holder, current in rows}

    def _db(self) -> Any:
        import psycopg

        return psycopg.connect(self.settings.url, autocommit=True, **self.settings.connect_kwargs())

    def stop(self) -> str:
        """SIGTERM every instance (each gives its leases back); their output, all runs."""
        for process in self.instances:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.instances:
            self.logs.append(process.communicate(timeout=60)[0])
        self.instances = []
        return "\n".join(self.logs)

    def finish(self, scenario: str, duplicates_bound: int) -> str:
        """Stop every instance; assert nothing was lost, nothing unexpected came, the duplicates
        stayed within the bound and no instance logged a traceback. Returns their output."""
        figures = self.figures()
        output = self.stop()
        print(f"\n{scenario} figures:", figures)
        assert figures["missing"] == 0 and figures["unexpected"] == 0, figures
        assert figures["duplicates"] <= duplicates_bound, figures
        assert "Traceback" not in output
        return output

    def figures(self) -> dict[str, int]:
        got = self.received()
        return {"versions": len(self.expected), "missing": len(self.expected - set(got)),
                "unexpected": len(set(got) - self.expected), "duplicates": sum(got.values()) - len(got)}


@pytest.fixture
def fleet(setup: CloudSetup, postgres: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    from core.state.postgresql import PostgresSettings, migrate

    name = "fleet_" + uuid.uuid4().hex[:10]
    url = postgres.create_database(name)
    settings = PostgresSettings(url, password=postgres.password, sslrootcert=str(postgres.ca_file))
    migrate(settings)
    monkeypatch.setenv(PASSWORD_ENV, postgres.password)
    monkeypatch.setenv("DF_LEASES_HEC_TOKEN", HEC_TOKEN)
    with HecPeer(tokens={HEC_TOKEN: TokenSettings()}) as hec:
        setup.forwarder.update(
            state=url, postgresql={"password": f"env:{PASSWORD_ENV}", "sslrootcert": str(postgres.ca_file)},
            lease_ttl=f"{LEASE_TTL}s", poll_interval="1s", overlap="5m", initial_lookback="1d",
            tenant_requests_per_minute=1200)
        setup.sinks = {"splunk": {"type": "splunk_hec", "url": hec.url, "token": "env:DF_LEASES_HEC_TOKEN",
                                  "ca_file": str(hec.ca_file), "batch_max_events": BATCH, "retry_initial": "0.05s",
                                  "retry_max": "0.5s"}}
        result = Fleet(setup, hec, settings)
        try:
            yield result
        finally:
            if result.instances:
                result.stop()
    postgres.drop_database(name)


def _tenants(fleet: Fleet, count: int) -> list[str]:
    labels = [f"customer{number:03d}" for number in range(count)]
    for label in labels:
        fleet.setup.tenant(label)
    fleet.config = fleet.setup.write()
    return labels


def _split(fleet: Fleet) -> Counter[str | None]:
    return Counter(fleet.holders().values())


def _until(condition: Any, timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; leases {_split(fleet)}\n{fleet.stop()[-4000:]}")
        time.sleep(0.2)


def test_three_instances_share_the_tenants_and_25_kills_lose_nothing(fleet: Fleet) -> None:
    rng = random.Random(2026)
    labels = _tenants(fleet, 200)
    fleet.add(labels, 4, seed=1, minutes_ago=120)
    fleet.start()
    _until(lambda: len([h for h in _split(fleet) if h]) == 3 and max(_split(fleet).values()) <= -(-(len(labels) + 1) // 3), 30,
           "the three instances to hold a share each", fleet)
    kills = 25
    for kill in range(kills):
        time.sleep(rng.uniform(0.3, 2.0))  # a random moment: start-up, polling, mid-batch, idle
        victim = kill % 3
        fleet.instances[victim].send_signal(signal.SIGKILL)
        fleet.instances[victim].wait(10)
        fleet.restart(victim)
        if kill == kills // 2:
            # Graph serves an alert's latest version only: the first versions must have been
            # read before they are updated, or they were never there to forward.
            fleet.wait_for_all(timeout=120)
            fleet.update(every=5)
            fleet.add(labels[::4], 3, seed=2)
    fleet.wait_for_all(timeout=120)
    split = _split(fleet)
    fleet.finish("kills", duplicates_bound=kills * BATCH)
    assert len([holder for holder in split if holder]) == 3, split  # all three hold tenants again


def test_a_paused_instance_loses_its_tenants_and_gets_a_share_back_without_a_double_commit(fleet: Fleet) -> None:
    labels = _tenants(fleet, 30)
    fleet.add(labels, 3, seed=3, minutes_ago=120)
    fleet.start()
    _until(lambda: len([h for h in _split(fleet) if h]) == 3, 30, "a share each", fleet)
    fleet.wait_for_all(timeout=60)
    paused = fleet.instances[0]
    holder = next(h for h in fleet.holders().values() if h and h.endswith(f":{paused.pid}"))
    theirs = {tenant for tenant, h in fleet.holders().items() if h == holder}
    paused.send_signal(signal.SIGSTOP)
    try:
        fleet.add(labels, 2, seed=4)
        # Past its TTL the others take its tenants, and deliver their new alerts.
        _until(lambda: not any(fleet.holders()[tenant] in (holder, None) for tenant in theirs), 4 * LEASE_TTL,
               "the paused instance's tenants to move", fleet)
        fleet.wait_for_all(timeout=60)
    finally:
        paused.send_signal(signal.SIGCONT)
    # Back, it renews nothing; the others shed their excess and it takes a share again.
    _until(lambda: _split(fleet)[holder] >= 5, 6 * LEASE_TTL, "the paused instance to get tenants back", fleet)
    fleet.add(labels, 2, seed=5)
    fleet.wait_for_all(timeout=60)
    # A page the paused instance read before the stop cannot be committed after it (the epoch
    # moved on), so no version is queued twice: a duplicate is a batch it had sent, at most one.
    fleet.finish("pause", duplicates_bound=BATCH)


def test_postgresql_restarted_under_three_instances_loses_nothing(fleet: Fleet, postgres: Any) -> None:
    labels = _tenants(fleet, 30)
    fleet.add(labels, 3, seed=6, minutes_ago=120)
    fleet.start()
    fleet.wait_for_all(timeout=60)
    fleet.add(labels, 3, seed=7)
    time.sleep(0.5)  # mid-poll, mid-batch
    postgres.restart()
    fleet.add(labels, 2, seed=8)
    fleet.wait_for_all(timeout=90)
    output = fleet.finish("restart", duplicates_bound=3 * BATCH)
    assert "StateUnavailable" in output  # they saw it go, and went on

