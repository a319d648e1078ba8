"""End to end, with an honest anchor: the forwarder's `run --once` against a bare loop.

    .venv/bin/python bench/pipeline.py [--tenants 100] [--alerts-per-tenant 500] [--latency 0]
                                       [--repeat 1] [--concurrency 50]

One simulated cloud (tests/peers/fake_cloud.py, its own process) serves the same synthetic
tenants and pages to every variant, in this order, `--repeat` times:

  (a)  bare loop: per tenant one plain httpx client_credentials POST to the cloud's login
       endpoint, then httpx GETs of the alerts_v2 pages (the forwarder's `$filter` and `$top`,
       `@odata.nextLink` followed), orjson parses each page, `mappings.graph_alerts_v2.normalise`
       and `mappings.encoder("ocsf")` make each line, and the lines are appended to one file.
       The same request concurrency as the forwarder. No state, no dedupe, no durability.
  (b1) the forwarder's `run --once` path in this process (Forwarder(config, SQLiteStore).run_once(),
       a fresh state file each time) into one file sink (ocsf, fsync off as in bench/poll.py);
  (b2) the same into that file sink and syslog-ng over TCP (cef);
  (b4) the same into the file sink, syslog-ng, the HEC peer (raw) and the Elasticsearch peer (ecs).
       Each sink keeps its default format: every sink encodes its own.

Every peer runs in its own process (syslog-ng is the real daemon; the HEC and Elasticsearch
peers are tests/peers/*.py started standalone, `--count-only`), started fresh before each run
and outside the measurement, so their CPU does not count against ours. Without syslog-ng
installed, a second file sink (cef) takes its place, and the output says so.

Measured for each: the CPU of this process (time.process_time: every thread, the forwarder's
file writes and SQLite included) from before the store and forwarder are made until the
forwarder has closed, per alert, and alerts/s of wall time over the same span. Every alert must
arrive in every sink (checked after the measurement). The figure is the ratio (b)/(a) of the CPU
an alert, in the same run; the libraries the sinks and MSAL import lazily are imported before
the first measurement, as a long-running daemon has them. Issue 19's targets: one sink <= 2.0x
(stretch 1.5x), each extra sink <= +0.3x.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import mappings  # noqa: E402
from bench.poll import start_cloud  # noqa: E402
from bench.standalone import standalone_peer  # noqa: E402
from core.app.config import parse_config  # noqa: E402
from core.app.pipeline import Forwarder  # noqa: E402
from core.model.schema import TenantRef  # noqa: E402
from core.state.sqlite import SQLiteStore  # noqa: E402
from mappings.graph_alerts_v2 import normalise  # noqa: E402

PAGE_SIZE = 1000
LOOKBACK = timedelta(days=30)
HEC_TOKEN = "11111111-2222-4333-8444-555555555555"
ES_API_KEY = "bench-pipeline-key"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
VARIANTS = ("a", "b1", "b2", "b4")
LABELS = {"a": "(a)  bare loop -> file (ocsf)",
          "b1": "(b1) run --once -> file (ocsf)",
          "b2": "(b2) run --once -> file + syslog-ng",
          "b4": "(b4) run --once -> file + syslog-ng + HEC + Elasticsearch"}


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as file:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b""))


# --------------------------------------------------------------------------- (a) the bare loop

async def bare_tenant(client: httpx.AsyncClient, cloud: dict[str, Any], index: int, tenant_id: str,
                      slots: asyncio.Semaphore, encode: Any, out: Any) -> int:
    base = cloud["base_url"]
    async with slots:
        answer = await client.post(f"{base}/{tenant_id}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": cloud["client_id"],
            "client_secret": cloud["secret"], "scope": GRAPH_SCOPE})
        answer.raise_for_status()
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}",
               "Prefer": "include-unknown-enum-members"}
    since = (datetime.now(timezone.utc) - LOOKBACK).strftime("%Y-%m-%dT%H:%M:%SZ")
    query = httpx.QueryParams({"$filter": f"lastUpdateDateTime ge {since}", "$top": str(PAGE_SIZE)})
    url: str | None = f"{base}/v1.0/security/alerts_v2?{query}"
    tenant = TenantRef(id=tenant_id, label=f"t{index:04d}")
    written = 0
    while url is not None:
        async with slots:
            answer = await client.get(url, headers=headers)
            answer.raise_for_status()
        page = orjson.loads(answer.content)
        ingested = datetime.now(timezone.utc)
        lines = [encode(normalise(raw, tenant, ingested)) for raw in page["value"]]
        if lines:
            out.write(b"\n".join(lines) + b"\n")
            written += len(lines)
        url = page.get("@odata.nextLink")
    return written


async def bare_loop(cloud: dict[str, Any], path: Path, concurrency: int) -> int:
    encode = mappings.encoder("ocsf")
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with path.open("ab") as out:
        async with httpx.AsyncClient(verify=cloud["ca_file"], limits=limits, timeout=60) as client:
            counts = await asyncio.gather(*(bare_tenant(client, cloud, i, tid, slots, encode, out)
                                            for i, tid in enumerate(cloud["tenant_ids"])))
    return sum(counts)


# --------------------------------------------------------------------------- (b) the forwarder

@contextmanager
def sink_peers(variant: str, work: Path, note: list[str]) -> Iterator[tuple[dict[str, dict[str, Any]], list[Any]]]:
    """The sinks of `variant` (besides the OCSF file), their peers started in their own processes;
    yields the sink tables and one check a sink: () -> events that sink's destination holds."""
    sinks: dict[str, dict[str, Any]] = {}
    checks: list[Any] = []
    with ExitStack() as stack:
        if variant in ("b2", "b4"):
            if shutil.which("syslog-ng"):
                from tests.peers.syslog_ng import SyslogNg

                syslog = stack.enter_context(SyslogNg(work / "syslog-ng", raw_only=True))
                before = count_lines(syslog.output)  # the readiness probes
                sinks["siem"] = {"type": "syslog", "host": "127.0.0.1", "port": syslog.ports["tcp"],
                                 "protocol": "tcp"}
                checks.append(("syslog-ng", lambda: count_lines(syslog.output) - before))
            else:
                if not note:
                    note.append("syslog-ng is not installed: a second file sink (cef) stands in for it")
                other = work / "out" / "cef.ndjson"
                sinks["siem"] = {"type": "file", "path": str(other), "format": "cef", "fsync": False}
                checks.append(("file (cef)", lambda: count_lines(other)))
        if variant == "b4":
            (work / "hec").mkdir()
            hec, _ = stack.enter_context(standalone_peer(
                "tests.peers.hec_peer", ["--port", "0", "--token", HEC_TOKEN, "--count-only"], work / "hec", "HEC peer"))
            sinks["splunk"] = {"type": "splunk_hec", "url": hec["url"], "token": "env:BENCH_HEC_TOKEN",
                               "ca_file": hec["ca_file"]}
            checks.append(("HEC peer", lambda: httpx.get(f"{hec['url']}/stats", verify=hec["ca_file"]).json()["events"]))
            (work / "es").mkdir()
            es, _ = stack.enter_context(standalone_peer(
                "tests.peers.es_peer", ["--port", "0", "--count-only", "--api-key", ES_API_KEY], work / "es",
                "Elasticsearch peer"))
            sinks["elastic"] = {"type": "elasticsearch", "hosts": [es["url"]], "api_key": "env:BENCH_ES_API_KEY",
                                "ca_file": es["ca_file"]}
            checks.append(("Elasticsearch peer",
                           lambda: httpx.get(f"{es['url']}/_peer/stats", verify=es["ca_file"]).json()["documents"]))
        for sink in sinks.values():
            sink["max_outbox"] = 1_000_000
        yield sinks, checks


def forwarder_config(cloud: dict[str, Any], work: Path, concurrency: int, sinks: dict[str, dict[str, Any]]) -> Any:
    os.environ.update(BENCH_CLIENT_SECRET=cloud["secret"], BENCH_HEC_TOKEN=HEC_TOKEN, BENCH_ES_API_KEY=ES_API_KEY)
    return parse_config({
        "forwarder": {"state": str(work / "state.db"), "initial_lookback": "30d",
                      "max_concurrent_requests": concurrency, "page_size": PAGE_SIZE},
        "apps": {"mssp": {"client_id": cloud["client_id"], "client_secret": "env:BENCH_CLIENT_SECRET",
                          "login_endpoint": cloud["base_url"], "graph_endpoint": cloud["base_url"],
                          "ca_file": cloud["ca_file"]}},
        "tenants": {f"t{i:04d}": {"tenant_id": tid, "app": "mssp"} for i, tid in enumerate(cloud["tenant_ids"])},
        "sinks": {"archive": {"type": "file", "path": str(work / "out" / "all.ndjson"), "format": "ocsf",
                              "batch_max_events": 2000, "fsync": False, "max_outbox": 1_000_000},
                  **sinks},
    })


async def forwarder_once(config: Any, state: Path) -> list[Any]:
    store = SQLiteStore(state)
    try:
        async with Forwarder(config, store) as forwarder:
            return await forwarder.run_once()
    finally:
        store.close()


# --------------------------------------------------------------------------- one measured run

def measure(variant: str, cloud: dict[str, Any], args: argparse.Namespace, expected: int,
            note: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        out = work / "out" / "all.ndjson"
        with sink_peers(variant, work, note) as (sinks, checks):
            config = forwarder_config(cloud, work, args.concurrency, sinks) if variant != "a" else None
            started, cpu_started = time.perf_counter(), time.process_time()
            with profiled(variant in args.profile, variant):
                if variant == "a":
                    asyncio.run(bare_loop(cloud, out, args.concurrency))
                else:
                    results = asyncio.run(forwarder_once(config, work / "state.db"))
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
            if variant != "a":
                errors = [r for r in results if r.error]
                if errors:
                    raise SystemExit(f"{variant}: {len(errors)} tenants failed, e.g. {errors[0].label}: {errors[0].error}")
            arrived = {"file (ocsf)": count_lines(out)}
            for name, check in checks:
                deadline = time.monotonic() + 60
                while (held := check()) < expected and time.monotonic() < deadline:
                    time.sleep(0.2)
                arrived[name] = held
    short = {name: n for name, n in arrived.items() if n != expected}
    if short:
        raise SystemExit(f"{variant}: expected {expected:,} alerts in every sink, got {short}")
    run = {"cpu_us": cpu / expected * 1e6, "rate": expected / elapsed, "cpu": cpu, "wall": elapsed}
    print(f"  {LABELS[variant]:<58} {run['cpu_us']:7.0f} us CPU/alert {run['rate']:8.0f} alerts/s "
          f"(cpu {cpu:.1f} s of {elapsed:.1f} s wall)", flush=True)
    return run


@contextmanager
def profiled(wanted: bool, variant: str) -> Iterator[None]:
    """pyinstrument over one variant's run (`--profile b2`): the top frames, printed after it.
    The profiler's own cost counts in that run's CPU, so a profiled run's figures are not the ratio."""
    if not wanted:
        yield
        return
    try:
        from pyinstrument import Profiler
    except ImportError:
        raise SystemExit("--profile needs pyinstrument: .venv/bin/pip install pyinstrument") from None
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        print(f"--- profile of {variant} ---")
        print(profiler.output_text(unicode=False, color=False, show_all=False, timeline=False))


def warm_imports() -> None:
    """Import, before any measurement, what the sinks and MSAL import lazily on first use (about a
    second of CPU at start-up, which a daemon pays once and the bare loop paid at its imports)."""
    import elastic_transport  # noqa: F401
    import elasticsearch  # noqa: F401
    import msal  # noqa: F401

    import connectors.elasticsearch  # noqa: F401
    import connectors.file  # noqa: F401
    import connectors.splunk_hec  # noqa: F401
    import connectors.syslog  # noqa: F401


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=100)
    parser.add_argument("--alerts-per-tenant", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds the cloud adds to every request")
    parser.add_argument("--repeat", type=int, default=1, help="rounds of a, b1, b2, b4 (medians reported)")
    parser.add_argument("--concurrency", type=int, default=50, help="requests in flight, both ways")
    parser.add_argument("--profile", action="append", default=[], choices=VARIANTS,
                        help="profile this variant with pyinstrument (repeatable; its figures then include the profiler)")
    parser.add_argument("--only", action="append", default=[], choices=VARIANTS,
                        help="run only this variant (repeatable; default all; (a) is always run, for the ratio)")
    args = parser.parse_args()
    expected = args.tenants * args.alerts_per_tenant
    chosen = [v for v in VARIANTS if v == "a" or not args.only or v in args.only]
    warm_imports()
    note: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, cloud = start_cloud(Path(tmp), args.tenants, args.alerts_per_tenant, args.latency)
        try:
            print(f"pipeline: {args.tenants} tenants x {args.alerts_per_tenant} alerts = {expected:,} alerts a run, "
                  f"latency {args.latency * 1000:.0f} ms, concurrency {args.concurrency}, {args.repeat} round(s); "
                  "the cloud and every peer in their own processes", flush=True)
            runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
            for round_ in range(args.repeat):
                print(f"round {round_ + 1}:", flush=True)
                for variant in chosen:
                    runs[variant].append(measure(variant, cloud, args, expected, note))
        finally:
            proc.terminate()
            proc.wait()
    for line in note:
        print(f"note: {line}")
    cpu = {v: statistics.median(r["cpu_us"] for r in runs[v]) for v in chosen}
    rate = {v: statistics.median(r["rate"] for r in runs[v]) for v in chosen}
    print(f"medians of {args.repeat}:")
    print(f"  {'':<58} {'us CPU/alert':>12} {'alerts/s':>9} {'CPU (b)/(a)':>12} {'rate (a)/(b)':>13}")
    for v in chosen:
        print(f"  {LABELS[v]:<58} {cpu[v]:12.0f} {rate[v]:9.0f} {cpu[v] / cpu['a']:11.2f}x {rate['a'] / rate[v]:12.2f}x")
    if {"b1", "b2", "b4"} <= set(chosen):
        print(f"  each extra sink: b2-b1 +{(cpu['b2'] - cpu['b1']) / cpu['a']:.2f}x, "
              f"(b4-b1)/3 +{(cpu['b4'] - cpu['b1']) / cpu['a'] / 3:.2f}x of (a)")
    print("  targets (issue 19): one sink <= 2.0x (stretch 1.5x); each extra sink <= +0.3x")


if __name__ == "__main__":
    main()
