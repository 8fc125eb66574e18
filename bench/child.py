"""A contender in its own process: ``python -m bench.child SPEC.json``.

* ``raw``: the ceiling. aiokafka consume and produce, nothing else: ``getmany``, send every
  record unchanged to one topic, await every acknowledgement, commit, with the worker's own
  client factories, tuning (``worker.stream.connections``) and record-batch publishing
  (``worker.stream.publish``), so only the work in between differs.
* ``worker``: this project's worker, ``worker.stream.service.serve`` exactly as ``logit-router run``
  runs it (uvloop, signals, metrics, the garbage collector's tuning), with the guarantee the
  spec names. (Until this was noticed, the bench left out ``tune_gc``, which ``run`` calls.)
* ``quix``: the Quix Streams application in ``bench.quix_app``.
* ``faststream``: the FastStream application in ``bench.faststream_app``, on the worker's event
  loop (uvloop). (``kstreams``, the Kafka Streams peer, is a JVM: ``bench.kstreams``.)

With ``BENCH_PROFILE`` set to a path, the whole run is profiled with cProfile into it.
Each prints one JSON line when its first records arrive (see ``spec.FirstConsumed``), runs
until SIGTERM, and exits 0; exit 2 when the worker refuses its settings.
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from bench.spec import (
    PROFILE_ENV,
    FirstConsumed,
    Spec,
    die_with_parent,
    read_spec,
    report,
    worker_config,
)


def _watch_getmany(first: FirstConsumed) -> None:
    """Wrap ``AIOKafkaConsumer.getmany`` to see the first non-empty fetch: one extra frame per
    batch, the same for the raw pipe and the worker."""
    from aiokafka import AIOKafkaConsumer

    original = AIOKafkaConsumer.getmany

    async def getmany(self: AIOKafkaConsumer, *args: Any, **kwargs: Any) -> Any:
        batches = await original(self, *args, **kwargs)
        if batches and not first.done:
            first()
        return batches

    AIOKafkaConsumer.getmany = getmany


async def _raw(spec: Spec, stop: asyncio.Event) -> int:
    from aiokafka.structs import OffsetAndMetadata

    from worker.core.records import Outbound
    from worker.core.settings import Settings
    from worker.stream.connections import acknowledged, make_consumer, make_producer
    from worker.stream.publish import Publisher

    settings = Settings(**worker_config(spec))
    kafka = settings.kafka
    out = settings.outputs.routed
    max_records = settings.processing.batch_records
    producer = make_producer(kafka)
    consumer = make_consumer(kafka, group_id=kafka.group_id)
    await producer.start()
    await consumer.start()
    publisher = Publisher(producer, kafka.max_batch_size, {}, compression=kafka.compression_type)
    try:
        consumer.subscribe(sorted(settings.topics))
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=max_records)
            if not batches:
                continue
            outputs = [
                Outbound(out, r.key, r.value, list(r.headers), "routed", None, "", 0, 0, 0, None)
                for rs in batches.values()
                for r in rs
            ]
            await acknowledged([sent.future for sent in await publisher.send(outputs)])
            await consumer.commit(
                {tp: OffsetAndMetadata(rs[-1].offset + 1, "") for tp, rs in batches.items()}
            )
    finally:
        await consumer.stop()
        await producer.stop()
    return 0


async def _worker(spec: Spec, stop: asyncio.Event) -> int:
    from pydantic import ValidationError

    from worker.core.settings import Settings, describe_validation_error
    from worker.stream.service import serve

    try:
        settings = Settings(**worker_config(spec))
    except ValidationError as exc:
        report(refused=describe_validation_error(exc))
        return 2
    return await serve(settings, stop)


def _faststream(first: FirstConsumed) -> Callable[[Spec, asyncio.Event], Awaitable[int]]:
    async def run(spec: Spec, stop: asyncio.Event) -> int:
        from bench.faststream_app import serve

        return await serve(spec, first, stop)

    return run


def main(argv: list[str]) -> int:
    die_with_parent()
    profile_to = os.environ.get(PROFILE_ENV)
    if not profile_to:
        return _main(argv)
    profiler = cProfile.Profile()
    try:
        return profiler.runcall(_main, argv)
    finally:
        profiler.dump_stats(profile_to)


def _main(argv: list[str]) -> int:
    spec = read_spec(argv[0])
    first = FirstConsumed()
    if spec["kind"] == "quix":
        from bench.quix_app import run_quix

        return run_quix(spec, first)
    from worker.observability import logs
    from worker.stream.service import install_stop_handlers, run_loop, tune_gc

    logs.configure("WARNING")
    if spec["kind"] == "faststream":  # its handler reports the first records; no worker tuning
        contender = _faststream(first)
    else:
        _watch_getmany(first)
        contender = _raw if spec["kind"] == "raw" else _worker
        # As `logit-router run` starts the worker (worker.stream.service.run); the raw pipe
        # gets the same, so that the ceiling is this client in the same process set-up.
        tune_gc()

    async def run() -> int:
        stop = asyncio.Event()
        install_stop_handlers(stop)
        return await contender(spec, stop)

    return run_loop(run)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
