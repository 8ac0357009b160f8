"""Scratch databases for the test suite and the benchmarks: migrated, private, dropped after."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from services.cli import embedded_database, migrate, port_open

DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_SOCKET_DIR = Path("/var/run/postgresql")
#: The same local server through its Unix socket: a round trip costs a fraction of one over
#: loopback TCP, and the tests and benchmarks make hundreds of thousands of them.
SOCKET_SERVER = f"postgresql://postgres@/postgres?host={LOCAL_SOCKET_DIR}"


def _default_server() -> str:
    """The local server when one answers on 5432 (through its socket when it has one), else
    the embedded one under ``.data/``."""
    if port_open("127.0.0.1", 5432):
        if (LOCAL_SOCKET_DIR / ".s.PGSQL.5432").exists():
            return SOCKET_SERVER
        return DEFAULT_SERVER
    return embedded_database("postgres")


@contextlib.asynccontextmanager
async def scratch_database(prefix: str, suffix: str | None = None) -> AsyncIterator[str]:
    """A new database ``<prefix>_<suffix>`` with every migration applied; dropped on exit.

    The server comes from ``VETGATE_TEST_DATABASE_URL`` (any database on it; trust or password
    auth as the URL says), so a developer's own databases are never touched.
    """
    server = os.environ.get("VETGATE_TEST_DATABASE_URL") or _default_server()
    name = f"{prefix}_{suffix or secrets.token_hex(4)}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = urlunsplit(urlsplit(server)._replace(path="/" + name))
        try:
            await migrate(dsn, quiet=True)
            yield dsn
        finally:
            if admin.is_closed():
                # The server restarted meanwhile (tests/test_faults.py does that on purpose).
                admin = await asyncpg.connect(server)
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
