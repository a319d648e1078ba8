"""connectors/sizes.py: requests within the destination's limit, and what its 413s teach."""
from __future__ import annotations

import logging

import pytest

from connectors.base import NOT_SENT, BatchResults, EventResult, Outcome
from connectors.sizes import FLOOR, RequestLimit

TOO_LARGE = EventResult(Outcome.PERMANENT, "too large (413)")
LOG = logging.getLogger("defender_forwarder.test_sink")


def test_without_a_known_limit_a_batch_is_one_request() -> None:
    limit = RequestLimit(None, "siem", "SIEM", LOG)
    assert limit.requests(range(4), [10_000] * 4) == [[0, 1, 2, 3]]
    assert limit.requests([], []) == []


def test_requests_keep_the_order_and_stay_within_the_limit() -> None:
    limit = RequestLimit(3000, "siem", "SIEM", LOG)
    sizes = [1000, 1500, 600, 2900, 4000, 10, 20]
    assert limit.requests(range(7), sizes) == [[0, 1], [2], [3], [4], [5, 6]]  # one too large goes alone
    assert limit.requests([1, 2, 5], sizes) == [[1, 2, 5]]


def test_a_413_halves_the_request_and_keeps_half_its_size_as_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    limit = RequestLimit(None, "siem", "SIEM", LOG)
    results = BatchResults(5)
    with caplog.at_level(logging.WARNING):
        halves = limit.refused([0, 1, 2, 3, 4], 10_000, results, TOO_LARGE)
    assert halves == [[0, 1], [2, 3, 4]] and limit.bytes == 5000
    assert results.unsettled() == [0, 1, 2, 3, 4]  # nothing settled: both halves go again at once
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("defender_forwarder.test_sink",
                                                                  "sink siem: SIEM refused 10000 bytes (413); "
                                                                  "requests now stay under 5000 bytes")]
    limit.refused([2, 3, 4], 9000, results, TOO_LARGE)
    assert limit.bytes == 4500  # a larger refusal never raises the limit again
    limit.refused([2, 3], 1500, results, TOO_LARGE)
    assert limit.bytes == FLOOR


def test_one_event_still_too_large_is_a_dead_letter_and_the_limit_stays() -> None:
    limit = RequestLimit(8000, "siem", "SIEM", LOG)
    results = BatchResults(3)
    assert limit.refused([1], 7000, results, TOO_LARGE) == []
    assert results.final() == [NOT_SENT, TOO_LARGE, NOT_SENT]
    assert limit.bytes == 8000
