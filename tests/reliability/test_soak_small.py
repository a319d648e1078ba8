"""bench/soak.py, run small, so that the load run `make soak` relies on keeps working: the
synthetic cloud, the live release, syslog-ng's receipt times and the soak's own checks."""
from __future__ import annotations

import re
import subprocess
import sys

from tests.helpers import REPO
from tests.peers.syslog_ng import require_syslog_ng


def test_a_small_soak_delivers_every_alert_to_both_sinks_and_prints_its_table() -> None:
    require_syslog_ng()
    result = subprocess.run(
        [sys.executable, "bench/soak.py", "--tenants", "5", "--alerts", "600", "--live-share", "0.2",
         "--live-rate", "200", "--poll-interval", "1s", "--timeout", "120"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = dict(re.findall(r"^\| ([^|]+?) \| (.+) \|$", result.stdout, re.MULTILINE))
    assert table["Tenants / alerts"].startswith("5 / 600 (backlog 480, live 120")
    assert table["Lost / duplicated"] == "file 0 missing / 0 duplicated, syslog 0 missing / 0 duplicated"
    p50, p99 = map(float, re.match(r"p50 ([\d.]+) s, p99 ([\d.]+) s", table["Live end-to-end latency"]).groups())
    assert 0 < p50 <= p99 < 30
    assert int(re.match(r"(\d+) MB", table["Peak RSS"])[1]) > 0
