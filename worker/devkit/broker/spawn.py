"""Spawning the JVM: pdeathsig, from a thread that lives as long as the process.

* **PR_SET_PDEATHSIG.** ``atexit`` and signal handlers do not run when the
  Python process is SIGKILLed or crashes; without this a JVM would linger,
  holding ports and ~500 MB. The kernel SIGKILLs the JVM when the *thread*
  that forked it ends, so forks are done from the main thread or from one
  long-lived helper thread, never from a short-lived worker thread (e.g. an
  ``asyncio.to_thread`` call) that would take the broker down with it.
  Linux only; elsewhere it is skipped. The work dir of a SIGKILLed parent is
  left behind; each later local start removes those whose owner is dead.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Final, cast

_PR_SET_PDEATHSIG: Final = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


_SpawnJob = tuple[list[str], dict[str, Any], "concurrent.futures.Future[subprocess.Popen[bytes]]"]
_spawn_queue: queue.SimpleQueue[_SpawnJob] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        argv, kwargs, future = _spawn_queue.get()
        try:
            proc = cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **kwargs))  # noqa: S603
            future.set_result(proc)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            future.set_exception(exc)


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen with pdeathsig; forks from the main thread or a permanent one."""
    kwargs["preexec_fn"] = _pdeathsig_preexec()
    if threading.current_thread() is threading.main_thread():
        return cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **kwargs))  # noqa: S603
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(
                target=_spawner_loop, name="logit-router-broker-spawner", daemon=True
            )
            _spawner.start()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _spawn_queue.put((argv, kwargs, future))
    return future.result()
