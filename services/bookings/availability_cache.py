"""Rendered availability kept between searches, valid while nothing it depends on changed.

Two levels: one practitioner's slots on one clinic-local day, and a whole day merged across
the practitioners who offer a service. Each key holds everything its answer depends on — the
service's duration, the clinic's grid and time zone, which practitioners, and each one's
schedule version (moved by a trigger on every change to their bookings, breaks, working hours
and published slots) — so an entry can never be served after a change: the next search simply
asks for another key. A booking therefore costs one practitioner's days, not the clinic's.
Practitioner-days are kept whole, past hours included: the slot grid is anchored at local
midnight, so a day cut by the present, the lead time or the window is its whole day's starts
from the cut on. Merged days are kept only when an answer took them whole.
"""

from __future__ import annotations

import heapq
import uuid
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Iterable, Sequence
from datetime import date
from typing import Generic, TypeVar

from services.bookings.availability import Slot

#: One rendered slot with what orders it in an answer: start instant, then practitioner.
Entry = tuple[tuple[float, int], str]
V = TypeVar("V")


def render(slot: Slot) -> str:
    """A slot as a member of the JSON ``slots`` array."""
    return (
        f'{{"start":"{slot.start.isoformat()}","end":"{slot.end.isoformat()}",'
        f'"practitioner_id":"{slot.practitioner_id}"}}'
    )


def entries_by_practitioner_day(
    slots: Iterable[Slot],
) -> dict[tuple[uuid.UUID, date], list[Entry]]:
    """Rendered slots grouped by practitioner and local day (slots carry the clinic's zone)."""
    grouped: dict[tuple[uuid.UUID, date], list[Entry]] = defaultdict(list)
    for s in slots:
        grouped[(s.practitioner_id, s.start.date())].append(
            ((s.start.timestamp(), s.practitioner_id.int), render(s))
        )
    return grouped


def merge(lists: Iterable[Sequence[Entry]]) -> str:
    """Several practitioners' sorted entries as one answer's members, in answer order."""
    return ",".join(text for _, text in heapq.merge(*lists))


class Lru(Generic[V]):
    """Least recently used entries within a budget (each entry's size is the caller's measure)."""

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._size = 0
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        found = self._entries.get(key)
        if found is None:
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        if size > self._budget:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self._size -= previous[1]
        self._entries[key] = (value, size)
        self._size += size
        while self._size > self._budget:
            _, (_, evicted) = self._entries.popitem(last=False)
            self._size -= evicted

    def __len__(self) -> int:
        return len(self._entries)


class AvailabilityCache:
    """Merged days and practitioner-days, half the budget (characters of JSON) each."""

    def __init__(self, budget_chars: int) -> None:
        self.days: Lru[str] = Lru(budget_chars // 2)
        self.practitioner_days: Lru[list[Entry]] = Lru(budget_chars // 2)

    @staticmethod
    def day_key(
        *,
        clinic_id: uuid.UUID,
        day: date,
        duration_minutes: int,
        grid_minutes: int,
        time_zone: str,
        versions: Sequence[tuple[uuid.UUID, int]],
    ) -> Hashable:
        return ("day", clinic_id, day, duration_minutes, grid_minutes, time_zone, tuple(versions))

    @staticmethod
    def practitioner_day_key(
        *,
        clinic_id: uuid.UUID,
        practitioner: tuple[uuid.UUID, int],
        day: date,
        duration_minutes: int,
        grid_minutes: int,
        time_zone: str,
    ) -> Hashable:
        return ("pday", clinic_id, practitioner, day, duration_minutes, grid_minutes, time_zone)

    def put_practitioner_day(self, key: Hashable, entries: list[Entry]) -> None:
        # About what the rendered slots weigh, plus the tuples that hold them.
        self.practitioner_days.put(key, entries, sum(len(t) + 64 for _, t in entries) + 64)
