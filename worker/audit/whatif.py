"""``logit-router whatif``: escalation rate against temperature and thresholds, on recorded
events. Pure: samples in, numbers and text out; the loading lives in ``worker.audit.sources``.

Every number comes from ``batch.route_batch``, run once per (temperature, min_margin, min_top1)
cell on all of a topic's events: numpy's speed, with the live worker's decisions event for
event (rows near a threshold go through the reference). So a cell is exactly what the worker
would have decided under that policy, threshold ties included.

Suggesting a policy for a target escalation rate R (``suggest``)
-----------------------------------------------------------------
Temperature and threshold trade against each other: any of the candidate temperatures reaches
R with a suitable ``min_margin``. The search therefore has two steps.

1. For each candidate temperature T, the threshold. An event escalates when its margin is
   below ``min_margin`` (or, when a ``min_top1`` is set, its top-1 is below it), so the rate
   only grows with the threshold, by steps of 1/n. With the margins at T sorted, the count
   nearest to ``round(R * n)`` that some threshold can give (equal margins cannot be split)
   is chosen, and with it the interval of thresholds that give it; the threshold suggested is
   the number with the fewest decimals in that interval, so it reads well in a config file.
   The rate is then measured again with that policy through ``route_batch``: what is printed
   is what the worker would do, not an interpolation.
2. Among the temperatures, the one whose rate is nearest to R and, among those equally near,
   whose threshold is least *crowded*: the fewest events with a margin within
   ``CROWD_BAND`` of the threshold. Those events are the ones a small drift of the model's
   logits would move across the line, so a sparse neighbourhood makes the rate stable from
   day to day. A too-low temperature pushes most margins towards 1 and a too-high one towards
   0; both crowd the threshold. Remaining ties go to the lower temperature, the more
   decisive one (the lab's "lower temperature is deterministic").

With a ``min_top1`` the events it escalates on its own count first; when they alone exceed R,
no threshold gets down to R: the row gives the nearest reachable rate (``min_margin`` 0) and
says so. Rows are always judged by their measured rate, so the pick is never worse than that.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from worker.core.batch import Item, route_batch
from worker.core.routing import Policy, Routing

CROWD_BAND = 0.02
LAB_TEMPERATURES = (0.5, 0.7, 1.0, 1.3, 1.6, 2.0)
DEFAULT_MIN_MARGINS = (0.05, 0.1, 0.15, 0.2, 0.3)


class Sample(NamedTuple):
    """One event's logits (``-inf`` for a masked class) and its own labels, if it has any."""

    logits: Sequence[float]
    labels: Sequence[str] | None = None


# A cell as JSON: its counts and rate (the top-1 labels are for the tables alone).
CELL_KEYS = (
    "temperature",
    "min_margin",
    "min_top1",
    "scored",
    "unscored",
    "escalated",
    "rate",
    "low_margin",
    "low_top1",
    "routed_labels",
)


@dataclass(frozen=True)
class Cell:
    """What one policy does to one topic's events."""

    temperature: float
    min_margin: float
    min_top1: float | None
    scored: int
    unscored: int
    escalated: int
    low_margin: int
    low_top1: int
    top1_labels: dict[str, int] = field(default_factory=dict)
    routed_labels: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.escalated / self.scored if self.scored else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in CELL_KEYS}


@dataclass(frozen=True)
class Suggestion:
    temperature: float
    min_margin: float
    min_top1: float | None
    rate: float
    crowding: float  # share of events with a margin within CROWD_BAND of the threshold
    scored: int  # events the rate is counted over
    exact: bool  # the rate is the target rounded to whole events; else the nearest reachable

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _route(samples: Sequence[Sample], policy: Policy) -> list[Routing | Exception]:
    return list(route_batch([Item(s.logits, policy, s.labels) for s in samples]))


def evaluate(samples: Sequence[Sample], policy: Policy) -> Cell:
    """Route every sample under ``policy`` and count what happens."""
    results = _route(samples, policy)
    routed = [r for r in results if isinstance(r, Routing)]
    reasons = Counter(r.reason for r in routed)
    return Cell(
        temperature=policy.temperature,
        min_margin=policy.min_margin,
        min_top1=policy.min_top1,
        scored=len(routed),
        unscored=len(results) - len(routed),
        escalated=sum(1 for r in routed if r.decision == "escalated"),
        low_margin=reasons["low_margin"],
        low_top1=reasons["low_top1"],
        top1_labels=dict(sorted(Counter(r.label for r in routed).items())),
        routed_labels=dict(
            sorted(Counter(r.label for r in routed if r.decision == "routed").items())
        ),
    )


def grid(
    samples: Sequence[Sample],
    temperatures: Sequence[float],
    min_margins: Sequence[float],
    min_top1s: Sequence[float | None] = (None,),
    labels: Sequence[str] | None = None,
) -> list[Cell]:
    """One cell per policy, temperature-major, in the order given."""
    topic_labels = tuple(labels) if labels is not None else None
    return [
        evaluate(samples, Policy(t, m, t1, topic_labels))
        for t in temperatures
        for m in min_margins
        for t1 in min_top1s
    ]


def threshold_for(
    samples: Sequence[Sample],
    temperature: float,
    target: float,
    min_top1: float | None = None,
    labels: Sequence[str] | None = None,
) -> Suggestion:
    """The ``min_margin`` that brings the rate nearest ``target`` at ``temperature`` (step 1)."""
    topic_labels = tuple(labels) if labels is not None else None
    base = _route(samples, Policy(temperature, 0.0, None, topic_labels))
    scores = [r.scores for r in base if isinstance(r, Routing)]
    n = len(scores)
    forced = sum(1 for s in scores if min_top1 is not None and s.top1 < min_top1)
    free = sorted(s.margin for s in scores if min_top1 is None or s.top1 >= min_top1)
    want = round(target * n) - forced
    count = _nearest_count(free, want)
    lo, hi = _interval(free, count)
    threshold = 0.0 if count == 0 else shortest_between(lo, hi)
    cell = evaluate(samples, Policy(temperature, threshold, min_top1, topic_labels))
    band = sum(1 for s in scores if abs(s.margin - threshold) < CROWD_BAND)
    return Suggestion(
        temperature=temperature,
        min_margin=threshold,
        min_top1=min_top1,
        rate=cell.rate,
        crowding=band / n if n else 0.0,
        scored=cell.scored,
        exact=n > 0 and cell.escalated == round(target * n),
    )


def _nearest_count(free: Sequence[float], want: int) -> int:
    """The reachable number of escalations nearest ``want`` (ties: the smaller)."""
    if want <= 0 or not free:
        return 0
    if want >= len(free):
        return bisect.bisect_left(free, 1.0)  # a margin of exactly 1 can never be below 1
    below = bisect.bisect_left(free, free[want])  # all values < free[want]
    above = bisect.bisect_right(free, free[want - 1])  # all values <= free[want - 1]
    return below if want - below <= above - want else above


def _interval(free: Sequence[float], count: int) -> tuple[float, float]:
    """Thresholds m in (lo, hi] give exactly ``count`` margins below m."""
    lo = free[count - 1] if count > 0 else 0.0
    hi = free[count] if count < len(free) else 1.0
    return lo, hi


def shortest_between(lo: float, hi: float) -> float:
    """The number with the fewest decimals in ``(lo, hi]`` (``hi`` itself if none shorter)."""
    for digits in range(0, 18):
        scale = 10.0**digits
        candidate = round((math.floor(lo * scale) + 1) / scale, digits)
        if lo < candidate <= hi:
            return candidate
    return hi


def suggest(
    samples: Sequence[Sample],
    temperatures: Sequence[float],
    target: float,
    min_top1s: Sequence[float | None] = (None,),
    labels: Sequence[str] | None = None,
) -> tuple[Suggestion | None, list[Suggestion]]:
    """Per temperature (and ``min_top1``) the threshold for ``target``, and the pick (step 2)."""
    rows = [threshold_for(samples, t, target, t1, labels) for t in temperatures for t1 in min_top1s]
    usable = [r for r in rows if r.scored]
    if not usable:
        return None, rows
    # Rates are whole counts over the same n: rounding only removes float noise.
    best = min(usable, key=lambda r: (round(abs(r.rate - target), 12), r.crowding, r.temperature))
    return best, rows


def margins(samples: Sequence[Sample], policy: Policy) -> list[float]:
    """The margin of every scorable sample under ``policy`` (for the margin histogram)."""
    return [r.scores.margin for r in _route(samples, policy) if isinstance(r, Routing)]


def table(
    topic: str, cells: Sequence[Cell], current: Policy | None = None, unreadable: int = 0
) -> str:
    """The grid for one topic as text; ``*`` marks the configured policy. The header counts
    the ``unreadable`` records too, as ``--json`` does: they are part of what was read."""
    if not cells:
        return f"{topic}: no events\n"
    first = cells[0]
    lines = [
        f"{topic}: {first.scored} events scored, {first.unscored} not scorable, "
        f"{unreadable} not readable as events; "
        f"top-1 labels {mix(first.top1_labels, first.scored)}",
        f"  {'T':>6} {'min_margin':>10} {'min_top1':>8} {'escalated':>9} {'rate':>7} "
        f"{'low_margin':>10} {'low_top1':>8}  routed labels",
    ]
    for c in cells:
        here = current is not None and (c.temperature, c.min_margin, c.min_top1) == (
            current.temperature,
            current.min_margin,
            current.min_top1,
        )
        t1 = "-" if c.min_top1 is None else f"{c.min_top1:g}"
        lines.append(
            f"{'*' if here else ' '} {c.temperature:>6g} {c.min_margin:>10g} {t1:>8} "
            f"{c.escalated:>9} {c.rate:>7.1%} {c.low_margin:>10} {c.low_top1:>8}  "
            f"{mix(c.routed_labels, c.scored - c.escalated)}"
        )
    return "\n".join(lines) + "\n"


def target_table(target: float, best: Suggestion | None, rows: Sequence[Suggestion]) -> str:
    lines = [f"  target escalation rate {target:.1%}:"]
    for r in rows:
        mark = "->" if r is best else "  "
        note = "" if r.exact else " (nearest reachable)"
        t1 = "" if r.min_top1 is None else f" min_top1={r.min_top1:g}"
        lines.append(
            f"  {mark} T={r.temperature:g} min_margin={r.min_margin:g}{t1}: rate {r.rate:.1%}"
            f"{note}, {r.crowding:.1%} of events within ±{CROWD_BAND:g} of the threshold"
        )
    if best is not None:
        t1 = "" if best.min_top1 is None else f", min_top1 = {best.min_top1:g}"
        lines.append(
            f"  suggested: temperature = {best.temperature:g}, min_margin = {best.min_margin:g}"
            f"{t1} (rate {best.rate:.1%})"
        )
    return "\n".join(lines) + "\n"


def mix(counts: dict[str, int], total: int, top: int = 4) -> str:
    """``billing 52.0%, tech 30.1%, other 17.9%``: the largest few, the rest as ``other``."""
    if total <= 0:
        return "-"
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ranked[:top]
    parts = [f"{label} {n / total:.1%}" for label, n in shown]
    rest = sum(n for _, n in ranked[top:])
    if rest:
        parts.append(f"other {rest / total:.1%}")
    return ", ".join(parts)
