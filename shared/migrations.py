"""Plain-SQL migrations, applied in file-name order and recorded per schema.

Every service owns one Postgres schema. Its files live in ``services/<svc>/migrations/`` and the
platform-wide ones (outbox, processed events) in ``shared/migrations/``; both run with the
service's schema first on the ``search_path``, so SQL files never name a schema. A transaction-level
advisory lock makes two processes that start at once apply each file exactly once.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from shared.db import Connection

SHARED_DIR = Path(__file__).parent / "migrations"
_LOCK_KEY = 0x7665_7467  # "vetg": one lock for all schemas keeps cross-schema DDL serial


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(directory: Path, prefix: str = "") -> list[Migration]:
    return [
        Migration(prefix + path.name, path.read_text()) for path in sorted(directory.glob("*.sql"))
    ]


def migrations_for(service_dir: Path) -> list[Migration]:
    """The shared files first (they create tables a service file may reference), then its own."""
    return load(SHARED_DIR, "shared/") + load(service_dir / "migrations")


async def apply(conn: Connection, schema: str, migrations: list[Migration]) -> list[str]:
    """Apply what is not yet recorded; return the names applied now. Idempotent and race-safe."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(f'SET LOCAL search_path TO "{schema}", public')
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                name text PRIMARY KEY,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        done = {
            r["name"]: r["checksum"]
            for r in await conn.fetch("SELECT name, checksum FROM schema_migrations")
        }
        for migration in migrations:
            if migration.name in done:
                if done[migration.name] != migration.checksum:
                    raise RuntimeError(
                        f"migration {schema}/{migration.name} changed after it was applied"
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)",
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration.name)
    return applied_now
