"""Scratch databases for the test suite and the benchmarks: migrated, private, dropped after."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg

from services.cli import migrate

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


@contextlib.asynccontextmanager
async def scratch_database(prefix: str, suffix: str | None = None) -> AsyncIterator[str]:
    """A new database ``<prefix>_<suffix>`` with every migration applied; dropped on exit.

    The server comes from ``VETGATE_TEST_DATABASE_URL`` (any database on it; trust or password
    auth as the URL says), so a developer's own databases are never touched.
    """
    server = os.environ.get("VETGATE_TEST_DATABASE_URL", DEFAULT_SERVER)
    name = f"{prefix}_{suffix or secrets.token_hex(4)}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = server.rsplit("/", 1)[0] + "/" + name
        try:
            await migrate(dsn, quiet=True)
            yield dsn
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
