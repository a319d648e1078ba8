"""The incremental window of one (tenant, source kind), in one place.

A window reads every record whose time (the kind's `version.time`) is at or after its start,
a closed start: `time ge start`, so a record stamped exactly at the start is read.

- Start: backfill's `since` when given; else the cursor minus the overlap, so that records
  the API indexed late (stamped before the cursor, visible only after it) are read again;
  else, on a tenant's first read, now minus the initial lookback.
- Versions: a record's (id, time), read by the kind's version key. One already seen is a
  duplicate (the overlap re-reads most of a window in steady state); a later time is an
  update, a new version. The same version twice in one page is one version.
- Taken before: past the overlap the seen-marks are pruned, but the state keeps each record's
  latest version taken (180 days). A version at or before it is a duplicate too, so that a
  backfill does not send again what the sinks already had; an update since is new. With
  `resend` (backfill --resend) nothing read counts as seen, only a repeat within one page.
- Seen check before normalising: a cheap read of (id, time) from the raw record skips the
  versions seen before at a small part of normalising's cost. A record it cannot judge goes
  on to be normalised (which dead-letters it or reads its version), never skipped. A source
  may hand over records still as their JSON text (`msgspec.Raw`, one per record of the page):
  their (id, time) is then read without parsing the rest, and only the records that are not
  skipped are parsed at all. In steady state the overlap re-reads mostly seen versions, so
  this is most of an idle cycle's saving (issue 19: re-reading a seen alert cost its full
  parse, about 20 us for 5 KB; now about a third of it).
- Cursor: the window's high-water mark, the largest time read (seen or new). It is committed
  with the window's last page only: the API does not promise page order, so a window broken
  off mid-way is read again whole, and the seen-marks drop what was queued already.
- Overlap re-read, at least every `overlap_every` (daemon): re-reading the whole overlap every
  poll costs an idle tenant a full download of its last 15 minutes each time (issue 19). So a
  daemon's poll reads from just before the cursor on (`ge cursor - 30s`: the new records, and
  those Graph indexed up to 30 s late), and re-reads the overlap only when it is due: before `overlap_every`
  would have passed by the next poll. That full read starts where the previous full read's
  cursor minus the overlap was (`reread_from`, kept in the state with the window's last page),
  not at today's cursor minus the overlap: a record stamped T that became visible V later is
  read by the first full read after it became visible as long as V - T <= overlap, the same
  bound as before (it was overlap - poll_interval), only up to `overlap_every` later. Seen-marks
  are kept from `reread_from` on, so the full read skips what the partial ones took. `run
  --once`, a first read and a backfill always read the whole window (`next_read`).
- A window the API keeps failing is read in slices, and what still fails is skipped (see
  `Span` below; the pipeline drives it, the state keeps the count and the skipped slices).
- Pruning: a seen-mark older than the high-water mark minus the overlap can go, since no
  later window starts below it (a backfill re-reads history on purpose). A tenant's seen-marks
  are one set for all its kinds (the state keys them by tenant, record id and time), so a
  tenant's horizon is the lowest of its kinds' (`prune_horizon`).

The seen-marks live in the state store; sources may not import it, so the window asks
through `SeenVersions`, which `core.state.sqlite.SQLiteStore` satisfies.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec

from core.model import jsonutil
from core.model.checks import InvalidValue, check_record_id
from core.model.times import format_time, parse_timestamp
from core.sources.contract import VersionKey

# (record id, time as the state writes it): how a version is stored and compared.
Version = tuple[str, str]
Clock = Callable[[], datetime]


class SeenVersions(Protocol):
    def unseen(self, tenant_id: str, versions: list[Version]) -> set[Version]:
        """Those of `versions` not marked seen for the tenant (whatever the kind that marked them)."""
        ...

    def latest_taken(self, tenant_id: str, record_ids: Iterable[str]) -> dict[str, str]:
        """For those of the records of which a version was taken before: the latest one's time."""
        ...


def window_start(cursor: datetime | None, *, overlap: timedelta, initial_lookback: timedelta, now: Clock,
                 since: datetime | None = None) -> datetime:
    """Where a window starts (closed): `since` (backfill), else cursor - overlap, else now - initial_lookback."""
    if since is not None:
        return since
    if cursor is not None:
        return cursor - overlap
    return now() - initial_lookback


# A poll between overlap re-reads starts this long before the cursor: Graph indexes most late
# alerts within seconds, and those come with the next poll, not with the next re-read.
RECENT_REREAD = timedelta(seconds=30)


@dataclass(frozen=True)
class OverlapRead:
    """The last full read of a (tenant, kind)'s window: where the next one starts (its cursor
    then, minus the overlap) and when it ended (epoch seconds)."""

    reread_from: datetime
    read_at: float


def next_read(cursor: datetime | None, last_full: OverlapRead | None, *, overlap: timedelta,
              initial_lookback: timedelta, now: Clock, epoch: float, partial: bool, overlap_every: float,
              poll_interval: float, since: datetime | None = None) -> tuple[datetime, bool]:
    """Where a window starts (closed), and whether it is a full read (the overlap re-read).

    Partial (from the cursor) only where `partial` allows it (the daemon), the window has a
    cursor and a full read before, and the next poll would still come within `overlap_every`
    of that full read. A backfill (`since`) and a first read are full, as `window_start` says."""
    full_start = window_start(cursor, overlap=overlap, initial_lookback=initial_lookback, now=now, since=since)
    if since is not None or cursor is None:
        return full_start, True
    if last_full is not None:
        # From the last re-read's cursor minus the overlap, but never further back than
        # overlap + overlap_every before today's cursor: a record visible since that re-read and
        # at most `overlap` late is stamped after it either way (the cursor is at most "now",
        # and this read comes within overlap_every of the last). A cursor that jumped (a
        # backlog read, then live records) would otherwise make this read span the jump.
        widest = cursor - overlap - timedelta(seconds=overlap_every + poll_interval)
        full_start = min(full_start, max(last_full.reread_from, widest))
    if not partial or last_full is None or epoch - last_full.read_at + poll_interval > overlap_every:
        return full_start, True
    return cursor - RECENT_REREAD, False


@functools.cache  # one per kind: a window is opened every poll, and the struct type is not free to make
def version_reader(key: VersionKey) -> Callable[[Any], tuple[str, datetime] | None]:
    """A function reading a raw record's version (id, time) by `key`, as a mapping reads them,
    or None where only the mapping can tell what is wrong. It runs on every record read.
    The id is the record's own, not yet scoped (VersionKey.stored)."""
    id_property, time_property = key.id, key.time
    # Of a record still as its JSON text, the two properties only: the others are skipped, not
    # built. (A struct type made from the key's names: msgspec's public defstruct, no codegen.)
    light = msgspec.json.Decoder(msgspec.defstruct(
        "RecordVersion", [("record_id", Any, None), ("moment", Any, None)],
        rename={"record_id": id_property, "moment": time_property}))

    def read(record: Any) -> tuple[str, datetime] | None:
        if record.__class__ is dict:
            return _version_of(record.get(id_property), record.get(time_property))
        if record.__class__ is msgspec.Raw:
            try:
                found = light.decode(record)
            except msgspec.MsgspecError:  # not an object: the mapping tells what it is
                return None
            return _version_of(found.record_id, found.moment)
        return None

    return read


def _version_of(record_id: Any, sent: Any) -> tuple[str, datetime] | None:
    if record_id.__class__ is not str or not record_id or sent is None:
        return None
    try:
        check_record_id(record_id)
        return record_id, parse_timestamp(sent)
    except InvalidValue:
        return None


def parsed(record: Any) -> Any:
    """A record as the mappings take it: parsed, if it is still its JSON text. Text that does not
    parse (the page did, as a whole) goes on as a string, which the mapping refuses: a dead
    letter that keeps it, never a record dropped."""
    if record.__class__ is not msgspec.Raw:
        return record
    text = bytes(record)
    try:
        return jsonutil.loads(text)
    except ValueError:
        return text.decode("utf-8", "backslashreplace")


class Window:
    """One read of one tenant's records of one kind, page after page, from its start to its
    last page. The caller commits each page with the seen-marks of `new_versions` and the
    cursor of `end_page`, in one transaction."""

    def __init__(self, tenant_id: str, key: VersionKey, seen: SeenVersions, *, cursor: datetime | None,
                 overlap: timedelta, resend: bool = False, full: bool = True,
                 keep_from: datetime | None = None) -> None:
        self.tenant_id = tenant_id
        self._seen = seen
        self._resend = resend
        self._read_version = version_reader(key)
        self._stored = key.stored  # the id as the state keeps it (a scope for non-alert ids)
        self._overlap = overlap
        # Starts at the cursor: a window that reads nothing leaves the cursor where it was.
        self.high_water = self._cursor = cursor
        # A full read (the overlap re-read, see `next_read`) sets where the next one starts; a
        # partial one keeps the seen-marks from `keep_from` on, where the next full read starts.
        self.full = full
        self._keep_from = keep_from

    def skip_seen(self, records: list[Any]) -> tuple[list[Any], int]:
        """The records of a page whose version was not seen before (in page order), and how many
        were skipped as seen. A skipped version still counts for the high-water mark."""
        fresh, seen_times = self._partition(records)
        if seen_times:
            self._raise_high_water(max(seen_times))
        return fresh, len(seen_times)

    def unseen_records(self, records: list[Any]) -> list[Any]:
        """What `skip_seen` would keep, without counting anything: for a source that completes
        the new records of a page with more requests (the alert ids of new incident versions)."""
        return self._partition(records)[0]

    def _partition(self, records: list[Any]) -> tuple[list[Any], list[datetime]]:
        read = self._read_version
        versions = {position: found for position, record in enumerate(records) if (found := read(record)) is not None}
        stored = self._stored
        keys = {position: (stored(record_id), format_time(moment)) for position, (record_id, moment) in versions.items()}
        unseen = self._unseen(list(keys.values()))
        fresh: list[Any] = []
        seen_times: list[datetime] = []
        for position, record in enumerate(records):
            key = keys.get(position)
            if key is not None and key not in unseen:
                seen_times.append(versions[position][1])
            else:
                fresh.append(parsed(record))
        return fresh, seen_times

    def new_versions(self, versions: Sequence[tuple[str, datetime]]) -> list[Version | None]:
        """For each normalised record's (id, time), in order: its version as the state stores it
        (the id scoped, see VersionKey.stored) when it is new, or None when it is a duplicate
        (seen before, or earlier in this page)."""
        stored = self._stored
        keys = [(stored(record_id), format_time(moment)) for record_id, moment in versions]
        unseen = self._unseen(keys)
        if versions:
            self._raise_high_water(max(moment for _, moment in versions))
        new: list[Version | None] = []
        for key in keys:
            if key in unseen:
                unseen.discard(key)  # the same version twice in one page is one version
                new.append(key)
            else:
                new.append(None)
        return new

    def _unseen(self, keys: list[Version]) -> set[Version]:
        """Those of `keys` neither seen-marked nor at or before their record's latest version
        taken; every one of them when resending."""
        if self._resend:
            return set(keys)
        unseen = self._seen.unseen(self.tenant_id, keys)
        if not unseen:
            return unseen
        # Only the few the seen-marks do not know are looked up (a backfill, or new records).
        latest = self._seen.latest_taken(self.tenant_id, {record_id for record_id, _ in unseen})
        return {key for key in unseen if key[1] > latest.get(key[0], "")}

    def end_page(self, last: bool) -> datetime | None:
        """The cursor to commit with this page: the high-water mark on the window's last page,
        else None (the cursor stays, as it does when the window read nothing past it)."""
        return self.high_water if last and self.high_water != self._cursor else None

    def prune_before(self) -> datetime | None:
        """Once the window is read to its end: where the next window of its kind starts at the
        latest, so that its seen-marks older than this may go. None when it has no cursor."""
        if self.high_water is None:
            return None
        horizon = self.high_water - self._overlap
        return horizon if self.full or self._keep_from is None else min(horizon, self._keep_from)

    def reread_from(self, last: bool) -> datetime | None:
        """To commit with this page: where the next full read starts, on a full read's last page."""
        if not (last and self.full) or self.high_water is None:
            return None
        return self.high_water - self._overlap

    def _raise_high_water(self, moment: datetime) -> None:
        if self.high_water is None or moment > self.high_water:
            self.high_water = moment


def prune_horizon(windows: Iterable[Window]) -> datetime | None:
    """Once every kind's window of a tenant was read to its end: the tenant's seen-marks older
    than this may go. The lowest of the windows' `prune_before`, since the seen-marks of all the
    tenant's kinds are one set; a kind without a cursor has none of its own to keep."""
    horizons = [horizon for window in windows if (horizon := window.prune_before()) is not None]
    return min(horizons, default=None)


# ---- a window that keeps failing: read around its skipped slices, split in halves ----------
#
# A window the API fails itself (BrokenWindow: 5xx or a malformed page, every attempt) for
# `split_after` cycles in a row is read in slices: halves by time, a half that fails halved
# again, down to MIN_SPLIT_SPAN. What still fails there is skipped: a dead letter names it,
# and the state keeps it, so that every later window reads around it (the overlap would read
# it again) while the cursor moves on. `backfill --since` reads across skipped slices.

# The smallest slice a window is split into: a record the API cannot serve costs at most this
# much of its neighbours' time (they are in the same dead letter, and `backfill` reads them).
MIN_SPLIT_SPAN = timedelta(seconds=1)


@dataclass(frozen=True)
class Span:
    """A part of a window: `time ge start`, and `time lt end` unless it is open (None: to now)."""

    start: datetime
    end: datetime | None = None

    def splittable(self) -> bool:
        return self.end is not None and self.end - self.start > MIN_SPLIT_SPAN

    def halves(self) -> tuple[Span, Span]:
        assert self.end is not None, "an open span is bounded before it is split"
        middle = self.start + (self.end - self.start) / 2
        return Span(self.start, middle), Span(middle, self.end)


def spans_to_read(start: datetime, skipped: Iterable[tuple[datetime, datetime]],
                  end: datetime | None = None) -> list[Span]:
    """The window from `start` (to `end`, or open) without its skipped slices, in time order."""
    spans: list[Span] = []
    low = start
    for skip_start, skip_end in sorted(skipped):
        if skip_end <= low:
            continue
        if end is not None and skip_start >= end:
            break
        if skip_start > low:
            spans.append(Span(low, skip_start))
        low = skip_end
    if end is None or low < end:
        spans.append(Span(low, end))
    return spans
