"""The clinics as bookings sees them: zone from the auth service's directory, rules of its own.

A clinic is fetched from the auth service (internal HTTP) the first time it is used, kept in the
``clinics`` table, and refreshed by ``clinic.*`` events; each process keeps a short cache.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg

from services.bookings import store
from shared.errors import NotFound, ServiceUnavailable


@dataclass(frozen=True)
class ClinicRules:
    clinic_id: uuid.UUID
    group_id: uuid.UUID
    time_zone: ZoneInfo
    slot_minutes: int
    min_lead_minutes: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> ClinicRules:
        return cls(
            clinic_id=row["id"],
            group_id=row["group_id"],
            time_zone=ZoneInfo(row["time_zone"]),
            slot_minutes=row["slot_minutes"],
            min_lead_minutes=row["min_lead_minutes"],
        )


class ClinicDirectory:
    def __init__(
        self,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
        *,
        auth_url: str,
        internal_token: str,
        cache_seconds: float = 30.0,
    ) -> None:
        self._pool = pool
        self._session = session
        self._url = auth_url.rstrip("/") + "/internal/v1/clinics/"
        self._headers = {"Authorization": f"Bearer {internal_token}"}
        self._cache_seconds = cache_seconds
        self._cache: dict[uuid.UUID, tuple[float, ClinicRules]] = {}

    async def rules(self, clinic_id: uuid.UUID) -> ClinicRules:
        """The clinic's zone and booking rules; fetched from the directory on first use."""
        hit = self._cache.get(clinic_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self._pool.acquire() as conn:
            row = await store.get_clinic(conn, clinic_id)
            if row is None:
                group_id, zone = await self._fetch(clinic_id)
                await store.upsert_clinic(conn, clinic_id, group_id, zone)
                row = await store.get_clinic(conn, clinic_id)
        assert row is not None
        rules = ClinicRules.from_row(row)
        self._cache[clinic_id] = (time.monotonic() + self._cache_seconds, rules)
        return rules

    def forget(self, clinic_id: uuid.UUID) -> None:
        self._cache.pop(clinic_id, None)

    async def _fetch(self, clinic_id: uuid.UUID) -> tuple[uuid.UUID, str]:
        try:
            async with self._session.get(self._url + str(clinic_id), headers=self._headers) as r:
                if r.status == 404:
                    raise NotFound("No such clinic")
                r.raise_for_status()
                body = await r.json()
        except (aiohttp.ClientError, TimeoutError):
            raise ServiceUnavailable(
                "The clinic directory is not answering; try again shortly",
                slug="directory-unavailable",
                headers={"Retry-After": "2"},
            ) from None
        return uuid.UUID(body["group_id"]), str(body["time_zone"])
