"""Compiled routing off the event loop, so that routing a batch overlaps with publishing the one
before it.

The compiled module routes a batch on its two routing threads, which hold no Python object but
the (frozen) topics and never take the GIL (``logit_router_native.RouteJob``): the event loop
copies the batch's records in, goes on with its own work (publishing, acknowledgements,
commits, fetches), and takes the outputs when the job is done. The job wakes the loop with one
byte on a pipe the loop watches, the way asyncio wakes itself, so no Python thread and no lock
are involved.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from worker.core.native import Compiled
from worker.core.records import ConsumedRecord, Router

if TYPE_CHECKING:
    from logit_router_native import RouteJob

Routed = list[Compiled | None] | None  # ``Router.compiled``'s result


class Offload:
    """Begins compiled routing jobs and resolves their futures on the loop it was made on."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._read, self._write = os.pipe()
        os.set_blocking(self._read, False)
        os.set_blocking(self._write, False)  # a full pipe wakes the loop already
        self._loop.add_reader(self._read, self._woken)
        self._jobs: list[tuple[RouteJob, asyncio.Future[Routed]]] = []

    def route(self, router: Router, records: Sequence[ConsumedRecord]) -> asyncio.Future[Routed]:
        """``router.compiled(records)``, routed on the compiled module's threads."""
        future: asyncio.Future[Routed] = self._loop.create_future()
        job = router.begin(records, self._write)
        if job is None:
            future.set_result(None)  # the Python path: ``Router.finish`` routes them
        else:
            self._jobs.append((job, future))
        return future

    def _woken(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        waiting = []
        for job, future in self._jobs:
            if not job.done():
                waiting.append((job, future))
                continue
            try:
                routed = job.results()  # its byte is written before this returns
            except Exception as exc:  # noqa: BLE001 - the batch's to raise
                if not future.cancelled():
                    future.set_exception(exc)
                continue
            if not future.cancelled():
                future.set_result(routed)
        self._jobs = waiting

    def close(self) -> None:
        """Stop watching, once every job still running has finished (its outputs dropped): a job
        writes to the pipe, which must not be another file by then."""
        self._loop.remove_reader(self._read)
        for job, future in self._jobs:
            future.cancel()
            try:
                job.results()  # waits for the job: a batch's routing at most
            except Exception:  # noqa: BLE001, S110 - dropped anyway
                pass
        self._jobs = []
        os.close(self._read)
        os.close(self._write)
