"""The rest of the store contract, on both backends (the `store` fixture: SQLite, PostgreSQL):
windows that keep failing and slices skipped, overlap reads, known alerts, every cursor, the
outbox's oldest rows and depths per tenant, dead letters per sink and their counts, sink
memory, tenant status. What test_state.py does not already hold each backend to."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from core.model.schema import EventMeta, Severity
from core.model.times import format_time
from core.state import DeadLetter, PageCommit, WindowState

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def store(open_store: Callable[[], Any]) -> Any:
    return open_store()


def _meta(tenant: str, alert_id: str) -> EventMeta:
    return EventMeta(tenant, "acme", alert_id, f"{tenant}/{alert_id}/v", Severity.medium, T0.timestamp())


def test_a_failing_window_is_counted_until_read_and_skipped_slices_are_kept_until_pruned(store: Any) -> None:
    assert store.window_failures("t1", "graph_alerts") == 0
    assert [store.window_failed("t1", "graph_alerts", "503") for _ in range(3)] == [1, 2, 3]
    assert store.window_failed("t1", "graph_incidents", "malformed page") == 1
    first = (T0, T0 + timedelta(minutes=1), "503 at the smallest span")
    later = (T0 + timedelta(hours=1), T0 + timedelta(hours=1, minutes=1), "503")
    store.commit_page(PageCommit("t1", "graph_alerts", skipped=[later, first], window_read=True, cursor=T0))
    assert store.window_failures("t1", "graph_alerts") == 0 and store.window_failures("t1", "graph_incidents") == 1
    assert store.skipped_windows("t1", "graph_alerts") == [first[:2], later[:2]]
    assert store.skipped_windows("t1", "graph_incidents") == []
    store.prune_seen("t1", T0 + timedelta(minutes=30))  # behind every later window: gone
    assert store.skipped_windows("t1", "graph_alerts") == [later[:2]]


def test_overlap_reads_known_alerts_and_every_cursor(store: Any) -> None:
    assert store.overlap_read("t1", "graph_alerts") is None and store.cursors() == {}
    before = time.time()
    store.commit_page(PageCommit("t1", "graph_alerts", seen=[("a1", format_time(T0))], cursor=T0,
                                 reread_from=T0 - timedelta(hours=1)))
    store.commit_page(PageCommit("t2", "graph_incidents", cursor=T0 + timedelta(days=1)))
    reread_from, read_at = store.overlap_read("t1", "graph_alerts")
    assert reread_from == T0 - timedelta(hours=1) and read_at >= before - 1
    store.commit_page(PageCommit("t1", "graph_alerts", reread_from=T0))  # the next full read replaces it
    assert store.overlap_read("t1", "graph_alerts")[0] == T0
    assert store.known("t1", ["a1", "a2"]) == {"a1"} and store.known("t2", ["a1"]) == set()
    assert store.known("t1", []) == set() and store.unseen("t1", []) == set() and store.latest_taken("t1", []) == {}
    assert store.cursors() == {("t1", "graph_alerts"): T0, ("t2", "graph_incidents"): T0 + timedelta(days=1)}


def test_a_window_s_state_in_one_read_is_what_its_four_reads_say(store: Any) -> None:
    """What every poll starts with, read at once (one round trip on PostgreSQL)."""
    assert store.window_state("t1", "graph_alerts") == WindowState(None, None, [], 0)
    store.window_failed("t1", "graph_alerts", "503")
    slices = [(T0 + timedelta(hours=1), T0 + timedelta(hours=2), "503"), (T0, T0 + timedelta(minutes=1), "503")]
    store.commit_page(PageCommit("t1", "graph_alerts", skipped=slices, cursor=T0 + timedelta(days=1),
                                 reread_from=T0 - timedelta(hours=1)))
    store.window_failed("t1", "graph_alerts", "503 again")
    store.commit_page(PageCommit("t1", "graph_incidents", cursor=T0))  # another source's: not this one's
    state = store.window_state("t1", "graph_alerts")
    assert state == WindowState(store.cursor("t1", "graph_alerts"), store.overlap_read("t1", "graph_alerts"),
                                store.skipped_windows("t1", "graph_alerts"), store.window_failures("t1", "graph_alerts"))
    assert state.cursor == T0 + timedelta(days=1) and state.failures == 2  # no window_read: still counted
    assert state.skipped == [(T0, T0 + timedelta(minutes=1)), (T0 + timedelta(hours=1), T0 + timedelta(hours=2))]
    assert state.overlap_read is not None and state.overlap_read[0] == T0 - timedelta(hours=1)


def test_the_outbox_oldest_and_depths_per_tenant(store: Any) -> None:
    assert store.outbox_oldest() == {} and store.outbox_depths_by_tenant() == {}
    before = time.time()
    store.outbox_append("siem", [(_meta("t1", "a1"), b"1"), (_meta("t2", "a2"), b"2")])
    store.outbox_append("archive", [(_meta("t1", "a3"), b"3")])
    store.outbox_append("siem", [(_meta("t1", "a4"), b"4")])
    oldest = store.outbox_oldest()
    assert set(oldest) == {"siem", "archive"} and all(before - 1 <= t <= time.time() + 1 for t in oldest.values())
    assert store.outbox_depths_by_tenant() == {("t1", "siem"): 2, ("t2", "siem"): 1, ("t1", "archive"): 1}
    store.outbox_delivered("archive", [row.id for row in store.outbox_batch("archive", 10)], whole_batch=True)
    assert set(store.outbox_oldest()) == {"siem"}
    assert [row.payload for row in store.outbox_batch("siem", 2)] == [b"1", b"2"]


def test_dead_letters_per_sink_their_counts_and_only_new_ones_returned(store: Any) -> None:
    bad = DeadLetter("normalise", None, "t1", None, b'{"id": 1}', "normalise: lastUpdateDateTime: missing",
                     source="graph_incidents")
    skipped = DeadLetter("poll", None, "t1", None, b"2026-11-20 12:00/12:01", "503 at the smallest span")
    assert store.commit_page(PageCommit("t1", "graph_incidents", dead=[bad, skipped])) == [bad, skipped]
    assert store.commit_page(PageCommit("t1", "graph_incidents", dead=[bad])) == []  # filed once
    store.outbox_append("siem", [(_meta("t1", f"a{i}"), b"x%d" % i) for i in range(3)])
    store.outbox_dead([(row, f"refused {row.meta.alert_id}") for row in store.outbox_batch("siem", 10)])
    assert store.outbox_depth("siem") == 0
    assert store.dead_letter_counts() == {None: 1, "siem": 3}  # the skipped slice is no alert
    assert store.dead_letter_counts(since=time.time() + 60) == {}
    letters = store.dead_letters("siem", limit=2)
    assert [(d.reason, d.payload, d.meta) for d in letters] == [("refused a0", b"x0", _meta("t1", "a0")),
                                                                ("refused a1", b"x1", _meta("t1", "a1"))]
    (normalise,) = [d for d in store.dead_letters() if d.stage == "normalise"]
    assert (normalise.source, normalise.meta, normalise.payload) == ("graph_incidents", None, b'{"id": 1}')
    assert normalise.id > 0 and normalise.created > 0
    store.dead_letters_remove([d.id for d in letters])
    assert store.dead_letter_counts() == {None: 1, "siem": 1}


def test_sink_memory_and_tenant_status(store: Any) -> None:
    store.memory_put("mail", {"k1": "a", "k2": "b"})
    store.memory_put("mail", {"k1": "c"})
    store.memory_put("other", {"k1": "z"})
    assert (store.memory_get("mail", "k1"), store.memory_get("mail", "k2"), store.memory_get("mail", "k3")) == (
        "c", "b", None)
    assert store.forget_old_sink_memory() == 0 and store.memory_get("other", "k1") == "z"

    store.record_success("t1", "acme", 3)
    store.record_error("t1", "Acme Corp", "consent revoked (AADSTS65001)")
    store.record_error("t2", "globex", "403")
    failing = store.tenant_statuses()["t1"]
    assert (failing.label, failing.last_error, failing.forwarded_total) == ("Acme Corp", "consent revoked (AADSTS65001)", 3)
    assert failing.last_success is not None and failing.last_error_at is not None
    store.record_success("t1", "acme", 2)  # a success clears the error
    statuses = store.tenant_statuses()
    assert (statuses["t1"].last_error, statuses["t1"].forwarded_total, statuses["t1"].label) == (None, 5, "acme")
    assert (statuses["t2"].last_success, statuses["t2"].forwarded_total) == (None, 0)
    assert isinstance(store.reclaim_space(), int)
    store.ping()
