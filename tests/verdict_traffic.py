"""Logits with labels of a known law, for the calibration tests.

``labels_at`` draws each label from softmax(z / T*): the law temperature scaling assumes, so
the fitted T should come back as T*. ``overconfident_labels`` breaks that law on purpose: the
classifier's hard events (small margin at T = 1) are far less sure than their logits say and
its easy ones a little surer, as real models often are. No single temperature is then right
for every event, and the fit depends on which events it sees: what the weights are for.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from worker.core import calibration as cal
from worker.devkit import traffic

HARD_MARGIN = 0.3  # margin at T = 1 below which an event is "hard"
HARD_T, EASY_T = 2.2, 0.8


def logits(rng: np.random.Generator, n: int, classes: int, lift: float = 4.0) -> Any:
    """Gaussian logits with one class lifted by up to ``lift``: a spread of margins."""
    z = rng.normal(0.0, 1.0, (n, classes))
    z[np.arange(n), rng.integers(0, classes, n)] += rng.uniform(0.0, lift, n)
    return z


def labels_at(rng: np.random.Generator, z: Any, temperature: float) -> Any:
    """One label per row, drawn from softmax(z / temperature)."""
    p = cal.probabilities(z, temperature)
    return (p.cumsum(axis=1) > rng.random(len(z))[:, None]).argmax(axis=1).astype(np.int64)


def events(z: Any) -> list[traffic.Event]:
    """One input event per row of logits, ids ``e0``, ``e1``, ... (what the verdicts name)."""
    return [
        traffic.Event(None, orjson.dumps({"id": f"e{i}", "logits": row}), [], None)
        for i, row in enumerate(z.tolist())
    ]


def overconfident_labels(rng: np.random.Generator, z: Any) -> Any:
    hard = cal.margins(cal.probabilities(z, 1.0)) < HARD_MARGIN
    scaled = z / np.where(hard, HARD_T, EASY_T)[:, None]
    return labels_at(rng, scaled, 1.0)
