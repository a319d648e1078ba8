"""What every test peer's lifecycle shares once it has start() and stop(): a context manager,
and a restart on the same port (the peers keep their port across stop()); for a peer on one
loopback port, that port; for one whose TLS certificate a test CA signs, that CA as a file and
as a client context."""
from __future__ import annotations

import shutil
import socket
import ssl
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import trustme


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


class LoopbackPeer(Restartable):
    """A peer on one port of 127.0.0.1, which it keeps across stop(); `_port` is 0 until the
    first start() (the OS's pick), set by start()."""

    _port: int

    @property
    def port(self) -> int:
        """Known from the first start() on, also while stopped."""
        if not self._port:
            raise RuntimeError(f"{type(self).__name__} has not been started")
        return self._port


class CaSignedPeer(LoopbackPeer):
    """A loopback peer whose TLS certificate (for 127.0.0.1 and localhost) the test CA `ca`
    signs. `_write_ca` (from __init__) keeps that CA as PEM in a folder of the peer's own,
    removed with the peer."""

    ca: trustme.CA
    _ca_file: Path

    def _write_ca(self, prefix: str) -> None:
        directory = Path(tempfile.mkdtemp(prefix=prefix))
        weakref.finalize(self, shutil.rmtree, directory, ignore_errors=True)
        self._ca_file = directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self._ca_file))

    @property
    def ca_file(self) -> Path:
        """PEM of the CA that signed the peer's certificate."""
        return self._ca_file

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client context trusting only this peer's CA, host name checked (httpx `verify=`,
        splunklib `context=`, smtplib's `context=`)."""
        return ssl.create_default_context(cafile=str(self._ca_file))
