"""An independent high-precision softmax, for checking the double-precision core."""

from __future__ import annotations

import math
from collections.abc import Sequence

import mpmath

mpmath.mp.dps = 60


def _exps(logits: Sequence[float], temperature: float) -> list[mpmath.mpf]:
    """exp((x - max) / T) of the very doubles given, to 60 digits; -inf gives exactly 0."""
    top = max(mpmath.mpf(x) for x in logits if x != -math.inf)
    t = mpmath.mpf(temperature)
    return [
        mpmath.mpf(0) if x == -math.inf else mpmath.exp((mpmath.mpf(x) - top) / t) for x in logits
    ]


def softmax(logits: Sequence[float], temperature: float) -> list[float]:
    exps = _exps(logits, temperature)
    total = mpmath.fsum(exps)
    return [float(e / total) for e in exps]


def entropy(logits: Sequence[float], temperature: float) -> float:
    exps = _exps(logits, temperature)
    total = mpmath.fsum(exps)
    return float(-mpmath.fsum(e / total * mpmath.log(e / total) for e in exps if e > 0))
