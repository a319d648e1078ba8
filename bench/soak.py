"""Soak: 1,000 tenants and 1,000,000 alerts through the file sink and a real syslog-ng at once.

    .venv/bin/python bench/soak.py [--tenants 1000] [--alerts 1000000] [--live-share 0.1]
                                   [--live-rate 500] [--poll-interval 10s] [--reliability]

The simulated cloud runs in its own process with synthetic tenants (alerts stamped from
templates when a page asks for them). When the forwarder starts, (1 - live share) of the
alerts are already there, as after an install or an outage: the backlog. Once both sinks
have every backlog alert, the cloud releases the rest, `--live-rate` a second round robin
over the tenants, each last updated the moment it appears: the live phase. The forwarder is
the real daemon (`defender-forwarder run`) in its own process, routing every tenant to an
NDJSON file sink (raw) and to syslog-ng over TCP (CEF, RFC 5424, octet counting).

Figures, printed as a table for the README:
  backlog throughput  backlog alerts / seconds from the forwarder's start until both sinks
                      have the last of them
  live latency        syslog-ng's receipt time minus the alert's lastUpdateDateTime (CEF
                      `rt`), p50 / p99 / max: what an analyst waits, poll interval included
  peak RSS            the forwarder's VmHWM (target < 300 MB)
  state file          state.db + WAL on disk: peak while running and at the end, and the
                      rows each table holds at the end
Every alert must be in both sinks (else the exit status is 1); duplicates are counted (none
expected: nothing crashes).

`--reliability` first runs tests/reliability at full scale (RELIABILITY_SCALE=full: the crash
test with 20 tenants, 10,000 alerts and 25 kills) and prints the figures its tests print.
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.standalone import standalone_peer
from core.model.durations import parse_duration
from tests.helpers import write_config
from tests.peers.fake_cloud import synthetic_alert_id
from tests.peers.syslog_ng import PROBE_PROGRAM, SyslogNg

CEF_ID = re.compile(rb"[| ]cs3=(\S+)")  # an extension key follows the last header pipe or a space
CEF_RT = re.compile(rb"[| ]rt=(\d+)")
PROGRESS_EVERY = 15.0


@dataclass
class Growing:
    """A file another process appends lines to; counts them without reading a line twice."""

    path: Path
    lines: int = 0
    _offset: int = 0
    _before: int = 0

    def skip_existing(self) -> None:
        """Lines already there (syslog-ng's readiness probe) do not count."""
        self._before = self.count()

    def count(self) -> int:
        if self.path.exists():
            with self.path.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
            complete = chunk.rfind(b"\n") + 1
            self.lines += chunk.count(b"\n", 0, complete)
            self._offset += complete
        return self.lines - self._before


@dataclass
class Watch:
    """What is sampled every second while the forwarder runs."""

    pid: int
    state: Path
    rss_peak_kb: int = 0
    state_peak: int = 0

    def sample(self) -> None:
        self.rss_peak_kb = max(self.rss_peak_kb, _status_kb(self.pid, "VmHWM"))
        self.state_peak = max(self.state_peak, state_bytes(self.state))


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def state_bytes(state: Path) -> int:
    return sum(path.stat().st_size for path in (state, state.with_name(state.name + "-wal")) if path.exists())


# ---------------------------------------------------------------- the run

def forwarder_config(work: Path, cloud: dict[str, Any], syslog: SyslogNg, poll_interval: str) -> Path:
    tables: dict[str, dict[str, Any]] = {
        "forwarder": {"state": str(work / "state.db"), "initial_lookback": "1d", "poll_interval": poll_interval,
                      "max_concurrent_requests": 32},
        "apps.mssp": {"client_id": cloud["client_id"], "client_secret": "env:SOAK_CLIENT_SECRET",
                      "login_endpoint": cloud["base_url"], "graph_endpoint": cloud["base_url"],
                      "ca_file": cloud["ca_file"]},
        "sinks.archive": {"type": "file", "path": str(work / "out" / "all.ndjson"), "format": "raw"},
        "sinks.siem": {"type": "syslog", "host": "127.0.0.1", "port": syslog.ports["tcp"], "protocol": "tcp"},
    }
    for index, tenant_id in enumerate(cloud["tenant_ids"]):
        tables[f"tenants.customer{index:04d}"] = {"tenant_id": tenant_id, "app": "mssp"}
    return write_config(work / "soak.toml", tables)  # no [[routes]]: every tenant to every sink


def start_forwarder(config: Path, work: Path, secret: str) -> subprocess.Popen[bytes]:
    with (work / "forwarder.log").open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "core.app.cli", "run", "--config", str(config)], cwd=REPO,
                                env={**os.environ, "SOAK_CLIENT_SECRET": secret}, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)


def wait_for(target: int, sinks: list[Growing], forwarder: subprocess.Popen[bytes], watch: Watch,
             started: float, phase: str, timeout: float) -> float:
    """Sample until every sink has `target` lines; returns when that was seen (monotonic)."""
    next_report = time.monotonic() + PROGRESS_EVERY
    while True:
        counts = [sink.count() for sink in sinks]
        now = time.monotonic()
        watch.sample()
        if min(counts) >= target:
            return now
        if forwarder.poll() is not None:
            raise SystemExit(f"the forwarder exited ({forwarder.returncode}) during the {phase}")
        if now - started > timeout:
            raise SystemExit(f"the {phase} did not finish within {timeout:.0f} s: {counts} of {target}")
        if now >= next_report:
            print(f"  {phase} {now - started:6.0f} s: file {counts[0]:,}  syslog {counts[1]:,}  "
                  f"RSS peak {watch.rss_peak_kb / 1024:.0f} MB  state {state_bytes(watch.state) / 2**20:.0f} MB",
                  flush=True)
            next_report = now + PROGRESS_EVERY
        time.sleep(1.0)


def stop(forwarder: subprocess.Popen[bytes]) -> None:
    forwarder.send_signal(signal.SIGTERM)
    try:
        forwarder.wait(60)
    except subprocess.TimeoutExpired:
        forwarder.kill()
        forwarder.wait()
        raise SystemExit("the forwarder did not stop within 60 s of SIGTERM") from None


# ---------------------------------------------------------------- what arrived

def syslog_arrivals(path: Path) -> tuple[Counter[str], dict[str, float]]:
    """Alert id -> times received, and alert id -> seconds from lastUpdateDateTime to receipt."""
    times: Counter[str] = Counter()
    latency: dict[str, float] = {}
    with path.open("rb") as lines:
        for line in lines:
            record = orjson.loads(line)
            if record["PROGRAM"] == PROBE_PROGRAM:  # the peer's own readiness probe
                continue
            message = record["RAWMSG"].encode()
            alert_id = CEF_ID.search(message)[1].decode()  # type: ignore[index]
            times[alert_id] += 1
            rt = int(CEF_RT.search(message)[1])  # type: ignore[index]
            latency.setdefault(alert_id, float(record["RECEIVED"]) - rt / 1000)
    return times, latency


def file_arrivals(path: Path) -> Counter[str]:
    with path.open("rb") as lines:
        return Counter(orjson.loads(line)["id"] for line in lines)


def expected_ids(tenants: int, per_tenant: int, first: int = 0) -> set[str]:
    return {synthetic_alert_id(tenant, index) for tenant in range(tenants) for index in range(first, per_tenant)}


def table_rows(state: Path) -> dict[str, int]:
    with sqlite3.connect(state) as db:
        names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
                 if not name.startswith("sqlite_")]
        return {name: db.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in names}


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[round(share * 1000) - 1]


# ---------------------------------------------------------------- main

def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    per_tenant = args.alerts // args.tenants
    live = round(per_tenant * args.live_share)
    backlog = per_tenant - live
    # The backlog spans the two hours before start-up: older than any overlap window.
    step = 7200 / max(backlog, 1)
    with ExitStack() as stack:
        syslog = stack.enter_context(SyslogNg(work / "syslog-ng", raw_only=True))
        (work / "cloud").mkdir()
        cloud, cloud_pid = stack.enter_context(standalone_peer(
            "tests.peers.fake_cloud",
            ["--synthetic", "--tenants", str(args.tenants), "--alerts-per-tenant", str(backlog),
             "--live-per-tenant", str(live), "--live-rate", str(args.live_rate), "--page-size", "1000",
             "--step-seconds", str(step)], work / "cloud", "the simulated cloud"))
        config = forwarder_config(work, cloud, syslog, args.poll_interval)
        sinks = [Growing(work / "out" / "all.ndjson"), Growing(syslog.output)]
        sinks[1].skip_existing()
        started = time.monotonic()
        forwarder = start_forwarder(config, work, cloud["secret"])
        stack.callback(lambda: forwarder.poll() is None and forwarder.kill())
        watch = Watch(forwarder.pid, work / "state.db")
        print(f"soak: {args.tenants:,} tenants, {backlog * args.tenants:,} backlog + {live * args.tenants:,} live "
              f"alerts at {args.live_rate:,.0f}/s; poll interval {args.poll_interval}; work dir {work}", flush=True)
        backlog_done = wait_for(backlog * args.tenants, sinks, forwarder, watch, started, "backlog", args.timeout)
        backlog_cpu = cpu_seconds(forwarder.pid)
        os.kill(cloud_pid, signal.SIGUSR1)
        live_started = time.monotonic()
        live_done = wait_for(per_tenant * args.tenants, sinks, forwarder, watch, started, "live", args.timeout)
        time.sleep(2 * parse_duration(args.poll_interval))  # a cycle or two more: nothing arrives twice
        watch.sample()
        total_cpu = cpu_seconds(forwarder.pid)
        stop(forwarder)
    return {"tenants": args.tenants, "backlog": backlog * args.tenants, "live": live * args.tenants,
            "live_rate": args.live_rate, "poll_interval": args.poll_interval, "per_tenant": per_tenant,
            "first_live": backlog, "backlog_seconds": backlog_done - started, "backlog_cpu": backlog_cpu,
            "live_seconds": live_done - live_started, "cpu": total_cpu, "rss_peak_mb": watch.rss_peak_kb / 1024,
            "state_peak": watch.state_peak, "state_end": state_bytes(work / "state.db"),
            "rows": table_rows(work / "state.db"), "work": work}


def verify(figures: dict[str, Any]) -> dict[str, Any]:
    work: Path = figures["work"]
    everything = expected_ids(figures["tenants"], figures["per_tenant"])
    live_ids = expected_ids(figures["tenants"], figures["per_tenant"], figures["first_live"])
    syslog_times, latency = syslog_arrivals(work / "syslog-ng" / "out" / "messages.jsonl")
    file_times = file_arrivals(work / "out" / "all.ndjson")
    checks = {}
    for sink, times in (("file", file_times), ("syslog", syslog_times)):
        checks[sink] = {"missing": len(everything - times.keys()), "unexpected": len(times.keys() - everything),
                        "duplicates": sum(times.values()) - len(times)}
    live_latency = [latency[alert_id] for alert_id in live_ids if alert_id in latency]
    return {**checks, "latency_p50": percentile(live_latency, 0.5), "latency_p99": percentile(live_latency, 0.99),
            "latency_max": max(live_latency)}


def report(figures: dict[str, Any], checks: dict[str, Any]) -> None:
    f, rows = figures, figures["rows"]
    alerts = (f"{f['tenants']:,} / {f['backlog'] + f['live']:,} (backlog {f['backlog']:,}, "
              f"live {f['live']:,} at {f['live_rate']:,.0f}/s)")
    throughput = (f"{f['backlog'] / f['backlog_seconds']:,.0f} alerts/s into both sinks ({f['backlog_seconds']:,.0f} s;"
                  f" forwarder CPU {f['backlog_cpu'] / f['backlog'] * 1e6:,.0f} µs an alert)")
    live_cpu = f["cpu"] - f["backlog_cpu"]
    latency = (f"p50 {checks['latency_p50']:.1f} s, p99 {checks['latency_p99']:.1f} s, "
               f"max {checks['latency_max']:.1f} s (poll interval {f['poll_interval']}; forwarder CPU "
               f"{live_cpu / f['live_seconds'] * 100:.0f}% of a core over the live phase)")
    state = (f"peak {f['state_peak'] / 2**20:,.0f} MB, end {f['state_end'] / 2**20:,.0f} MB; rows at the end: "
             + ", ".join(f"{name} {count:,}" for name, count in rows.items() if count))
    outcome = ", ".join(f"{sink} {checks[sink]['missing']} missing / {checks[sink]['duplicates']} duplicated"
                        for sink in ("file", "syslog"))
    print("\n| Soak | Result |\n|---|---|")
    for name, value in (("Tenants / alerts", alerts),
                        ("Sinks", "file (raw NDJSON) + syslog-ng over TCP (CEF), every tenant to both"),
                        ("Backlog throughput", throughput), ("Live end-to-end latency", latency),
                        ("Peak RSS", f"{f['rss_peak_mb']:,.0f} MB (target < 300 MB)"),
                        ("State file", state), ("Lost / duplicated", outcome)):
        print(f"| {name} | {value} |")


def reliability() -> None:
    print("tests/reliability at full scale (RELIABILITY_SCALE=full):", flush=True)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                             "tests/reliability"], cwd=REPO, env={**os.environ, "RELIABILITY_SCALE": "full"},
                            capture_output=True, text=True, check=False)
    for line in result.stdout.splitlines():
        if "figures" in line or " passed" in line or " failed" in line or line.startswith("FAILED"):
            print("  " + line.strip(". "))
    if result.returncode != 0:
        raise SystemExit(result.stdout[-5000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--live-share", type=float, default=0.1, help="share of the alerts released live")
    parser.add_argument("--live-rate", type=float, default=500.0, help="live alerts a second, all tenants")
    parser.add_argument("--poll-interval", default="10s")
    parser.add_argument("--timeout", type=float, default=7200.0, help="seconds a phase may take")
    parser.add_argument("--work", type=Path, help="keep the run's files here (default: a temporary directory)")
    parser.add_argument("--reliability", action="store_true", help="first run tests/reliability at full scale")
    args = parser.parse_args()
    if args.reliability:
        reliability()
    with ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        work.mkdir(parents=True, exist_ok=True)
        figures = soak(args, work)
        checks = verify(figures)
        report(figures, checks)
    if any(checks[sink]["missing"] or checks[sink]["unexpected"] for sink in ("file", "syslog")):
        raise SystemExit("FAILED: an alert is missing from a sink, or one arrived that was never sent")


if __name__ == "__main__":
    main()
