"""Syslog shipping benchmark: the outbox to a local syslog-ng over TCP and TLS, against syslog-ng
itself relaying the same CEF lines from a file to the same kind of receiver.

    .venv/bin/python bench/ship_syslog.py [--events 100000] [--repeat 3] [--batch 1000] [--profile]

Corpus: --events distinct CEF lines made from realistic alerts (tests/peers/alert_factory.py):
up to 5,000 generated alerts, each varied into several versions (own id, providerAlertId,
alertWebUrl, lastUpdateDateTime), normalised and encoded with `mappings.cef.encode`.

Every run has a fresh receiver: `tests.peers.syslog_ng.SyslogNg(raw_only=True)` (its `tcp` or
`tls` listener, octet-counted). The clock stops when the receiver's output file holds --events
messages of that listener (counted by a substring per line, not by parsing JSON); then every
received MSG is checked against the corpus byte for byte. Modes, all interleaved per repeat so
that drift of this noisy machine hits them alike:
  forwarder tcp|tls    the outbox of sink "siem" (a fresh SQLite state, filled untimed) drained by
                       `SinkWorker(SyslogConnector(...)).drain()`; CPU = this process.
  relay-default tcp|tls  syslog-ng tailing the CEF file as an admin would write it (anchors'
                       relay-default: flags(no-parse) follow-freq(1), flow control); the clock
                       starts at its exec, so its start-up is inside the figure. CPU = the relay.
  relay-ff01 tcp|tls   the same with follow-freq(0.1), which shortens the ~1 s stalls the default
                       shows when flow control suspends the file reader.
It prints events/s (best, median, worst), wall and CPU seconds per mode, then the ratios of the
forwarder to each relay (the issue's target is against relay-default) and the verdicts:
at least 50,000 events/s over TCP, and not slower than syslog-ng. --profile adds one forwarder
TCP run under cProfile and prints its top costs.

The receiver writes JSON (RAWMSG), so it costs more per message than the anchors' receiver
(the measured anchor the project was given), which writes only ${MSG}: it pushes back on a sender sooner,
and the default relay's flow-control stalls (~1 s each) come more often than the anchors show.
"""
from __future__ import annotations

import argparse
import asyncio
import copy
import cProfile
import hashlib
import io
import os
import pstats
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run by hand from a checkout: the tests' peers are not installed

from connectors.syslog import SyslogConnector, SyslogSinkConfig
from core.delivery import SinkWorker
from core.model.schema import EventMeta, TenantRef
from core.state.sqlite import SQLiteStore
from mappings import cef, shortener
from mappings.graph_alerts_v2 import normalise
from tests.peers.alert_factory import graph_time, make_alerts
from tests.peers.syslog_ng import SYSLOG_NG, SyslogCerts, SyslogNg, make_certs

TENANT = TenantRef(id="22222222-2222-4222-8222-222222222222", label="contoso")
SINK = "siem"
PROTOCOLS = ("tcp", "tls")
RELAYS = {"relay-default": "1", "relay-ff01": "0.1"}  # mode -> follow-freq()
TARGET_TCP = 50_000
BASE_ALERTS = 5_000  # generating alerts costs ~250 µs each; more versions of each are cheap
START = datetime(2026, 11, 1, tzinfo=UTC)
STEP = timedelta(seconds=5)
POLL = 0.005  # seconds between looks at the receiver's output, as the anchors polled
CLK_TCK = os.sysconf("SC_CLK_TCK")
RELAY_CONFIG = """@version: 3.38
options {{ keep-hostname(yes); use-dns(no); dns-cache(no); stats-freq(0); mark-freq(0); }};
source s_file {{ file("{input}" flags(no-parse) follow-freq({follow})); }};
destination d_fwd {{ syslog("{host}" port({port}) transport("{transport}"){tls}); }};
log {{ source(s_file); destination(d_fwd); flags(flow-control); }};
"""


# --------------------------------------------------------------------------- corpus


@dataclass
class Corpus:
    metas: list[EventMeta]
    lines: list[bytes]  # CEF, no newline; all distinct


def build_corpus(events: int) -> Corpus:
    """`events` distinct CEF lines: `BASE_ALERTS` generated alerts, then versions of each that
    differ where two real alerts differ (ids, portal link, update time), in time order."""
    base = make_alerts(min(events, BASE_ALERTS), TENANT.id, START, STEP, seed=1)
    ingested = datetime.now(UTC)
    metas, lines = [], []
    for index in range(events):
        round_, slot = divmod(index, len(base))
        raw = base[slot] if round_ == 0 else _version(base[slot], round_, START + (index * STEP))
        alert = normalise(raw, TENANT, ingested)
        metas.append(EventMeta.of(alert))
        lines.append(cef.encode(alert))
    if len(set(lines)) != events:
        raise SystemExit(f"corpus: only {len(set(lines))} distinct lines of {events}")
    return Corpus(metas, lines)


def _version(raw: dict[str, Any], round_: int, last_update: datetime) -> dict[str, Any]:
    """Another alert like `raw`: its id's last 12 characters redrawn in the same shape (so MDE
    `da<ticks>_<hash>` ids, GUIDs and hex ids stay what they were), a later update time."""
    alert = copy.copy(raw)  # shallow: only top-level strings change
    old = raw["id"]
    new = _redraw(old, f"{old}/{round_}")
    alert["id"] = new
    provider = raw["providerAlertId"]
    if old.endswith(provider):  # every factory shape: providerAlertId is the id's tail
        alert["providerAlertId"] = new[len(old) - len(provider):]
    alert["alertWebUrl"] = raw["alertWebUrl"].replace(old, new)
    alert["lastUpdateDateTime"] = graph_time(last_update)
    return alert


def encoded_events(events: int, encode: Callable[[Any], bytes]) -> tuple[list[EventMeta], list[bytes]]:
    """`events` distinct alert versions of TENANT (BASE_ALERTS generated, then more versions of
    each), each with its event meta and encoded by `encode`; all the bodies must differ."""
    base = make_alerts(min(events, BASE_ALERTS), TENANT.id, START, STEP, seed=1)
    ingested = datetime.now(UTC)
    metas, bodies = [], []
    for index in range(events):
        round_, slot = divmod(index, len(base))
        graph = base[slot] if round_ == 0 else _version(base[slot], round_, START + (index * STEP))
        alert = normalise(graph, TENANT, ingested)
        metas.append(EventMeta.of(alert))
        bodies.append(encode(alert))
    if len(set(bodies)) != events:
        raise SystemExit(f"corpus: only {len(set(bodies))} distinct bodies of {events}")
    return metas, bodies


def _redraw(text: str, seed: str) -> str:
    """The last 12 digits / hex letters of `text` replaced by others of the same class; a
    trailing `_<digit>` (MDE's GUID_1 ids) kept."""
    body, suffix = re.match(r"(.*?)(_\d)?$", text).groups()  # type: ignore[union-attr]
    digest = hashlib.sha256(seed.encode()).digest()
    chars, changed = list(body), 0
    for position in range(len(chars) - 1, -1, -1):
        if changed == 12:
            break
        char = chars[position]
        if char.isdigit():
            chars[position] = "0123456789"[digest[changed] % 10]
        elif char in "abcdef":
            chars[position] = "abcdef"[digest[changed] % 6]
        else:
            continue
        changed += 1
    return "".join(chars) + (suffix or "")


def describe(corpus: Corpus) -> str:
    sizes = [len(line) for line in corpus.lines]
    return (f"corpus: {len(sizes):,} distinct CEF lines, {sum(sizes) / 1e6:.1f} MB, "
            f"{min(sizes):,}-{max(sizes):,} bytes (median {statistics.median(sizes):,.0f})")


# --------------------------------------------------------------------------- the receiver's side


class OutputWatch:
    """Whether the receiver has written the corpus's last line yet. Both senders keep order on
    one connection, so the last line comes last; `check` later proves that all came, once each.
    Counting lines would read the whole output (~120 MB per 100k) on the CPUs the senders
    share; this only stats the file until it can hold the corpus, then reads its tail."""

    TAIL = 16384  # bytes: more than one output line

    def __init__(self, path: Path, listener: str, corpus: Corpus) -> None:
        self.path = path
        self.marker = b'"listener":"%b"' % listener.encode()
        # Each output line holds its MSG at least once (JSON only lengthens it).
        self.floor = sum(map(len, corpus.lines))
        # How RAWMSG ends when it holds the last line: its JSON string's last 24 bytes and the
        # closing quote (a CEF line ends in an id or a number, which JSON writes unchanged).
        self.ending = orjson.dumps(corpus.lines[-1].decode())[-25:]

    def done(self) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size < self.floor:
            return False
        with self.path.open("rb") as file:
            file.seek(max(0, size - self.TAIL))
            tail = file.read()
        complete = tail[:tail.rfind(b"\n")]
        last = complete[complete.rfind(b"\n") + 1:]
        return self.marker in last and self.ending in last

    def count(self) -> int:
        """Messages of the listener so far (reads the whole output: for error messages)."""
        return self.path.read_bytes().count(self.marker) if self.path.exists() else 0


def received_messages(path: Path, listener: str) -> list[bytes]:
    """Each received MSG, in order: RAWMSG less its RFC 5424 header."""
    messages = []
    for line in path.read_bytes().splitlines():
        record = orjson.loads(line)
        if record["listener"] == listener:
            messages.append(rfc5424_msg(record["RAWMSG"].encode()))
    return messages


def rfc5424_msg(message: bytes) -> bytes:
    """MSG of `<PRI>1 TS HOST APP PROCID MSGID SD MSG`. The forwarder's SD is `-`; syslog-ng's
    syslog() destination adds `[meta sequenceId="N"]`, whose values may escape `"`, `]`, `\\`."""
    sd = message.split(b" ", 6)[6]
    if sd.startswith(b"- "):
        return sd[2:]
    quoted, escaped = False, False
    for position, char in enumerate(sd):
        if escaped:
            escaped = False
        elif char == 0x5C:  # backslash
            escaped = quoted
        elif char == 0x22:  # double quote
            quoted = not quoted
        elif char == 0x5D and not quoted and sd[position + 1:position + 2] != b"[":  # the last "]"
            return sd[position + 2:]
    raise ValueError(f"no MSG after the structured data: {message[:200]!r}")


def check(received: list[bytes], corpus: Corpus) -> str:
    """'' when `received` is the corpus byte for byte (in any order), else what differs."""
    if len(received) != len(corpus.lines):
        return f"{len(received)} messages received, {len(corpus.lines)} sent"
    missing = set(corpus.lines) - set(received)
    if missing:
        example = next(iter(missing))[:120]
        return f"{len(missing)} lines not received as sent, e.g. {example!r}"
    return ""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, from /proc/PID/stat (fields 14 and 15)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def receiver_pid(receiver: SyslogNg) -> int:
    return int((receiver.directory / "syslog-ng.pid").read_text())


@contextmanager
def receiving(directory: Path, certs: SyslogCerts) -> Iterator[SyslogNg]:
    receiver = SyslogNg(directory, certs, raw_only=True)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


# --------------------------------------------------------------------------- one run


@dataclass
class Run:
    seconds: float
    sender_cpu: float
    receiver_cpu: float
    in_order: bool


@dataclass
class Mode:
    name: str
    protocol: str
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} {self.protocol}"


def finish(receiver: SyslogNg, protocol: str, corpus: Corpus, seconds: float, sender_cpu: float,
           receiver_cpu: float) -> Run:
    received = received_messages(receiver.output, protocol)
    problem = check(received, corpus)
    if problem:
        raise SystemExit(f"{protocol}: {problem}\nreceiver log:\n{receiver.errors()[-2000:]}")
    return Run(seconds, sender_cpu, receiver_cpu, received == corpus.lines)


def timeout_for(events: int) -> float:
    return 60 + events / 1000  # far beyond any healthy run (1,000 events/s)


def forwarder_run(corpus: Corpus, protocol: str, batch: int, certs: SyslogCerts, work: Path,
                  profiler: cProfile.Profile | None = None) -> Run:
    store = SQLiteStore(work / "state.db")
    try:
        store.outbox_append(SINK, zip(corpus.metas, corpus.lines, strict=True))  # untimed: the poller's work
        with receiving(work / "receiver", certs) as receiver:
            config = sink_config(receiver, protocol, batch, certs)
            worker = SinkWorker(SyslogConnector(SINK, config, shortener(config.format)), store)
            seconds, cpu, receiver_cpu = asyncio.run(ship(worker, receiver, protocol, corpus, profiler))
            verify_outbox(worker, store)
            return finish(receiver, protocol, corpus, seconds, cpu, receiver_cpu)
    finally:
        store.close()


def sink_config(receiver: SyslogNg, protocol: str, batch: int, certs: SyslogCerts) -> SyslogSinkConfig:
    host, port = receiver.address(protocol)
    tls: dict[str, Any] = {"ca_file": str(certs.ca_file), "tls_server_name": "localhost"} if protocol == "tls" else {}
    return SyslogSinkConfig(host=host, port=port, protocol=protocol, hostname="bench", batch_max_events=batch, **tls)


async def ship(worker: SinkWorker, receiver: SyslogNg, protocol: str, corpus: Corpus,
               profiler: cProfile.Profile | None = None) -> tuple[float, float, float]:
    """(wall, this process's CPU, the receiver's CPU) from the first batch to the receiver
    holding every event; `profiler` watches that span only."""
    watch, events = OutputWatch(receiver.output, protocol, corpus), len(corpus.lines)
    pid = receiver_pid(receiver)
    loop = asyncio.get_running_loop()
    receiver_cpu = cpu_seconds(pid)
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    try:
        if not await worker.drain(loop.time() + timeout_for(events)):
            raise SystemExit(f"forwarder {protocol}: outbox not drained ({worker.fatal or 'deadline passed'})")
        # Sleep in the loop, not beside it: drain() returns once the transport's buffer is under
        # its high-water mark, and the rest is written only while the loop runs.
        while not watch.done():
            if time.perf_counter() - started > timeout_for(events):
                raise SystemExit(f"forwarder {protocol}: the receiver got {watch.count()} of {events}\n"
                                 f"{receiver.errors()[-2000:]}")
            await asyncio.sleep(POLL)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        if profiler is not None:
            profiler.disable()
        return seconds, cpu, cpu_seconds(pid) - receiver_cpu
    finally:
        await worker.close()


def verify_outbox(worker: SinkWorker, store: SQLiteStore) -> None:
    altered = {k: v for k, v in worker.connector.counters.items() if v}
    left = store.outbox_depth(SINK)
    if left or worker.stats.dead or worker.stats.retries or altered:
        raise SystemExit(f"forwarder: {left} left in the outbox, {worker.stats.dead} dead, "
                         f"{worker.stats.retries} retries, altered {altered}")


def relay_run(corpus: Corpus, input_file: Path, protocol: str, follow: str, certs: SyslogCerts,
              work: Path) -> Run:
    with receiving(work / "receiver", certs) as receiver:
        config = work / "relay.conf"
        config.write_text(relay_config(input_file, receiver, protocol, follow, certs))
        watch = OutputWatch(receiver.output, protocol, corpus)
        pid = receiver_pid(receiver)
        receiver_cpu = cpu_seconds(pid)
        started = time.perf_counter()
        with relay(work, config) as process:
            relay_cpu = wait_for(watch, len(corpus.lines), process, work)
            seconds = time.perf_counter() - started
        return finish(receiver, protocol, corpus, seconds, relay_cpu, cpu_seconds(pid) - receiver_cpu)


def relay_config(input_file: Path, receiver: SyslogNg, protocol: str, follow: str, certs: SyslogCerts) -> str:
    host, port = receiver.address(protocol)
    # syslog-ng checks the server's name against the destination's host: the certificate is for
    # "localhost" (and 127.0.0.1), the receiver listens on 127.0.0.1 only.
    tls = f' tls(ca-file("{certs.ca_file}") peer-verify(required-trusted))' if protocol == "tls" else ""
    return RELAY_CONFIG.format(input=input_file, follow=follow, host="localhost" if tls else host, port=port,
                               transport=protocol, tls=tls)


@contextmanager
def relay(work: Path, config: Path) -> Iterator[subprocess.Popen[bytes]]:
    command = [str(SYSLOG_NG), "-F", "--no-caps", "-e", "-f", str(config), "-p", str(work / "relay.pid"),
               "-R", str(work / "relay.persist"), "-c", str(work / "relay.ctl")]
    with (work / "relay.out").open("wb") as out, (work / "relay.err").open("wb") as err:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(watch: OutputWatch, events: int, process: subprocess.Popen[bytes], work: Path) -> float:
    """Poll until the receiver holds `events`; the relay's CPU seconds then."""
    deadline = time.perf_counter() + timeout_for(events)
    while not watch.done():
        if process.poll() is not None or time.perf_counter() > deadline:
            log = (work / "relay.err").read_text(errors="replace")[-2000:]
            raise SystemExit(f"relay: the receiver got {watch.count()} of {events} (relay exit "
                             f"{process.returncode})\n{log}")
        time.sleep(POLL)
    return cpu_seconds(process.pid)


# --------------------------------------------------------------------------- the whole run


def measure(args: argparse.Namespace, corpus: Corpus, root: Path) -> list[Mode]:
    certs = make_certs(root / "certs")
    input_file = root / "cef.log"
    input_file.write_bytes(b"".join(line + b"\n" for line in corpus.lines))
    modes = [Mode(name, protocol) for name in ("forwarder", *RELAYS) for protocol in PROTOCOLS]
    for round_ in range(args.repeat):
        for mode in modes:
            with tempfile.TemporaryDirectory(dir=root) as tmp:
                work = Path(tmp)
                if mode.name == "forwarder":
                    run = forwarder_run(corpus, mode.protocol, args.batch, certs, work)
                else:
                    run = relay_run(corpus, input_file, mode.protocol, RELAYS[mode.name], certs, work)
            mode.runs.append(run)
            print(f"  round {round_ + 1}: {mode.label:<18} {len(corpus.lines) / run.seconds:>9,.0f} events/s",
                  flush=True)
    return modes


def rates(mode: Mode, events: int) -> list[float]:
    return sorted(events / run.seconds for run in mode.runs)


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(modes: list[Mode], events: int) -> None:
    print(f"\n{'mode':<20}{'events/s best':>14}{'median':>10}{'worst':>10}  {'wall s':<13}{'sender CPU s':<14}"
          f"{'receiver CPU s':<16}in order")
    for mode in modes:
        r, runs = rates(mode, events), mode.runs
        print(f"{mode.label:<20}{r[-1]:>14,.0f}{statistics.median(r):>10,.0f}{r[0]:>10,.0f}  "
              f"{spread([x.seconds for x in runs]):<13}{spread([x.sender_cpu for x in runs]):<14}"
              f"{spread([x.receiver_cpu for x in runs]):<16}{'yes' if all(x.in_order for x in runs) else 'no'}")
    print("(seconds as lowest-highest of the rounds. sender CPU: this process for the forwarder, from the first "
          "batch to the last message received; the relay process for syslog-ng, start-up included)")
    verdicts(modes, events)


def verdicts(modes: list[Mode], events: int) -> None:
    median = {mode.label: statistics.median(rates(mode, events)) for mode in modes}
    best = {mode.label: rates(mode, events)[-1] for mode in modes}
    print("\nratios, forwarder / relay (of medians; of bests in brackets):")
    for protocol in PROTOCOLS:
        for relay_name in RELAYS:
            ours, theirs = f"forwarder {protocol}", f"{relay_name} {protocol}"
            print(f"  {ours} / {theirs:<18} {median[ours] / median[theirs]:5.2f}  "
                  f"({best[ours] / best[theirs]:.2f})")
    tcp = median["forwarder tcp"]
    not_slower = all(median[f"forwarder {p}"] >= median[f"relay-default {p}"] for p in PROTOCOLS)
    print(f"\ntcp >= {TARGET_TCP:,} events/s: {'yes' if tcp >= TARGET_TCP else 'no'} (median {tcp:,.0f})")
    print(f"not slower than syslog-ng: {'yes' if not_slower else 'no'} "
          "(median forwarder >= median relay-default, tcp and tls)")


def profile(args: argparse.Namespace, corpus: Corpus, root: Path) -> None:
    """One more forwarder TCP run under cProfile: where this process's time goes."""
    certs = make_certs(root / "certs-profile")
    profiler = cProfile.Profile()
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        run = forwarder_run(corpus, "tcp", args.batch, certs, Path(tmp), profiler)
    print(f"\nprofile: forwarder tcp under cProfile (the timed span only), "
          f"{len(corpus.lines) / run.seconds:,.0f} events/s while profiled")
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
    print(text.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=SyslogSinkConfig.model_fields["batch_max_events"].default,
                        help="the sink's batch_max_events (default: the connector's)")
    parser.add_argument("--profile", action="store_true", help="add one forwarder tcp run under cProfile")
    args = parser.parse_args(argv)
    if SYSLOG_NG is None:
        raise SystemExit("syslog-ng not installed: apt-get install syslog-ng-core")

    started = time.perf_counter()
    corpus = build_corpus(args.events)
    print(f"{describe(corpus)}; built in {time.perf_counter() - started:.1f} s")
    print(f"batch_max_events {args.batch}; {args.repeat} round(s), the modes interleaved in each", flush=True)
    with tempfile.TemporaryDirectory(prefix="ship-syslog-") as tmp:
        modes = measure(args, corpus, Path(tmp))
        report(modes, args.events)
        if args.profile:
            profile(args, corpus, Path(tmp))


if __name__ == "__main__":
    main()
