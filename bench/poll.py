"""Poll-cycle benchmark: many tenants against the simulated cloud with added latency.

    .venv/bin/python bench/poll.py [--tenants 1000] [--latency 0.1] [--concurrency 50]
                                   [--rss-alerts-per-tenant 100]

Phase 1 times one poll cycle (token + alerts for every tenant) and prints it next to the
ideal, latency x ceil(requests / concurrency): the ratio is the figure (target <= 1.5).
Phase 2 pushes tenants x rss-alerts-per-tenant alerts through the whole pipeline into the
file sink and reports alerts/s and the peak RSS of this process (target < 300 MB).
The simulated cloud runs in its own process, so its CPU does not count against ours.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.app.config import parse_config  # noqa: E402
from core.app.pipeline import Forwarder  # noqa: E402
from core.state.sqlite import SQLiteStore  # noqa: E402


def start_cloud(work: Path, tenants: int, alerts: int, latency: float) -> tuple[subprocess.Popen, dict[str, Any]]:
    ready = work / "cloud.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.fake_cloud", "--tenants", str(tenants), "--alerts-per-tenant",
         str(alerts), "--latency", str(latency), "--page-size", "1000", "--ready-file", str(ready)],
        cwd=REPO, stderr=subprocess.DEVNULL if not os.environ.get("BENCH_CLOUD_LOG") else None,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the simulated cloud did not start")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def config_for(cloud: dict[str, Any], work: Path, concurrency: int) -> Any:
    os.environ["BENCH_CLIENT_SECRET"] = cloud["secret"]
    return parse_config({
        "forwarder": {"state": str(work / "state.db"), "initial_lookback": "30d",
                      "max_concurrent_requests": concurrency, "page_size": 1000},
        "apps": {"mssp": {"client_id": cloud["client_id"], "client_secret": "env:BENCH_CLIENT_SECRET",
                          "login_endpoint": cloud["base_url"], "graph_endpoint": cloud["base_url"],
                          "ca_file": cloud["ca_file"]}},
        "tenants": {f"t{i:04d}": {"tenant_id": tid, "app": "mssp"} for i, tid in enumerate(cloud["tenant_ids"])},
        "sinks": {"archive": {"type": "file", "path": str(work / "out" / "all.ndjson"), "format": "ocsf",
                              "batch_max_events": 2000, "fsync": False, "max_outbox": 1_000_000}},
    })


async def one_cycle(config: Any, store: SQLiteStore, deliver: bool) -> tuple[float, int, list[Any]]:
    async with Forwarder(config, store) as forwarder:
        started, cpu_started = time.perf_counter(), time.process_time()
        results = await (forwarder.run_once() if deliver else forwarder.poll_all())
        elapsed = time.perf_counter() - started
        print(f"  (cpu {time.process_time() - cpu_started:.2f} s of {elapsed:.2f} s wall)")
        graph_requests = sum(reader.requests for readers in forwarder.readers.values() for reader in readers.values())
    return elapsed, graph_requests, results


def phase(args: argparse.Namespace, alerts: int, deliver: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proc, cloud = start_cloud(work, args.tenants, alerts, args.latency)
        try:
            store = SQLiteStore(work / "state.db")
            elapsed, graph_requests, results = asyncio.run(
                one_cycle(config_for(cloud, work, args.concurrency), store, deliver)
            )
            written = sum(1 for _ in open(work / "out" / "all.ndjson", "rb")) if deliver else 0
            store.close()
        finally:
            proc.terminate()
            proc.wait()
    errors = [r for r in results if r.error]
    if errors:
        raise SystemExit(f"{len(errors)} tenants failed, e.g. {errors[0].label}: {errors[0].error}")
    return {"elapsed": elapsed, "graph_requests": graph_requests, "queued": sum(r.queued for r in results),
            "written": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cycle-alerts-per-tenant", type=int, default=5)
    parser.add_argument("--rss-alerts-per-tenant", type=int, default=100)
    args = parser.parse_args()

    cycle = phase(args, args.cycle_alerts_per_tenant, deliver=False)
    # Per tenant: MSAL's tenant discovery + one token request, then the alert pages.
    requests = 2 * args.tenants + cycle["graph_requests"]
    ideal = args.latency * math.ceil(requests / args.concurrency)
    print(f"poll cycle: {args.tenants} tenants, {requests} requests, {args.latency * 1000:.0f} ms latency, "
          f"concurrency {args.concurrency}")
    print(f"  wall {cycle['elapsed']:.2f} s, ideal {ideal:.2f} s, ratio {cycle['elapsed'] / ideal:.2f} "
          f"(target <= 1.5); {cycle['queued']} alerts queued")

    through = phase(args, args.rss_alerts_per_tenant, deliver=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"pipeline: {through['written']} alerts polled, normalised, queued and written as OCSF in "
          f"{through['elapsed']:.1f} s ({through['written'] / through['elapsed']:.0f} alerts/s)")
    print(f"  peak RSS {peak_mb:.0f} MB (target < 300 MB)")


if __name__ == "__main__":
    main()
