"""Housekeeping removes what retention allows and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.housekeeping import retention_purges, run_purges
from tests.conftest import private_schema_pool


@pytest.fixture
async def callbacks_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await private_schema_pool(database_url, "housekeeping_test")
    yield pool
    await pool.close()


async def test_purges_only_old_published_rows_and_old_event_ids(
    callbacks_pool: asyncpg.Pool,
) -> None:
    old_sent, new_sent, old_unsent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    old_seen, new_seen = uuid.uuid4(), uuid.uuid4()
    async with callbacks_pool.acquire() as conn:
        await conn.execute(
            """
            INSERT INTO outbox (event_id, event_type, payload, created_at, published_at) VALUES
              ($1, 't', '{}', now() - interval '5 days', now() - interval '5 days'),
              ($2, 't', '{}', now(), now()),
              ($3, 't', '{}', now() - interval '5 days', NULL)
            """,
            old_sent,
            new_sent,
            old_unsent,
        )
        await conn.execute(
            """
            INSERT INTO processed_events (consumer, event_id, processed_at) VALUES
              ('housekeeping-test', $1, now() - interval '10 days'),
              ('housekeeping-test', $2, now())
            """,
            old_seen,
            new_seen,
        )
    removed = await run_purges(callbacks_pool, retention_purges(72, 168))
    assert removed >= 2
    async with callbacks_pool.acquire() as conn:
        left = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM outbox")}
        seen = {
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM processed_events WHERE consumer = 'housekeeping-test'"
            )
        }
    # An unpublished row is never purged, however old: it has not left yet.
    assert old_sent not in left
    assert {new_sent, old_unsent} <= left
    assert seen == {new_seen}
