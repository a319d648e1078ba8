"""`type = "email"`: alert notifications for the MSSP's analysts, for every customer at once.

What Defender's per-tenant notification rules do, from one place: routed like any sink (by
tenant, minimum severity, service source), to recipients templated per customer. The sink
reads the common schema (`format = "alert"`) and writes its own messages.

Messages: `mode = "each"` sends one message per new alert, subject
`[<customer>] <Severity>: <title>`, and per new incident, subject
`[<customer>] <Severity> incident <id>: <title>`, with the incident's own facts (status,
classification, assignee, its alerts by id, the link to the incident; `X-Defender-Incident-Ids`
instead of `X-Defender-Alert-Ids`); `mode = "digest"` sends one message per customer every
`digest_interval` with every alert since the last one. Each message has a plain-text and an
HTML part: tenant, severity, status, times, category and MITRE techniques, the main evidence
(devices, users, files, IPs, URLs), and links to the alert and the incident in the Defender
portal. Alert text is HTML-escaped in the HTML part; control characters (CR and LF included)
become spaces in every header, so a title cannot add a header.

Noise: with `on_update = false` (the default) a later version of an alert already mailed is
not mailed again (a status change, a comment), unless its severity went up. The sink
remembers, per alert, the severity it last mailed (in the state file). A per-recipient rate
limit (`max_per_recipient` per hour, remembered across runs) holds back what would exceed it:
those events wait in the outbox (never dropped) and go when the window allows.

Delivery: an event counts as delivered once the server accepted the message (250) for every
recipient. Status table (SMTP reply -> outcome):
  250 for every recipient                          delivered
  4xx (greylisting, 421 busy), connection errors    retry with backoff; recipients that already
                                                     took the message are not sent it again
  5xx for a recipient (550 user unknown)            dead letter with the server's reply (the
                                                     other recipients got it)
  5xx for the message (554 at DATA)                 dead letter with the server's reply
  535 bad login, TLS certificate that fails         the sink stops with a clear error
    verification (connectors.tls)

TLS: the keys of `connectors.tls`; a client certificate (`client_cert`) is presented when the
server asks for one. smtplib sends and checks the host's own name, so `tls_server_name` is
refused.
"""
from __future__ import annotations

import asyncio
import html
import logging
import re
import smtplib
import socket
import ssl
import time
from collections import defaultdict
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import ClassVar, Literal

from pydantic import ConfigDict, Field, SecretStr, field_validator, model_validator

from connectors.base import DELIVERED, BatchResults, Connector, Event, EventResult, Outcome, Shortener, SinkFatal
from connectors.tls import TlsFileError, TlsSinkConfig, certificate_refused, ssl_context
from core.model.durations import Duration
from core.model.neterr import describe
from core.model.schema import Alert, Incident, Severity, decode_event
from core.model.secrets import Secret

log = logging.getLogger("defender_forwarder.email")

Mailable = Alert | Incident  # what a message is about: alerts, incidents, or (a digest) both

PORTS = {"starttls": 587, "tls": 465, "none": 25}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
RATE_WINDOW = 3600.0


class EmailSinkConfig(TlsSinkConfig):
    tls_unsupported: ClassVar[frozenset[str]] = frozenset({"tls_server_name"})

    type: str = "email"
    format: str = "alert"
    batch_max_events: int = Field(default=10_000, ge=1, le=100_000)
    host: str
    port: int | None = Field(default=None, ge=1, le=65535, description="default 587, 465 for tls, 25 for none")
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    sender: str = Field(alias="from", description="the From address")
    sender_name: str = "Defender forwarder"
    to: list[str] = Field(min_length=1, description="recipients; {tenant} is the customer label")
    mode: Literal["each", "digest"] = "each"
    digest_interval: Duration = Field(default=900.0, gt=0)
    on_update: bool = False
    max_per_recipient: int = Field(default=60, ge=1, description="messages per recipient per hour")
    timeout: Duration = 30.0

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("format")
    @classmethod
    def _reads_alerts(cls, value: str) -> str:
        if value != "alert":
            raise ValueError('the email sink writes its own messages from the alert: format must be "alert"')
        return value

    @model_validator(mode="after")
    def _login_pairs(self) -> EmailSinkConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if self.security == "none" and self.client_cert is not None:
            raise ValueError('client_cert needs security = "starttls" or "tls"')
        return self

    @property
    def smtp_port(self) -> int:
        return self.port or PORTS[self.security]


class Refused(Exception):
    """The server's lasting refusal of this message (5xx): a dead letter with its reply."""


class EmailConnector(Connector):
    config_model = EmailSinkConfig
    direct_only = True
    config: EmailSinkConfig

    def __init__(self, name: str, config: EmailSinkConfig, shortener: Shortener | None = None) -> None:
        super().__init__(name, config, shortener)
        self.counters.update(messages=0, held_back=0, not_mailed_again=0)
        self._context: ssl.SSLContext | None = None

    # ---- sending ------------------------------------------------------------------------
    async def send(self, batch: list[Event]) -> list[EventResult]:
        results = BatchResults(len(batch))
        wanted: list[tuple[int, Mailable]] = []
        for index, event in enumerate(batch):
            alert = decode_event(event.body)  # an alert or an incident, by the `kind` it says
            if not self._worth_mailing(alert):
                results[index] = DELIVERED
                self.counters["not_mailed_again"] += 1
            elif self.config.mode == "each":  # at once: a later version in this batch sees it mailed
                results[index] = await self._deliver([alert], [event])
            else:
                wanted.append((index, alert))
        if wanted:
            await self._send_digests(wanted, batch, results)
        return results.final()

    def _worth_mailing(self, alert: Mailable) -> bool:
        """A new alert, a later version when `on_update`, or a version whose severity went up
        (an incident alike: a new alert joining it does not mail it again, a raised severity does)."""
        assert self.memory is not None
        mailed = self.memory.get(_mailed_key(alert))
        return mailed is None or self.config.on_update or alert.severity > Severity(int(mailed))

    async def _send_digests(self, wanted: list[tuple[int, Mailable]], batch: list[Event],
                            results: BatchResults) -> None:
        assert self.memory is not None
        by_tenant: dict[str, list[tuple[int, Mailable]]] = defaultdict(list)
        for index, alert in wanted:
            by_tenant[alert.tenant.id].append((index, alert))
        now = time.time()
        for tenant_id, items in by_tenant.items():
            last = float(self.memory.get(f"digest/{tenant_id}") or 0.0)
            due = last + self.config.digest_interval
            if now < due:
                results.mark((index for index, _ in items), EventResult(Outcome.DEFER, "digest not due", due - now))
                continue
            result = await self._deliver([alert for _, alert in items], [batch[index] for index, _ in items])
            if result.outcome is Outcome.OK:
                self.memory.put({f"digest/{tenant_id}": str(now)})
            results.mark((index for index, _ in items), result)

    async def _deliver(self, alerts: list[Mailable], events: list[Event]) -> EventResult:
        """One message about `alerts` (one alert, or a customer's digest) to their recipients."""
        assert self.memory is not None
        tenant = alerts[0].tenant
        recipients = [address.replace("{tenant}", tenant.label) for address in self.config.to]
        key = f"sent/{events[0].meta.version_key}/{len(events)}"  # this message's recipients so far
        already = set(filter(None, (self.memory.get(key) or "").split(",")))
        todo = [r for r in recipients if r not in already]
        wait = self._rate_wait(todo)
        if wait > 0:
            self.counters["held_back"] += len(events)
            return EventResult(Outcome.DEFER, "per-recipient rate limit", wait)
        message = compose(alerts, self.config, recipients)
        try:
            accepted = await asyncio.to_thread(self._smtp_send, message, todo)
        except Refused as err:
            return EventResult(Outcome.PERMANENT, str(err))
        except OSError as err:  # the server out of reach: the reason names it and why
            return EventResult(Outcome.RETRY, describe(err, self._where()))
        self._count_sent(accepted)
        done = already | set(accepted)
        if set(todo) - set(accepted):
            self.memory.put({key: ",".join(sorted(done))})
            return EventResult(Outcome.RETRY, "some recipients answered 4xx; they get it on the retry")
        self.counters["messages"] += 1
        self.memory.put({key: ",".join(sorted(done)), **{_mailed_key(a): str(int(a.severity)) for a in alerts}})
        return DELIVERED

    def _rate_wait(self, recipients: list[str]) -> float:
        """Seconds until every recipient may get one more message (0: now)."""
        now = time.time()
        wait = 0.0
        for recipient in recipients:
            sent = self._recent(recipient, now)
            if len(sent) >= self.config.max_per_recipient:
                wait = max(wait, RATE_WINDOW - (now - sent[0]))
        return wait

    def _count_sent(self, recipients: list[str]) -> None:
        assert self.memory is not None
        now = time.time()
        self.memory.put({f"rate/{r}": ",".join(f"{t:.3f}" for t in [*self._recent(r, now), now])
                         for r in recipients})

    def _recent(self, recipient: str, now: float) -> list[float]:
        """When `recipient` was sent a message in the last hour (kept in the state file, so a
        cron run sees the messages of the runs before it)."""
        assert self.memory is not None
        stored = self.memory.get(f"rate/{recipient}") or ""
        return [t for t in (float(text) for text in stored.split(",") if text) if now - t < RATE_WINDOW]

    # ---- SMTP (in a thread: smtplib blocks) -------------------------------------------------
    def _smtp_send(self, message: EmailMessage, recipients: list[str]) -> list[str]:
        """Send to `recipients`; returns those that accepted it. Raises Refused for a 5xx of
        the message or of every recipient; 4xx and connection errors propagate (retry)."""
        with self._session() as smtp:
            try:
                refused = smtp.send_message(message, from_addr=self.config.sender, to_addrs=recipients)
            except smtplib.SMTPRecipientsRefused as err:
                refused = err.recipients
            except (smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as err:
                if 500 <= err.smtp_code < 600:
                    raise Refused(f"SMTP {err.smtp_code} {_reply(err.smtp_error)}") from None
                raise
        lasting = {r: reply for r, reply in refused.items() if 500 <= reply[0] < 600}
        if lasting:
            raise Refused("; ".join(f"{r}: SMTP {code} {_reply(text)}" for r, (code, text) in lasting.items()))
        return [r for r in recipients if r not in refused]

    def _session(self) -> smtplib.SMTP:
        config = self.config
        context = self._tls() if config.security != "none" else None
        try:
            smtp = open_session(config.host, config.smtp_port, config.security, config.timeout, context,
                                config.username, config.password)
        except ssl.SSLError as err:
            refused = certificate_refused(err)
            if refused is None:
                raise
            raise SinkFatal(f"TLS: {describe(err, self._where())}; set ca_file") from None
        except smtplib.SMTPAuthenticationError as err:
            raise SinkFatal(f"SMTP login refused ({err.smtp_code} {_reply(err.smtp_error)}): check username and "
                            "password") from None
        except smtplib.SMTPNotSupportedError as err:
            raise SinkFatal(f"{config.host}: {err}; check security") from None
        return smtp

    def _tls(self) -> ssl.SSLContext:
        """One context for every session of this sink."""
        if self._context is None:
            try:
                self._context = ssl_context(self.config)
            except TlsFileError as err:
                raise err.error from None  # as any failure to connect: retried, and `check` names it
            self.config.warn_if_unverified(self.name, log)
        return self._context

    async def probe(self) -> str:
        def connect() -> str:
            with self._session() as smtp:
                code, _ = smtp.noop()
            return f"{self.config.host}:{self.config.smtp_port} ({self.config.security}) answered {code}; nothing sent"

        try:
            return await asyncio.to_thread(connect)
        except OSError as err:  # SMTPException too: it derives from OSError
            raise SinkFatal(describe(err, self._where())) from None

    def _where(self) -> str:
        return f"{self.config.host}:{self.config.smtp_port}"


def open_session(host: str, port: int, security: str, timeout: float, context: ssl.SSLContext | None,
                 username: str | None, password: SecretStr | None) -> smtplib.SMTP:
    """An SMTP session, encrypted as `security` says and logged in when a user is given: the
    sink's, and [notify]'s (core/app/notify.py), which may use a sink's server. Blocking."""
    if security == "tls":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
    else:
        smtp = smtplib.SMTP(host, port, timeout=timeout)
    try:
        if security == "starttls":
            smtp.starttls(context=context)
        if username is not None and password is not None:
            smtp.login(username, password.get_secret_value())
    except BaseException:
        smtp.close()  # a refused STARTTLS or login must not leave the socket open until collected
        raise
    return smtp


def _mailed_key(event: Mailable) -> str:
    """Where the sink remembers the severity it last mailed of an event (incidents apart:
    an incident id may look like an alert id)."""
    if isinstance(event, Incident):
        return f"severity/{event.tenant.id}/incident/{event.id}"
    return f"severity/{event.tenant.id}/{event.id}"


def _reply(text: bytes | str) -> str:
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else text


# ---- composing ---------------------------------------------------------------------------------

def header_text(text: str | None, limit: int = 200) -> str:
    """One line of header text: control characters (CR and LF included) become a space."""
    line = _CONTROL.sub(" ", text or "").strip()
    return line if len(line) <= limit else line[: limit - 1] + "\u2026"


def compose(alerts: list[Mailable], config: EmailSinkConfig, recipients: list[str]) -> EmailMessage:
    tenant = alerts[0].tenant
    message = EmailMessage()
    message["From"] = formataddr((header_text(config.sender_name), config.sender))
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject(alerts)
    message["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2] or socket.gethostname())
    message["X-Defender-Tenant"] = header_text(f"{tenant.label} ({tenant.id})")
    alert_ids = [event.id for event in alerts if isinstance(event, Alert)]
    incident_ids = [event.id for event in alerts if isinstance(event, Incident)]
    if alert_ids:
        message["X-Defender-Alert-Ids"] = header_text(" ".join(alert_ids), 4000)
    if incident_ids:
        message["X-Defender-Incident-Ids"] = header_text(" ".join(incident_ids), 4000)
    message.set_content("\n\n".join(plain(alert) for alert in alerts))
    message.add_alternative(html_page(alerts), subtype="html")
    return message


def subject(alerts: list[Mailable]) -> str:
    tenant = alerts[0].tenant.label
    if len(alerts) == 1:
        alert = alerts[0]
        if isinstance(alert, Incident):
            return header_text(f"[{tenant}] {alert.severity.name.capitalize()} incident {alert.id}: "
                               f"{alert.title or 'Defender incident'}", 250)
        return header_text(f"[{tenant}] {alert.severity.name.capitalize()}: {alert.title or 'Defender alert'}", 250)
    counts = defaultdict(int)
    for alert in alerts:
        counts[alert.severity.name] += 1
    summary = ", ".join(f"{counts[s.name]} {s.name}" for s in sorted(Severity, reverse=True) if counts[s.name])
    incidents = sum(1 for alert in alerts if isinstance(alert, Incident))
    what = _count(len(alerts) - incidents, "alert")
    if incidents:
        what = f"{what} and {_count(incidents, 'incident')}" if incidents < len(alerts) else _count(incidents, "incident")
    return header_text(f"[{tenant}] {what} ({summary})", 250)


def _count(number: int, noun: str) -> str:
    return f"{number} Defender {noun}{'' if number == 1 else 's'}"


def facts(alert: Mailable) -> list[tuple[str, str]]:
    """(label, text) rows every part shows, in order; empty values are left out."""
    if isinstance(alert, Incident):
        return incident_facts(alert)
    times = alert.times
    evidence = evidence_lines(alert)
    rows = [
        ("Customer", f"{alert.tenant.label} ({alert.tenant.id})"),
        ("Severity", alert.severity.name), ("Status", alert.status or ""),
        ("Created", _when(times.created)), ("Last update", _when(times.last_updated)),
        ("First activity", _when(times.first_activity)), ("Last activity", _when(times.last_activity)),
        ("Category", alert.category or ", ".join(alert.categories)),
        ("MITRE techniques", ", ".join(alert.mitre_techniques)),
        ("Service source", alert.service_source or ""), ("Alert id", alert.id),
        ("Incident id", alert.incident_id or ""),
        *((kind, ", ".join(values)) for kind, values in evidence.items()),
        ("Alert in the portal", alert.alert_web_url or ""), ("Incident in the portal", alert.incident_web_url or ""),
    ]
    return [(label, text) for label, text in rows if text]


def incident_facts(incident: Incident) -> list[tuple[str, str]]:
    """An incident's rows: what the SOC works it by. Its alerts by id (each is mailed, or
    forwarded, as its own event); nothing of the raw incident, so no text Defender did not
    show in the portal."""
    times = incident.times
    rows = [
        ("Customer", f"{incident.tenant.label} ({incident.tenant.id})"),
        ("Severity", incident.severity.name), ("Status", incident.status or ""),
        ("Classification", incident.classification or ""), ("Determination", incident.determination or ""),
        ("Assigned to", incident.assigned_to or ""),
        ("Created", _when(times.created)), ("Last update", _when(times.last_updated)),
        ("Incident id", incident.id), ("Merged into incident", incident.redirect_incident_id or ""),
        ("Tags", ", ".join([*incident.custom_tags, *incident.system_tags])),
        (f"Alerts ({len(incident.alert_ids)})" if incident.alert_ids else "Alerts", ", ".join(incident.alert_ids)),
        ("Incident in the portal", incident.incident_web_url or ""),
    ]
    return [(label, text) for label, text in rows if text]


def _heading(alert: Mailable) -> str:
    if isinstance(alert, Incident):
        return f"Incident {alert.id}: {alert.title or 'Defender incident'}"
    return alert.title or "Defender alert"


def evidence_lines(alert: Alert) -> dict[str, list[str]]:
    """The main evidence by kind, each value once."""
    found: dict[str, list[str]] = {"Devices": [], "Users": [], "Files": [], "IP addresses": [], "URLs": []}

    def add(kind: str, value: str | None) -> None:
        if value and value not in found[kind]:
            found[kind].append(value)

    for item in alert.evidence:
        if item.kind == "device":
            add("Devices", item.fqdn or item.hostname)
        elif item.kind == "user":
            add("Users", item.user.upn or item.user.account_name)
        elif item.kind in ("file", "process"):
            info = item.file if item.kind == "file" else item.image
            if info is not None:
                add("Files", "\\".join(filter(None, (info.path, info.name))) or info.sha256)
        elif item.kind == "ip":
            add("IP addresses", item.address)
        elif item.kind == "url":
            add("URLs", item.url)
    return {kind: values for kind, values in found.items() if values}


def plain(alert: Mailable) -> str:
    width = max(len(label) for label, _ in facts(alert))
    lines = [header_text(_heading(alert), 1000), ""]
    lines += [f"{label + ':':<{width + 1}} {header_text(text, 4000)}" for label, text in facts(alert)]
    if alert.description:
        lines += ["", alert.description]
    return "\n".join(lines)


def html_page(alerts: list[Mailable]) -> str:
    sections = []
    for alert in alerts:
        rows = "".join(f"<tr><th align=\"left\">{html.escape(label)}</th><td>{_html_value(label, text)}</td></tr>"
                       for label, text in facts(alert))
        description = f"<p>{html.escape(alert.description)}</p>" if alert.description else ""
        sections.append(f"<h2>{html.escape(_heading(alert))}</h2><table>{rows}</table>{description}")
    return "<!DOCTYPE html><html><body>" + "<hr>".join(sections) + "</body></html>"


def _html_value(label: str, text: str) -> str:
    if label.endswith("in the portal") and text.startswith("https://"):
        return f'<a href="{html.escape(text, quote=True)}">{html.escape(text)}</a>'
    return html.escape(text)


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


CONNECTOR = EmailConnector
