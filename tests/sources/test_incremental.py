"""The incremental window (core/sources/incremental.py), against the real state store.

A closed start; the overlap re-read and its duplicates skipped; dedupe on the version key (the
same version again is a duplicate, an update a new version, the same version twice in a page
one); the cursor that moves with a window's last page only, never back; backfill's `since`;
the prune horizon. The seen-marks are the SQLite store's, as the pipeline commits them.
"""
from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest

from core.model.times import format_time
from core.sources import graph_alerts
from core.sources.contract import VersionKey
from core.sources.incremental import (
    MIN_SPLIT_SPAN,
    SeenVersions,
    Span,
    Version,
    Window,
    prune_horizon,
    spans_to_read,
    version_reader,
    window_start,
)
from core.sources.replay import ReplaySource
from core.state import PageCommit
from core.state.sqlite import SQLiteStore
from tests.helpers import write_replay

TENANT = "22222222-2222-4222-8222-222222222222"
KIND = graph_alerts.KIND
T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
OVERLAP = timedelta(minutes=15)
LOOKBACK = timedelta(days=1)


def stamp(moment: datetime) -> str:
    """Graph's own spelling: seven fraction digits and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def record(record_id: str, moment: datetime, **extra: Any) -> dict[str, Any]:
    return {"id": record_id, "lastUpdateDateTime": stamp(moment), **extra}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    store = SQLiteStore(tmp_path / "state.db")
    yield store
    store.close()


def open_window(store: SQLiteStore, since: datetime | None = None) -> tuple[Window, datetime]:
    """A window from the stored cursor, as the pipeline opens one."""
    cursor = store.cursor(TENANT, KIND.name)
    seen: SeenVersions = store  # the store is the window's SeenVersions as it is
    window = Window(TENANT, KIND.version, seen, cursor=cursor, overlap=OVERLAP)
    return window, window_start(cursor, overlap=OVERLAP, initial_lookback=LOOKBACK, now=lambda: T0, since=since)


def take_page(store: SQLiteStore, window: Window, records: list[Any], last: bool) -> tuple[list[Version], int]:
    """One page through the window (the records being their own normalised form here), committed
    as the pipeline commits it; the new versions and how many were skipped unnormalised."""
    fresh, skipped = window.skip_seen(records)
    read = version_reader(KIND.version)
    versions = window.new_versions([found for found in map(read, fresh) if found is not None])
    new = [version for version in versions if version is not None]
    store.commit_page(PageCommit(TENANT, KIND.name, seen=new, cursor=window.end_page(last)))
    return new, skipped


def run_window(store: SQLiteStore, pages: list[list[Any]], since: datetime | None = None) -> list[Version]:
    window, _ = open_window(store, since)
    new: list[Version] = []
    for number, records in enumerate(pages, start=1):
        new += take_page(store, window, records, last=number == len(pages))[0]
    horizon = window.prune_before()
    if horizon is not None:
        store.prune_seen(TENANT, horizon)
    return new


# ---------------------------------------------------------------- where a window starts

def test_first_window_starts_initial_lookback_ago() -> None:
    assert window_start(None, overlap=OVERLAP, initial_lookback=LOOKBACK, now=lambda: T0) == T0 - LOOKBACK


def test_next_windows_start_one_overlap_before_the_cursor() -> None:
    def no_clock() -> datetime:
        raise AssertionError("a window with a cursor does not ask the clock")

    assert window_start(T0, overlap=OVERLAP, initial_lookback=LOOKBACK, now=no_clock) == T0 - OVERLAP


def test_backfill_starts_at_since_whatever_the_cursor() -> None:
    since = datetime(2026, 10, 1, tzinfo=UTC)
    assert window_start(T0, overlap=OVERLAP, initial_lookback=LOOKBACK, now=lambda: T0, since=since) == since
    assert window_start(None, overlap=OVERLAP, initial_lookback=LOOKBACK, now=lambda: T0, since=since) == since


def test_the_start_is_closed(tmp_path: Path) -> None:
    """A record stamped exactly at the start is read; one a microsecond before is not."""
    start = T0 - OVERLAP
    folder = write_replay(tmp_path / "replay", [[
        record("before", start - timedelta(microseconds=1)), record("at", start), record("after", T0)]])

    async def read() -> list[str]:
        return [r["id"] async for page in ReplaySource(KIND, str(folder), 10).pages(start) for r in page.alerts]

    assert asyncio.run(read()) == ["at", "after"]


def test_a_bounded_window_has_an_open_end(tmp_path: Path) -> None:
    """`until` is `lt`: a record stamped exactly at it belongs to the next slice."""
    folder = write_replay(tmp_path / "replay", [[
        record("start", T0), record("inside", T0 + timedelta(seconds=1)), record("end", T0 + timedelta(seconds=2))]])

    async def read(since: datetime, until: datetime) -> list[str]:
        source = ReplaySource(KIND, str(folder), 10)
        return [r["id"] async for page in source.pages(since, until) for r in page.alerts]

    assert asyncio.run(read(T0, T0 + timedelta(seconds=2))) == ["start", "inside"]
    assert asyncio.run(read(T0 + timedelta(seconds=2), T0 + timedelta(seconds=3))) == ["end"]


# ---------------------------------------------------------------- a window that keeps failing

def test_a_window_is_read_around_its_skipped_slices() -> None:
    a, b = (T0 + timedelta(minutes=1), T0 + timedelta(minutes=1, seconds=1)), (T0 + timedelta(minutes=5),
                                                                                T0 + timedelta(minutes=6))
    behind = (T0 - timedelta(hours=1), T0 - timedelta(minutes=30))  # before the window: no matter
    assert spans_to_read(T0, [b, behind, a]) == [Span(T0, a[0]), Span(a[1], b[0]), Span(b[1])]
    end = T0 + timedelta(minutes=5, seconds=30)  # a bounded window (a split) ending inside a slice
    assert spans_to_read(T0, [a, b], end) == [Span(T0, a[0]), Span(a[1], b[0])]
    assert spans_to_read(T0, [], end) == [Span(T0, end)]
    assert spans_to_read(a[0], [a]) == [Span(a[1])]  # a window starting inside a slice


def test_halves_meet_and_stop_at_the_smallest_span() -> None:
    span = Span(T0, T0 + timedelta(days=1))
    levels = 0
    while span.splittable():
        left, right = span.halves()
        assert left.start == span.start and left.end == right.start and right.end == span.end
        span, levels = left, levels + 1
    assert span.end is not None and span.end - span.start <= MIN_SPLIT_SPAN
    assert levels == 17  # a day: 17 halvings to a second or less
    assert not Span(T0).splittable()  # an open span is bounded first


def test_failed_cycles_are_counted_until_the_window_is_read_and_skipped_slices_pruned(store: SQLiteStore) -> None:
    assert store.window_failures(TENANT, KIND.name) == 0
    assert [store.window_failed(TENANT, KIND.name, "HTTP 500") for _ in range(3)] == [1, 2, 3]
    assert store.window_failures(TENANT, "graph_incidents") == 0  # each source its own count
    slice_ = (T0, T0 + timedelta(seconds=1))
    store.commit_page(PageCommit(TENANT, KIND.name, cursor=T0 + timedelta(minutes=20),
                                 skipped=[(*slice_, "HTTP 500")], window_read=True))
    assert store.window_failures(TENANT, KIND.name) == 0
    assert store.skipped_windows(TENANT, KIND.name) == [slice_]
    store.prune_seen(TENANT, T0)  # a horizon before the slice's end keeps it
    assert store.skipped_windows(TENANT, KIND.name) == [slice_]
    store.prune_seen(TENANT, T0 + timedelta(minutes=5))
    assert store.skipped_windows(TENANT, KIND.name) == []


# ---------------------------------------------------------------- overlap and dedupe

def test_the_overlap_is_read_again_and_what_it_holds_is_not_new(store: SQLiteStore) -> None:
    first = [record("a", T0 - timedelta(minutes=10)), record("b", T0 - timedelta(minutes=5))]
    assert [v[0] for v in run_window(store, [first])] == ["a", "b"]
    assert store.cursor(TENANT, KIND.name) == T0 - timedelta(minutes=5)
    window, start = open_window(store)
    assert start == T0 - timedelta(minutes=20)  # both fall in the overlap: read again
    late = record("late", T0 - timedelta(minutes=7))  # indexed late, stamped before the cursor
    new, skipped = take_page(store, window, [*first, late, record("c", T0 - timedelta(minutes=1))], last=True)
    assert ([v[0] for v in new], skipped) == (["late", "c"], 2)
    assert store.cursor(TENANT, KIND.name) == T0 - timedelta(minutes=1)


def test_the_same_version_again_is_a_duplicate_and_an_update_a_new_version(store: SQLiteStore) -> None:
    run_window(store, [[record("a", T0 - timedelta(minutes=3))]])
    window, _ = open_window(store)
    again, update = record("a", T0 - timedelta(minutes=3)), record("a", T0 - timedelta(minutes=1), status="resolved")
    fresh, skipped = window.skip_seen([again, update])
    assert (fresh, skipped) == ([update], 1)  # skipped before normalising
    assert window.new_versions([("a", T0 - timedelta(minutes=3)), ("a", T0 - timedelta(minutes=1))]) == [
        None, ("a", "2026-11-20T11:59:00.000000Z")]  # and after normalising, should it get that far


def test_the_same_version_twice_in_one_page_is_one(store: SQLiteStore) -> None:
    window, _ = open_window(store)
    twice = [record("a", T0), record("b", T0), record("a", T0)]
    fresh, skipped = window.skip_seen(twice)
    assert (len(fresh), skipped) == (3, 0)  # none seen before: the dedupe after normalising decides
    assert window.new_versions([("a", T0), ("b", T0), ("a", T0)]) == [
        ("a", "2026-11-20T12:00:00.000000Z"), ("b", "2026-11-20T12:00:00.000000Z"), None]


def test_the_version_is_the_id_and_the_time_to_the_microsecond(store: SQLiteStore) -> None:
    """Graph's 7th fraction digit is below what the state keeps: 100 ns apart is one version."""
    run_window(store, [[{"id": "a", "lastUpdateDateTime": "2026-11-20T11:59:00.1234561Z"}]])
    window, _ = open_window(store)
    _, skipped = window.skip_seen([{"id": "a", "lastUpdateDateTime": "2026-11-20T11:59:00.1234569Z"},
                                   {"id": "a", "lastUpdateDateTime": "2026-11-20T11:59:00.1234571Z"},
                                   {"id": "b", "lastUpdateDateTime": "2026-11-20T11:59:00.1234561Z"}])
    assert skipped == 1


def test_what_the_cheap_read_cannot_judge_goes_on_to_be_normalised(store: SQLiteStore) -> None:
    run_window(store, [[record("a", T0)]])
    window, _ = open_window(store)
    at = stamp(T0)
    unjudged = [["a"], {"id": "a"}, {"id": 7, "lastUpdateDateTime": at}, {"id": "", "lastUpdateDateTime": at},
                {"id": " ", "lastUpdateDateTime": at}, {"id": "a\ud800", "lastUpdateDateTime": at},
                {"id": "a", "lastUpdateDateTime": "soon"}, {"id": "a", "lastUpdateDateTime": 1.5}]
    assert window.skip_seen([*unjudged, record("a", T0)]) == (unjudged, 1)


# ---------------------------------------------------------------- the cursor

def test_the_cursor_moves_only_with_the_windows_last_page_to_its_high_water(store: SQLiteStore) -> None:
    """Pages come in no promised order: the newest record may be on the first page."""
    window, _ = open_window(store)
    take_page(store, window, [record("new", T0), record("x", T0 - timedelta(hours=3))], last=False)
    assert store.cursor(TENANT, KIND.name) is None
    take_page(store, window, [record("old", T0 - timedelta(hours=2))], last=True)
    assert store.cursor(TENANT, KIND.name) == T0


def test_a_window_broken_off_is_read_again_from_the_old_cursor(store: SQLiteStore) -> None:
    run_window(store, [[record("a", T0 - timedelta(hours=1))]])
    window, _ = open_window(store)
    take_page(store, window, [record("b", T0)], last=False)  # then the read fails: no last page
    window, start = open_window(store)
    assert start == T0 - timedelta(hours=1) - OVERLAP
    new, skipped = take_page(store, window, [record("b", T0), record("c", T0 - timedelta(minutes=30))], last=True)
    assert ([v[0] for v in new], skipped) == (["c"], 1)  # b was queued by the broken window: not again
    assert store.cursor(TENANT, KIND.name) == T0


def test_a_high_water_from_seen_versions_counts_too(store: SQLiteStore) -> None:
    """A page of nothing but duplicates still carries the window's high-water mark."""
    window, _ = open_window(store)
    take_page(store, window, [record("a", T0)], last=False)  # seen-marked, cursor not yet moved
    window, _ = open_window(store)
    assert take_page(store, window, [record("a", T0)], last=True)[1] == 1
    assert store.cursor(TENANT, KIND.name) == T0


def test_an_empty_window_leaves_the_cursor_where_it_was(store: SQLiteStore) -> None:
    run_window(store, [[record("a", T0)]])
    window, _ = open_window(store)
    assert window.end_page(True) is None  # nothing read past the cursor: nothing to commit, it stays
    assert run_window(store, [[]]) == [] and store.cursor(TENANT, KIND.name) == T0
    window, _ = open_window(store)
    assert window.skip_seen([]) == ([], 0) and window.new_versions([]) == []


def test_backfill_reads_from_since_and_the_cursor_never_goes_back(store: SQLiteStore) -> None:
    run_window(store, [[record("a", T0)]])
    since = T0 - timedelta(days=30)
    window, start = open_window(store, since=since)
    assert start == since
    new, _ = take_page(store, window, [record("old", since + timedelta(days=1)), record("a", T0)], last=True)
    assert [v[0] for v in new] == ["old"]
    assert store.cursor(TENANT, KIND.name) == T0


def version(raw: dict[str, Any]) -> Version:
    """A raw record's version as the state stores it."""
    found = version_reader(KIND.version)(raw)
    assert found is not None
    return found[0], format_time(found[1])


def test_a_backfill_past_the_horizon_skips_what_was_taken_and_takes_its_updates(store: SQLiteStore) -> None:
    old = record("old", T0 - timedelta(days=3))
    run_window(store, [[old, record("top", T0)]])
    assert store.unseen(TENANT, [version(old)]) == {version(old)}  # its seen-mark was pruned
    since = T0 - timedelta(days=5)
    window, _ = open_window(store, since=since)
    assert window.skip_seen([old]) == ([], 1)
    updated = record("old", T0 - timedelta(days=2), status="resolved")
    new, skipped = take_page(store, window, [old, updated], last=True)
    assert (new, skipped) == ([version(updated)], 1)
    # The update is the latest taken now: the version before it stays a duplicate.
    window, _ = open_window(store, since=since)
    assert window.new_versions([("old", T0 - timedelta(days=3)), ("old", T0 - timedelta(days=2))]) == [None, None]


def test_resend_takes_every_version_again_but_once_a_page(store: SQLiteStore) -> None:
    a, b = record("a", T0 - timedelta(minutes=1)), record("b", T0)
    run_window(store, [[a, b]])
    window = Window(TENANT, KIND.version, store, cursor=T0, overlap=OVERLAP, resend=True)
    fresh, skipped = window.skip_seen([a, b, a])
    assert (fresh, skipped) == ([a, b, a], 0)
    read = version_reader(KIND.version)
    assert window.new_versions([read(r) for r in fresh]) == [version(a), version(b), None]  # type: ignore[misc]


# ---------------------------------------------------------------- pruning

def test_seen_marks_are_pruned_below_high_water_minus_overlap(store: SQLiteStore) -> None:
    old, inside = record("old", T0 - timedelta(hours=2)), record("inside", T0 - timedelta(minutes=10))
    run_window(store, [[old, inside, record("top", T0)]])
    window, _ = open_window(store)
    assert window.prune_before() == T0 - OVERLAP
    # The overlap's seen-marks stay (the next window re-reads it); those below it went.
    assert store.unseen(TENANT, [version(old), version(inside)]) == {version(old)}
    # ... and the pruned version still counts as taken (see the backfill tests below).
    assert window.skip_seen([old, inside]) == ([], 2)


def test_nothing_is_pruned_before_anything_was_read(store: SQLiteStore) -> None:
    window, _ = open_window(store)
    assert window.prune_before() is None
    assert prune_horizon([window]) is None and prune_horizon([]) is None


def test_a_tenants_horizon_is_the_lowest_of_its_kinds(store: SQLiteStore) -> None:
    """The seen-marks of a tenant are one set for all its kinds: one kind's window may not prune
    what the next window of another, further behind, reads again."""
    ahead = Window(TENANT, KIND.version, store, cursor=T0, overlap=OVERLAP)
    behind = Window(TENANT, KIND.version, store, cursor=T0 - timedelta(hours=2), overlap=OVERLAP)
    never_read = Window(TENANT, KIND.version, store, cursor=None, overlap=OVERLAP)
    assert prune_horizon([ahead, never_read, behind]) == T0 - timedelta(hours=2) - OVERLAP
    assert prune_horizon([ahead]) == ahead.prune_before() == T0 - OVERLAP


# ---------------------------------------------------------------- the version key

def test_the_version_is_read_by_the_kinds_version_key() -> None:
    """A kind whose records name their id and time otherwise (MDE's `lastUpdateTime`)."""
    read = version_reader(VersionKey(id="id", time="lastUpdateTime"))
    assert read({"id": "da1", "lastUpdateTime": "2026-11-20T12:00:00Z"}) == ("da1", T0)
    assert read({"id": "da1", "lastUpdateDateTime": "2026-11-20T12:00:00Z"}) is None


@pytest.fixture
def deep_json() -> Iterator[None]:
    """The hostile corpus has 1,010-level alerts, and building them recurses once per level."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, 10_000))
    yield
    sys.setrecursionlimit(previous)


@pytest.mark.usefixtures("deep_json")
def test_the_version_read_agrees_with_the_golden_snapshot_on_every_case() -> None:
    """The snapshot keeps, per case of the fixed corpus (generated, hostile, demo), the version
    the Graph mapping reads: the window's read must be the same, case by case."""
    from tests.mappings import golden_formats

    expected = {row["case"]: row["version_of"]
                for row in map(orjson.loads, golden_formats.SNAPSHOT.read_bytes().splitlines())}
    read = version_reader(KIND.version)
    found = {}
    for case, raw in golden_formats.corpus():
        version = read(raw)
        found[case] = None if version is None else [version[0], version[1].isoformat()]
    assert found == expected
    assert sum(version is None for version in found.values()) > 20  # the hostile cases are in


# ---- records handed over as their JSON text (msgspec.Raw), as the Graph reader does ---------

def raw_records(page: bytes) -> list[Any]:
    from core.sources.graph import _split_page

    split = _split_page(page)
    assert split is not None and not isinstance(split, dict), "this page splits into its records' texts"
    return list(split.value)


def test_raw_records_are_judged_like_parsed_ones_and_only_the_fresh_parsed(store: SQLiteStore) -> None:
    seen = record("a", T0, title="seen before")
    window, _ = open_window(store)
    take_page(store, window, [seen], last=True)
    update = record("a", T0 + timedelta(minutes=1), title="an update")
    page = orjson.dumps({"value": [seen, update, 5, {"no": "id"}], "@odata.nextLink": None})
    window, _ = open_window(store)
    fresh, skipped = window.skip_seen(raw_records(page))
    # The seen version is skipped; the update, and what only the mapping can judge, come parsed.
    assert (fresh, skipped) == ([update, 5, {"no": "id"}], 1)
    assert window.high_water == T0  # the skipped version still counts for the cursor


def test_a_raw_record_with_a_repeated_key_is_read_as_the_parsed_record_reads(store: SQLiteStore) -> None:
    """JSON lets a key repeat; the last one wins in orjson. The version read from the text must
    be the one the mapping will read, or an update could be skipped as seen."""
    window, _ = open_window(store)
    take_page(store, window, [record("a", T0)], last=True)
    text = (b'{"value": [{"id": "a", "lastUpdateDateTime": "' + stamp(T0).encode()
            + b'", "lastUpdateDateTime": "' + stamp(T0 + timedelta(minutes=5)).encode() + b'"}]}')
    window, _ = open_window(store)
    fresh, skipped = window.skip_seen(raw_records(text))
    assert skipped == 0 and fresh == [orjson.loads(text)["value"][0]]
    assert fresh[0]["lastUpdateDateTime"] == stamp(T0 + timedelta(minutes=5))


def test_pages_the_record_split_cannot_take_are_read_as_before() -> None:
    from core.sources.graph import _split_page

    # A lone surrogate: msgspec refuses it, the standard library (jsonutil's fallback) reads it.
    lone = b'{"value": [{"id": "\\ud800", "lastUpdateDateTime": "2026-11-20T12:00:00Z"}]}'
    assert _split_page(lone) == {"value": [{"id": "\ud800", "lastUpdateDateTime": "2026-11-20T12:00:00Z"}]}
    # An invalid UTF-8 byte inside a record: not JSON, as it always was (retried, then the window
    # is broken), not a page split around a record nobody can read.
    assert _split_page(b'{"value": [{"id": "a\xff"}]}') is None
    # No value list: the dict, whose reading raises BrokenWindow as before.
    assert _split_page(b'{"error": {"code": "x"}}') == {"error": {"code": "x"}}
    assert _split_page(b"not json") is None


# ---- the overlap re-read, at least every overlap_every (next_read) --------------------------

def test_next_read_reads_from_the_cursor_until_the_overlap_reread_is_due() -> None:
    from core.sources.incremental import RECENT_REREAD, OverlapRead, next_read

    def read(cursor: datetime | None, last: OverlapRead | None, epoch: float, partial: bool = True) -> Any:
        return next_read(cursor, last, overlap=OVERLAP, initial_lookback=LOOKBACK, now=lambda: T0, epoch=epoch,
                         partial=partial, overlap_every=300.0, poll_interval=10.0)

    cursor = T0 - timedelta(minutes=1)
    last = OverlapRead(reread_from=T0 - timedelta(minutes=20), read_at=1000.0)
    assert read(None, last, 1000.0) == (T0 - LOOKBACK, True)  # a first read: the lookback
    assert read(cursor, None, 1000.0) == (cursor - OVERLAP, True)  # no re-read before: one now
    assert read(cursor, last, 1100.0) == (cursor - RECENT_REREAD, False)  # between re-reads: from near the cursor
    # Due once the next poll would come later than overlap_every after the last re-read; it
    # starts where that re-read's cursor minus the overlap was, not at today's.
    assert read(cursor, last, 1291.0) == (T0 - timedelta(minutes=20), True)
    assert read(cursor, last, 1100.0, partial=False) == (T0 - timedelta(minutes=20), True)  # run --once
    # A cursor that jumped since (a backlog, then live records): no further back than
    # overlap + overlap_every (+ a poll) before it, which still covers every record visible since.
    jumped = T0 + timedelta(hours=1)
    assert read(jumped, last, 1291.0) == (jumped - OVERLAP - timedelta(seconds=310), True)


def test_a_partial_read_keeps_the_seen_marks_the_next_reread_needs(store: SQLiteStore) -> None:
    keep_from = T0 - timedelta(minutes=40)
    window = Window(TENANT, KIND.version, store, cursor=T0, overlap=OVERLAP, full=False, keep_from=keep_from)
    assert window.prune_before() == keep_from and window.reread_from(True) is None
    full = Window(TENANT, KIND.version, store, cursor=T0, overlap=OVERLAP, full=True, keep_from=keep_from)
    assert full.prune_before() == T0 - OVERLAP and full.reread_from(True) == T0 - OVERLAP
    assert full.reread_from(False) is None  # only with the window's last page
