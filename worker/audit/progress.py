"""A one-line progress bar on stderr, drawn only when stderr is a terminal.

Nothing is written when the stream is a file or a pipe, so logs and captured output stay
clean and a command's output never depends on where it was run from.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30
EVERY_S = 0.1  # redraw at most ten times a second


class Progress:
    def __init__(
        self, label: str, total: int, stream: TextIO | None = None, enabled: bool | None = None
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.label = label
        self.total = max(total, 0)
        self.done = 0
        self._drawn = 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled and time.monotonic() - self._drawn >= EVERY_S:
            self._draw()

    def close(self) -> None:
        if self.enabled:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self._drawn = time.monotonic()
        self.stream.write("\r" + bar(self.label, self.done, self.total))
        self.stream.flush()


def bar(label: str, done: int, total: int) -> str:
    """``replay [#########.....................]  31%  310/1000``"""
    share = 1.0 if total <= 0 else min(done / total, 1.0)
    filled = round(share * WIDTH)
    return f"{label} [{'#' * filled}{'.' * (WIDTH - filled)}] {share:4.0%}  {done}/{total}"
