"""The clinics as bookings sees them: the zone from the directory, booking rules of its own."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from services.bookings import store
from shared.db import Connection
from shared.directory import ClinicDirectory as Directory
from shared.directory import DirectoryEntry
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class ClinicRules:
    clinic_id: uuid.UUID
    group_id: uuid.UUID
    time_zone: ZoneInfo
    slot_minutes: int
    min_lead_minutes: int


ClinicDirectory = Directory[ClinicRules]


async def _load(conn: Connection, clinic_id: uuid.UUID) -> ClinicRules | None:
    row = await store.get_clinic(conn, clinic_id)
    if row is None:
        return None
    return ClinicRules(
        clinic_id=row["id"],
        group_id=row["group_id"],
        time_zone=ZoneInfo(row["time_zone"]),
        slot_minutes=row["slot_minutes"],
        min_lead_minutes=row["min_lead_minutes"],
    )


async def _save(conn: Connection, entry: DirectoryEntry) -> None:
    await store.upsert_clinic(conn, entry.clinic_id, entry.group_id, entry.time_zone)


def create_directory(
    pool: asyncpg.Pool, session: aiohttp.ClientSession, settings: ServiceSettings
) -> ClinicDirectory:
    return Directory(
        pool,
        session,
        auth_url=settings.auth_url,
        internal_token=settings.internal_token.get_secret_value(),
        load=_load,
        save=_save,
    )
