"""A service's local view of the clinic directory the auth service owns.

A clinic is read from the service's own ``clinics`` table; the first time one is needed it is
fetched from the auth service's internal API and saved there, and ``clinic.*`` events keep it
current afterwards. Each process also keeps a short in-memory cache. What a service stores and
returns about a clinic is its own business: it passes a ``load`` and a ``save``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

import aiohttp
import asyncpg

from shared.db import Connection
from shared.errors import NotFound, ServiceUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class DirectoryEntry:
    """A clinic as the auth service's directory describes it."""

    clinic_id: uuid.UUID
    group_id: uuid.UUID
    country: str
    time_zone: str
    updated_at: datetime


class ClinicDirectory(Generic[T]):
    def __init__(
        self,
        pool: asyncpg.Pool,
        session: aiohttp.ClientSession,
        *,
        auth_url: str,
        internal_token: str,
        load: Callable[[Connection, uuid.UUID], Awaitable[T | None]],
        save: Callable[[Connection, DirectoryEntry], Awaitable[None]],
        cache_seconds: float = 30.0,
    ) -> None:
        self._pool = pool
        self._session = session
        self._url = auth_url.rstrip("/") + "/internal/v1/clinics/"
        self._headers = {"Authorization": f"Bearer {internal_token}"}
        self._load = load
        self._save = save
        self._cache_seconds = cache_seconds
        self._cache: dict[uuid.UUID, tuple[float, T]] = {}

    async def get(self, clinic_id: uuid.UUID) -> T:
        """The service's view of the clinic; fetched from the directory on first use."""
        hit = self._cache.get(clinic_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        async with self._pool.acquire() as conn:
            found = await self._load(conn, clinic_id)
        if found is None:
            # Fetched with no connection held: the directory may be slow to answer.
            entry = await self._fetch(clinic_id)
            async with self._pool.acquire() as conn:
                await self._save(conn, entry)
                found = await self._load(conn, clinic_id)
        if found is None:
            raise NotFound("No such clinic")
        self._cache[clinic_id] = (time.monotonic() + self._cache_seconds, found)
        return found

    def forget(self, clinic_id: uuid.UUID) -> None:
        self._cache.pop(clinic_id, None)

    async def _fetch(self, clinic_id: uuid.UUID) -> DirectoryEntry:
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
        return DirectoryEntry(
            clinic_id=clinic_id,
            group_id=uuid.UUID(body["group_id"]),
            country=str(body["country"]).strip().upper(),
            time_zone=str(body["time_zone"]),
            updated_at=datetime.fromisoformat(body["updated_at"]),
        )
