"""Ids and jitter come from a generator of their own, never the global ``random`` state."""

from __future__ import annotations

import os
import random
import re

from shared.randomness import uniform, unique_hex


def test_ids_are_padded_hex_and_distinct() -> None:
    ids = [unique_hex(64) for _ in range(2000)]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)
    assert re.fullmatch(r"[0-9a-f]{32}", unique_hex(128))


def test_the_global_random_state_is_left_alone() -> None:
    before = random.getstate()
    unique_hex(128)
    uniform(-1.0, 1.0)
    assert random.getstate() == before


def test_jitter_stays_in_its_bounds() -> None:
    draws = [uniform(-0.5, 0.5) for _ in range(1000)]
    assert all(-0.5 <= d <= 0.5 for d in draws)
    assert max(draws) - min(draws) > 0.5


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        os.write(write, unique_hex(64).encode())
        os._exit(0)
    os.close(write)
    mine = unique_hex(64)
    theirs = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert re.fullmatch(r"[0-9a-f]{16}", theirs)
    assert theirs != mine
