"""Scoring many events in one call, vectorised with numpy over events of the same width.

``whatif`` scores thousands of stored events once per candidate policy and uses this path.
The worker does not: it publishes the reference values of ``routing.route`` (computed in Python
or, bit for bit the same on one platform, by the compiled hot path, ``worker.core.native``),
since numpy's ``exp`` has SIMD code of its own, chosen by CPU, and the bytes published should
depend on no more than the platform's C library.

The batch path must give the decisions of the scalar path (``routing.route``), event for event,
so that a what-if rate is the rate the live worker would have. numpy's ``exp``
and pairwise sum differ from ``math.exp`` and ``math.fsum`` by a few ulps, which could flip a
comparison that sits exactly on a threshold. So, like an adaptive geometric predicate, a row
whose margin or top-1 probability lies within ``GUARD`` of a threshold (or of a tie) is
recomputed by the scalar path, which is the reference. Everything else keeps the fast result,
whose probabilities are within the same error bound as the scalar ones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from itertools import chain
from typing import NamedTuple

import numpy as np

from worker.core.routing import (
    Policy,
    Routing,
    Scores,
    ScoringError,
    check_labels,
    decide,
    route,
)

# Far above the numpy-vs-scalar disagreement (< 1e-13 for 10,000 classes), far below any
# threshold an operator would set: a random event lands in the band about once in 1e10.
GUARD = 1e-10


class Item(NamedTuple):
    logits: Sequence[float]
    policy: Policy
    labels: Sequence[str] | None = None


def route_batch(items: Sequence[Item]) -> list[Routing | ScoringError]:
    """Route every item; a row that cannot be scored yields its ``ScoringError`` in place."""
    out: list[Routing | ScoringError | None] = [None] * len(items)
    by_width: defaultdict[int, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        by_width[len(item.logits)].append(i)
    for width, rows in by_width.items():
        if width >= 2:
            _route_vectorised(items, rows, out)
        else:
            for i in rows:
                out[i] = _route_one(items[i])
    return out  # type: ignore[return-value]  # every slot is filled above


def _route_one(item: Item) -> Routing | ScoringError:
    try:
        return route(item.logits, item.policy, item.labels)
    except ScoringError as exc:
        # Without its traceback: the error is kept as a value in the batch's result list, and
        # a traceback would hold this call's frames (and that list) in a reference cycle.
        return exc.with_traceback(None)


def _route_vectorised(
    items: Sequence[Item], rows: list[int], out: list[Routing | ScoringError | None]
) -> None:
    n = len(rows)
    width = len(items[rows[0]].logits)
    # One flat pass over the logits is cheaper than letting numpy discover a nested shape.
    flat = chain.from_iterable(items[i].logits for i in rows)
    x = np.fromiter(flat, dtype=np.float64, count=n * width).reshape(n, width)
    policies = [items[i].policy for i in rows]
    temps = np.fromiter((p.temperature for p in policies), dtype=np.float64, count=n)
    top = x.max(axis=1)
    # Rows the scalar path must judge: NaN, +inf, or no finite logit at all.
    odd = np.isnan(x).any(axis=1) | (top == np.inf) | (top == -np.inf)
    with np.errstate(all="ignore"):  # and a gap past the float range (``routing._scaled_gap``)
        odd |= (np.isneginf(x - top[:, None]) & ~np.isneginf(x)).any(axis=1)
    best = x.argmax(axis=1)  # the first largest logit, as the scalar path
    rows_n = np.arange(n)
    with np.errstate(all="ignore"):
        z = (x - top[:, None]) / temps[:, None]
        e = np.exp(z)
        total = e.sum(axis=1)
        p = e / total[:, None]
        spread = np.where(e > 0.0, e * -z, 0.0).sum(axis=1)
        others = e.copy()
        others[rows_n, best] = 0.0  # the maximum's exp(0) = 1, left out of the log1p
        entropy = np.log1p(others.sum(axis=1)) + spread / total
    top1 = p[rows_n, best]
    top2 = np.partition(p, width - 2, axis=1)[:, -2]
    margin = top1 - top2
    # The guard band, for every row at once (IEEE arithmetic: the same verdicts as per row).
    min_margin = np.fromiter((p.min_margin for p in policies), dtype=np.float64, count=n)
    min_top1 = np.fromiter(
        (math.nan if p.min_top1 is None else p.min_top1 for p in policies),
        dtype=np.float64,
        count=n,
    )
    with np.errstate(invalid="ignore"):
        near = (
            odd
            | (margin < GUARD)
            | (np.abs(margin - min_margin) < GUARD)
            | (np.abs(top1 - min_top1) < GUARD)  # NaN (no min_top1) compares False
        )

    # Plain Python values, converted once per array rather than once per element.
    probs_rows = p.tolist()
    near_l, best_l = near.tolist(), best.tolist()
    top1_l, top2_l, margin_l, entropy_l = (
        top1.tolist(),
        top2.tolist(),
        margin.tolist(),
        entropy.tolist(),
    )
    for k, i in enumerate(rows):
        item = items[i]
        if near_l[k]:
            out[i] = _route_one(item)
            continue
        policy, labels = item.policy, item.labels
        if labels is not None or policy.labels is not None:
            try:
                check_labels(width, labels, policy)
            except ScoringError as exc:
                out[i] = exc.with_traceback(None)
                continue
        scores = Scores(
            tuple(probs_rows[k]), top1_l[k], top2_l[k], margin_l[k], entropy_l[k], best_l[k]
        )
        out[i] = decide(scores, policy, labels)
