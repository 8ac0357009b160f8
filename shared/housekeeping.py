"""Periodic clean-up of the tables that only grow: published outbox rows, processed event ids.

Each service may add its own purges (the auth service drops expired token revocations). Deletes
are idempotent, so several copies of a service running them at once is harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
from aiohttp import web

from shared.db import Connection
from shared.keys import DB_POOL, SETTINGS

log = logging.getLogger("vetgate.housekeeping")

Purge = Callable[[Connection], Awaitable[int]]
EXTRA_PURGES: web.AppKey[tuple[Purge, ...]] = web.AppKey("extra_purges")


def retention_purges(outbox_hours: float, processed_hours: float) -> list[Purge]:
    async def outbox(conn: Connection) -> int:
        result = await conn.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(hours => $1)",
            int(outbox_hours),
        )
        return int(result.split()[-1])

    async def processed(conn: Connection) -> int:
        result = await conn.execute(
            "DELETE FROM processed_events WHERE processed_at < now() - make_interval(hours => $1)",
            int(processed_hours),
        )
        return int(result.split()[-1])

    return [outbox, processed]


async def run_purges(pool: asyncpg.Pool, purges: list[Purge]) -> int:
    """Run every purge once; return how many rows went."""
    removed = 0
    async with pool.acquire() as conn:
        for purge in purges:
            removed += await purge(conn)
    return removed


async def housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: purge on an interval for the life of the app."""
    settings = app[SETTINGS]
    purges = retention_purges(settings.outbox_retention_hours, settings.processed_retention_hours)
    if EXTRA_PURGES in app:
        extra: tuple[Purge, ...] = app[EXTRA_PURGES]
        purges.extend(extra)

    async def loop() -> None:
        while True:
            await asyncio.sleep(settings.housekeeping_interval_seconds)
            try:
                removed = await run_purges(app[DB_POOL], purges)
                if removed:
                    log.info("housekeeping removed %d rows", removed)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("housekeeping skipped: %s", type(exc).__name__)

    task = asyncio.create_task(loop(), name="housekeeping")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
