"""Migrations on throw-away schemas: concurrent starts apply each file once, drift is refused."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from shared.migrations import Migration, apply

CREATE = Migration(
    "0001_marker.sql",
    "CREATE TABLE marker (id serial PRIMARY KEY, note text NOT NULL);\n"
    "INSERT INTO marker (note) VALUES ('created');\n"
    # Slow enough that concurrent starters really do wait on one another.
    "SELECT pg_sleep(0.1);",
)
INSERT = Migration("0002_marker_row.sql", "INSERT INTO marker (note) VALUES ('second');")
BROKEN = Migration("0003_broken.sql", "INSERT INTO no_such_table (note) VALUES ('never');")

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@pytest.fixture
async def connect(database_url: str) -> AsyncIterator[Connect]:
    """Open connections to the test database; all are closed after the test."""
    opened: list[asyncpg.Connection] = []

    async def open_one() -> asyncpg.Connection:
        conn = await asyncpg.connect(database_url)
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        await conn.close()


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    """A fresh schema name, dropped with whatever the test created in it."""
    name = f"mig_{uuid.uuid4().hex[:8]}"
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def recorded(conn: asyncpg.Connection, schema: str) -> list[str]:
    if await conn.fetchval("SELECT to_regclass($1)", f'"{schema}".schema_migrations') is None:
        return []
    rows = await conn.fetch(f'SELECT name FROM "{schema}".schema_migrations ORDER BY name')
    return [r["name"] for r in rows]


async def marker_notes(conn: asyncpg.Connection, schema: str) -> list[str]:
    rows = await conn.fetch(f'SELECT note FROM "{schema}".marker ORDER BY id')
    return [r["note"] for r in rows]


@pytest.mark.parametrize("starters", [2, 4])
async def test_concurrent_apply_runs_each_migration_once(
    connect: Connect, schema: str, starters: int
) -> None:
    conns = [await connect() for _ in range(starters)]
    results = await asyncio.gather(*(apply(c, schema, [CREATE, INSERT]) for c in conns))

    applied = Counter(name for result in results for name in result)
    assert applied == {CREATE.name: 1, INSERT.name: 1}
    assert await recorded(conns[0], schema) == [CREATE.name, INSERT.name]
    # The DDL and the data of each file ran exactly once.
    assert await marker_notes(conns[0], schema) == ["created", "second"]
    checksums = await conns[0].fetch(
        f'SELECT name, checksum FROM "{schema}".schema_migrations ORDER BY name'
    )
    assert [(r["name"], r["checksum"]) for r in checksums] == [
        (CREATE.name, CREATE.checksum),
        (INSERT.name, INSERT.checksum),
    ]


async def test_rerun_applies_nothing(connect: Connect, schema: str) -> None:
    conn = await connect()
    assert await apply(conn, schema, [CREATE]) == [CREATE.name]
    assert await apply(conn, schema, [CREATE]) == []
    # A later file is picked up on its own; the applied one is not run again.
    assert await apply(conn, schema, [CREATE, INSERT]) == [INSERT.name]
    assert await apply(conn, schema, [CREATE, INSERT]) == []
    assert await marker_notes(conn, schema) == ["created", "second"]


async def test_changed_migration_is_refused(connect: Connect, schema: str) -> None:
    conn = await connect()
    await apply(conn, schema, [CREATE, INSERT])
    edited = Migration(INSERT.name, INSERT.sql.replace("second", "edited"))
    with pytest.raises(RuntimeError, match=INSERT.name):
        await apply(conn, schema, [CREATE, edited])
    assert await marker_notes(conn, schema) == ["created", "second"]
    # The connection is usable afterwards: the failed transaction was rolled back.
    assert await apply(conn, schema, [CREATE, INSERT]) == []


async def test_failing_migration_records_nothing(connect: Connect, schema: str) -> None:
    conn = await connect()
    with pytest.raises(asyncpg.UndefinedTableError):
        await apply(conn, schema, [CREATE, BROKEN])
    # One transaction: neither the good file before it nor the schema itself survived.
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM information_schema.schemata WHERE schema_name = $1", schema
        )
        == 0
    )
    assert await recorded(conn, schema) == []

    assert await apply(conn, schema, [CREATE]) == [CREATE.name]
    with pytest.raises(asyncpg.UndefinedTableError):
        await apply(conn, schema, [CREATE, INSERT, BROKEN])
    assert await recorded(conn, schema) == [CREATE.name]
    assert await marker_notes(conn, schema) == ["created"]
    assert await apply(conn, schema, [CREATE, INSERT]) == [INSERT.name]
