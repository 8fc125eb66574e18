"""How much a fetch waits for, following the load of the worker's event loop.

Every fetch costs the worker and the broker about the same whatever it holds (a request, a
response, a produce request, an offset commit), so small fetches are cheap in latency only while
the event loop has time to spare. When its thread is busy, the queue behind it is the latency,
and larger fetches, fewer per second, shorten that queue (docs/performance.md, "Settings chosen
by measurement"). So the fetch moves between two settings: the light one (``kafka.fetch_min_bytes``
and ``kafka.fetch_max_wait_ms``) while the loop's thread is on a core less than ``IDLE_BELOW`` of
the time, towards the busy one (``..._busy``) while it is more than ``BUSY_FROM``, a quarter of
the way per look. The band between the two thresholds (a quarter of the upper one) is wider
than what the busy fetch took off the loop's load where it was measured (a tenth to a fifth),
so the level settles instead of swinging.
"""

from __future__ import annotations

from typing import NamedTuple

from worker.core.kafka_settings import KafkaSettings

BUSY_FROM = 0.6  # share of a core the loop's thread uses, above which fetches grow
IDLE_BELOW = 0.45  # and below which they shrink again
STEP = 0.25  # of the way from the light fetch to the busy one, per look


class Fetch(NamedTuple):
    min_bytes: int
    max_wait_ms: int


class FetchPace:
    """Where the fetch is between the light setting (level 0) and the busy one (level 1)."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.light = Fetch(kafka.fetch_min_bytes, kafka.fetch_max_wait_ms)
        self.busy = Fetch(*kafka.busy_fetch())
        self.level = 0.0

    @property
    def fetch(self) -> Fetch:
        """The fetch at the current level."""
        light, busy, at = self.light, self.busy, self.level
        return Fetch(*(round(lo + at * (hi - lo)) for lo, hi in zip(light, busy, strict=True)))

    def observe(self, loop_share: float) -> Fetch | None:
        """Take one look at the share of a core the loop's thread used since the last; the new
        fetch if it changes, else ``None``."""
        if loop_share > BUSY_FROM:
            level = min(1.0, self.level + STEP)
        elif loop_share < IDLE_BELOW:
            level = max(0.0, self.level - STEP)
        else:
            return None
        if level == self.level:
            return None
        self.level = level
        return self.fetch
