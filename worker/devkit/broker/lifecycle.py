"""Live brokers: stopped at interpreter exit and on SIGTERM.

* **Cleanup, always.** ``stop()`` is graceful (SIGTERM, then SIGKILL after a
  grace period) and idempotent, and removes the temporary directory. Every
  live broker is also stopped at interpreter exit (``atexit``) and on SIGTERM
  (a handler is installed if SIGTERM still has its default action; it cleans
  up, then lets the signal kill the process as before).

Neither runs when the Python process is SIGKILLed; ``spawn`` covers that case.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from types import FrameType

from worker.devkit.broker.base import Broker

_live: set[Broker] = set()
_live_lock = threading.Lock()
_atexit_registered = False
_sigterm_installed = False


def _register(broker: Broker) -> None:
    global _atexit_registered
    with _live_lock:
        _live.add(broker)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True
    _install_sigterm_handler()


def _unregister(broker: Broker) -> None:
    with _live_lock:
        _live.discard(broker)


def _stop_all() -> None:
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> None:
    """Clean up on SIGTERM, but only where nobody else handles it."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True
