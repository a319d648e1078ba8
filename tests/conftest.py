"""Shared fixtures: the simulated Microsoft cloud and configs that point at it."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.helpers import write_config
from tests.peers.fake_cloud import FakeCloud

CLIENT_ID = "11111111-1111-4111-8111-111111111111"
# Recognisable, so the secret-leak tests can search every byte the forwarder wrote for it.
SECRET = "SECRET-canary-7f3a9c-do-not-leak"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture(scope="session")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as server:
        yield server


@dataclass
class CloudSetup:
    """A config file for some tenants of the simulated cloud, built step by step by a test."""

    cloud: FakeCloud
    tmp: Path
    tenants: dict[str, str] = field(default_factory=dict)  # label -> tenant id
    forwarder: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    app: dict[str, Any] = field(default_factory=dict)

    def tenant(self, label: str, alerts: list[dict[str, Any]] | None = None, **options: Any) -> str:
        tenant_id = str(uuid.uuid4())
        self.cloud.add_tenant(tenant_id, client_id=CLIENT_ID, secret=SECRET, **options)
        if alerts:
            self.cloud.add_alerts(tenant_id, alerts)
        self.tenants[label] = tenant_id
        return tenant_id

    @property
    def state(self) -> Path:
        return self.tmp / "state.db"

    def out(self, label: str) -> Path:
        return self.tmp / "out" / f"{label}.ndjson"

    def write(self) -> Path:
        ca_file = self.tmp / "ca.pem"
        self.cloud.write_ca(ca_file)
        tables: dict[str, dict[str, Any]] = {
            "forwarder": {"state": str(self.state), "initial_lookback": "30d", "overlap": "15m",
                          "request_timeout": "5s", "retry_initial": "0.05s", **self.forwarder},
            "apps.mssp": {"client_id": CLIENT_ID, "client_secret": "env:DF_TEST_CLIENT_SECRET",
                          "login_endpoint": self.cloud.base_url, "graph_endpoint": self.cloud.base_url,
                          "ca_file": str(ca_file), **self.app},
        }
        for label, tenant_id in self.tenants.items():
            tables[f"tenants.{label}"] = {"tenant_id": tenant_id, "app": "mssp"}
        sinks = self.sinks or {"archive": {"type": "file", "path": str(self.tmp / "out" / "{tenant}.ndjson"),
                                           "format": "raw", "retry_initial": 0.01, "retry_max": 0.1}}
        for name, sink in sinks.items():
            tables[f"sinks.{name}"] = sink
        return write_config(self.tmp / "forwarder.toml", tables)


@pytest.fixture
def setup(cloud: FakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CloudSetup:
    monkeypatch.setenv("DF_TEST_CLIENT_SECRET", SECRET)
    return CloudSetup(cloud, tmp_path)


def recent(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)
