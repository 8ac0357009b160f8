"""The delivery store's SQL against real Postgres, on a schema of its own: who may see an event,
what a claim hands out and in what order, and what deleting and purging leave behind."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from services.callbacks import store
from shared import migrations
from shared.db import create_pool

CALLBACKS_DIR = Path(store.__file__).parent


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    schema = f"callbacks_store_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(conn, schema, migrations.migrations_for(CALLBACKS_DIR))
    finally:
        await conn.close()
    pool = await create_pool(database_url, schema=schema, min_size=1, max_size=4)
    yield pool
    await pool.close()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        await conn.close()


# --- who may see an event -----------------------------------------------------------------------


@dataclass(frozen=True)
class Directory:
    clinic: uuid.UUID  # a sandbox clinic in ``group``
    group: uuid.UUID
    apps: dict[str, uuid.UUID]


async def directory(conn: asyncpg.Connection) -> Directory:
    """One clinic and an application for each way a grant can or cannot reach it."""
    clinic, group, other_clinic = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO clinics VALUES ($1, $2, true, now()), ($3, $2, true, now())",
        clinic,
        group,
        other_clinic,
    )
    # name: (environment, status, grant on the clinic or the group, scopes, revoked)
    cases = {
        "direct": ("production", "approved", "clinic", ["bookings:read"], False),
        "group_sandbox": ("sandbox", "approved", "group", ["bookings:write"], False),
        "group_production": ("production", "approved", "group", ["bookings:read"], False),
        "suspended": ("sandbox", "suspended", "clinic", ["bookings:read"], False),
        "revoked": ("sandbox", "approved", "clinic", ["bookings:read"], True),
        "wrong_scope": ("sandbox", "approved", "clinic", ["clients:read"], False),
        "other_clinic": ("sandbox", "approved", "other", ["bookings:read"], False),
        "both": ("sandbox", "approved", "both", ["bookings:read"], False),
    }
    apps = {}
    for name, (environment, status, on, scopes, revoked) in cases.items():
        app = apps[name] = uuid.uuid4()
        await conn.execute(
            "INSERT INTO applications VALUES ($1, $2, $3, $4, 'ops@example.com', now())",
            app,
            name,
            environment,
            status,
        )
        targets = {
            "clinic": [(clinic, None)],
            "group": [(None, group)],
            "other": [(other_clinic, None)],
            "both": [(clinic, None), (None, group)],
        }[on]
        for target_clinic, target_group in targets:
            await store.upsert_grant(
                conn,
                uuid.uuid4(),
                application_id=app,
                clinic_id=target_clinic,
                group_id=target_group,
                scopes=scopes,
                revoked=revoked,
            )
    return Directory(clinic, group, apps)


async def test_the_audience_of_a_clinics_event_follows_the_grant_rule(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        d = await directory(conn)
        audience = {
            r["application_id"]
            for r in await conn.fetch("SELECT * FROM audience($1, 'booking.created')", d.clinic)
        }
        seeing = {
            name
            for name, app in d.apps.items()
            if await conn.fetchval("SELECT may_see($1, $2, 'booking.created')", app, d.clinic)
        }
        client_events = await conn.fetch("SELECT * FROM audience($1, 'client.created')", d.clinic)
        unknown_clinic = await conn.fetch(
            "SELECT * FROM audience($1, 'booking.created')", uuid.uuid4()
        )

    # A direct grant always; a group grant only for the clinic's environment (sandbox here).
    assert seeing == {"direct", "group_sandbox", "both"}
    assert audience == {d.apps[name] for name in seeing}  # each application once
    assert [r["application_id"] for r in client_events] == [d.apps["wrong_scope"]]
    assert unknown_clinic == []


async def test_an_event_reaches_the_audience_through_its_endpoint_filters(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        d = await directory(conn)

        async def endpoint(app: str, **values: object) -> uuid.UUID:
            return await _endpoint(conn, application_id=d.apps[app], **values)

        everything = await endpoint("direct")
        filtered_in = await endpoint("group_sandbox", clinic_ids=[d.clinic])
        filtered_out = await endpoint("both", clinic_ids=[uuid.uuid4()])
        other_type = await endpoint("both", event_types=["client.created"])
        disabled = await endpoint("direct", enabled=False)
        await endpoint("suspended")
        await endpoint("group_production")

        event = {
            "event_id": uuid.uuid4(),
            "event_type": "booking.created",
            "clinic_id": d.clinic,
            "application_id": None,
            "aggregate": "booking:1",
            "sequence": 1,
            "occurred_at": await conn.fetchval("SELECT now()"),
            "body": "{}",
            "gap_seconds": 10.0,
        }
        made = await store.keep_event(conn, **event)
        again = await store.keep_event(conn, **event)
        mark = await conn.fetchval(
            "SELECT contiguous FROM aggregates WHERE aggregate = 'booking:1'"
        )
        reached = {r["endpoint_id"] for r in await conn.fetch("SELECT endpoint_id FROM deliveries")}

    assert reached == {everything, filtered_in}
    assert made == 2
    assert again == 0  # kept and fanned out once, however often asked
    assert mark == 1
    assert not reached & {filtered_out, other_type, disabled}


# --- claiming -----------------------------------------------------------------------------------


async def _endpoint(
    conn: asyncpg.Connection, *, enabled: bool = True, **values: object
) -> uuid.UUID:
    endpoint_id = uuid.uuid4()
    defaults: dict[str, object] = {
        "application_id": uuid.uuid4(),
        "url": "https://partner.example.com/hook",
        "description": "",
        "event_types": None,
        "clinic_ids": None,
        "rate_limit": None,
        "ordered": False,
        "idempotency_key": None,
        "request_hash": None,
    }
    await store.insert_endpoint(conn, endpoint_id, **{**defaults, **values})
    if not enabled:
        await conn.execute("UPDATE endpoints SET enabled = false WHERE id = $1", endpoint_id)
    return endpoint_id


async def _deliveries(
    conn: asyncpg.Connection, endpoint_id: uuid.UUID, count: int, *, attempts: int, due_in: float
) -> list[uuid.UUID]:
    """``count`` pending deliveries of fresh events, after ``attempts`` tries, due in seconds."""
    ids = []
    for _ in range(count):
        seq = await conn.fetchval(
            """
            INSERT INTO events (event_id, event_type, sequence, occurred_at, body)
            VALUES (gen_random_uuid(), 'booking.created', 1, now(), '{}') RETURNING seq
            """
        )
        ids.append(
            await conn.fetchval(
                """
                INSERT INTO deliveries (id, endpoint_id, event_seq, event_id, event_type,
                                        sequence, attempts, next_attempt_at)
                SELECT gen_random_uuid(), $1, seq, event_id, event_type, 1, $2,
                       now() + make_interval(secs => $3)
                FROM events WHERE seq = $4
                RETURNING id
                """,
                endpoint_id,
                attempts,
                due_in,
                seq,
            )
        )
    return ids


async def _claim(
    conn: asyncpg.Connection,
    *,
    limit: int,
    cap: int,
    token: uuid.UUID | None = None,
    finished: dict[uuid.UUID, uuid.UUID] | None = None,
) -> list[asyncpg.Record]:
    return await store.claim_deliveries(
        conn,
        limit=limit,
        endpoint_cap=cap,
        lease_seconds=60,
        gap_seconds=10,
        token=token or uuid.uuid4(),
        finished=finished,
    )


async def test_a_claim_hands_out_first_attempts_before_due_retries(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        endpoint_id = await _endpoint(conn)
        later = await _deliveries(conn, endpoint_id, 50, attempts=3, due_in=3600)
        retries = await _deliveries(conn, endpoint_id, 2, attempts=1, due_in=-5)
        firsts = await _deliveries(conn, endpoint_id, 3, attempts=0, due_in=0)

        first_claim = {r["id"] for r in await _claim(conn, limit=4, cap=16)}
        second_claim = {r["id"] for r in await _claim(conn, limit=100, cap=16)}
        nothing_left = await _claim(conn, limit=100, cap=16)

    assert first_claim == set(firsts) | (first_claim & set(retries))
    assert len(first_claim & set(retries)) == 1
    assert second_claim == set(retries) - first_claim
    assert nothing_left == []
    assert not (first_claim | second_claim) & set(later)


async def test_endpoints_take_turns_so_a_backlog_holds_up_no_other_endpoints_retry(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        busy = [await _endpoint(conn) for _ in range(3)]
        for endpoint_id in busy:
            await _deliveries(conn, endpoint_id, 5, attempts=0, due_in=0)
        quiet = await _endpoint(conn)
        [retry] = await _deliveries(conn, quiet, 1, attempts=3, due_in=-1)

        claimed = await _claim(conn, limit=4, cap=16)

    assert retry in {r["id"] for r in claimed}
    assert sorted(str(r["endpoint_id"]) for r in claimed) == sorted(map(str, [*busy, quiet]))


async def test_a_claim_keeps_to_the_endpoints_cap_with_retries_counted(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        endpoint_id = await _endpoint(conn)
        await _deliveries(conn, endpoint_id, 2, attempts=2, due_in=-1)
        await _deliveries(conn, endpoint_id, 3, attempts=0, due_in=0)

        first = await _claim(conn, limit=100, cap=4)
        second = await _claim(conn, limit=100, cap=4)

    assert len(first) == 4
    assert sorted(r["attempts"] for r in first) == [0, 0, 0, 2]
    assert second == []  # four in flight: the fifth waits for one of them


async def test_a_claim_finds_every_enabled_endpoints_due_work_and_nothing_else(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        due: set[uuid.UUID] = set()
        for _ in range(10):
            await _deliveries(conn, await _endpoint(conn), 3, attempts=2, due_in=600)
        for _ in range(5):
            await _deliveries(conn, await _endpoint(conn, enabled=False), 2, attempts=0, due_in=0)
        for _ in range(3):
            due |= set(await _deliveries(conn, await _endpoint(conn), 2, attempts=0, due_in=0))
        for _ in range(2):
            endpoint_id = await _endpoint(conn)
            await _deliveries(conn, endpoint_id, 4, attempts=1, due_in=600)
            due |= set(await _deliveries(conn, endpoint_id, 1, attempts=1, due_in=-1))
        await _endpoint(conn)  # nothing at all

        claimed = {r["id"] for r in await _claim(conn, limit=1000, cap=16)}

    assert claimed == due


async def test_answered_attempts_not_yet_recorded_free_their_slots(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        endpoint_id, other = await _endpoint(conn), await _endpoint(conn)
        await _deliveries(conn, endpoint_id, 7, attempts=0, due_in=0)
        await _deliveries(conn, other, 5, attempts=0, due_in=0)

        token = uuid.uuid4()
        first = await _claim(conn, limit=100, cap=4, token=token)
        mine = [r["id"] for r in first if r["endpoint_id"] == endpoint_id]
        # Two of this endpoint's four have been answered; their records are on the way. A third
        # is named with a token it does not hold (its lease went elsewhere): it still counts.
        finished = {mine[0]: token, mine[1]: token, mine[2]: uuid.uuid4(), uuid.uuid4(): token}
        second = await _claim(conn, limit=100, cap=4, finished=finished)

    assert len(first) == 8
    assert [r["endpoint_id"] for r in second] == [endpoint_id, endpoint_id]


async def test_a_claimed_delivery_carries_what_sending_needs(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        endpoint_id = await _endpoint(conn, rate_limit=7)
        await store.insert_secret(conn, endpoint_id, b"sealed")
        [delivery_id] = await _deliveries(conn, endpoint_id, 1, attempts=0, due_in=0)

        [row] = await _claim(conn, limit=10, cap=16)

    assert row["id"] == delivery_id
    assert row["endpoint_id"] == endpoint_id
    assert (row["url"], row["rate_limit"], row["body"]) == (
        "https://partner.example.com/hook",
        7,
        "{}",
    )
    assert row["secrets"] == [b"sealed"]


# --- deleting and purging ----------------------------------------------------------------------


async def test_deleting_an_endpoint_deletes_its_deliveries_and_their_attempts(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        gone, kept = await _endpoint(conn), await _endpoint(conn)
        application_id = await conn.fetchval(
            "SELECT application_id FROM endpoints WHERE id = $1", gone
        )
        [gone_delivery] = await _deliveries(conn, gone, 1, attempts=0, due_in=0)
        [kept_delivery] = await _deliveries(conn, kept, 1, attempts=0, due_in=0)
        for delivery_id in (gone_delivery, kept_delivery):
            await conn.execute(
                """
                INSERT INTO attempts (delivery_id, attempted_at, duration_ms, status_code, trigger)
                VALUES ($1, now(), 3, 500, 'scheduled')
                """,
                delivery_id,
            )

        wrong_owner = await store.delete_endpoint(conn, gone, uuid.uuid4())
        deleted = await store.delete_endpoint(conn, gone, application_id)
        deliveries = {r["id"] for r in await conn.fetch("SELECT id FROM deliveries")}
        attempts = {r["delivery_id"] for r in await conn.fetch("SELECT delivery_id FROM attempts")}

    assert (wrong_owner, deleted) == (False, True)
    assert deliveries == attempts == {kept_delivery}


async def test_purge_keeps_pending_work_but_not_what_no_endpoint_will_take(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        live = await _endpoint(conn)
        [waiting] = await _deliveries(conn, live, 1, attempts=1, due_in=60)
        [done] = await _deliveries(conn, live, 1, attempts=0, due_in=0)
        await conn.execute("UPDATE deliveries SET status = 'succeeded' WHERE id = $1", done)
        # A delivery fanned out as its endpoint was deleted: nothing refers to it any more.
        [orphan] = await _deliveries(conn, uuid.uuid4(), 1, attempts=0, due_in=0)
        # One waiting for an endpoint disabled since, never turned back on.
        [abandoned] = await _deliveries(
            conn, await _endpoint(conn, enabled=False), 1, attempts=4, due_in=0
        )
        [recent] = await _deliveries(conn, live, 1, attempts=0, due_in=0)
        await conn.execute(
            "UPDATE events SET received_at = now() - interval '40 days' "
            "WHERE seq IN (SELECT event_seq FROM deliveries WHERE id = ANY ($1::uuid[]))",
            [waiting, done, orphan, abandoned],
        )

        purged = await store.purge_events(conn, retention_days=30)
        left = {r["id"] for r in await conn.fetch("SELECT id FROM deliveries")}

    assert purged == 3
    assert left == {waiting, recent}


async def test_feed_entries_for_events_kept_before_the_migration_and_by_earlier_code(
    database_url: str,
) -> None:
    schema = f"callbacks_store_{uuid.uuid4().hex[:8]}"
    everything = migrations.migrations_for(CALLBACKS_DIR)
    first = [m for m in everything if not m.name.startswith("0002")]
    conn = await asyncpg.connect(database_url)
    try:
        await migrations.apply(conn, schema, first)
        await conn.execute(f'SET search_path TO "{schema}", public')
        d = await directory(conn)
        seqs = [
            await conn.fetchval(
                """
                INSERT INTO events (event_id, event_type, clinic_id, application_id, sequence,
                                    occurred_at, body)
                VALUES (gen_random_uuid(), $1, $2, $3, 1, now(), '{}') RETURNING seq
                """,
                event_type,
                clinic,
                application,
            )
            for event_type, clinic, application in [
                ("booking.created", d.clinic, None),
                ("grant.created", None, d.apps["wrong_scope"]),
            ]
        ]
        await migrations.apply(conn, schema, everything)
        await conn.execute(f'SET search_path TO "{schema}", public')
        # A copy still running the earlier code keeps an event with a plain insert.
        seqs.append(
            await conn.fetchval(
                """
                INSERT INTO events (event_id, event_type, clinic_id, sequence, occurred_at, body)
                VALUES (gen_random_uuid(), 'booking.updated', $1, 1, now(), '{}') RETURNING seq
                """,
                d.clinic,
            )
        )
        entries = {
            (r["application_id"], r["seq"])
            for r in await conn.fetch("SELECT application_id, seq FROM feed_entries")
        }
        seen = await store.feed(
            conn, d.apps["direct"], after=None, types=None, retention_days=30, limit=10
        )
    finally:
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()

    readers = {d.apps[name] for name in ("direct", "group_sandbox", "both")}
    assert entries == {
        *((app, seqs[0]) for app in readers),
        (d.apps["wrong_scope"], seqs[1]),
        *((app, seqs[2]) for app in readers),
    }
    assert [r["seq"] for r in seen] == [seqs[0], seqs[2]]
