"""Routing on the compiled module's own thread (``worker.stream.offload``) gives what
``Router.process`` gives, on a running event loop, and closing it while a job runs is safe."""

from __future__ import annotations

import asyncio
import os

import pytest

from tests.consumed import Consumed
from tests.integration.hostile_corpus import HOSTILE
from worker.core import native
from worker.core.records import Outbound, Router
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.stream.offload import Offload

TOPICS = {
    "w3": {"temperature": 0.7, "min_margin": 0.15, "labels": ["cat", "dog", "bird"]},
    "w100": {
        "temperature": 1.5,
        "min_margin": 0.05,
        "min_top1": 0.2,
        "shadow": {"temperature": 1.1, "min_margin": 0.1},
        "audit_sample_rate": 0.3,
    },
}
NEEDS_NATIVE = pytest.mark.skipif(
    not native.available() and os.environ.get("LOGIT_ROUTER_EXPECT_NATIVE") != "1",
    reason="logit_router_native is not installed (no cargo at install)",
)


def _records(count: int, seed: int = 1) -> list[Consumed]:
    """Both topics interleaved, malformed and hostile records among them (the Python path's)."""
    events = [
        *traffic.synthetic(count // 2, seed=seed, classes=3, malformed_rate=0.1),
        *traffic.synthetic(count - count // 2, seed=seed + 1, classes=100, malformed_rate=0.1),
    ]
    raws: list[bytes | None] = [e.value for e in events]
    raws[1::7] = [HOSTILE[i % len(HOSTILE)].value for i in range(len(raws[1::7]))]
    raws[3:4] = [None] * len(raws[3:4])  # a tombstone
    return [
        Consumed(("w3", "w100")[i % 2], i % 3, 100 + i, 1_700_000_000_000 + i, b"k", raw, [])
        for i, raw in enumerate(raws)
    ]


def _router(native_on: bool = True) -> Router:
    return Router(Settings(topics=TOPICS, processing={"native": native_on}))


async def _offloaded(router: Router, batches: list[list[Consumed]]) -> list[list[Outbound]]:
    offload = Offload()
    try:
        futures = [offload.route(router, recs) for recs in batches]  # all running at once
        return [router.finish(recs, await fut) for recs, fut in zip(batches, futures, strict=True)]
    finally:
        offload.close()


@NEEDS_NATIVE
@pytest.mark.parametrize("count", [1, 255, 256, 2_001])
def test_offloaded_outputs_equal_the_router_s_own(count: int) -> None:
    """Below and above the size where a job is split over two threads, several at once."""
    router = _router()
    batches = [_records(count, seed) for seed in range(3)]
    got = asyncio.run(_offloaded(router, batches))
    for recs, outputs in zip(batches, got, strict=True):
        assert outputs == router.process(recs)
    kinds = {o.kind for outputs in got for o in outputs}
    assert kinds == {"routed", "escalated", "dead_letter"} or count < 256


def test_without_the_compiled_module_the_python_path_routes() -> None:
    router = _router(native_on=False)
    recs = _records(300)
    (outputs,) = asyncio.run(_offloaded(router, [recs]))
    assert outputs == router.process(recs)


@NEEDS_NATIVE
def test_closing_while_a_job_runs_waits_for_it_and_cancels_its_future() -> None:
    async def run() -> tuple[bool, int, int]:
        offload = Offload()
        read_fd, write_fd = offload._read, offload._write
        future = offload.route(_router(), _records(20_000))
        offload.close()
        return future.cancelled(), read_fd, write_fd

    cancelled, read_fd, write_fd = asyncio.run(run())
    assert cancelled
    for fd in (read_fd, write_fd):
        with pytest.raises(OSError):
            os.fstat(fd)  # closed: no thread is left to write to it


@NEEDS_NATIVE
def test_a_job_gives_its_results_once() -> None:
    recs = _records(10)
    router = _router()
    read_fd, write_fd = os.pipe()
    try:
        job = router.begin(recs, write_fd)
        assert job is not None
        first = job.results()  # waits for the thread
        assert job.done()
        assert os.read(read_fd, 16) == b"\x01"  # it woke whoever watches the pipe
        assert first == router.compiled(recs)
        with pytest.raises(RuntimeError, match="taken already"):
            job.results()
    finally:
        os.close(read_fd)
        os.close(write_fd)
