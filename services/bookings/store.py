"""Every SQL statement of the bookings service. Functions take a connection; none commits."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import Any

from asyncpg import Range

from shared.db import Connection, Record, fetch_one
from shared.outbox import Outgoing, emit_ctes

# --- clinics ----------------------------------------------------------------------------------


async def get_clinic(conn: Connection, clinic_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, group_id, time_zone, slot_minutes, min_lead_minutes FROM clinics WHERE id = $1",
        clinic_id,
    )


async def upsert_clinic(
    conn: Connection, clinic_id: uuid.UUID, group_id: uuid.UUID, time_zone: str
) -> None:
    await conn.execute(
        """
        INSERT INTO clinics (id, group_id, time_zone) VALUES ($1, $2, $3)
        ON CONFLICT (id) DO UPDATE
        SET group_id = EXCLUDED.group_id, time_zone = EXCLUDED.time_zone, updated_at = now()
        """,
        clinic_id,
        group_id,
        time_zone,
    )


async def update_clinic_settings(
    conn: Connection, clinic_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    columns = [c for c in ("slot_minutes", "min_lead_minutes") if c in changes]
    assignments = "".join(f"{c} = ${i + 2}, " for i, c in enumerate(columns))
    return await fetch_one(
        conn,
        f"UPDATE clinics SET {assignments}updated_at = now() WHERE id = $1 "
        "RETURNING id, group_id, time_zone, slot_minutes, min_lead_minutes",
        clinic_id,
        *(changes[c] for c in columns),
    )


# --- practitioners, services, insurances ------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """A clinic resource with the same life cycle: create, update, deactivate, list, map."""

    resource_type: str
    table: str
    columns: str
    writable: frozenset[str]


PRACTITIONER = Kind(
    "practitioner",
    "practitioners",
    "r.id, r.clinic_id, r.name, r.role, r.active, r.created_at, r.updated_at",
    frozenset({"name", "role", "active"}),
)
SERVICE = Kind(
    "service",
    "services",
    "r.id, r.clinic_id, r.name, r.duration_minutes, r.species, r.active, r.created_at, "
    "r.updated_at, array(SELECT sp.practitioner_id FROM service_practitioners sp "
    "WHERE sp.service_id = r.id ORDER BY sp.practitioner_id) AS practitioner_ids",
    frozenset({"name", "duration_minutes", "species", "active"}),
)
INSURANCE = Kind(
    "insurance",
    "insurances",
    "r.id, r.clinic_id, r.name, r.active, r.created_at, r.updated_at",
    frozenset({"name", "active"}),
)


def _select(kind: Kind) -> str:
    """Rows of a kind with the calling application's external id, if it mapped one."""
    return f"""
        SELECT {kind.columns}, m.external_id
        FROM {kind.table} r
        LEFT JOIN mappings m
          ON m.application_id = $2 AND m.clinic_id = r.clinic_id
         AND m.resource_type = '{kind.resource_type}' AND m.resource_id = r.id
    """


async def insert_resource(
    conn: Connection,
    kind: Kind,
    resource_id: uuid.UUID,
    clinic_id: uuid.UUID,
    values: dict[str, Any],
) -> None:
    columns = ["id", "clinic_id", *values]
    placeholders = ", ".join(f"${i + 1}" for i in range(len(columns)))
    await conn.execute(
        f"INSERT INTO {kind.table} ({', '.join(columns)}) VALUES ({placeholders})",
        resource_id,
        clinic_id,
        *values.values(),
    )


async def update_resource(
    conn: Connection,
    kind: Kind,
    clinic_id: uuid.UUID,
    resource_id: uuid.UUID,
    changes: dict[str, Any],
) -> bool:
    columns = [c for c in changes if c in kind.writable]
    assignments = "".join(f"{c} = ${i + 3}, " for i, c in enumerate(columns))
    result: str = await conn.execute(
        f"UPDATE {kind.table} SET {assignments}updated_at = now() WHERE clinic_id = $1 AND id = $2",
        clinic_id,
        resource_id,
        *(changes[c] for c in columns),
    )
    return result.endswith(" 1")


async def get_resource(
    conn: Connection, kind: Kind, clinic_id: uuid.UUID, resource_id: uuid.UUID, app_id: uuid.UUID
) -> Record | None:
    return await conn.fetchrow(
        _select(kind) + " WHERE r.clinic_id = $1 AND r.id = $3", clinic_id, app_id, resource_id
    )


async def list_resources(
    conn: Connection,
    kind: Kind,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    updated_since: datetime | None,
    active: bool | None,
    external_id: str | None,
    limit: int,
) -> list[Record]:
    """A page in (updated_at, id) order: the order an incremental sync wants."""
    return await conn.fetch(
        _select(kind)
        + """
        WHERE r.clinic_id = $1
          AND ($3::timestamptz IS NULL OR (r.updated_at, r.id) > ($3, $4::uuid))
          AND ($5::timestamptz IS NULL OR r.updated_at >= $5)
          AND ($6::boolean IS NULL OR r.active = $6)
          AND ($7::text IS NULL OR m.external_id = $7)
        ORDER BY r.updated_at, r.id LIMIT $8
        """,
        clinic_id,
        app_id,
        after[0] if after else None,
        after[1] if after else None,
        updated_since,
        active,
        external_id,
        limit,
    )


async def set_service_practitioners(
    conn: Connection, clinic_id: uuid.UUID, service_id: uuid.UUID, practitioner_ids: list[uuid.UUID]
) -> None:
    await conn.execute("DELETE FROM service_practitioners WHERE service_id = $1", service_id)
    await conn.executemany(
        "INSERT INTO service_practitioners (clinic_id, service_id, practitioner_id) "
        "VALUES ($1, $2, $3)",
        [(clinic_id, service_id, p) for p in practitioner_ids],
    )


async def offering_versions(
    conn: Connection, clinic_id: uuid.UUID, service_id: uuid.UUID
) -> list[tuple[uuid.UUID, int]]:
    """The active practitioners offering the service, each with their schedule version."""
    rows = await conn.fetch(
        """
        SELECT p.id, coalesce(v.version, 0) AS version FROM service_practitioners sp
        JOIN practitioners p ON p.id = sp.practitioner_id
        LEFT JOIN schedule_versions v ON v.practitioner_id = p.id
        WHERE sp.clinic_id = $1 AND sp.service_id = $2 AND p.active
        ORDER BY p.id
        """,
        clinic_id,
        service_id,
    )
    return [(r["id"], r["version"]) for r in rows]


async def service_for_booking(
    conn: Connection, clinic_id: uuid.UUID, service_id: uuid.UUID
) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, duration_minutes, active FROM services WHERE clinic_id = $1 AND id = $2",
        clinic_id,
        service_id,
    )


async def practitioner_state(
    conn: Connection, clinic_id: uuid.UUID, practitioner_id: uuid.UUID
) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, active FROM practitioners WHERE clinic_id = $1 AND id = $2",
        clinic_id,
        practitioner_id,
    )


async def offers(conn: Connection, service_id: uuid.UUID, practitioner_id: uuid.UUID) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM service_practitioners WHERE service_id = $1 AND practitioner_id = $2",
            service_id,
            practitioner_id,
        )
    )


async def lock_practitioner(conn: Connection, practitioner_id: uuid.UUID) -> None:
    """Serialise schedule changes and bookings of one practitioner for this transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1::uuid::text, 0))", practitioner_id
    )


# --- mappings ---------------------------------------------------------------------------------


async def resource_exists(
    conn: Connection, resource_type: str, clinic_id: uuid.UUID, resource_id: uuid.UUID
) -> bool:
    """Whether a mappable resource of this clinic exists (clients and patients by group)."""
    queries = {
        "practitioner": "SELECT true FROM practitioners WHERE clinic_id = $1 AND id = $2",
        "service": "SELECT true FROM services WHERE clinic_id = $1 AND id = $2",
        "insurance": "SELECT true FROM insurances WHERE clinic_id = $1 AND id = $2",
        "booking": "SELECT true FROM bookings WHERE clinic_id = $1 AND id = $2",
        "client": "SELECT true FROM clients c JOIN clinics k ON k.group_id = c.group_id "
        "WHERE k.id = $1 AND c.id = $2",
        "patient": "SELECT true FROM patients p JOIN clients c ON c.id = p.client_id "
        "JOIN clinics k ON k.group_id = c.group_id WHERE k.id = $1 AND p.id = $2",
    }
    return bool(await conn.fetchval(queries[resource_type], clinic_id, resource_id))


async def put_mapping(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    resource_type: str,
    external_id: str,
    resource_id: uuid.UUID,
) -> tuple[Record, bool]:
    """Create or repoint a mapping; True when it was created."""
    row = await fetch_one(
        conn,
        """
        INSERT INTO mappings (application_id, clinic_id, resource_type, external_id, resource_id)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (application_id, clinic_id, resource_type, external_id)
        DO UPDATE SET resource_id = EXCLUDED.resource_id, updated_at = now()
        RETURNING resource_type, external_id, resource_id, created_at, updated_at,
                  (xmax = 0) AS created
        """,
        app_id,
        clinic_id,
        resource_type,
        external_id,
        resource_id,
    )
    return row, bool(row["created"])


async def insert_mapping(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    resource_type: str,
    external_id: str,
    resource_id: uuid.UUID,
) -> uuid.UUID | None:
    """Map a new resource unless the external id is taken: None, or the resource it maps to.

    Never repoints: of two transactions creating resources with the same external id, the later
    one waits for the earlier, then finds the id taken (``put_mapping`` would steal it).
    """
    while True:
        if await conn.fetchval(
            """
            INSERT INTO mappings
                (application_id, clinic_id, resource_type, external_id, resource_id)
            VALUES ($1, $2, $3, $4, $5)
            ON CONFLICT (application_id, clinic_id, resource_type, external_id) DO NOTHING
            RETURNING true
            """,
            app_id,
            clinic_id,
            resource_type,
            external_id,
            resource_id,
        ):
            return None
        taken = await get_mapping(conn, app_id, clinic_id, resource_type, external_id)
        if taken is not None:  # else forgotten in between: try again
            resource: uuid.UUID = taken["resource_id"]
            return resource


async def get_mapping(
    conn: Connection, app_id: uuid.UUID, clinic_id: uuid.UUID, resource_type: str, external_id: str
) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT resource_type, external_id, resource_id, created_at, updated_at FROM mappings
        WHERE application_id = $1 AND clinic_id = $2 AND resource_type = $3 AND external_id = $4
        """,
        app_id,
        clinic_id,
        resource_type,
        external_id,
    )


async def delete_mapping(
    conn: Connection, app_id: uuid.UUID, clinic_id: uuid.UUID, resource_type: str, external_id: str
) -> bool:
    result: str = await conn.execute(
        "DELETE FROM mappings WHERE application_id = $1 AND clinic_id = $2 "
        "AND resource_type = $3 AND external_id = $4",
        app_id,
        clinic_id,
        resource_type,
        external_id,
    )
    return result.endswith(" 1")


async def list_mappings(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    resource_type: str,
    *,
    after: str | None,
    resource_id: uuid.UUID | None,
    updated_since: datetime | None,
    limit: int,
) -> list[Record]:
    return await conn.fetch(
        """
        SELECT resource_type, external_id, resource_id, created_at, updated_at FROM mappings
        WHERE application_id = $1 AND clinic_id = $2 AND resource_type = $3
          AND ($4::text IS NULL OR external_id > $4)
          AND ($5::uuid IS NULL OR resource_id = $5)
          AND ($6::timestamptz IS NULL OR updated_at >= $6)
        ORDER BY external_id LIMIT $7
        """,
        app_id,
        clinic_id,
        resource_type,
        after,
        resource_id,
        updated_since,
        limit,
    )


# --- schedules --------------------------------------------------------------------------------


async def replace_working_hours(
    conn: Connection, clinic_id: uuid.UUID, practitioner_id: uuid.UUID, rules: list[dict[str, Any]]
) -> None:
    await conn.execute("DELETE FROM working_hours WHERE practitioner_id = $1", practitioner_id)
    await conn.executemany(
        """
        INSERT INTO working_hours
            (clinic_id, practitioner_id, weekday, start_time, end_time,
             effective_from, effective_to)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        """,
        [
            (
                clinic_id,
                practitioner_id,
                r["weekday"],
                r["start"],
                r["end"],
                r["effective_from"],
                r["effective_to"],
            )
            for r in rules
        ],
    )


# By ``kind``: 'hours' (weekly rules), 'day' (published days in [$2, $3] with their slots; no
# slot is a closed day) and 'busy' (breaks and live bookings touching [$4, $5), but booking $6)
# of the practitioners $1.
_CALENDAR = """
    SELECT 'hours' AS kind, practitioner_id, weekday, start_time, end_time, effective_from,
           effective_to, NULL::date AS day, NULL::timestamptz AS lo, NULL::timestamptz AS hi
    FROM working_hours WHERE practitioner_id = ANY($1::uuid[])
    UNION ALL
    SELECT 'day', d.practitioner_id, NULL, NULL, NULL, NULL, NULL, d.day,
           lower(s.period), upper(s.period)
    FROM published_days d
    LEFT JOIN published_slots s ON s.practitioner_id = d.practitioner_id AND s.day = d.day
    WHERE d.practitioner_id = ANY($1::uuid[]) AND d.day BETWEEN $2 AND $3
    UNION ALL
    SELECT 'busy', practitioner_id, NULL, NULL, NULL, NULL, NULL, NULL,
           lower(period), upper(period)
    FROM breaks
    WHERE practitioner_id = ANY($1::uuid[]) AND period && tstzrange($4, $5)
    UNION ALL
    SELECT 'busy', p.id, NULL, NULL, NULL, NULL, NULL, NULL, lower(b.period), upper(b.period)
    -- One practitioner at a time: with "= ANY" (which GiST cannot search by), or a join the
    -- planner may flatten, the exclusion constraint's index is searched by period alone,
    -- through every practitioner's bookings of those days. OFFSET 0 keeps the lookup a
    -- subquery run per practitioner, so the index is searched by practitioner and period.
    FROM unnest($1::uuid[]) AS p(id)
    CROSS JOIN LATERAL (
        SELECT period FROM bookings
        WHERE practitioner_id = p.id AND period && tstzrange($4, $5)
          AND status IN ('booked', 'confirmed', 'arrived') AND ($6::uuid IS NULL OR id <> $6)
        OFFSET 0
    ) b
"""


async def calendar_rows(
    conn: Connection,
    practitioner_ids: list[uuid.UUID],
    *,
    first: date,
    last: date,
    start: datetime,
    end: datetime,
    except_booking: uuid.UUID | None = None,
) -> list[Record]:
    """In one round trip, the practitioners' calendar rows (see ``_CALENDAR``)."""
    return await conn.fetch(_CALENDAR, practitioner_ids, first, last, start, end, except_booking)


async def booking_context(
    conn: Connection,
    *,
    clinic_id: uuid.UUID,
    service_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    client_id: uuid.UUID | None,
    patient_id: uuid.UUID | None,
    first: date,
    last: date,
    start: datetime,
    end: datetime,
) -> list[Record]:
    """Everything a new booking is checked against, in one round trip: on every row the
    transaction's time (what the booking's ``created_at`` will be), the service and
    practitioner and whether one offers the other, the client's group and the patient's owner;
    with them the practitioner's calendar rows around the start (``kind`` NULL when none)."""
    return await conn.fetch(
        f"""
        WITH pre AS (
            SELECT now() AS now, s.duration_minutes, s.active AS service_active,
                   p.active AS practitioner_active,
                   EXISTS (SELECT 1 FROM service_practitioners sp
                           WHERE sp.service_id = s.id AND sp.practitioner_id = p.id) AS offers,
                   c.group_id AS client_group, c.erased AS client_erased,
                   (SELECT pt.client_id FROM patients pt WHERE pt.id = $9) AS patient_owner
            FROM (SELECT 1) AS one
            LEFT JOIN services s ON s.clinic_id = $7 AND s.id = $8
            LEFT JOIN practitioners p ON p.clinic_id = $7 AND p.id = ($1::uuid[])[1]
            LEFT JOIN clients c ON c.id = $10
        ), calendar AS ({_CALENDAR})
        SELECT * FROM pre LEFT JOIN calendar ON true
        """,
        [practitioner_id],
        first,
        last,
        start,
        end,
        None,
        clinic_id,
        service_id,
        patient_id,
        client_id,
    )


def booking_transaction_start(practitioner_id: uuid.UUID) -> str:
    """What a new booking's transaction starts with (``transaction_opened_with``): the
    practitioner's lock (``lock_practitioner``; a ``UUID``'s text is safe to inline), and
    generic plans for its statements. Postgres otherwise plans ``booking_context`` afresh on
    every execution, its generic plan being estimated dearer; that planning measured about
    0.4 ms of a 1.4 ms booking, for the same plan."""
    return (
        "SET LOCAL plan_cache_mode = force_generic_plan; "
        f"SELECT pg_advisory_xact_lock(hashtextextended('{uuid.UUID(str(practitioner_id))}', 0))"
    )


async def working_hours(conn: Connection, practitioner_ids: list[uuid.UUID]) -> list[Record]:
    return await conn.fetch(
        """
        SELECT practitioner_id, weekday, start_time AS start, end_time AS "end",
               effective_from, effective_to
        FROM working_hours WHERE practitioner_id = ANY($1::uuid[])
        ORDER BY practitioner_id, weekday, start_time
        """,
        practitioner_ids,
    )


async def replace_published_day(
    conn: Connection,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    day: date,
    periods: list[tuple[datetime, datetime]],
) -> datetime:
    published_at: datetime = await conn.fetchval(
        """
        INSERT INTO published_days (clinic_id, practitioner_id, day) VALUES ($1, $2, $3)
        ON CONFLICT (practitioner_id, day) DO UPDATE SET published_at = now()
        RETURNING published_at
        """,
        clinic_id,
        practitioner_id,
        day,
    )
    await conn.execute(
        "DELETE FROM published_slots WHERE practitioner_id = $1 AND day = $2", practitioner_id, day
    )
    await conn.executemany(
        "INSERT INTO published_slots (practitioner_id, day, period) VALUES ($1, $2, $3)",
        [(practitioner_id, day, Range(start, end)) for start, end in periods],
    )
    return published_at


async def published_day(conn: Connection, practitioner_id: uuid.UUID, day: date) -> Record | None:
    return await conn.fetchrow(
        """
        SELECT d.published_at,
               array(SELECT s.period FROM published_slots s
                     WHERE s.practitioner_id = d.practitioner_id AND s.day = d.day
                     ORDER BY lower(s.period)) AS periods
        FROM published_days d WHERE d.practitioner_id = $1 AND d.day = $2
        """,
        practitioner_id,
        day,
    )


async def insert_break(
    conn: Connection,
    break_id: uuid.UUID,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    start: datetime,
    end: datetime,
    reason: str | None,
) -> Record:
    return await fetch_one(
        conn,
        """
        INSERT INTO breaks (id, clinic_id, practitioner_id, period, reason)
        VALUES ($1, $2, $3, $4, $5)
        RETURNING id, practitioner_id, lower(period) AS start, upper(period) AS "end", reason,
                  created_at
        """,
        break_id,
        clinic_id,
        practitioner_id,
        Range(start, end),
        reason,
    )


async def delete_break(
    conn: Connection, clinic_id: uuid.UUID, practitioner_id: uuid.UUID, break_id: uuid.UUID
) -> Record | None:
    return await conn.fetchrow(
        """
        DELETE FROM breaks WHERE clinic_id = $1 AND practitioner_id = $2 AND id = $3
        RETURNING id, practitioner_id, lower(period) AS start, upper(period) AS "end", reason,
                  created_at
        """,
        clinic_id,
        practitioner_id,
        break_id,
    )


async def list_breaks(
    conn: Connection,
    clinic_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    *,
    start: datetime,
    end: datetime,
) -> list[Record]:
    return await conn.fetch(
        """
        SELECT id, practitioner_id, lower(period) AS start, upper(period) AS "end", reason,
               created_at
        FROM breaks
        WHERE clinic_id = $1 AND practitioner_id = $2 AND period && tstzrange($3, $4)
        ORDER BY lower(period) LIMIT 1000
        """,
        clinic_id,
        practitioner_id,
        start,
        end,
    )


async def live_bookings_overlapping(
    conn: Connection, practitioner_id: uuid.UUID, start: datetime, end: datetime
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """
        SELECT id FROM bookings
        WHERE practitioner_id = $1 AND period && tstzrange($2, $3)
          AND status IN ('booked', 'confirmed', 'arrived')
        ORDER BY lower(period)
        """,
        practitioner_id,
        start,
        end,
    )
    return [r["id"] for r in rows]


# --- bookings ---------------------------------------------------------------------------------

_BOOKING = """
    b.id, b.clinic_id, b.practitioner_id, b.service_id, lower(b.period) AS start,
    upper(b.period) AS "end", b.status, b.source, b.pushed, b.client_id, b.patient_id, b.prospect,
    b.insurance_id, b.notes, b.cancel_reason, b.version, b.created_at, b.updated_at
"""


def _booking_select() -> str:
    return f"""
        SELECT {_BOOKING}, m.external_id
        FROM bookings b
        LEFT JOIN mappings m
          ON m.application_id = $2 AND m.clinic_id = b.clinic_id
         AND m.resource_type = 'booking' AND m.resource_id = b.id
    """


async def insert_booking(
    conn: Connection,
    booking_id: uuid.UUID,
    values: dict[str, Any],
    *,
    request: tuple[str, bytes] | None = None,
    outgoing: Outgoing | None = None,
) -> Record:
    """Insert and return the row as reads see it (without the caller's external id); with
    ``request`` (Idempotency-Key, body hash) the key is recorded, and with ``outgoing`` the
    events are emitted, in the same statement."""
    key, digest = request if request is not None else (None, None)
    events = f", {emit_ctes(16)}" if outgoing is not None else ""
    return await fetch_one(
        conn,
        f"""
        WITH b AS (
            INSERT INTO bookings AS b (id, clinic_id, practitioner_id, service_id, period, source,
                                       pushed, client_id, patient_id, prospect, insurance_id,
                                       notes, application_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
            RETURNING {_BOOKING}
        ), request AS (
            INSERT INTO booking_requests
                (application_id, clinic_id, idempotency_key, request_hash, booking_id)
            SELECT $13, $2, $14, $15, $1 WHERE $14::text IS NOT NULL
        ){events}
        SELECT * FROM b
        """,
        booking_id,
        values["clinic_id"],
        values["practitioner_id"],
        values["service_id"],
        Range(values["start"], values["end"]),
        values["source"],
        values["pushed"],
        values["client_id"],
        values["patient_id"],
        values["prospect"],
        values["insurance_id"],
        values["notes"],
        values["application_id"],
        key,
        digest,
        *(outgoing.args if outgoing is not None else ()),
    )


async def get_booking(
    conn: Connection,
    clinic_id: uuid.UUID,
    booking_id: uuid.UUID,
    app_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> Record | None:
    lock = " FOR UPDATE OF b" if for_update else ""
    return await conn.fetchrow(
        _booking_select() + f" WHERE b.clinic_id = $1 AND b.id = $3{lock}",
        clinic_id,
        app_id,
        booking_id,
    )


async def list_bookings(
    conn: Connection,
    clinic_id: uuid.UUID,
    app_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    start: datetime | None,
    end: datetime | None,
    practitioner_id: uuid.UUID | None,
    status: str | None,
    external_id: str | None,
    updated_since: datetime | None,
    limit: int,
) -> list[Record]:
    return await conn.fetch(
        _booking_select()
        + """
        WHERE b.clinic_id = $1
          AND ($3::timestamptz IS NULL OR (b.updated_at, b.id) > ($3, $4::uuid))
          AND ($5::timestamptz IS NULL OR upper(b.period) > $5)
          AND ($6::timestamptz IS NULL OR lower(b.period) < $6)
          AND ($7::uuid IS NULL OR b.practitioner_id = $7)
          AND ($8::text IS NULL OR b.status = $8)
          AND ($9::text IS NULL OR m.external_id = $9)
          AND ($10::timestamptz IS NULL OR b.updated_at >= $10)
        ORDER BY b.updated_at, b.id LIMIT $11
        """,
        clinic_id,
        app_id,
        after[0] if after else None,
        after[1] if after else None,
        start,
        end,
        practitioner_id,
        status,
        external_id,
        updated_since,
        limit,
    )


async def update_booking(conn: Connection, booking_id: uuid.UUID, changes: dict[str, Any]) -> None:
    """Apply changes and bump the version (the ETag)."""
    values = dict(changes)
    if "start" in values:
        values["period"] = Range(values.pop("start"), values.pop("end"))
    columns = list(values)
    assignments = "".join(f"{c} = ${i + 2}, " for i, c in enumerate(columns))
    await conn.execute(
        f"UPDATE bookings SET {assignments}version = version + 1, updated_at = now() WHERE id = $1",
        booking_id,
        *values.values(),
    )


async def booking_request(
    conn: Connection, app_id: uuid.UUID, clinic_id: uuid.UUID, key: str
) -> Record | None:
    return await conn.fetchrow(
        "SELECT request_hash, booking_id FROM booking_requests "
        "WHERE application_id = $1 AND clinic_id = $2 AND idempotency_key = $3",
        app_id,
        clinic_id,
        key,
    )


# --- client projection ------------------------------------------------------------------------


async def upsert_client(conn: Connection, values: dict[str, Any]) -> None:
    await conn.execute(
        """
        INSERT INTO clients (id, group_id, display_name, email, phone, search, updated_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7)
        ON CONFLICT (id) DO UPDATE SET
            display_name = EXCLUDED.display_name, email = EXCLUDED.email,
            phone = EXCLUDED.phone, search = EXCLUDED.search, updated_at = EXCLUDED.updated_at
        WHERE clients.updated_at <= EXCLUDED.updated_at AND NOT clients.erased
        """,
        values["id"],
        values["group_id"],
        values["display_name"],
        values["email"],
        values["phone"],
        values["search"],
        values["updated_at"],
    )


async def upsert_patient(conn: Connection, values: dict[str, Any]) -> None:
    await conn.execute(
        """
        INSERT INTO patients (id, client_id, name, species, updated_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (id) DO UPDATE SET
            name = EXCLUDED.name, species = EXCLUDED.species, updated_at = EXCLUDED.updated_at
        WHERE patients.updated_at <= EXCLUDED.updated_at
        """,
        values["id"],
        values["client_id"],
        values["name"],
        values["species"],
        values["updated_at"],
    )


async def ensure_client_stub(conn: Connection, client_id: uuid.UUID, group_id: uuid.UUID) -> None:
    """A patient event can arrive before its client's; keep the row so the patient can attach."""
    await conn.execute(
        "INSERT INTO clients (id, group_id, display_name, updated_at) "
        "VALUES ($1, $2, '', '-infinity') ON CONFLICT (id) DO NOTHING",
        client_id,
        group_id,
    )


async def erase_client(conn: Connection, client_id: uuid.UUID, group_id: uuid.UUID) -> None:
    await conn.execute(
        """
        INSERT INTO clients (id, group_id, display_name, erased) VALUES ($1, $2, '', true)
        ON CONFLICT (id) DO UPDATE
        SET display_name = '', email = NULL, phone = NULL, search = '', erased = true,
            updated_at = now()
        """,
        client_id,
        group_id,
    )
    await conn.execute(
        "UPDATE patients SET name = '', updated_at = now() WHERE client_id = $1", client_id
    )
    await conn.execute(
        "UPDATE bookings SET prospect = NULL, notes = NULL, updated_at = now() "
        "WHERE client_id = $1 AND (prospect IS NOT NULL OR notes IS NOT NULL)",
        client_id,
    )


async def search_clients(
    conn: Connection, group_id: uuid.UUID, query: str, *, after: uuid.UUID | None, limit: int
) -> list[Record]:
    return await conn.fetch(
        """
        SELECT c.id, c.display_name, c.email, c.phone,
               coalesce(json_agg(json_build_object('id', p.id, 'name', p.name,
                                                   'species', p.species)
                                 ORDER BY p.name) FILTER (WHERE p.id IS NOT NULL), '[]')
                 AS patients
        FROM clients c LEFT JOIN patients p ON p.client_id = c.id
        WHERE c.group_id = $1 AND NOT c.erased AND c.search LIKE '%' || $2 || '%'
          AND ($3::uuid IS NULL OR c.id > $3)
        GROUP BY c.id ORDER BY c.id LIMIT $4
        """,
        group_id,
        query,
        after,
        limit,
    )


# --- sandbox ----------------------------------------------------------------------------------


async def upsert_sandbox_catalogue(
    conn: Connection,
    *,
    clinic_id: uuid.UUID,
    group_id: uuid.UUID,
    time_zone: str,
    practitioners: list[tuple[uuid.UUID, str, str]],
    services: list[tuple[uuid.UUID, str, int]],
    weekly_hours: list[tuple[int, str, str]],
    effective_from: date,
) -> None:
    """The sandbox clinic's practitioners, services and hours; existing rows are left alone."""
    await upsert_clinic(conn, clinic_id, group_id, time_zone)
    await conn.executemany(
        "INSERT INTO practitioners (id, clinic_id, name, role) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (id) DO NOTHING",
        [(p, clinic_id, name, role) for p, name, role in practitioners],
    )
    await conn.executemany(
        "INSERT INTO services (id, clinic_id, name, duration_minutes) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (id) DO NOTHING",
        [(s, clinic_id, name, minutes) for s, name, minutes in services],
    )
    await conn.executemany(
        "INSERT INTO service_practitioners (clinic_id, service_id, practitioner_id) "
        "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        [(clinic_id, s, p) for s, _, _ in services for p, _, _ in practitioners],
    )
    for practitioner_id, _, _ in practitioners:
        has_hours = await conn.fetchval(
            "SELECT true FROM working_hours WHERE practitioner_id = $1 LIMIT 1", practitioner_id
        )
        if not has_hours:
            await replace_working_hours(
                conn,
                clinic_id,
                practitioner_id,
                [
                    {
                        "weekday": weekday,
                        "start": time.fromisoformat(start),
                        "end": time.fromisoformat(end),
                        "effective_from": effective_from,
                        "effective_to": None,
                    }
                    for weekday, start, end in weekly_hours
                ],
            )
