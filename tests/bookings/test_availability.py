"""Unit tests of availability: working hours, published days, busy time, lead time, windows, grids
and daylight-saving days. Pure functions, so no database or broker is involved."""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.bookings.availability import (
    Interval,
    PractitionerCalendar,
    Slot,
    WorkingHours,
    bookable_starts,
    local_day_bounds,
    local_interval,
    open_intervals,
    subtract,
)

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
P1 = uuid.UUID(int=1)
P2 = uuid.UUID(int=2)
MONDAY = date(2026, 6, 15)  # British Summer Time, +01:00
LONDON_SPRING = date(2026, 3, 29)  # 01:00 GMT becomes 02:00 BST
LONDON_AUTUMN = date(2026, 10, 25)  # 02:00 BST becomes 01:00 GMT
NEW_YORK_SPRING = date(2026, 3, 8)  # 02:00 EST becomes 03:00 EDT
NEW_YORK_AUTUMN = date(2026, 11, 1)  # 02:00 EDT becomes 01:00 EST
MINUTE = timedelta(minutes=1)


def rule(
    weekday: int,
    start: str,
    end: str,
    effective_from: date = date(2026, 1, 1),
    effective_to: date | None = None,
) -> WorkingHours:
    return WorkingHours(
        weekday, time.fromisoformat(start), time.fromisoformat(end), effective_from, effective_to
    )


def calendar(
    *hours: WorkingHours,
    practitioner_id: uuid.UUID = P1,
    published: dict[date, tuple[Interval, ...]] | None = None,
    busy: Sequence[Interval] = (),
) -> PractitionerCalendar:
    return PractitionerCalendar(practitioner_id, hours, published or {}, tuple(busy))


def local(day: date, wall: str, tz: ZoneInfo = LONDON, fold: int = 0) -> datetime:
    return datetime.combine(day, time.fromisoformat(wall), tzinfo=tz).replace(fold=fold)


def span(day: date, start: str, end: str, tz: ZoneInfo = LONDON) -> Interval:
    return Interval(local(day, start, tz), local(day, end, tz))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def starts(
    calendars: Sequence[PractitionerCalendar],
    day: date,
    *,
    tz: ZoneInfo = LONDON,
    minutes: int = 30,
    grid: int = 15,
    not_before: datetime | None = None,
    window: Interval | None = None,
) -> list[Slot]:
    window = window or local_day_bounds(day, tz)
    return bookable_starts(
        calendars=calendars,
        tz=tz,
        window=window,
        duration=timedelta(minutes=minutes),
        grid=timedelta(minutes=grid),
        not_before=not_before or window.start,
    )


def iso(slots: Sequence[Slot]) -> list[str]:
    return [slot.start.isoformat() for slot in slots]


def walls(slots: Sequence[Slot]) -> list[str]:
    """Local wall time and offset, e.g. '02:00+01:00'."""
    return [slot.start.isoformat()[11:16] + slot.start.isoformat()[19:] for slot in slots]


# Normal days


def test_weekday_rule_on_a_normal_london_day() -> None:
    slots = starts([calendar(rule(0, "09:00", "10:00"))], MONDAY)

    assert iso(slots) == [
        "2026-06-15T09:00:00+01:00",
        "2026-06-15T09:15:00+01:00",
        "2026-06-15T09:30:00+01:00",
    ]
    assert slots[0] == Slot(local(MONDAY, "09:00"), local(MONDAY, "09:30"), P1)
    assert all(str(slot.start.tzinfo) == "Europe/London" for slot in slots)
    assert slots[-1].end.isoformat() == "2026-06-15T10:00:00+01:00"


def test_rule_for_another_weekday_gives_nothing() -> None:
    assert starts([calendar(rule(1, "09:00", "17:00"))], MONDAY) == []


def test_local_day_bounds_on_a_normal_day_is_24_hours() -> None:
    bounds = local_day_bounds(MONDAY, LONDON)

    assert bounds.start == utc("2026-06-14T23:00:00+00:00")
    assert bounds.end - bounds.start == timedelta(hours=24)


@pytest.mark.parametrize(
    ("day", "is_open"),
    [
        (date(2026, 6, 8), False),  # the Monday before effective_from
        (date(2026, 6, 15), True),  # effective_from itself
        (date(2026, 6, 22), True),  # effective_to itself
        (date(2026, 6, 29), False),  # the Monday after effective_to
    ],
)
def test_effective_from_and_to_are_inclusive(day: date, is_open: bool) -> None:
    cal = calendar(rule(0, "09:00", "12:00", date(2026, 6, 15), date(2026, 6, 22)))

    assert bool(open_intervals(cal, day, LONDON)) is is_open


def test_open_ended_rule_applies_indefinitely() -> None:
    cal = calendar(rule(0, "09:00", "12:00", date(2026, 6, 15), None))

    assert open_intervals(cal, date(2030, 6, 17), LONDON) == [
        Interval(utc("2030-06-17T08:00:00+00:00"), utc("2030-06-17T11:00:00+00:00"))
    ]


def test_rule_change_takes_effect_on_its_date() -> None:
    cal = calendar(
        rule(0, "09:00", "12:00", date(2026, 1, 1), date(2026, 6, 14)),
        rule(0, "13:00", "17:00", date(2026, 6, 15)),
    )

    assert open_intervals(cal, date(2026, 6, 8), LONDON) == [
        Interval(utc("2026-06-08T09:00+01:00"), utc("2026-06-08T12:00+01:00"))
    ]
    assert open_intervals(cal, MONDAY, LONDON) == [
        Interval(utc("2026-06-15T13:00+01:00"), utc("2026-06-15T17:00+01:00"))
    ]


def test_overlapping_and_touching_rules_merge_into_one_open_interval() -> None:
    cal = calendar(rule(0, "11:00", "13:00"), rule(0, "09:00", "12:00"), rule(0, "13:00", "14:00"))

    assert open_intervals(cal, MONDAY, LONDON) == [
        Interval(utc("2026-06-15T09:00+01:00"), utc("2026-06-15T14:00+01:00"))
    ]
    # A service may run across the seam between two rules.
    assert "12:45+01:00" in walls(starts([cal], MONDAY, minutes=60))


# Published days


def test_published_day_replaces_working_hours() -> None:
    cal = calendar(
        rule(0, "09:00", "17:00"),
        published={MONDAY: (span(MONDAY, "14:00", "15:00"),)},
    )

    assert walls(starts([cal], MONDAY)) == ["14:00+01:00", "14:15+01:00", "14:30+01:00"]


def test_published_day_without_slots_closes_the_day() -> None:
    cal = calendar(rule(0, "09:00", "17:00"), published={MONDAY: ()})

    assert open_intervals(cal, MONDAY, LONDON) == []
    assert starts([cal], MONDAY) == []


def test_published_day_affects_only_its_own_date() -> None:
    cal = calendar(rule(0, "09:00", "10:00"), published={MONDAY: ()})
    next_monday = MONDAY + timedelta(days=7)

    assert walls(starts([cal], next_monday)) == ["09:00+01:00", "09:15+01:00", "09:30+01:00"]


def test_published_slots_are_merged_and_clipped_to_the_local_day() -> None:
    published = (
        Interval(utc("2026-06-14T22:00+01:00"), utc("2026-06-15T01:00+01:00")),
        span(MONDAY, "10:00", "11:00"),
        Interval(utc("2026-06-15T09:00:00+00:00"), utc("2026-06-15T09:30:00+00:00")),
    )
    cal = calendar(published={MONDAY: published})

    assert open_intervals(cal, MONDAY, LONDON) == [
        Interval(utc("2026-06-15T00:00+01:00"), utc("2026-06-15T01:00+01:00")),
        Interval(utc("2026-06-15T10:00+01:00"), utc("2026-06-15T11:00+01:00")),
    ]


# Busy time


def test_break_and_booking_remove_starts_including_partial_overlaps() -> None:
    lunch = span(MONDAY, "10:00", "10:30")
    booking = span(MONDAY, "11:10", "11:40")
    cal = calendar(rule(0, "09:00", "12:00"), busy=[booking, lunch])

    # 09:45 would run into the break, 10:45 into the booking, and 11:45 past closing.
    assert walls(starts([cal], MONDAY)) == [
        "09:00+01:00",
        "09:15+01:00",
        "09:30+01:00",
        "10:30+01:00",
    ]


def test_busy_interval_given_in_another_zone_is_compared_as_an_instant() -> None:
    booking = Interval(utc("2026-06-15T08:00:00+00:00"), utc("2026-06-15T08:30:00+00:00"))
    cal = calendar(rule(0, "09:00", "10:00"), busy=[booking])

    assert walls(starts([cal], MONDAY)) == ["09:30+01:00"]


def test_duration_longer_than_any_free_gap_gives_nothing() -> None:
    cal = calendar(
        rule(0, "09:00", "12:00"),
        busy=[
            span(MONDAY, "09:50", "10:00"),
            span(MONDAY, "10:45", "11:00"),
            span(MONDAY, "11:40", "12:00"),
        ],
    )

    assert starts([cal], MONDAY, minutes=60) == []
    assert walls(starts([cal], MONDAY, minutes=45)) == ["09:00+01:00", "10:00+01:00"]


def test_service_may_end_exactly_when_the_next_booking_starts() -> None:
    cal = calendar(rule(0, "09:00", "10:00"), busy=[span(MONDAY, "09:45", "10:00")])

    assert walls(starts([cal], MONDAY, minutes=45)) == ["09:00+01:00"]


# Lead time and window


def test_not_before_cuts_the_past_and_the_lead_time() -> None:
    cal = calendar(rule(0, "09:00", "11:00"))

    later = starts([cal], MONDAY, minutes=60, not_before=local(MONDAY, "09:20"))
    on_grid = starts([cal], MONDAY, minutes=60, not_before=local(MONDAY, "09:30"))
    after_hours = starts([cal], MONDAY, not_before=local(MONDAY, "18:00"))

    assert walls(later) == ["09:30+01:00", "09:45+01:00", "10:00+01:00"]
    assert walls(on_grid) == ["09:30+01:00", "09:45+01:00", "10:00+01:00"]
    assert after_hours == []


def test_not_before_in_utc_is_compared_as_an_instant() -> None:
    cal = calendar(rule(0, "09:00", "10:00"))

    slots = starts([cal], MONDAY, not_before=utc("2026-06-15T08:15:00+00:00"))

    assert walls(slots) == ["09:15+01:00", "09:30+01:00"]


def test_window_clips_starts_but_not_the_service_end() -> None:
    cal = calendar(rule(0, "09:00", "12:00"))

    slots = starts([cal], MONDAY, window=span(MONDAY, "09:15", "09:45"))

    assert walls(slots) == ["09:15+01:00", "09:30+01:00"]
    assert slots[-1].end == local(MONDAY, "10:00")


def test_window_spanning_days_in_utc_covers_each_local_date() -> None:
    cal = calendar(rule(0, "09:00", "09:30"), rule(1, "09:00", "09:30"), rule(2, "09:00", "09:30"))
    # Exactly Monday and Tuesday in London; Wednesday starts at the window's end.
    window = Interval(utc("2026-06-14T23:00:00+00:00"), utc("2026-06-16T23:00:00+00:00"))

    slots = starts([cal], MONDAY, minutes=15, window=window)

    assert iso(slots) == [
        "2026-06-15T09:00:00+01:00",
        "2026-06-15T09:15:00+01:00",
        "2026-06-16T09:00:00+01:00",
        "2026-06-16T09:15:00+01:00",
    ]


def test_multiple_practitioners_are_sorted_by_start_then_id() -> None:
    second = calendar(rule(0, "09:00", "09:45"), practitioner_id=P2)
    first = calendar(rule(0, "09:15", "09:45"), practitioner_id=P1)

    slots = starts([second, first], MONDAY)

    assert [(w, slot.practitioner_id) for w, slot in zip(walls(slots), slots, strict=True)] == [
        ("09:00+01:00", P2),
        ("09:15+01:00", P1),
        ("09:15+01:00", P2),
    ]


def test_each_practitioner_has_their_own_busy_time() -> None:
    busy_one = calendar(rule(0, "09:00", "10:00"), busy=[span(MONDAY, "09:00", "10:00")])
    free_two = calendar(rule(0, "09:00", "10:00"), practitioner_id=P2)

    slots = starts([busy_one, free_two], MONDAY, minutes=60)

    assert [(slot.start, slot.practitioner_id) for slot in slots] == [(local(MONDAY, "09:00"), P2)]


def test_grid_of_15_and_of_30_minutes() -> None:
    cal = calendar(rule(0, "09:00", "10:30"))

    assert walls(starts([cal], MONDAY, minutes=30, grid=15)) == [
        "09:00+01:00",
        "09:15+01:00",
        "09:30+01:00",
        "09:45+01:00",
        "10:00+01:00",
    ]
    assert walls(starts([cal], MONDAY, minutes=30, grid=30)) == [
        "09:00+01:00",
        "09:30+01:00",
        "10:00+01:00",
    ]


def test_grid_is_anchored_at_local_midnight_not_at_the_opening_time() -> None:
    cal = calendar(rule(0, "09:10", "10:10"))

    assert walls(starts([cal], MONDAY, grid=15)) == ["09:15+01:00", "09:30+01:00"]


@pytest.mark.parametrize(
    ("duration", "grid"),
    [(timedelta(0), timedelta(minutes=15)), (timedelta(minutes=30), -timedelta(minutes=15))],
)
def test_duration_and_grid_must_be_positive(duration: timedelta, grid: timedelta) -> None:
    window = local_day_bounds(MONDAY, LONDON)
    with pytest.raises(ValueError, match="must be positive"):
        bookable_starts(
            calendars=[calendar(rule(0, "09:00", "10:00"))],
            tz=LONDON,
            window=window,
            duration=duration,
            grid=grid,
            not_before=window.start,
        )


def test_window_must_not_be_empty_and_datetimes_must_be_aware() -> None:
    bounds = local_day_bounds(MONDAY, LONDON)
    cals = [calendar(rule(0, "09:00", "10:00"))]
    with pytest.raises(ValueError, match="window"):
        bookable_starts(
            calendars=cals,
            tz=LONDON,
            window=Interval(bounds.end, bounds.start),
            duration=30 * MINUTE,
            grid=15 * MINUTE,
            not_before=bounds.start,
        )
    with pytest.raises(ValueError, match="naive"):
        bookable_starts(
            calendars=cals,
            tz=LONDON,
            window=bounds,
            duration=30 * MINUTE,
            grid=15 * MINUTE,
            not_before=datetime(2026, 6, 15, 9),
        )


# Daylight saving


def test_london_spring_forward_day_is_23_hours_and_skips_the_missing_hour() -> None:
    bounds = local_day_bounds(LONDON_SPRING, LONDON)
    slots = starts([calendar(rule(6, "00:00", "06:00"))], LONDON_SPRING, minutes=15)

    assert bounds.end - bounds.start == timedelta(hours=23)
    assert walls(slots)[:6] == [
        "00:00+00:00",
        "00:15+00:00",
        "00:30+00:00",
        "00:45+00:00",
        "02:00+01:00",
        "02:15+01:00",
    ]
    assert not any(wall.startswith("01:") for wall in walls(slots))
    assert walls(slots)[-1] == "05:45+01:00"
    assert len(slots) == 4 + 16  # the rule covers five hours of real time
    assert "2026-03-29T02:00:00+01:00" in iso(slots)


def test_london_fall_back_day_is_25_hours_and_offers_the_repeated_hour_twice() -> None:
    bounds = local_day_bounds(LONDON_AUTUMN, LONDON)
    slots = starts([calendar(rule(6, "00:00", "06:00"))], LONDON_AUTUMN, minutes=15)

    assert bounds.end - bounds.start == timedelta(hours=25)
    assert walls(slots)[4:13] == [
        "01:00+01:00",
        "01:15+01:00",
        "01:30+01:00",
        "01:45+01:00",
        "01:00+00:00",
        "01:15+00:00",
        "01:30+00:00",
        "01:45+00:00",
        "02:00+00:00",
    ]
    assert len(slots) == 7 * 4  # the rule covers seven hours of real time
    starts_utc = [slot.start.astimezone(UTC) for slot in slots]
    assert starts_utc == sorted(set(starts_utc))


def test_new_york_spring_forward_day() -> None:
    bounds = local_day_bounds(NEW_YORK_SPRING, NEW_YORK)
    slots = starts([calendar(rule(6, "00:00", "06:00"))], NEW_YORK_SPRING, tz=NEW_YORK, minutes=15)

    assert bounds.end - bounds.start == timedelta(hours=23)
    assert walls(slots)[6:10] == ["01:30-05:00", "01:45-05:00", "03:00-04:00", "03:15-04:00"]
    assert not any(wall.startswith("02:") for wall in walls(slots))
    assert "2026-03-08T03:00:00-04:00" in iso(slots)


def test_new_york_fall_back_day() -> None:
    bounds = local_day_bounds(NEW_YORK_AUTUMN, NEW_YORK)
    slots = starts([calendar(rule(6, "00:00", "06:00"))], NEW_YORK_AUTUMN, tz=NEW_YORK, minutes=15)

    assert bounds.end - bounds.start == timedelta(hours=25)
    assert walls(slots)[4:12] == [
        "01:00-04:00",
        "01:15-04:00",
        "01:30-04:00",
        "01:45-04:00",
        "01:00-05:00",
        "01:15-05:00",
        "01:30-05:00",
        "01:45-05:00",
    ]
    assert {"2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00"} <= set(iso(slots))


def test_service_across_the_spring_gap_lasts_its_real_duration() -> None:
    cal = calendar(rule(6, "00:00", "06:00"))

    slots = starts([cal], LONDON_SPRING, minutes=60, grid=30)
    at_half_past = next(slot for slot in slots if slot.start == local(LONDON_SPRING, "00:30"))

    assert at_half_past.start.isoformat() == "2026-03-29T00:30:00+00:00"
    assert at_half_past.end.isoformat() == "2026-03-29T02:30:00+01:00"
    assert at_half_past.end.astimezone(UTC) - at_half_past.start.astimezone(UTC) == 60 * MINUTE


def test_service_across_the_spring_gap_is_offered_only_if_free() -> None:
    # 02:15-02:45 BST falls inside the hour that starts at 00:30 GMT.
    booking = span(LONDON_SPRING, "02:15", "02:45")
    cal = calendar(rule(6, "00:00", "06:00"), busy=[booking])

    slots = starts([cal], LONDON_SPRING, minutes=60, grid=30)

    assert "00:30+00:00" not in walls(slots)
    assert "00:00+00:00" in walls(slots)  # ends 02:00 BST, as the booking starts 02:15


def test_window_of_a_fall_back_day_given_in_utc_keeps_both_occurrences() -> None:
    cal = calendar(rule(6, "00:00", "06:00"))
    # Only the second 01:xx hour (GMT) lies in this window.
    window = Interval(utc("2026-10-25T01:00:00+00:00"), utc("2026-10-25T02:00:00+00:00"))

    slots = starts([cal], LONDON_AUTUMN, minutes=15, window=window)

    assert iso(slots) == [
        "2026-10-25T01:00:00+00:00",
        "2026-10-25T01:15:00+00:00",
        "2026-10-25T01:30:00+00:00",
        "2026-10-25T01:45:00+00:00",
    ]


def test_local_interval_moves_gap_times_forward_to_the_end_of_the_gap() -> None:
    interval = local_interval(LONDON_SPRING, time(1, 30), time(3), LONDON)

    assert interval == Interval(utc("2026-03-29T02:00:00+01:00"), utc("2026-03-29T03:00:00+01:00"))
    assert local_interval(LONDON_SPRING, time(0), time(1, 30), LONDON) == Interval(
        utc("2026-03-29T00:00:00+00:00"), utc("2026-03-29T02:00:00+01:00")
    )


def test_local_interval_wholly_inside_the_gap_is_empty() -> None:
    assert local_interval(LONDON_SPRING, time(1, 0), time(1, 45), LONDON) is None


def test_local_interval_starts_at_the_first_and_ends_at_the_second_occurrence() -> None:
    interval = local_interval(LONDON_AUTUMN, time(1, 0), time(1, 30), LONDON)

    assert interval == Interval(utc("2026-10-25T01:00:00+01:00"), utc("2026-10-25T01:30:00+00:00"))
    whole_day = local_interval(LONDON_AUTUMN, time(0), time(23, 59), LONDON)
    assert whole_day is not None
    assert whole_day.end - whole_day.start == timedelta(hours=24, minutes=59)


def test_local_interval_on_a_normal_day_and_empty_ones() -> None:
    assert local_interval(MONDAY, time(9), time(17), LONDON) == Interval(
        utc("2026-06-15T08:00:00+00:00"), utc("2026-06-15T16:00:00+00:00")
    )
    assert local_interval(MONDAY, time(9), time(9), LONDON) is None
    assert local_interval(MONDAY, time(10), time(9), LONDON) is None


# subtract


def test_subtract_with_nothing_busy_returns_the_intervals_merged_and_sorted() -> None:
    a = span(MONDAY, "13:00", "14:00")
    b = span(MONDAY, "09:00", "10:00")
    c = span(MONDAY, "09:30", "11:00")

    assert subtract([a, b, c], []) == [
        Interval(utc("2026-06-15T09:00+01:00"), utc("2026-06-15T11:00+01:00")),
        Interval(utc("2026-06-15T13:00+01:00"), utc("2026-06-15T14:00+01:00")),
    ]


def test_subtract_busy_touching_either_end_removes_nothing() -> None:
    day = span(MONDAY, "09:00", "10:00")

    result = subtract([day], [span(MONDAY, "08:00", "09:00"), span(MONDAY, "10:00", "11:00")])

    assert result == [Interval(utc("2026-06-15T09:00+01:00"), utc("2026-06-15T10:00+01:00"))]


def test_subtract_busy_containing_the_interval_removes_all_of_it() -> None:
    assert subtract([span(MONDAY, "09:00", "10:00")], [span(MONDAY, "08:00", "11:00")]) == []
    assert subtract([span(MONDAY, "09:00", "10:00")], [span(MONDAY, "09:00", "10:00")]) == []


def test_subtract_busy_inside_splits_and_partial_overlaps_trim() -> None:
    result = subtract(
        [span(MONDAY, "09:00", "12:00"), span(MONDAY, "13:00", "15:00")],
        [
            span(MONDAY, "08:30", "09:15"),
            span(MONDAY, "10:00", "10:30"),
            span(MONDAY, "11:45", "13:30"),
        ],
    )

    assert result == [
        Interval(utc("2026-06-15T09:15+01:00"), utc("2026-06-15T10:00+01:00")),
        Interval(utc("2026-06-15T10:30+01:00"), utc("2026-06-15T11:45+01:00")),
        Interval(utc("2026-06-15T13:30+01:00"), utc("2026-06-15T15:00+01:00")),
    ]


def test_subtract_empty_inputs_and_empty_intervals() -> None:
    nine = local(MONDAY, "09:00")

    assert subtract([], [span(MONDAY, "09:00", "10:00")]) == []
    assert subtract([], []) == []
    assert subtract([Interval(nine, nine)], []) == []
    assert subtract([span(MONDAY, "09:00", "10:00")], [Interval(nine, nine)]) == [
        Interval(utc("2026-06-15T09:00+01:00"), utc("2026-06-15T10:00+01:00"))
    ]


def test_subtract_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive"):
        subtract([Interval(datetime(2026, 6, 15, 9), datetime(2026, 6, 15, 10))], [])


def test_subtract_matches_a_minute_by_minute_model() -> None:
    rng = random.Random(20260329)
    origin = datetime(2026, 6, 15, tzinfo=UTC)

    def random_intervals(count: int) -> list[Interval]:
        result = []
        for _ in range(count):
            start = rng.randrange(0, 200)
            result.append(
                Interval(origin + start * MINUTE, origin + (start + rng.randrange(0, 40)) * MINUTE)
            )
        return result

    def minutes_of(intervals: Sequence[Interval]) -> set[int]:
        return {
            minute
            for interval in intervals
            for minute in range(
                (interval.start - origin) // MINUTE, (interval.end - origin) // MINUTE
            )
        }

    for _ in range(300):
        intervals, busy = (
            random_intervals(rng.randrange(0, 6)),
            random_intervals(rng.randrange(0, 8)),
        )
        result = subtract(intervals, busy)

        assert minutes_of(result) == minutes_of(intervals) - minutes_of(busy)
        assert all(a.end < b.start for a, b in zip(result, result[1:], strict=False))
        assert all(interval.end > interval.start for interval in result)


# Cross-checks


def reference_starts(
    cal: PractitionerCalendar, day: date, tz: ZoneInfo, duration: timedelta, grid: timedelta
) -> list[datetime]:
    """Bookable UTC starts found the slow way: every grid wall time, resolved through fold."""
    free = subtract(open_intervals(cal, day, tz), cal.busy)
    origin = datetime.combine(day, time(0))
    candidates: set[datetime] = set()
    k = 0
    while (wall := origin + k * grid).date() == day:
        for fold in (0, 1):
            instant = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
            if instant.astimezone(tz).replace(tzinfo=None) == wall:
                candidates.add(instant)
        k += 1
    return sorted(
        s for s in candidates if any(f.start <= s and s + duration <= f.end for f in free)
    )


@pytest.mark.parametrize(
    ("zone", "day"),
    [
        ("Europe/London", LONDON_SPRING),
        ("Europe/London", LONDON_AUTUMN),
        ("America/New_York", NEW_YORK_SPRING),
        ("America/New_York", NEW_YORK_AUTUMN),
        ("Australia/Lord_Howe", date(2026, 4, 5)),  # a 30-minute fall back
        ("Australia/Lord_Howe", date(2026, 10, 4)),  # a 30-minute spring forward
        ("America/Santiago", date(2026, 9, 6)),  # midnight itself does not exist
        ("Asia/Kolkata", date(2026, 6, 15)),  # a half-hour offset and no changes
    ],
)
def test_bookable_starts_match_a_slow_reference_on_change_days(zone: str, day: date) -> None:
    tz = ZoneInfo(zone)
    rng = random.Random(f"{zone}{day}")
    bounds = local_day_bounds(day, tz)
    for _ in range(40):
        hours = tuple(
            rule(
                day.weekday(),
                f"{rng.randrange(0, 12):02d}:{rng.choice((0, 10, 30, 45)):02d}",
                f"{rng.randrange(12, 24):02d}:{rng.choice((0, 20, 30, 59)):02d}",
            )
            for _ in range(rng.randrange(1, 3))
        )
        busy = []
        for _ in range(rng.randrange(0, 6)):
            start = bounds.start + rng.randrange(0, 24 * 60) * MINUTE
            busy.append(Interval(start, start + rng.randrange(5, 120) * MINUTE))
        cal = calendar(*hours, busy=busy)
        duration = rng.choice((15, 30, 45, 60, 90)) * MINUTE
        grid = rng.choice((5, 10, 15, 20, 30, 60)) * MINUTE

        slots = bookable_starts(
            calendars=[cal],
            tz=tz,
            window=bounds,
            duration=duration,
            grid=grid,
            not_before=bounds.start,
        )

        assert [slot.start.astimezone(UTC) for slot in slots] == reference_starts(
            cal, day, tz, duration, grid
        )
        assert all(slot.start.tzinfo is tz and slot.end.tzinfo is tz for slot in slots)


def test_a_month_for_twenty_practitioners_with_thousands_of_bookings() -> None:
    rng = random.Random(31)
    first_day = date(2026, 10, 1)
    window = Interval(
        local_day_bounds(first_day, LONDON).start,
        local_day_bounds(first_day + timedelta(days=30), LONDON).end,
    )
    calendars = []
    for n in range(20):
        busy = []
        for _ in range(2_000):
            start = window.start + rng.randrange(0, 31 * 24 * 4) * 15 * MINUTE
            busy.append(Interval(start, start + rng.choice((15, 30, 45)) * MINUTE))
        hours = tuple(rule(weekday, "08:00", "18:00") for weekday in range(7))
        calendars.append(calendar(*hours, practitioner_id=uuid.UUID(int=n), busy=busy))

    slots = bookable_starts(
        calendars=calendars,
        tz=LONDON,
        window=window,
        duration=30 * MINUTE,
        grid=15 * MINUTE,
        not_before=window.start,
    )

    assert slots
    keys = [(slot.start.astimezone(UTC), slot.practitioner_id) for slot in slots]
    assert keys == sorted(keys)
    assert len(set(keys)) == len(keys)
    by_practitioner = {cal.practitioner_id: cal for cal in calendars}
    for slot in slots[::97]:
        assert not any(
            b.start < slot.end and slot.start < b.end
            for b in by_practitioner[slot.practitioner_id].busy
        )
