"""Splunk modular-input shipping benchmark: the add-on's delivery path (the outbox drained into
the modular input's `<stream>` on a pipe, as splunkd reads it), against a bare splunklib loop
writing the same events to the same kind of pipe (the reference).

    .venv/bin/python bench/ship_splunk_modinput.py [--events 20000] [--repeat 3] [--batch 500]
                                                   [--tenants 10] [--profile]

Corpus: --events distinct alerts in the modular input's default format, raw (the Graph alert
as Graph sent it, `mappings.raw.encode`), made as bench/ship_sentinel.py makes its corpus:
spread over --tenants customers, per tenant up to 5,000 / --tenants generated alerts
(tests/peers/alert_factory.py, the tenant's own id inside), each varied into several versions,
normalised under that tenant; event i belongs to tenant i mod --tenants.

splunkd reads a modular input's standard output through a pipe. Here every measurement has a
fresh pipe and a fresh reader process at its other end (`python -c READER`, so that reading does
not share this process's GIL): it reads the stream in 1 MiB chunks, counts `</event>`, hashes
the bytes and, at end of stream, reports count, bytes and hash. Two senders, interleaved per
round (which goes first alternates) so that drift of this noisy machine hits them alike:
  forwarder  a fresh SQLite state with the corpus in the outbox of sink "splunk" (filled
             untimed), drained by `SinkWorker(SplunkModinputConnector(..., output=pipe))` until
             the outbox is empty; the sink as `core.app.splunk_input` sets it up (format raw, a
             stanza name), index `mssp_{tenant}`, host fixed, batch_max_events --batch.
  reference  splunklib's `EventWriter(pipe)` and the minimal loop a modular input using the
             SDK directly writes: per event `write_event(Event(data=..., stanza=..., time=...,
             host=..., index=..., source=..., sourcetype=...))`, over the SAME events in the same
             order; the program's data (the bodies as str, the time as "%.3f", the placement
             strings) is made untimed: the reference times only the SDK's own work (ElementTree,
             the write and flush per event).
The pipe is what a Python modular input's stdout is when splunkd starts it: a TextIOWrapper
(UTF-8) over an 8 KiB BufferedWriter over the pipe; splunklib flushes after every event.

The clock runs over the writing: the worker's drain (reading each batch from the outbox, writing
it, deleting it) for the forwarder, the loop for the reference, to the last event flushed; `</stream>`, closing the pipe and the reader's report are outside it. The pipe
holds 64 KiB, so the writer is never more than that ahead of the reader. After each run the
reader must have counted --events events, the stream must start with `<stream>` and end with
`</stream>`; the forwarder's outbox must be empty with nothing dead and no retry. Both senders'
streams must hash the same: the same bytes on the pipe (checked per run, not assumed).

It prints events/s (best, median, worst), MB/s, wall and CPU seconds (this process, and the
reader) per sender, then the ratio forwarder / reference of the medians (of the bests in
brackets) and the verdict against the target: at least 80% of the reference. Why 80%: the
reference only formats and writes, the forwarder also reads each batch from the SQLite outbox and
deletes it once written (what makes a run's events survive a crash or splunkd's restart of the
input); that bookkeeping is its price of durability, and the other shipping benchmarks hold it to
the same 80%. --profile adds one run of each sender under cProfile and prints the top functions by
own time.
"""
from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' peers are not installed

from splunklib.modularinput import Event as SplunkEvent
from splunklib.modularinput import EventWriter

from bench.ship_syslog import cpu_seconds
from bench.shipping import (
    TIMING_HEADER,
    RunOne,
    drain_timed,
    interleaved,
    profiled,
    shipping_arguments,
    tenant_alerts,
    timing_columns,
    verdict,
)
from connectors.splunk_modinput import SplunkModinputConnector, SplunkModinputSinkConfig
from core.delivery import SinkWorker
from core.model.schema import EventMeta, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import encoder

SINK = "splunk"
TARGET = 0.80  # at least 80% of the reference: the outbox's reads and deletes are the price of durability
STANZA = "defender_forwarder://bench"
HOST = "bench-host"
SOURCETYPE = "ms365:defender:incident:alerts"  # raw alerts, as Splunk's Microsoft Security add-on names them
DEFAULTS = SplunkModinputSinkConfig.model_fields

# The other end of the pipe, as splunkd reads it: counts `</event>` (a match may straddle two
# chunks: the last 7 bytes are carried over), hashes the stream, and at its end reports
# `count bytes sha256 head tail` on its stdout.
READER = r"""
import hashlib, sys
data, digest, count, total, carry, head, tail = sys.stdin.buffer, hashlib.sha256(), 0, 0, b"", b"", b""
while chunk := data.read1(1 << 20):
    digest.update(chunk)
    total += len(chunk)
    if len(head) < 8:
        head = (head + chunk)[:8]
    window = carry + chunk
    count += window.count(b"</event>")
    carry, tail = window[-7:], (tail + chunk)[-9:]
print(count, total, digest.hexdigest(), head.decode("ascii", "replace"), tail.decode("ascii", "replace"))
"""


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    tenants: list[TenantRef]
    metas: list[EventMeta]
    bodies: list[bytes]  # format raw, all distinct


# One event as the reference program holds it: data, time, host, index, source, sourcetype.
RefEvent = tuple[str, str, str, str, str, str]


def build_corpus(events: int, tenant_count: int) -> Corpus:
    tenants, alerts = tenant_alerts(events, tenant_count, "ship-splunk-modinput")
    encode = encoder("raw")
    metas = [EventMeta.of(alert) for alert in alerts]
    bodies = [encode(alert) for alert in alerts]
    if len(set(bodies)) != events:
        raise SystemExit(f"corpus: only {len(set(bodies))} distinct bodies of {events}")
    return Corpus(tenants, metas, bodies)


def reference_events(corpus: Corpus) -> list[RefEvent]:
    """The reference program's data, worked out on its own (not by the connector's placement):
    the stream's bytes being the same for both senders then proves the connector places events
    as documented."""
    return [(body.decode("utf-8"), f"{meta.time:.3f}", HOST, f"mssp_{meta.tenant_label}",
             f"defender-forwarder:{meta.tenant_id}", SOURCETYPE)
            for meta, body in zip(corpus.metas, corpus.bodies, strict=True)]


def sink_config(batch: int) -> SplunkModinputSinkConfig:
    config = SplunkModinputSinkConfig(format="raw", stanza=STANZA, host=HOST, index="mssp_{tenant}",
                                      batch_max_events=batch)
    if config.sourcetype_for_format() != SOURCETYPE or config.source != "defender-forwarder:{tenant_id}":
        raise SystemExit(f"the sink's defaults changed: sourcetype {config.sourcetype_for_format()}, source "
                         f"{config.source}; update this benchmark")
    return config


def describe(corpus: Corpus, batch: int) -> str:
    sizes = [len(body) for body in corpus.bodies]
    return (f"corpus: {len(sizes):,} distinct raw alerts, {sum(sizes) / 1e6:.1f} MB of JSON, "
            f"{min(sizes):,}-{max(sizes):,} bytes (median {statistics.median(sizes):,.0f}), over "
            f"{len(corpus.tenants)} tenant(s) interleaved; batch_max_events {batch}")


# --------------------------------------------------------------------------- the pipe and its reader


@dataclass
class Reader:
    stream: TextIO  # this process's end: what sys.stdout is under splunkd
    process: subprocess.Popen[bytes]

    def finish(self, sender: str, events: int) -> tuple[int, str]:
        """Close our end, wait for the reader's report; (stream bytes, sha256) after checking it."""
        if not self.stream.closed:
            self.stream.close()
        out, _ = self.process.communicate(timeout=60)
        count, total, digest, head, tail = out.decode().split()
        if int(count) != events or head != "<stream>" or tail != "</stream>":
            raise SystemExit(f"{sender}: the reader counted {count} events (expected {events}), "
                             f"stream head {head!r}, tail {tail!r}")
        return int(total), digest


@contextmanager
def pipe_reader() -> Iterator[Reader]:
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-c", READER], stdin=read_end, stdout=subprocess.PIPE)
    finally:
        os.close(read_end)
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_end, "w")), encoding="utf-8")
    try:
        yield Reader(stream, process)
    finally:
        if not stream.closed:
            try:
                stream.close()
            except BrokenPipeError:
                pass
        if process.poll() is None:
            process.kill()
        process.wait()


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seconds: float
    client_cpu: float
    peer_cpu: float
    bytes: int = 0
    digest: str = ""


def forwarder_run(corpus: Corpus, batch: int, work: Path, profiler: cProfile.Profile | None = None) -> Run:
    events = len(corpus.bodies)
    store = SQLiteStore(work / "state.db")
    try:
        store.outbox_append(SINK, zip(corpus.metas, corpus.bodies, strict=True))  # untimed: the poller's work
        with pipe_reader() as reader:
            # Made just before the clock starts (an EventWriter and a placement table: trivial).
            connector = SplunkModinputConnector(SINK, sink_config(batch), output=reader.stream)
            worker = SinkWorker(connector, store)
            run = Run(*asyncio.run(drain_timed(worker, reader.process.pid, events, profiler)))
            run.bytes, run.digest = reader.finish("forwarder", events)
        left = store.outbox_depth(SINK)
        if left or worker.stats.dead or worker.stats.retries or worker.stats.delivered != events:
            raise SystemExit(f"forwarder: {worker.stats.delivered} delivered, {left} left in the outbox, "
                             f"{worker.stats.dead} dead, {worker.stats.retries} retries")
        return run
    finally:
        store.close()


def reference_run(ref: list[RefEvent], work: Path, profiler: cProfile.Profile | None = None) -> Run:
    with pipe_reader() as reader:
        peer_cpu = cpu_seconds(reader.process.pid)
        started, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        try:
            writer = sdk_loop(ref, reader.stream)
        finally:
            if profiler is not None:
                profiler.disable()
        run = Run(time.perf_counter() - started, time.process_time() - cpu, cpu_seconds(reader.process.pid) - peer_cpu)
        writer.close()  # `</stream>`, outside the clock as the forwarder's close is
        run.bytes, run.digest = reader.finish("reference", len(ref))
        return run


def sdk_loop(ref: list[RefEvent], stream: TextIO) -> EventWriter:
    """The minimal loop of a modular input using splunklib directly: one Event written per event."""
    writer = EventWriter(stream, sys.stderr)
    for data, at, host, index, source, sourcetype in ref:
        writer.write_event(SplunkEvent(data=data, stanza=STANZA, time=at, host=host, index=index, source=source,
                                       sourcetype=sourcetype))
    return writer


# --------------------------------------------------------------------------- the whole run


def run_one(corpus: Corpus, ref: list[RefEvent], batch: int) -> RunOne:
    def one(sender: str, work: Path, profiler: cProfile.Profile | None) -> Run:
        if sender == "forwarder":
            return forwarder_run(corpus, batch, work, profiler)
        return reference_run(ref, work, profiler)
    return one  # type: ignore[return-value]


def report(runs: dict[str, list[Run]], events: int) -> None:
    print(f"\n{TIMING_HEADER}{'MB/s median':<13}MB on the pipe")
    for sender, sender_runs in runs.items():
        mb_s = statistics.median(run.bytes / run.seconds / 1e6 for run in sender_runs)
        megabytes = "/".join(f"{b / 1e6:.2f}" for b in sorted({run.bytes for run in sender_runs}))
        print(f"{sender:<11}{timing_columns(sender_runs, events)}{mb_s:<13.1f}{megabytes}")
    print("(seconds as lowest-highest of the rounds, over the timed span; client CPU: this process, "
          "peer CPU: the reader process; MB on the pipe: the whole stream, <stream> to </stream>)")
    digests = {run.digest for sender_runs in runs.values() for run in sender_runs}
    if len(digests) != 1:
        raise SystemExit(f"the senders' streams differ ({len(digests)} distinct hashes): not the same events")
    print("every run's stream: the same bytes (one sha256 for both senders)")
    verdict(runs, events, TARGET)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    args = shipping_arguments(__doc__, argv, events=20_000, batch=DEFAULTS["batch_max_events"].default,
                              batch_help="the sink's batch_max_events (default: the sink's)")

    started = time.perf_counter()
    corpus = build_corpus(args.events, args.tenants)
    ref = reference_events(corpus)
    # The benchmark's own data out of the cyclic GC's reach (as bench/ship_sentinel.py does): a
    # running forwarder holds a batch, not the corpus.
    gc.collect()
    gc.freeze()
    print(f"{describe(corpus, args.batch)}; built in {time.perf_counter() - started:.1f} s")
    print(f"sink splunk_modinput, format raw, stanza {STANZA}; {args.repeat} round(s), the senders interleaved; "
          f"a fresh pipe and reader process per run", flush=True)
    with tempfile.TemporaryDirectory(prefix="ship-splunk-modinput-") as tmp:
        one = run_one(corpus, ref, args.batch)
        runs = interleaved(args.repeat, args.events, Path(tmp), one,
                           lambda run: f"{run.bytes / run.seconds / 1e6:.1f} MB/s")  # type: ignore[attr-defined]
        report(runs, args.events)  # type: ignore[arg-type]
        if args.profile:
            profiled(Path(tmp), args.events, one, args.profile_lines)


if __name__ == "__main__":
    main()
