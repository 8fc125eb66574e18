"""The latency probe, in its own process:
``python -m bench.probe BOOTSTRAP EXPECTED DEADLINE_S DUMP_PATH TOPIC...``.

It reads a contender's output topics (read_committed, from their end offsets at start), and for
every output that carries ``sent_ns`` records two latencies, in microseconds:

* receipt: this process's wall clock when ``getmany`` handed the record over, minus ``sent_ns``
  (what a downstream consumer sees; for exactly-once it includes waiting for the commit);
* append: the output record's broker timestamp (the bench creates output topics with
  ``message.timestamp.type=LogAppendTime``, 1 ms resolution) minus ``sent_ns``.

It prints ``{"ready": true}`` once positioned. After EXPECTED outputs or its deadline it reads
one line from stdin, the ``sent_ns`` at which the measured window opens (the events before it
are the warm-up; an empty line: none), and prints one JSON line with the counts and the
percentiles of the window. With a DUMP_PATH (an empty argument: none) it also writes every
sample there, warm-up included, one ``sent_ns receipt_us`` line each, in arrival order.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from array import array

from aiokafka import AIOKafkaConsumer

from bench.measure import partitions
from bench.spec import die_with_parent, report
from bench.stats import percentiles

MARK = b'"sent_ns":'


def sent_ns(value: bytes | None) -> int | None:
    """The ``sent_ns`` field of a JSON value, found without decoding the whole document."""
    if value is None:
        return None
    at = value.find(MARK)
    if at < 0:
        return None
    start = at + len(MARK)
    end = start
    while end < len(value) and 48 <= value[end] <= 57:
        end += 1
    return int(value[start:end]) if end > start else None


def window(
    stamps: array[int], *latencies: array[int], measured_from_ns: int
) -> tuple[int, list[list[int]]]:
    """How many samples were stamped before ``measured_from_ns`` (the warm-up), and each of
    ``latencies`` restricted to the samples stamped from then on."""
    keep = [i for i, sent in enumerate(stamps) if sent >= measured_from_ns]
    return len(stamps) - len(keep), [[lat[i] for i in keep] for lat in latencies]


def _dump(path: str, stamps: array[int], receipt: array[int]) -> None:
    with open(path, "w") as out:
        out.writelines(f"{s} {r}\n" for s, r in zip(stamps, receipt, strict=True))


async def probe(
    bootstrap: str, expected: int, topics: list[str], deadline_s: float, dump: str | None
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, isolation_level="read_committed"
    )
    tps = await partitions(bootstrap, topics)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)
        report(ready=True)
        # No collector pauses in the figure: every record is freed by reference counting.
        gc.freeze()
        gc.disable()
        receipt: array[int] = array("q")
        append: array[int] = array("q")
        stamps: array[int] = array("q")
        seen = 0
        deadline = time.monotonic() + deadline_s
        while seen < expected and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = time.time_ns()
            for records in batches.values():
                seen += len(records)
                for r in records:
                    sent = sent_ns(r.value)
                    if sent is not None:
                        receipt.append((now - sent) // 1000)
                        stamps.append(sent)
                        append.append((r.timestamp * 1_000_000 - sent) // 1000)
        if dump:  # every sample, to see where in the phase a tail comes from
            await asyncio.to_thread(_dump, dump, stamps, receipt)
        line = await asyncio.to_thread(sys.stdin.readline)
        measured_from = int(line) if line.strip() else 0
        warmup, (in_receipt, in_append) = window(
            stamps, receipt, append, measured_from_ns=measured_from
        )
        report(
            outputs=seen,
            timed=len(in_receipt),
            warmup_timed=warmup,
            receipt_ms=percentiles(in_receipt),
            append_ms=percentiles(in_append),
        )
    finally:
        await asyncio.sleep(0)
        await consumer.stop()


def main(argv: list[str]) -> int:
    die_with_parent()
    bootstrap, expected, deadline, dump, *topics = argv
    asyncio.run(probe(bootstrap, int(expected), topics, float(deadline), dump or None))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
