"""What every test peer's lifecycle shares once it has start() and stop(): a context manager,
and a restart on the same port (the peers keep their port across stop())."""
from __future__ import annotations

import socket
import time
from types import TracebackType
from typing import Any, Self


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Restartable:
    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def restart(self, down_for: float = 0.0) -> None:
        """Stop, stay down `down_for` seconds, start again on the same port."""
        self.stop()
        self._while_down()
        time.sleep(down_for)
        self.start()

    def _while_down(self) -> None:
        """What a restart loses beyond the connections (by default nothing: stored data stays)."""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
