"""Idle cycles: what a poll cycle costs when no tenant has a new alert (issue 19, point 3).

    .venv/bin/python bench/idle.py [--tenants 1000] [--window 50] [--cycles 3] [--concurrency 50]

The simulated cloud (its own process, so its CPU does not count against ours) serves
`--tenants` synthetic tenants, each holding `--window` alerts last updated at even steps over
the last 14 minutes: all inside the 15-minute overlap, so every overlap re-read reads them all. The forwarder (in this process, the daemon's objects: one `Forwarder`, its token cache
and connection pools kept across cycles) takes them in a first cycle, into one file sink;
then `--cycles` more cycles find nothing new, each poll as the daemon makes it between two
overlap re-reads (from the cursor; `poll_interval` 10s, `overlap_every` 5m), and `--cycles`
more that each re-read the overlap (`overlap_every` 0s: every poll re-reads it, as every poll
did before issue 19). Measured: the CPU of this process per tenant of each idle cycle
(`time.process_time`, every thread), and the same for a bare loop in the same run: httpx GETs
of the same whole window, and of the same stretch an idle poll reads (from 30 s before the
newest alert), with one cached token per tenant; orjson parses them, nothing else. The
figures: the idle cycle's CPU a tenant (target <= 1 ms), the re-read's against the bare
loop's, and the mean a poll at the daemon's pace (one re-read in overlap_every / poll_interval
polls). Every idle cycle must queue 0 alerts (checked).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.poll import config_for, start_cloud  # noqa: E402
from core.app.pipeline import CONNECTIONS_PER_POOL, Forwarder  # noqa: E402
from core.sources.incremental import RECENT_REREAD  # noqa: E402
from core.state.sqlite import SQLiteStore  # noqa: E402

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
OVERLAP = timedelta(minutes=15)
EMPTY_REQUESTS = 100


async def bare_cycles(cloud: dict[str, Any], cycles: int, concurrency: int) -> dict[str, list[float]]:
    """CPU seconds of each cycle of the bare loop, reading each tenant's whole window and then
    from its newest alert's time on (the tokens are fetched before, not counted)."""
    base = cloud["base_url"]
    slots = asyncio.Semaphore(concurrency)
    # Pools of 5 connections, one per tenant by its index, as the forwarder shards its own:
    # httpcore walks every connection of a pool on each request, so one pool of 50 would make
    # the anchor pay milliseconds a request that the forwarder does not.
    limits = httpx.Limits(max_connections=CONNECTIONS_PER_POOL)
    clients = [httpx.AsyncClient(verify=cloud["ca_file"], limits=limits, timeout=60)
               for _ in range(-(-concurrency // CONNECTIONS_PER_POOL))]
    async with contextlib.AsyncExitStack() as stack:
        for each in clients:
            await stack.enter_async_context(each)
        shard = {tenant_id: clients[n % len(clients)] for n, tenant_id in enumerate(cloud["tenant_ids"])}

        def client_of(tenant_id: str) -> httpx.AsyncClient:
            return shard[tenant_id]

        async def token(tenant_id: str) -> str:
            async with slots:
                answer = await client_of(tenant_id).post(f"{base}/{tenant_id}/oauth2/v2.0/token", data={
                    "grant_type": "client_credentials", "client_id": cloud["client_id"],
                    "client_secret": cloud["secret"], "scope": GRAPH_SCOPE})
            return str(answer.json()["access_token"])

        tokens = await asyncio.gather(*(token(tid) for tid in cloud["tenant_ids"]))

        newest: dict[str, str] = {}

        async def window(tenant_id: str, bearer: str, after: str | None) -> int:
            start = (datetime.fromisoformat(after) - RECENT_REREAD if after is not None
                     else datetime.now(timezone.utc) - OVERLAP)
            since = start.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            query = httpx.QueryParams({"$filter": f"lastUpdateDateTime ge {since}", "$top": "1000"})
            url: str | None = f"{base}/v1.0/security/alerts_v2?{query}"
            read = 0
            while url is not None:
                async with slots:
                    answer = await client_of(tenant_id).get(url, headers={"Authorization": f"Bearer {bearer}",
                                                            "Prefer": "include-unknown-enum-members"})
                page = orjson.loads(answer.content)
                read += len(page["value"])
                newest[tenant_id] = max([newest.get(tenant_id, "")] + [a["lastUpdateDateTime"] for a in page["value"]])
                url = page.get("@odata.nextLink")
            return read

        # The least any poll costs: one GET with an empty answer on a kept-alive connection.
        empty = httpx.QueryParams({"$filter": "lastUpdateDateTime ge 2999-01-01T00:00:00Z", "$top": "1000"})
        first_client, bearer = clients[0], tokens[0]
        headers = {"Authorization": f"Bearer {bearer}", "Prefer": "include-unknown-enum-members"}
        await first_client.get(f"{base}/v1.0/security/alerts_v2?{empty}", headers=headers)
        cpu = time.process_time()
        for _ in range(EMPTY_REQUESTS):
            await first_client.get(f"{base}/v1.0/security/alerts_v2?{empty}", headers=headers)
        spent: dict[str, list[float]] = {"whole": [], "cursor": [],
                                         "empty": [(time.process_time() - cpu) / EMPTY_REQUESTS]}
        for _ in range(cycles):
            for how in ("whole", "cursor"):
                cpu = time.process_time()
                await asyncio.gather(*(window(tid, bearer, newest.get(tid) if how == "cursor" else None)
                                       for tid, bearer in zip(cloud["tenant_ids"], tokens)))
                spent[how].append(time.process_time() - cpu)
        return spent


Cycle = tuple[float, float, int]  # CPU s, wall s, alerts queued


async def forwarder_cycles(configs: list[Any], state: Path, cycles: int) -> tuple[int, list[list[Cycle]]]:
    """The first cycle's alerts queued; then, for each config in turn (one Forwarder each, on
    the same state, its polls as the daemon makes them), its idle cycles."""
    store = SQLiteStore(state)
    try:
        first = 0
        measured = []
        for n, config in enumerate(configs):
            async with Forwarder(config, store) as forwarder:
                forwarder.partial_reads = True
                if n == 0:
                    first = sum(r.queued for r in await forwarder.run_once())
                measured.append(await idle_cycles(forwarder, cycles))
        return first, measured
    finally:
        store.close()


PROFILE: list[Any] = []  # --profile: a pyinstrument Profiler over the idle polls from the cursor


async def idle_cycles(forwarder: Forwarder, cycles: int) -> list[Cycle]:
            idle = []
            profiler = PROFILE.pop() if PROFILE else None
            if profiler is not None:
                profiler.start()
            for _ in range(cycles):
                cpu, wall = time.process_time(), time.perf_counter()
                results = await forwarder.run_once()
                idle.append((time.process_time() - cpu, time.perf_counter() - wall, sum(r.queued for r in results)))
                failed = [r for r in results if r.error]
                if failed:
                    raise SystemExit(f"{len(failed)} tenants failed, e.g. {failed[0].label}: {failed[0].error}")
            if profiler is not None:
                profiler.stop()
                print(profiler.output_text(unicode=False, color=False, show_all=True))
            return idle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--window", type=int, default=50, help="alerts each tenant holds in its overlap window")
    parser.add_argument("--cycles", type=int, default=3, help="idle cycles measured")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--profile", action="store_true", help="pyinstrument over the idle polls from the cursor "
                        "(their figures then include the profiler's cost)")
    args = parser.parse_args()
    if args.profile:
        from pyinstrument import Profiler

        PROFILE.append(Profiler(interval=0.0005, async_mode="disabled"))
    step = 14 * 60 / args.window  # seconds between two alerts of a tenant: all within the overlap
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "out").mkdir()
        proc, cloud = start_cloud(work, args.tenants, args.window, 0.0, step)
        try:
            print(f"idle cycles: {args.tenants} tenants, {args.window} alerts each in the overlap window, "
                  f"concurrency {args.concurrency}", flush=True)
            bare = asyncio.run(bare_cycles(cloud, args.cycles, args.concurrency))
            configs = [config_for(cloud, work, args.concurrency, poll_interval="10s", overlap_every=every)
                       for every in ("5m", "0s")]
            first, (partial, reread) = asyncio.run(forwarder_cycles(configs, work / "state.db", args.cycles))
        finally:
            proc.terminate()
            proc.wait()
    expected = args.tenants * args.window
    queued = [n for _, _, n in partial + reread]
    if first != expected or any(queued):
        raise SystemExit(f"expected {expected} alerts in the first cycle and none after; got {first}, then {queued}")
    ms = {"partial": [cpu / args.tenants * 1000 for cpu, _, _ in partial],
          "reread": [cpu / args.tenants * 1000 for cpu, _, _ in reread],
          "bare": [cpu / args.tenants * 1000 for cpu in bare["whole"]],
          "bare_cursor": [cpu / args.tenants * 1000 for cpu in bare["cursor"]]}
    labels = {"partial": "idle poll, from the cursor", "bare_cursor": "bare loop, same stretch",
              "reread": "idle poll, overlap re-read", "bare": "bare loop, whole window"}
    for name, label in labels.items():
        print(f"  {label:<28} " + ", ".join(f"{v:.3f}" for v in ms[name]) + " ms CPU a tenant")
    median = {name: statistics.median(values) for name, values in ms.items()}
    polls = 300 // 10  # overlap_every / poll_interval
    mean = (median["partial"] * (polls - 1) + median["reread"]) / polls
    print(f"idle poll from the cursor: {median['partial']:.3f} ms CPU a tenant (median of {args.cycles}; target "
          f"<= 1 ms), {median['partial'] / median['bare_cursor']:.2f}x the bare loop's same request "
          f"({median['bare_cursor']:.3f} ms)")
    print(f"one bare GET with an empty answer, {EMPTY_REQUESTS} in a row on one connection: "
          f"{bare['empty'][0] * 1000:.3f} ms CPU each (the least a poll can cost)")
    print(f"idle overlap re-read: {median['reread']:.3f} ms, {median['reread'] / median['bare']:.2f}x the bare loop's "
          f"({median['bare']:.3f} ms); at 10 s polls and a re-read every 5 min: {mean:.3f} ms a poll")

if __name__ == "__main__":
    main()
