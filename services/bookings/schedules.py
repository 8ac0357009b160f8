"""Rules for when practitioners can be booked: working hours, published days, breaks,
and the availability search that combines them with bookings."""

from __future__ import annotations

import json
import uuid
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from services.bookings import availability, store
from services.bookings.availability_cache import (
    AvailabilityCache,
    Entry,
    entries_by_practitioner_day,
    merge,
)
from services.bookings.directory import ClinicDirectory, ClinicRules
from services.bookings.schemas import (
    AvailabilityQuery,
    BreakCreate,
    BreakRead,
    SlotsPut,
    SlotsRead,
    TimeRange,
    WorkingHoursPut,
    WorkingHoursRead,
    WorkingHoursRule,
)
from shared import events
from shared.db import Connection, Row
from shared.errors import Conflict, FieldError, NotFound, ProblemError, ValidationProblem
from shared.outbox import emit

MAX_WINDOW = timedelta(days=31)


async def _require_practitioner(
    conn: Connection, clinic_id: uuid.UUID, practitioner_id: uuid.UUID
) -> None:
    if await store.practitioner_state(conn, clinic_id, practitioner_id) is None:
        raise NotFound("No such practitioner in this clinic")


# --- working hours ----------------------------------------------------------------------------


async def replace_working_hours(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    data: WorkingHoursPut,
) -> WorkingHoursRead:
    """Replace a practitioner's weekly hours; publishes ``working_hours.updated``."""
    await directory.get(clinic_id)
    rules = [r.model_dump() for r in data.rules]
    async with pool.acquire() as conn, conn.transaction():
        await _require_practitioner(conn, clinic_id, practitioner_id)
        await store.lock_practitioner(conn, practitioner_id)
        await store.replace_working_hours(conn, clinic_id, practitioner_id, rules)
        read = WorkingHoursRead(practitioner_id=practitioner_id, rules=data.rules)
        await emit(
            conn,
            events.WORKING_HOURS_UPDATED,
            read.model_dump(mode="json"),
            aggregate=f"working_hours:{practitioner_id}",
            clinic_id=clinic_id,
        )
    return read


async def get_working_hours(
    pool: asyncpg.Pool, *, clinic_id: uuid.UUID, practitioner_id: uuid.UUID
) -> WorkingHoursRead:
    """A practitioner's weekly hours."""
    async with pool.acquire() as conn:
        await _require_practitioner(conn, clinic_id, practitioner_id)
        rows = await store.working_hours(conn, [practitioner_id])
    rules = [
        WorkingHoursRule(
            weekday=r["weekday"],
            start=r["start"],
            end=r["end"],
            effective_from=r["effective_from"],
            effective_to=r["effective_to"],
        )
        for r in rows
    ]
    return WorkingHoursRead(practitioner_id=practitioner_id, rules=rules)


# --- published days ---------------------------------------------------------------------------


def _slots_within_day(
    data: SlotsPut, day: date, rules: ClinicRules
) -> list[tuple[datetime, datetime]]:
    bounds = availability.local_day_bounds(day, rules.time_zone)
    # Sorted by time but remembering each slot's index in the request, which errors must name.
    indexed = sorted(
        (s.start.astimezone(UTC), s.end.astimezone(UTC), i) for i, s in enumerate(data.slots)
    )
    errors = [
        FieldError(f"body.slots.{i}", f"Lies outside {day.isoformat()} in {rules.time_zone.key}")
        for start, end, i in sorted(indexed, key=lambda p: p[2])
        if start < bounds.start or end > bounds.end
    ]
    # Against the latest end so far, not just the previous slot's: a long slot may cover several.
    latest_end: datetime | None = None
    for start, end, i in indexed:
        if latest_end is not None and start < latest_end:
            errors.append(FieldError(f"body.slots.{i}", "Overlaps another slot"))
        latest_end = end if latest_end is None else max(latest_end, end)
    if errors:
        raise ValidationProblem(errors)
    return [(start, end) for start, end, _ in indexed]


async def replace_day(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    day: date,
    data: SlotsPut,
) -> SlotsRead:
    """Publish a local day's slots, replacing working hours for that day; bookings stay."""
    rules = await directory.get(clinic_id)
    periods = _slots_within_day(data, day, rules)
    async with pool.acquire() as conn, conn.transaction():
        await _require_practitioner(conn, clinic_id, practitioner_id)
        await store.lock_practitioner(conn, practitioner_id)
        published_at = await store.replace_published_day(
            conn, clinic_id, practitioner_id, day, periods
        )
        read = SlotsRead(
            practitioner_id=practitioner_id,
            date=day,
            slots=[
                TimeRange(start=s.astimezone(rules.time_zone), end=e.astimezone(rules.time_zone))
                for s, e in periods
            ],
            published_at=published_at,
        )
        await emit(
            conn,
            events.SLOTS_REPLACED,
            read.model_dump(mode="json"),
            aggregate=f"slots:{practitioner_id}:{day.isoformat()}",
            clinic_id=clinic_id,
        )
    return read


async def get_day(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    day: date,
) -> SlotsRead:
    """A published day's slots."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        await _require_practitioner(conn, clinic_id, practitioner_id)
        row = await store.published_day(conn, practitioner_id, day)
    if row is None:
        raise NotFound("This day has not been published; working hours apply")
    return SlotsRead(
        practitioner_id=practitioner_id,
        date=day,
        slots=[
            TimeRange(
                start=p.lower.astimezone(rules.time_zone), end=p.upper.astimezone(rules.time_zone)
            )
            for p in row["periods"]
        ],
        published_at=row["published_at"],
    )


# --- breaks -----------------------------------------------------------------------------------


def _break_read(row: asyncpg.Record, rules: ClinicRules) -> BreakRead:
    values = dict(row)
    values["start"] = values["start"].astimezone(rules.time_zone)
    values["end"] = values["end"].astimezone(rules.time_zone)
    return BreakRead.model_validate(values)


async def create_break(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    data: BreakCreate,
) -> BreakRead:
    """Block time; refused with 409 naming the live bookings it would cover."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn, conn.transaction():
        await _require_practitioner(conn, clinic_id, practitioner_id)
        # Bookings take the same lock, so none can slip in between the check and the insert.
        await store.lock_practitioner(conn, practitioner_id)
        clashing = await store.live_bookings_overlapping(
            conn, practitioner_id, data.start, data.end
        )
        if clashing:
            raise Conflict(
                "The break would cover existing bookings",
                slug="break-over-bookings",
                extra={"booking_ids": [str(b) for b in clashing]},
            )
        row = await store.insert_break(
            conn, uuid.uuid4(), clinic_id, practitioner_id, data.start, data.end, data.reason
        )
        read = _break_read(row, rules)
        await emit(
            conn,
            events.BREAK_CREATED,
            read.model_dump(mode="json"),
            aggregate=f"break:{read.id}",
            clinic_id=clinic_id,
        )
    return read


async def delete_break(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    break_id: uuid.UUID,
) -> None:
    """Remove a break; publishes ``break.deleted``."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn, conn.transaction():
        row = await store.delete_break(conn, clinic_id, practitioner_id, break_id)
        if row is None:
            raise NotFound("No such break")
        await emit(
            conn,
            events.BREAK_DELETED,
            _break_read(row, rules).model_dump(mode="json"),
            aggregate=f"break:{break_id}",
            clinic_id=clinic_id,
        )


async def list_breaks(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    start: datetime,
    end: datetime,
) -> list[BreakRead]:
    """A practitioner's breaks touching [start, end)."""
    async with pool.acquire() as conn:
        await _require_practitioner(conn, clinic_id, practitioner_id)
        rows = await store.list_breaks(conn, clinic_id, practitioner_id, start=start, end=end)
    rules = await directory.get(clinic_id)
    return [_break_read(r, rules) for r in rows]


# --- availability -----------------------------------------------------------------------------


def unknown_service(field: str) -> ProblemError:
    """``field`` names where the id was given, as every other error does: ``query.service_id``."""
    return ProblemError(
        "No such active service in this clinic",
        slug="unknown-service",
        title="Unknown service",
        status=422,
        extra={"errors": [FieldError(field, "No such active service in this clinic")]},
    )


def service_not_offered(field: str) -> ProblemError:
    return ProblemError(
        "The practitioner does not offer this service",
        slug="service-not-offered",
        title="Service not offered",
        status=422,
        extra={"errors": [FieldError(field, "Does not offer this service")]},
    )


def calendar_bounds(rules: ClinicRules, window: availability.Interval) -> dict[str, Any]:
    """What to read of calendars for ``window``: a day more on each side, for the local days
    and the busy periods the window's edges touch."""
    tz = rules.time_zone
    return {
        "first": window.start.astimezone(tz).date() - timedelta(days=1),
        "last": window.end.astimezone(tz).date() + timedelta(days=1),
        "start": window.start - timedelta(days=1),
        "end": window.end + timedelta(days=1),
    }


def calendars_from_rows(
    rows: Iterable[Row], practitioner_ids: list[uuid.UUID]
) -> list[availability.PractitionerCalendar]:
    """The practitioners' calendars from their calendar rows (``store.calendar_rows``)."""
    hours: dict[uuid.UUID, list[availability.WorkingHours]] = defaultdict(list)
    published: dict[uuid.UUID, dict[date, list[availability.Interval]]] = defaultdict(dict)
    busy: dict[uuid.UUID, list[availability.Interval]] = defaultdict(list)
    for r in rows:
        kind, practitioner = r["kind"], r["practitioner_id"]
        if kind == "hours":
            hours[practitioner].append(
                availability.WorkingHours(
                    r["weekday"],
                    r["start_time"],
                    r["end_time"],
                    r["effective_from"],
                    r["effective_to"],
                )
            )
        elif kind == "day":
            day = published[practitioner].setdefault(r["day"], [])
            if r["lo"] is not None:
                day.append(availability.Interval(r["lo"], r["hi"]))
        else:
            busy[practitioner].append(availability.Interval(r["lo"], r["hi"]))
    return [
        availability.PractitionerCalendar(
            practitioner_id=p,
            working_hours=tuple(hours[p]),
            published_days={d: tuple(v) for d, v in published[p].items()},
            busy=tuple(busy[p]),
        )
        for p in practitioner_ids
    ]


async def calendars(
    conn: Connection,
    practitioner_ids: list[uuid.UUID],
    rules: ClinicRules,
    window: availability.Interval,
    *,
    except_booking: uuid.UUID | None = None,
) -> list[availability.PractitionerCalendar]:
    """Everything the availability search needs to know of these practitioners in the window."""
    rows = await store.calendar_rows(
        conn, practitioner_ids, **calendar_bounds(rules, window), except_booking=except_booking
    )
    return calendars_from_rows(rows, practitioner_ids)


def _whole_days(
    cals: list[availability.PractitionerCalendar],
    wanted: dict[uuid.UUID, list[date]],
    rules: ClinicRules,
    duration: timedelta,
) -> Iterator[tuple[uuid.UUID, dict[date, list[Entry]]]]:
    """Each practitioner's rendered slots on each wanted whole local day, past hours included.

    Practitioners wanting the same run of days are computed together; the days between a
    practitioner's first and last wanted one are computed too, and dropped.
    """
    tz = rules.time_zone
    groups: dict[tuple[date, date], list[availability.PractitionerCalendar]] = defaultdict(list)
    for cal in cals:
        wanted_days = wanted[cal.practitioner_id]
        groups[(min(wanted_days), max(wanted_days))].append(cal)
    for (first, last), group in groups.items():
        span = availability.Interval(
            availability.local_day_bounds(first, tz).start,
            availability.local_day_bounds(last, tz).end,
        )
        slots = availability.bookable_starts(
            calendars=group,
            tz=tz,
            window=span,
            duration=duration,
            grid=timedelta(minutes=rules.slot_minutes),
            not_before=span.start,
        )
        by_day = entries_by_practitioner_day(slots)
        for cal in group:
            yield (
                cal.practitioner_id,
                {d: by_day.get((cal.practitioner_id, d), []) for d in wanted[cal.practitioner_id]},
            )


def _cut(entries: list[Entry], lower: float, upper: float) -> list[Entry]:
    """The entries starting in [lower, upper) (POSIX seconds); entries are in start order."""
    return entries[
        bisect_left(entries, lower, key=_start_of) : bisect_left(entries, upper, key=_start_of)
    ]


def _start_of(entry: Entry) -> float:
    return entry[0][0]


def bookable(
    cals: list[availability.PractitionerCalendar],
    rules: ClinicRules,
    window: availability.Interval,
    duration: timedelta,
    now: datetime,
) -> list[availability.Slot]:
    return availability.bookable_starts(
        calendars=cals,
        tz=rules.time_zone,
        window=window,
        duration=duration,
        grid=timedelta(minutes=rules.slot_minutes),
        not_before=now + timedelta(minutes=rules.min_lead_minutes),
    )


async def search(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    cache: AvailabilityCache,
    *,
    clinic_id: uuid.UUID,
    query: AvailabilityQuery,
) -> str:
    """Bookable starts for one service over up to 31 days, with their practitioner, as the
    JSON ``Availability`` document (it can hold thousands of slots).

    Whole days that neither the present nor the lead time cuts into are kept rendered (see
    ``availability_cache``); only what is not kept is computed.
    """
    if query.to <= query.from_:
        raise ValidationProblem([FieldError("query.to", "Must be after from")])
    if query.to - query.from_ > MAX_WINDOW:
        raise ProblemError(
            "The search window is longer than 31 days",
            slug="window-too-long",
            title="Window too long",
            status=422,
            extra={"errors": [FieldError("query.to", "At most 31 days after from")]},
        )
    rules = await directory.get(clinic_id)
    tz = rules.time_zone
    window = availability.Interval(query.from_, query.to)
    earliest = datetime.now(UTC) + timedelta(minutes=rules.min_lead_minutes)
    async with pool.acquire() as conn:
        service = await store.service_for_booking(conn, clinic_id, query.service_id)
        if service is None or not service["active"]:
            raise unknown_service("query.service_id")
        offering = await store.offering_versions(conn, clinic_id, query.service_id)
        if query.practitioner_id is not None:
            offering = [o for o in offering if o[0] == query.practitioner_id]
            if not offering:
                raise service_not_offered("query.practitioner_id")
        same = {
            "clinic_id": clinic_id,
            "duration_minutes": service["duration_minutes"],
            "grid_minutes": rules.slot_minutes,
            "time_zone": tz.key,
        }

        # Practitioner-days are always computed and kept whole: the grid is anchored at local
        # midnight, so a day cut by the window's ends, the present or the lead time is its whole
        # day's starts from the cut on. Only whole days are also kept merged.
        days: list[date] = []
        rendered: dict[date, str] = {}
        cuts: dict[date, tuple[float, float]] = {}
        kept: dict[tuple[uuid.UUID, date], list[Entry]] = {}
        compute: dict[uuid.UUID, list[date]] = defaultdict(list)
        for day in availability.local_days(window, tz):
            bounds = availability.local_day_bounds(day, tz)
            lower = max(bounds.start, window.start, earliest)
            upper = min(bounds.end, window.end)
            if upper <= lower:
                continue
            days.append(day)
            if lower != bounds.start or upper != bounds.end:
                cuts[day] = (lower.timestamp(), upper.timestamp())
            else:
                whole = cache.days.get(
                    AvailabilityCache.day_key(day=day, versions=offering, **same)
                )
                if whole is not None:
                    rendered[day] = whole
                    continue
            for practitioner in offering:
                found = cache.practitioner_days.get(
                    AvailabilityCache.practitioner_day_key(
                        practitioner=practitioner, day=day, **same
                    )
                )
                if found is None:
                    compute[practitioner[0]].append(day)
                else:
                    kept[(practitioner[0], day)] = found
        if compute:
            cals = await calendars(
                conn,
                sorted(compute),
                rules,
                availability.Interval(
                    availability.local_day_bounds(min(map(min, compute.values())), tz).start,
                    availability.local_day_bounds(max(map(max, compute.values())), tz).end,
                ),
            )
    if compute:
        duration = timedelta(minutes=service["duration_minutes"])
        versions = dict(offering)
        for practitioner_id, entries_of_day in _whole_days(cals, compute, rules, duration):
            for day, entries in entries_of_day.items():
                kept[(practitioner_id, day)] = entries
                cache.put_practitioner_day(
                    AvailabilityCache.practitioner_day_key(
                        practitioner=(practitioner_id, versions[practitioner_id]), day=day, **same
                    ),
                    entries,
                )
    for day in days:
        if day in rendered:
            continue
        lists = [kept[(p, day)] for p, _ in offering]
        if day in cuts:
            rendered[day] = merge(_cut(entries, *cuts[day]) for entries in lists)
        else:
            rendered[day] = text = merge(lists)
            cache.days.put(
                AvailabilityCache.day_key(day=day, versions=offering, **same), text, len(text)
            )
    slots = ",".join(r for day in days if (r := rendered[day]))
    return (
        f'{{"service_id":"{query.service_id}","time_zone":{json.dumps(tz.key)},"slots":[{slots}]}}'
    )
