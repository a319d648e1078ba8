"""connectors/base.py: the parts of the contract a connector uses while it sends (the per-event
results of a batch)."""
from __future__ import annotations

from connectors.base import DELIVERED, NOT_SENT, BatchResults, EventResult, Outcome


def test_batch_results_one_per_event_in_order() -> None:
    results = BatchResults(5)
    results.mark([0, 1], DELIVERED)
    results[3] = EventResult(Outcome.PERMANENT, "refused")
    assert results.unsettled() == [2, 4]
    assert results.final() == [DELIVERED, DELIVERED, NOT_SENT, EventResult(Outcome.PERMANENT, "refused"), NOT_SENT]
    assert NOT_SENT == EventResult(Outcome.RETRY, "not sent")


def test_what_stopped_the_sending_is_the_result_of_the_unsent() -> None:
    results = BatchResults(3)
    results[0] = DELIVERED
    failure = EventResult(Outcome.RETRY, "ConnectionError: reset")
    assert results.final(failure) == [DELIVERED, failure, failure]
    results.mark(range(3), EventResult(Outcome.DEFER, "digest not due", 60.0))
    assert results.unsettled() == [] and {r.outcome for r in results.final()} == {Outcome.DEFER}
