"""A throwaway PostgreSQL cluster for the tests: initdb in a temp dir, TLS on, one free port.

Nothing depends on a system service: the tests start their own server from the Debian binaries
(/usr/lib/postgresql/<n>/bin), on 127.0.0.1 only, and remove it afterwards. initdb refuses to
run as root, so as root the cluster runs as the `postgres` user in a temp dir it owns.
"""
from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import trustme
from psycopg import sql

FORWARDER = "forwarder"


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory, or None when none is installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresCluster:
    """One cluster: `start()` it, `create_database()` per test, `stop()` it at the end."""

    def __init__(self, bin_dir: Path | None = None) -> None:
        found = bin_dir or postgres_bin()
        if found is None:
            raise RuntimeError("no PostgreSQL server installed (/usr/lib/postgresql/*/bin/initdb)")
        self.bin = found
        self.root = Path(tempfile.mkdtemp(prefix="df-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.log = self.root / "postgres.log"
        self._port = _free_port()
        self._admin_password = secrets.token_urlsafe(18)
        self._password = secrets.token_urlsafe(18)
        self._ca = trustme.CA(organization_name="defender-forwarder test PostgreSQL CA")
        self._ca_file = self.root / "ca.pem"
        # root cannot run initdb: the cluster runs as `postgres`, in a dir it owns.
        self._user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                entry = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("initdb refuses root, and there is no `postgres` user to run the test "
                                   "cluster as (Debian's postgresql package creates it)") from None
            self._user = {"user": entry.pw_uid, "group": entry.pw_gid}
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._server: subprocess.Popen[bytes] | None = None
        self._initdb()

    # ---- properties the tests use -----------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._port

    @property
    def password(self) -> str:
        """The `forwarder` role's password."""
        return self._password

    @property
    def ca_file(self) -> Path:
        """The CA that signed the server's certificate (for sslrootcert)."""
        return self._ca_file

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (bench/scale.py counts its CPU)."""
        return self._server.pid if self._server is not None else None

    def url(self, dbname: str, user: str = FORWARDER) -> str:
        return f"postgresql://{user}@127.0.0.1:{self._port}/{dbname}"

    # ---- life cycle ---------------------------------------------------------------------------------
    def _run(self, *args: str | Path) -> None:
        result = subprocess.run([str(a) for a in args], cwd=self.root, capture_output=True, text=True,
                                **self._user)
        if result.returncode:
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stderr or result.stdout}\n"
                               f"{self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def _write(self, path: Path, text: str | bytes, mode: int = 0o600) -> None:
        data = text.encode() if isinstance(text, str) else text
        path.write_bytes(data)
        os.chmod(path, mode)
        if self._user:
            os.chown(path, self._user["user"], self._user["group"])

    def _initdb(self) -> None:
        pwfile = self.root / "pwfile"
        self._write(pwfile, self._admin_password + "\n")
        self._run(self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "scram-sha-256",
                  "--pwfile", pwfile, "-E", "UTF8", "--locale=C.UTF-8",
                  "--no-sync")  # a throwaway cluster: no need to wait for its files to reach the disk
        pwfile.unlink()
        self.sockets.mkdir()
        if self._user:
            os.chown(self.sockets, self._user["user"], self._user["group"])
        cert = self._ca.issue_cert("127.0.0.1", "localhost")
        self._write(self.data / "server.crt", b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        self._write(self.data / "server.key", cert.private_key_pem.bytes())  # postgres wants 0600
        self._ca.cert_pem.write_to_path(str(self._ca_file))
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = '127.0.0.1'\nport = {self._port}\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                # Test speed only: a test cluster need not survive a power loss (it is thrown
                # away), and fsync costs most of the time of CREATE DATABASE and each commit.
                # A kill -9 of the server still loses nothing that was committed.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
            )
        # TCP only with TLS and a password; the local socket for nobody but the cluster's owner.
        self._write(self.data / "pg_hba.conf",
                    "local all postgres scram-sha-256\n"
                    "hostssl all all 127.0.0.1/32 scram-sha-256\n")

    def start(self) -> "PostgresCluster":
        """Start the postmaster as our own child and wait until it accepts connections.

        Not `pg_ctl start`: pg_ctl detaches the server, so it becomes a child of PID 1, and a
        PID 1 that reaps no orphans (a container's) keeps a killed postmaster as a zombie whose
        pid still "exists", which blocks the next start. Our child we reap ourselves."""
        with open(self.log, "ab") as log:
            self._server = subprocess.Popen([str(self.bin / "postgres"), "-D", str(self.data)], cwd=self.root,
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                            start_new_session=True, **self._user)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self._server.poll() is not None or time.monotonic() > deadline:
                self._server.kill()
                self._server.wait()
                raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")
            time.sleep(0.02)
        self._ensure_forwarder()
        return self

    def _ready(self) -> bool:
        """The postmaster says so in its pid file (as `pg_ctl -w` reads it)."""
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0] == str(self._server.pid) and lines[7].strip() == "ready"

    def stop(self) -> None:
        """A fast shutdown (SIGINT): sessions are ended, the data is checkpointed."""
        if self._server is not None and self._server.poll() is None:
            self._server.send_signal(signal.SIGINT)
            self._server.wait(60)
        self._server = None

    def restart(self) -> None:
        """Stop and start again, on the same port."""
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would (a later start() recovers)."""
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            self._server = None

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.cleanup()

    # ---- administration -----------------------------------------------------------------------------
    def admin(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        """A superuser connection (autocommit), over TLS verified against the test CA."""
        return psycopg.connect(self.url(dbname, "postgres"), password=self._admin_password, sslmode="verify-full",
                               sslrootcert=str(self._ca_file), autocommit=True, connect_timeout=10)

    def _ensure_forwarder(self) -> None:
        with self.admin() as db:
            if db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (FORWARDER,)).fetchone() is None:
                db.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(FORWARDER), sql.Literal(self._password)))

    def create_database(self, name: str, owner: str = FORWARDER) -> str:
        """A new empty database owned by `owner`; its URL (the forwarder's user, no password)."""
        with self.admin() as db:
            # FILE_COPY (PostgreSQL 15+) copies template1's files whole: half the time of the
            # default, which writes every block to the WAL (no use to a throwaway cluster).
            strategy = " STRATEGY FILE_COPY" if db.info.server_version >= 150000 else ""
            db.execute(sql.SQL("CREATE DATABASE {} OWNER {}" + strategy).format(
                sql.Identifier(name), sql.Identifier(owner)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with self.admin() as db:
            db.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
