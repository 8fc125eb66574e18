"""``python -m bench.route_cost``: the CPU per event of ``Router.process`` alone, no broker,
for the benchmark's policies plain and with ``spec.SHADOW_AND_SAMPLE`` (and each half of it),
on both paths: what a shadow and the audit sample add to the routing itself."""

from __future__ import annotations

import time
from typing import Any

from bench.spec import POLICIES, SHADOW_AND_SAMPLE, WIDTHS
from worker.core.records import ConsumedRecord, Router
from worker.core.settings import Settings
from worker.devkit import traffic

PER_WIDTH = 20_000
REPEATS = 5
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "shadow + sample": SHADOW_AND_SAMPLE,
    "shadow": {"shadow": SHADOW_AND_SAMPLE["shadow"]},
    "sample": {"audit_sample_rate": SHADOW_AND_SAMPLE["audit_sample_rate"]},
}


class _Record:
    __slots__ = ("headers", "key", "offset", "partition", "timestamp", "topic", "value")

    def __init__(self, topic: str, offset: int, event: traffic.Event) -> None:
        self.topic, self.partition, self.offset, self.timestamp = topic, 0, offset, 1
        self.key, self.value, self.headers = event.key, event.value, event.headers


def records() -> list[ConsumedRecord]:
    return [
        _Record(f"w{w}", i, e)
        for w in WIDTHS
        for i, e in enumerate(traffic.synthetic(PER_WIDTH, seed=w, classes=w))
    ]


def cpu_us_per_event(router: Router, recs: list[ConsumedRecord]) -> float:
    """The best of a few runs: the least disturbed by whatever else the machine runs."""
    best = float("inf")
    for _ in range(REPEATS):
        started = time.process_time()
        router.process(recs)
        best = min(best, time.process_time() - started)
    return best / len(recs) * 1e6


def main() -> int:
    recs = records()
    for native_on in (True, False):
        for name, extra in VARIANTS.items():
            topics = {f"w{w}": {**POLICIES[w], **extra} for w in WIDTHS}
            router = Router(Settings(topics=topics, processing={"native": native_on}))
            path = "python" if router.native_topics is None else "compiled"
            print(f"{path:8} {name:16} {cpu_us_per_event(router, recs):6.2f} µs/event")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
