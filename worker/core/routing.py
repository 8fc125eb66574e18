"""The pure core: softmax at a temperature, the confidence margin, and the escalation policy.

No I/O lives here. The worker, `score`, `replay`, `whatif` and the benchmarks all call these
functions, so a decision made live is the decision an auditor gets back.

Numerics. Probabilities are computed as ``exp((x_i - max) / T) / sum``. Subtracting the
maximum *before* dividing by T keeps every exponent <= 0, so nothing overflows for logits
anywhere in +/-1e308 and T anywhere in (0, inf): a tiny T gives a one-hot vector, a huge T a
near-uniform one. (A gap ``x_i - max`` past the float range is taken as ``x_i/T - max/T``, so a
huge T still sees it.) The sum is taken with ``math.fsum`` (exactly rounded), so the error of
each probability is a few ulps whatever the number of classes. A ``-inf`` logit is a masked
class with probability 0; NaN and ``+inf`` are refused, never turned into output. The entropy's
log is ``log1p`` of the sum less the maximum's exact 1, so a confident event's entropy (1e-15,
say) keeps its digits instead of losing them to the rounding of ``1 + tiny``. The top class is
the largest logit (the lowest index on a tie), even where its probability rounds to a
neighbour's.

Reproducibility. Only the sum is exactly rounded; ``exp`` and ``log`` come from the platform's
C library, and glibc, musl and macOS may differ in the last bit (glibc may also pick a variant
by CPU features). So the same event and policy give the same bits on the same platform, every
time; on another platform a replay compares probabilities within ``replay --tolerance``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Literal

Decision = Literal["routed", "escalated"]
EscalationReason = Literal["low_margin", "low_top1", "audit_sample"]
# Escalated for review though its policy would route it (``Policy.audit_sample_rate``).
AUDIT_SAMPLE: EscalationReason = "audit_sample"

_NEG_INF = -math.inf


class ScoringError(ValueError):
    """A logit vector that cannot be scored; ``code`` is a stable reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Scores:
    """What the softmax tells about one logit vector."""

    probabilities: tuple[float, ...]
    top1: float
    top2: float
    margin: float
    entropy: float
    class_index: int


@dataclass(frozen=True, slots=True)
class Policy:
    """The routing policy of one input topic.

    Trusted as given: its values were checked where they entered, the config or the command
    line, by the rules in ``worker.core.rules``.
    """

    temperature: float
    min_margin: float
    min_top1: float | None = None
    labels: tuple[str, ...] | None = None
    # The share of would-be-routed events escalated for review instead (``audit_sampled``).
    audit_sample_rate: float = 0.0
    # Evaluated beside this policy on every event, never deciding where one goes.
    shadow: Policy | None = None


@dataclass(frozen=True, slots=True)
class Routing:
    """A decision and everything that explains it."""

    decision: Decision
    reason: EscalationReason | None
    label: str
    scores: Scores


def check_logits(logits: Sequence[float]) -> float:
    """Refuse what cannot be scored and return the largest logit."""
    if len(logits) < 2:
        raise ScoringError("too_few_classes", f"need at least 2 classes, got {len(logits)}")
    top = _NEG_INF
    for x in logits:
        if x != x:  # NaN is the only value unequal to itself
            raise ScoringError("nan_logit", "a logit is NaN")
        if x > top:
            top = x
    if top == math.inf:
        raise ScoringError("pos_inf_logit", "a logit is +inf")
    if top == _NEG_INF:
        raise ScoringError("no_finite_logit", "every logit is -inf")
    return top


def softmax(logits: Sequence[float], temperature: float = 1.0) -> list[float]:
    """Probabilities of ``logits`` at ``temperature``; see the module docstring for the numerics."""
    return list(score(logits, temperature).probabilities)


def score(logits: Sequence[float], temperature: float = 1.0) -> Scores:
    """The logits are an event's and checked here; the temperature is a policy's, checked at
    the edge (``worker.core.rules``) and trusted."""
    top = check_logits(logits)
    # z_i = (x_i - max) / T <= 0; a masked class gives -inf.
    z = [(x - top) / temperature for x in logits]
    # A masked class is -inf too: only a gap past the float range needs the slower pass.
    if _NEG_INF in z and z.count(_NEG_INF) > list(logits).count(_NEG_INF):
        z = [_scaled_gap(x, top, temperature) for x in logits]
    e = [math.exp(v) for v in z]
    total = math.fsum(e)  # >= 1: the maximum contributes exp(0) = 1 exactly
    probs = tuple(v / total for v in e)
    # Entropy as log(S) + sum(e_i * -z_i) / S: both terms >= 0, so no cancellation, and no
    # log of an underflowed probability. Masked classes (e_i == 0) contribute nothing.
    spread = math.fsum(ei * -zi for ei, zi in zip(e, z, strict=True) if ei > 0.0)
    entropy = math.log1p(math.fsum(chain(e, _LESS_ONE))) + spread / total
    best = list(logits).index(top)  # the first largest logit
    top1 = probs[best]
    top2 = max(probs[:best] + probs[best + 1 :])
    return Scores(
        probabilities=probs,
        top1=top1,
        top2=top2,
        margin=top1 - top2,
        entropy=entropy,
        class_index=best,
    )


_LESS_ONE = (-1.0,)  # the maximum's exp(0), taken off the sum exactly by fsum


def _scaled_gap(x: float, top: float, temperature: float) -> float:
    """(x - top) / T, also where x - top is past the float range and x is not masked."""
    gap = x - top
    if gap == _NEG_INF and x != _NEG_INF:
        return x / temperature - top / temperature
    return gap / temperature


def label_for(index: int, event_labels: Sequence[str] | None, policy: Policy) -> str:
    """The event's own labels win, then the topic's, then the class index as text."""
    if event_labels is not None:
        return event_labels[index]
    if policy.labels is not None:
        return policy.labels[index]
    return str(index)


def check_labels(n_classes: int, event_labels: Sequence[str] | None, policy: Policy) -> None:
    """Labels that do not fit the logits would name the wrong class: refuse them loudly."""
    if event_labels is not None and len(event_labels) != n_classes:
        raise ScoringError(
            "labels_length_mismatch",
            f"event has {len(event_labels)} labels for {n_classes} logits",
        )
    if event_labels is None and policy.labels is not None and len(policy.labels) != n_classes:
        raise ScoringError(
            "topic_labels_mismatch",
            f"topic config has {len(policy.labels)} labels for {n_classes} logits",
        )


# The audit sample's rule, stated once: an event is sampled iff the murmur2 hash (Kafka's
# partitioner hash) of its id's UTF-8 bytes, masked to 31 bits, is below ``rate * 2**31``. It
# reads nothing but the id, so a replay or a retried event draws the same answer.
AUDIT_HASH_RANGE = 2**31


def audit_threshold(rate: float) -> float:
    """The bound ``audit_sampled`` holds a hash to; the compiled path is handed it as is."""
    return rate * AUDIT_HASH_RANGE


def audit_sampled(event_id: str, threshold: float) -> bool:
    """Whether the event with this id is in the audit sample (``threshold``: see above)."""
    # Surrogates cannot reach here (orjson refuses them); "surrogatepass" only keeps it total.
    h = _murmur2(event_id.encode("utf-8", "surrogatepass")) & (AUDIT_HASH_RANGE - 1)
    return h < threshold


def _murmur2(data: bytes) -> int:
    # Imported on first use: `logit-router score` never samples, and starts without aiokafka.
    from aiokafka.partitioner import murmur2

    h: int = murmur2(data)
    return h


def decide(
    scores: Scores,
    policy: Policy,
    event_labels: Sequence[str] | None = None,
    event_id: str | None = None,
) -> Routing:
    """Escalate on a small margin first (the lab's lesson), then on a low top-1 probability;
    then, given the event's id, an event in the policy's audit sample."""
    reason: EscalationReason | None = None
    if scores.margin < policy.min_margin:
        reason = "low_margin"
    elif policy.min_top1 is not None and scores.top1 < policy.min_top1:
        reason = "low_top1"
    elif (
        event_id is not None
        and policy.audit_sample_rate > 0.0
        and audit_sampled(event_id, audit_threshold(policy.audit_sample_rate))
    ):
        reason = AUDIT_SAMPLE
    return Routing(
        decision="routed" if reason is None else "escalated",
        reason=reason,
        label=label_for(scores.class_index, event_labels, policy),
        scores=scores,
    )


def route(
    logits: Sequence[float],
    policy: Policy,
    event_labels: Sequence[str] | None = None,
    event_id: str | None = None,
) -> Routing:
    """Score one event and decide where it goes (with its id: the audit sample too)."""
    check_labels(len(logits), event_labels, policy)
    return decide(score(logits, policy.temperature), policy, event_labels, event_id)
