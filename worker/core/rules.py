"""The rules a policy value, or a topic's name, must meet, each written once.

A temperature, a threshold, a topic's label list or its name is checked where it enters: the config
(``settings``, through pydantic) or the command line (``cli.common``); both call these
functions, so a refusal reads the same wherever the value came from. Past the edge a ``Policy``
is trusted, and nothing on the per-event path checks it again.

Plain functions with no imports beyond the standard library: ``logit-router score`` checks its
arguments without loading pydantic. Each returns its value or raises ``ValueError`` whose text
says what is wrong; the caller names the field and the value given.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Literal, get_args

MIN_LABELS = 2
# Kafka's own rule for a topic name (its Topic.validate): a name past it would only fail later,
# at the broker, once the worker is running.
_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
LOG_LEVELS: tuple[str, ...] = get_args(LogLevel)


def temperature(value: float) -> float:
    """> 0, finite"""
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError("must be finite and > 0")
    return value


def probability(value: float) -> float:
    """in [0, 1]"""
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise ValueError("must lie in [0, 1]")
    return value


def labels(values: Sequence[str]) -> tuple[str, ...]:
    """at least 2, none empty, no two alike

    (A repeated name would hide a class.)"""
    if len(values) < MIN_LABELS:
        raise ValueError(f"at least {MIN_LABELS} labels are needed")
    if any(not value for value in values):
        raise ValueError("a label must not be empty")
    repeated = sorted(value for value, count in Counter(values).items() if count > 1)
    if repeated:
        raise ValueError(f"labels must be unique, repeated: {', '.join(map(repr, repeated))}")
    return tuple(values)


def topic_name(value: str) -> str:
    """a Kafka topic name: 1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`"""
    if not _TOPIC.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            "not a Kafka topic name (1 to 249 characters of a-z, A-Z, 0-9, '.', '_', '-'; "
            "not '.' or '..')"
        )
    return value
