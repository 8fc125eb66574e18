"""Scoring many events in one call, vectorised with numpy over events of the same width.

``routing.route`` (plain Python) serves one event at a time, where numpy's per-call overhead
would dominate: ``score``, and rows near a threshold (below). Every batch goes through numpy,
whatever its size, so that the bytes published for an event depend only on the event and its
policy, never on which other events shared its batch: a replay reproduces them exactly.

The batch path must give the decisions of the scalar path (``routing.route``), event for event,
so that a live decision, its replay and ``logit-router score`` never disagree. numpy's ``exp``
and pairwise sum differ from ``math.exp`` and ``math.fsum`` by a few ulps, which could flip a
comparison that sits exactly on a threshold. So, like an adaptive geometric predicate, a row
whose margin or top-1 probability lies within ``GUARD`` of a threshold (or of a tie) is
recomputed by the scalar path, which is the reference. Everything else keeps the fast result,
whose probabilities are within the same error bound as the scalar ones.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from worker.routing import (
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
        return exc


def _route_vectorised(
    items: Sequence[Item], rows: list[int], out: list[Routing | ScoringError | None]
) -> None:
    x = np.array([items[i].logits for i in rows], dtype=np.float64)
    temps = np.array([items[i].policy.temperature for i in rows], dtype=np.float64)
    top = x.max(axis=1)
    # Rows the scalar path must judge: NaN, +inf, or no finite logit at all.
    odd = np.isnan(x).any(axis=1) | (top == np.inf) | (top == -np.inf)
    with np.errstate(all="ignore"):
        z = (x - top[:, None]) / temps[:, None]
        e = np.exp(z)
        total = e.sum(axis=1)
        p = e / total[:, None]
        spread = np.where(e > 0.0, e * -z, 0.0).sum(axis=1)
    entropy = np.log(total) + spread / total
    best = p.argmax(axis=1)  # first maximum: the lowest index on a tie
    top1 = p[np.arange(len(rows)), best]
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2]
    margin = top1 - top2

    probs_rows = p.tolist()
    for k, i in enumerate(rows):
        item = items[i]
        m = float(margin[k])
        t1 = float(top1[k])
        policy = item.policy
        if (
            odd[k]
            or m < GUARD
            or abs(m - policy.min_margin) < GUARD
            or (policy.min_top1 is not None and abs(t1 - policy.min_top1) < GUARD)
        ):
            out[i] = _route_one(item)
            continue
        try:
            check_labels(len(item.logits), item.labels, policy)
        except ScoringError as exc:
            out[i] = exc
            continue
        scores = Scores(
            probabilities=tuple(probs_rows[k]),
            top1=t1,
            top2=float(top2[k]),
            margin=m,
            entropy=float(entropy[k]),
            class_index=int(best[k]),
        )
        out[i] = decide(scores, policy, item.labels)
