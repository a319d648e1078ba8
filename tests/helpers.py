"""Small helpers shared by the tests: write configs, run the CLI, read NDJSON output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from core import jsonutil

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
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "core.cli", *args],
        cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


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
