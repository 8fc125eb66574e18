"""What a running worker is waiting on: ``kill -USR1 <pid>`` logs the stack of every thread
and of every asyncio task, as a JVM prints its threads on SIGQUIT.

A worker that has stopped making progress without failing (a request that never completes, a
lock never released) shows nothing in its metrics but a flat line; its stacks say where it
waits. The dump is one log record at WARNING, written from the event loop, so a dump that
does not come is itself the answer: the loop is blocked (``/healthz`` then times out too).
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
import sys
import threading
import traceback

log = logging.getLogger(__name__)

DUMP_SIGNAL = signal.SIGUSR1


def dump() -> str:
    """Every thread's stack, then every pending task's, as text."""
    out = io.StringIO()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.write(f"--- thread {names.get(ident, '?')} ({ident})\n")
        out.write("".join(traceback.format_stack(frame)))
    try:
        tasks = sorted(asyncio.all_tasks(), key=lambda t: t.get_name())
    except RuntimeError:  # no running loop
        tasks = []
    for task in tasks:
        out.write(f"--- task {task.get_name()}: {task.get_coro()!r}\n")
        task.print_stack(file=out)
    return out.getvalue()


def install_dump_handler() -> None:
    """Log :func:`dump` on SIGUSR1, from the running loop."""

    def handle() -> None:
        log.warning("SIGUSR1: stacks of every thread and task\n%s", dump())

    asyncio.get_running_loop().add_signal_handler(DUMP_SIGNAL, handle)
