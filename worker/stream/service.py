"""The worker as a long-running service: event loop, signals, HTTP endpoints, exit status.

Signal handlers only set state (as uvicorn does): the first SIGTERM or SIGINT asks for a
graceful stop (stop fetching, finish and commit the batch in hand, close), a second one forces
the exit. Containers send SIGTERM, and ``asyncio.run`` alone handles only SIGINT. SIGHUP asks
for a reload of the config (``worker.stream.reload``), as does ``POST /-/reload``; a reload
never stops or shortens a drain. SIGUSR1 logs every thread's and task's stack
(``worker.observability.stacks``).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from worker.core import native
from worker.core.settings import Settings
from worker.observability.health import HealthServer
from worker.observability.metrics import Metrics
from worker.observability.stacks import install_dump_handler
from worker.stream import history
from worker.stream.connections import FatalError, aiokafka_c_extension
from worker.stream.pipeline import DrainTimeout, Worker, cancelled
from worker.stream.reload import OnApplied, Reloader

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_FORCED = 130


def run_loop(main: Callable[[], Awaitable[int]]) -> int:
    """Run ``main`` on uvloop when it is installed (faster I/O), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(main())  # type: ignore[arg-type]
    return uvloop.run(main())  # type: ignore[arg-type]


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.error("second %s: exiting now", signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info("%s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handle, sig)


def install_reload_handler(requested: asyncio.Event) -> None:
    """SIGHUP sets ``requested``; the reload runs in the worker's own task."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, requested.set)


async def serve(
    settings: Settings,
    stop: asyncio.Event,
    registry: CollectorRegistry | None = None,
    on_ready: Callable[[Worker, HealthServer | None], None] | None = None,
    config_path: Path | None = None,
    reload_requested: asyncio.Event | None = None,
    on_applied: OnApplied | None = None,
    watch_s: float | None = None,
) -> int:
    """Run the worker and its HTTP endpoints until ``stop``; return the exit status.

    A reload reads ``config_path`` and the environment again: when ``reload_requested`` is set
    (by SIGHUP), on ``POST /-/reload``, and when the file changes if ``watch_s`` says how often
    to look; ``on_applied`` is called after each applied one."""
    registry = registry if registry is not None else CollectorRegistry()
    worker = Worker(settings, Metrics(settings, registry))

    # As at start, every version that routes is recorded first.
    reloader = Reloader(config_path, worker, on_applied, reload_requested, history.publish)
    http: HealthServer | None = None
    if settings.http.enabled:
        http = HealthServer(
            registry, lambda: worker.ready, settings.http.host, settings.http.port, reloader.http
        )
        try:
            await http.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", settings.http.host, settings.http.port, exc)
            return EXIT_FAILURE
    if on_ready is not None:
        on_ready(worker, http)
    reloading = [asyncio.create_task(reloader.on_signal())]
    if watch_s is not None:
        reloading.append(asyncio.create_task(reloader.watch(watch_s)))
    try:
        await worker.run(stop)
    except (FatalError, DrainTimeout) as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    finally:
        for task in reloading:
            await cancelled(task)
        if http is not None:
            await http.stop()
    log.info("stopped cleanly after %d records", worker.processed)
    return EXIT_OK


def tune_gc() -> None:
    """Fewer, later garbage collections: the start-up objects are frozen out of every scan and
    the young generation may grow past what two batches in hand keep alive (tens of thousands
    of tuples), since a batch makes many short-lived objects and no cycles to speak of (what
    it saves: docs/performance.md)."""
    gc.freeze()
    gc.set_threshold(100_000, 20, 20)


def run(
    settings: Settings,
    stop_requested: Callable[[], bool] = lambda: False,
    config_path: Path | None = None,
    watch_s: float | None = None,
) -> int:
    """The worker until a stop; ``config_path`` is the file a reload reads again, and
    ``watch_s`` how often to look whether it changed (never when ``None``)."""
    tune_gc()
    if not aiokafka_c_extension():
        log.warning("aiokafka runs without its C extension: expect a much slower worker")
    if settings.processing.native and not native.available():
        log.warning("logit_router_native is not installed: routing in Python (slower, same output)")

    async def main() -> int:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        reload_requested = asyncio.Event()
        install_reload_handler(reload_requested)
        install_dump_handler()
        if stop_requested():  # a signal came before the loop could take it
            stop.set()
        return await serve(
            settings,
            stop,
            config_path=config_path,
            reload_requested=reload_requested,
            watch_s=watch_s,
        )

    return run_loop(main)
