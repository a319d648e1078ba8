"""The record-id check and the timestamp parsing of core.model: what they accept, and their
reasons word for word, the ones the Graph mapping gives (behind the property's name)."""
from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from core.model.checks import InvalidValue, check_record_id, preview
from core.model.schema import TenantRef
from core.model.times import parse_timestamp
from mappings.graph_alerts_v2 import MappingError, normalise
from tests.peers.alert_factory import make_alerts


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-16T08:41:21.2156889Z", datetime(2026, 11, 16, 8, 41, 21, 215688, tzinfo=UTC)),  # 7th digit cut
    ("2026-11-16T08:41:21Z", datetime(2026, 11, 16, 8, 41, 21, tzinfo=UTC)),
    ("2026-11-16T10:41:21.5+02:00", datetime(2026, 11, 16, 8, 41, 21, 500000, tzinfo=UTC)),
    ("2026-11-16T08:41:21.5", datetime(2026, 11, 16, 8, 41, 21, 500000, tzinfo=UTC)),  # no offset: UTC
])
def test_timestamps_are_read_into_utc(text: str, expected: datetime) -> None:
    moment = parse_timestamp(text)
    assert moment == expected and moment.tzinfo is UTC


def test_an_offset_is_converted_not_dropped() -> None:
    moment = parse_timestamp("2026-11-16T03:41:21-05:00")
    assert moment.utcoffset() == timedelta(0) and moment.hour == 8
    assert moment == datetime(2026, 11, 16, 3, 41, 21, tzinfo=timezone(timedelta(hours=-5)))


@pytest.mark.parametrize(("value", "reason"), [
    (5, "expected an ISO 8601 date-time string, got int"),
    (None, "expected an ISO 8601 date-time string, got NoneType"),
    ("yesterday", "not an ISO 8601 date-time: 'yesterday'"),
    ("x" * 100, "not an ISO 8601 date-time: '" + "x" * 56 + "..."),
    ("9999-12-31T23:59:59-05:00", "out of range once converted to UTC: '9999-12-31T23:59:59-05:00'"),
])
def test_timestamp_reasons(value: Any, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_timestamp(value)
    assert str(caught.value) == reason


@pytest.mark.parametrize(("record_id", "reason"), [
    (" ", "blank"),
    ("\t\n", "blank"),
    ("da638\ud800", "not valid Unicode (a lone surrogate)"),
])
def test_record_id_reasons(record_id: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        check_record_id(record_id)
    assert str(caught.value) == reason


@pytest.mark.parametrize("record_id", ["da638_1364969609", "fa245cdc09-d065", "Zürich-Ω-1"])
def test_good_record_ids_pass(record_id: str) -> None:
    check_record_id(record_id)


def test_preview_keeps_a_message_short() -> None:
    assert preview("abc") == "'abc'"
    assert len(preview("y" * 10_000_000)) == 60


@pytest.mark.parametrize(("prop", "value"), [
    ("lastUpdateDateTime", "yesterday"),
    ("lastUpdateDateTime", 5),
    ("lastUpdateDateTime", "9999-12-31T23:59:59-05:00"),
    ("createdDateTime", "z" * 100),
    ("id", " "),
    ("id", "a\ud800"),
])
def test_the_graph_mapping_gives_the_same_reasons(prop: str, value: Any) -> None:
    """So the mapping can use these functions and keep every dead letter's reason."""
    alert = make_alerts(1, "t", datetime(2026, 11, 1, tzinfo=UTC), timedelta(minutes=1), seed=1)[0]
    alert[prop] = value
    with pytest.raises(MappingError) as by_mapping:
        normalise(alert, TenantRef(id="t", label="l"), datetime.now(UTC))
    with pytest.raises(InvalidValue) as by_model:
        if prop == "id":
            check_record_id(value)
        else:
            parse_timestamp(value)
    assert str(by_mapping.value) == f"{prop}: {by_model.value}"
