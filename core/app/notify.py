"""`[notify]`: a warning by e-mail without Prometheus.

After each cycle (the daemon's, and `run --once`'s) the state of every subject is read from
the one status model (`core.app.status.collect`) and compared with the state last mailed:

  tenant:LABEL       ok | degraded | failing:CAUSE  (CAUSE: consent_revoked, consent_missing,
                     credential_invalid, unknown = another login refusal, error = anything else)
  sink:NAME          running | stopped
  certificate:APP    ok | expiring:DATE | expired:DATE   (apps in use that log in with a certificate)

Each change is mailed once; the changes of one cycle go in one message whose subject says
what changed (`[defender-forwarder] contoso: failing — consent revoked`; a tenant of several
sources names those at fault: `acme (graph_incidents): failing — ...`, and its body gives each
source's health and last success). A subject seen for
the first time in a good state is remembered without a mail; one first seen in a bad state
is mailed. What was mailed is kept in the state store, so that a restart neither mails again
nor misses a change made while the forwarder was down.

Sending never holds up polling: smtplib runs in a thread, from a task of its own, with a
timeout. A message the server did not take stays queued (and unrecorded) and is sent again
after the next cycle; the queue is in memory, and after a restart the comparison with the
store finds what is still unsaid. The body carries labels, ids, states, the forwarder's own
reason and remedy (redacted), never a secret or an alert's content.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any, Callable

from pydantic import SecretStr

from connectors.email import PORTS, header_text, open_session
from connectors.tls import ssl_context
from core.app.config import Config, NotifySettings, apps_in_use
from core.app.status import SinkRow, Status, TenantRow, collect
from core.model.secrets import REDACTOR
from core.sources.auth import certificate_expiry
from core.state.sqlite import SQLiteStore

log = logging.getLogger("defender_forwarder.notify")

PRODUCT = "[defender-forwarder]"
MAX_QUEUED = 100  # messages kept while the server is down; the oldest go first (the store still has the truth)
# What a failing tenant's cause is called in a subject.
CAUSES = {
    "consent_revoked": "consent revoked",
    "consent_missing": "consent missing",
    "credential_invalid": "secret or certificate refused",
    "unknown": "login refused",
    "error": "polls fail",
}
# A tenant in one of these states had the app consented: a consent refusal now is a revocation,
# although a freshly started process (had_token unset) cannot tell it from a missing consent.
_CONSENTED = ("ok", "degraded", "failing:consent_revoked")
REMEDY_SINK = "fix the cause named above, then restart the forwarder: the events waiting in its outbox are delivered then"
REMEDY_CERTIFICATE = ("defender-forwarder app certificate; upload the new certificate to app {client_id} in Entra ID; "
                      "point apps.{app}.certificate at it; defender-forwarder check")


@dataclass(frozen=True)
class Change:
    """One subject whose state differs from the state last mailed."""

    subject: str  # the key in the store: tenant:contoso, sink:siem, certificate:mssp
    old: str | None  # None: never mailed
    new: str
    headline: str  # `contoso: failing — consent revoked`
    details: list[str]  # lines of the body


@dataclass
class Message:
    changes: list[Change]
    at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def states(self) -> dict[str, str]:
        return {change.subject: change.new for change in self.changes}


@dataclass(frozen=True)
class MailServer:
    """Where [notify] sends: its own server, or the one of the email sink it names."""

    host: str
    port: int
    security: str
    timeout: float
    username: str | None
    password: SecretStr | None
    context: Callable[[], ssl.SSLContext]


def mail_server(config: Config) -> MailServer:
    settings = _settings(config)
    if settings.smtp_sink is not None:
        sink = config.sinks[settings.smtp_sink]  # the config check made sure it is an email sink
        return MailServer(sink.host, sink.smtp_port, sink.security, settings.timeout, sink.username, sink.password,
                          lambda: ssl_context(sink))
    assert settings.host is not None  # the model guarantees smtp_sink or host
    return MailServer(settings.host, settings.port or PORTS[settings.security], settings.security, settings.timeout,
                      settings.username, settings.password,
                      lambda: ssl.create_default_context(cafile=settings.ca_file))


def _settings(config: Config) -> NotifySettings:
    assert config.notify is not None  # a Notifier exists only with a [notify] table
    return config.notify


class Notifier:
    """Compares, queues and sends; one per Forwarder, used from its event loop only (the store's thread)."""

    def __init__(self, config: Config, store: SQLiteStore) -> None:
        self.config = config
        self.settings = _settings(config)
        self.store = store
        self.server = mail_server(config)
        self.believed = store.notified()  # what was mailed, plus what is queued to be
        self.queue: list[Message] = []
        self.sent = 0  # messages the server took, for the tests and the log
        self._sending: asyncio.Task[None] | None = None
        self._context: ssl.SSLContext | None = None

    # ---- comparing ---------------------------------------------------------------------------
    def after_cycle(self, workers: dict[str, Any], auth_failures: dict[str, str]) -> list[Change]:
        """Queue a message for what changed in this cycle and start sending; returns the changes."""
        changes = self.observe(collect(self.config, self.store, workers), auth_failures)
        self._kick()
        return changes

    def observe(self, status: Status, auth_failures: dict[str, str],
                now: datetime | None = None) -> list[Change]:
        now = now or datetime.now(timezone.utc)
        found = [*(self._tenant(row, auth_failures.get(row.tenant)) for row in status.tenants),
                 *(self._sink(row) for row in status.sinks),
                 *self._certificates(now)]
        changes, quiet = [], {}
        for change in filter(None, found):
            if change.old is None and change.new in ("ok", "running"):
                quiet[change.subject] = change.new  # first sight of a good state: nothing to say
            else:
                changes.append(change)
        if quiet:
            self.store.record_notified(quiet)
            self.believed.update(quiet)
        if changes:
            self._enqueue(Message(changes, now))
        return changes

    def _changed(self, subject: str, new: str | None) -> tuple[str | None, str] | None:
        old = self.believed.get(subject)
        return None if new is None or new == old else (old, new)

    def _tenant(self, row: TenantRow, auth: str | None) -> Change | None:
        subject = f"tenant:{row.tenant}"
        changed = self._changed(subject, tenant_state(row, auth, self.believed.get(subject)))
        if changed is None:
            return None
        old, new = changed
        health, _, cause = new.partition(":")
        # A tenant of more than one source names those at its health: `acme (graph_incidents)`.
        named = row.tenant + _sources_at(row, health)
        if health == "ok":
            headline = f"{row.tenant}: recovered"
        elif health == "failing":
            headline = f"{named}: failing — {CAUSES.get(cause, cause)}"
        else:
            headline = f"{named}: {health} — no successful poll lately"
        details = [f"Tenant: {row.tenant} ({row.tenant_id})",
                   f"Health: {_shown(old)} -> {f'{health} ({CAUSES.get(cause, cause)})' if cause else health}",
                   f"Reason and remedy: {row.health_reason or '-'}",
                   f"Last successful poll: {row.last_success or 'never'}"]
        if len(row.per_source) > 1:
            details += [f"Source {s.source}: {s.health}, last success {s.last_success or 'never'}"
                        for s in row.per_source]
        return Change(subject, old, new, headline, details)

    def _sink(self, row: SinkRow) -> Change | None:
        subject = f"sink:{row.sink}"
        changed = self._changed(subject, "stopped" if row.state == "stopped" else "running")
        if changed is None:
            return None
        old, new = changed
        if new == "stopped":
            headline = f"sink {row.sink}: stopped"
            details = [f"Sink: {row.sink} (type {row.type})", f"State: {_shown(old)} -> stopped",
                       f"Reason: {row.state_reason or '-'}", f"Remedy: {REMEDY_SINK}",
                       f"Events waiting in its outbox: {row.outbox}"]
        else:
            headline = f"sink {row.sink}: running again"
            details = [f"Sink: {row.sink} (type {row.type})", f"State: {_shown(old)} -> {row.state}",
                       f"Events waiting in its outbox: {row.outbox}"]
        return Change(subject, old, new, headline, details)

    def _certificates(self, now: datetime) -> list[Change | None]:
        return [self._certificate(name, now) for name in apps_in_use(self.config)
                if self.config.apps[name].certificate is not None]

    def _certificate(self, name: str, now: datetime) -> Change | None:
        app = self.config.apps[name]
        expiry = certificate_expiry(app)
        if expiry is None:
            return None  # not a PEM with a certificate: the run's preflight says so
        subject = f"certificate:{name}"
        changed = self._changed(subject, certificate_state(expiry, now, self.settings.certificate_days))
        if changed is None:
            return None
        old, new = changed
        day = f"{expiry:%Y-%m-%d %H:%M} UTC"
        if new.startswith("expired"):
            headline = f"app {name}: certificate expired on {expiry:%Y-%m-%d}"
        elif new.startswith("expiring"):
            days = max(0, int((expiry - now).total_seconds() // 86400))
            headline = f"app {name}: certificate expires in {days} days ({expiry:%Y-%m-%d})"
        else:
            headline = f"app {name}: certificate renewed, valid until {expiry:%Y-%m-%d}"
        details = [f"App: {name} (client id {app.client_id})", f"Certificate valid until: {day}",
                   f"State: {_shown(old)} -> {new.partition(':')[0]}"]
        if new != "ok":
            details.append("Remedy: " + REMEDY_CERTIFICATE.format(client_id=app.client_id, app=name))
        return Change(subject, old, new, headline, details)

    def _enqueue(self, message: Message) -> None:
        self.believed.update(message.states())
        self.queue.append(message)
        if len(self.queue) > MAX_QUEUED:
            # The store holds only what was sent: after a restart the comparison says what is still unsaid.
            dropped = self.queue.pop(0)
            log.warning("notify: %d messages wait for the mail server; the oldest (%s) is dropped",
                        len(self.queue), "; ".join(c.headline for c in dropped.changes))

    # ---- sending -----------------------------------------------------------------------------
    def _kick(self) -> None:
        """Send what is queued, in a task of its own: the daemon's next cycle does not wait for it."""
        if self.queue and (self._sending is None or self._sending.done()):
            self._sending = asyncio.create_task(self._send_queue())

    async def flush(self) -> None:
        """Wait for the sending under way (run --once, and a stopping daemon)."""
        if self._sending is not None:
            await self._sending

    async def _send_queue(self) -> None:
        while self.queue:
            message = self.queue[0]
            about = "; ".join(c.headline for c in message.changes)
            try:
                await asyncio.to_thread(self._smtp_send, compose(message, self.settings))
            except OSError as err:  # refused, unreachable, timed out, an SMTP error (smtplib's derive from it)
                log.warning("notify: the mail server %s:%d did not take the message about %s (%s); trying "
                            "again after the next cycle", self.server.host, self.server.port, about,
                            REDACTOR.redact(str(err) or type(err).__name__))
                return
            except Exception:  # noqa: BLE001 - a bug here must cost a notification, never a cycle
                log.exception("notify: the message about %s could not be sent; trying again after the next cycle",
                              about)
                return
            self.store.record_notified(message.states())
            self.queue.pop(0)
            self.sent += 1
            log.info("notify: mailed %s to %s", "; ".join(c.headline for c in message.changes),
                     ", ".join(self.settings.to))

    def _smtp_send(self, message: EmailMessage) -> None:
        """In a thread: one SMTP conversation, bounded by the timeout on every socket operation."""
        server = self.server
        context = self._tls() if server.security != "none" else None
        with open_session(server.host, server.port, server.security, server.timeout, context,
                          server.username, server.password) as smtp:
            refused = smtp.send_message(message, from_addr=self.settings.sender, to_addrs=self.settings.to)
        if refused:  # some took it: sending again would mail those twice
            log.warning("notify: the mail server refused %s", ", ".join(sorted(refused)))

    def _tls(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = self.server.context()
        return self._context


def tenant_state(row: TenantRow, auth: str | None, before: str | None) -> str | None:
    """A tenant's notified state; None when there is nothing to tell (not polled yet, disabled)."""
    if row.health in ("ok", "degraded"):
        return row.health
    if row.health != "failing":
        return None
    cause = auth or "error"
    if cause == "consent_missing" and before in _CONSENTED:
        cause = "consent_revoked"
    return f"failing:{cause}"


def _sources_at(row: TenantRow, health: str) -> str:
    """` (graph_incidents)`: the sources of a tenant of several at this health; "" for one."""
    if len(row.per_source) < 2:
        return ""
    names = [s.source for s in row.per_source if s.health == health]
    return f" ({', '.join(names)})" if names else ""


def certificate_state(expiry: datetime, now: datetime, days: int) -> str:
    left = (expiry - now).total_seconds()
    if left <= 0:
        return f"expired:{expiry:%Y-%m-%d}"
    if left <= days * 86400:
        return f"expiring:{expiry:%Y-%m-%d}"
    return "ok"


def compose(message: Message, settings: NotifySettings) -> EmailMessage:
    changes = message.changes
    if len(changes) == 1:
        subject = f"{PRODUCT} {changes[0].headline}"
    else:
        subject = f"{PRODUCT} {len(changes)} changes: " + "; ".join(c.headline for c in changes)
    mail = EmailMessage()
    mail["From"] = settings.sender
    mail["To"] = ", ".join(settings.to)
    mail["Subject"] = header_text(REDACTOR.redact(subject), 250)
    mail["Date"] = formatdate(message.at.timestamp(), usegmt=True)
    mail["Message-ID"] = make_msgid(domain=settings.sender.rpartition("@")[2] or socket.gethostname())
    mail.set_content(REDACTOR.redact(body(message)))
    return mail


def body(message: Message) -> str:
    when = f"{message.at:%Y-%m-%d %H:%M:%S} UTC"
    blocks = [f"{change.headline}\n" + "\n".join(f"  {line}" for line in [*change.details, f"Time: {when}"])
              for change in message.changes]
    return ("defender-forwarder noticed a change that needs a person.\n\n" + "\n\n".join(blocks)
            + "\n\nThe status of every tenant and sink: defender-forwarder tenants (or the daemon's status page).\n")


def _shown(state: str | None) -> str:
    return "(not mailed before)" if state is None else state.partition(":")[0]
