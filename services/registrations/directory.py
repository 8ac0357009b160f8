"""The clinics as registrations sees them: group, country and zone from the directory."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from services.registrations import store
from shared.db import Connection
from shared.directory import ClinicDirectory as Directory
from shared.directory import DirectoryEntry
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class Clinic:
    clinic_id: uuid.UUID
    group_id: uuid.UUID
    country: str
    time_zone: ZoneInfo


ClinicDirectory = Directory[Clinic]


async def _load(conn: Connection, clinic_id: uuid.UUID) -> Clinic | None:
    row = await store.get_clinic(conn, clinic_id)
    if row is None:
        return None
    return Clinic(
        clinic_id=row["id"],
        group_id=row["group_id"],
        country=str(row["country"]).strip().upper(),
        time_zone=ZoneInfo(row["time_zone"]),
    )


async def _save(conn: Connection, entry: DirectoryEntry) -> None:
    await store.upsert_clinic(
        conn,
        entry.clinic_id,
        group_id=entry.group_id,
        country=entry.country,
        time_zone=entry.time_zone,
        updated_at=entry.updated_at,
    )


def create_directory(
    pool: asyncpg.Pool,
    session: aiohttp.ClientSession,
    settings: ServiceSettings,
    *,
    cache_seconds: float = 30.0,
) -> ClinicDirectory:
    return Directory(
        pool,
        session,
        auth_url=settings.auth_url,
        internal_token=settings.internal_token.get_secret_value(),
        load=_load,
        save=_save,
        cache_seconds=cache_seconds,
    )
