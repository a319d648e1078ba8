"""A real SMTP server on loopback for tests: aiosmtpd 1.4 in its own thread.

Not a fake: clients speak real SMTP over a real socket to aiosmtpd's protocol implementation
(STARTTLS, SMTPS, AUTH PLAIN/LOGIN, dot-unstuffing, SMTPUTF8, SIZE), and this module adds what a
test needs around it: certificates from a trustme CA (`ca_file` for clients), users, recipient
and content policies that answer chosen reply codes, a record of every accepted message and of
every reply to MAIL/RCPT/DATA, and stop/start/restart on one port.

TLS (`tls=`):
  "starttls" (default)  STARTTLS offered and required: every command but EHLO/NOOP/STARTTLS/QUIT
                        before it gets aiosmtpd's `530 Must issue a STARTTLS command first`.
  "implicit"            SMTPS: TLS from the first byte (smtplib.SMTP_SSL); no STARTTLS offered.
  "none"                plain text only; no STARTTLS offered.
AUTH (`users=`): with users, AUTH PLAIN and LOGIN are offered, by default only once the
connection is encrypted (`auth_require_tls`; an AUTH over plain text gets 538), and MAIL FROM
without a successful AUTH gets `530 5.7.0 Authentication required`; a wrong user or password
gets `535 5.7.8 Authentication credentials invalid`. Without users, AUTH is not advertised and
answers `503 5.5.1 Error: authentication not enabled` (Postfix's text).

Policy hooks, checked in this order (each reply code/text is the caller's; 421 also closes the
connection after the reply, as RFC 5321 §3.8 has it; smtplib closes its side on 421 as well):
  MAIL FROM  authentication (above) -> temporary_failure(n): 421, the next n MAIL commands
  RCPT TO    reject_recipient(address, code, text, times): per address, case-insensitive
  DATA       reject_data(predicate, code, text, times): predicate(parsed message) true -> refused
A rule with `times=n` answers n times and is then gone (a 4xx that clears); times=None: forever.
Accepted replies: `250 2.1.0 Ok` (MAIL), `250 2.1.5 Ok` (RCPT), `250 2.0.0 Ok: queued` (DATA).

Observation: `messages()` / `wait_for()` give `Received` records (envelope, raw bytes as received
after dot-unstuffing, the parsed EmailMessage, TLS, AUTH user); `transactions` gives one `SmtpReply` per
reply to MAIL/RCPT/DATA, accepted or not, including aiosmtpd's own (503 bad sequence, 501 syntax,
552 size). Messages, the log and the rules survive stop() and restart().

Deliberately not done: relaying or delivery of any kind (an accepted message is only recorded);
replies to other commands are not logged, nor are refusals aiosmtpd sends before a command is
dispatched (the 530 STARTTLS-first, 500 line too long) — a test sees those on the client side;
client certificates only with `client_ca=` (then required); no PIPELINING, CHUNKING/BDAT, DSN, VRFY/EXPN answers beyond
aiosmtpd's; no SPF/DKIM/greylisting logic (reject_recipient with a 4xx and times=n stands in for
greylisting); no standalone/benchmark mode.

Gotchas of aiosmtpd 1.4 handled here: `Controller(port=0)` fails (it connects to
its own port to confirm startup), so a free port is picked first and kept for restarts;
`AuthResult(success=False)` must say `handled=False` or no reply is sent and the client hangs;
with implicit TLS aiosmtpd does not count the connection as encrypted for `auth_require_tls`, so
that check is passed to aiosmtpd only for STARTTLS/plain with users; a MAIL FROM:<> reaches the
handler as "<>" (kept in aiosmtpd's envelope, "" in Received); Controller.stop() leaves open client
sockets unclosed on Python 3.11, so stop() aborts them first. Every successful AUTH makes aiosmtpd
log a `Session.login_data is deprecated` warning (mail.log logger): harmless noise.
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import functools
import re
import ssl
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.peers.lifecycle import CaSignedPeer, free_port
from tests.peers.mutual_tls import require_client_certificate

HOST = "127.0.0.1"
TlsMode = Literal["starttls", "implicit", "none"]
DEFAULT_DATA_SIZE_LIMIT = 32 * 1024 * 1024  # aiosmtpd's default, advertised as SIZE
READY_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0

UNKNOWN_USER_TEXT = "5.1.1 <{address}>: Recipient address rejected: User unknown"
TRY_LATER_TEXT = "4.7.1 <{address}>: Recipient address rejected: Try again later"
DATA_REJECTED_TEXT = "5.7.1 Message content rejected"
NOT_AVAILABLE_TEXT = "4.3.2 Service not available, closing transmission channel"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
AUTH_NOT_ENABLED = "503 5.5.1 Error: authentication not enabled"
MAIL_OK, RCPT_OK, DATA_OK = "250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.0.0 Ok: queued"

_ANGLE = re.compile(r"<([^>]*)>")


# ---------------------------------------------------------------- public model

@dataclass(frozen=True)
class Received:
    """One accepted message."""

    sender: str  # envelope sender (MAIL FROM), "" for the null sender <>
    recipients: list[str]  # envelope recipients (RCPT TO) that were accepted, in order
    raw: bytes  # the DATA as received (CRLF line ends, dot-unstuffed, without the final ".")
    # email.message_from_bytes(raw, policy=email.policy.default): parsed from the wire's bytes,
    # so text bodies keep CRLF line ends (get_content() ends lines with "\r\n"); headers do not.
    message: EmailMessage
    tls: bool  # the session was encrypted (STARTTLS or implicit)
    tls_version: str | None  # e.g. "TLSv1.3"
    authenticated_as: str | None  # the AUTH user name; None when not authenticated
    session: int  # 1-based number of the connection (see SmtpReply.session)
    mail_options: tuple[str, ...]  # MAIL FROM parameters, upper-cased (e.g. "SIZE=123", "SMTPUTF8")
    t: float  # time.time() when accepted


@dataclass(frozen=True)
class SmtpReply:
    """The final reply to one MAIL, RCPT or DATA command (DATA's 354 is not recorded)."""

    session: int  # 1-based; numbered when a connection first sends MAIL/RCPT/DATA
    command: Literal["MAIL", "RCPT", "DATA"]
    address: str | None  # MAIL/RCPT: the <address> as sent ("" for <>); None for DATA
    code: int
    text: str  # the reply after the code, e.g. "5.1.1 <x@y>: Recipient address rejected: User unknown"
    tls: bool
    authenticated_as: str | None
    t: float

    @property
    def refused(self) -> bool:
        return self.code >= 400


@dataclass
class _Rule:
    code: int
    text: str
    times: int | None  # answers left; None = forever


@dataclass
class _DataRule(_Rule):
    predicate: Callable[[EmailMessage], bool] = lambda message: False


def _check_code(code: int) -> None:
    if not 400 <= code <= 599:
        raise ValueError(f"a refusal needs a 4xx or 5xx code, not {code}")


def _use(rule: _Rule) -> None:
    """Under the lock: one answer given by `rule`."""
    if rule.times is not None:
        rule.times -= 1


def _address(argument: str | None) -> str | None:
    """The address of a MAIL/RCPT argument ("FROM:<a@b> SIZE=1" -> "a@b")."""
    if argument is None:
        return None
    match = _ANGLE.search(argument)
    if match:
        return match.group(1)
    _, _, rest = argument.partition(":")
    return rest.split()[0] if rest.split() else ""


def _tls_version(protocol: SMTP) -> str | None:
    transport = protocol.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.version() if ssl_object is not None else None


def _user(session: Session) -> str | None:
    return session.auth_data if session.authenticated and isinstance(session.auth_data, str) else None


# ---------------------------------------------------------------- aiosmtpd glue

class _Protocol(SMTP):
    """aiosmtpd's SMTP, one per connection, recording the replies to MAIL/RCPT/DATA."""

    def __init__(self, server: SmtpServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.server = server
        self.number = 0  # session number, given on first use
        self._command: tuple[Literal["MAIL", "RCPT", "DATA"], str | None] | None = None
        self._last_code = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None and self.transport is None
        super().connection_made(transport)
        if first:
            self.server._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.server._closed(self)
        super().connection_lost(error)

    def session_number(self) -> int:
        if not self.number:
            self.number = self.server._next_session()
        return self.number

    async def push(self, status: str | bytes) -> None:
        await super().push(status)
        if self._command is None:
            return
        line = status.decode("utf-8", "replace") if isinstance(status, bytes) else status
        code = int(line[:3]) if line[:3].isdigit() else 0
        if code == 354:
            return  # DATA's go-ahead, not its answer
        command, argument = self._command
        assert self.session is not None
        self._last_code = code
        self.server._log(SmtpReply(
            session=self.session_number(), command=command,
            address=None if command == "DATA" else _address(argument), code=code, text=line[4:],
            tls=_tls_version(self) is not None, authenticated_as=_user(self.session), t=time.time()))

    async def _logged(self, command: Literal["MAIL", "RCPT", "DATA"], argument: str | None,
                      method: Callable[[str | None], Awaitable[None]]) -> None:
        self._command, self._last_code = (command, argument), 0
        try:
            await method(argument)
        finally:
            self._command = None
        if self._last_code == 421 and self.transport is not None:
            self.transport.close()  # 421: "closing transmission channel"

    @functools.wraps(SMTP.smtp_MAIL)
    async def smtp_MAIL(self, arg: str | None) -> None:
        await self._logged("MAIL", arg, super().smtp_MAIL)

    @functools.wraps(SMTP.smtp_RCPT)
    async def smtp_RCPT(self, arg: str | None) -> None:
        await self._logged("RCPT", arg, super().smtp_RCPT)

    @functools.wraps(SMTP.smtp_DATA)
    async def smtp_DATA(self, arg: str | None) -> None:
        await self._logged("DATA", arg, super().smtp_DATA)  # type: ignore[arg-type]

    def abort(self) -> None:
        """Drop the connection now (stop())."""
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]


class _Handler:
    """aiosmtpd handler hooks (run on the server's event loop thread); the policy lives in
    SmtpServer."""

    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_EHLO(self, protocol: SMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        session.host_name = hostname  # the 5-argument hook must do what aiosmtpd otherwise does
        if self.server.users is None:
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        return responses

    async def handle_AUTH(self, protocol: SMTP, session: Session, envelope: Envelope, args: list[str]) -> Any:
        return AUTH_NOT_ENABLED if self.server.users is None else MISSING

    async def handle_MAIL(self, protocol: SMTP, session: Session, envelope: Envelope, address: str,
                          mail_options: list[str]) -> str:
        refusal = self.server._mail_refusal(session)
        if refusal is not None:
            return refusal
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return MAIL_OK

    async def handle_RCPT(self, protocol: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.server._rcpt_refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return RCPT_OK

    async def handle_DATA(self, protocol: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(protocol, _Protocol)
        raw = bytes(envelope.original_content or b"")
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        refusal = self.server._data_refusal(message)
        if refusal is not None:
            return refusal
        version = _tls_version(protocol)
        self.server._store(Received(
            sender="" if envelope.mail_from == "<>" else envelope.mail_from or "",
            recipients=list(envelope.rcpt_tos), raw=raw, message=message, tls=version is not None,
            tls_version=version, authenticated_as=_user(session),
            session=protocol.session_number(), mail_options=tuple(envelope.mail_options), t=time.time()))
        return DATA_OK


class _Controller(Controller):
    def __init__(self, server: SmtpServer, handler: _Handler, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.peer = server

    def factory(self) -> SMTP:
        return _Protocol(self.peer, self.handler, **self.SMTP_kwargs)


# ---------------------------------------------------------------- the server

class SmtpServer(CaSignedPeer):
    """A real SMTP server on 127.0.0.1, one port that stays the same across restart().

    Thread-safe: tests may add rules and read what was received while clients are served."""

    def __init__(self, *, tls: TlsMode = "starttls", users: dict[str, str] | None = None,
                 hostname: str = "localhost", auth_require_tls: bool = True, ca: trustme.CA | None = None,
                 port: int = 0, data_size_limit: int | None = DEFAULT_DATA_SIZE_LIMIT,
                 client_ca: trustme.CA | None = None) -> None:
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError(f"tls must be 'starttls', 'implicit' or 'none', not {tls!r}")
        self.tls: TlsMode = tls
        self.users = dict(users) if users is not None else None
        self.hostname = hostname  # the name in the greeting and EHLO reply; also in the certificate
        self.auth_require_tls = auth_require_tls
        self.data_size_limit = data_size_limit
        self.ca = ca or trustme.CA()
        self.client_ca = client_ca  # when set: mutual TLS, a client certificate it signed required
        self._port = port
        self._controller: _Controller | None = None
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # notified when a message is stored
        self._messages: list[Received] = []
        self._replies: list[SmtpReply] = []
        self._recipient_rules: dict[str, _Rule] = {}
        self._data_rules: list[_DataRule] = []
        self._unavailable: list[_Rule] = []
        self._sessions = 0
        self._open: set[_Protocol] = set()  # touched on the loop thread only
        self._write_ca("smtp-server-")

    # ---- lifecycle

    @property
    def host(self) -> str:
        return HOST

    @property
    def running(self) -> bool:
        return self._controller is not None

    def start(self) -> None:
        if self._controller is not None:
            raise RuntimeError("SmtpServer is already running")
        if not self._port:
            # Controller(port=0) cannot work (it connects to its own port to confirm startup).
            self._port = free_port()
        controller = _Controller(self, _Handler(self), hostname=HOST, port=self._port,
                                 ready_timeout=READY_TIMEOUT, **self._smtp_options())
        controller.start()
        self._controller = controller

    def _smtp_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"server_hostname": self.hostname, "data_size_limit": self.data_size_limit,
                                   # Implicit TLS is encrypted though aiosmtpd does not know it; without
                                   # users, AUTH should get handle_AUTH's 503 rather than a 538.
                                   "auth_require_tls": (self.auth_require_tls and self.tls != "implicit"
                                                        and self.users is not None)}
        if self.users is not None:
            options["authenticator"] = self._authenticate
        if self.tls != "none":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ca.issue_cert(HOST, "localhost", self.hostname).configure_cert(context)
            require_client_certificate(context, self.client_ca)
            if self.tls == "implicit":
                options["ssl_context"] = context
            else:
                options.update(tls_context=context, require_starttls=True)
        return options

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is None:
            return
        # Controller.stop() cancels the sessions' tasks but, on 3.11, may close the loop before
        # their sockets are closed: a client would hang instead of seeing the server go.
        try:
            asyncio.run_coroutine_threadsafe(self._abort_all(), controller.loop).result(STOP_TIMEOUT)
        except Exception:  # noqa: BLE001 - stopping anyway
            traceback.print_exc()
        controller.stop()

    async def _abort_all(self) -> None:
        for protocol in list(self._open):
            protocol.abort()
        for _ in range(3):
            await asyncio.sleep(0)  # let connection_lost run and the sockets close


    # ---- test controls

    def reject_recipient(self, address: str, code: int = 550, text: str | None = None, *,
                         times: int | None = None) -> None:
        """RCPT TO <address> (case-insensitive) gets `code text`. `text` may contain
        "{address}"; by default UNKNOWN_USER_TEXT for 5xx, TRY_LATER_TEXT for 4xx. `times=n`:
        only the next n attempts, then the address is accepted. Replaces an earlier rule for it."""
        _check_code(code)
        if text is None:
            text = TRY_LATER_TEXT if code < 500 else UNKNOWN_USER_TEXT
        with self._lock:
            self._recipient_rules[address.lower()] = _Rule(code, text.replace("{address}", address), times)

    def accept_recipient(self, address: str) -> None:
        """Drop the reject_recipient() rule for `address`."""
        with self._lock:
            self._recipient_rules.pop(address.lower(), None)

    def reject_data(self, predicate: Callable[[EmailMessage], bool], code: int = 554,
                    text: str = DATA_REJECTED_TEXT, *, times: int | None = None) -> None:
        """After DATA, a message for which predicate(parsed message) is true gets `code text` and
        is not stored. Rules are checked in the order added; the first that matches answers. A
        predicate that raises gets `451 4.3.0` (and its traceback printed)."""
        _check_code(code)
        with self._lock:
            self._data_rules.append(_DataRule(code, text, times, predicate))

    def temporary_failure(self, n: int, code: int = 421, text: str = NOT_AVAILABLE_TEXT) -> None:
        """The next `n` MAIL FROM commands (from authenticated clients, when users are set) get
        `code text`; with 421 the connection is then closed."""
        _check_code(code)
        if n > 0:
            with self._lock:
                self._unavailable.append(_Rule(code, text, n))

    def reset(self) -> None:
        """Forget messages, the reply log and every rule (users and TLS stay)."""
        with self._lock:
            self._messages.clear()
            self._replies.clear()
            self._recipient_rules.clear()
            self._data_rules.clear()
            self._unavailable.clear()

    # ---- observation

    def messages(self) -> list[Received]:
        """Accepted messages in arrival order."""
        with self._lock:
            return list(self._messages)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """At least `count` accepted messages; AssertionError after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self._messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    last = [(r.session, r.command, r.address, r.code, r.text) for r in self._replies[-10:]]
                    raise AssertionError(f"SMTP server accepted {len(self._messages)} of {count} message(s) "
                                         f"within {timeout} s; last replies (session, command, address, code, "
                                         f"text): {last}")
                self._changed.wait(remaining)
            return list(self._messages)

    @property
    def transactions(self) -> list[SmtpReply]:
        """Every reply to MAIL/RCPT/DATA, in order, over all sessions."""
        with self._lock:
            return list(self._replies)

    @property
    def refused(self) -> list[SmtpReply]:
        """The 4xx/5xx entries of `transactions`."""
        return [reply for reply in self.transactions if reply.refused]

    # ---- called from the server's event loop thread

    def _authenticate(self, protocol: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        users = self.users or {}
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode("utf-8", "replace")
            if user in users and users[user] == auth_data.password.decode("utf-8", "replace"):
                return AuthResult(success=True, auth_data=user)
        # handled=False, or aiosmtpd sends no reply at all: 535 5.7.8.
        return AuthResult(success=False, handled=False)

    def _mail_refusal(self, session: Session) -> str | None:
        if self.users is not None and not session.authenticated:
            return AUTH_REQUIRED
        with self._lock:
            while self._unavailable and self._unavailable[0].times == 0:
                self._unavailable.pop(0)
            if not self._unavailable:
                return None
            rule = self._unavailable[0]
            _use(rule)
            return f"{rule.code} {rule.text}"

    def _rcpt_refusal(self, address: str) -> str | None:
        key = address.lower()
        with self._lock:
            rule = self._recipient_rules.get(key)
            if rule is None:
                return None
            _use(rule)
            if rule.times is not None and rule.times <= 0:
                del self._recipient_rules[key]
            return f"{rule.code} {rule.text}"

    def _data_refusal(self, message: EmailMessage) -> str | None:
        with self._lock:
            rules = [rule for rule in self._data_rules if rule.times != 0]
        for rule in rules:  # outside the lock: a predicate may call back into the server
            try:
                matched = rule.predicate(message)
            except Exception as error:  # noqa: BLE001 - a test's predicate failed
                traceback.print_exc()
                return f"451 4.3.0 Error: reject_data predicate raised {type(error).__name__}"
            if matched:
                with self._lock:
                    _use(rule)
                    self._data_rules = [r for r in self._data_rules if r.times != 0]
                return f"{rule.code} {rule.text}"
        return None

    def _store(self, received: Received) -> None:
        with self._lock:
            self._messages.append(received)
            self._changed.notify_all()

    def _log(self, reply: SmtpReply) -> None:
        with self._lock:
            self._replies.append(reply)

    def _next_session(self) -> int:
        with self._lock:
            self._sessions += 1
            return self._sessions

    def _opened(self, protocol: _Protocol) -> None:
        self._open.add(protocol)

    def _closed(self, protocol: _Protocol) -> None:
        self._open.discard(protocol)
