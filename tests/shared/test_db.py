"""``transaction_opened_with`` on a real Postgres: commit, rollback, and the opening statement
failing or being cancelled after BEGIN took effect."""

from __future__ import annotations

import asyncio
import secrets

import asyncpg
import pytest

from shared.db import transaction_opened_with

LOCK = 7_700_000_000 + secrets.randbelow(10**6)


async def test_commit_rollback_and_a_failing_opening_statement(database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CREATE TEMP TABLE t (n int)")
        async with transaction_opened_with(conn, f"SELECT pg_advisory_xact_lock({LOCK})"):
            assert conn.is_in_transaction()
            await conn.execute("INSERT INTO t VALUES (1)")
        assert not conn.is_in_transaction()

        # The opening statement's status comes back: a dedupe insert tells first from repeat.
        for expected in ("INSERT 0 1", "INSERT 0 0"):
            async with transaction_opened_with(
                conn, "INSERT INTO t SELECT 9 WHERE NOT EXISTS (SELECT 1 FROM t WHERE n = 9)"
            ) as status:
                assert status == expected
        await conn.execute("DELETE FROM t WHERE n = 9")

        async def refused() -> None:
            async with transaction_opened_with(conn, "SELECT 1"):
                await conn.execute("INSERT INTO t VALUES (2)")
                raise RuntimeError("refused")

        with pytest.raises(RuntimeError, match="refused"):
            await refused()
        assert not conn.is_in_transaction()

        # The opening statement fails after BEGIN ran: nothing is left open.
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with transaction_opened_with(conn, "SELECT 1 / 0"):
                pytest.fail("the body must not run")
        assert not conn.is_in_transaction()
        assert [r["n"] for r in await conn.fetch("SELECT n FROM t ORDER BY n")] == [1]

        # Inside an open transaction it refuses rather than end the caller's transaction.
        async with conn.transaction():
            await conn.execute("INSERT INTO t VALUES (3)")
            with pytest.raises(asyncpg.InterfaceError):
                async with transaction_opened_with(conn, "SELECT 1"):
                    pass
        assert [r["n"] for r in await conn.fetch("SELECT n FROM t ORDER BY n")] == [1, 3]
    finally:
        await conn.close()


async def test_a_lock_wait_cancelled_leaves_no_transaction_and_no_lock(database_url: str) -> None:
    holder = await asyncpg.connect(database_url)
    waiter = await asyncpg.connect(database_url)
    try:
        await holder.execute("BEGIN")
        await holder.execute(f"SELECT pg_advisory_xact_lock({LOCK + 1})")

        async def wait_for_lock() -> None:
            async with transaction_opened_with(waiter, f"SELECT pg_advisory_xact_lock({LOCK + 1})"):
                pytest.fail("the lock is held elsewhere")

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(wait_for_lock(), 0.3)
        await holder.execute("COMMIT")
        # The waiter is usable, outside any transaction, and does not hold the lock.
        assert await waiter.fetchval("SELECT 1") == 1
        assert not waiter.is_in_transaction()
        assert await holder.fetchval(f"SELECT pg_try_advisory_lock({LOCK + 1})") is True
        await holder.execute(f"SELECT pg_advisory_unlock({LOCK + 1})")
    finally:
        await holder.close()
        await waiter.close()
