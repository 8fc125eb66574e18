"""Temperature scaling and calibration measures, from logits and known labels. Pure numpy.

Logits are an ``(n, K)`` array with ``-inf`` for a masked class (and for padding, when events
have fewer classes than the widest); labels are class indices of unmasked classes; every event
has a weight (1 for a plain sample, the inverse of its chance of being reviewed otherwise).

Fitting the temperature (Guo et al. 2017)
-----------------------------------------
The weighted negative log-likelihood of softmax(z / T) is convex in beta = 1 / T: its
derivative is the weighted mean of ``E_p[z] - z_label`` and its second derivative the weighted
mean variance of z under p, never negative. The fit looks for the root of that derivative
between ``MIN_T`` and ``MAX_T``: it checks the sign at both ends, then takes Newton steps,
falling back to bisection (of log T) whenever a step would leave the bracket. When the
derivative has the same sign at both ends the minimum lies beyond a bound: with data that the
logits separate, the likelihood keeps rising as T falls, so the fit reports the bound and says
which.

The measures
------------
NLL (mean, nats); ECE over ``BINS`` equal-width bins of the top-1 probability (a bin holds
(lo, hi], the first one [0, hi], as scikit-learn's ``calibration_curve`` bins); the adaptive
ECE over ``BINS`` bins of equal weight; the Brier score summed over classes (0 perfect, 2
worst); accuracy of the top-1 class (lowest index on a tie, as the worker); n and the effective
n (Kish: (sum w)^2 / sum w^2).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from worker.core import binomial

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

MIN_T, MAX_T = 0.01, 100.0
BINS = 15
Bound = Literal["lower", "upper"]


def _shifted(logits: FloatArray) -> FloatArray:
    """Each row minus its largest logit: <= 0, the masked classes still -inf."""
    out: FloatArray = logits - logits.max(axis=1, keepdims=True)
    return out


def probabilities(logits: FloatArray, temperature: float) -> FloatArray:
    e = np.exp(_shifted(logits) / temperature)
    out: FloatArray = e / e.sum(axis=1, keepdims=True)
    return out


def _picked(values: FloatArray, labels: IntArray) -> FloatArray:
    out: FloatArray = np.take_along_axis(values, labels[:, None], axis=1)[:, 0]
    return out


def _mean(values: FloatArray, weights: FloatArray) -> float:
    return float(np.dot(values, weights) / weights.sum())


def nll(logits: FloatArray, labels: IntArray, weights: FloatArray, temperature: float) -> float:
    z = _shifted(logits) / temperature
    log_total = np.log(np.exp(z).sum(axis=1))
    return _mean(log_total - _picked(z, labels), weights)


def _slopes(
    x: FloatArray, labels: IntArray, weights: FloatArray, beta: float
) -> tuple[float, float]:
    """First and second derivative of the mean NLL in beta (``x``: shifted logits)."""
    p = np.exp(beta * x)
    p /= p.sum(axis=1, keepdims=True)
    finite = np.where(p > 0.0, x, 0.0)  # 0 * -inf is NaN: a masked class adds nothing
    mean_x = (p * finite).sum(axis=1)
    var_x = (p * (finite - mean_x[:, None]) ** 2).sum(axis=1)
    return _mean(mean_x - _picked(finite, labels), weights), _mean(var_x, weights)


@dataclass(frozen=True)
class Fit:
    temperature: float
    at_bound: Bound | None  # the minimum lies beyond MIN_T ("lower") or MAX_T ("upper")
    steps: int


def fit_temperature(
    logits: FloatArray,
    labels: IntArray,
    weights: FloatArray,
    low: float = MIN_T,
    high: float = MAX_T,
) -> Fit:
    """The T in [low, high] that minimises the weighted NLL of softmax(logits / T)."""
    x = _shifted(logits)
    lo, hi = 1.0 / high, 1.0 / low  # in beta: the derivative rises from lo to hi
    if _slopes(x, labels, weights, hi)[0] < 0.0:
        return Fit(low, "lower", 1)
    if _slopes(x, labels, weights, lo)[0] > 0.0:
        return Fit(high, "upper", 2)
    beta = min(max(1.0, lo), hi)
    for step in range(1, 200):
        g, h = _slopes(x, labels, weights, beta)
        if g == 0.0:
            return Fit(1.0 / beta, None, step)
        if g > 0.0:
            hi = beta
        else:
            lo = beta
        newton = beta - g / h if h > 0.0 else np.nan
        if abs(newton - beta) <= 1e-12 * beta or hi - lo <= 1e-12 * beta:
            return Fit(1.0 / beta, None, step)
        beta = newton if lo < newton < hi else float(np.sqrt(lo * hi))  # bisect in log T
    return Fit(1.0 / beta, None, 200)


# --- measures ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Metrics:
    temperature: float
    nll: float
    ece: float
    adaptive_ece: float
    brier: float
    accuracy: float
    n: int
    effective_n: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def top1(logits: FloatArray, probs: FloatArray) -> tuple[FloatArray, IntArray]:
    """The top-1 probability and class of each row: the class of the largest logit (lowest
    index on a tie), as the worker picks it, even where probabilities round equal."""
    index = logits.argmax(axis=1).astype(np.int64)
    return _picked(probs, index), index


def margins(probs: FloatArray) -> FloatArray:
    """Top-1 minus top-2 probability of each row (top-2 is 0 with one unmasked class)."""
    two = np.sort(probs, axis=1)[:, -2:]
    out: FloatArray = two[:, 1] - two[:, 0]
    return out


def equal_width_bins(confidence: FloatArray, bins: int = BINS) -> IntArray:
    edges = np.linspace(0.0, 1.0, bins + 1)
    out: IntArray = np.searchsorted(edges[1:-1], confidence, side="left").astype(np.int64)
    return out


def equal_mass_bins(confidence: FloatArray, weights: FloatArray, bins: int = BINS) -> IntArray:
    """Bins of equal weight in order of confidence: by the weight before each event."""
    order = np.argsort(confidence, kind="stable")
    before = np.cumsum(weights[order]) - weights[order]
    out = np.empty(len(confidence), dtype=np.int64)
    out[order] = np.minimum(bins - 1, np.floor(bins * before / weights.sum())).astype(np.int64)
    return out


def calibration_error(
    confidence: FloatArray, correct: FloatArray, weights: FloatArray, bin_of: IntArray, bins: int
) -> float:
    """Sum over bins of (bin weight / total) * |accuracy - mean confidence|."""
    w = np.bincount(bin_of, weights=weights, minlength=bins)
    hit = np.bincount(bin_of, weights=weights * correct, minlength=bins)
    conf = np.bincount(bin_of, weights=weights * confidence, minlength=bins)
    return float(np.abs(hit - conf).sum() / w.sum())


def measure(
    logits: FloatArray, labels: IntArray, weights: FloatArray, temperature: float
) -> Metrics:
    probs = probabilities(logits, temperature)
    confidence, predicted = top1(logits, probs)
    correct = (predicted == labels).astype(np.float64)
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(labels)), labels] = 1.0
    brier = ((probs - onehot) ** 2).sum(axis=1)
    return Metrics(
        temperature=temperature,
        nll=nll(logits, labels, weights, temperature),
        ece=calibration_error(confidence, correct, weights, equal_width_bins(confidence), BINS),
        adaptive_ece=calibration_error(
            confidence, correct, weights, equal_mass_bins(confidence, weights), BINS
        ),
        brier=_mean(brier, weights),
        accuracy=_mean(correct, weights),
        n=len(labels),
        effective_n=float(weights.sum() ** 2 / (weights**2).sum()),
    )


@dataclass(frozen=True)
class Bin:
    low: float
    high: float
    share: float  # of the total weight
    confidence: float | None  # mean top-1 probability; None for an empty bin
    accuracy: float | None


def reliability(
    logits: FloatArray, labels: IntArray, weights: FloatArray, temperature: float
) -> list[Bin]:
    """The reliability diagram's bins (equal width) at ``temperature``."""
    confidence, predicted = top1(logits, probabilities(logits, temperature))
    correct = (predicted == labels).astype(np.float64)
    bin_of = equal_width_bins(confidence)
    w = np.bincount(bin_of, weights=weights, minlength=BINS)
    hit = np.bincount(bin_of, weights=weights * correct, minlength=BINS)
    conf = np.bincount(bin_of, weights=weights * confidence, minlength=BINS)
    edges = np.linspace(0.0, 1.0, BINS + 1)
    total = float(w.sum())
    return [
        Bin(
            float(edges[b]),
            float(edges[b + 1]),
            float(w[b]) / total,
            float(conf[b] / w[b]) if w[b] > 0 else None,
            float(hit[b] / w[b]) if w[b] > 0 else None,
        )
        for b in range(BINS)
    ]


# --- the reject option: risk against coverage, and a threshold for a target error -----------


@dataclass(frozen=True)
class Curve:
    """Routing every event whose margin is at least ``thresholds[j]`` (and that passes the
    ``min_top1`` check): the weighted share routed, their weighted error rate, the weighted
    error count and effective size the bound is taken on. Thresholds ascend."""

    thresholds: FloatArray
    coverage: FloatArray
    risk: FloatArray
    errors: FloatArray
    trials: FloatArray


def risk_coverage(
    margin: FloatArray, wrong: FloatArray, weights: FloatArray, eligible: npt.NDArray[np.bool_]
) -> Curve:
    """One point per distinct margin of the eligible events (those a threshold can route)."""
    m, e, w = margin[eligible], wrong[eligible], weights[eligible]
    order = np.argsort(-m, kind="stable")
    m, e, w = m[order], e[order], w[order]
    cw, ce, cw2 = np.cumsum(w), np.cumsum(w * e), np.cumsum(w * w)
    # The last event of each run of equal margins closes that threshold's routed set.
    last = np.r_[m[1:] != m[:-1], True] if len(m) else np.zeros(0, dtype=bool)
    rate = np.divide(ce, cw, out=np.zeros_like(cw), where=cw > 0)
    trials = np.divide(cw**2, cw2, out=np.zeros_like(cw), where=cw2 > 0)
    return Curve(
        thresholds=m[last][::-1],
        coverage=(cw / weights.sum())[last][::-1],
        risk=rate[last][::-1],
        errors=(rate * trials)[last][::-1],
        trials=trials[last][::-1],
    )


@dataclass(frozen=True)
class Pick:
    """The smallest threshold whose routed error has its upper bound at most the target:
    any ``min_margin`` in ``(below, threshold]`` routes the same events."""

    threshold: float
    below: float
    coverage: float
    risk: float
    upper: float


def smallest_threshold(curve: Curve, target: float, confidence: float = 0.95) -> Pick | None:
    """None when no threshold brings the bound down to ``target``."""
    ok = binomial.upper_at_most(curve.errors, curve.trials, target, confidence)
    hits = np.flatnonzero(ok)
    if len(hits) == 0:
        return None
    return point(curve, float(curve.thresholds[int(hits[0])]), confidence)


def point(curve: Curve, min_margin: float, confidence: float = 0.95) -> Pick:
    """What ``min_margin`` routes: the set of the first threshold at or above it."""
    j = int(np.searchsorted(curve.thresholds, min_margin, side="left"))
    if j == len(curve.thresholds):
        return Pick(min_margin, min_margin, 0.0, 0.0, 1.0)  # routes nothing
    return Pick(
        threshold=float(curve.thresholds[j]),
        below=float(curve.thresholds[j - 1]) if j > 0 else 0.0,
        coverage=float(curve.coverage[j]),
        risk=float(curve.risk[j]),
        upper=binomial.upper_bound(float(curve.errors[j]), float(curve.trials[j]), confidence),
    )
