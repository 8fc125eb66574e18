"""The sliding window of ``calibrate --watch``: outputs and verdicts of the last ``window``,
joined and measured as the one-shot ``calibrate`` does. No I/O: records come in, figures out.

What is in the window at time ``now``: verdicts whose record timestamp is at or after
``now - window``, and outputs whose record timestamp is. Each side is judged by its own
record time, as ``calibrate --from (now - window)`` reads them, so the live figures equal
that command's over the same records. A verdict on an event published before the window
starts is ``unknown_id``, as it is there.

Memory is bounded twice. Only the outputs a verdict can be used on are kept: events escalated
for uncertainty or audit-sampled, and routed ones only with ``ground_truth``. A verdict on
anything else (a routed event, another input topic's) finds nothing kept and counts as
``unknown_id``: the one-shot report's ``routed_not_sampled`` and ``other_topic`` are folded
in there. Then each store holds at most its cap: past it the oldest arrivals are dropped and
counted, and the figures are those of the most recent records.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass

from worker.audit import calibrate
from worker.audit.verdicts import (
    ROUTED,
    Joined,
    Output,
    Outputs,
    Verdicts,
    join,
    parse,
    read_output,
)
from worker.core import calibration as cal
from worker.core.settings import Limits
from worker.core.topic_settings import TopicPolicy

# The counts the monitor can tell apart (see the module's docstring for unknown_id).
RESULTS = ("read", "malformed", "duplicates", "unknown_id", "unknown_label", "masked_label", "used")

ParsedVerdict = tuple[str, str | int] | None


@dataclass(frozen=True)
class Figures:
    """One refresh: ECE at the live and the fitted temperature, both binnings, the fit."""

    counts: dict[str, int]
    ece: dict[tuple[str, str], float]  # (temperature, binning) -> value; NaN below the minimum
    fitted: float  # NaN below the minimum
    kept_outputs: int
    kept_verdicts: int


class LiveWindow:
    def __init__(
        self,
        topic: str,
        limits: Limits,
        window_ms: int,
        ground_truth: bool,
        max_outputs: int,
        max_verdicts: int,
    ) -> None:
        self.topic, self.limits, self.window_ms = topic, limits, window_ms
        self.ground_truth = ground_truth
        self.max_outputs, self.max_verdicts = max_outputs, max_verdicts
        self._outputs: dict[str, tuple[int, Output]] = {}
        self._output_order: deque[tuple[int, str]] = deque()  # arrival order, for eviction
        self._verdicts: deque[tuple[int, int, int, ParsedVerdict]] = deque()
        self.dropped: Counter[str] = Counter()  # over a cap: "outputs", "verdicts"

    def add_output(self, raw: bytes | None, timestamp_ms: int) -> None:
        found = read_output(raw, self.topic, self.limits)
        if found is None:
            return  # unreadable
        event_id, out = found
        if out is None:
            return  # another input topic's: no verdict can be used on it
        if out.kind == ROUTED and not self.ground_truth:
            return
        self._outputs[event_id] = (timestamp_ms, out)  # a redelivery replaces: the last kept
        self._output_order.append((timestamp_ms, event_id))
        while len(self._outputs) > self.max_outputs:
            self._forget_oldest_output()
            self.dropped["outputs"] += 1

    def add_verdict(
        self, raw: bytes | None, timestamp_ms: int, partition: int, offset: int
    ) -> None:
        self._verdicts.append((timestamp_ms, partition, offset, parse(raw)))
        while len(self._verdicts) > self.max_verdicts:
            self._verdicts.popleft()
            self.dropped["verdicts"] += 1

    def _forget_oldest_output(self) -> None:
        stamp, event_id = self._output_order.popleft()
        kept = self._outputs.get(event_id)
        if kept is not None and kept[0] == stamp:  # else a later copy replaced it
            del self._outputs[event_id]

    def evict(self, now_ms: int) -> None:
        """Forget what has left the window. Arrival order is nearly time order (partitions
        interleave), so a straggler may stay a little longer; ``joined`` leaves it out."""
        cutoff = now_ms - self.window_ms
        while self._output_order and self._output_order[0][0] < cutoff:
            self._forget_oldest_output()
        while self._verdicts and self._verdicts[0][0] < cutoff:
            self._verdicts.popleft()

    def joined(self, now_ms: int, topic_labels: tuple[str, ...] | None) -> Joined:
        cutoff = now_ms - self.window_ms
        outputs = Outputs(by_id={i: o for i, (t, o) in self._outputs.items() if t >= cutoff})
        verdicts = Verdicts()
        for stamp, partition, offset, parsed in sorted(
            (v for v in self._verdicts if v[0] >= cutoff), key=lambda v: v[:3]
        ):
            verdicts.add_parsed(parsed, (stamp, partition, offset), late=False)
        return join(outputs, verdicts, topic_labels, self.ground_truth)

    def figures(self, now_ms: int, policy: TopicPolicy, min_verdicts: int) -> Figures:
        """Everything the monitor exports, at ``now_ms``. ``CalibrationRefused`` when
        audit-sampled verdicts meet an ``audit_sample_rate`` of 0."""
        self.evict(now_ms)
        joined = self.joined(now_ms, policy.labels)
        counts = {k: joined.counts.get(k, 0) for k in RESULTS}
        counts["unknown_id"] += joined.counts.get("other_topic", 0)
        counts["unknown_id"] += joined.counts.get("routed_not_sampled", 0)
        ece: dict[tuple[str, str], float] = {
            (t, b): math.nan for t in ("live", "fitted") for b in ("equal_width", "adaptive")
        }
        fitted = math.nan
        if counts["used"] >= min_verdicts and counts["used"] > 0:
            z, y = joined.logits, joined.labels
            w = calibrate.weights(joined.kinds, policy.audit_sample_rate, self.ground_truth)
            fitted = cal.fit_temperature(z, y, w).temperature
            for name, temperature in (
                ("live", policy.temperature),
                ("fitted", calibrate.rounded(fitted)),
            ):
                m = cal.measure(z, y, w, temperature)
                ece[name, "equal_width"], ece[name, "adaptive"] = m.ece, m.adaptive_ece
        return Figures(counts, ece, fitted, len(self._outputs), len(self._verdicts))
