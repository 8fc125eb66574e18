"""Temperature scaling, the calibration measures and the threshold for a target error, against
labels of a known law and independent implementations (scikit-learn, scipy: test-only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special, stats
from sklearn.calibration import calibration_curve

from tests import verdict_traffic as vt
from worker.core import binomial
from worker.core import calibration as cal

N = 50_000


@pytest.mark.parametrize("classes", [3, 10, 100])
@pytest.mark.parametrize("true_t", [0.5, 1.3, 3.0])
def test_the_fitted_temperature_is_within_2_percent_of_the_true_one(
    true_t: float, classes: int
) -> None:
    rng = np.random.default_rng(int(true_t * 10) + classes)
    z = vt.logits(rng, N, classes)
    y = vt.labels_at(rng, z, true_t)
    w = np.ones(N)
    fit = cal.fit_temperature(z, y, w)
    assert fit.at_bound is None
    assert abs(fit.temperature / true_t - 1) < 0.02, fit
    before, after = cal.measure(z, y, w, 1.0), cal.measure(z, y, w, fit.temperature)
    assert after.nll <= before.nll
    # The minimum: a step either way only raises the NLL.
    for step in (0.99, 1.01):
        assert cal.nll(z, y, w, fit.temperature * step) > after.nll
    assert after.ece < 0.02 < before.ece


def oracle_ece(confidence: Any, correct: Any, bins: int = 15) -> float:
    """scikit-learn's per-bin accuracy and confidence, weighted by the bin's share."""
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=bins, strategy="uniform")
    counts, _ = np.histogram(confidence, bins=bins, range=(0.0, 1.0))
    counts = counts[counts > 0]
    assert len(counts) == len(prob_true)
    return float(np.sum(counts / counts.sum() * np.abs(prob_true - prob_pred)))


def oracle_adaptive_ece(confidence: Any, correct: Any, bins: int = 15) -> float:
    """Equal-count bins, written out with a loop over sorted chunks."""
    order = np.argsort(confidence, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, bins):
        total += len(chunk) * abs(correct[chunk].mean() - confidence[chunk].mean())
    return total / len(confidence)


@pytest.mark.parametrize(
    ("true_t", "used_t", "classes"), [(1.3, 1.0, 3), (0.5, 2.0, 10), (3.0, 0.7, 50)]
)
def test_the_ece_equals_scikit_learns_to_1e_9(true_t: float, used_t: float, classes: int) -> None:
    rng = np.random.default_rng(classes)
    n = 15 * 2_000  # a multiple of the bin count: equal-mass bins are exactly equal
    z = vt.logits(rng, n, classes)
    y = vt.labels_at(rng, z, true_t)
    got = cal.measure(z, y, np.ones(n), used_t)
    probs = cal.probabilities(z, used_t)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    assert got.ece == pytest.approx(oracle_ece(confidence, correct), abs=1e-9)
    assert got.adaptive_ece == pytest.approx(oracle_adaptive_ece(confidence, correct), abs=1e-9)
    assert got.accuracy == pytest.approx(correct.mean(), abs=1e-12)
    onehot = np.eye(classes)[y]
    assert got.brier == pytest.approx(float(((probs - onehot) ** 2).sum(axis=1).mean()), abs=1e-12)
    assert got.nll == pytest.approx(-float(np.log(probs[np.arange(n), y]).mean()), abs=1e-9)


def test_weights_undo_the_review_bias_and_an_unweighted_fit_keeps_it() -> None:
    """Verdicts on escalated events (margin < 0.2 at the live T = 1) and on a 10 % audit
    sample of the routed ones, on traffic no single temperature fits (see verdict_traffic).
    T* is the temperature the whole traffic's labels give; the weighted fit on the reviewed
    events finds it, the unweighted one finds the hard events' temperature instead."""
    rng = np.random.default_rng(11)
    population = 200_000
    z = vt.logits(rng, population, 5)
    y = vt.overconfident_labels(rng, z)
    true_t = cal.fit_temperature(z, y, np.ones(population)).temperature
    escalated = cal.margins(cal.probabilities(z, 1.0)) < 0.2
    rate = 0.1
    sampled = ~escalated & (rng.random(population) < rate)
    seen = escalated | sampled
    assert 50_000 <= seen.sum() <= 90_000
    w = np.where(escalated, 1.0, 1.0 / rate)[seen]
    weighted = cal.fit_temperature(z[seen], y[seen], w).temperature
    unweighted = cal.fit_temperature(z[seen], y[seen], np.ones(int(seen.sum()))).temperature
    assert abs(weighted / true_t - 1) < 0.02, (weighted, true_t)
    assert abs(unweighted / true_t - 1) > 0.2, (unweighted, true_t)  # measured: about +47 %


def test_with_labels_of_the_assumed_law_both_fits_agree() -> None:
    """The other side of the previous test: when softmax(z / T*) is the labels' true law,
    choosing events by their logits does not bias the fit, weighted or not."""
    rng = np.random.default_rng(12)
    z = vt.logits(rng, 200_000, 5)
    y = vt.labels_at(rng, z, 1.3)
    escalated = cal.margins(cal.probabilities(z, 1.0)) < 0.2
    seen = escalated | (rng.random(len(z)) < 0.1)
    w = np.where(escalated, 1.0, 10.0)[seen]
    for weights in (w, np.ones(len(w))):
        assert abs(cal.fit_temperature(z[seen], y[seen], weights).temperature / 1.3 - 1) < 0.02


def test_masked_classes_are_left_out_of_the_fit() -> None:
    rng = np.random.default_rng(3)
    z = vt.logits(rng, 20_000, 4)
    y = vt.labels_at(rng, z, 1.5)
    wide = np.column_stack([z, np.full(len(z), -np.inf), np.full(len(z), -np.inf)])
    w = np.ones(len(z))
    assert cal.fit_temperature(wide, y, w).temperature == pytest.approx(
        cal.fit_temperature(z, y, w).temperature, rel=1e-9
    )
    assert cal.measure(wide, y, w, 1.5).nll == pytest.approx(cal.measure(z, y, w, 1.5).nll)


def test_separable_and_contrary_verdicts_stop_at_a_bound_and_say_so() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0.0, 1.0, (500, 3))
    best = z.argmax(axis=1).astype(np.int64)
    worst = z.argmin(axis=1).astype(np.int64)
    w = np.ones(500)
    assert cal.fit_temperature(z, best, w) == cal.Fit(cal.MIN_T, "lower", 1)
    assert cal.fit_temperature(z, worst, w) == cal.Fit(cal.MAX_T, "upper", 2)


# --- the threshold for a target error ------------------------------------------------------


def brute_force(margin: Any, wrong: Any, w: Any, eligible: Any, target: float) -> float | None:
    """Every candidate threshold, ascending; the bound by scipy's beta quantile."""
    for m in np.unique(margin[eligible]):
        routed = eligible & (margin >= m)
        total, errors, squares = w[routed].sum(), (w * wrong)[routed].sum(), (w**2)[routed].sum()
        n = total**2 / squares
        k = errors / total * n
        upper = 1.0 if n - k <= 0 else stats.beta.ppf(0.95, k + 1, n - k)
        if upper <= target:
            return float(m)
    return None


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("min_top1", [None, 0.5])
@pytest.mark.parametrize("target", [0.03, 0.08, 0.2])
def test_the_threshold_equals_a_brute_force_scan(
    weighted: bool, min_top1: float | None, target: float
) -> None:
    rng = np.random.default_rng(int(target * 100) + weighted)
    n = 3_000
    z = vt.logits(rng, n, 4, lift=7.0)
    y = vt.labels_at(rng, z, 1.2)
    probs = cal.probabilities(z, 1.2)
    confidence, predicted = cal.top1(z, probs)
    margin = np.round(cal.margins(probs), 3)  # rounded: ties of margins are handled too
    wrong = (predicted != y).astype(np.float64)
    w = np.where(rng.random(n) < 0.3, 1.0, 8.0) if weighted else np.ones(n)
    eligible = np.ones(n, dtype=bool) if min_top1 is None else confidence >= min_top1
    curve = cal.risk_coverage(margin, wrong, w, eligible)
    pick = cal.smallest_threshold(curve, target)
    want = brute_force(margin, wrong, w, eligible, target)
    assert (None if pick is None else pick.threshold) == want
    assert want is not None or target == 0.03  # most targets are reachable: the scan is tried
    if pick is not None:
        routed = eligible & (margin >= pick.threshold)
        assert pick.coverage == pytest.approx(w[routed].sum() / w.sum())
        assert pick.risk == pytest.approx((w * wrong)[routed].sum() / w[routed].sum())
        assert pick.upper <= target
        assert not (eligible & (margin > pick.below) & (margin < pick.threshold)).any()


def test_a_target_no_threshold_reaches_gives_none() -> None:
    rng = np.random.default_rng(9)
    z = vt.logits(rng, 200, 3, lift=0.5)
    y = vt.labels_at(rng, z, 1.0)
    probs = cal.probabilities(z, 1.0)
    wrong = (probs.argmax(axis=1) != y).astype(np.float64)
    curve = cal.risk_coverage(cal.margins(probs), wrong, np.ones(200), np.ones(200, dtype=bool))
    assert cal.smallest_threshold(curve, 0.001) is None


# --- Clopper-Pearson against scipy ----------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 2_000_000),
    share=st.floats(0.0, 1.0),
    confidence=st.sampled_from([0.9, 0.95, 0.99]),
)
def test_the_upper_bound_equals_scipys_beta_quantile(
    n: int, share: float, confidence: float
) -> None:
    k = math.floor(share * n)
    want = 1.0 if k >= n else float(stats.beta.ppf(confidence, k + 1, n - k))
    assert binomial.upper_bound(k, n, confidence) == pytest.approx(want, rel=1e-8, abs=1e-14)


@settings(max_examples=300, deadline=None)
@given(
    n=st.floats(1.0, 1e6),
    share=st.floats(0.0, 0.999),
    bound=st.floats(0.001, 0.999),
)
def test_the_bound_check_agrees_with_scipy_for_weighted_counts(
    n: float, share: float, bound: float
) -> None:
    k = share * n
    upper = float(stats.beta.ppf(0.95, k + 1, n - k))
    if abs(upper - bound) > 1e-9:  # exactly at the bound either answer is right
        assert bool(binomial.upper_at_most([k], [n], bound)[0]) == (upper <= bound)


@settings(max_examples=300, deadline=None)
@given(
    a=st.floats(0.01, 1e5),
    b=st.floats(0.01, 1e5),
    # Not subnormal x: there scipy's value is off by 0.5 %, and mpmath agrees with ours.
    x=st.one_of(st.just(0.0), st.floats(1e-300, 1.0)),
)
def test_the_incomplete_beta_equals_scipys(a: float, b: float, x: float) -> None:
    assert float(binomial.betainc(a, b, x)) == pytest.approx(
        float(special.betainc(a, b, x)), rel=1e-8, abs=1e-12
    )
