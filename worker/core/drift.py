"""Drift of a topic's margin and top-1 distributions against a reference: pure, numpy only.

Both measures lie in [0, 1] and are cut into ``BINS`` equal-width bins, fixed here once for the
reference file, the worker's gauge and the offline command alike, so counts made at different
times and places compare bin by bin. A bin is ``[edge_i, edge_i+1)``; the last one also holds 1.

* **PSI** (population stability index) of the window's shares ``a`` against the reference's
  ``e``: ``sum((a - e) * ln(a / e))``. An empty bin has no logarithm, so every share is floored
  at ``EPSILON`` before the sum (on both sides; the shares are not renormalised).
* **KS** (two-sample Kolmogorov-Smirnov statistic): the largest gap between the two empirical
  distribution functions, from raw values. The reference keeps a sample of raw values for it
  (all of them up to ``SAMPLE_SIZE``, else a seeded uniform sample of that many).

Why 20 bins: with no shift at all, PSI on ``k`` bins still reads about ``(k - 1) * (1/n + 1/m)``
from sampling noise alone (n, m: events in the window and in the reference), so finer bins
would need far more events per window to stay clear of the 0.1 warning; 20 is the customary
order for PSI (10 to 20) and still resolves the low margins where thresholds live to 0.05.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

BINS = 20
EDGES: tuple[float, ...] = tuple(i / BINS for i in range(BINS + 1))
_INNER = np.array(EDGES[1:-1])
EPSILON = 1e-4  # the floor of a bin's share in the PSI
SAMPLE_SIZE = 50_000  # raw values kept per measure in a reference, for the KS statistic
MEASURES = ("margin", "top1")
FORMAT = "logit-router drift reference"
FORMAT_VERSION = 1


class ReferenceError(ValueError):
    """A reference document that cannot be read or does not fit these bins."""


def bin_counts(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Counts per bin (int64, length ``BINS``); values are clipped to [0, 1] first."""
    v = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0)
    slots = np.searchsorted(_INNER, v, side="right")
    counts: np.ndarray = np.bincount(slots, minlength=BINS).astype(np.int64)
    return counts


def shares(counts: Sequence[int] | np.ndarray) -> np.ndarray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise ValueError("no events to take shares of")
    floored: np.ndarray = np.maximum(c / total, EPSILON)
    return floored


def psi(expected: Sequence[int] | np.ndarray, actual: Sequence[int] | np.ndarray) -> float:
    """PSI of the ``actual`` counts against the ``expected`` ones, on the same bins."""
    e, a = shares(expected), shares(actual)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """sup |F_a(x) - F_b(x)| over every value of either sample (ties handled: the functions
    are compared just at and right of each value, where they jump)."""
    x = np.sort(np.asarray(a, dtype=np.float64))
    y = np.sort(np.asarray(b, dtype=np.float64))
    if len(x) == 0 or len(y) == 0:
        raise ValueError("the KS statistic needs values on both sides")
    at = np.concatenate([x, y])
    fx = np.searchsorted(x, at, side="right") / len(x)
    fy = np.searchsorted(y, at, side="right") / len(y)
    return float(np.max(np.abs(fx - fy)))


@dataclass(frozen=True)
class Measure:
    """One measure's counts on the fixed bins and a sample of its raw values."""

    counts: tuple[int, ...]
    sample: tuple[float, ...]


@dataclass(frozen=True)
class Reference:
    topic: str
    n: int  # scored events the counts were made of
    created: str  # ISO-8601 time the reference was made
    window: Mapping[str, Any]  # where the events came from, as the command was given it
    measures: Mapping[str, Measure] = field(default_factory=dict)

    def counts(self, measure: str) -> np.ndarray:
        return np.asarray(self.measures[measure].counts, dtype=np.int64)

    def to_json(self) -> bytes:
        doc = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "topic": self.topic,
            "n": self.n,
            "created": self.created,
            "window": dict(self.window),
            "bins": {"edges": list(EDGES), "epsilon": EPSILON},
            **{
                name: {"counts": list(m.counts), "sample": list(m.sample)}
                for name, m in self.measures.items()
            },
        }
        return orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n"


def make_reference(
    topic: str,
    values: Mapping[str, Sequence[float] | np.ndarray],
    created: str,
    window: Mapping[str, Any],
    sample_size: int = SAMPLE_SIZE,
    seed: int = 0,
) -> Reference:
    """The reference of one topic's scored events: ``values`` has the same events' margins
    and top-1 probabilities, in the same order (one sample of events serves both)."""
    arrays = {m: np.asarray(values[m], dtype=np.float64) for m in MEASURES}
    n = len(arrays[MEASURES[0]])
    if n == 0:
        raise ValueError("a reference needs at least one scored event")
    if any(len(a) != n for a in arrays.values()):
        raise ValueError("every measure needs one value per event")
    keep = np.arange(n)
    if n > sample_size:
        keep = np.sort(np.random.default_rng(seed).choice(n, size=sample_size, replace=False))
    measures = {
        m: Measure(tuple(bin_counts(a).tolist()), tuple(a[keep].tolist()))
        for m, a in arrays.items()
    }
    return Reference(topic, n, created, dict(window), measures)


def parse_reference(raw: bytes) -> Reference:
    """A reference document back; ``ReferenceError`` naming what is wrong with it."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ReferenceError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ReferenceError(f'not a drift reference (no "format": "{FORMAT}")')
    if doc.get("version") != FORMAT_VERSION:
        raise ReferenceError(f"version {doc.get('version')!r}; this worker reads {FORMAT_VERSION}")
    edges = doc.get("bins", {}).get("edges") if isinstance(doc.get("bins"), dict) else None
    if edges != list(EDGES):
        raise ReferenceError(f"its bins are not this worker's ({BINS} equal-width on [0, 1])")
    n = doc.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ReferenceError(f"n must be a positive integer, got {n!r}")
    measures = {}
    for name in MEASURES:
        measures[name] = _measure(doc.get(name), name, n)
    topic, created, window = doc.get("topic"), doc.get("created"), doc.get("window", {})
    if not isinstance(topic, str) or not isinstance(created, str) or not isinstance(window, dict):
        raise ReferenceError("topic and created must be strings, window an object")
    return Reference(topic, n, created, window, measures)


def _measure(doc: Any, name: str, n: int) -> Measure:
    if not isinstance(doc, dict):
        raise ReferenceError(f"{name}: missing")
    counts, sample = doc.get("counts"), doc.get("sample")
    if (
        not isinstance(counts, list)
        or len(counts) != BINS
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts)
    ):
        raise ReferenceError(f"{name}.counts must be {BINS} counts >= 0")
    if sum(counts) != n:
        raise ReferenceError(f"{name}.counts add up to {sum(counts)}, not n = {n}")
    if (
        not isinstance(sample, list)
        or not sample
        or not all(
            isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)
            for v in sample
        )
    ):
        raise ReferenceError(f"{name}.sample must be a non-empty list of finite numbers")
    return Measure(tuple(counts), tuple(float(v) for v in sample))


class SlidingCounts:
    """Bin counts of the last ``window_s`` seconds, as a ring of ``slots`` sub-windows.

    A sub-window is dropped whole once it is entirely older than the window, so the counts
    cover between ``window_s`` and ``window_s * (1 + 1/slots)`` seconds. Time is passed in
    (any monotonic clock), so the behaviour is testable without waiting.
    """

    def __init__(self, window_s: float, slots: int = 10) -> None:
        if window_s <= 0 or slots < 1:
            raise ValueError("window_s must be > 0 and slots >= 1")
        self.window_s = window_s
        self.slot_s = window_s / slots
        self._ring = np.zeros((slots, len(MEASURES), BINS), dtype=np.int64)
        self._stamp = np.full(slots, -1, dtype=np.int64)  # which sub-window a slot holds

    def add(self, now: float, values: Mapping[str, Sequence[float] | np.ndarray]) -> None:
        """Count one batch's values (per measure) at time ``now``."""
        tick = int(now // self.slot_s)
        slot = tick % len(self._stamp)
        if self._stamp[slot] != tick:
            self._ring[slot] = 0
            self._stamp[slot] = tick
        for i, m in enumerate(MEASURES):
            self._ring[slot, i] += bin_counts(values[m])

    def counts(self, now: float) -> dict[str, np.ndarray]:
        """Per measure, the counts of the sub-windows still inside the window at ``now``."""
        tick = int(now // self.slot_s)
        s = self._stamp
        live = (s >= 0) & (s >= tick - len(s)) & (s <= tick)
        total = self._ring[live].sum(axis=0)
        return {m: total[i] for i, m in enumerate(MEASURES)}
