"""Every SQL statement of the auth service. Functions take a connection; none commits."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.db import Connection, Record, fetch_one

_APP_COLUMNS = """
    id, partner_id, name, client_id, environment, tier, status, contact_email::text,
    clinic_owned, dpa_signed, created_at, updated_at
"""
_CLINIC_COLUMNS = "id, group_id, name, time_zone, country, sandbox, created_at, updated_at"
_GRANT_COLUMNS = "id, application_id, clinic_id, group_id, scopes, created_at, revoked_at"


# --- directory --------------------------------------------------------------------------------


async def insert_group(conn: Connection, group_id: uuid.UUID, name: str) -> Record:
    return await fetch_one(
        conn,
        "INSERT INTO groups (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
        group_id,
        name,
    )


async def group_exists(conn: Connection, group_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT true FROM groups WHERE id = $1", group_id))


async def insert_clinic(conn: Connection, clinic_id: uuid.UUID, **values: Any) -> Record:
    return await fetch_one(
        conn,
        f"""
        INSERT INTO clinics (id, group_id, name, time_zone, country, sandbox)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_CLINIC_COLUMNS}
        """,
        clinic_id,
        values["group_id"],
        values["name"],
        values["time_zone"],
        values["country"],
        values["sandbox"],
    )


async def get_clinic(conn: Connection, clinic_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(f"SELECT {_CLINIC_COLUMNS} FROM clinics WHERE id = $1", clinic_id)


async def list_granted_clinics(
    conn: Connection,
    application_id: uuid.UUID,
    *,
    after: uuid.UUID | None,
    updated_since: datetime | None,
    limit: int,
) -> list[Record]:
    """Clinics the application holds an active grant for, directly or through their group.

    A group grant never reaches clinics of the other environment (sandbox vs. real).
    """
    return await conn.fetch(
        f"""
        SELECT {_CLINIC_COLUMNS} FROM clinics c
        WHERE c.sandbox = (SELECT a.environment = 'sandbox' FROM applications a WHERE a.id = $1)
          AND EXISTS (
            SELECT 1 FROM grants g
            WHERE g.application_id = $1 AND g.revoked_at IS NULL
              AND (g.clinic_id = c.id OR g.group_id = c.group_id)
        )
          AND ($2::uuid IS NULL OR c.id > $2)
          AND ($3::timestamptz IS NULL OR c.updated_at >= $3)
        ORDER BY c.id LIMIT $4
        """,
        application_id,
        after,
        updated_since,
        limit,
    )


async def insert_partner(
    conn: Connection, partner_id: uuid.UUID, name: str, contact_email: str
) -> Record:
    return await fetch_one(
        conn,
        "INSERT INTO partners (id, name, contact_email) VALUES ($1, $2, $3) "
        "RETURNING id, name, contact_email::text, created_at",
        partner_id,
        name,
        contact_email,
    )


async def partner_exists(conn: Connection, partner_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT true FROM partners WHERE id = $1", partner_id))


# --- applications -----------------------------------------------------------------------------


async def insert_application(
    conn: Connection, app_id: uuid.UUID, *, secret_hash: bytes, **values: Any
) -> Record:
    return await fetch_one(
        conn,
        f"""
        INSERT INTO applications (id, partner_id, name, client_id, secret_hash, environment, tier,
                                  contact_email, clinic_owned, dpa_signed)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING {_APP_COLUMNS}
        """,
        app_id,
        values["partner_id"],
        values["name"],
        values["client_id"],
        secret_hash,
        values["environment"],
        values["tier"],
        values["contact_email"],
        values["clinic_owned"],
        values["dpa_signed"],
    )


async def get_application(
    conn: Connection, app_id: uuid.UUID, *, for_update: bool = False
) -> Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_APP_COLUMNS} FROM applications WHERE id = $1{lock}", app_id
    )


async def client_credentials(conn: Connection, client_id: str) -> Record | None:
    """What client authentication needs: the application and its secret hashes."""
    return await conn.fetchrow(
        f"""
        SELECT {_APP_COLUMNS}, secret_hash,
               CASE WHEN previous_secret_expires_at > now() THEN previous_secret_hash END
                 AS previous_secret_hash
        FROM applications WHERE client_id = $1
        """,
        client_id,
    )


async def update_application(
    conn: Connection, app_id: uuid.UUID, changes: dict[str, Any]
) -> Record | None:
    allowed = {"name", "contact_email", "tier", "dpa_signed", "status"}
    columns = [c for c in changes if c in allowed]
    if not columns:
        return await get_application(conn, app_id)
    assignments = ", ".join(f"{c} = ${i + 2}" for i, c in enumerate(columns))
    return await conn.fetchrow(
        f"UPDATE applications SET {assignments}, updated_at = now() WHERE id = $1 "
        f"RETURNING {_APP_COLUMNS}",
        app_id,
        *(changes[c] for c in columns),
    )


async def rotate_secret(
    conn: Connection, app_id: uuid.UUID, new_hash: bytes, grace_seconds: int
) -> Record | None:
    return await conn.fetchrow(
        f"""
        UPDATE applications
        SET previous_secret_hash = secret_hash,
            previous_secret_expires_at = now() + make_interval(secs => $3),
            secret_hash = $2, updated_at = now()
        WHERE id = $1
        RETURNING {_APP_COLUMNS}, previous_secret_expires_at
        """,
        app_id,
        new_hash,
        float(grace_seconds),
    )


# --- grants -----------------------------------------------------------------------------------


async def insert_grant(
    conn: Connection,
    grant_id: uuid.UUID,
    application_id: uuid.UUID,
    clinic_id: uuid.UUID | None,
    group_id: uuid.UUID | None,
    scopes: list[str],
) -> Record:
    return await fetch_one(
        conn,
        f"""
        INSERT INTO grants (id, application_id, clinic_id, group_id, scopes)
        VALUES ($1, $2, $3, $4, $5) RETURNING {_GRANT_COLUMNS}
        """,
        grant_id,
        application_id,
        clinic_id,
        group_id,
        scopes,
    )


async def revoke_grant(conn: Connection, grant_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(
        f"UPDATE grants SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
        f"RETURNING {_GRANT_COLUMNS}",
        grant_id,
    )


async def get_grant(conn: Connection, grant_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = $1", grant_id)


async def list_grants(
    conn: Connection, application_id: uuid.UUID, *, after: uuid.UUID | None, limit: int
) -> list[Record]:
    return await conn.fetch(
        f"""
        SELECT {_GRANT_COLUMNS} FROM grants
        WHERE application_id = $1 AND ($2::uuid IS NULL OR id > $2)
        ORDER BY id LIMIT $3
        """,
        application_id,
        after,
        limit,
    )


async def clinic_grant(
    conn: Connection, application_id: uuid.UUID, clinic_id: uuid.UUID
) -> Record | None:
    """The union of the application's active scopes on a clinic (direct or via its group)."""
    return await conn.fetchrow(
        """
        SELECT c.id AS clinic_id, c.group_id, c.sandbox,
               array(SELECT DISTINCT unnest(g.scopes)
                     FROM grants g
                     WHERE g.application_id = $1 AND g.revoked_at IS NULL
                       AND (g.clinic_id = c.id OR g.group_id = c.group_id)) AS scopes,
               EXISTS (SELECT 1 FROM grants g
                       WHERE g.application_id = $1 AND g.revoked_at IS NULL
                         AND g.group_id = c.group_id) AS via_group
        FROM clinics c WHERE c.id = $2
        """,
        application_id,
        clinic_id,
    )


# --- signing keys -----------------------------------------------------------------------------


async def insert_signing_key(
    conn: Connection,
    kid: str,
    algorithm: str,
    private_pem: bytes,
    public_jwk: dict[str, Any],
    activates_in: float,
) -> Record:
    return await fetch_one(
        conn,
        """
        INSERT INTO signing_keys (kid, algorithm, private_key_pem, public_jwk, activates_at)
        VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
        RETURNING kid, algorithm, created_at, activates_at, retires_at
        """,
        kid,
        algorithm,
        private_pem,
        public_jwk,
        activates_in,
    )


async def retire_keys_except(conn: Connection, kid: str, retire_after_activation: float) -> None:
    """Older keys stop being published once the last token they signed has expired."""
    await conn.execute(
        """
        UPDATE signing_keys
        SET retires_at = (SELECT activates_at FROM signing_keys WHERE kid = $1)
                         + make_interval(secs => $2)
        WHERE kid <> $1 AND retires_at IS NULL
        """,
        kid,
        retire_after_activation,
    )


async def lock_signing_keys(conn: Connection) -> None:
    await conn.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")


async def live_signing_keys(conn: Connection) -> list[Record]:
    """Every key still published, newest first."""
    return await conn.fetch(
        """
        SELECT kid, algorithm, private_key_pem, public_jwk, created_at, activates_at, retires_at,
               activates_at <= now() AS active
        FROM signing_keys
        WHERE retires_at IS NULL OR retires_at > now()
        ORDER BY activates_at DESC
        """
    )


# --- staff users ------------------------------------------------------------------------------


async def insert_staff_user(
    conn: Connection, user_id: uuid.UUID, clinic_id: uuid.UUID, **values: Any
) -> Record:
    return await fetch_one(
        conn,
        """
        INSERT INTO staff_users (id, clinic_id, username, display_name, role, password_hash)
        VALUES ($1, $2, $3, $4, $5, $6)
        RETURNING id, clinic_id, username::text, display_name, role, active, created_at
        """,
        user_id,
        clinic_id,
        values["username"],
        values["display_name"],
        values["role"],
        values["password_hash"],
    )


async def staff_user_by_username(conn: Connection, username: str) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, clinic_id, username::text, role, active, password_hash "
        "FROM staff_users WHERE username = $1",
        username,
    )


# --- revoked tokens ---------------------------------------------------------------------------


async def insert_revoked_token(
    conn: Connection, jti: str, client_id: str, expires_at: datetime
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO revoked_tokens (jti, client_id, expires_at) VALUES ($1, $2, $3) "
        "ON CONFLICT (jti) DO NOTHING RETURNING true",
        jti,
        client_id,
        expires_at,
    )
    return bool(inserted)


async def token_is_revoked(conn: Connection, jti: str) -> bool:
    return bool(await conn.fetchval("SELECT true FROM revoked_tokens WHERE jti = $1", jti))


async def revocations_in_force(conn: Connection, window_seconds: float) -> dict[str, list[Record]]:
    """Revocations that can still refuse a live token: revoked tokens not yet expired, and
    grants revoked or applications suspended within the last ``window_seconds``."""
    tokens = await conn.fetch(
        "SELECT jti, client_id, expires_at FROM revoked_tokens WHERE expires_at > now()"
    )
    grants = await conn.fetch(
        f"""
        SELECT {", ".join("g." + c.strip() for c in _GRANT_COLUMNS.split(","))}, a.client_id
        FROM grants g JOIN applications a ON a.id = g.application_id
        WHERE g.revoked_at > now() - make_interval(secs => $1)
        """,
        window_seconds,
    )
    applications = await conn.fetch(
        f"""
        SELECT {_APP_COLUMNS} FROM applications
        WHERE status = 'suspended' AND updated_at > now() - make_interval(secs => $1)
        """,
        window_seconds,
    )
    return {"tokens": tokens, "grants": grants, "applications": applications}


#: What the access snapshot holds, in the order it is paged through.
ACCESS_KINDS = ("clinics", "applications", "grants")
_ACCESS_PAGES = {
    "clinics": f"SELECT {_CLINIC_COLUMNS} FROM clinics",
    "applications": f"SELECT {_APP_COLUMNS} FROM applications",
    "grants": f"""
        SELECT {", ".join("g." + c.strip() for c in _GRANT_COLUMNS.split(","))}, a.client_id
        FROM grants g JOIN applications a ON a.id = g.application_id
    """,
}


async def access_page(
    conn: Connection, kind: str, *, after: uuid.UUID | None, limit: int | None
) -> list[Record]:
    """Clinics, applications or grants (``ACCESS_KINDS``) in id order, after ``after``;
    all of them when ``limit`` is None."""
    alias = "g." if kind == "grants" else ""
    return await conn.fetch(
        f"""
        {_ACCESS_PAGES[kind]}
        WHERE $1::uuid IS NULL OR {alias}id > $1 ORDER BY {alias}id LIMIT $2
        """,
        after,
        limit,
    )


async def purge_expired_revocations(conn: Connection) -> int:
    result: str = await conn.execute("DELETE FROM revoked_tokens WHERE expires_at < now()")
    return int(result.split()[-1])


# --- sandbox ----------------------------------------------------------------------------------


async def upsert_sandbox(
    conn: Connection,
    *,
    group_id: uuid.UUID,
    clinic_id: uuid.UUID,
    partner_id: uuid.UUID,
    application_id: uuid.UUID,
    client_id: str,
    secret_hash: bytes,
    grant_id: uuid.UUID,
    scopes: list[str],
    staff_user_id: uuid.UUID,
    staff_username: str,
    password_hash: str,
) -> None:
    """Create the sandbox tenant, or bring it back to its seeded state."""
    await conn.execute(
        "INSERT INTO groups (id, name) VALUES ($1, 'Sandbox Veterinary Group') "
        "ON CONFLICT (id) DO NOTHING",
        group_id,
    )
    await conn.execute(
        "INSERT INTO clinics (id, group_id, name, time_zone, country, sandbox) "
        "VALUES ($1, $2, 'Sandbox Clinic London', 'Europe/London', 'GB', true) "
        "ON CONFLICT (id) DO NOTHING",
        clinic_id,
        group_id,
    )
    await conn.execute(
        "INSERT INTO partners (id, name, contact_email) "
        "VALUES ($1, 'Sandbox Partner', 'sandbox-partner@example.com') "
        "ON CONFLICT (id) DO NOTHING",
        partner_id,
    )
    await conn.execute(
        """
        INSERT INTO applications (id, partner_id, name, client_id, secret_hash, environment,
                                  tier, status, contact_email)
        VALUES ($1, $2, 'Sandbox Application', $3, $4, 'sandbox', 1, 'approved',
                'sandbox-partner@example.com')
        ON CONFLICT (id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash, status = 'approved'
        """,
        application_id,
        partner_id,
        client_id,
        secret_hash,
    )
    await conn.execute(
        "INSERT INTO grants (id, application_id, clinic_id, scopes) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (id) DO UPDATE SET revoked_at = NULL, scopes = EXCLUDED.scopes",
        grant_id,
        application_id,
        clinic_id,
        scopes,
    )
    await conn.execute(
        """
        INSERT INTO staff_users (id, clinic_id, username, display_name, role, password_hash)
        VALUES ($1, $2, $3, 'Sandbox Vet', 'vet', $4)
        ON CONFLICT (id) DO UPDATE SET password_hash = EXCLUDED.password_hash, active = true
        """,
        staff_user_id,
        clinic_id,
        staff_username,
        password_hash,
    )
