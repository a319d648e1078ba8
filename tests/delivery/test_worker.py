"""core/delivery.py: the policy of a sink worker, with a destination written here (a Connector
that answers as each test scripts it: the contract implemented, no client mocked) and a real
state store of each backend (SQLite, PostgreSQL). Batches, what each outcome does to the outbox, backoff, deferral,
a fatal sink, and batches that must never skip or repeat a row."""
from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from connectors.base import DELIVERED, Connector, Event, EventResult, Outcome, SinkConfig, SinkFatal
from core.delivery import SinkWorker
from core.model.schema import EventMeta, Severity

SINK = "siem"
Answer = Callable[[list[Event]], list[EventResult]]


class Scripted(Connector):
    """A destination whose answer to each batch is `answer(batch)`; it keeps what it was sent."""

    def __init__(self, answer: Answer, **keys: Any) -> None:
        super().__init__(SINK, SinkConfig(type="scripted", **{"retry_initial": 0.05, "retry_max": 0.1, **keys}))
        self.answer = answer
        self.batches: list[list[int]] = []  # the row ids of each send, in order
        self.sent_at: list[float] = []  # loop time of each send
        self.opened = 0

    async def open(self) -> None:
        self.opened += 1

    async def send(self, batch: list[Event]) -> list[EventResult]:
        self.batches.append([event.row_id for event in batch])
        self.sent_at.append(asyncio.get_running_loop().time())
        return self.answer(batch)


def _every(result: EventResult) -> Answer:
    return lambda batch: [result] * len(batch)


@pytest.fixture
def store(open_store: Callable[[], Any]) -> Any:
    """A store of each backend (tests/conftest.py, open_store)."""
    return open_store()


def _queue(store: Any, n: int, start: int = 0) -> list[bytes]:
    """`n` events into the sink's outbox; their bodies."""
    bodies = [b'{"n":%d}' % i for i in range(start, start + n)]
    store.outbox_append(SINK, [(EventMeta("t-1", "acme", f"a{i}", f"t-1/a{i}/v", Severity.high, 1.5e9), body)
                               for i, body in zip(range(start, start + n), bodies, strict=True)])
    return bodies


def _drain(worker: SinkWorker, seconds: float = 10.0) -> bool:
    async def go() -> bool:
        try:
            return await worker.drain(asyncio.get_running_loop().time() + seconds)
        finally:
            await worker.close()

    return asyncio.run(go())


# ---- batches, and what each outcome does to the outbox ---------------------------------------------

def test_batches_of_at_most_batch_max_events_in_outbox_order(store: Any) -> None:
    _queue(store, 7)
    connector = Scripted(_every(DELIVERED), batch_max_events=3)
    worker = SinkWorker(connector, store)
    assert _drain(worker) is True
    assert [len(batch) for batch in connector.batches] == [3, 3, 1]
    assert [row for batch in connector.batches for row in batch] == sorted(sum(connector.batches, []))
    assert connector.opened == 1  # opened once, before the first batch
    assert store.outbox_depth(SINK) == 0 and worker.stats.delivered == 7 and worker.stats.retries == 0


def test_a_permanent_refusal_is_a_dead_letter_with_the_destinations_reason(store: Any) -> None:
    bodies = _queue(store, 4)

    def answer(batch: list[Event]) -> list[EventResult]:
        return [EventResult(Outcome.PERMANENT, "400 mapper_parsing_exception: bad field") if e.body == bodies[2]
                else DELIVERED for e in batch]

    worker = SinkWorker(Scripted(answer), store)
    assert _drain(worker) is True
    (letter,) = store.dead_letters()
    assert (letter.stage, letter.sink, letter.reason) == ("deliver", SINK, "400 mapper_parsing_exception: bad field")
    assert letter.payload == bodies[2] and letter.meta is not None and letter.meta.alert_id == "a2"
    assert store.outbox_depth(SINK) == 0 and (worker.stats.delivered, worker.stats.dead) == (3, 1)


def test_a_retry_backs_off_then_sends_again_from_the_oldest_unsettled_row(store: Any,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    _queue(store, 6)
    failures = iter([True])

    def answer(batch: list[Event]) -> list[EventResult]:
        if next(failures, False):  # the first send: the second event must come again
            return [EventResult(Outcome.RETRY, "HTTP 503: busy") if i == 1 else DELIVERED for i in range(len(batch))]
        return [DELIVERED] * len(batch)

    connector = Scripted(answer, batch_max_events=3, retry_initial=0.2, retry_max=0.2)
    worker = SinkWorker(connector, store)
    with caplog.at_level(logging.WARNING, logger="defender_forwarder.delivery"):
        assert _drain(worker) is True
    first, again, *rest = connector.batches
    assert again[0] == first[1] and again[1:] == [first[2] + 1, first[2] + 2]  # from the oldest unsettled row
    assert connector.sent_at[1] - connector.sent_at[0] >= 0.1  # backoff: between retry_initial/2 and it
    assert sorted({row for batch in connector.batches for row in batch}) == list(range(first[0], first[0] + 6))
    assert worker.stats.retries == 1 and store.outbox_depth(SINK) == 0 and store.dead_letters() == []
    assert any("sink siem: HTTP 503: busy; retrying in" in r.getMessage() for r in caplog.records)


def test_an_exception_from_send_is_a_transient_failure_of_the_whole_batch(store: Any) -> None:
    _queue(store, 2)
    calls = iter([ConnectionResetError("reset by peer")])

    def answer(batch: list[Event]) -> list[EventResult]:
        error = next(calls, None)
        if error is not None:
            raise error
        return [DELIVERED] * len(batch)

    connector = Scripted(answer)
    worker = SinkWorker(connector, store)
    assert _drain(worker) is True
    assert connector.batches[0] == connector.batches[1] and worker.stats.retries == 1
    assert worker.stats.delivered == 2 and worker.fatal is None


def test_a_deferral_waits_without_counting_as_a_failure(store: Any) -> None:
    _queue(store, 3)
    answers = iter([_every(EventResult(Outcome.DEFER, "digest not due", 0.3))])

    def answer(batch: list[Event]) -> list[EventResult]:
        return next(answers, _every(DELIVERED))(batch)

    connector = Scripted(answer)
    worker = SinkWorker(connector, store)
    assert _drain(worker) is True
    assert connector.batches[0] == connector.batches[1]  # the deferred rows, again, from the head
    assert connector.sent_at[1] - connector.sent_at[0] >= 0.29  # as long as the destination said
    assert worker.stats.retries == 0 and worker.stats.delivered == 3 and store.dead_letters() == []


def test_rows_deferred_past_the_deadline_wait_for_a_later_run(store: Any) -> None:
    _queue(store, 2)
    connector = Scripted(_every(EventResult(Outcome.DEFER, "rate limit", 3600.0)))
    worker = SinkWorker(connector, store)
    assert _drain(worker, seconds=2.0) is True  # drained as far as it may be: not a failure
    assert len(connector.batches) == 1 and store.outbox_depth(SINK) == 2
    assert worker.deferred_until is not None and worker.stats.retries == 0 and worker.fatal is None


def test_a_fatal_error_stops_the_sink_and_keeps_its_outbox(store: Any,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    _queue(store, 5)

    def answer(batch: list[Event]) -> list[EventResult]:
        raise SinkFatal("Splunk HEC refused the request: code 4 \"Invalid token\"")

    connector = Scripted(answer, batch_max_events=2)
    worker = SinkWorker(connector, store)
    with caplog.at_level(logging.ERROR, logger="defender_forwarder.delivery"):
        assert _drain(worker) is False
    assert len(connector.batches) == 1 and store.outbox_depth(SINK) == 5 and store.dead_letters() == []
    assert worker.fatal == "Splunk HEC refused the request: code 4 \"Invalid token\""
    assert ("sink siem stopped: Splunk HEC refused the request: code 4 \"Invalid token\" "
            "(its outbox keeps every pending event)") in [r.getMessage() for r in caplog.records]


def test_each_batch_takes_exactly_its_settled_rows_from_the_outbox(store: Any) -> None:
    """A batch with a refused row in the middle and a deferred one keeps the deferred row and
    files the refused one; a batch delivered whole goes by the range of its ids (the store's
    fast path). Neither takes a row of another sink between its ids, nor one queued after it."""
    for i in range(8):  # ids interleave with another sink's: siem, other, siem, other, ...
        _queue(store, 1, start=i)
        store.outbox_append("other", [(EventMeta("t-1", "acme", f"o{i}", f"t-1/o{i}/v", Severity.high, 1.5e9),
                                       b"o")])
    outcomes = {"a1": EventResult(Outcome.PERMANENT, "refused"), "a2": EventResult(Outcome.DEFER, "later", 60.0)}

    def answer(batch: list[Event]) -> list[EventResult]:
        return [outcomes.get(event.meta.alert_id, DELIVERED) for event in batch]

    worker = SinkWorker(Scripted(answer, batch_max_events=4), store)

    def waiting(sink: str) -> list[str]:
        return [row.meta.alert_id for row in store.outbox_batch(sink, 100)]

    async def two_batches() -> None:
        assert await worker.deliver_batch() == 3  # a0 delivered, a1 refused, a3 delivered; a2 deferred
        assert waiting(SINK) == ["a2", "a4", "a5", "a6", "a7"]
        assert [letter.meta.alert_id for letter in store.dead_letters()] == ["a1"]
        outcomes.clear()
        _queue(store, 1, start=8)
        assert await worker.deliver_batch() == 4  # a2, a4, a5, a6: settled whole
        await worker.close()

    asyncio.run(two_batches())
    assert waiting(SINK) == ["a7", "a8"] and store.outbox_depth(SINK) == 2
    assert waiting("other") == [f"o{i}" for i in range(8)] and store.outbox_depth("other") == 8


def test_a_connector_that_answers_for_the_wrong_number_of_events_stops(store: Any) -> None:
    _queue(store, 3)
    worker = SinkWorker(Scripted(lambda batch: [DELIVERED]), store)
    assert _drain(worker) is False
    assert worker.fatal == "connector returned 1 results for 3 events" and store.outbox_depth(SINK) == 3


# ---- nothing skipped, nothing repeated ----------------------------------------------------------------

def test_batches_never_skip_or_repeat_a_row(store: Any) -> None:
    """Every outcome mixed at random, and rows queued while batches are in flight: each batch is
    the head of the outbox as it is when it goes (nothing skipped), a row goes again only after
    a retry or a deferral (nothing repeated), and every row is settled once."""
    rng = random.Random(7)
    _queue(store, 40)
    settled: dict[int, Outcome] = {}
    last: dict[int, Outcome] = {}
    appended = [0]
    given: Counter[Outcome] = Counter()
    wrong: list[str] = []  # (an assertion raised in `send` would count as a transient failure)

    def answer(batch: list[Event]) -> list[EventResult]:
        rows = [event.row_id for event in batch]
        head = [row.id for row in store.outbox_batch(SINK, len(batch))]
        if rows != head:
            wrong.append(f"sent {rows}, the head of the outbox is {head}")
        if appended[0] < 30:  # the poller queues more while this batch is in flight
            _queue(store, 5, start=100 + appended[0])
            appended[0] += 5
        results = []
        for row in rows:
            if last.get(row) not in (None, Outcome.RETRY, Outcome.DEFER):
                wrong.append(f"row {row} sent again after {last[row]}")
            outcome = rng.choices([Outcome.OK, Outcome.PERMANENT, Outcome.RETRY, Outcome.DEFER], [80, 5, 10, 5])[0]
            last[row] = outcome
            given[outcome] += 1
            if outcome in (Outcome.OK, Outcome.PERMANENT):
                settled[row] = outcome
            results.append(EventResult(outcome, outcome.value, 0.01 if outcome is Outcome.DEFER else 0.0))
        return results

    connector = Scripted(answer, batch_max_events=7, retry_initial=0.01, retry_max=0.02)
    worker = SinkWorker(connector, store)
    assert _drain(worker, seconds=60.0) is True
    assert wrong == []
    assert set(given) == set(Outcome) and worker.stats.retries > 0  # every outcome was given
    assert len(settled) == 70 and store.outbox_depth(SINK) == 0
    assert {row for batch in connector.batches for row in batch} == set(settled)
    dead = sum(outcome is Outcome.PERMANENT for outcome in settled.values())
    assert (worker.stats.delivered, worker.stats.dead) == (70 - dead, dead) and len(store.dead_letters()) == dead


# ---- the store going away ------------------------------------------------------------------------

def test_a_database_restart_pauses_the_worker_which_then_delivers_everything(pg_empty: Any, postgres: Any) -> None:
    """PostgreSQL stopped under a running worker: its calls fail, it backs off and waits (its
    task does not die), and once the server is back it delivers what waited and what came."""
    from core.state.postgresql import PostgresStore

    store = PostgresStore(pg_empty)
    connector = Scripted(_every(DELIVERED), batch_max_events=5)
    worker = SinkWorker(connector, store)
    sent = lambda: sorted(row for batch in connector.batches for row in batch)  # noqa: E731

    async def go() -> None:
        task = asyncio.create_task(worker.run_forever())
        _queue(store, 3)
        worker.wakeup.set()
        await _until(lambda: len(sent()) == 3)
        postgres.stop()
        try:
            await asyncio.sleep(1.5)  # the worker asks the store and fails, more than once
            assert not task.done(), "the worker's task ended on the outage"
            assert worker.last_error and "cannot be used" in worker.last_error
        finally:
            postgres.start()
        await _until(lambda: _can_write(store))
        _queue(store, 4, start=3)
        worker.wakeup.set()
        await _until(lambda: len(sent()) == 7, seconds=30)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await worker.close()

    try:
        asyncio.run(go())
        assert store.outbox_depth(SINK) == 0
    finally:
        store.close()


def _can_write(store: Any) -> bool:
    try:
        store.ping()
    except Exception:  # noqa: BLE001 - not back yet
        return False
    return True


async def _until(condition: Callable[[], bool], seconds: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.05)
