"""A test peer in its own process, for the benchmarks: started with `--ready-file`, waited for,
stopped afterwards; so that the peer does not share the measured process's GIL."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@contextmanager
def standalone_peer(module: str, arguments: list[str], work: Path, name: str) -> Iterator[tuple[dict[str, Any], int]]:
    """Run `python -m <module> <arguments> --ready-file <work>/peer.json`; yields what the peer
    wrote to its ready file, and its pid."""
    ready = work / "peer.json"
    command = [sys.executable, "-m", module, *arguments, "--ready-file", str(ready)]
    with (work / "peer.err").open("wb") as err:
        process = subprocess.Popen(command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start (exit {process.returncode}):\n"
                                 f"{(work / 'peer.err').read_text(errors='replace')[-2000:]}")
            time.sleep(0.01)
        yield json.loads(ready.read_text()), process.pid
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
