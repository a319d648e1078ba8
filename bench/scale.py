"""Scale benchmark: many tenants split by leases across 1, 2 and 3 instances on one PostgreSQL state.

    .venv/bin/python bench/scale.py [--tenants 5000] [--alerts-per-tenant 20] [--latency 0.1]
                                    [--concurrency 50] [--instances 1,2,3] [--budget-instances 1,3]
                                    [--quick]

The simulated cloud (bench/poll.py's `start_cloud`, its own process, latency added to every
request) holds tenants x alerts-per-tenant alerts; a throwaway PostgreSQL cluster
(tests/peers/postgres.py, TLS, a fresh migrated database for every run) is the shared state.

How the instances are run, and why: each instance is a process of its own (spawned, as the
CLI's would be), with the same configuration (bench/poll.py's `config_for`, the state set to
the PostgreSQL database; only the file sink's path differs, one file per instance) and a
`Forwarder` on the store `core.app.runtime.open_state` opens, as `run` does. Instances started
at once do not split the tenants at their first claim: `claim_leases` gives ceil(tenants /
live instances), and the first to claim sees itself alone and takes all of them; the others
shed and take at their next claims (the daemon's, every lease_ttl / 3). So the instances here
claim in rounds, all of them between two barriers, until the split stands (four rounds: the
first makes every instance live, the next shed the excess and take the free tenants) - what
the daemon reaches after a few lease_ttl / 3; the timed part then starts at a barrier, so the
instances poll together, as daemons in steady state do. The lease split printed is read from
the `leases` table.

Figures, for each instance count:
- poll cycle: from the barrier to the last instance's end of `poll_all` (every tenant polled
  once, its alerts normalised and queued), next to the ideal, latency x ceil(requests /
  concurrency) of the busiest instance (requests: MSAL's discovery and token per tenant plus
  the Graph requests its readers counted). The ratio is the figure; the speed-up against one
  instance is the other (on 2 cores, expect little past 2 instances: the cloud, PostgreSQL and
  the instances share them).
- pipeline: all alerts polled, normalised, queued in PostgreSQL and written to the file sinks
  (from the barrier to the last instance's drained outbox): alerts/s.
- an idle cycle after it (tokens cached, no new alert): Graph requests per idle poll of a
  tenant and the requests/s the instances sustain - what the budget figures are derived from.
- CPU seconds and peak RSS of each instance process.

Graph's budget: 150 requests/min per tenant (`tenant_requests_per_minute`) and 130,000
requests per 10 s per app across all tenants (`app_requests_per_10s`), shared by the instances:
each keeps budget x (its tenants / all tenants) (core/app/leases.py `AppBudget`). The budget
phase runs the instances again with a deliberately small `app_requests_per_10s`, so that the
budget, not the latency, bounds the cycle; every instance samples its readers' request counter
every 0.25 s, and the samples summed over the instances give the total rate and the busiest
10-s window, printed next to the budget.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from poll import config_for, start_cloud  # noqa: E402

from core.app.leases import APP_BUDGET_PERIOD  # noqa: E402
from core.app.pipeline import Forwarder  # noqa: E402
from core.app.runtime import open_state  # noqa: E402
from core.state import ORPHANS  # noqa: E402

CLAIM_ROUNDS = 4
SAMPLE_EVERY = 0.25
GRAPH_TENANT_PER_MINUTE = 150
GRAPH_APP_PER_10S = 130_000


def graph_requests(forwarder: Forwarder) -> int:
    return sum(reader.requests for readers in forwarder.readers.values() for reader in readers.values())


async def sample(forwarder: Forwarder, samples: list[tuple[float, int]]) -> None:
    while True:
        samples.append((time.time(), graph_requests(forwarder)))
        await asyncio.sleep(SAMPLE_EVERY)


async def instance_main(spec: dict[str, Any], barrier: Any) -> dict[str, Any]:
    work = Path(spec["work"])
    config = config_for(spec["cloud"], work, spec["concurrency"], **spec["forwarder"])
    wait = lambda: asyncio.to_thread(barrier.wait)  # noqa: E731
    out: dict[str, Any] = {}
    with open_state(config) as store:
        async with Forwarder(config, store) as forwarder:
            assert forwarder.leases is not None, "the state is not shared"
            for _ in range(CLAIM_ROUNDS):  # every instance claims between two barriers
                await wait()
                forwarder.claim_leases()
                await wait()
            out["held"] = len(forwarder.leases.held_tenants())
            await wait()  # every instance's claims done: the split as the leases table has it
            holders: dict[str, set[str]] = {}
            for lease in store.leases():
                if lease.holder and (lease.tenant_id, lease.source) != ORPHANS:
                    holders.setdefault(lease.holder, set()).add(lease.tenant_id)
            out["split"] = sorted((len(tenants) for tenants in holders.values()), reverse=True)
            out["fraction"] = forwarder.app_budget.fraction
            samples: list[tuple[float, int]] = []
            sampler = asyncio.create_task(sample(forwarder, samples))
            await wait()
            cpu0, out["start"] = time.process_time(), time.time()
            results = await forwarder.poll_all()
            out["polled"], out["poll_requests"] = time.time(), graph_requests(forwarder)
            out["errors"] = [f"{r.label}: {r.error}" for r in results if r.error][:3]
            out["queued"] = sum(r.queued for r in results)
            if spec["deliver"]:
                await forwarder.drain()
                out["drained"] = time.time()
                await wait()  # the idle cycle: tokens cached, every alert read already
                out["idle_start"] = time.time()
                idle = await forwarder.poll_all()
                out["idle_end"] = time.time()
                out["idle_requests"] = graph_requests(forwarder) - out["poll_requests"]
                out["errors"] += [f"{r.label}: {r.error}" for r in idle if r.error][:3]
            out["cpu"] = time.process_time() - cpu0
            sampler.cancel()
            samples.append((time.time(), graph_requests(forwarder)))
            out["samples"] = samples
            forwarder.leases.release()
    sink = work / "out" / "all.ndjson"
    out["written"] = sum(1 for _ in open(sink, "rb")) if sink.exists() else 0
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["cpu_total"] = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(
        resource.RUSAGE_SELF).ru_stime
    return out


def instance(spec: dict[str, Any], barrier: Any) -> None:
    """One instance's process: its figures go to spec["result"] as JSON."""
    import logging

    logging.disable(logging.INFO)  # the cycle's INFO lines, one per tenant failure etc.: not the figure
    if os.environ.get("BENCH_PROFILE"):  # a profile of each instance, for finding where its time goes
        import cProfile

        with cProfile.Profile() as profile:
            out = asyncio.run(instance_main(spec, barrier))
        profile.dump_stats(Path(os.environ["BENCH_PROFILE"]) / f"{os.getpid()}.prof")
    else:
        out = asyncio.run(instance_main(spec, barrier))
    Path(spec["result"]).write_text(json.dumps(out))


def cpu_of(pid: int) -> float:
    """CPU seconds of a process and of its children it waited for (PostgreSQL's ended backends)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_instances(args: argparse.Namespace, cluster: Any, cloud: dict[str, Any], work: Path, n: int,
                  tag: str, deliver: bool, budget: int | None = None) -> dict[str, Any]:
    from core.state.postgresql import PostgresSettings, migrate

    name = f"scale_{tag}_{n}"
    url = cluster.create_database(name)
    migrate(PostgresSettings(url, password=cluster.password, sslrootcert=str(cluster.ca_file)))
    os.environ["BENCH_PG_PASSWORD"] = cluster.password
    forwarder: dict[str, Any] = {
        "state": url, "lease_ttl": "600s",
        "postgresql": {"password": "env:BENCH_PG_PASSWORD", "sslrootcert": str(cluster.ca_file),
                       "pool_size": 4}}
    if budget is not None:
        forwarder["app_requests_per_10s"] = budget
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(n)
    procs, specs = [], []
    for i in range(n):
        inst = work / f"{tag}-{n}-{i}"
        inst.mkdir()
        spec = {"work": str(inst), "cloud": cloud, "concurrency": args.concurrency, "forwarder": forwarder,
                "deliver": deliver, "result": str(inst / "result.json")}
        specs.append(spec)
        procs.append(ctx.Process(target=instance, args=(spec, barrier), name=f"instance-{i}"))
    others = {"cloud": args.cloud_pid, "PostgreSQL": cluster.pid}
    before = {name: cpu_of(pid) for name, pid in others.items()}
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    time.sleep(0.5)  # the backends of the instances' connections ended and waited for
    others_cpu = {name: cpu_of(pid) - before[name] for name, pid in others.items()}
    if any(proc.exitcode for proc in procs):
        raise SystemExit(f"an instance failed: exit codes {[proc.exitcode for proc in procs]}")
    outs = [json.loads(Path(spec["result"]).read_text()) for spec in specs]
    cluster.drop_database(name)
    errors = [e for out in outs for e in out["errors"]]
    if errors:
        raise SystemExit(f"tenants failed, e.g. {errors[0]}")
    return {"outs": outs, "split": outs[0]["split"], "others_cpu": others_cpu}


def fractions(outs: list[dict[str, Any]]) -> str:
    return "/".join(f"{o['fraction']:.3f}" for o in outs)


def busiest_window(outs: list[dict[str, Any]], seconds: float) -> tuple[int, float]:
    """The most requests, all instances together, in any `seconds` window of the samples; and
    the mean rate from the first request to the last."""
    events: list[tuple[float, int]] = []
    for out in outs:
        prev = 0
        for at, count in out["samples"]:
            if count > prev:
                events.append((at, count - prev))
            prev = count
    events.sort()
    best, total, lo = 0, 0, 0
    for hi in range(len(events)):
        total += events[hi][1]
        while events[hi][0] - events[lo][0] > seconds:
            total -= events[lo][1]
            lo += 1
        best = max(best, total)
    span = events[-1][0] - events[0][0] if len(events) > 1 else 0.0
    return best, (sum(c for _, c in events) / span) if span else 0.0


def throughput(args: argparse.Namespace, cluster: Any, cloud: dict[str, Any], work: Path) -> dict[int, Any]:
    figures: dict[int, Any] = {}
    for n in args.instance_counts:
        run = run_instances(args, cluster, cloud, work, n, "run", deliver=True)
        outs = run["outs"]
        start = min(o["start"] for o in outs)
        cycle = max(o["polled"] for o in outs) - start
        pipeline = max(o["drained"] for o in outs) - start
        idle = max(o["idle_end"] for o in outs) - min(o["idle_start"] for o in outs)
        busiest = max(2 * o["held"] + o["poll_requests"] for o in outs)
        ideal = args.latency * math.ceil(busiest / args.concurrency)
        written = sum(o["written"] for o in outs)
        idle_requests = sum(o["idle_requests"] for o in outs)
        figures[n] = f = {"cycle": cycle, "ideal": ideal, "pipeline": pipeline, "written": written,
                          "alerts_s": written / pipeline, "idle": idle, "idle_requests": idle_requests,
                          "idle_rate": idle_requests / idle, "outs": outs}
        print(f"{n} instance{'s' if n > 1 else ''}: leases table {'/'.join(map(str, run['split']))} tenants a "
              f"holder (each instance's own count {'/'.join(str(o['held']) for o in outs)}) (budget fractions {fractions(outs)})")
        print(f"  poll cycle {cycle:.2f} s, ideal {ideal:.2f} s (busiest instance: {busiest} requests), "
              f"ratio {cycle / ideal:.2f}; {sum(o['queued'] for o in outs)} alerts queued")
        print(f"  pipeline: {written} alerts written in {pipeline:.1f} s ({f['alerts_s']:.0f} alerts/s)")
        print(f"  idle cycle {idle:.2f} s: {idle_requests} Graph requests "
              f"({idle_requests / args.tenants:.2f} a tenant, {f['idle_rate']:.0f} requests/s)")
        print("  per instance: " + "; ".join(f"CPU {o['cpu']:.1f} s, peak RSS {o['rss_mb']:.0f} MB" for o in outs))
        print("  beside them, the whole run: " + ", ".join(f"{name} CPU {cpu:.1f} s"
                                                        for name, cpu in run["others_cpu"].items()))
        base = figures[min(figures)]
        if n != min(figures):
            print(f"  speed-up against {min(figures)}: poll cycle x{base['cycle'] / cycle:.2f}, "
                  f"alerts/s x{f['alerts_s'] / base['alerts_s']:.2f}")
    return figures


def budget_end(args: argparse.Namespace, figures: dict[int, Any]) -> None:
    """Where one machine's Graph budget ends, from the measured idle cycle."""
    one = figures[min(figures)]
    per_tenant = one["idle_requests"] / args.tenants
    best_n = max(figures, key=lambda n: figures[n]["idle_rate"])
    rate = figures[best_n]["idle_rate"]
    interval = 300
    app_rate = GRAPH_APP_PER_10S / APP_BUDGET_PERIOD
    machine = rate * interval / per_tenant
    print(f"Graph's budget ({per_tenant:.2f} Graph requests an idle poll of a tenant, poll_interval {interval} s):")
    print(f"  a tenant: at most {GRAPH_TENANT_PER_MINUTE} requests/min, so an idle poll takes "
          f"{per_tenant * 60 / GRAPH_TENANT_PER_MINUTE:.2f} s of its budget at least: never the limit at 300 s")
    print(f"  this machine: {rate:.0f} requests/s sustained ({best_n} instance{'s' if best_n > 1 else ''}, "
          f"{args.latency * 1000:.0f} ms latency, concurrency {args.concurrency} each): "
          f"~{machine:,.0f} tenants per {interval} s poll interval")
    print(f"  the app: {GRAPH_APP_PER_10S:,} requests / 10 s = {app_rate:,.0f} requests/s across all tenants and "
          f"instances: the limit past {app_rate * interval / per_tenant:,.0f} tenants idle, "
          f"i.e. {app_rate / rate:.0f} machines like this one")


def budget_kept(args: argparse.Namespace, cluster: Any, cloud: dict[str, Any], work: Path) -> None:
    tenants = min(args.tenants, args.budget_tenants)
    budget = args.budget or max(20, tenants // 3)
    cloud = {**cloud, "tenant_ids": cloud["tenant_ids"][:tenants]}
    print(f"app budget kept across instances: app_requests_per_10s = {budget} ({budget / APP_BUDGET_PERIOD:.0f} "
          f"requests/s), {tenants} tenants' first poll, requests counted every {SAMPLE_EVERY} s in each instance")
    for n in args.budget_counts:
        run = run_instances(args, cluster, cloud, work, n, "budget", deliver=False, budget=budget)
        outs = run["outs"]
        window, mean = busiest_window(outs, APP_BUDGET_PERIOD)
        cycle = max(o["polled"] for o in outs) - min(o["start"] for o in outs)
        requests = sum(o["poll_requests"] for o in outs)
        total = sum(o["fraction"] for o in outs)
        print(f"  {n} instance{'s' if n > 1 else ''}: budget fractions {fractions(outs)} (sum {total:.3f}); "
              f"{requests} requests in {cycle:.1f} s, {mean:.1f} requests/s from the first to the last "
              f"(budget {budget / APP_BUDGET_PERIOD:.1f}); busiest 10 s: {window} requests (budget {budget}, "
              f"ratio {window / budget:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--alerts-per-tenant", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--instances", default="1,2,3", help="instance counts, comma-separated ('' skips them)")
    parser.add_argument("--budget-instances", default="1,3", help="instance counts of the budget phase ('' skips it)")
    parser.add_argument("--budget-tenants", type=int, default=600, help="tenants of the budget phase")
    parser.add_argument("--budget", type=int, help="app_requests_per_10s of the budget phase (default its tenants / 3)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run of under a minute: 100 tenants, 5 alerts each; the budget phase 60 tenants at 40")
    args = parser.parse_args()
    if args.quick:
        args.tenants, args.alerts_per_tenant, args.budget_tenants = 100, 5, 60
        args.budget = args.budget or 40
    args.instance_counts = [int(n) for n in args.instances.split(",") if n]
    args.budget_counts = [int(n) for n in args.budget_instances.split(",") if n]

    from tests.peers.postgres import PostgresCluster

    with tempfile.TemporaryDirectory() as tmp, PostgresCluster() as cluster:
        work = Path(tmp)
        started = time.monotonic()
        proc, cloud = start_cloud(work, args.tenants, args.alerts_per_tenant, args.latency)
        args.cloud_pid = proc.pid
        print(f"scale: {args.tenants} tenants x {args.alerts_per_tenant} alerts, {args.latency * 1000:.0f} ms latency, "
              f"concurrency {args.concurrency} an instance, {os.cpu_count()} CPUs (cloud up in "
              f"{time.monotonic() - started:.0f} s)")
        try:
            if args.instance_counts:
                figures = throughput(args, cluster, cloud, work)
                budget_end(args, figures)
            if args.budget_counts:
                budget_kept(args, cluster, cloud, work)
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
