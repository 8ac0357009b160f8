"""Randomness that must be unpredictable enough to spread, not secret: ids and jitter.

It comes from a generator of its own: the global ``random`` state belongs to whoever else runs
in the process (a property-based test harness notices when a server thread moves it).
"""

from __future__ import annotations

import os
import random

_RNG = random.Random()
# Reseeded in a forked child, as the global generator is, so that no two processes share ids.
os.register_at_fork(after_in_child=_RNG.seed)


def unique_hex(bits: int) -> str:
    """``bits`` random bits as lowercase hex, zero-padded: a request id, a token id."""
    return f"{_RNG.getrandbits(bits):0{bits // 4}x}"


def uniform(low: float, high: float) -> float:
    """A jitter, uniform in [low, high]."""
    return _RNG.uniform(low, high)
