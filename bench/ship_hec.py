"""Splunk HEC shipping benchmark: the outbox into a HEC peer, against a bare httpx client sending
the same requests to the same kind of peer (the ceiling).

    .venv/bin/python bench/ship_hec.py [--events 50000] [--repeat 3] [--batch 500] [--level 6]
                                       [--newline] [--profile]

Corpus: --events distinct alerts in the HEC sink's default format, raw (`mappings.raw.encode`),
made as bench/ship_syslog.py makes its corpus: up to 5,000 generated alerts
(tests/peers/alert_factory.py), each varied into several versions, normalised.

Every measurement has a fresh peer in its own process (`python -m tests.peers.hec_peer
--count-only`, so it does not share this process's GIL): HTTPS with the peer's own CA, verified,
as in production; `--ack` when the mode acknowledges (the peer's ackIds read true at once).
Four modes, gzip (level --level, default the connector's) on/off x indexer acknowledgement
on/off, each measured by two senders, all interleaved per round so that drift of this noisy
machine hits them alike:
  forwarder  a fresh SQLite state with the corpus in the outbox of sink "splunk" (filled
             untimed), drained by `SinkWorker(SplunkHecConnector(...)).drain()` until the outbox
             is empty; batch_max_events --batch, every other setting the connector's default,
             except ack_poll_interval 0.05s in the ack modes (the connector asks for a batch's
             acks at once, then after 10 ms, the pause doubling up to that interval).
  ceiling    one `httpx.AsyncClient` (keep-alive, the same TLS verification and headers) sending the
             SAME requests: the connector's own envelopes (`_EnvelopeWriter`, built once, untimed),
             grouped per batch of --batch events into requests as the connector groups them
             (`_requests`, batch_max_bytes). Per request, timed: join (as the connector joins,
             with nothing between envelopes; --newline joins with "\\n" as a plain HEC client
             did), gzip at the same level when the mode gzips, POST, check HTTP 200 and code 0;
             in ack modes then ask /services/collector/ack for that ackId at once, again and
             again, until it is true (the least an acknowledging client can do).
The clock runs from the first batch (client set-up and TLS handshake included, for both) to the
last answer. After each run the peer's GET /stats must show --events events and the same number
of requests for both senders (proof that they sent the same batches); the forwarder's outbox must
be empty with nothing dead and no retry.

It prints events/s (best, median, worst), wall and CPU seconds (this process, and the peer
process) per mode and sender, then per mode the ratio forwarder / ceiling of the medians and the
issue's verdict: at least 70% of the ceiling. --profile adds one forwarder run (gzip on, ack off)
under cProfile and prints its top 15 functions by own time.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gzip
import io
import logging
import os
import pstats
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' peers are not installed

from bench.ship_syslog import cpu_seconds, encoded_events
from bench.standalone import standalone_peer
from connectors.base import Event
from connectors.sizes import RequestLimit
from connectors.splunk_hec import (
    ACK_PATH,
    EVENT_PATH,
    SplunkHecConnector,
    SplunkHecSinkConfig,
    _EnvelopeWriter,
)
from core.delivery import SinkWorker
from core.model.schema import EventMeta
from core.state.sqlite import SQLiteStore
from mappings.raw import encode as encode_raw

SINK = "splunk"
TOKEN_ENV = "SHIP_HEC_TOKEN"
TOKEN = "11111111-2222-4333-8444-555555555555"
TARGET = 0.70  # the issue: at least 70% of the ceiling
ACK_POLL_INTERVAL = "0.05s"
DEFAULTS = SplunkHecSinkConfig.model_fields


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    metas: list[EventMeta]
    bodies: list[bytes]  # format raw, all distinct


def build_corpus(events: int) -> Corpus:
    metas, bodies = encoded_events(events, encode_raw)
    return Corpus(metas, bodies)


def ceiling_requests(corpus: Corpus, batch: int) -> list[list[bytes]]:
    """The envelopes of each request the connector sends, in order: batches of `batch` events as
    the worker takes them from the outbox (in id order), each split as `send` splits it."""
    config = SplunkHecSinkConfig(url="https://127.0.0.1:8088", token=f"env:{TOKEN_ENV}", batch_max_events=batch)
    writer = _EnvelopeWriter(config)
    envelopes = [writer.write(Event(0, meta, body)) for meta, body in zip(corpus.metas, corpus.bodies, strict=True)]
    limit = RequestLimit(config.request_limit, SINK, "Splunk", logging.getLogger("bench"))  # never refused here
    requests = []
    for start in range(0, len(envelopes), batch):
        chunk = envelopes[start:start + batch]
        requests.extend([chunk[i] for i in part]
                        for part in limit.requests(range(len(chunk)), [len(envelope) for envelope in chunk]))
    return requests


def describe(corpus: Corpus, requests: list[list[bytes]]) -> str:
    sizes = [len(body) for body in corpus.bodies]
    envelope_bytes = sum(len(e) for request in requests for e in request)
    return (f"corpus: {len(sizes):,} distinct raw alerts, {sum(sizes) / 1e6:.1f} MB, {min(sizes):,}-{max(sizes):,} "
            f"bytes (median {statistics.median(sizes):,.0f}); as HEC envelopes {envelope_bytes / 1e6:.1f} MB "
            f"in {len(requests):,} requests")


# --------------------------------------------------------------------------- the peer


@dataclass
class Peer:
    url: str
    ca_file: Path
    pid: int

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def stats(self) -> dict[str, int]:
        reply = httpx.get(f"{self.url}/stats", verify=self.ssl_context(), timeout=30)
        reply.raise_for_status()
        return reply.json()


@contextmanager
def peer_process(work: Path, ack: bool) -> Iterator[Peer]:
    with standalone_peer("tests.peers.hec_peer", ["--port", "0", "--token", TOKEN, "--count-only", *(["--ack"] if ack else [])], work, "HEC peer") as (info, pid):
        yield Peer(info["url"], Path(info["ca_file"]), pid)


def check_peer(peer: Peer, sender: str, events: int, requests: int) -> None:
    stats = peer.stats()
    if stats != {"events": events, "requests": requests}:
        raise SystemExit(f"{sender}: the peer counted {stats}, expected {events} events in {requests} requests")


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seconds: float
    client_cpu: float
    peer_cpu: float


@dataclass
class Mode:
    gzip: bool
    ack: bool
    level: int
    runs: dict[str, list[Run]] = field(default_factory=lambda: {"forwarder": [], "ceiling": []})

    @property
    def label(self) -> str:
        return f"gzip {self.level if self.gzip else 'off'}, ack {'on' if self.ack else 'off'}"


def timeout_for(events: int) -> float:
    return 60 + events / 1000  # far beyond any healthy run (1,000 events/s)


def forwarder_run(corpus: Corpus, mode: Mode, batch: int, requests: int, work: Path,
                  profiler: cProfile.Profile | None = None) -> Run:
    store = SQLiteStore(work / "state.db")
    try:
        store.outbox_append(SINK, zip(corpus.metas, corpus.bodies, strict=True))  # untimed: the poller's work
        with peer_process(work, mode.ack) as peer:
            config = SplunkHecSinkConfig(
                url=peer.url, token=f"env:{TOKEN_ENV}", ca_file=str(peer.ca_file), batch_max_events=batch,
                compress=mode.gzip, compression_level=mode.level, ack=mode.ack,
                **({"ack_poll_interval": ACK_POLL_INTERVAL} if mode.ack else {}))
            worker = SinkWorker(SplunkHecConnector(SINK, config), store)
            run = asyncio.run(drain(worker, peer, len(corpus.bodies), profiler))
            verify_outbox(worker, store)
            check_peer(peer, "forwarder", len(corpus.bodies), requests)
            return run
    finally:
        store.close()


async def drain(worker: SinkWorker, peer: Peer, events: int, profiler: cProfile.Profile | None) -> Run:
    loop = asyncio.get_running_loop()
    peer_cpu = cpu_seconds(peer.pid)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    try:
        if not await worker.drain(loop.time() + timeout_for(events)):
            raise SystemExit(f"forwarder: outbox not drained ({worker.fatal or 'deadline passed'})")
        if profiler is not None:
            profiler.disable()
        return Run(time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(peer.pid) - peer_cpu)
    finally:
        await worker.close()


def verify_outbox(worker: SinkWorker, store: SQLiteStore) -> None:
    left = store.outbox_depth(SINK)
    if left or worker.stats.dead or worker.stats.retries:
        raise SystemExit(f"forwarder: {left} left in the outbox, {worker.stats.dead} dead, "
                         f"{worker.stats.retries} retries")


def ceiling_run(requests: list[list[bytes]], mode: Mode, separator: bytes, work: Path) -> Run:
    events = sum(map(len, requests))
    with peer_process(work, mode.ack) as peer:
        peer_cpu = cpu_seconds(peer.pid)
        started, cpu = time.perf_counter(), time.process_time()
        asyncio.run(bare_loop(peer, requests, mode, separator, started + timeout_for(events)))
        run = Run(time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(peer.pid) - peer_cpu)
        check_peer(peer, "ceiling", events, len(requests))
        return run


async def bare_loop(peer: Peer, requests: list[list[bytes]], mode: Mode, separator: bytes, deadline: float) -> None:
    """The least an asyncio sender does: httpx's AsyncClient (as the connector, an asyncio
    program, must use), join, gzip, POST, check code 0, and in ack modes ask until true."""
    headers = {"Authorization": f"Splunk {TOKEN}", "X-Splunk-Request-Channel": TOKEN,
               "Content-Type": "application/json"}
    gzip_header = {"Content-Encoding": "gzip"} if mode.gzip else {}
    async with httpx.AsyncClient(base_url=peer.url, headers=headers, verify=peer.ssl_context(),
                                 timeout=60) as client:
        for envelopes in requests:
            body = separator.join(envelopes)
            if mode.gzip:
                body = gzip.compress(body, mode.level, mtime=0)
            reply = await client.post(EVENT_PATH, content=body, headers=gzip_header)
            answer = orjson.loads(reply.content)
            if reply.status_code != 200 or answer.get("code") != 0:
                raise SystemExit(f"ceiling: HTTP {reply.status_code} {answer}")
            if mode.ack:
                ack_id = answer["ackId"]
                query, key = orjson.dumps({"acks": [ack_id]}), str(ack_id)
                while orjson.loads((await client.post(ACK_PATH, content=query)).content)["acks"].get(key) is not True:
                    if time.perf_counter() > deadline:
                        raise SystemExit(f"ceiling: ackId {ack_id} never acknowledged")


# --------------------------------------------------------------------------- the whole run


def measure(args: argparse.Namespace, corpus: Corpus, requests: list[list[bytes]], root: Path) -> list[Mode]:
    modes = [Mode(gzip_on, ack, args.level) for gzip_on in (True, False) for ack in (False, True)]
    separator = b"\n" if args.newline else b""
    for round_ in range(args.repeat):
        # Alternate which sender goes first, so neither always follows the other's aftermath.
        senders = ("forwarder", "ceiling") if round_ % 2 == 0 else ("ceiling", "forwarder")
        for mode in modes:
            for sender in senders:
                with tempfile.TemporaryDirectory(dir=root) as tmp:
                    if sender == "forwarder":
                        run = forwarder_run(corpus, mode, args.batch, len(requests), Path(tmp))
                    else:
                        run = ceiling_run(requests, mode, separator, Path(tmp))
                mode.runs[sender].append(run)
                print(f"  round {round_ + 1}: {mode.label:<18} {sender:<10} "
                      f"{len(corpus.bodies) / run.seconds:>9,.0f} events/s", flush=True)
    return modes


def rates(runs: list[Run], events: int) -> list[float]:
    return sorted(events / run.seconds for run in runs)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(modes: list[Mode], events: int) -> None:
    print(f"\n{'mode':<20}{'sender':<11}{'events/s best':>14}{'median':>10}{'worst':>10}  "
          f"{'wall s':<13}{'client CPU s':<14}peer CPU s")
    for mode in modes:
        for sender, runs in mode.runs.items():
            r = rates(runs, events)
            print(f"{mode.label:<20}{sender:<11}{r[-1]:>14,.0f}{statistics.median(r):>10,.0f}{r[0]:>10,.0f}  "
                  f"{spread([x.seconds for x in runs]):<13}{spread([x.client_cpu for x in runs]):<14}"
                  f"{spread([x.peer_cpu for x in runs])}")
    print("(seconds as lowest-highest of the rounds, over the timed span; client CPU: this process, "
          "peer CPU: the peer process)")
    print(f"\nforwarder / ceiling (of medians; of bests in brackets), target >= {TARGET:.0%}:")
    for mode in modes:
        ours, ceiling = rates(mode.runs["forwarder"], events), rates(mode.runs["ceiling"], events)
        ratio = statistics.median(ours) / statistics.median(ceiling)
        print(f"  {mode.label:<20} {ratio:6.1%}  ({ours[-1] / ceiling[-1]:.1%})   "
              f">= 70% of the ceiling: {'yes' if ratio >= TARGET else 'no'}")


def profile(args: argparse.Namespace, corpus: Corpus, requests: int, root: Path) -> None:
    """One more forwarder run, gzip on, ack off, under cProfile: where this process's time goes."""
    profiler = cProfile.Profile()
    mode = Mode(True, False, args.level)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        run = forwarder_run(corpus, mode, args.batch, requests, Path(tmp), profiler)
    print(f"\nprofile: forwarder {mode.label} under cProfile (the timed span only), "
          f"{len(corpus.bodies) / run.seconds:,.0f} events/s while profiled")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
    print(text.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=SplunkHecSinkConfig.model_fields["batch_max_events"].default,
                        help="the sink's batch_max_events (default: the connector's)")
    parser.add_argument("--level", type=int, default=DEFAULTS["compression_level"].default,
                        help="gzip level (default: the connector's compression_level)")
    parser.add_argument("--newline", action="store_true",
                        help="the ceiling joins envelopes with \\n instead of as the connector does")
    parser.add_argument("--profile", action="store_true", help="add one forwarder run (gzip, no ack) under cProfile")
    args = parser.parse_args(argv)
    os.environ[TOKEN_ENV] = TOKEN  # the sink config references it, as a deployment's would

    started = time.perf_counter()
    corpus = build_corpus(args.events)
    requests = ceiling_requests(corpus, args.batch)
    print(f"{describe(corpus, requests)}; built in {time.perf_counter() - started:.1f} s")
    print(f"batch_max_events {args.batch}, batch_max_bytes {DEFAULTS['batch_max_bytes'].default:,}; "
          f"gzip level {args.level}; ack_poll_interval {ACK_POLL_INTERVAL} in the ack modes; ceiling joins with "
          f"{'newlines' if args.newline else 'nothing, as the connector'}; {args.repeat} round(s), the modes "
          f"interleaved in each; HTTPS, a fresh peer process per run", flush=True)
    with tempfile.TemporaryDirectory(prefix="ship-hec-") as tmp:
        modes = measure(args, corpus, requests, Path(tmp))
        report(modes, args.events)
        if args.profile:
            profile(args, corpus, len(requests), Path(tmp))


if __name__ == "__main__":
    main()
