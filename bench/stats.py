"""Percentiles of latency samples given in microseconds, reported in milliseconds."""

from __future__ import annotations

import math
from collections.abc import Sequence

QUANTILES = {"p50": 0.50, "p99": 0.99, "p99.9": 0.999}


def percentiles(samples_us: Sequence[int]) -> dict[str, float | None]:
    """Nearest-rank percentiles (and the maximum) in ms; ``None`` when there are no samples."""
    if not samples_us:
        return {**dict.fromkeys(QUANTILES), "max": None}
    ordered = sorted(samples_us)
    n = len(ordered)
    out: dict[str, float | None] = {}
    for name, q in QUANTILES.items():
        rank = max(1, math.ceil(n * q))
        out[name] = round(ordered[rank - 1] / 1000, 3)
    out["max"] = round(ordered[-1] / 1000, 3)
    return out
