"""Progress of a long operator command, written to stderr so stdout stays machine-readable."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A bar redrawn in place on a terminal; elsewhere (a pipe, a CI log) one plain line per
    change, at most one every ``every`` seconds, so a log is not flooded with redraws.

    The last state is always written, so whoever reads the log sees where it ended.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        width: int = 24,
        every: float = 2.0,
    ) -> None:
        self.total = max(total, 0)
        self._stream = stream if stream is not None else sys.stderr
        self._width = width
        self._every = every
        self._tty = self._stream.isatty()
        self._last_line = ""
        self._last_written = float("-inf")
        self._open = False
        self._unwritten: str | None = None

    def render(self, done: int, label: str) -> str:
        shown = min(max(done, 0), self.total)
        filled = self._width * shown // self.total if self.total else self._width
        bar = "#" * filled + "." * (self._width - filled)
        return f"[{bar}] {shown}/{self.total} {label}"

    def update(self, done: int, label: str) -> None:
        line = self.render(done, label)
        if line == self._last_line:
            return
        self._last_line = line
        final = done >= self.total
        if self._tty:
            self._stream.write(f"\r{line:<78}")
            self._open = True
            if final:
                self.close()
        else:
            now = time.monotonic()
            if final or now - self._last_written >= self._every:
                self._stream.write(line + "\n")
                self._last_written = now
                self._unwritten = None
            else:
                self._unwritten = line
        self._stream.flush()

    def close(self) -> None:
        """End the redrawn line, or write the state a pipe has not been shown yet; for a
        command that stops before the total."""
        if self._unwritten is not None:
            self._stream.write(self._unwritten + "\n")
            self._stream.flush()
            self._unwritten = None
        if self._open:
            self._stream.write("\n")
            self._stream.flush()
            self._open = False
