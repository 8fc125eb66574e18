"""Reloading the config without a restart: on SIGHUP and on ``POST /-/reload``.

The file and the environment are read again (``load_settings``) and compared with the running
config (``worker.core.changes``). A new routing part (``topics``, ``limits``) is applied at a
batch boundary: the new version is recorded in the config history (``record``), a new
``Router`` is built, then swapped in under the loop's batch lock, so a batch is routed entirely
by one config version. A config that does not validate, one that changes what is read only at
start, or one that cannot be recorded is refused, and the running config stays. One log line
per reload, and ``logit_router_config_reloads_total{result}``.

Adding or removing an input topic re-subscribes the consumer, which is a rebalance; a change of
policies alone is not. Optionally the file is watched (``watch``): a mounted Kubernetes
ConfigMap changes under the worker, and no one sends it a signal.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

from worker.core.changes import Result, compare
from worker.core.errors import ConfigError
from worker.core.records import Router
from worker.core.settings import Settings, load_settings
from worker.stream.pipeline import Worker

log = logging.getLogger(__name__)

# Called after a reload is applied, outside the batch lock.
OnApplied = Callable[[Settings], Awaitable[None]]
# Records a new version before it routes (the config history); raises if it cannot.
Record = Callable[[Settings], Awaitable[None]]


class Outcome(NamedTuple):
    result: Result
    version: str  # the config_version in use afterwards
    detail: str  # one line: what changed, or why it was refused


class Reloader:
    def __init__(
        self,
        path: Path | None,
        worker: Worker,
        on_applied: OnApplied | None = None,
        requested: asyncio.Event | None = None,
        record: Record | None = None,
    ):
        self.path = path
        self.worker = worker
        self.on_applied = on_applied
        self.record = record
        self.requested = requested or asyncio.Event()  # what SIGHUP sets
        self._one_at_a_time = asyncio.Lock()
        self._read = file_signature(path)  # the file as last read, for ``watch``

    async def reload(self, source: str) -> Outcome:
        """Read the config again and apply it if it can be; one log line says what happened."""
        async with self._one_at_a_time:
            old = self.worker.settings.config_version
            outcome, applied = await self._reload()
            self.worker.metrics.config_reloads.labels(outcome.result).inc()
            if outcome.result == "refused":
                log.warning("config reload (%s) refused, %s stays: %s", source, old, outcome.detail)
            else:
                log.info(
                    "config reload (%s) %s: %s -> %s: %s",
                    source, outcome.result, old, outcome.version, outcome.detail,
                )  # fmt: skip
            if applied is not None and self.on_applied is not None:
                try:
                    await self.on_applied(applied)
                except Exception as exc:  # noqa: BLE001 - the reload itself stands
                    log.warning("after the reload: %s: %s", type(exc).__name__, exc)
        return outcome

    async def _reload(self) -> tuple[Outcome, Settings | None]:
        running = self.worker.settings
        self._read = file_signature(self.path)
        if self.worker.stopping:  # a drain is never disturbed by a new config
            return Outcome("refused", running.config_version, "the worker is stopping"), None
        try:
            new = load_settings(self.path)
        except ConfigError as exc:
            return Outcome("refused", running.config_version, str(exc)), None
        change = compare(running, new)
        if change.result == "refused":
            return Outcome("refused", running.config_version, change.refusal()), None
        if change.result == "unchanged":
            return Outcome("unchanged", running.config_version, "no change"), None
        why_not = await self.worker.inputs_refusal(new) if change.resubscribes else None
        if why_not is not None:
            return Outcome("refused", running.config_version, why_not), None
        if self.record is not None:
            # Recorded before it routes, as at start: an output never names a version that
            # ``replay --as-published`` cannot find. Unrecorded, the running config stays.
            try:
                await self.record(new)
            except Exception as exc:  # noqa: BLE001 - whatever the reason, it is not recorded
                why = f"{new.config_version} cannot be recorded: {exc}"
                return Outcome("refused", running.config_version, why), None
        router = Router(new)  # built before the lock: a batch waits only for the swap
        await self.worker.apply(new, router, resubscribe=change.resubscribes)
        detail = "; ".join(change.routing)
        if change.resubscribes:
            detail += "; input topics changed: re-subscribing (a rebalance)"
        return Outcome("applied", new.config_version, detail), new

    async def on_signal(self) -> None:
        """Reload each time ``requested`` is set (by SIGHUP), until cancelled."""
        while True:
            await self.requested.wait()
            self.requested.clear()
            await self.reload("SIGHUP")

    async def watch(self, every_s: float) -> None:
        """Reload when the file has changed since it was last read, looking every ``every_s``
        seconds, until cancelled. A missing file is not a change (it is being replaced)."""
        while True:
            await asyncio.sleep(every_s)
            seen = file_signature(self.path)
            if seen is not None and seen != self._read:
                await self.reload("file changed")

    async def http(self) -> tuple[bool, str]:
        """``POST /-/reload``: whether it was refused, and the one line to answer with."""
        outcome = await self.reload("POST /-/reload")
        if outcome.result == "refused":
            return False, "refused: " + outcome.detail.replace("\n", " ")
        return True, f"{outcome.result} {outcome.version}"


def file_signature(path: Path | None) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten or replaced (a ConfigMap swaps a symlink)."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
