"""Poll-cycle benchmark: many tenants against the simulated cloud with added latency.

    .venv/bin/python bench/poll.py [--tenants 1000] [--latency 0.1] [--concurrency 50]
                                   [--rss-alerts-per-tenant 100] [--endpoint-rounds 2]

Phase 1 times one poll cycle (token + alerts for every tenant) and prints it next to the
ideal, latency x ceil(requests / concurrency): the ratio is the figure (target <= 1.5).
Phase 2 pushes tenants x rss-alerts-per-tenant alerts through the whole pipeline into the
file sink and reports alerts/s and the peak RSS of this process (target < 300 MB).
Phase 3 runs that pipeline again with the daemon's HTTP endpoint off and on, interleaved
(off, on, off, on...), `/metrics` scraped every second by a scraper in its own process as
Prometheus would: the ratio of the CPU an alert, on/off, is the figure (target <= 1.03).
The simulated cloud runs in its own process, so its CPU does not count against ours.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.app.config import parse_config  # noqa: E402
from core.app.http import StatusServer  # noqa: E402
from core.app.pipeline import Forwarder  # noqa: E402
from core.app.status_routes import add_status_routes  # noqa: E402
from core.state.sqlite import SQLiteStore  # noqa: E402


def start_cloud(work: Path, tenants: int, alerts: int, latency: float,
                step_seconds: float = 1.0) -> tuple[subprocess.Popen, dict[str, Any]]:
    ready = work / "cloud.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.peers.fake_cloud", "--tenants", str(tenants), "--alerts-per-tenant",
         str(alerts), "--latency", str(latency), "--page-size", "1000", "--ready-file", str(ready),
         "--step-seconds", str(step_seconds)],
        cwd=REPO, stderr=subprocess.DEVNULL if not os.environ.get("BENCH_CLOUD_LOG") else None,
    )
    deadline = time.monotonic() + 300
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the simulated cloud did not start")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())


def config_for(cloud: dict[str, Any], work: Path, concurrency: int, **forwarder: Any) -> Any:
    os.environ["BENCH_CLIENT_SECRET"] = cloud["secret"]
    return parse_config({
        "forwarder": {"state": str(work / "state.db"), "initial_lookback": "30d",
                      "max_concurrent_requests": concurrency, "page_size": 1000, **forwarder},
        "apps": {"mssp": {"client_id": cloud["client_id"], "client_secret": "env:BENCH_CLIENT_SECRET",
                          "login_endpoint": cloud["base_url"], "graph_endpoint": cloud["base_url"],
                          "ca_file": cloud["ca_file"]}},
        "tenants": {f"t{i:04d}": {"tenant_id": tid, "app": "mssp"} for i, tid in enumerate(cloud["tenant_ids"])},
        "sinks": {"archive": {"type": "file", "path": str(work / "out" / "all.ndjson"), "format": "ocsf",
                              "batch_max_events": 2000, "fsync": False, "max_outbox": 1_000_000}},
    })


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def scraper(url: str, counts: Path) -> Any:
    """`bench/poll.py --scrape URL` in its own process: GET `url` every second until stopped."""
    proc = subprocess.Popen([sys.executable, __file__, "--scrape", url, "--scrape-counts", str(counts)], cwd=REPO)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait()


def scrape_forever(url: str, counts: Path) -> None:
    """Prometheus's part: one scrape a second, the OpenMetrics format asked for; on SIGTERM the
    number of good scrapes and their mean size go to `counts`."""
    import signal

    import httpx

    done = {"scrapes": 0, "failed": 0, "bytes": 0}
    signal.signal(signal.SIGTERM, lambda *_: (counts.write_text(json.dumps(done)), os._exit(0)))
    with httpx.Client(timeout=5, headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as client:
        while True:
            started = time.monotonic()
            try:
                answer = client.get(url)
                answer.raise_for_status()
                done["scrapes"] += 1
                done["bytes"] += len(answer.content)
            except httpx.HTTPError:
                done["failed"] += 1
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def one_cycle(config: Any, store: SQLiteStore, deliver: bool,
                    work: Path | None = None) -> tuple[float, int, list[Any], float]:
    """One cycle; with `work`, the daemon's endpoint on and scraped every second meanwhile."""
    async with contextlib.AsyncExitStack() as stack:
        forwarder = Forwarder(config, store)
        scraping = contextlib.nullcontext()
        if work is not None:
            listen = f"127.0.0.1:{free_port()}"
            await stack.enter_async_context(StatusServer(listen, lambda app: add_status_routes(app, forwarder)))
            scraping = scraper(f"http://{listen}/metrics", work / "scrapes.json")
        await stack.enter_async_context(forwarder)
        with scraping:
            started, cpu_started = time.perf_counter(), time.process_time()
            results = await (forwarder.run_once() if deliver else forwarder.poll_all())
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        print(f"  (cpu {cpu:.2f} s of {elapsed:.2f} s wall)")
        graph_requests = sum(reader.requests for readers in forwarder.readers.values() for reader in readers.values())
    return elapsed, graph_requests, results, cpu


def phase(args: argparse.Namespace, alerts: int, deliver: bool, endpoint: bool = False) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        proc, cloud = start_cloud(work, args.tenants, alerts, args.latency)
        try:
            store = SQLiteStore(work / "state.db")
            elapsed, graph_requests, results, cpu = asyncio.run(
                one_cycle(config_for(cloud, work, args.concurrency), store, deliver, work if endpoint else None)
            )
            scrapes = json.loads((work / "scrapes.json").read_text()) if endpoint else None
            written = sum(1 for _ in open(work / "out" / "all.ndjson", "rb")) if deliver else 0
            store.close()
        finally:
            proc.terminate()
            proc.wait()
    errors = [r for r in results if r.error]
    if errors:
        raise SystemExit(f"{len(errors)} tenants failed, e.g. {errors[0].label}: {errors[0].error}")
    return {"elapsed": elapsed, "graph_requests": graph_requests, "queued": sum(r.queued for r in results),
            "written": written, "cpu": cpu, "scrapes": scrapes}


def endpoint_cost(args: argparse.Namespace) -> None:
    """Phase 3: the pipeline with the endpoint off and on, interleaved; CPU an alert compared."""
    per_alert: dict[bool, list[float]] = {False: [], True: []}
    scrapes: list[dict[str, int]] = []
    for _ in range(args.endpoint_rounds):
        for endpoint in (False, True):
            print(f"pipeline, endpoint {'on, scraped every second' if endpoint else 'off'}:")
            run = phase(args, args.rss_alerts_per_tenant, deliver=True, endpoint=endpoint)
            per_alert[endpoint].append(run["cpu"] / run["written"] * 1e6)
            if endpoint:
                scrapes.append(run["scrapes"])
    off, on = statistics.median(per_alert[False]), statistics.median(per_alert[True])
    good = sum(s["scrapes"] for s in scrapes)
    print(f"endpoint: CPU an alert off {off:.0f} us, on {on:.0f} us (medians of {args.endpoint_rounds}; "
          f"off {', '.join(f'{v:.0f}' for v in per_alert[False])}; on {', '.join(f'{v:.0f}' for v in per_alert[True])})")
    print(f"  ratio on/off {on / off:.3f} (target <= 1.03); {good} scrapes answered, "
          f"{sum(s['failed'] for s in scrapes)} failed, {sum(s['bytes'] for s in scrapes) // max(good, 1):,} bytes each")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--cycle-alerts-per-tenant", type=int, default=5)
    parser.add_argument("--rss-alerts-per-tenant", type=int, default=100)
    parser.add_argument("--endpoint-rounds", type=int, default=2, help="off/on pairs of phase 3 (0 skips it)")
    parser.add_argument("--only-endpoint", action="store_true", help="run phase 3 alone")
    parser.add_argument("--scrape", help=argparse.SUPPRESS)  # the scraper's own process
    parser.add_argument("--scrape-counts", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scrape:
        return scrape_forever(args.scrape, args.scrape_counts)
    if args.only_endpoint:
        return endpoint_cost(args)

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
    if args.endpoint_rounds:
        endpoint_cost(args)


if __name__ == "__main__":
    main()
