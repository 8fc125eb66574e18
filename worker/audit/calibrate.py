"""``logit-router calibrate``: from joined verdicts to the report and the proposed policy.

Weights (Horvitz-Thompson): a verdict stands for 1 / (its event's chance of being reviewed)
events. Events escalated for uncertainty (``low_margin``, ``low_top1``) are all reviewed:
weight 1. Routed events are reviewed only through the audit sample: an ``audit_sample``
verdict weighs ``1 / audit_sample_rate`` (the rate of the topic in ``--config``). Weighted
so, the verdicts estimate the whole traffic; unweighted, they over-represent the uncertain
events. Without any audit-sampled verdict the fit sees only events whose margin was below
the threshold, and the report says the estimate is biased. With ``--ground-truth`` every
published event is taken to have a verdict: all weigh 1, routed ones included.

The temperature printed is the fitted one rounded to three significant digits; the "after"
measures and the threshold for ``--target-error`` are computed at that printed value, so that
the numbers describe the policy as it would be written in the config.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

import numpy as np
import orjson

from worker.audit.verdicts import AUDIT_SAMPLE, ROUTED, UNCERTAIN, Joined
from worker.audit.whatif import shortest_between
from worker.core import calibration as cal
from worker.core.topic_settings import TopicPolicy

CONFIDENCE = 0.95
CURVE_POINTS = 100
COUNT_KEYS = (
    "read",
    "malformed",
    "late",
    "duplicates",
    "unknown_id",
    "other_topic",
    "unknown_label",
    "masked_label",
    "routed_not_sampled",
    "used",
)


class CalibrationRefused(ValueError):
    """The verdicts cannot be weighted as asked (exit status 2)."""


class NoVerdicts(LookupError):
    """Not one verdict can be used (exit status 1)."""


def weights(kinds: list[str], audit_rate: float, ground_truth: bool) -> np.ndarray[Any, Any]:
    if ground_truth:
        return np.ones(len(kinds))
    sampled = kinds.count(AUDIT_SAMPLE)
    if sampled and audit_rate <= 0.0:
        raise CalibrationRefused(
            f"{sampled} verdicts are on audit-sampled events but the config's "
            "audit_sample_rate for the topic is 0: give the config they were published with"
        )
    per_kind = {UNCERTAIN: 1.0, ROUTED: 1.0, AUDIT_SAMPLE: 1.0 / audit_rate if audit_rate else 1.0}
    return np.array([per_kind[k] for k in kinds], dtype=np.float64)


def rounded(temperature: float) -> float:
    return float(f"{temperature:.3g}")


def report(
    topic: str,
    joined: Joined,
    policy: TopicPolicy,
    target: float | None = None,
    ground_truth: bool = False,
    outputs: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The whole report as plain values (the JSON of ``--json``)."""
    kinds = joined.kinds
    if not kinds:
        counts = ", ".join(f"{k} {n}" for k, n in _counts(joined).items())
        raise NoVerdicts(f"no verdict on {topic} can be used ({counts})")
    w = weights(kinds, policy.audit_sample_rate, ground_truth)
    z, y = joined.logits, joined.labels
    fit = cal.fit_temperature(z, y, w)
    plain = cal.fit_temperature(z, y, np.ones(len(kinds)))
    chosen = rounded(fit.temperature)
    warnings = _warnings(kinds, policy, fit, ground_truth)
    probs = cal.probabilities(z, chosen)
    confidence, predicted = cal.top1(z, probs)
    margin = cal.margins(probs)
    wrong = (predicted != y).astype(np.float64)
    eligible = (
        np.ones(len(y), dtype=bool) if policy.min_top1 is None else confidence >= policy.min_top1
    )
    curve = cal.risk_coverage(margin, wrong, w, eligible)
    doc: dict[str, Any] = {
        "topic": topic,
        "policy": {
            "temperature": policy.temperature,
            "min_margin": policy.min_margin,
            "min_top1": policy.min_top1,
            "audit_sample_rate": policy.audit_sample_rate,
        },
        "outputs": outputs or {},
        "verdicts": _counts(joined),
        "used": {k: kinds.count(k) for k in (UNCERTAIN, AUDIT_SAMPLE, ROUTED)},
        "weighted": not ground_truth and AUDIT_SAMPLE in kinds,
        "fit": {
            "temperature": chosen,
            "fitted": fit.temperature,
            "at_bound": fit.at_bound,
            "unweighted": plain.temperature,
            "unweighted_at_bound": plain.at_bound,
        },
        "before": cal.measure(z, y, w, policy.temperature).as_dict(),
        "after": cal.measure(z, y, w, chosen).as_dict(),
        "reliability": {
            "before": [asdict(b) for b in cal.reliability(z, y, w, policy.temperature)],
            "after": [asdict(b) for b in cal.reliability(z, y, w, chosen)],
        },
        "risk_coverage": _thinned(curve),
        "target": None if target is None else _target(curve, target, policy),
        "warnings": warnings,
    }
    doc["toml"] = toml_lines(topic, doc, policy)
    return doc


def _counts(joined: Joined) -> dict[str, int]:
    return {k: joined.counts.get(k, 0) for k in COUNT_KEYS}


def _warnings(kinds: list[str], policy: TopicPolicy, fit: cal.Fit, ground_truth: bool) -> list[str]:
    out = []
    if not ground_truth and AUDIT_SAMPLE not in kinds:
        out.append(
            "biased: no verdict is on an audit-sampled event, so the fit sees only events "
            f"escalated for uncertainty (margin below {policy.min_margin:g} at T="
            f"{policy.temperature:g}) and T is estimated on low-margin events, not on the "
            "traffic; set audit_sample_rate so that reviewers also see routed events"
        )
    if fit.at_bound == "lower":
        out.append(
            f"the likelihood still rises at T={cal.MIN_T:g} (the logits separate the verdicts): "
            "the temperature shown is the bound, not a minimum"
        )
    elif fit.at_bound == "upper":
        out.append(
            f"the likelihood still rises at T={cal.MAX_T:g} (the logits say little about the "
            "verdicts): the temperature shown is the bound, not a minimum"
        )
    return out


def _thinned(curve: cal.Curve) -> list[dict[str, float]]:
    n = len(curve.thresholds)
    picks = sorted(set(np.linspace(0, n - 1, min(n, CURVE_POINTS)).round().astype(int).tolist()))
    return [
        {
            "min_margin": float(curve.thresholds[j]),
            "coverage": float(curve.coverage[j]),
            "risk": float(curve.risk[j]),
        }
        for j in picks
    ]


def _target(curve: cal.Curve, target: float, policy: TopicPolicy) -> dict[str, Any]:
    pick = cal.smallest_threshold(curve, target, CONFIDENCE)
    doc: dict[str, Any] = {"error": target, "confidence": CONFIDENCE}
    if pick is None:
        return {**doc, "min_margin": None}
    margin = _readable(curve, pick, target)
    at = cal.point(curve, margin, CONFIDENCE)
    uncertain = 1.0 - at.coverage
    return {
        **doc,
        "min_margin": margin,
        "smallest": [pick.below, pick.threshold],
        "routed_share": at.coverage,
        "error_rate": at.risk,
        "upper_bound": at.upper,
        "escalation_rate": uncertain,
        "escalation_rate_with_audit": uncertain + policy.audit_sample_rate * at.coverage,
    }


def _decimals(value: float) -> int:
    return next(d for d in range(18) if round(value, d) == value) if value else 0


def _readable(curve: cal.Curve, pick: cal.Pick, target: float) -> float:
    """The threshold to print: the shortest number that routes what the smallest one does,
    or one rounded up to at most 4 decimals if it still meets the target (fewer decimals
    win, then the smaller value)."""
    same = (
        pick.threshold
        if pick.below >= pick.threshold
        else shortest_between(pick.below, pick.threshold)
    )
    up = [math.ceil(pick.threshold * 10**d) / 10**d for d in (2, 3, 4)]
    fine = [m for m in up if m <= 1.0 and cal.point(curve, m, CONFIDENCE).upper <= target]
    return min([same, *fine], key=lambda m: (_decimals(m), m))


def toml_lines(topic: str, doc: dict[str, Any], policy: TopicPolicy) -> str:
    """The proposed policy: as the shadow table first, then the live keys."""
    target = doc["target"]
    margin = (
        policy.min_margin if not target or target["min_margin"] is None else target["min_margin"]
    )
    keys = [f"temperature = {doc['fit']['temperature']!r}", f"min_margin = {margin!r}"]
    if policy.min_top1 is not None:
        keys.append(f"min_top1 = {policy.min_top1!r}")
    name = orjson.dumps(topic).decode()  # a JSON string is a TOML basic string
    return "\n".join(
        [
            "# try it as the shadow policy first (the live policy is unchanged):",
            f"[topics.{name}.shadow]",
            *keys,
            "",
            "# then apply it: these keys in the topic's table, and drop the shadow table",
            f"[topics.{name}]",
            *keys[:2],
            "",
        ]
    )


# --- the report as text ----------------------------------------------------------------------

_ROWS = (
    ("temperature", "temperature", "{:.4g}"),
    ("NLL", "nll", "{:.4f}"),
    (f"ECE ({cal.BINS} bins)", "ece", "{:.4f}"),
    ("adaptive ECE", "adaptive_ece", "{:.4f}"),
    ("Brier", "brier", "{:.4f}"),
    ("accuracy", "accuracy", "{:.2%}"),
    ("n", "n", "{}"),
    ("effective n", "effective_n", "{:.1f}"),
)


def text(doc: dict[str, Any]) -> str:
    used, counts, fit = doc["used"], doc["verdicts"], doc["fit"]
    lines = [
        f"{doc['topic']}: {counts['used']} verdicts used ({used[UNCERTAIN]} escalated for "
        f"uncertainty, {used[AUDIT_SAMPLE]} audit sample, {used[ROUTED]} routed); "
        + ("weighted" if doc["weighted"] else "unweighted"),
        f"  verdicts read {counts['read']}, not used: "
        + ", ".join(f"{k.replace('_', ' ')} {counts[k]}" for k in COUNT_KEYS[1:-1] if counts[k])
        + ("" if any(counts[k] for k in COUNT_KEYS[1:-1]) else "none"),
        f"  {'':<16}{'before':>12}{'after':>12}",
    ]
    for name, key, fmt in _ROWS:
        before, after = fmt.format(doc["before"][key]), fmt.format(doc["after"][key])
        lines.append(f"  {name:<16}{before:>12}{after:>12}")
    lines.append(
        f"  fitted T {fit['fitted']:.5g}, shown rounded; unweighted fit T {fit['unweighted']:.5g}"
    )
    target = doc["target"]
    if target is not None:
        if target["min_margin"] is None:
            lines.append(
                f"  target error {target['error']:.2%}: no min_margin brings the "
                f"{target['confidence']:.0%} upper bound of the routed error down to it"
            )
        else:
            lines.append(
                f"  target error {target['error']:.2%}: min_margin {target['min_margin']:g} "
                f"routes {target['routed_share']:.1%} (error {target['error_rate']:.2%}, "
                f"{target['confidence']:.0%} upper bound {target['upper_bound']:.2%}); "
                f"escalation rate {target['escalation_rate']:.1%}, "
                f"{target['escalation_rate_with_audit']:.1%} with the audit sample"
            )
    lines += [f"  warning: {w}" for w in doc["warnings"]]
    toml: str = doc["toml"]
    return "\n".join(lines) + "\n\n" + toml
