"""Reading what a JVM or Maven printed: the telling line, and the last lines."""

from __future__ import annotations

import os
import re
from pathlib import Path


def _java_error_line(output: str) -> str:
    """The most telling line of a JVM's output: the exception message, if any."""
    lines = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and not ln.startswith(("\t", " ")) and not ln.startswith("Caused by")
    ]
    for ln in lines:
        m = re.search(r"(?:^|\s)([\w.$]*(?:Exception|Error)): (.+)$", ln)
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"[:300]
    return lines[-1][:300] if lines else "no output"


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return _tail_text(data, lines)
