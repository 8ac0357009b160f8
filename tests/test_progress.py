"""The operator commands' progress display, on a terminal and on a pipe."""

from __future__ import annotations

import io

import pytest

from services import progress
from services.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_one_line_redrawn_and_ended_at_the_total() -> None:
    out = Terminal()
    bar = Progress(4, stream=out, width=8)
    for done in range(5):
        bar.update(done, f"step {done}")
    text = out.getvalue()
    assert text.count("\r") == 5
    assert text.endswith("\n")
    assert text.count("\n") == 1
    assert text.rstrip().rsplit("\r", 1)[-1].rstrip() == "[########] 4/4 step 4"
    assert "[####....] 2/4 step 2" in text


def test_a_pipe_gets_plain_lines_at_most_one_per_interval_and_always_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = iter([0.0, 0.5, 1.0, 2.5, 2.6])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = Progress(5, stream=out, width=5, every=2.0)
    for done in range(1, 6):
        bar.update(done, "x")
    assert "\r" not in out.getvalue()
    assert out.getvalue().splitlines() == ["[#....] 1/5 x", "[####.] 4/5 x", "[#####] 5/5 x"]


def test_closing_early_writes_the_state_a_pipe_was_not_shown() -> None:
    out = io.StringIO()
    bar = Progress(10, stream=out, every=60.0)
    bar.update(1, "a")
    bar.update(3, "b")
    assert out.getvalue().splitlines() == [f"[##{'.' * 22}] 1/10 a"]
    bar.close()
    assert out.getvalue().splitlines()[-1] == f"[#######{'.' * 17}] 3/10 b"
    bar.close()
    assert len(out.getvalue().splitlines()) == 2


def test_closing_early_ends_a_terminal_line_once() -> None:
    out = Terminal()
    bar = Progress(3, stream=out)
    bar.update(1, "a")
    bar.close()
    bar.close()
    assert out.getvalue().count("\n") == 1


def test_an_unchanged_state_is_not_written_again_and_counts_are_clamped() -> None:
    out = io.StringIO()
    bar = Progress(2, stream=out, width=4, every=0.0)
    bar.update(1, "same")
    bar.update(1, "same")
    bar.update(7, "over")
    assert out.getvalue().splitlines() == ["[##..] 1/2 same", "[####] 2/2 over"]
    assert Progress(0, stream=io.StringIO(), width=4).render(0, "empty") == "[####] 0/0 empty"
