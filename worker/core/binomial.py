"""Clopper-Pearson bounds on an error rate, with numpy and the standard library only.

The exact (Clopper-Pearson) one-sided upper bound at confidence ``c`` on a rate seen as ``k``
errors in ``n`` trials is the ``c`` quantile of Beta(k + 1, n - k); it is 1 when k = n. Asking
whether that bound is at most ``e`` needs no quantile: it is the same as
``I_e(k + 1, n - k) >= c``, one evaluation of the regularized incomplete beta function. Both
are written here for real ``k`` and ``n`` too, so that a weighted sample can be judged by its
effective size (Kish) and weighted error count, the way survey statistics use the bound.

The incomplete beta is evaluated by its continued fraction (DLMF 8.17.22) with the modified
Lentz method, vectorised over arrays; on the side of the mean where the fraction converges
slowly, the symmetry ``I_x(a, b) = 1 - I_{1-x}(b, a)`` is used instead.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]

_TINY = 1e-300  # keeps a Lentz denominator away from zero
_EPS = 1e-15
_MAX_TERMS = 20_000  # far beyond what a and b of a few million need (about sqrt(max(a, b)))

_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])


def _fraction(a: FloatArray, b: FloatArray, x: FloatArray) -> FloatArray:
    """The continued fraction of I_x(a, b), for x below (a + 1) / (a + b + 2)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = np.ones_like(x)
    d = 1.0 - qab * x / qap
    d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
    h = d.copy()
    live = np.ones(x.shape, dtype=bool)
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2.0 * m
        for aa in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + aa * d
            d = 1.0 / np.where(np.abs(d) < _TINY, _TINY, d)
            c = 1.0 + aa / c
            c = np.where(np.abs(c) < _TINY, _TINY, c)
            step = d * c
            h = np.where(live, h * step, h)
        live &= np.abs(step - 1.0) > _EPS
        if not live.any():
            break
    return h


def betainc(a: npt.ArrayLike, b: npt.ArrayLike, x: npt.ArrayLike) -> FloatArray:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    a_, b_, x_ = np.broadcast_arrays(
        np.asarray(a, dtype=np.float64),
        np.asarray(b, dtype=np.float64),
        np.asarray(x, dtype=np.float64),
    )
    out = np.where(x_ >= 1.0, 1.0, 0.0)
    inner = (x_ > 0.0) & (x_ < 1.0)
    if not inner.any():
        return out
    a, b, x = a_[inner], b_[inner], x_[inner]
    log_front = _lgamma(a + b) - _lgamma(a) - _lgamma(b) + a * np.log(x) + b * np.log1p(-x)
    front = np.exp(log_front)
    direct = x < (a + 1.0) / (a + b + 2.0)
    value = np.empty_like(x)
    if direct.any():
        value[direct] = front[direct] * _fraction(a[direct], b[direct], x[direct]) / a[direct]
    flip = ~direct
    if flip.any():
        value[flip] = 1.0 - front[flip] * _fraction(b[flip], a[flip], 1.0 - x[flip]) / b[flip]
    out[inner] = np.clip(value, 0.0, 1.0)
    return out


def upper_at_most(
    errors: npt.ArrayLike, trials: npt.ArrayLike, bound: float, confidence: float = 0.95
) -> npt.NDArray[np.bool_]:
    """Whether the Clopper-Pearson upper bound of ``errors / trials`` is at most ``bound``."""
    k = np.asarray(errors, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    k, n = np.broadcast_arrays(k, n)
    ok = np.zeros(k.shape, dtype=bool)
    some = (n > 0) & (n - k > 0)  # k = n: the bound is 1
    if bound >= 1.0:
        return np.ones(k.shape, dtype=bool)
    if some.any():
        cdf = betainc(k[some] + 1.0, n[some] - k[some], np.full(int(some.sum()), bound))
        ok[some] = cdf >= confidence
    return ok


def upper_bound(errors: float, trials: float, confidence: float = 0.95) -> float:
    """The Clopper-Pearson one-sided upper bound on the rate ``errors / trials``."""
    if trials <= 0 or trials - errors <= 0:
        return 1.0
    a, b = errors + 1.0, trials - errors
    lo, hi = 0.0, 1.0
    for _ in range(200):  # bisection on a monotone CDF: ends at the float resolution
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if float(betainc(a, b, mid)) >= confidence:
            hi = mid
        else:
            lo = mid
    return hi
