"""Every SQL statement of the callbacks service. Functions take a connection; none commits."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db import Connection, Record, fetch_one

# --- who may see what (projection of the auth directory) ----------------------------------------


async def upsert_clinic(
    conn: Connection, clinic_id: uuid.UUID, group_id: uuid.UUID, sandbox: bool, changed_at: datetime
) -> None:
    await conn.execute(
        """
        INSERT INTO clinics (clinic_id, group_id, sandbox, changed_at) VALUES ($1, $2, $3, $4)
        ON CONFLICT (clinic_id) DO UPDATE
        SET group_id = EXCLUDED.group_id, sandbox = EXCLUDED.sandbox,
            changed_at = EXCLUDED.changed_at
        WHERE clinics.changed_at <= EXCLUDED.changed_at
        """,
        clinic_id,
        group_id,
        sandbox,
        changed_at,
    )


async def upsert_application(
    conn: Connection,
    application_id: uuid.UUID,
    *,
    client_id: str,
    environment: str,
    status: str,
    contact_email: str,
    changed_at: datetime,
) -> None:
    await conn.execute(
        """
        INSERT INTO applications
            (application_id, client_id, environment, status, contact_email, changed_at)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (application_id) DO UPDATE
        SET client_id = EXCLUDED.client_id, environment = EXCLUDED.environment,
            status = EXCLUDED.status, contact_email = EXCLUDED.contact_email,
            changed_at = EXCLUDED.changed_at
        WHERE applications.changed_at <= EXCLUDED.changed_at
        """,
        application_id,
        client_id,
        environment,
        status,
        contact_email,
        changed_at,
    )


async def upsert_grant(
    conn: Connection,
    grant_id: uuid.UUID,
    *,
    application_id: uuid.UUID,
    clinic_id: uuid.UUID | None,
    group_id: uuid.UUID | None,
    scopes: Sequence[str],
    revoked: bool,
) -> None:
    await conn.execute(
        """
        INSERT INTO grants (grant_id, application_id, clinic_id, group_id, scopes, revoked)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (grant_id) DO UPDATE SET revoked = grants.revoked OR EXCLUDED.revoked
        """,
        grant_id,
        application_id,
        clinic_id,
        group_id,
        list(scopes),
        revoked,
    )


async def application_environment(conn: Connection, application_id: uuid.UUID) -> str | None:
    value: str | None = await conn.fetchval(
        "SELECT environment FROM applications WHERE application_id = $1", application_id
    )
    return value


async def ungranted_clinics(
    conn: Connection, application_id: uuid.UUID, clinic_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Those of ``clinic_ids`` whose events the application may not see at all."""
    rows = await conn.fetch(
        """
        SELECT c FROM unnest($2::uuid[]) AS c
        WHERE NOT may_see($1, c, 'clinic.updated')
        """,
        application_id,
        list(clinic_ids),
    )
    return [r["c"] for r in rows]


# --- intake -----------------------------------------------------------------------------------


async def keep_event(
    conn: Connection,
    *,
    event_id: uuid.UUID,
    event_type: str,
    clinic_id: uuid.UUID | None,
    application_id: uuid.UUID | None,
    aggregate: str | None,
    sequence: int,
    occurred_at: datetime,
    body: str,
    gap_seconds: float,
) -> int:
    """Keep an event for delivery and the feed, move its resource's gap-free mark on, and make
    one delivery per enabled endpoint that subscribed to it and may see it; return how many
    (0 for an event kept already). One round trip: see ``keep_event`` in the migrations."""
    made: int = await conn.fetchval(
        "SELECT keep_event($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        event_id,
        event_type,
        clinic_id,
        application_id,
        aggregate,
        sequence,
        occurred_at,
        body,
        gap_seconds,
    )
    return made


# --- endpoints --------------------------------------------------------------------------------

_ENDPOINT = """
    id, application_id, url, description, event_types, clinic_ids, rate_limit, ordered, enabled,
    disabled_reason, disabled_at, failing_since, last_success_at, last_ping_at, last_ping_status,
    last_ping_error, ping_failures, alerted, next_ping_at, version, created_at, updated_at
"""


async def count_endpoints(conn: Connection, application_id: uuid.UUID) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM endpoints WHERE application_id = $1", application_id
    )
    return count


async def insert_endpoint(conn: Connection, endpoint_id: uuid.UUID, **values: Any) -> Record:
    return await fetch_one(
        conn,
        f"""
        INSERT INTO endpoints (id, application_id, url, description, event_types, clinic_ids,
                               rate_limit, ordered, idempotency_key, request_hash)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        values["application_id"],
        values["url"],
        values["description"],
        values["event_types"],
        values["clinic_ids"],
        values["rate_limit"],
        values["ordered"],
        values["idempotency_key"],
        values["request_hash"],
    )


async def endpoint_by_idempotency_key(
    conn: Connection, application_id: uuid.UUID, key: str
) -> Record | None:
    return await conn.fetchrow(
        "SELECT id, request_hash FROM endpoints WHERE application_id = $1 AND idempotency_key = $2",
        application_id,
        key,
    )


async def get_endpoint(
    conn: Connection,
    endpoint_id: uuid.UUID,
    application_id: uuid.UUID,
    *,
    for_update: bool = False,
) -> Record | None:
    lock = " FOR UPDATE" if for_update else ""
    return await conn.fetchrow(
        f"SELECT {_ENDPOINT} FROM endpoints WHERE id = $1 AND application_id = $2{lock}",
        endpoint_id,
        application_id,
    )


async def list_endpoints(
    conn: Connection,
    application_id: uuid.UUID,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    updated_since: datetime | None,
    limit: int,
) -> list[Record]:
    return await conn.fetch(
        f"""
        SELECT {_ENDPOINT} FROM endpoints
        WHERE application_id = $1
          AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
          AND ($4::timestamptz IS NULL OR updated_at >= $4)
        ORDER BY created_at, id LIMIT $5
        """,
        application_id,
        after[0] if after else None,
        after[1] if after else None,
        updated_since,
        limit,
    )


_ENDPOINT_FIELDS = frozenset(
    {"url", "description", "event_types", "clinic_ids", "rate_limit", "ordered", "enabled"}
)


async def update_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, changes: dict[str, Any]
) -> Record:
    """Apply ``changes``; re-enabling clears the reason and starts the failure clock afresh."""
    unknown = set(changes) - _ENDPOINT_FIELDS
    if unknown:
        raise ValueError(f"not endpoint fields: {sorted(unknown)}")
    names = sorted(changes)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    extra = ""
    if changes.get("enabled") is True:
        extra = (
            ", disabled_reason = NULL, disabled_at = NULL, failing_since = NULL, "
            "ping_failures = 0, alerted = false, next_ping_at = now()"
        )
    elif changes.get("enabled") is False:
        extra = ", disabled_reason = 'disabled by the application', disabled_at = now()"
    sep = ", " if assignments else ""
    return await fetch_one(
        conn,
        f"""
        UPDATE endpoints SET {assignments}{sep}version = version + 1, updated_at = now(){extra}
        WHERE id = $1 RETURNING {_ENDPOINT}
        """,
        endpoint_id,
        *(changes[name] for name in names),
    )


async def delete_endpoint(
    conn: Connection, endpoint_id: uuid.UUID, application_id: uuid.UUID
) -> bool:
    """Delete the endpoint and its deliveries (their attempts go with them) in one statement."""
    deleted = await conn.fetchval(
        """
        WITH gone AS (
            DELETE FROM endpoints WHERE id = $1 AND application_id = $2 RETURNING id
        ), deliveries_gone AS (
            DELETE FROM deliveries WHERE endpoint_id IN (SELECT id FROM gone)
        )
        SELECT EXISTS (SELECT 1 FROM gone)
        """,
        endpoint_id,
        application_id,
    )
    return bool(deleted)


async def insert_secret(conn: Connection, endpoint_id: uuid.UUID, ciphertext: bytes) -> None:
    await conn.execute(
        "INSERT INTO endpoint_secrets (id, endpoint_id, ciphertext) VALUES ($1, $2, $3)",
        uuid.uuid4(),
        endpoint_id,
        ciphertext,
    )


async def retire_secrets(
    conn: Connection, endpoint_id: uuid.UUID, grace_seconds: float
) -> datetime:
    """Secrets in force keep signing for the grace period; older retired ones go now.
    Returns when the ones retired now stop signing."""
    await conn.execute(
        "DELETE FROM endpoint_secrets WHERE endpoint_id = $1 AND expires_at <= now()",
        endpoint_id,
    )
    until: datetime = await conn.fetchval(
        """
        WITH retired AS (
            UPDATE endpoint_secrets SET expires_at = now() + make_interval(secs => $2)
            WHERE endpoint_id = $1 AND expires_at IS NULL
        )
        SELECT now() + make_interval(secs => $2)
        """,
        endpoint_id,
        grace_seconds,
    )
    return until


async def lock_application_creates(conn: Connection, application_id: uuid.UUID) -> None:
    """One endpoint create at a time per application, for this transaction."""
    await conn.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
        f"callbacks.create:{application_id}",
    )


async def live_secrets(conn: Connection, endpoint_id: uuid.UUID) -> list[bytes]:
    rows = await conn.fetch(
        """
        SELECT ciphertext FROM endpoint_secrets
        WHERE endpoint_id = $1 AND (expires_at IS NULL OR expires_at > now())
        ORDER BY created_at DESC
        """,
        endpoint_id,
    )
    return [r["ciphertext"] for r in rows]


# --- deliveries: claiming and recording ---------------------------------------------------------

_LIVE_SECRETS = """
    ARRAY(SELECT s.ciphertext FROM endpoint_secrets s
          WHERE s.endpoint_id = {endpoint} AND (s.expires_at IS NULL OR s.expires_at > now())
          ORDER BY s.created_at DESC)
"""

# An endpoint's due deliveries of one kind (first attempts, or retries) that it may be sent now,
# oldest due first, read through that kind's index so the scan stops at the first not yet due.
# Nothing is locked here: only what the claim goes on to lease is (see ``locked`` below).
_DUE = """
    SELECT d.id, d.next_attempt_at FROM deliveries d
    WHERE d.endpoint_id = room.id AND d.status = 'pending' AND {kind}
      AND d.next_attempt_at <= now()
      AND (d.lease_until IS NULL OR d.lease_until < now())
      AND (NOT room.ordered OR d.aggregate IS NULL OR (
            NOT EXISTS (SELECT 1 FROM deliveries p
                        WHERE p.endpoint_id = d.endpoint_id AND p.aggregate = d.aggregate
                          AND p.status = 'pending' AND p.sequence < d.sequence)
            AND (d.created_at < now() - make_interval(secs => $4)
                 OR d.sequence <= (SELECT a.contiguous FROM aggregates a
                                   WHERE a.aggregate = d.aggregate))))
    ORDER BY d.next_attempt_at
    LIMIT greatest(least({room}, $1), 0)
"""

_FIRST = "d.attempts = 0"
_RETRY = "d.attempts > 0"
_ROOM_AFTER_FIRSTS = "room.free - (SELECT count(*) FROM firsts f WHERE f.endpoint_id = room.id)"

# The endpoints with pending deliveries of one kind, found by skipping through that kind's index
# one endpoint at a time: a claim costs the endpoints that have work, not every endpoint.
_PENDING = """
    (SELECT d.endpoint_id FROM deliveries d
     WHERE d.status = 'pending' AND {kind}
     ORDER BY d.endpoint_id LIMIT 1)
    UNION ALL
    SELECT (SELECT d.endpoint_id FROM deliveries d
            WHERE d.status = 'pending' AND {kind} AND d.endpoint_id > w.endpoint_id
            ORDER BY d.endpoint_id LIMIT 1)
    FROM {name} w WHERE w.endpoint_id IS NOT NULL
"""

_CLAIM = f"""
WITH RECURSIVE first_work (endpoint_id) AS ({_PENDING.format(kind=_FIRST, name="first_work")}
), retry_work (endpoint_id) AS ({_PENDING.format(kind=_RETRY, name="retry_work")}
), room AS MATERIALIZED (
    -- Enabled endpoints with something due, and how many more attempts each may have running.
    SELECT e.id, e.ordered,
           $2 - (SELECT count(*) FROM deliveries b
                 WHERE b.endpoint_id = e.id AND b.status = 'pending'
                   AND b.lease_token IS NOT NULL AND b.lease_until >= now()
                   -- The caller's attempts answered and not yet recorded hold no request.
                   AND (b.id, b.lease_token) NOT IN (
                       SELECT f.id, f.token FROM unnest($6::uuid[], $7::uuid[]) f (id, token)
                   )) AS free
    FROM (SELECT endpoint_id FROM first_work UNION SELECT endpoint_id FROM retry_work) work
    JOIN endpoints e ON e.id = work.endpoint_id
    WHERE e.enabled
      -- OFFSET 0: a probe of the endpoint's own index each, never a pass over every due row.
      AND (EXISTS (SELECT 1 FROM deliveries d
                   WHERE d.endpoint_id = e.id AND d.status = 'pending' AND {_FIRST}
                     AND d.next_attempt_at <= now() OFFSET 0)
           OR EXISTS (SELECT 1 FROM deliveries d
                      WHERE d.endpoint_id = e.id AND d.status = 'pending' AND {_RETRY}
                        AND d.next_attempt_at <= now() OFFSET 0))
), firsts AS MATERIALIZED (
    SELECT d.id, room.id AS endpoint_id, d.next_attempt_at, 0 AS rank
    FROM room CROSS JOIN LATERAL ({_DUE.format(kind=_FIRST, room="room.free")}) d
), retries AS (
    SELECT d.id, room.id AS endpoint_id, d.next_attempt_at, 1 AS rank
    FROM room CROSS JOIN LATERAL ({_DUE.format(kind=_RETRY, room=_ROOM_AFTER_FIRSTS)}) d
), picked AS (
    -- Endpoints take turns, each with its first attempts before its retries: a backlog of
    -- retries never holds up new events, and no endpoint's backlog holds up another's work.
    SELECT id FROM (SELECT * FROM firsts UNION ALL SELECT * FROM retries) due
    ORDER BY row_number() OVER (PARTITION BY endpoint_id ORDER BY rank, next_attempt_at),
             next_attempt_at
    LIMIT $1
), locked AS (
    -- A row another claim holds is skipped; one it leased and committed since this statement
    -- began is checked again on its newest version, and fails the lease test.
    SELECT d.id FROM deliveries d
    WHERE d.id = ANY (ARRAY(SELECT id FROM picked))
      AND d.status = 'pending' AND d.next_attempt_at <= now()
      AND (d.lease_until IS NULL OR d.lease_until < now())
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries d
SET lease_until = now() + make_interval(secs => $3), lease_token = $5, updated_at = now()
-- By key, one row at a time: a join here may be planned as a pass over the whole table.
WHERE d.id = ANY (ARRAY(SELECT id FROM locked))
RETURNING d.id, d.endpoint_id, d.event_id, d.attempts, d.replay,
          (SELECT e.url FROM endpoints e WHERE e.id = d.endpoint_id) AS url,
          (SELECT e.rate_limit FROM endpoints e WHERE e.id = d.endpoint_id) AS rate_limit,
          (SELECT ev.body FROM events ev WHERE ev.seq = d.event_seq) AS body,
          {_LIVE_SECRETS.format(endpoint="d.endpoint_id")} AS secrets
"""


async def claim_deliveries(
    conn: Connection,
    *,
    limit: int,
    endpoint_cap: int,
    lease_seconds: float,
    gap_seconds: float,
    token: uuid.UUID,
    finished: Mapping[uuid.UUID, uuid.UUID] | None = None,
) -> list[Record]:
    """Lease due deliveries: at most ``endpoint_cap`` in flight per endpoint, ordered
    endpoints one at a time per resource; rows another worker holds are skipped. ``finished``
    maps the caller's attempts that were answered but are not recorded yet (delivery id to
    lease token) to leave out of the count: they no longer hold a request open. A lease that
    has meanwhile been recorded, run out or gone to another worker matches nothing there."""
    finished = finished or {}
    return await conn.fetch(
        _CLAIM,
        limit,
        endpoint_cap,
        lease_seconds,
        gap_seconds,
        token,
        list(finished),
        list(finished.values()),
    )


@dataclass(frozen=True)
class AttemptRecord:
    delivery_id: uuid.UUID
    endpoint_id: uuid.UUID
    token: uuid.UUID
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    excerpt: str | None
    error: str | None
    trigger: str
    # What the delivery becomes: 'pending' (with the delay), 'succeeded' or 'failed'.
    outcome: str
    delay_seconds: float


_RECORD = """
    WITH r AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::int[],
                             $5::int[], $6::text[], $7::text[], $8::text[], $9::text[],
                             $10::float8[])
            AS r(id, token, attempted_at, duration_ms, status_code, excerpt, error, trigger,
                 outcome, delay)
    ), moved AS (
        UPDATE deliveries d
        SET attempts = d.attempts + 1, status = r.outcome,
            next_attempt_at = r.attempted_at + make_interval(secs => r.delay),
            lease_until = NULL, lease_token = NULL, replay = false,
            last_status = r.status_code, last_error = r.error, updated_at = now(),
            completed_at = CASE WHEN r.outcome = 'pending' THEN NULL ELSE now() END
        FROM r
        WHERE d.id = r.id AND d.lease_token = r.token
        RETURNING d.id, d.endpoint_id, r.outcome = 'succeeded' AS succeeded
    ), written AS (
        INSERT INTO attempts (delivery_id, attempted_at, duration_ms, status_code,
                              response_excerpt, error, trigger)
        SELECT r.id, r.attempted_at, r.duration_ms, r.status_code, r.excerpt, r.error,
               r.trigger
        FROM r JOIN moved ON moved.id = r.id
    ){noted}
    SELECT id FROM moved
"""

# A success resets an endpoint's failure clock; a failure starts it if it is not running (an
# endpoint with both in one batch counts as answering).
_NOTED = """, answering AS (
        UPDATE endpoints SET last_success_at = now(), failing_since = NULL
        WHERE id IN (SELECT endpoint_id FROM moved WHERE succeeded)
    ), failing AS (
        UPDATE endpoints SET failing_since = now()
        WHERE id IN (SELECT endpoint_id FROM moved WHERE NOT succeeded)
          AND id NOT IN (SELECT endpoint_id FROM moved WHERE succeeded)
          AND failing_since IS NULL
    )"""


async def record_attempts(
    conn: Connection, records: Sequence[AttemptRecord], *, note_endpoints: bool = True
) -> list[uuid.UUID]:
    """Write a batch of attempts and move their deliveries on, in one statement; a lease lost
    to another worker (the attempt overran it) records nothing. With ``note_endpoints`` the
    results also move the endpoints' failure clocks. Returns the deliveries recorded."""
    rows = await conn.fetch(
        _RECORD.format(noted=_NOTED if note_endpoints else ""),
        [r.delivery_id for r in records],
        [r.token for r in records],
        [r.attempted_at for r in records],
        [r.duration_ms for r in records],
        [r.status_code for r in records],
        [r.excerpt for r in records],
        [r.error for r in records],
        [r.trigger for r in records],
        [r.outcome for r in records],
        [r.delay_seconds for r in records],
    )
    return [r["id"] for r in rows]


async def defer_deliveries(
    conn: Connection, ids: Sequence[uuid.UUID], token: uuid.UUID, seconds: float
) -> None:
    """Hand leased deliveries back untried (an endpoint's own rate limit), due in ``seconds``."""
    await conn.execute(
        """
        UPDATE deliveries
        SET lease_until = NULL, lease_token = NULL,
            next_attempt_at = now() + make_interval(secs => $3), updated_at = now()
        WHERE id = ANY ($1::uuid[]) AND lease_token = $2
        """,
        list(ids),
        token,
        seconds,
    )


async def disable_endpoints(
    conn: Connection,
    ids: Sequence[uuid.UUID],
    *,
    reason: str,
    failing_longer_than: float | None = None,
) -> list[Record]:
    """Disable those of ``ids`` still enabled (and failing long enough, if asked);
    returns them with their application's contact address."""
    return await conn.fetch(
        """
        WITH off AS (
            UPDATE endpoints
            SET enabled = false, disabled_reason = $2, disabled_at = now(),
                version = version + 1, updated_at = now()
            WHERE id = ANY ($1::uuid[]) AND enabled
              AND ($3::float8 IS NULL
                   OR failing_since < now() - make_interval(secs => $3))
            RETURNING id, application_id, url
        )
        SELECT off.id, off.url, a.contact_email
        FROM off LEFT JOIN applications a ON a.application_id = off.application_id
        """,
        list(ids),
        reason,
        failing_longer_than,
    )


# --- deliveries: reading and replaying ----------------------------------------------------------

_DELIVERY = """
    d.id, d.endpoint_id, d.event_id, d.event_type, d.aggregate, d.sequence, d.status,
    d.attempts, d.next_attempt_at, d.last_status, d.last_error, d.created_at, d.updated_at,
    d.completed_at
"""


async def list_deliveries(
    conn: Connection,
    endpoint_id: uuid.UUID,
    *,
    status: str | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Record]:
    return await conn.fetch(
        f"""
        SELECT {_DELIVERY} FROM deliveries d
        WHERE d.endpoint_id = $1 AND ($2::text IS NULL OR d.status = $2)
          AND ($3::timestamptz IS NULL OR (d.created_at, d.id) > ($3, $4::uuid))
        ORDER BY d.created_at, d.id LIMIT $5
        """,
        endpoint_id,
        status,
        after[0] if after else None,
        after[1] if after else None,
        limit,
    )


async def get_delivery(
    conn: Connection, delivery_id: uuid.UUID, application_id: uuid.UUID
) -> Record | None:
    return await conn.fetchrow(
        f"""
        SELECT {_DELIVERY} FROM deliveries d JOIN endpoints e ON e.id = d.endpoint_id
        WHERE d.id = $1 AND e.application_id = $2
        """,
        delivery_id,
        application_id,
    )


async def attempts_of(conn: Connection, delivery_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        """
        SELECT id, attempted_at, duration_ms, status_code, response_excerpt, error, trigger
        FROM attempts WHERE delivery_id = $1 ORDER BY id
        """,
        delivery_id,
    )


async def replay_delivery(conn: Connection, delivery_id: uuid.UUID) -> Record | None:
    """Make a finished delivery due again now; a pending one is left as it is."""
    return await conn.fetchrow(
        f"""
        UPDATE deliveries d
        SET status = 'pending', replay = true, next_attempt_at = now(), completed_at = NULL,
            updated_at = now()
        WHERE d.id = $1 AND d.status <> 'pending'
        RETURNING {_DELIVERY}
        """,
        delivery_id,
    )


async def recover_failed(
    conn: Connection, endpoint_id: uuid.UUID, since: datetime
) -> list[uuid.UUID]:
    rows = await conn.fetch(
        """
        UPDATE deliveries
        SET status = 'pending', replay = true, next_attempt_at = now(), completed_at = NULL,
            updated_at = now()
        WHERE endpoint_id = $1 AND status = 'failed' AND created_at >= $2
        RETURNING id
        """,
        endpoint_id,
        since,
    )
    return [row["id"] for row in rows]


async def replay_outcomes(
    conn: Connection, endpoint_id: uuid.UUID, delivery_ids: Sequence[uuid.UUID]
) -> Record:
    """How replayed deliveries stand (a replay is one attempt: it succeeds or fails for good),
    and whether their endpoint is still enabled (a disabled one is never attempted)."""
    row = await conn.fetchrow(
        """
        SELECT count(*) FILTER (WHERE replay) AS waiting,
               count(*) FILTER (WHERE NOT replay AND status = 'succeeded') AS succeeded,
               count(*) FILTER (WHERE NOT replay AND status <> 'succeeded') AS failed,
               coalesce((SELECT enabled FROM endpoints WHERE id = $2), false) AS enabled
        FROM deliveries WHERE id = ANY($1::uuid[])
        """,
        delivery_ids,
        endpoint_id,
    )
    assert row is not None  # an aggregate without GROUP BY always answers one row
    return row


async def endpoint_enabled(conn: Connection, endpoint_id: uuid.UUID) -> bool | None:
    """Whether the endpoint is enabled; None if there is no such endpoint."""
    enabled: bool | None = await conn.fetchval(
        "SELECT enabled FROM endpoints WHERE id = $1", endpoint_id
    )
    return enabled


async def insert_direct_event(
    conn: Connection, *, event_id: uuid.UUID, event_type: str, application_id: uuid.UUID, body: str
) -> int:
    """An event addressed to one application (a test event), kept like any other."""
    seq: int = await conn.fetchval(
        """
        INSERT INTO events (event_id, event_type, application_id, sequence, occurred_at, body)
        VALUES ($1, $2, $3, 1, now(), $4) RETURNING seq
        """,
        event_id,
        event_type,
        application_id,
        body,
    )
    return seq


async def insert_leased_delivery(
    conn: Connection,
    *,
    endpoint_id: uuid.UUID,
    event_seq: int,
    event_id: uuid.UUID,
    event_type: str,
    token: uuid.UUID,
    lease_seconds: float,
) -> uuid.UUID:
    """A delivery the caller attempts itself at once (held by its lease meanwhile)."""
    delivery_id = uuid.uuid4()
    await conn.execute(
        """
        INSERT INTO deliveries (id, endpoint_id, event_seq, event_id, event_type, sequence,
                                lease_until, lease_token)
        VALUES ($1, $2, $3, $4, $5, 1, now() + make_interval(secs => $7), $6)
        """,
        delivery_id,
        endpoint_id,
        event_seq,
        event_id,
        event_type,
        token,
        lease_seconds,
    )
    return delivery_id


# --- endpoint monitoring ----------------------------------------------------------------------


async def claim_pings(conn: Connection, *, limit: int, interval_seconds: float) -> list[Record]:
    """Endpoints due a ping; the next one is scheduled at once, so a crash skips one round."""
    return await conn.fetch(
        f"""
        UPDATE endpoints e
        SET next_ping_at = now() + make_interval(secs => $2)
        WHERE e.id IN (SELECT id FROM endpoints
                       WHERE enabled AND next_ping_at <= now()
                       ORDER BY next_ping_at LIMIT $1
                       FOR UPDATE SKIP LOCKED)
        RETURNING e.id, e.application_id, e.url, {_LIVE_SECRETS.format(endpoint="e.id")} AS secrets
        """,
        limit,
        interval_seconds,
    )


async def record_ping(
    conn: Connection,
    endpoint_id: uuid.UUID,
    *,
    alive: bool,
    status_code: int | None,
    error: str | None,
    threshold: int,
) -> Record | None:
    """Count the ping; the answer says whether this one crossed into or out of alert.

    ``alert`` is true exactly once per outage (the ping that makes ``threshold`` failures in a
    row) and ``recovered`` exactly once after it (the first ping that answers again).
    """
    return await conn.fetchrow(
        """
        WITH before AS (
            SELECT id, alerted FROM endpoints WHERE id = $1 FOR UPDATE
        ), after AS (
            UPDATE endpoints e
            SET last_ping_at = now(), last_ping_status = $3, last_ping_error = $4,
                ping_failures = CASE WHEN $2 THEN 0 ELSE e.ping_failures + 1 END,
                alerted = CASE WHEN $2 THEN false
                               ELSE e.alerted OR e.ping_failures + 1 >= $5 END
            FROM before WHERE e.id = before.id
            RETURNING e.id, e.application_id, e.url, e.ping_failures, e.alerted
        )
        SELECT after.id, after.url, after.ping_failures, a.contact_email,
               (after.alerted AND NOT before.alerted) AS alert,
               (before.alerted AND NOT after.alerted) AS recovered
        FROM after JOIN before ON before.id = after.id
        LEFT JOIN applications a ON a.application_id = after.application_id
        """,
        endpoint_id,
        alive,
        status_code,
        error,
        threshold,
    )


# --- mail -------------------------------------------------------------------------------------


async def insert_mail(
    conn: Connection,
    *,
    recipient: str,
    subject: str,
    body: str,
    kind: str,
    endpoint_id: uuid.UUID | None,
) -> None:
    await conn.execute(
        """
        INSERT INTO mails (recipient, subject, body, kind, endpoint_id)
        VALUES ($1, $2, $3, $4, $5)
        """,
        recipient,
        subject,
        body,
        kind,
        endpoint_id,
    )


async def claim_mails(conn: Connection, *, limit: int, lease_seconds: float) -> list[Record]:
    """Unsent mail, pushed back by the lease so that one copy is sent at a time."""
    return await conn.fetch(
        """
        UPDATE mails m SET next_attempt_at = now() + make_interval(secs => $2),
                           attempts = m.attempts + 1
        WHERE m.id IN (SELECT id FROM mails WHERE sent_at IS NULL AND next_attempt_at <= now()
                       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
        RETURNING m.id, m.recipient, m.subject, m.body, m.attempts
        """,
        limit,
        lease_seconds,
    )


async def mail_sent(conn: Connection, mail_id: int) -> None:
    await conn.execute("UPDATE mails SET sent_at = now() WHERE id = $1", mail_id)


async def mail_failed(conn: Connection, mail_id: int, error: str, retry_seconds: float) -> None:
    await conn.execute(
        """
        UPDATE mails SET last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
        WHERE id = $1
        """,
        mail_id,
        error,
        retry_seconds,
    )


# --- the PULL feed ----------------------------------------------------------------------------


async def feed(
    conn: Connection,
    application_id: uuid.UUID,
    *,
    after: tuple[int, int] | None,
    types: Sequence[str] | None,
    retention_days: float,
    limit: int,
) -> list[Record]:
    """The application's events in a final order: only transactions older than every one still
    running are read, so no event can later appear before the cursor."""
    return await conn.fetch(
        """
        SELECT ev.seq, ev.txid::text::bigint AS txid, ev.body
        FROM feed_entries f
        JOIN events ev ON ev.seq = f.seq
        WHERE f.application_id = $1
          AND ($2::bigint IS NULL OR (f.txid, f.seq) > ($2::text::xid8, $3::bigint))
          AND f.txid < pg_snapshot_xmin(pg_current_snapshot())
          AND ev.received_at > now() - make_interval(days => 0, secs => $5 * 86400)
          AND ($4::text[] IS NULL OR ev.event_type = ANY ($4))
          AND (ev.application_id = $1
               OR (ev.application_id IS NULL AND ev.clinic_id IS NOT NULL
                   AND may_see($1, ev.clinic_id, ev.event_type)))
        ORDER BY f.txid, f.seq
        LIMIT $6
        """,
        application_id,
        after[0] if after else None,
        after[1] if after else None,
        list(types) if types else None,
        retention_days,
        limit,
    )


# --- housekeeping -----------------------------------------------------------------------------


async def purge_events(conn: Connection, retention_days: float) -> int:
    """Events past the feed's reach, with their deliveries and attempts. A delivery still
    pending for an enabled endpoint keeps its event; one waiting for a disabled endpoint to be
    turned back on, or left behind by an endpoint deleted while the event was being fanned out,
    does not: past the horizon it could no more be replayed than found in the feed."""
    result: str = await conn.execute(
        """
        DELETE FROM events ev
        WHERE ev.received_at < now() - make_interval(secs => $1 * 86400)
          AND NOT EXISTS (SELECT 1 FROM deliveries d
                          JOIN endpoints e ON e.id = d.endpoint_id AND e.enabled
                          WHERE d.event_seq = ev.seq AND d.status = 'pending')
        """,
        retention_days,
    )
    return int(result.rsplit(" ", 1)[-1])


async def purge_mail(conn: Connection, retention_days: float) -> int:
    result: str = await conn.execute(
        "DELETE FROM mails WHERE sent_at < now() - make_interval(secs => $1 * 86400)",
        retention_days,
    )
    return int(result.rsplit(" ", 1)[-1])
