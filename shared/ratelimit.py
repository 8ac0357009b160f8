"""Token buckets: per application by tier, and failure-slowing for the token endpoint."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """In-process buckets keyed by string; ``take`` answers how long to wait, 0.0 when allowed."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys

    def take(self, key: str, *, rate: float, burst: float, cost: float = 1.0) -> float:
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict(now, rate, burst)
            bucket = self._buckets[key] = _Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / rate

    def peek(self, key: str, *, rate: float, burst: float) -> float:
        """Tokens available now, without taking any."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return burst
        return min(burst, bucket.tokens + (self._clock() - bucket.updated) * rate)

    def reset(self, key: str) -> None:
        self._buckets.pop(key, None)

    def _evict(self, now: float, rate: float, burst: float) -> None:
        # Full buckets carry no information; drop them first, then the oldest half.
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.updated) * rate >= burst]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for key in oldest[: max(1, len(oldest) // 2)]:
                del self._buckets[key]
