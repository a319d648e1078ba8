"""The contract every destination implements.

A connector is a config model, an encoder choice (`format`), `send(batch)` and a
classification of every response into ok, retry or permanent. The delivery worker in
`core.delivery` owns batching, backoff, dead letters and the outbox; a connector only
speaks its wire protocol.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, Field

from core.model.durations import Duration
from core.model.schema import EventMeta


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # transient: back off and send again, without limit
    PERMANENT = "permanent"  # this event will never be accepted: dead-letter it
    DEFER = "defer"  # not yet, by design (a digest not due, a rate limit): wait `after` seconds, no failure


@dataclass(frozen=True)
class EventResult:
    outcome: Outcome
    reason: str = ""
    after: float = 0.0  # DEFER: seconds until it may go


DELIVERED = EventResult(Outcome.OK)
NOT_SENT = EventResult(Outcome.RETRY, "not sent")


class Event(NamedTuple):
    """One outbox row of one sink: the alert already encoded in the sink's format."""

    row_id: int
    meta: EventMeta
    body: bytes  # without a trailing newline


class Memory(Protocol):
    """A sink's own durable key -> text notes (kept in the state store beside its outbox)."""

    def get(self, key: str) -> str | None: ...

    def put(self, items: dict[str, str]) -> None: ...


class BatchResults:
    """The result of each event of one batch, filled in as the destination answers; an event
    no answer settled is sent again (`NOT_SENT`, or the failure that stopped the sending)."""

    def __init__(self, size: int) -> None:
        self._results: list[EventResult | None] = [None] * size

    def __setitem__(self, index: int, result: EventResult) -> None:
        self._results[index] = result

    def mark(self, indexes: Iterable[int], result: EventResult) -> None:
        for index in indexes:
            self._results[index] = result

    def unsettled(self) -> list[int]:
        """The indexes that have no result yet, in order."""
        return [index for index, result in enumerate(self._results) if result is None]

    def final(self, unsent: EventResult = NOT_SENT) -> list[EventResult]:
        """One result per event, in order; `unsent` for those without one."""
        return [result or unsent for result in self._results]


# (line, budget in bytes) -> the line within the budget, and whether it had to be cut
# (it may no longer parse) rather than only shortened value by value. The app takes it from
# the sink's format; a format whose lines cannot be cut (JSON) has none.
Shortener = Callable[[bytes, int], tuple[bytes, bool]]


class SetupPlan:
    """What a connector prepares at its destination before the first delivery
    (`defender-forwarder setup`): index templates, policies, ..."""

    # `[forwarder] proxy`, set by the command before `apply`, as on a connector.
    proxy: str | None = None

    def describe(self) -> str:
        """For `--dry-run`: what `apply` would send, sending nothing."""
        raise NotImplementedError

    async def apply(self) -> list[str]:
        """Prepare what is missing or differs; one line per step saying what happened."""
        raise NotImplementedError


class SinkFatal(Exception):
    """A permanent whole-sink failure (bad credentials, TLS failure): the sink stops, others go on."""


class SinkConfig(BaseModel):
    """Keys every sink has; each connector's model adds its own."""

    model_config = ConfigDict(extra="forbid")

    type: str
    format: str = "ocsf"
    batch_max_events: int = Field(default=500, ge=1, le=100_000)
    batch_timeout: Duration = Field(default=1.0, description="how long a partial batch may wait")
    max_outbox: int = Field(default=100_000, ge=1, description="outbox bound: past it, polling pauses")
    retry_initial: Duration = Field(default=1.0, gt=0, description="first backoff after a transient failure")
    retry_max: Duration = Field(default=60.0, gt=0, description="longest backoff between retries")


class Connector:
    """Base class of every destination. Subclasses set `config_model` and implement `send`."""

    config_model: ClassVar[type[SinkConfig]] = SinkConfig
    # A protocol that no HTTP proxy carries (syslog, SMTP): its connections go directly, and
    # the app says so when `[forwarder] proxy` is set.
    direct_only: ClassVar[bool] = False

    def __init__(self, name: str, config: SinkConfig, shortener: Shortener | None = None) -> None:
        self.name = name
        self.config = config
        # How the sink's format shortens a line that does not fit the destination's message;
        # without one, such an event is a dead letter.
        self.shortener = shortener
        # What a run summary should show beside delivered/dead: events this connector had to
        # alter to deliver them (e.g. syslog's shortened and truncated lines), by kind.
        self.counters: dict[str, int] = {}
        # Durable notes of this sink (e.g. what the e-mail sink already mailed), set by the
        # delivery worker before the first send.
        self.memory: Memory | None = None
        # `[forwarder] proxy`, set by the app: it wins over HTTPS_PROXY/HTTP_PROXY for this
        # sink's connections (core.model.proxy.proxy_for decides, NO_PROXY included).
        self.proxy: str | None = None

    @classmethod
    def setup(cls, config: SinkConfig, options: Mapping[str, str]) -> SetupPlan | None:
        """For `defender-forwarder setup`: what this sink needs prepared at the destination,
        or None when it needs nothing. `options` holds every option the sink type declares in
        the registry (`connectors.SINKS`), defaults filled in."""
        return None

    async def open(self) -> None:
        """Connect; raise `SinkFatal` when the destination can never work with this config."""

    async def send(self, batch: list[Event]) -> list[EventResult]:
        """Send one batch; return one result per event, in order.

        Raise `SinkFatal` for a whole-sink permanent error. Any other exception
        counts as a transient failure of the whole batch.
        """
        raise NotImplementedError

    async def probe(self) -> str:
        """For `check`: reach the destination without delivering anything; return what was found."""
        return "ok"

    async def close(self) -> None:
        """Flush and release connections."""
