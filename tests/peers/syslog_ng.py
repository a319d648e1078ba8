"""A real syslog-ng (Debian `syslog-ng-core` 3.38) as a syslog receiver for tests and benchmarks.

`SyslogNg` runs one syslog-ng process with its own config, pid, persist and control files in a
run directory, listening on free loopback ports. syslog-ng's drivers are strict about framing,
so each framing has its own listener, and a sender that frames wrongly loses its messages:

  udp     syslog() over UDP, one message per datagram
  tcp     syslog() over TCP, RFC 6587 octet-counting only ("<len> <msg>")
  tcp_lf  network() over TCP, one message per LF-terminated line
  tls     syslog() over TLS, octet-counting only (RFC 5425)
  tls_lf  network() over TLS, one message per LF-terminated line

Every listener takes RFC 5424 and RFC 3164 alike, so there are no extra ports per format.
syslog-ng's syslog parser, when given flags(syslog-protocol), reads a message as RFC 5424 if it
starts with "<PRI>1 " and as RFC 3164 otherwise. syslog() always sets that flag. The LF
listeners set it themselves, because without it network() reads everything as RFC 3164 and
turns an RFC 5424 header into PROGRAM "1".

Each message is written as one JSON object per line to `<run>/out/messages.jsonl`. The keys are
always present (empty string when the message has no such field):
  listener  which listener received it (one of LISTENERS)
  RAWMSG    the message exactly as received, framing removed (flags(store-raw-message)); exact
            for UTF-8 only: syslog-ng writes an invalid byte as the four characters \\xNN
  MSG, PROGRAM, PID, MSGID, HOST, FACILITY, SEVERITY
  ISODATE   the header's time in ISO 8601 with 6 fraction digits (RFC 3164: the year is guessed)
  PRI       the priority as a JSON number
  RECEIVED  when syslog-ng received it: Unix time with 6 fraction digits (for latency figures)
plus SDATA when the message has structured data: {sd-id: {param: value}}. syslog-ng nests a
param name that holds a dot, so `a.b="v"` becomes {"a": {"b": "v"}}.

JSON escaping costs syslog-ng about 10 µs per KB of value on a 2-vCPU VM, so for 1 KB messages
the full record caps it near 50k messages/s. `SyslogNg(raw_only=True)` writes only listener,
PROGRAM, RAWMSG and RECEIVED (about 90k/s), for benchmarks that must not be held back by the receiver.

The log path uses flags(flow-control), so a TCP or TLS sender is slowed down rather than
dropped when the file writer lags. UDP cannot be flow-controlled: the kernel drops datagrams
when its socket buffer is full, and `stats()` does not see those drops.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from tests.peers.lifecycle import Restartable

HOST = "127.0.0.1"
LISTENERS = ("udp", "tcp", "tcp_lf", "tls", "tls_lf")
PROBE_PROGRAM = "syslog-ng-peer-probe"
DEFAULT_LOG_MSG_SIZE = 262144  # syslog-ng's own default (65536) drops larger octet-counted frames
MAX_CONNECTIONS = 100  # per TCP/TLS listener; syslog-ng's default of 10 is easy to reach
# JSON key -> syslog-ng template, for each output line. RAW_KEYS is what the readiness probe needs.
RAW_KEYS = {"listener": "${SOURCE}", "PROGRAM": "${PROGRAM}", "RAWMSG": "${RAWMSG}", "RECEIVED": "${R_UNIXTIME}"}
FULL_KEYS = {**RAW_KEYS, "MSG": "${MSG}", "PID": "${PID}", "MSGID": "${MSGID}", "HOST": "${HOST}",
             "PRI": "int(${PRI})", "FACILITY": "${FACILITY}", "SEVERITY": "${LEVEL}", "ISODATE": "${ISODATE}"}
SDATA_ARGS = "--scope sdata --rekey .SDATA.* --replace-prefix .SDATA.=SDATA."
# syslog-ng splits log-iw-size() between max-connections(); under 100 per connection it clamps
# the share up to 100 and logs a warning at every start. A bigger window did not speed it up.
WINDOW = 100 * MAX_CONNECTIONS

SYSLOG_NG: str | None = shutil.which("syslog-ng") or shutil.which("syslog-ng", path="/usr/sbin")
SYSLOG_NG_CTL: str | None = shutil.which("syslog-ng-ctl", path=str(Path(SYSLOG_NG).parent)) if SYSLOG_NG else None


def require_syslog_ng() -> str:
    """The syslog-ng binary; the test fails without it under CI=true and skips elsewhere."""
    import pytest  # here, so the benchmarks can import this module without pytest

    if SYSLOG_NG is None:
        reason = "syslog-ng not installed: apt-get install syslog-ng-core"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return SYSLOG_NG


@dataclass(frozen=True)
class SyslogCerts:
    """PEM files for the TLS listeners and for the clients that talk to them."""

    ca_file: Path  # the CA that signed the server and client certificates
    server_cert: Path  # for "localhost" and 127.0.0.1
    server_key: Path
    client_cert: Path  # for mutual TLS
    client_key: Path
    untrusted_ca_file: Path  # another CA, which signed neither certificate


def make_certs(directory: Path) -> SyslogCerts:
    directory.mkdir(parents=True, exist_ok=True)
    certs = SyslogCerts(
        ca_file=directory / "ca.pem", server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem", client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem", untrusted_ca_file=directory / "untrusted-ca.pem",
    )
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(certs.ca_file))
    trustme.CA().cert_pem.write_to_path(str(certs.untrusted_ca_file))
    _write_leaf(ca.issue_cert("localhost", HOST), certs.server_cert, certs.server_key)
    _write_leaf(ca.issue_cert("syslog-ng-peer-client.localhost"), certs.client_cert, certs.client_key)
    return certs


def _write_leaf(leaf: trustme.LeafCert, cert_file: Path, key_file: Path) -> None:
    cert_file.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))


def free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct loopback ports, each free for both TCP and UDP at the time of asking."""
    ports: dict[str, int] = {}
    with ExitStack() as held:  # hold every socket until all are chosen, so no port repeats
        while len(ports) < len(names):
            tcp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            tcp.bind((HOST, 0))
            port = tcp.getsockname()[1]
            udp = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            try:
                udp.bind((HOST, port))
            except OSError:
                continue  # free for TCP only; ask for another
            ports[names[len(ports)]] = port
    return ports


class SyslogNg(Restartable):
    """One syslog-ng process; its ports stay the same across `restart()`."""

    def __init__(self, directory: Path, certs: SyslogCerts | None = None, *,
                 require_client_cert: bool = False, log_msg_size: int = DEFAULT_LOG_MSG_SIZE,
                 raw_only: bool = False) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        (directory / "out").mkdir(exist_ok=True)
        self.certs = certs or make_certs(directory / "certs")
        self.require_client_cert = require_client_cert
        self.log_msg_size = log_msg_size
        self.raw_only = raw_only
        self.ports = free_ports(LISTENERS)
        self.config = directory / "syslog-ng.conf"
        self.output = directory / "out" / "messages.jsonl"
        self.stderr = directory / "syslog-ng.stderr"
        self.control = directory / "syslog-ng.ctl"
        self._process: subprocess.Popen[bytes] | None = None
        self._records: list[dict[str, Any]] = []  # every output line read so far, probes included
        self._offset = 0  # bytes of the output file already in _records

    def address(self, listener: str) -> tuple[str, int]:
        return HOST, self.ports[_checked(listener)]

    def start(self, timeout: float = 10.0) -> None:
        if self._process is not None:
            raise RuntimeError("syslog-ng is already running")
        self.config.write_text(self._render_config())
        command = [_binary(), "-F", "--no-caps", "-e", "-f", str(self.config),
                   "-p", str(self.directory / "syslog-ng.pid"), "-R", str(self.directory / "syslog-ng.persist"),
                   "-c", str(self.control)]
        # Append, so errors() still shows what a previous run said after a restart.
        with (self.directory / "syslog-ng.stdout").open("ab") as out, self.stderr.open("ab") as err:
            self._process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()  # syslog-ng flushes its destinations on SIGTERM
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


    def messages(self, listener: str | None = None) -> list[dict[str, Any]]:
        """What syslog-ng has written so far, readiness probes left out."""
        records = [record for record in self._read() if record["PROGRAM"] != PROBE_PROGRAM]
        if listener is None:
            return records
        wanted = _checked(listener)
        return [record for record in records if record["listener"] == wanted]

    def raw_messages(self, listener: str | None = None) -> list[bytes]:
        return [record["RAWMSG"].encode() for record in self.messages(listener)]

    def wait_for(self, count: int, listener: str | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
        """At least `count` messages (on `listener`, or on any); AssertionError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while len(got := self.messages(listener)) < count:
            if time.monotonic() > deadline:
                raws = [record["RAWMSG"][:200] for record in got[-10:]]
                raise AssertionError(
                    f"syslog-ng got {len(got)} of {count} message(s) on {listener or 'any listener'} "
                    f"in {timeout} s; last RAWMSG (cut to 200 chars): {raws!r}\n"
                    f"syslog-ng stderr, last lines:\n{self._stderr_tail()}")
            time.sleep(0.02)
        return got

    def stats(self) -> str:
        """`syslog-ng-ctl stats` as CSV text; stats-level(1) adds the output file's `dropped` line:
        `dst.file;d_json#0;<output path>;a;dropped;N`."""
        if SYSLOG_NG_CTL is None:
            raise RuntimeError(f"syslog-ng-ctl is not next to {SYSLOG_NG}")
        return subprocess.run([SYSLOG_NG_CTL, "stats", "-c", str(self.control)], capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def errors(self) -> str:
        """syslog-ng's own log (-e sends it to stderr): framing, TLS and startup errors among others."""
        return self.stderr.read_text(encoding="utf-8", errors="replace") if self.stderr.exists() else ""

    def _wait_ready(self, timeout: float) -> None:
        # syslog-ng binds every listener before its main loop starts and exits if any bind fails,
        # so a probe through the UDP listener into the output file means all listeners are up. A
        # plain TCP connect would do for the TCP ports, but on the TLS ports it logs an SSL error.
        probe = f"<14>1 - - {PROBE_PROGRAM} - - - {uuid.uuid4().hex}"  # unique: a restart finds its own
        deadline = time.monotonic() + timeout
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while not any(record["RAWMSG"] == probe for record in self._read()):
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"syslog-ng exited with {self._process.returncode}:\n{self._stderr_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"syslog-ng not ready after {timeout} s:\n{self._stderr_tail()}")
                udp.sendto(probe.encode(), self.address("udp"))
                time.sleep(0.02)

    def _read(self) -> list[dict[str, Any]]:
        """Parse the lines appended since the last call; a line still being written waits."""
        if self.output.exists():
            with self.output.open("rb") as file:
                file.seek(self._offset)
                chunk = file.read()
            complete = chunk[:chunk.rfind(b"\n") + 1]
            self._offset += len(complete)
            self._records.extend(json.loads(line) for line in complete.splitlines())
        return self._records

    def _stderr_tail(self, lines: int = 20) -> str:
        return "\n".join(self.errors().splitlines()[-lines:])

    def _render_config(self) -> str:
        certs = self.certs
        verify = (f'peer-verify(required-trusted) ca-file("{certs.ca_file}")' if self.require_client_cert
                  else "peer-verify(optional-untrusted)")
        tls = f'tls(key-file("{certs.server_key}") cert-file("{certs.server_cert}") {verify})'
        stream = f"max-connections({MAX_CONNECTIONS}) log-iw-size({WINDOW})"
        flags = "flags(store-raw-message)"
        lf_flags = "flags(syslog-protocol, store-raw-message)"
        drivers = {  # listener -> (driver, options other than the address)
            "udp": ("syslog", f'transport("udp") {flags}'),
            "tcp": ("syslog", f'transport("tcp") {stream} {flags}'),
            "tcp_lf": ("network", f'transport("tcp") {stream} {lf_flags}'),
            "tls": ("syslog", f'transport("tls") {tls} {stream} {flags}'),
            "tls_lf": ("network", f'transport("tls") {tls} {stream} {lf_flags}'),
        }
        # Each source is named after its listener, so ${SOURCE} tells the listeners apart.
        sources = [f'source {name} {{ {driver}(ip("{HOST}") port({self.ports[name]}) {options}); }};'
                   for name, (driver, options) in drivers.items()]
        keys = RAW_KEYS if self.raw_only else FULL_KEYS
        format_json = " ".join([*(f"--pair {key}={value}" for key, value in keys.items()),
                                *([] if self.raw_only else [SDATA_ARGS])])
        return "\n".join([
            "@version: 3.38",
            (f"options {{ log-msg-size({self.log_msg_size}); keep-hostname(yes); chain-hostnames(no);"
             " frac-digits(6); stats-level(1); use-dns(no); dns-cache(no); stats-freq(0); mark-freq(0); };"),
            *sources,
            f'destination d_json {{ file("{self.output}" template("$(format-json {format_json})\\n")); }};',
            f"log {{ {' '.join(f'source({name});' for name in drivers)} destination(d_json); flags(flow-control); }};",
            "",
        ])


def _binary() -> str:
    if SYSLOG_NG is None:
        raise RuntimeError("syslog-ng not installed: apt-get install syslog-ng-core")
    return SYSLOG_NG


def _checked(listener: str) -> str:
    if listener not in LISTENERS:
        raise ValueError(f"unknown listener {listener!r}; one of {LISTENERS}")
    return listener
