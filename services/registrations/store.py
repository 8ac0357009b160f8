"""Every SQL statement of the registrations service. Functions take a connection; none commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.db import Connection, Record, fetch_one

# --- clinics ----------------------------------------------------------------------------------


async def get_clinic(conn: Connection, clinic_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, group_id, country, time_zone FROM clinics WHERE id = $1", clinic_id
    )


async def upsert_clinic(
    conn: Connection,
    clinic_id: uuid.UUID,
    *,
    group_id: uuid.UUID,
    country: str,
    time_zone: str,
    updated_at: datetime,
) -> None:
    """Keep the directory's entry; an older copy (a late event) never overwrites a newer one."""
    await conn.execute(
        """
        INSERT INTO clinics (id, group_id, country, time_zone, updated_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (id) DO UPDATE
        SET group_id = EXCLUDED.group_id, country = EXCLUDED.country,
            time_zone = EXCLUDED.time_zone, updated_at = EXCLUDED.updated_at
        WHERE clinics.updated_at <= EXCLUDED.updated_at
        """,
        clinic_id,
        group_id,
        country,
        time_zone,
        updated_at,
    )


# --- group forms ------------------------------------------------------------------------------


async def get_group_form(conn: Connection, group_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(
        "SELECT lists, updated_at FROM group_forms WHERE group_id = $1", group_id
    )


async def group_form_version(conn: Connection, group_id: uuid.UUID) -> datetime | None:
    """When the group's lists last changed; None while it uses the defaults."""
    version: datetime | None = await conn.fetchval(
        "SELECT updated_at FROM group_forms WHERE group_id = $1", group_id
    )
    return version


async def change_group_form(
    conn: Connection, group_id: uuid.UUID, replace: dict[str, Any], reset: list[str]
) -> Record:
    """Replace some stored lists and drop others (back to the defaults), in one statement."""
    return await fetch_one(
        conn,
        """
        INSERT INTO group_forms (group_id, lists) VALUES ($1, $2::jsonb - $3::text[])
        ON CONFLICT (group_id) DO UPDATE
        SET lists = (group_forms.lists || $2::jsonb) - $3::text[], updated_at = now()
        RETURNING lists, updated_at
        """,
        group_id,
        replace,
        reset,
    )


async def delete_group_form(conn: Connection, group_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM group_forms WHERE group_id = $1", group_id)


# --- clients ----------------------------------------------------------------------------------

_CLIENT = """
    id, group_id, registered_clinic_id, title, first_name, last_name, email, phone,
    address_line1, address_line2, address_city, address_region, address_postcode,
    address_country, referral_source, erased_at, version, created_at, updated_at
"""

#: Columns a client's create or update may set, personal data and its normalised keys.
CLIENT_COLUMNS = (
    "title",
    "first_name",
    "last_name",
    "email",
    "phone",
    "address_line1",
    "address_line2",
    "address_city",
    "address_region",
    "address_postcode",
    "address_country",
    "referral_source",
    "email_key",
    "phone_key",
    "first_name_key",
    "last_name_key",
    "postcode_key",
)


async def insert_client(
    conn: Connection,
    client_id: uuid.UUID,
    *,
    group_id: uuid.UUID,
    clinic_id: uuid.UUID,
    values: dict[str, Any],
    request: tuple[uuid.UUID, str, bytes] | None = None,
) -> Record:
    """Insert the client; with ``request`` (application, Idempotency-Key, body hash) the key of
    the registration that creates it is recorded in the same statement."""
    columns = [c for c in CLIENT_COLUMNS if c in values]
    placeholders = ", ".join(f"${i + 7}" for i in range(len(columns)))
    app_id, key, digest = request if request is not None else (None, None, None)
    return await fetch_one(
        conn,
        f"""
        WITH client AS (
            INSERT INTO clients (id, group_id, registered_clinic_id, {", ".join(columns)})
            VALUES ($1, $2, $3, {placeholders}) RETURNING {_CLIENT}
        ), request AS (
            INSERT INTO create_requests (application_id, clinic_id, operation, idempotency_key,
                                         request_hash, client_id, resource_id)
            SELECT $4, $3, 'registration', $5, $6, $1, $1 WHERE $5::text IS NOT NULL
        )
        SELECT * FROM client
        """,
        client_id,
        group_id,
        clinic_id,
        app_id,
        key,
        digest,
        *(values[c] for c in columns),
    )


async def get_client(
    conn: Connection, group_id: uuid.UUID, client_id: uuid.UUID, *, for_update: bool = False
) -> Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_CLIENT} FROM clients WHERE group_id = $1 AND id = $2{lock}",
        group_id,
        client_id,
    )


async def get_client_keys(conn: Connection, client_id: uuid.UUID) -> Record:
    return await fetch_one(
        conn,
        "SELECT email_key, phone_key, first_name_key, last_name_key, postcode_key "
        "FROM clients WHERE id = $1",
        client_id,
    )


async def update_client(conn: Connection, client_id: uuid.UUID, changes: dict[str, Any]) -> None:
    """Apply changes and bump the version (the ETag)."""
    columns = [c for c in CLIENT_COLUMNS if c in changes]
    assignments = "".join(f"{c} = ${i + 2}, " for i, c in enumerate(columns))
    await conn.execute(
        f"UPDATE clients SET {assignments}version = version + 1, updated_at = now() WHERE id = $1",
        client_id,
        *(changes[c] for c in columns),
    )


async def list_clients(
    conn: Connection,
    group_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    updated_since: datetime | None,
    limit: int,
) -> list[Record]:
    return await conn.fetch(
        f"""
        SELECT {_CLIENT} FROM clients
        WHERE group_id = $1
          AND ($2::timestamptz IS NULL OR (updated_at, id) > ($2, $3::uuid))
          AND ($4::timestamptz IS NULL OR updated_at >= $4)
        ORDER BY updated_at, id LIMIT $5
        """,
        group_id,
        after[0] if after else None,
        after[1] if after else None,
        updated_since,
        limit,
    )


async def client_by_email(
    conn: Connection, group_id: uuid.UUID, email_key: str
) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM clients WHERE group_id = $1 AND email_key = $2", group_id, email_key
    )
    return found


async def client_by_phone_name(
    conn: Connection, group_id: uuid.UUID, phone_key: str, last_name_key: str
) -> uuid.UUID | None:
    found: uuid.UUID | None = await conn.fetchval(
        "SELECT id FROM clients WHERE group_id = $1 AND phone_key = $2 AND last_name_key = $3",
        group_id,
        phone_key,
        last_name_key,
    )
    return found


async def match(
    conn: Connection,
    group_id: uuid.UUID,
    *,
    email_key: str | None,
    phone_key: str | None,
    first_name_key: str | None,
    last_name_key: str | None,
    postcode_key: str | None,
) -> Record:
    """Which duplicate rules the given keys meet in the group; a NULL key meets none."""
    return await fetch_one(
        conn,
        """
        SELECT
          (SELECT id FROM clients WHERE group_id = $1 AND email_key = $2) AS by_email,
          (SELECT id FROM clients
            WHERE group_id = $1 AND phone_key = $3 AND last_name_key = $5) AS by_phone_name,
          EXISTS (SELECT 1 FROM clients WHERE group_id = $1 AND phone_key = $3) AS phone,
          EXISTS (SELECT 1 FROM clients
                   WHERE group_id = $1 AND last_name_key = $5 AND first_name_key = $4)
            AS full_name,
          EXISTS (SELECT 1 FROM clients
                   WHERE group_id = $1 AND last_name_key = $5 AND postcode_key = $6)
            AS name_postcode
        """,
        group_id,
        email_key,
        phone_key,
        first_name_key,
        last_name_key,
        postcode_key,
    )


async def erase_client(conn: Connection, client_id: uuid.UUID) -> None:
    """Clear every piece of personal data of the client and its pets; ids and history stay."""
    assignments = ", ".join(f"{c} = NULL" for c in CLIENT_COLUMNS)
    await conn.execute(
        f"UPDATE clients SET {assignments}, erased_at = now(), version = version + 1, "
        "updated_at = now() WHERE id = $1",
        client_id,
    )
    await conn.execute(
        "UPDATE patients SET name = NULL, microchip = NULL, version = version + 1, "
        "updated_at = now() WHERE client_id = $1",
        client_id,
    )
    # A request hash is derived from the personal data it carried.
    await conn.execute("DELETE FROM create_requests WHERE client_id = $1", client_id)


# --- patients ---------------------------------------------------------------------------------

_PATIENT = """
    id, client_id, name, species, breed, sex, date_of_birth, neutered, microchip, version,
    created_at, updated_at
"""

PATIENT_COLUMNS = ("name", "species", "breed", "sex", "date_of_birth", "neutered", "microchip")


async def insert_patient(
    conn: Connection,
    patient_id: uuid.UUID,
    *,
    group_id: uuid.UUID,
    client_id: uuid.UUID,
    values: dict[str, Any],
) -> Record:
    return await fetch_one(
        conn,
        f"""
        INSERT INTO patients (id, group_id, client_id, name, species, breed, sex, date_of_birth,
                              neutered, microchip)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING {_PATIENT}
        """,
        patient_id,
        group_id,
        client_id,
        *(values.get(c) for c in PATIENT_COLUMNS),
    )


async def get_patient(
    conn: Connection, group_id: uuid.UUID, patient_id: uuid.UUID, *, for_update: bool = False
) -> Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_PATIENT} FROM patients WHERE group_id = $1 AND id = $2{lock}",
        group_id,
        patient_id,
    )


async def patients_of(conn: Connection, client_ids: list[uuid.UUID]) -> list[Record]:
    return await conn.fetch(
        f"SELECT {_PATIENT} FROM patients WHERE client_id = ANY($1::uuid[]) "
        "ORDER BY client_id, seq",
        client_ids,
    )


async def update_patient(conn: Connection, patient_id: uuid.UUID, changes: dict[str, Any]) -> None:
    columns = [c for c in PATIENT_COLUMNS if c in changes]
    assignments = "".join(f"{c} = ${i + 2}, " for i, c in enumerate(columns))
    await conn.execute(
        f"UPDATE patients SET {assignments}version = version + 1, updated_at = now() WHERE id = $1",
        patient_id,
        *(changes[c] for c in columns),
    )


async def patient_by_microchip(
    conn: Connection, group_id: uuid.UUID, microchips: list[str]
) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, client_id, microchip FROM patients "
        "WHERE group_id = $1 AND microchip = ANY($2::text[]) LIMIT 1",
        group_id,
        microchips,
    )


# --- consents ---------------------------------------------------------------------------------


async def record_consents(
    conn: Connection,
    client_id: uuid.UUID,
    *,
    clinic_id: uuid.UUID,
    application_id: uuid.UUID | None,
    answers: list[tuple[str, bool, str]],
) -> list[Record]:
    """Append (code, granted, text shown) answers to the client's consent record; returns the
    rows written, by code."""
    if not answers:
        return []
    return await conn.fetch(
        """
        INSERT INTO consents (client_id, code, granted, text, clinic_id, application_id)
        SELECT $1, a.code, a.granted, a.text, $2, $3
        FROM unnest($4::text[], $5::boolean[], $6::text[]) AS a(code, granted, text)
        ORDER BY a.code
        RETURNING client_id, code, granted, text, recorded_at
        """,
        client_id,
        clinic_id,
        application_id,
        [a[0] for a in answers],
        [a[1] for a in answers],
        [a[2] for a in answers],
    )


async def current_consents(conn: Connection, client_ids: list[uuid.UUID]) -> list[Record]:
    """Each client's latest answer per consent code."""
    return await conn.fetch(
        """
        SELECT DISTINCT ON (client_id, code) client_id, code, granted, text, recorded_at
        FROM consents WHERE client_id = ANY($1::uuid[])
        ORDER BY client_id, code, id DESC
        """,
        client_ids,
    )


# --- idempotent creates -----------------------------------------------------------------------


async def create_request(
    conn: Connection, app_id: uuid.UUID, clinic_id: uuid.UUID, operation: str, key: str
) -> Record | None:
    return await conn.fetchrow(
        "SELECT request_hash, client_id, resource_id FROM create_requests "
        "WHERE application_id = $1 AND clinic_id = $2 AND operation = $3 AND idempotency_key = $4",
        app_id,
        clinic_id,
        operation,
        key,
    )


async def insert_create_request(
    conn: Connection,
    app_id: uuid.UUID,
    clinic_id: uuid.UUID,
    operation: str,
    key: str,
    *,
    request_hash: bytes,
    client_id: uuid.UUID,
    resource_id: uuid.UUID,
) -> None:
    await conn.execute(
        "INSERT INTO create_requests (application_id, clinic_id, operation, idempotency_key, "
        "request_hash, client_id, resource_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        app_id,
        clinic_id,
        operation,
        key,
        request_hash,
        client_id,
        resource_id,
    )
