"""What the worker's replacements of aiokafka internals share (``worker.stream.fetched``,
``worker.stream.wire``): the release they were written against and tested with, and a check
of a callable's parameters. aiokafka has no hooks for either replacement, so each goes in only
on that release and only while the internals it leans on look as they did."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import aiokafka

TESTED_AIOKAFKA = "0.14."


def tested_release() -> bool:
    """Whether the aiokafka in use is the release the replacements were tested with."""
    return bool(aiokafka.__version__.startswith(TESTED_AIOKAFKA))


def has_parameters(func: Any, names: Sequence[str]) -> bool:
    """Whether ``func`` takes exactly these parameters, in this order."""
    try:
        return list(inspect.signature(func).parameters) == list(names)
    except (TypeError, ValueError):
        return False
