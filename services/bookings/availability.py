"""Bookable start times for one service, per practitioner, in a clinic's time zone. No I/O here.

Arithmetic and comparison happen in UTC. Two aware datetimes that share a ``ZoneInfo`` are compared
and subtracted by wall clock, ignoring ``fold``, so 01:30 before and after a fall-back would compare
equal and a 23-hour day would measure 24 hours. Hence every ``Interval`` this module returns is in
UTC, and only ``Slot`` carries the clinic zone, for presentation.

Wall-clock rules are resolved to instants like this:

* a wall time inside a spring-forward gap moves forward to the first instant after the gap;
* an ambiguous (fall-back) wall time is its first occurrence when it starts an interval and its
  second occurrence when it ends one, so an interval covers the whole repeated hour;
* a day runs from its local midnight to the next one (first occurrences), so days tile time and
  last 23 or 25 hours across a change.

Slots never span local midnight: each local day's free time is computed on its own.
"""

from __future__ import annotations

import uuid
from bisect import bisect_right
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

# Datetimes are whole microseconds, so ``s <= x`` is ``s < x + _TICK``; it also bounds the searches.
_TICK = timedelta(microseconds=1)
_ZERO = timedelta(0)


@dataclass(frozen=True)
class WorkingHours:
    """A weekly rule in local clinic time."""

    weekday: int  # 0 = Monday .. 6 = Sunday
    start: time  # local wall clock
    end: time  # local wall clock, after start: rules never run overnight
    effective_from: date  # inclusive
    effective_to: date | None  # inclusive; None is open-ended


@dataclass(frozen=True)
class Interval:
    """An absolute, timezone-aware half-open interval [start, end)."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class PractitionerCalendar:
    """What decides one practitioner's availability."""

    practitioner_id: uuid.UUID
    working_hours: tuple[WorkingHours, ...]
    # A published local date replaces working hours for that date; no intervals means closed.
    published_days: Mapping[date, tuple[Interval, ...]]
    busy: tuple[Interval, ...]  # breaks and live bookings


@dataclass(frozen=True)
class Slot:
    """A bookable appointment, in the clinic zone so that ``isoformat()`` shows the local offset."""

    start: datetime
    end: datetime
    practitioner_id: uuid.UUID


def local_day_bounds(day: date, tz: ZoneInfo) -> Interval:
    """Return [local midnight of ``day``, local midnight of the next day) in UTC."""
    return Interval(
        _wall_to_utc(day, time(0), tz, later=False),
        _wall_to_utc(day + timedelta(days=1), time(0), tz, later=False),
    )


def local_interval(day: date, start: time, end: time, tz: ZoneInfo) -> Interval | None:
    """Return the UTC interval for wall-clock ``start``..``end`` on ``day``, or None if empty."""
    utc_start = _wall_to_utc(day, start, tz, later=False)
    utc_end = _wall_to_utc(day, end, tz, later=True)
    return Interval(utc_start, utc_end) if utc_end > utc_start else None


def local_days(window: Interval, tz: ZoneInfo) -> list[date]:
    """The local dates ``window`` touches, in order."""
    first = _utc(window.start).astimezone(tz).date()
    last = (_utc(window.end) - _TICK).astimezone(tz).date()
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def open_intervals(cal: PractitionerCalendar, day: date, tz: ZoneInfo) -> list[Interval]:
    """Return the practitioner's open time on local ``day``: merged, sorted, in UTC."""
    return _open_intervals(cal, day, tz, local_day_bounds(day, tz))


def subtract(intervals: Sequence[Interval], busy: Sequence[Interval]) -> list[Interval]:
    """Return the parts of ``intervals`` not covered by ``busy``: merged, sorted, in UTC."""
    merged_busy = _merge(_normalized(busy))
    return _subtract_merged(
        _merge(_normalized(intervals)), merged_busy, [b.end for b in merged_busy]
    )


def bookable_starts(
    *,
    calendars: Sequence[PractitionerCalendar],
    tz: ZoneInfo,
    window: Interval,
    duration: timedelta,
    grid: timedelta,
    not_before: datetime,
) -> list[Slot]:
    """Return every bookable slot in ``window``, sorted by (start, practitioner_id)."""
    if duration <= _ZERO:
        raise ValueError("duration must be positive")
    if grid <= _ZERO:
        raise ValueError("grid must be positive")
    window_start, window_end = _utc(window.start), _utc(window.end)
    if window_end <= window_start:
        raise ValueError("window must end after it starts")
    earliest = max(window_start, _utc(not_before))

    first_day = window_start.astimezone(tz).date()
    last_day = (window_end - _TICK).astimezone(tz).date()
    days: list[tuple[date, Interval]] = []
    day = first_day
    while day <= last_day:
        bounds = local_day_bounds(day, tz)
        # A day wholly before the lead time offers nothing; dropping it here spares every calendar.
        if bounds.end > earliest:
            days.append((day, bounds))
        day += timedelta(days=1)

    found: list[tuple[datetime, uuid.UUID, Slot]] = []
    for cal in calendars:
        busy = _merge(_normalized(cal.busy))
        busy_ends = [b.end for b in busy]
        for day, bounds in days:
            opens = _open_intervals(cal, day, tz, bounds)
            for free in _subtract_merged(opens, busy, busy_ends):
                lo = max(free.start, earliest)
                hi = min(free.end - duration + _TICK, window_end)
                for start in _grid_instants(day, lo, hi, grid, tz):
                    slot = Slot(
                        start.astimezone(tz), (start + duration).astimezone(tz), cal.practitioner_id
                    )
                    found.append((start, cal.practitioner_id, slot))
    # Sort on the UTC start: local datetimes in one zone would tie across a fall-back.
    found.sort(key=lambda item: (item[0], item[1].int))
    return [slot for _, _, slot in found]


def _utc(moment: datetime) -> datetime:
    if moment.utcoffset() is None:
        raise ValueError(f"naive datetime {moment.isoformat()}: a time zone is required")
    return moment.astimezone(UTC)


def _offset(moment: datetime, tz: ZoneInfo) -> timedelta:
    offset = moment.astimezone(tz).utcoffset()
    assert offset is not None  # a ZoneInfo always yields an offset
    return offset


def _wall_to_utc(day: date, wall: time, tz: ZoneInfo, *, later: bool) -> datetime:
    naive = datetime.combine(day, wall)
    first = naive.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        # Exists: folds differ only when the wall time is repeated.
        return second if later else first
    # In a gap the two folds land either side of the transition, which is the first valid instant.
    return _first_change(min(first, second), max(first, second), tz)


def _first_change(a: datetime, b: datetime, tz: ZoneInfo) -> datetime:
    """Return the earliest instant in (a, b] whose UTC offset differs from a's; b's must differ."""
    offset_a = _offset(a, tz)
    lo, hi = 0, (b - a) // _TICK
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _offset(a + mid * _TICK, tz) == offset_a:
            lo = mid
        else:
            hi = mid
    return a + hi * _TICK


def _normalized(intervals: Sequence[Interval]) -> list[Interval]:
    result = []
    for interval in intervals:
        start, end = _utc(interval.start), _utc(interval.end)
        if end > start:
            result.append(Interval(start, end))
    return result


def _merge(intervals: list[Interval]) -> list[Interval]:
    """Sort UTC intervals and coalesce the overlapping or touching ones."""
    intervals.sort(key=lambda i: i.start)
    merged: list[Interval] = []
    for interval in intervals:
        if merged and interval.start <= merged[-1].end:
            if interval.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, interval.end)
        else:
            merged.append(interval)
    return merged


def _subtract_merged(
    opens: list[Interval], busy: list[Interval], busy_ends: list[datetime]
) -> list[Interval]:
    """Difference of merged UTC interval lists; ``busy_ends`` are busy's ends, ascending."""
    free: list[Interval] = []
    for interval in opens:
        cursor = interval.start
        # Merged busy intervals are disjoint, so their ends ascend and bisect finds the first
        # one that can overlap; the sweep then stops at the first busy interval past the end.
        i = bisect_right(busy_ends, cursor)
        while i < len(busy) and busy[i].start < interval.end:
            if busy[i].start > cursor:
                free.append(Interval(cursor, busy[i].start))
            cursor = max(cursor, busy[i].end)
            i += 1
        if cursor < interval.end:
            free.append(Interval(cursor, interval.end))
    return free


def _open_intervals(
    cal: PractitionerCalendar, day: date, tz: ZoneInfo, bounds: Interval
) -> list[Interval]:
    if day in cal.published_days:
        candidates = _normalized(cal.published_days[day])
    else:
        candidates = []
        for rule in cal.working_hours:
            if (
                rule.weekday == day.weekday()
                and rule.effective_from <= day
                and (rule.effective_to is None or day <= rule.effective_to)
            ):
                interval = local_interval(day, rule.start, rule.end, tz)
                if interval is not None:
                    candidates.append(interval)
    clipped = []
    for interval in _merge(candidates):
        start, end = max(interval.start, bounds.start), min(interval.end, bounds.end)
        if end > start:
            clipped.append(Interval(start, end))
    return clipped


def _grid_instants(
    day: date, lo: datetime, hi: datetime, grid: timedelta, tz: ZoneInfo
) -> Iterator[datetime]:
    """Yield, ascending, the UTC instants in [lo, hi) whose wall time is on ``day``'s grid."""
    if hi <= lo:
        return
    origin = datetime.combine(day, time(0))
    # Within a stretch of constant offset, wall clock and UTC move together, so the grid maps to
    # instants by arithmetic alone. Gap wall times then belong to no stretch and are skipped, and a
    # repeated hour belongs to two stretches and is offered twice.
    for piece_start, piece_end, offset in _constant_offset_pieces(lo, hi, tz):
        first = _ceil_steps(piece_start.replace(tzinfo=None) + offset - origin, grid)
        stop = _ceil_steps(piece_end.replace(tzinfo=None) + offset - origin, grid)
        for k in range(first, stop):
            yield (origin + k * grid - offset).replace(tzinfo=UTC)


def _constant_offset_pieces(
    lo: datetime, hi: datetime, tz: ZoneInfo
) -> list[tuple[datetime, datetime, timedelta]]:
    # Checking only the ends would miss two transitions that cancel out inside one interval; zones
    # keep their transitions far further apart than a day.
    pieces = []
    start = lo
    while True:
        offset = _offset(start, tz)
        if _offset(hi - _TICK, tz) == offset:
            pieces.append((start, hi, offset))
            return pieces
        change = _first_change(start, hi - _TICK, tz)
        pieces.append((start, change, offset))
        start = change


def _ceil_steps(span: timedelta, step: timedelta) -> int:
    quotient, remainder = divmod(span, step)
    return quotient + (1 if remainder else 0)
