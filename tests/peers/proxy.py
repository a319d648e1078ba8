"""A real HTTP proxy (Debian `tinyproxy`) for tests: started on a free loopback port with a
generated config, its log read back to prove which CONNECTs went through it.

tinyproxy allows CONNECT to any port when the config has no `ConnectPort` line (its default
config restricts it to 443 and 563; the peers listen on free high ports). `Proxy(refuse=True)`
gives a proxy that answers every CONNECT with 403, as a proxy that does not let the forwarder
out would. `Proxy(auth=(user, password))` gives one that demands those credentials
(tinyproxy's `BasicAuth`, 1.11+: a CONNECT without them, or with others, is refused; `url`
then carries them). tinyproxy's config takes only letters, digits, `-`, `.` and `_` in either.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.peers.lifecycle import free_port

HOST = "127.0.0.1"
TINYPROXY = shutil.which("tinyproxy") or "/usr/sbin/tinyproxy"
if not os.path.exists(TINYPROXY):
    TINYPROXY = "/usr/bin/tinyproxy"


class Proxy:
    """One tinyproxy process in `run_dir`; `url` is what HTTPS_PROXY or `[forwarder] proxy` take."""

    def __init__(self, run_dir: Path, refuse: bool = False, auth: tuple[str, str] | None = None) -> None:
        if not os.access(TINYPROXY, os.X_OK):
            pytest.skip("tinyproxy is not installed (apt-get install tinyproxy; .ci/run does it)")
        self.run_dir = run_dir
        self.port = free_port()
        self.log_file = run_dir / "tinyproxy.log"
        self.url = f"http://{HOST}:{self.port}"
        if auth is not None:
            self.url = f"http://{quote(auth[0], safe='')}:{quote(auth[1], safe='')}@{HOST}:{self.port}"
        lines = [f"Port {self.port}", f"Listen {HOST}", f'LogFile "{self.log_file}"', "LogLevel Info",
                 f"Allow {HOST}", "MaxClients 100", "Timeout 60"]
        if auth is not None:
            lines.append(f"BasicAuth {auth[0]} {auth[1]}")
        if refuse:
            lines.append("ConnectPort 0")  # the man page's way to refuse every CONNECT
        self.config_file = run_dir / "tinyproxy.conf"
        self.config_file.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Proxy":
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(self.config_file)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((HOST, self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.process.poll() is not None:
                    raise RuntimeError(f"tinyproxy exited: {self.process.stderr.read().decode()}")  # type: ignore[union-attr]
                time.sleep(0.05)
        raise RuntimeError("tinyproxy did not listen in 10 s")

    def __exit__(self, *_: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def connects(self) -> list[str]:
        """The `host:port` of every CONNECT tinyproxy logged, in order."""
        return re.findall(r"CONNECT (\S+:\d+) HTTP", self.log())
