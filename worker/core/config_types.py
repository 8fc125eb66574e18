"""The value types and model config that every part of the settings shares."""

from __future__ import annotations

from typing import Annotated

from pydantic import (
    AfterValidator,
    ConfigDict,
    StrictFloat,
)

from worker.core import rules

# Numbers and switches are strict (StrictInt, StrictFloat, StrictBool): in the file, a bool or a
# string does not stand for a number (``temperature = true`` is refused, not read as 1.0), though
# an int does for a float. The environment has only strings: worker.core.environment reads each
# as its field's type before the model sees it.

# Bounds that keep a value finite and in range where it ends up: Kafka keeps its numeric settings
# as 32-bit ints (a larger one fails in the client, or at the broker, once running), and a
# timeout of inf or 1e300 s is no bound at all (asyncio cannot even schedule it).
INT32_MAX = 2**31 - 1
DAY_S = 86_400.0

# The policy types: the rules in ``rules``, which the command line's converters call too.
Temperature = Annotated[StrictFloat, AfterValidator(rules.temperature)]
Probability = Annotated[StrictFloat, AfterValidator(rules.probability)]
Labels = Annotated[tuple[str, ...], AfterValidator(rules.labels)]
TopicName = Annotated[str, AfterValidator(rules.topic_name)]

# Field docs are the docstrings under each field (they reach docs/configuration.md).
FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
