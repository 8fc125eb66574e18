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

# The policy types: the rules in ``rules``, which the command line's converters call too.
Temperature = Annotated[StrictFloat, AfterValidator(rules.temperature)]
Probability = Annotated[StrictFloat, AfterValidator(rules.probability)]
Labels = Annotated[tuple[str, ...], AfterValidator(rules.labels)]
TopicName = Annotated[str, AfterValidator(rules.topic_name)]

# Field docs are the docstrings under each field (they reach docs/configuration.md).
FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
