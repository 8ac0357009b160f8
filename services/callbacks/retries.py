"""When to try a delivery again: the schedule, jitter, and a receiver's ``Retry-After``."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from shared.randomness import uniform


@dataclass(frozen=True)
class RetryPolicy:
    schedule: Sequence[float]
    jitter: float = 0.1
    retry_after_min: float = 1.0
    retry_after_max: float = 3600.0

    @property
    def max_attempts(self) -> int:
        return len(self.schedule)

    def next_delay(
        self,
        attempts_made: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds until the next attempt after ``attempts_made`` failures; None: give up."""
        if attempts_made >= len(self.schedule):
            return None
        if retry_after is not None:
            return min(max(retry_after, self.retry_after_min), self.retry_after_max)
        base = self.schedule[attempts_made]
        spread = base * self.jitter
        jitter = rng.uniform(-spread, spread) if rng is not None else uniform(-spread, spread)
        return max(0.0, base + jitter)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """RFC 9110 ``Retry-After``: delay-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())
