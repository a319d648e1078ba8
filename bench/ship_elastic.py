"""Elasticsearch shipping benchmark: the outbox into an Elasticsearch peer, against the client's own
`helpers.async_streaming_bulk` loop sending the same documents to the same kind of peer (the
reference).

    .venv/bin/python bench/ship_elastic.py [--events 50000] [--repeat 3] [--batch 500] [--profile]

Corpus: --events distinct alerts in the Elasticsearch sink's default format, ecs
(`mappings.ecs.encode`), made as bench/ship_syslog.py makes its corpus: up to 5,000 generated
alerts (tests/peers/alert_factory.py), each varied into several versions, normalised; one
tenant, so one data stream (`logs-defender_forwarder.alert-contoso`).

Every measurement has a fresh peer in its own process (`python -m tests.peers.es_peer --count-only
--api-key K`, so it does not share this process's GIL): HTTPS with the peer's own CA, verified,
as in production, and an API key. Two senders, interleaved per round (which goes first
alternates) so that drift of this noisy machine hits them alike:
  forwarder  a fresh SQLite state with the corpus in the outbox of sink "elastic" (filled
             untimed), drained by `SinkWorker(ElasticsearchConnector(...)).drain()` until the
             outbox is empty; batch_max_events --batch, every other setting the sink's default.
  reference  `AsyncElasticsearch(hosts=[url], api_key=..., ca_certs=...)` and
             `helpers.async_streaming_bulk(client, actions, chunk_size=--batch,
             raise_on_error=False, max_retries=0)` over actions carrying the SAME documents:
             {"_op_type": "create", "_index": <the connector's data stream>, "_id":
             document_id(version_key), "_source": <the ecs document>}. The documents are given as
             a program holds them, parsed dicts (parsed untimed); the helper serialises them itself
             with the client's serializer, which is its own work. Every result is consumed and
             must be ok.
Before measuring, every event's action and document are checked to be the same for both: the
connector's action line parses to the reference's action, and the client's serialisation of the
reference's `_source` parses back to the connector's document.

The clock runs from before the client exists (client set-up and TLS handshake included, for both)
to the last answer. After each run the peer's GET /_peer/stats must show --events documents;
the forwarder's outbox must be empty with nothing dead and no retry. The number of _bulk
requests the peer served is shown; it should be ceil(events / batch) for both (more means the
HTTP client re-sent a request the peer hung up on).

It prints events/s (best, median, worst), wall and CPU seconds (this process, and the peer
process) per sender, then the ratio forwarder / reference of the medians (of the bests in
brackets) and the issue's verdict: at least 80% of the reference. --profile adds one run of each
sender under cProfile and prints the top functions by own time.
"""
from __future__ import annotations

import asyncio
import base64
import cProfile
import math
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' peers are not installed

from bench.ship_syslog import cpu_seconds, encoded_events
from bench.shipping import (
    TIMING_HEADER,
    RunOne,
    drain_timed,
    interleaved,
    profiled,
    shipping_arguments,
    timing_columns,
    verdict,
)
from bench.standalone import standalone_peer
from connectors.base import Event
from connectors.elasticsearch import ElasticsearchConnector, ElasticsearchSinkConfig, document_id, namespace
from core.delivery import SinkWorker
from core.model.schema import EventMeta
from core.state.sqlite import SQLiteStore
from mappings.ecs import encode as encode_ecs

SINK = "elastic"
API_KEY_ENV = "SHIP_ELASTIC_API_KEY"
API_KEY = base64.b64encode(b"ship-elastic:9f2c4e7a1b3d5f60a8c9e1d2b3f4a5c6").decode()  # ES's id:key, encoded
TARGET = 0.80  # the issue: at least 80% of the reference
DEFAULTS = ElasticsearchSinkConfig.model_fields


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    metas: list[EventMeta]
    bodies: list[bytes]  # format ecs, all distinct
    streams: list[str]  # the data stream each event goes to, as the connector names it
    ids: list[str]  # document_id(version_key)


def build_corpus(events: int) -> Corpus:
    metas, bodies = encoded_events(events, encode_ecs)
    template = DEFAULTS["data_stream"].default
    streams = [template.replace("{tenant}", namespace(meta.tenant_label)) for meta in metas]
    ids = [document_id(meta.version_key) for meta in metas]
    if len(set(ids)) != events:
        raise SystemExit(f"corpus: only {len(set(ids))} distinct _ids of {events}")
    return Corpus(metas, bodies, streams, ids)


def reference_actions(corpus: Corpus) -> list[dict[str, Any]]:
    """The helper's input as a program holds it: actions with the documents as parsed dicts."""
    return [{"_op_type": "create", "_index": stream, "_id": _id, "_source": orjson.loads(body)}
            for stream, _id, body in zip(corpus.streams, corpus.ids, corpus.bodies, strict=True)]


def check_same_documents(corpus: Corpus, batch: int) -> int:
    """Untimed proof that both senders send the same thing: per event, the connector's action
    line is the reference's action and the client's serialisation of the reference's document
    parses to the connector's document. Returns the bytes of the reference's bulk lines."""
    from elasticsearch import AsyncElasticsearch
    from elasticsearch.helpers import expand_action

    config = ElasticsearchSinkConfig(hosts=["https://127.0.0.1:9200"], api_key=f"env:{API_KEY_ENV}",
                                     batch_max_events=batch)
    connector = ElasticsearchConnector(SINK, config)
    client = AsyncElasticsearch(hosts=["https://127.0.0.1:9200"], api_key=API_KEY)  # never connects
    serializer = client.transport.serializers.get_serializer("application/json")
    reference_bytes = 0
    for meta, body, stream, _id in zip(corpus.metas, corpus.bodies, corpus.streams, corpus.ids, strict=True):
        action_line, document = connector._operation(Event(0, meta, body))
        action, source = expand_action({"_op_type": "create", "_index": stream, "_id": _id,
                                        "_source": orjson.loads(body)})
        if orjson.loads(action_line) != action or action != {"create": {"_index": stream, "_id": _id}}:
            raise SystemExit(f"not the same action: connector {action_line!r}, reference {action!r}")
        sent = serializer.dumps(source)
        if orjson.loads(sent) != orjson.loads(document) or document != body:
            raise SystemExit(f"not the same document for {_id}")
        reference_bytes += len(serializer.dumps(action)) + len(sent) + 2
    return reference_bytes


def describe(corpus: Corpus, batch: int, reference_bytes: int) -> str:
    sizes = [len(body) for body in corpus.bodies]
    connector_bytes = sum(len(b'{"create":{"_index":"","_id":""}}') + len(s) + len(i) + len(body) + 2
                          for s, i, body in zip(corpus.streams, corpus.ids, corpus.bodies, strict=True))
    return (f"corpus: {len(sizes):,} distinct ECS alerts, {sum(sizes) / 1e6:.1f} MB, {min(sizes):,}-{max(sizes):,} "
            f"bytes (median {statistics.median(sizes):,.0f}), into {len(set(corpus.streams))} data stream(s) "
            f"({corpus.streams[0]}); as _bulk bodies: forwarder {connector_bytes / 1e6:.1f} MB, reference "
            f"{reference_bytes / 1e6:.1f} MB, in {math.ceil(len(sizes) / batch):,} requests of {batch}")


# --------------------------------------------------------------------------- the peer


@dataclass
class Peer:
    url: str
    ca_file: Path
    pid: int

    def stats(self) -> dict[str, int]:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        reply = httpx.get(f"{self.url}/_peer/stats", verify=context, timeout=30)
        reply.raise_for_status()
        return reply.json()


@contextmanager
def peer_process(work: Path) -> Iterator[Peer]:
    with standalone_peer("tests.peers.es_peer", ["--port", "0", "--count-only", "--api-key", API_KEY], work, "Elasticsearch peer") as (info, pid):
        yield Peer(info["url"], Path(info["ca_file"]), pid)


def peer_requests(peer: Peer, sender: str, events: int) -> int:
    """The peer's count of _bulk requests, after checking it stored every document."""
    stats = peer.stats()
    if stats.get("documents") != events:
        raise SystemExit(f"{sender}: the peer holds {stats}, expected {events} documents")
    return stats["requests"]


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seconds: float
    client_cpu: float
    peer_cpu: float
    requests: int = 0


def timeout_for(events: int) -> float:
    return 60 + events / 500  # far beyond any healthy run (500 events/s)


def forwarder_run(corpus: Corpus, batch: int, work: Path, profiler: cProfile.Profile | None = None) -> Run:
    events = len(corpus.bodies)
    store = SQLiteStore(work / "state.db")
    try:
        store.outbox_append(SINK, zip(corpus.metas, corpus.bodies, strict=True))  # untimed: the poller's work
        with peer_process(work) as peer:
            config = ElasticsearchSinkConfig(hosts=[peer.url], api_key=f"env:{API_KEY_ENV}",
                                             ca_file=str(peer.ca_file), batch_max_events=batch)
            worker = SinkWorker(ElasticsearchConnector(SINK, config), store)
            run = Run(*asyncio.run(drain_timed(worker, peer.pid, events, profiler, timeout_for(events))))
            left = store.outbox_depth(SINK)
            if left or worker.stats.dead or worker.stats.retries or worker.stats.delivered != events:
                raise SystemExit(f"forwarder: {worker.stats.delivered} delivered, {left} left in the outbox, "
                                 f"{worker.stats.dead} dead, {worker.stats.retries} retries")
            run.requests = peer_requests(peer, "forwarder", events)
            return run
    finally:
        store.close()


def reference_run(corpus: Corpus, batch: int, work: Path, profiler: cProfile.Profile | None = None) -> Run:
    events = len(corpus.bodies)
    actions = reference_actions(corpus)  # untimed: the program's documents, as dicts
    try:
        with peer_process(work) as peer:
            run = asyncio.run(bulk_loop(peer, actions, batch, timeout_for(events), profiler))
            run.requests = peer_requests(peer, "reference", events)
            return run
    finally:
        del actions


async def bulk_loop(peer: Peer, actions: list[dict[str, Any]], batch: int, timeout: float,
                    profiler: cProfile.Profile | None) -> Run:
    """The client's own bulk loop, as its documentation shows it, with its item retries off (the
    forwarder retries nothing in a healthy run either) and no exception on a failed item: every
    result is looked at here."""
    from elasticsearch import AsyncElasticsearch
    from elasticsearch.helpers import async_streaming_bulk

    peer_cpu = cpu_seconds(peer.pid)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    client = AsyncElasticsearch(hosts=[peer.url], api_key=API_KEY, ca_certs=str(peer.ca_file))
    try:
        ok_count, failed = 0, []
        async with asyncio.timeout(timeout):
            async for ok, item in async_streaming_bulk(client, actions, chunk_size=batch, raise_on_error=False,
                                                       max_retries=0):
                if ok:
                    ok_count += 1
                elif len(failed) < 3:
                    failed.append(item)
        if profiler is not None:
            profiler.disable()
        run = Run(time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(peer.pid) - peer_cpu)
    finally:
        await client.close()
    if ok_count != len(actions):
        raise SystemExit(f"reference: {ok_count} of {len(actions)} ok; failed items, e.g. {failed}")
    return run


# --------------------------------------------------------------------------- the whole run


def run_one(corpus: Corpus, batch: int) -> RunOne:
    def one(sender: str, work: Path, profiler: cProfile.Profile | None) -> Run:
        return (forwarder_run if sender == "forwarder" else reference_run)(corpus, batch, work, profiler)
    return one  # type: ignore[return-value]


def report(runs: dict[str, list[Run]], events: int, batch: int) -> None:
    print(f"\n{TIMING_HEADER}requests")
    for sender, sender_runs in runs.items():
        requests = sorted({run.requests for run in sender_runs})
        print(f"{sender:<11}{timing_columns(sender_runs, events)}{'/'.join(map(str, requests))}")  # type: ignore[arg-type]
    print("(seconds as lowest-highest of the rounds, over the timed span; client CPU: this process, "
          "peer CPU: the peer process)")
    expected = math.ceil(events / batch)
    resent = {sender: [run.requests for run in sender_runs if run.requests != expected]
              for sender, sender_runs in runs.items()}
    for sender, counts in resent.items():
        if counts:
            print(f"note: {sender}: {len(counts)} run(s) served {counts} _bulk requests, not {expected}: "
                  "the HTTP client re-sent requests (the documents were stored once: create by _id)")
    verdict(runs, events, TARGET)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    args = shipping_arguments(__doc__, argv, events=50_000, batch=DEFAULTS["batch_max_events"].default,
                              batch_help="the sink's batch_max_events and the helper's chunk_size (default: the sink's)", tenants=False)
    os.environ[API_KEY_ENV] = API_KEY  # the sink config references it, as a deployment's would

    started = time.perf_counter()
    corpus = build_corpus(args.events)
    reference_bytes = check_same_documents(corpus, args.batch)
    print(f"{describe(corpus, args.batch, reference_bytes)}; built and checked in "
          f"{time.perf_counter() - started:.1f} s")
    print(f"batch_max_events = chunk_size = {args.batch}, every other sink setting its default (format ecs); "
          f"{args.repeat} round(s), the senders interleaved; HTTPS (verified, the peer's CA) with an API key, "
          f"a fresh peer process per run", flush=True)
    with tempfile.TemporaryDirectory(prefix="ship-elastic-") as tmp:
        one = run_one(corpus, args.batch)
        runs = interleaved(args.repeat, args.events, Path(tmp), one,
                           lambda run: f"{run.requests} requests")  # type: ignore[attr-defined]
        report(runs, args.events, args.batch)  # type: ignore[arg-type]
        if args.profile:
            profiled(Path(tmp), args.events, one, args.profile_lines)


if __name__ == "__main__":
    main()
