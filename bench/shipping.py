"""What the shipping benchmarks (bench/ship_*.py) share: draining a sink's outbox under the clock,
the interleaved rounds of the two senders, the rates and spreads, the verdict line, and a run of
each sender under cProfile. Each benchmark keeps its corpus, its peer and its reference loop."""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from bench.ship_syslog import BASE_ALERTS, START, STEP, _version, cpu_seconds
from core.delivery import SinkWorker
from core.model.schema import Alert, TenantRef
from mappings.graph_alerts_v2 import normalise
from tests.peers.alert_factory import make_alerts

SENDERS = ("forwarder", "reference")


class Timed(Protocol):
    seconds: float
    client_cpu: float
    peer_cpu: float


# (sender, a scratch folder, a profiler or None) -> one timed run of that sender.
RunOne = Callable[[str, Path, "cProfile.Profile | None"], Timed]


def tenant_alerts(events: int, tenant_count: int, name: str) -> tuple[list[TenantRef], list[Alert]]:
    """`events` distinct alert versions over `tenant_count` customers, as the tenants' polls queue
    them together: event i belongs to tenant i mod T. Per tenant up to 5,000 / T generated alerts
    (tests/peers/alert_factory.py, the tenant's own id inside), each varied into several versions,
    normalised under that tenant, marked first_sight as the pipeline marks a new alert id. `name`
    keeps each benchmark's tenant ids its own."""
    tenants = [TenantRef(id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{name}/tenant/{n}")), label=f"customer{n:02d}")
               for n in range(tenant_count)]
    per_tenant = max(1, min(events, BASE_ALERTS) // tenant_count)
    bases = [make_alerts(per_tenant, tenant.id, START, STEP, seed=1) for tenant in tenants]
    ingested = datetime.now(UTC)
    alerts = []
    for index in range(events):
        turn, which = divmod(index, tenant_count)
        base, tenant = bases[which], tenants[which]
        round_, slot = divmod(turn, len(base))
        graph = base[slot] if round_ == 0 else _version(base[slot], round_, START + (turn * STEP))
        alert = normalise(graph, tenant, ingested)
        alert.first_sight = True  # this alert id was never seen before
        alerts.append(alert)
    return tenants, alerts


def timeout_for(events: int) -> float:
    return 60 + events / 200  # far beyond any healthy run (200 events/s)


async def drain_timed(worker: SinkWorker, peer_pid: int, events: int, profiler: cProfile.Profile | None,
                      timeout: float | None = None) -> tuple[float, float, float]:
    """Drain the worker's outbox under the clock, giving up after `timeout` seconds (default
    `timeout_for(events)`): (wall seconds, this process's CPU seconds, the peer process's CPU
    seconds); closing the connector is outside the clock."""
    loop = asyncio.get_running_loop()
    peer_cpu = cpu_seconds(peer_pid)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    try:
        drained = await worker.drain(loop.time() + (timeout_for(events) if timeout is None else timeout))
        if profiler is not None:
            profiler.disable()
        if not drained:
            raise SystemExit(f"forwarder: outbox not drained ({worker.fatal or 'deadline passed'})")
        return time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(peer_pid) - peer_cpu
    finally:
        if profiler is not None:
            profiler.disable()
        await worker.close()


def interleaved(repeat: int, events: int, root: Path, run_one: RunOne,
                detail: Callable[[Timed], str]) -> dict[str, list[Timed]]:
    """`repeat` rounds of both senders, which goes first alternating (so neither always follows
    the other's aftermath), each run in a fresh scratch folder; one line a run."""
    runs: dict[str, list[Timed]] = {sender: [] for sender in SENDERS}
    for round_ in range(repeat):
        for sender in (SENDERS if round_ % 2 == 0 else SENDERS[::-1]):
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                run = run_one(sender, Path(tmp), None)
            runs[sender].append(run)
            print(f"  round {round_ + 1}: {sender:<10} {events / run.seconds:>9,.0f} events/s  "
                  f"({run.seconds:.2f} s, {detail(run)})", flush=True)
    return runs


def rates(runs: list[Timed], events: int) -> list[float]:
    return sorted(events / run.seconds for run in runs)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def timing_columns(runs: list[Timed], events: int) -> str:
    """A sender's events/s (best, median, worst), wall, client CPU and peer CPU spreads."""
    r = rates(runs, events)
    return (f"{r[-1]:>14,.0f}{statistics.median(r):>10,.0f}{r[0]:>10,.0f}  {spread([x.seconds for x in runs]):<13}"
            f"{spread([x.client_cpu for x in runs]):<14}{spread([x.peer_cpu for x in runs]):<13}")


TIMING_HEADER = f"{'sender':<11}{'events/s best':>14}{'median':>10}{'worst':>10}  " \
                f"{'wall s':<13}{'client CPU s':<14}{'peer CPU s':<13}"


def verdict(runs: dict[str, list[Timed]], events: int, target: float) -> None:
    """The ratio forwarder / reference of the medians (of the bests) and whether it meets `target`."""
    ours, reference = rates(runs["forwarder"], events), rates(runs["reference"], events)
    ratio = statistics.median(ours) / statistics.median(reference)
    print(f"\nforwarder / reference: {ratio:.1%} of medians ({ours[-1] / reference[-1]:.1%} of bests)   "
          f">= {target:.0%} of the reference: {'yes' if ratio >= target else 'no'}")


def profiled(root: Path, events: int, run_one: RunOne, lines: int) -> None:
    """One more run of each sender under cProfile: where this process's time goes."""
    for sender in SENDERS:
        profiler = cProfile.Profile()
        with tempfile.TemporaryDirectory(dir=root) as tmp:
            run = run_one(sender, Path(tmp), profiler)
        print(f"\nprofile: {sender} under cProfile (the timed span only), "
              f"{events / run.seconds:,.0f} events/s while profiled, {run.client_cpu:.2f} s CPU")
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(lines)
        print(text.getvalue())


def shipping_arguments(doc: str | None, argv: list[str] | None, *, events: int, batch: int, batch_help: str,
                       tenants: bool = True) -> argparse.Namespace:
    """The options every shipping benchmark takes: --events, --repeat, --batch, --tenants (where
    the corpus is spread over customers), --profile and --profile-lines."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=events)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=batch, help=batch_help)
    if tenants:
        parser.add_argument("--tenants", type=int, default=10, help="customers the corpus is spread over (default 10)")
    parser.add_argument("--profile", action="store_true", help="add one run of each sender under cProfile")
    parser.add_argument("--profile-lines", type=int, default=20, help="functions shown per profile (default 20)")
    args = parser.parse_args(argv)
    if min(args.events, args.repeat, args.batch, getattr(args, "tenants", 1)) < 1:
        parser.error(("--events, --repeat, --batch and --tenants" if tenants else "--events, --repeat and --batch")
                     + " must be at least 1")
    return args
