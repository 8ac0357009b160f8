"""Postgres plumbing: the pool as an aiohttp ``cleanup_ctx`` and the constraint-name mapping.

Helpers here never commit on a caller's behalf: the service layer opens the transaction and
passes the connection down to its store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
from aiohttp import web

from shared.errors import ProblemError
from shared.keys import DB_POOL, SETTINGS

if TYPE_CHECKING:
    # What store functions accept: a bare connection or one borrowed from a pool.
    Connection: TypeAlias = (
        asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]
    )
else:
    Connection = asyncpg.Connection
Pool = asyncpg.Pool
Record = asyncpg.Record
#: A row as read (a Record) or as kept beyond its connection (a dict copy).
Row: TypeAlias = "Mapping[str, Any] | asyncpg.Record"

log = logging.getLogger("vetgate.db")


async def fetch_one(conn: Connection, query: str, *args: Any) -> Record:
    """The row a statement such as ``INSERT … RETURNING`` always produces."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise LookupError("statement returned no row")
    return row


@contextlib.asynccontextmanager
async def transaction_opened_with(conn: Connection, statement: str) -> AsyncIterator[str]:
    """A transaction whose BEGIN and first statement travel in one round trip; yields the
    statement's status (``INSERT 0 1``, ``SELECT 1``, ...).

    For a lock that must be held before the transaction's first read (a lock taken inside the
    statement that reads would come after that statement's snapshot), or simply to save the
    round trip. ``statement`` goes over the simple query protocol, so it takes no parameters:
    build it from values whose text is known to be safe (a number, a ``uuid.UUID``, a name
    from the code), never from input.
    """
    if conn.is_in_transaction():
        # BEGIN would only warn, and our COMMIT or ROLLBACK would end the caller's transaction.
        raise asyncpg.InterfaceError("transaction_opened_with inside an open transaction")
    try:
        # Inside the try: the opening statement itself can fail or be cancelled (a lock wait
        # past the command timeout) after BEGIN took effect.
        status: str = await conn.execute(f"BEGIN; {statement}")
        yield status
    except BaseException:
        # As asyncpg's own transactions do; if the connection is past rolling back, the pool
        # rolls back or discards it on release. Sent even when the opening statement seemed
        # not to run (cancelled before its answer came): a ROLLBACK outside a transaction is
        # only a warning.
        with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            await conn.execute("ROLLBACK")
        raise
    await conn.execute("COMMIT")


async def _init_connection(conn: asyncpg.Connection) -> None:
    for typename in ("json", "jsonb"):
        await conn.set_type_codec(
            typename, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset round trip on every release.

    Pooled connections carry no session state to clear: settings come with the connection,
    locks are transaction-scoped, and the one LISTEN (the outbox relay's) removes its listener
    before it lets the connection go.
    """


async def create_pool(
    dsn: str,
    *,
    schema: str = "public",
    min_size: int = 2,
    max_size: int = 10,
    settings: Mapping[str, str] | None = None,
) -> asyncpg.Pool:
    """Open a pool on the service's schema whose connections speak JSON for json/jsonb;
    ``settings`` are server settings for its connections' sessions."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings={
            "search_path": f"{schema},public",
            "application_name": "vetgate",
            **(settings or {}),
        },
    )
    assert pool is not None
    return pool


async def pool_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: one pool per process, closed on shutdown."""
    settings = app[SETTINGS]
    app[DB_POOL] = await create_pool(
        settings.database_url,
        schema=settings.db_schema,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
    )
    yield
    await close_pool(app[DB_POOL])


POOL_CLOSE_SECONDS = 10.0


async def close_pool(pool: asyncpg.Pool) -> None:
    """Close ``pool``; a connection still held by a task that is stuck must not hold the
    shutdown with it, so after POOL_CLOSE_SECONDS the rest are terminated."""
    try:
        await asyncio.wait_for(pool.close(), timeout=POOL_CLOSE_SECONDS)
    except TimeoutError:
        log.warning("database pool did not close within %g s; terminating it", POOL_CLOSE_SECONDS)
        pool.terminate()


ConstraintMap = Mapping[
    str, Callable[[asyncpg.exceptions.IntegrityConstraintViolationError], ProblemError]
]


def constraint_problem(
    exc: asyncpg.exceptions.IntegrityConstraintViolationError, mapping: ConstraintMap
) -> ProblemError | None:
    """Map a violated constraint to the domain problem registered under its name."""
    name = getattr(exc, "constraint_name", None)
    factory = mapping.get(name or "")
    return factory(exc) if factory is not None else None
