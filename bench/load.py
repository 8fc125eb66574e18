"""Traffic for the benchmark: the seeded pre-fill, and the paced producer of the latency phase.

Events come from ``worker.devkit.traffic.synthetic`` (the demo's and the tests' generator): 2 % are
malformed on purpose, 30 % uncertain. The pre-fill splits the count evenly over the three
widths (3, 10 and 100 classes), one input topic each.
"""

from __future__ import annotations

import asyncio
import gc
import time
from array import array
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import confluent_kafka
import orjson
from aiokafka import AIOKafkaProducer

from bench.stats import percentiles
from worker.devkit.traffic import synthetic

CHUNK = 20_000  # events in flight at once while pre-filling
# The paced producer sends what is due every 5 ms: as a producer with Kafka 4's default
# ``linger.ms`` of 5 (KIP-1030; librdkafka's default too) would. Every event is stamped with the
# time it was due, so the tick is part of every latency, as a linger would be.
TICK_S = 0.005
FLUSH_S = 60.0  # how long the paced load waits for its last acknowledgements
# Distinct events the paced load goes round: one prepared per event sent held gigabytes
# (docs/performance.md, "Memory").
LOAD_POOL = 200_000


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` counts differing by at most one, larger first."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def prefill(bootstrap: str, topics: dict[str, int], total: int, seed: int) -> int:
    """Publish ``total`` events over ``topics`` (topic -> width); return how many were acked."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=20,
        max_batch_size=1_048_576,
        max_request_size=8_388_608,
        acks=1,
    )
    await producer.start()
    sent = 0
    try:
        for (topic, width), count in zip(topics.items(), split(total, len(topics)), strict=True):
            events = synthetic(count, seed=seed + width, classes=width, id_prefix=f"w{width}")
            while True:
                chunk = [
                    await producer.send(topic, e.value, key=e.key, headers=e.headers)
                    for _, e in zip(range(CHUNK), events, strict=False)
                ]
                if not chunk:
                    break
                await asyncio.gather(*chunk)
                sent += len(chunk)
    finally:
        await producer.stop()
    return sent


class Prepared(NamedTuple):
    """One event of the paced load, encoded before the clock starts: a document is sent as
    ``head``, its due time in decimal, then ``tail``; a malformed event (``tail`` None) as
    ``head`` alone, unstamped."""

    topic: str
    head: bytes
    tail: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]

    def encoded(self, due_ns: int) -> bytes:
        if self.tail is None:
            return self.head
        return b"%s%d%s" % (self.head, due_ns, self.tail)


_PLACEHOLDER = 10**18  # stands for the stamp while encoding: where its digits are is where it goes


def prepare(topics: dict[str, int], count: int, seed: int) -> list[Prepared]:
    """``count`` events, round robin over the topics (topic -> width)."""
    per_topic = -(-count // len(topics))
    streams = [
        (topic, synthetic(per_topic, seed=seed + 7 * width, classes=width, id_prefix=f"l{width}"))
        for topic, width in topics.items()
    ]
    out: list[Prepared] = []
    while len(out) < count:
        for topic, events in streams:
            e = next(events)
            if e.expect_dead_letter:
                out.append(Prepared(topic, e.value, None, e.key, e.headers))
                continue
            document = orjson.loads(e.value)
            document["sent_ns"] = _PLACEHOLDER
            head, tail = orjson.dumps(document).split(b'"sent_ns":%d' % _PLACEHOLDER)
            out.append(Prepared(topic, head + b'"sent_ns":', tail, e.key, e.headers))
    return out[:count]


class Window(NamedTuple):
    """What the paced producer did: its rate over the whole phase, the stamp of the first event
    after the warm-up (every earlier event carries a smaller ``sent_ns``), and how late the
    events of the window went out against the time each was due (``stats.percentiles``, ms)."""

    achieved_rate: float
    measured_from_ns: int
    lag_ms: dict[str, float | None]


async def paced(
    bootstrap: str,
    prepared: Sequence[Prepared],
    rate: float,
    count: int,
    warmup: int = 0,
    on_measure: Callable[[], None] | None = None,
) -> Window:
    """Send ``count`` events at ``rate`` per second, going round the ``prepared`` ones, each
    stamped with ``sent_ns``, the time it was due: event ``i`` at ``start + i / rate``.

    The first ``warmup`` events are the warm-up: the same load, before the window that the
    percentiles are taken over (``Window.measured_from_ns``); ``on_measure`` is called as the
    window opens. The pacing runs in a thread of its own (``_pace``), so this process's event
    loop stays free.
    """
    return await asyncio.to_thread(_pace, bootstrap, prepared, rate, count, warmup, on_measure)


def _pace(
    bootstrap: str,
    prepared: Sequence[Prepared],
    rate: float,
    count: int,
    warmup: int,
    on_measure: Callable[[], None] | None,
) -> Window:
    """The paced producer. Events are encoded before the clock starts; on the way out only the
    stamp's digits are put in (``Prepared.encoded``): encoding every document again took CPU
    that, on two cores, the contender then lacked. A pool of them is sent round and round, not
    one prepared event per event sent: a whole phase's worth held gigabytes (``LOAD_POOL``).

    Each event carries the time it was due (one wall-clock reading at the start plus
    ``i / rate``), not the moment the loop reached it: a pacer that falls behind (a slow tick,
    a pause of this process) then shows up in every latency it delays, instead of hiding it
    (coordinated omission). How far behind it went, each event's moment of ``produce`` minus
    its due time, is measured over the window and reported beside the latency.

    It is librdkafka (confluent-kafka), not aiokafka. aiokafka's sender keeps one request in
    flight per broker, so a tick's events wait until the tick before is acknowledged: alone
    with a consumer at 16,000 events/s, that producer gave a p99 of 11 to 43 ms of its own,
    librdkafka (up to five requests in flight) 4 to 5 ms, for less than half the CPU
    (``docs/performance.md``). ``linger.ms`` is 1: a tick's events are handed over within a
    fraction of a millisecond, and with no linger librdkafka's sender woke at the first of
    them and sent each tick as several small requests. That millisecond comes after the due
    time, so every latency includes it. Keys are placed by murmur2, as the Java client and
    aiokafka place them (librdkafka's default hashes with CRC32).
    The garbage collector is frozen and off while pacing: with the prepared events alive, a
    full collection here took 300 to 360 ms, every 3 to 5 s, and every contender's tail
    latency carried those pauses of the load generator.
    """
    pool = len(prepared)
    failed: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer = confluent_kafka.Producer(
        {
            "bootstrap.servers": bootstrap,
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 1,
            "partitioner": "murmur2_random",
        }
    )
    interval_ns = 1e9 / rate
    lag_us: array[int] = array("q")  # the window's events only
    gc.freeze()
    gc.disable()
    try:
        # Due times on the wall clock (what the probe compares with), lag on the monotonic one.
        started_ns, started = time.time_ns(), time.monotonic_ns()
        sent = 0
        while sent < count:
            due = min(count, int((time.monotonic_ns() - started) / interval_ns) + 1)
            while sent < due:
                p = prepared[sent % pool]
                offset = round(sent * interval_ns)
                if sent == warmup and on_measure is not None:
                    on_measure()
                producer.produce(
                    p.topic,
                    p.encoded(started_ns + offset),
                    key=p.key,
                    headers=p.headers,
                    on_delivery=delivered,
                )
                if sent >= warmup:
                    lag_us.append(max(0, time.monotonic_ns() - started - offset) // 1000)
                sent += 1
            producer.poll(0)  # delivery reports
            time.sleep(TICK_S)
        elapsed = (time.monotonic_ns() - started) / 1e9
        left = producer.flush(FLUSH_S)
    finally:
        gc.enable()
        gc.unfreeze()
    if left or failed:
        reason = failed[0] if failed else f"not acknowledged within {FLUSH_S:g}s"
        raise RuntimeError(f"the paced load lost {left + len(failed)} events: {reason}")
    # The due time of the first event after the warm-up (of none, past the last one).
    measured_from = started_ns + round(min(warmup, count) * interval_ns)
    achieved = count / elapsed if elapsed > 0 else float(count)
    return Window(achieved, measured_from, percentiles(lag_us))
