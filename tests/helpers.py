"""Small helpers shared by the tests: write configs (`CloudSetup` for the simulated cloud), run the CLI
and the daemon, read NDJSON output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.model import jsonutil

if TYPE_CHECKING:
    from tests.peers.fake_cloud import FakeCloud

REPO = Path(__file__).resolve().parents[1]
SHARED_SAMPLES = REPO.parent / "shared" / "samples"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table ([forwarder] postgresql = {...})
        return "{" + ", ".join(f"{key} = {toml_value(v)}" for key, v in value.items()) + "}"
    raise TypeError(value)


def write_config(path: Path, tables: dict[str, dict[str, Any]], routes: list[dict[str, Any]] | None = None) -> Path:
    """Write a TOML config from {"forwarder": {...}, "tenants.x": {...}, ...}."""
    lines = []
    for table, keys in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in keys.items())
        lines.append("")
    for route in routes or []:
        lines.append("[[routes]]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in route.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 120, preexec_fn: Any = None, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process; `preexec_fn` sets up the child (a resource limit), `input`
    is its stdin (a pipe, never a terminal)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "core.app.cli", *args], cwd=cwd or REPO, env=full_env, capture_output=True,
        text=True, timeout=timeout, preexec_fn=preexec_fn, input=input if input is not None else "",
    )


def read_terminal(fd: int) -> bytes:
    """Everything a child writes to the pseudo-terminal `fd` (pty's main side) until it closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def read_ndjson(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def write_replay(folder: Path, pages: list[list[dict[str, Any]]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for number, alerts in enumerate(pages, start=1):
        body = {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2", "value": alerts}
        (folder / f"page-{number:04d}.json").write_bytes(_page_bytes(body))
    return folder


def _page_bytes(body: dict[str, Any]) -> bytes:
    """A replay page as a server might send it: what JSON cannot hold (an infinite float) is
    written as the standard library writes it (`Infinity`), which the forwarder must survive."""
    try:
        return jsonutil.dumps(body)
    except ValueError:
        return json.dumps(body).encode()


def shared_sample(name: str) -> Any:
    """A public sample from ../shared/samples; the test skips, saying so, where it is absent."""
    import pytest

    path = SHARED_SAMPLES / name
    if not path.exists():
        pytest.skip(f"shared sample {path} is not here (the tests read ../shared/samples)")
    return json.loads(path.read_text(encoding="utf-8"))


CLIENT_ID = "11111111-1111-4111-8111-111111111111"
# Recognisable, so the secret-leak tests can search every byte the forwarder wrote for it.
SECRET = "SECRET-canary-7f3a9c-do-not-leak"
NOW = datetime.now(timezone.utc).replace(microsecond=0)


@dataclass
class CloudSetup:
    """A config file for some tenants of the simulated cloud, built step by step by a test."""

    cloud: FakeCloud
    tmp: Path
    tenants: dict[str, str] = field(default_factory=dict)  # label -> tenant id
    forwarder: dict[str, Any] = field(default_factory=dict)
    sinks: dict[str, dict[str, Any]] = field(default_factory=dict)
    app: dict[str, Any] = field(default_factory=dict)
    tenant_keys: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> keys set or overridden
    routes: list[dict[str, Any]] = field(default_factory=list)
    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # more [apps.NAME] tables, as written

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
            tables[f"tenants.{label}"] = {"tenant_id": tenant_id, "app": "mssp", **self.tenant_keys.get(label, {})}
        for name, app in self.apps.items():
            tables[f"apps.{name}"] = app
        sinks = self.sinks or {"archive": {"type": "file", "path": str(self.tmp / "out" / "{tenant}.ndjson"),
                                           "format": "raw", "retry_initial": 0.01, "retry_max": 0.1}}
        for name, sink in sinks.items():
            tables[f"sinks.{name}"] = sink
        return write_config(self.tmp / "forwarder.toml", tables, self.routes)


def recent(minutes_ago: float) -> datetime:
    return NOW - timedelta(minutes=minutes_ago)


def daemon(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """`defender-forwarder run` (the daemon loop) in a child process, its output piped; `env`
    adds to the environment."""
    return subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **env} if env else None)


def until(condition: Any, process: subprocess.Popen[str], timeout: float = 20.0, every: float = 0.05) -> None:
    """Wait for `condition()`, asked every `every` seconds; fail, with the forwarder's output, if
    it exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the forwarder exited ({process.returncode}):\n{process.stdout.read()}")
        if time.monotonic() > deadline:
            process.terminate()
            raise AssertionError(f"timed out; forwarder output:\n{process.communicate(timeout=10)[0]}")
        time.sleep(every)
