"""Durations as operators write them, and the backoff every retry waits."""
from __future__ import annotations

import pytest

from core.model.durations import backoff_delay, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5m", 300), ("1d", 86400), ("1h30m", 5400), ("90s", 90), (30, 30), ("2.5", 2.5), ("250ms", 0.25)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 minutes", "m5", "", "-5m", True, "5x"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    for attempt in range(12):
        ceiling = min(60.0, 1.0 * 2 ** attempt)
        delays = [backoff_delay(attempt) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1  # jitter: many forwarders do not retry in step
    assert max(backoff_delay(30, base=0.5, cap=5.0) for _ in range(50)) <= 5.0
