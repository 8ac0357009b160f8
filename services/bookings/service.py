"""The rules of bookings: create (idempotent, never double-booked), reschedule, cancel, move
along the life cycle, read and list; and the client search for vet-facing calls."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from services.bookings import availability, store
from services.bookings.catalogue import page_cursor
from services.bookings.directory import ClinicDirectory, ClinicRules
from services.bookings.schedules import (
    bookable,
    calendar_bounds,
    calendars,
    calendars_from_rows,
    service_not_offered,
    unknown_service,
)
from services.bookings.schemas import (
    BookingCancel,
    BookingCreate,
    BookingPage,
    BookingQuery,
    BookingRead,
    BookingReschedule,
    BookingStatusChange,
    ClientPage,
    ClientQuery,
    ClientSummary,
    PatientSummary,
)
from shared import events
from shared.conditional import check_if_match, idempotency_key_reused, request_hash
from shared.db import Connection, Row, transaction_opened_with
from shared.errors import Conflict, FieldError, NotFound, ProblemError, ValidationProblem
from shared.outbox import Draft, emit, prepare
from shared.pagination import decode_cursor, encode_cursor, time_cursor

LIVE = ("booked", "confirmed", "arrived")
#: Validates a change against the locked row and returns the columns to set.
Decision = Callable[[Connection, ClinicRules, asyncpg.Record], Awaitable[dict[str, Any]]]
#: The life cycle: where each status may go next.
TRANSITIONS: dict[str, frozenset[str]] = {
    "booked": frozenset({"confirmed", "arrived", "cancelled", "no_show"}),
    "confirmed": frozenset({"arrived", "cancelled", "no_show"}),
    "arrived": frozenset({"completed"}),
    "completed": frozenset(),
    "cancelled": frozenset(),
    "no_show": frozenset(),
}


def slot_taken() -> Conflict:
    return Conflict(
        "The practitioner already has a booking at that time",
        slug="slot-taken",
        title="Slot taken",
    )


def slot_unavailable() -> Conflict:
    return Conflict(
        "That start is not bookable: outside availability, off the slot grid, inside the lead "
        "time, or already taken",
        slug="slot-unavailable",
        title="Slot unavailable",
    )


def slot_in_past() -> ProblemError:
    return ProblemError(
        "The booking would start in the past",
        slug="slot-in-past",
        title="Slot in the past",
        status=422,
        extra={"errors": [FieldError("body.start", "Lies in the past")]},
    )


def _event_data(booking: BookingRead) -> dict[str, Any]:
    return booking.model_dump(mode="json", exclude={"external_id"})


async def _read(
    conn: Connection, clinic_id: uuid.UUID, booking_id: uuid.UUID, app_id: uuid.UUID, tz: Any
) -> BookingRead:
    row = await store.get_booking(conn, clinic_id, booking_id, app_id)
    if row is None:
        raise NotFound("No such booking in this clinic")
    return to_read(row, tz)


def to_read(row: Row, tz: Any) -> BookingRead:
    values = dict(row)
    values["start"] = values["start"].astimezone(tz)
    values["end"] = values["end"].astimezone(tz)
    return BookingRead.model_validate(values)


async def _check_bookable(
    conn: Connection,
    rules: ClinicRules,
    practitioner_id: uuid.UUID,
    start: datetime,
    duration: timedelta,
    *,
    except_booking: uuid.UUID | None = None,
) -> None:
    """The start must be one the availability search would offer right now."""
    window = _bookable_window(start)
    cals = await calendars(conn, [practitioner_id], rules, window, except_booking=except_booking)
    if not _offered(cals, rules, start, duration):
        raise slot_unavailable()


def _bookable_window(start: datetime) -> availability.Interval:
    return availability.Interval(start, start + timedelta(minutes=1))


def _offered(
    cals: list[availability.PractitionerCalendar],
    rules: ClinicRules,
    start: datetime,
    duration: timedelta,
) -> bool:
    offered = bookable(cals, rules, _bookable_window(start), duration, datetime.now(UTC))
    return any(slot.start == start for slot in offered)


def _check_client(found: Row, rules: ClinicRules, data: BookingCreate) -> None:
    """A known client must belong to the clinic's group (unknown ones may not have arrived yet),
    and a known pet to that client; ``found`` is the booking's context row."""
    group = found["client_group"]
    if group is not None and (group != rules.group_id or found["client_erased"]):
        raise ValidationProblem([FieldError("body.client_id", "No such client in this group")])
    owner = found["patient_owner"]
    if data.patient_id is not None and owner is not None and owner != data.client_id:
        raise ValidationProblem([FieldError("body.patient_id", "Not a pet of this client")])


@dataclass(frozen=True)
class _BookingContext:
    now: datetime
    duration_minutes: int
    calendars: list[availability.PractitionerCalendar]


async def _booking_context(
    conn: Connection, rules: ClinicRules, data: BookingCreate
) -> _BookingContext:
    """Read and check, in one round trip, what a new booking depends on."""
    window = _bookable_window(data.start)
    rows = await store.booking_context(
        conn,
        clinic_id=rules.clinic_id,
        service_id=data.service_id,
        practitioner_id=data.practitioner_id,
        client_id=data.client_id,
        patient_id=data.patient_id,
        **calendar_bounds(rules, window),
    )
    found = rows[0]
    if not found["service_active"]:
        raise unknown_service("body.service_id")
    if not found["practitioner_active"]:
        raise ValidationProblem([FieldError("body.practitioner_id", "No such active practitioner")])
    if not found["offers"]:
        raise service_not_offered("body.practitioner_id")
    if data.client_id is not None:
        _check_client(found, rules, data)
    return _BookingContext(
        now=found["now"],
        duration_minutes=found["duration_minutes"],
        calendars=calendars_from_rows(
            [r for r in rows if r["kind"] is not None], [data.practitioner_id]
        ),
    )


async def _replay(
    pool: asyncpg.Pool,
    rules: ClinicRules,
    *,
    app_id: uuid.UUID,
    key: str,
    digest: bytes,
) -> BookingRead | None:
    """The booking an earlier request with this key made, if it had the same body."""
    async with pool.acquire() as conn:
        previous = await store.booking_request(conn, app_id, rules.clinic_id, key)
        if previous is None:
            return None
        if previous["request_hash"] != digest:
            raise idempotency_key_reused()
        return await _read(conn, rules.clinic_id, previous["booking_id"], app_id, rules.time_zone)


async def create_booking(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    data: BookingCreate,
    idempotency_key: str | None,
) -> tuple[BookingRead, bool]:
    """Book a practitioner; the answer's flag is False when an earlier identical request is
    replayed. The database refuses any overlap with a live booking."""
    rules = await directory.get(clinic_id)
    digest = request_hash(data)
    booking_id = uuid.uuid4()
    refusal: ProblemError | None = None
    # A retry with the same Idempotency-Key is recognised when it is refused (its slot or its key
    # is taken by then), so a first request pays no look-up for it.
    async with pool.acquire() as conn:
        try:
            if data.start <= datetime.now(UTC):
                raise slot_in_past()
            # Four round trips: the practitioner's lock with BEGIN, everything the booking is
            # checked against, the booking with its key and its event, COMMIT.
            start = store.booking_transaction_start(data.practitioner_id)
            async with transaction_opened_with(conn, start):
                found = await _booking_context(conn, rules, data)
                duration = timedelta(minutes=found.duration_minutes)
                end = data.end or data.start + duration
                if not data.pushed and not _offered(found.calendars, rules, data.start, duration):
                    raise slot_unavailable()
                booking = BookingRead(
                    **data.model_dump(exclude={"external_id", "prospect", "end", "start"}),
                    id=booking_id,
                    clinic_id=clinic_id,
                    start=data.start.astimezone(rules.time_zone),
                    end=end.astimezone(rules.time_zone),
                    status="booked",
                    prospect=data.prospect.model_dump(mode="json") if data.prospect else None,
                    cancel_reason=None,
                    version=1,
                    external_id=data.external_id,
                    # The columns' default: the transaction's time, as read with the context.
                    created_at=found.now,
                    updated_at=found.now,
                )
                await store.insert_booking(
                    conn,
                    booking_id,
                    {**booking.model_dump(), "application_id": app_id},
                    request=(idempotency_key, digest) if idempotency_key is not None else None,
                    outgoing=prepare(
                        [
                            Draft(
                                events.BOOKING_CREATED,
                                _event_data(booking),
                                f"booking:{booking_id}",
                                clinic_id,
                            )
                        ]
                    ),
                )
                if data.external_id is not None:
                    await _map_booking(conn, app_id, clinic_id, data.external_id, booking_id)
        except asyncpg.ExclusionViolationError:
            refusal = slot_taken()
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "booking_requests_pkey" or idempotency_key is None:
                raise
            refusal = Conflict("A request with this Idempotency-Key was made meanwhile")
        except ProblemError as exc:
            refusal = exc
    if refusal is None:
        return booking, True
    if idempotency_key is not None:
        # This may be the retry of a request that succeeded, or have raced one and lost: answer
        # as its replay. Asked only now, with the connection back in the pool, so that many such
        # requests can never hold every connection while each waits for another.
        replayed = await _replay(pool, rules, app_id=app_id, key=idempotency_key, digest=digest)
        if replayed is not None:
            return replayed, False
    raise refusal


def external_id_taken(external_id: str, resource_id: uuid.UUID) -> Conflict:
    return Conflict(
        f"external_id {external_id!r} already maps to another booking",
        slug="external-id-taken",
        extra={"resource_id": str(resource_id)},
    )


async def _map_booking(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    external_id: str,
    booking_id: uuid.UUID,
) -> None:
    # Never repoints: a create racing ours with the same external id waits, then finds it taken.
    taken = await store.insert_mapping(conn, app_id, clinic_id, "booking", external_id, booking_id)
    if taken is not None:
        raise external_id_taken(external_id, taken)


async def get_booking(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    booking_id: uuid.UUID,
) -> BookingRead:
    """One booking of the clinic."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        return await _read(conn, clinic_id, booking_id, app_id, rules.time_zone)


async def list_bookings(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    query: BookingQuery,
) -> BookingPage:
    """Bookings by range, practitioner, status or the caller's id, in sync order."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        rows = await store.list_bookings(
            conn,
            clinic_id,
            app_id,
            after=time_cursor(query.cursor),
            start=query.from_,
            end=query.to,
            practitioner_id=query.practitioner_id,
            status=query.status,
            external_id=query.external_id,
            updated_since=query.updated_since,
            limit=query.limit + 1,
        )
    items = [to_read(r, rules.time_zone) for r in rows[: query.limit]]
    return BookingPage(items=items, next_cursor=page_cursor(rows, query.limit))


async def _change(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    booking_id: uuid.UUID,
    if_match: str | None,
    event_type: str,
    decide: Decision,
) -> BookingRead:
    """Lock the booking, check ``If-Match``, let ``decide`` validate and return the changes."""
    rules = await directory.get(clinic_id)
    async with pool.acquire() as conn:
        try:
            async with conn.transaction():
                row = await store.get_booking(conn, clinic_id, booking_id, app_id, for_update=True)
                if row is None:
                    raise NotFound("No such booking in this clinic")
                check_if_match(if_match, row["version"], what="booking")
                changes = await decide(conn, rules, row)
                await store.update_booking(conn, booking_id, changes)
                booking = await _read(conn, clinic_id, booking_id, app_id, rules.time_zone)
                await emit(
                    conn,
                    event_type,
                    _event_data(booking),
                    aggregate=f"booking:{booking_id}",
                    clinic_id=clinic_id,
                )
        except asyncpg.ExclusionViolationError:
            raise slot_taken() from None
    return booking


def _require_live(row: asyncpg.Record) -> None:
    if row["status"] not in LIVE:
        raise Conflict(
            f"The booking is {row['status']}; it can no longer change",
            slug="booking-closed",
            title="Booking closed",
        )


async def reschedule(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    booking_id: uuid.UUID,
    data: BookingReschedule,
    if_match: str | None,
) -> BookingRead:
    """Move a live booking to another start or practitioner; emits ``booking.rescheduled``."""
    if data.start <= datetime.now(UTC):
        raise slot_in_past()

    async def decide(conn: Connection, rules: ClinicRules, row: asyncpg.Record) -> dict[str, Any]:
        _require_live(row)
        practitioner_id = data.practitioner_id or row["practitioner_id"]
        if practitioner_id != row["practitioner_id"]:
            state = await store.practitioner_state(conn, clinic_id, practitioner_id)
            if state is None or not state["active"]:
                raise ValidationProblem(
                    [FieldError("body.practitioner_id", "No such active practitioner")]
                )
        if not await store.offers(conn, row["service_id"], practitioner_id):
            raise service_not_offered("body.practitioner_id")
        duration = row["end"] - row["start"]
        await store.lock_practitioner(conn, practitioner_id)
        if not row["pushed"]:
            await _check_bookable(
                conn, rules, practitioner_id, data.start, duration, except_booking=booking_id
            )
        return {
            "start": data.start,
            "end": data.start + duration,
            "practitioner_id": practitioner_id,
        }

    return await _change(
        pool,
        directory,
        clinic_id=clinic_id,
        app_id=app_id,
        booking_id=booking_id,
        if_match=if_match,
        event_type=events.BOOKING_RESCHEDULED,
        decide=decide,
    )


async def cancel(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    booking_id: uuid.UUID,
    data: BookingCancel,
    if_match: str | None,
) -> BookingRead:
    """Cancel a booking with a reason; its time becomes free at once."""

    async def decide(conn: Connection, rules: ClinicRules, row: asyncpg.Record) -> dict[str, Any]:
        if "cancelled" not in TRANSITIONS[row["status"]]:
            _require_live(row)
            raise Conflict("An arrived booking cannot be cancelled", slug="invalid-transition")
        return {"status": "cancelled", "cancel_reason": data.reason}

    return await _change(
        pool,
        directory,
        clinic_id=clinic_id,
        app_id=app_id,
        booking_id=booking_id,
        if_match=if_match,
        event_type=events.BOOKING_CANCELLED,
        decide=decide,
    )


async def change_status(
    pool: asyncpg.Pool,
    directory: ClinicDirectory,
    *,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    booking_id: uuid.UUID,
    data: BookingStatusChange,
    if_match: str | None,
) -> BookingRead:
    """Move a booking along booked → confirmed → arrived → completed (or no-show)."""

    async def decide(conn: Connection, rules: ClinicRules, row: asyncpg.Record) -> dict[str, Any]:
        _require_live(row)
        if data.status not in TRANSITIONS[row["status"]]:
            raise Conflict(
                f"A {row['status']} booking cannot become {data.status}",
                slug="invalid-transition",
                title="Invalid status change",
                extra={"allowed": sorted(TRANSITIONS[row["status"]])},
            )
        return {"status": data.status}

    return await _change(
        pool,
        directory,
        clinic_id=clinic_id,
        app_id=app_id,
        booking_id=booking_id,
        if_match=if_match,
        event_type=events.BOOKING_STATUS_CHANGED,
        decide=decide,
    )


# --- client search ----------------------------------------------------------------------------


def search_text(*parts: str | None, phone: str | None = None) -> str:
    """What client search matches against: lower-cased names, e-mail and phone digits."""
    words = [p.casefold() for p in (*parts, phone) if p]
    digits = _digits(phone)
    if digits:
        words.append(digits)
    return " ".join(words)


def _digits(text: str | None) -> str:
    return "".join(ch for ch in text or "" if ch.isdigit())


_PHONE_LIKE = re.compile(r"[\d\s+()./-]+")


def search_needle(q: str) -> str:
    """``q`` as a LIKE pattern body: a phone number as its digits, wildcards matched literally."""
    if _PHONE_LIKE.fullmatch(q) and len(_digits(q)) >= 2:
        return _digits(q)
    return q.casefold().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


async def search_clients(
    pool: asyncpg.Pool, directory: ClinicDirectory, *, clinic_id: uuid.UUID, query: ClientQuery
) -> ClientPage:
    """Clients of the clinic's group whose name, e-mail or phone contains ``q``."""
    rules = await directory.get(clinic_id)
    key = decode_cursor(query.cursor, 1)
    try:
        after = uuid.UUID(key[0]) if key else None
    except ValueError:
        raise ValidationProblem(
            [FieldError("query.cursor", "Unknown or malformed cursor")]
        ) from None
    needle = search_needle(query.q)
    async with pool.acquire() as conn:
        rows = await store.search_clients(
            conn, rules.group_id, needle, after=after, limit=query.limit + 1
        )
    items = [
        ClientSummary(
            id=r["id"],
            display_name=r["display_name"],
            email=r["email"],
            phone=r["phone"],
            patients=[PatientSummary.model_validate(p) for p in r["patients"]],
        )
        for r in rows[: query.limit]
    ]
    cursor = encode_cursor(items[-1].id) if len(rows) > query.limit else None
    return ClientPage(items=items, next_cursor=cursor)
