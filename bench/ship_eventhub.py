"""Event Hubs shipping benchmark: the outbox into an Event Hubs peer, against a bare
`azure-eventhub` loop sending the same events to the same kind of peer (the reference).

    .venv/bin/python bench/ship_eventhub.py [--events 50000] [--repeat 3] [--batch 500] [--tenants 10]
                                            [--profile]

Corpus: --events distinct alerts in the Event Hubs sink's default format, ocsf
(`mappings.ocsf.encode`), envelope single (the alert as it is), made as bench/ship_syslog.py
makes its corpus, but spread over --tenants customers so that partition keys vary as in
production: per tenant up to 5,000 / --tenants generated alerts (tests/peers/alert_factory.py,
the tenant's own id inside), each varied into several versions, normalised under that tenant.
Event i belongs to tenant i mod --tenants: the tenants are polled together (Forwarder.poll_all
gathers them), so in a steady state their few new alerts each land interleaved in the outbox, and
every batch of --batch events holds every tenant (its worst case for grouping: one send_batch per
tenant per batch). Every event is marked first_sight = True, as the pipeline marks it (each
version carries its own alert id, never seen before), so every finding is OCSF's Create.

Every measurement has a fresh peer in its own process (`python -m tests.peers.eventhub_peer
--port 0 --count-only`, so it does not share this process's GIL): AMQP over plain TCP (the
connection string's UseDevelopmentEmulator=true, the only way the SDK talks to a local peer),
a SAS token from the connection string, 1 MiB maximum message size (Standard). Two senders,
interleaved per round (which goes first alternates) so that drift of this noisy machine hits
them alike:
  forwarder  a fresh SQLite state with the corpus in the outbox of sink "hub" (filled untimed),
             drained by `SinkWorker(EventHubConnector(...)).drain()` until the outbox is empty;
             connection_string "env:..." (a secret reference, as a deployment's), batch_max_events
             --batch, every other setting the sink's default (retry_total 3, partition key the
             tenant id, message_id the version key, application properties).
  reference  `EventHubProducerClient.from_connection_string(..., retry_total=3)` and the minimal
             loop a program using the SDK directly writes, over the SAME events in the same order,
             grouped as the connector groups them: per --batch events, per partition key
             `create_batch(partition_key=key)`, then per event `EventData(body)` with the same
             message_id, content_type and application properties, `add` until the batch is full,
             `send_batch`, a new batch. The program's data (bodies, keys, ids, property dicts) is
             made and grouped untimed: the reference times only the SDK's own work.
Before measuring, every event is checked to be the same for both: the connector's grouping of
each batch (`_by_partition_key`) is the reference's, and the connector's EventData
(`_event_data`) has the reference's body, message_id, content_type and properties.

The clock runs from before the producer exists (connection, SASL, $cbs token and link attach
included, for both) to the last send_batch's answer; closing the producer is outside it. After
each run the peer's totals must show --events events and nothing rejected; the forwarder's
outbox must be empty with nothing dead and no retry. The peer's deliveries (send_batch calls) and
bytes are shown: they must be the same for both senders (the same batches on the wire).

It prints events/s (best, median, worst), wall and CPU seconds (this process, and the peer
process) per sender, then the ratio forwarder / reference of the medians (of the bests in
brackets) and the issue's verdict: at least 80% of the reference. --profile adds one run of each
sender under cProfile and prints the top functions by own time.
"""
from __future__ import annotations

import asyncio
import cProfile
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' peers are not installed

from bench.ship_syslog import cpu_seconds
from bench.shipping import (
    TIMING_HEADER,
    RunOne,
    drain_timed,
    interleaved,
    profiled,
    shipping_arguments,
    tenant_alerts,
    timeout_for,
    timing_columns,
    verdict,
)
from bench.standalone import standalone_peer
from connectors.base import Event
from connectors.eventhub import EventHubConnector, EventHubSinkConfig
from core.delivery import SinkWorker
from core.model.schema import SCHEMA_VERSION, EventMeta, TenantRef
from core.state.sqlite import SQLiteStore
from mappings.ocsf import encode as encode_ocsf

SINK = "hub"
CONNECTION_ENV = "SHIP_EVENTHUB_CONNECTION"
TARGET = 0.80  # the issue: at least 80% of the reference
DEFAULTS = EventHubSinkConfig.model_fields
CONTENT_TYPE = "application/json"  # what the connector sets for a JSON format, envelope single


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    tenants: list[TenantRef]
    metas: list[EventMeta]
    bodies: list[bytes]  # format ocsf, all distinct


def build_corpus(events: int, tenant_count: int) -> Corpus:
    tenants, alerts = tenant_alerts(events, tenant_count, "ship-eventhub")
    metas = [EventMeta.of(alert) for alert in alerts]
    bodies = [encode_ocsf(alert) for alert in alerts]
    if len(set(bodies)) != events:
        raise SystemExit(f"corpus: only {len(set(bodies))} distinct bodies of {events}")
    if len({meta.version_key for meta in metas}) != events:
        raise SystemExit("corpus: version keys (message ids) are not distinct")
    return Corpus(tenants, metas, bodies)


# One event as the reference program holds it: body, message_id, application properties.
RefEvent = tuple[bytes, str, dict[str, Any]]
# The reference's sends: per outbox batch, per partition key (first-seen order), its events.
RefBatches = list[list[tuple[str, list[RefEvent]]]]


def reference_batches(corpus: Corpus, batch: int) -> RefBatches:
    """The reference program's data, grouped as the connector groups each batch of the outbox:
    per `batch` events, per partition key (the tenant id) in first-seen order."""
    batches: RefBatches = []
    for start in range(0, len(corpus.bodies), batch):
        groups: dict[str, list[RefEvent]] = {}
        for meta, body in zip(corpus.metas[start:start + batch], corpus.bodies[start:start + batch], strict=True):
            properties = {"tenant_id": meta.tenant_id, "customer": meta.tenant_label, "kind": meta.kind,
                          "alert_id": meta.alert_id,
                          "severity": meta.severity.name, "format": "ocsf", "schema_version": SCHEMA_VERSION}
            groups.setdefault(meta.tenant_id, []).append((body, meta.version_key, properties))
        batches.append(list(groups.items()))
    return batches


def check_same_events(corpus: Corpus, batch: int, batches: RefBatches) -> None:
    """Untimed proof that both senders send the same thing: per outbox batch the connector's
    partition-key groups are the reference's, and per event the connector's EventData carries
    the reference's body, message_id, content_type and application properties."""
    from azure.eventhub import EventData

    config = EventHubSinkConfig(connection_string=f"env:{CONNECTION_ENV}", batch_max_events=batch)
    connector = EventHubConnector(SINK, config)
    if config.format != "ocsf" or config.envelope != "single" or config.partition_key != "{tenant_id}":
        raise SystemExit(f"the sink's defaults changed: format {config.format}, envelope {config.envelope}, "
                         f"partition_key {config.partition_key}; update this benchmark")
    events = [Event(index, meta, body) for index, (meta, body) in enumerate(zip(corpus.metas, corpus.bodies,
                                                                                strict=True))]
    for number, start in enumerate(range(0, len(events), batch)):
        chunk = events[start:start + batch]
        groups = connector._by_partition_key(chunk)
        reference = batches[number]
        if list(groups) != [key for key, _ in reference]:
            raise SystemExit(f"batch {number}: the connector's partition keys {list(groups)} are not the "
                             f"reference's {[key for key, _ in reference]}")
        for (key, indexes), (_, ref_events) in zip(groups.items(), reference, strict=True):
            if len(indexes) != len(ref_events):
                raise SystemExit(f"batch {number}, key {key}: {len(indexes)} events, reference {len(ref_events)}")
            for index, (body, message_id, properties) in zip(indexes, ref_events, strict=True):
                data = connector._event_data(chunk[index], EventData)
                ours = (data.body_as_str(), data.message_id, data.content_type, data.properties)
                theirs = (body.decode(), message_id, CONTENT_TYPE, properties)
                if ours != theirs:
                    raise SystemExit(f"not the same event for {message_id}: connector {ours[1:]}, "
                                     f"reference {theirs[1:]}")


def describe(corpus: Corpus, batch: int, batches: RefBatches) -> str:
    sizes = [len(body) for body in corpus.bodies]
    groups = sum(len(groups) for groups in batches)
    return (f"corpus: {len(sizes):,} distinct OCSF alerts, {sum(sizes) / 1e6:.1f} MB, {min(sizes):,}-{max(sizes):,} "
            f"bytes (median {statistics.median(sizes):,.0f}), over {len(corpus.tenants)} tenant(s) (partition keys) "
            f"interleaved; {len(batches):,} batches of {batch} -> {groups:,} partition-key groups "
            f"(~{len(sizes) / groups:,.0f} events each)")


# --------------------------------------------------------------------------- the peer


@dataclass
class Peer:
    connection_string: str
    stats_port: int
    pid: int

    def stats(self) -> dict[str, int]:
        with socket.create_connection(("127.0.0.1", self.stats_port), timeout=30) as sock:
            return json.loads(sock.makefile().readline())


@contextmanager
def peer_process(work: Path) -> Iterator[Peer]:
    with standalone_peer("tests.peers.eventhub_peer", ["--port", "0", "--count-only"], work, "Event Hubs peer") as (info, pid):
        yield Peer(info["connection_string"], info["stats_port"], pid)


def peer_totals(peer: Peer, sender: str, events: int) -> dict[str, int]:
    """The peer's totals, after checking it counted every event and refused none."""
    stats = peer.stats()
    if stats.get("events") != events or stats.get("rejected"):
        raise SystemExit(f"{sender}: the peer counted {stats}, expected {events} events and nothing rejected")
    return stats


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seconds: float
    client_cpu: float
    peer_cpu: float
    deliveries: int = 0
    bytes: int = 0
    connections: int = 0


def forwarder_run(corpus: Corpus, batch: int, work: Path, profiler: cProfile.Profile | None = None) -> Run:
    events = len(corpus.bodies)
    store = SQLiteStore(work / "state.db")
    try:
        store.outbox_append(SINK, zip(corpus.metas, corpus.bodies, strict=True))  # untimed: the poller's work
        with peer_process(work) as peer:
            os.environ[CONNECTION_ENV] = peer.connection_string  # the sink config references it
            config = EventHubSinkConfig(connection_string=f"env:{CONNECTION_ENV}", batch_max_events=batch)
            worker = SinkWorker(EventHubConnector(SINK, config), store)
            run = Run(*asyncio.run(drain_timed(worker, peer.pid, events, profiler)))
            left = store.outbox_depth(SINK)
            if left or worker.stats.dead or worker.stats.retries or worker.stats.delivered != events:
                raise SystemExit(f"forwarder: {worker.stats.delivered} delivered, {left} left in the outbox, "
                                 f"{worker.stats.dead} dead, {worker.stats.retries} retries")
            return with_totals(run, peer_totals(peer, "forwarder", events))
    finally:
        store.close()


def reference_run(batches: RefBatches, work: Path, profiler: cProfile.Profile | None = None) -> Run:
    events = sum(len(group) for groups in batches for _, group in groups)
    with peer_process(work) as peer:
        run = asyncio.run(sdk_loop(peer, batches, timeout_for(events), profiler))
        return with_totals(run, peer_totals(peer, "reference", events))


async def sdk_loop(peer: Peer, batches: RefBatches, timeout: float, profiler: cProfile.Profile | None) -> Run:
    """The minimal loop of a program using the SDK directly: per key, fill a batch, send it when
    the next event does not fit, send the rest."""
    from azure.eventhub import EventData
    from azure.eventhub.aio import EventHubProducerClient

    peer_cpu = cpu_seconds(peer.pid)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    producer = EventHubProducerClient.from_connection_string(peer.connection_string,
                                                             retry_total=DEFAULTS["retry_total"].default)
    try:
        async with asyncio.timeout(timeout):
            for groups in batches:
                for key, group in groups:
                    data_batch = await producer.create_batch(partition_key=key)
                    for body, message_id, properties in group:
                        data = EventData(body)
                        data.message_id = message_id
                        data.content_type = CONTENT_TYPE
                        data.properties = properties
                        try:
                            data_batch.add(data)
                        except ValueError:
                            await producer.send_batch(data_batch)
                            data_batch = await producer.create_batch(partition_key=key)
                            data_batch.add(data)
                    await producer.send_batch(data_batch)
        if profiler is not None:
            profiler.disable()
        return Run(time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(peer.pid) - peer_cpu)
    finally:
        if profiler is not None:
            profiler.disable()
        await producer.close()


def with_totals(run: Run, stats: dict[str, int]) -> Run:
    run.deliveries, run.bytes, run.connections = stats["deliveries"], stats["bytes"], stats["connections"]
    return run


# --------------------------------------------------------------------------- the whole run


def run_one(corpus: Corpus, batches: RefBatches, batch: int) -> RunOne:
    def one(sender: str, work: Path, profiler: cProfile.Profile | None) -> Run:
        if sender == "forwarder":
            return forwarder_run(corpus, batch, work, profiler)
        return reference_run(batches, work, profiler)
    return one  # type: ignore[return-value]


def report(runs: dict[str, list[Run]], events: int) -> None:
    print(f"\n{TIMING_HEADER}{'deliveries':<12}{'MB':<8}connections")
    for sender, sender_runs in runs.items():
        deliveries = "/".join(map(str, sorted({run.deliveries for run in sender_runs})))
        megabytes = "/".join(f"{b / 1e6:.2f}" for b in sorted({run.bytes for run in sender_runs}))
        connections = "/".join(map(str, sorted({run.connections for run in sender_runs})))
        print(f"{sender:<11}{timing_columns(sender_runs, events)}{deliveries:<12}{megabytes:<8}{connections}")
    print("(seconds as lowest-highest of the rounds, over the timed span; client CPU: this process, "
          "peer CPU: the peer process; deliveries: send_batch calls the peer accepted; MB: their size on the wire)")
    shapes = {(run.deliveries, run.bytes) for sender_runs in runs.values() for run in sender_runs}
    if len(shapes) != 1:
        print(f"note: the senders' deliveries/bytes differ {sorted(shapes)}: not the same batches on the wire")
    verdict(runs, events, TARGET)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    args = shipping_arguments(__doc__, argv, events=50_000, batch=DEFAULTS["batch_max_events"].default,
                              batch_help="the sink's batch_max_events, and the reference's grouping (default: the sink's)")
    # The sink config references it, as a deployment's would; each run sets its peer's string.
    os.environ[CONNECTION_ENV] = "Endpoint=sb://127.0.0.1:1/;SharedAccessKeyName=k;SharedAccessKey=v;EntityPath=h"

    started = time.perf_counter()
    corpus = build_corpus(args.events, args.tenants)
    batches = reference_batches(corpus, args.batch)
    check_same_events(corpus, args.batch, batches)
    print(f"{describe(corpus, args.batch, batches)}; built and checked in {time.perf_counter() - started:.1f} s")
    print(f"batch_max_events {args.batch}, every other sink setting its default (format ocsf, envelope single, "
          f"partition key the tenant id, retry_total {DEFAULTS['retry_total'].default}); {args.repeat} round(s), "
          f"the senders interleaved; AMQP over loopback TCP with a SAS token, a fresh peer process per run",
          flush=True)
    with tempfile.TemporaryDirectory(prefix="ship-eventhub-") as tmp:
        one = run_one(corpus, batches, args.batch)
        runs = interleaved(args.repeat, args.events, Path(tmp), one,
                           lambda run: f"{run.deliveries} deliveries")  # type: ignore[attr-defined]
        report(runs, args.events)  # type: ignore[arg-type]
        if args.profile:
            profiled(Path(tmp), args.events, one, args.profile_lines)


if __name__ == "__main__":
    main()
