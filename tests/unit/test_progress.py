"""The progress bar: drawn on a terminal (a real pseudo-terminal here), silent otherwise."""

from __future__ import annotations

import io
import os
import pty

from worker.audit.progress import Progress, bar


def test_bar_text() -> None:
    assert bar("replay", 0, 10) == "replay [" + "." * 30 + "]   0%  0/10"
    assert bar("replay", 5, 10) == "replay [" + "#" * 15 + "." * 15 + "]  50%  5/10"
    assert bar("x", 3, 0) == "x [" + "#" * 30 + "] 100%  3/0"


def test_nothing_is_written_when_stderr_is_not_a_terminal() -> None:
    stream = io.StringIO()
    p = Progress("replay", 100, stream=stream)
    assert not p.enabled
    p.advance(50)
    p.close()
    assert stream.getvalue() == ""


def test_a_terminal_gets_the_bar() -> None:
    main, side = pty.openpty()
    try:
        with os.fdopen(side, "w", closefd=False) as stream:
            p = Progress("replay", 4, stream=stream)
            assert p.enabled
            p.advance(4)
            p.close()
        written = os.read(main, 4096).decode()
    finally:
        os.close(main)
        os.close(side)
    assert "\rreplay [" in written and "100%  4/4" in written
