"""Token buckets with an injected clock: no sleeping, exact arithmetic."""

from __future__ import annotations

import pytest

from shared.ratelimit import TokenBuckets

RATE = 2.0  # tokens per second
BURST = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def buckets(clock: Clock) -> TokenBuckets:
    return TokenBuckets(clock=clock)


def take(buckets: TokenBuckets, key: str = "app", cost: float = 1.0) -> float:
    return buckets.take(key, rate=RATE, burst=BURST, cost=cost)


def peek(buckets: TokenBuckets, key: str = "app") -> float:
    return buckets.peek(key, rate=RATE, burst=BURST)


def test_burst_then_refusal(buckets: TokenBuckets) -> None:
    assert [take(buckets) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert take(buckets) == pytest.approx(0.5)
    assert take(buckets) == pytest.approx(0.5)


def test_refill_over_time_up_to_the_burst(buckets: TokenBuckets, clock: Clock) -> None:
    for _ in range(3):
        take(buckets)
    clock.advance(0.5)
    assert take(buckets) == 0.0
    assert take(buckets) > 0.0
    clock.advance(60)
    assert peek(buckets) == pytest.approx(BURST)
    assert [take(buckets) for _ in range(4)][:3] == [0.0, 0.0, 0.0]


def test_wait_time_is_what_is_missing_over_the_rate(buckets: TokenBuckets, clock: Clock) -> None:
    for _ in range(3):
        take(buckets)
    clock.advance(0.25)  # half a token back
    assert take(buckets) == pytest.approx(0.25)
    # A refusal takes nothing: the half token is still there.
    assert peek(buckets) == pytest.approx(0.5)
    assert take(buckets, cost=2.0) == pytest.approx(0.75)
    clock.advance(0.25)
    assert take(buckets) == 0.0
    assert peek(buckets) == pytest.approx(0.0)


def test_waiting_the_answered_time_is_enough(buckets: TokenBuckets, clock: Clock) -> None:
    for _ in range(3):
        take(buckets)
    for _ in range(5):
        wait = take(buckets)
        assert wait > 0.0
        clock.advance(wait)
        assert take(buckets) == 0.0


def test_peek_does_not_consume(buckets: TokenBuckets, clock: Clock) -> None:
    assert peek(buckets, "fresh") == BURST
    assert [peek(buckets, "fresh") for _ in range(10)] == [BURST] * 10
    take(buckets, "used")
    assert peek(buckets, "used") == pytest.approx(2.0)
    assert peek(buckets, "used") == pytest.approx(2.0)
    clock.advance(0.25)
    assert peek(buckets, "used") == pytest.approx(2.5)
    assert [take(buckets, "fresh") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_keys_are_independent_and_reset_forgets(buckets: TokenBuckets) -> None:
    for _ in range(3):
        take(buckets, "a")
    assert take(buckets, "a") > 0.0
    assert take(buckets, "b") == 0.0
    buckets.reset("a")
    assert take(buckets, "a") == 0.0


def test_eviction_keeps_working_at_max_keys(clock: Clock) -> None:
    buckets = TokenBuckets(clock=clock, max_keys=4)
    for n in range(200):
        clock.advance(0.001)
        # Every new key is admitted with its full burst, however many came before it.
        assert [take(buckets, f"k{n}") for _ in range(3)] == [0.0, 0.0, 0.0]
        assert take(buckets, f"k{n}") > 0.0
        assert len(buckets._buckets) <= 4
    # The most recent key was not evicted: it is still drained.
    assert take(buckets, "k199") > 0.0


def test_eviction_drops_full_buckets_first(clock: Clock) -> None:
    buckets = TokenBuckets(clock=clock, max_keys=4)
    for key in ("old-drained", "full", "drained-1", "drained-2"):
        clock.advance(0.001)
        take(buckets, key, cost=BURST if key != "full" else 0.0)
    take(buckets, "newcomer")
    assert len(buckets._buckets) <= 4
    # The full bucket carried no information; every drained one is still limited.
    for key in ("old-drained", "drained-1", "drained-2"):
        assert take(buckets, key) > 0.0, key


@pytest.mark.parametrize("max_keys", [1, 2, 3])
def test_eviction_bounds_tiny_tables(clock: Clock, max_keys: int) -> None:
    buckets = TokenBuckets(clock=clock, max_keys=max_keys)
    for n in range(20):
        take(buckets, f"k{n}", cost=BURST)
        assert len(buckets._buckets) <= max_keys
        assert take(buckets, f"k{n}") > 0.0
