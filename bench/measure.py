"""What the parent measures from outside a contender: its CPU time and memory from ``/proc``,
its group's committed offsets, and the outputs it wrote (counted by reading them back)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from worker.core.kafka_settings import KafkaSettings
from worker.stream import admin

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _ticks(stat: str) -> int:
    """User plus system time in a ``/proc/…/stat`` file, in clock ticks."""
    with open(stat) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime: fields 14, 15


def free_memory_mb() -> float:
    """The machine's ``MemFree`` (``/proc/meminfo``), in MiB: memory no page of which is used."""
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system time of every thread of ``pid`` so far (``/proc/PID/stat``)."""
    return _ticks(f"/proc/{pid}/stat") / CLK_TCK


def jit_seconds(pid: int) -> float:
    """CPU time so far of the JVM ``pid``'s JIT compiler threads (``C1/C2 CompilerThreadN``)."""
    total = 0
    for task in os.scandir(f"/proc/{pid}/task"):
        try:
            with open(f"{task.path}/comm") as fh:
                if fh.read().startswith(("C1 CompilerThre", "C2 CompilerThre")):
                    total += _ticks(f"{task.path}/stat")
        except OSError:  # the thread ended between the listing and the read
            continue
    return total / CLK_TCK


def memory_mb(pid: int) -> dict[str, float]:
    """Resident set size now (VmRSS) and at its peak so far (VmHWM), in MiB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(rest.split()[0]) / 1024
    return out


class RssWindows:
    """Resident memory early and late in a phase: the highest ``VmRSS`` polled over its first
    tenth of the events (up to the first poll at 10 % or more) and over its last tenth (from
    the first poll at 90 %). Peaks of windows, not two instants: with batches in flight one
    poll's RSS moves more than the target allows (docs/performance.md), and a leak shows as the
    late window's peak above the early one's."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.first = 0.0
        self.last = 0.0
        self._first_open = True

    def add(self, done: int, rss_mb: float) -> None:
        if self._first_open:
            self.first = max(self.first, rss_mb)
            self._first_open = done < self.total / 10
        if done >= self.total * 0.9:
            self.last = max(self.last, rss_mb)

    def growth(self) -> float:
        """The late window's peak over the early one's, minus 1."""
        return self.last / self.first - 1 if self.first else 0.0


async def committed(client: AIOKafkaAdminClient, group: str) -> dict[TopicPartition, int]:
    """The group's committed offsets; none while its coordinator is not there yet (a fresh
    broker creates ``__consumer_offsets`` on the first group's request)."""
    try:
        offsets = await client.list_consumer_group_offsets(group)
    except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
        return {}
    return {tp: om.offset for tp, om in offsets.items() if om.offset >= 0}


def progress(seen: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int]) -> int:
    """Events committed so far, counting each partition up to its end offset."""
    return sum(min(seen.get(tp, 0), end) for tp, end in ends.items())


@dataclass
class Counted:
    records: int
    last_timestamp_ms: int  # the latest broker timestamp among them


async def count_records(
    bootstrap: str, ends: Mapping[TopicPartition, int], timeout_s: float
) -> Counted:
    """Read every committed record below ``ends`` and count it (transaction markers take
    offsets but are not records, so offsets alone would over-count exactly-once outputs)."""
    tps = [tp for tp, end in ends.items() if end > 0]
    counted = Counted(0, 0)
    if not tps:
        return counted
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8_388_608,
        fetch_max_bytes=67_108_864,
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"counting outputs took longer than {timeout_s:g}s")
            batches = await consumer.getmany(timeout_ms=500, max_records=50_000)
            for tp, records in batches.items():
                end = ends[tp]
                for r in records:
                    if r.offset < end:
                        counted.records += 1
                        counted.last_timestamp_ms = max(counted.last_timestamp_ms, r.timestamp)
                if records and records[-1].offset + 1 >= end:
                    consumer.pause(tp)
    finally:
        await asyncio.sleep(0)
        await consumer.stop()
    return counted


async def end_offsets(bootstrap: str, topics: Iterable[str]) -> dict[TopicPartition, int]:
    return await admin.end_offsets(KafkaSettings(bootstrap_servers=bootstrap), topics)
