"""Rendered availability kept per clinic-local day, valid while nothing it depends on changed.

A day's answer depends on the service's duration, the clinic's grid and time zone, which
practitioners offer the service, and each one's schedule version (moved by a trigger on every
change to their bookings, breaks, working hours and published slots). All of that is the key,
so an entry can never be served after a change: the next request simply asks for a new key.
Days that the present or the lead time cuts into are never kept.
"""

from __future__ import annotations

import uuid
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from datetime import date

from services.bookings.availability import Slot


def day_key(
    *,
    clinic_id: uuid.UUID,
    day: date,
    duration_minutes: int,
    grid_minutes: int,
    time_zone: str,
    versions: Sequence[tuple[uuid.UUID, int]],
) -> Hashable:
    return (clinic_id, day, duration_minutes, grid_minutes, time_zone, tuple(versions))


def render(slots: Sequence[Slot]) -> str:
    """Slots as the members of a JSON array, without the brackets."""
    return ",".join(
        f'{{"start":"{s.start.isoformat()}","end":"{s.end.isoformat()}",'
        f'"practitioner_id":"{s.practitioner_id}"}}'
        for s in slots
    )


class DayCache:
    """Least recently used entries within a budget of characters."""

    def __init__(self, budget_chars: int) -> None:
        self._budget = budget_chars
        self._size = 0
        self._entries: OrderedDict[Hashable, str] = OrderedDict()

    def get(self, key: Hashable) -> str | None:
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def put(self, key: Hashable, rendered: str) -> None:
        if len(rendered) > self._budget:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._size -= len(previous)
        self._entries[key] = rendered
        self._size += len(rendered)
        while self._size > self._budget:
            _, evicted = self._entries.popitem(last=False)
            self._size -= len(evicted)

    def __len__(self) -> int:
        return len(self._entries)
