"""A short-lived, event-invalidated cache of what token issuance reads on every request.

Issuing a token needs the application (status, tier, secret hashes) and its scopes on one
clinic. Reading both from Postgres on every request would cap issuance at the database round
trips; instead each auth process keeps them for ``credential_cache_seconds`` (about a second) and
drops everything as soon as a grant or application event arrives on the bus. Resource services
refuse tokens issued up to that same margin after a revocation, so a stale entry can never
produce a token that outlives a revoked grant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from shared.db import Row

Loaded = TypeVar("Loaded")


class TtlCache:
    def __init__(
        self,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 50_000,
    ) -> None:
        self._ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._entries: dict[Any, tuple[float, Any]] = {}

    async def get(self, key: Any, load: Callable[[], Awaitable[Loaded]]) -> Loaded:
        """The cached value for ``key``, or ``load()``'s result; None results are not kept."""
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None and hit[0] > now:
            value: Loaded = hit[1]
            return value
        loaded = await load()
        if loaded is not None and self._ttl > 0:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (now + self._ttl, loaded)
        return loaded

    def clear(self) -> None:
        self._entries.clear()


def record(row: Row | None) -> dict[str, Any] | None:
    """A plain dict copy of a row, safe to keep beyond its connection."""
    return dict(row.items()) if row is not None else None


def grant_key(app_id: uuid.UUID, clinic_id: uuid.UUID) -> tuple[str, uuid.UUID, uuid.UUID]:
    return ("grant", app_id, clinic_id)
