"""bench/scale.py, run small, so that the figures docs/high-availability.md's sizing table rests
on keep being measurable: instance processes on one PostgreSQL state split the tenants by
leases, poll them together, deliver every alert, and keep the app budget between them."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.peers.postgres import postgres_bin


def test_a_small_scale_run_splits_the_tenants_delivers_every_alert_and_prints_its_figures() -> None:
    if postgres_bin() is None:
        pytest.skip("no PostgreSQL server here (/usr/lib/postgresql/*/bin/initdb is absent)")
    result = subprocess.run(
        [sys.executable, "bench/scale.py", "--tenants", "12", "--alerts-per-tenant", "2", "--latency", "0.01",
         "--instances", "1,2", "--budget-instances", "2", "--budget-tenants", "12", "--budget", "10"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "1 instance: leases table 12 tenants a holder" in out
    assert "2 instances: leases table 6/6 tenants a holder" in out
    assert out.count("pipeline: 24 alerts written") == 2
    assert re.search(r"idle cycle [\d.]+ s: 12 Graph requests \(1\.00 a tenant", out)
    assert "speed-up against 1: poll cycle x" in out
    assert "2 instances: budget fractions 0.500/0.500 (sum 1.000); 12 requests in" in out
