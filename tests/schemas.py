"""The JSON Schemas ``logit-router schema`` prints, as validators for the tests that hold
published and accepted events to them."""

from __future__ import annotations

import contextlib
import functools
import io
import json
from typing import Any

from jsonschema.protocols import Validator
from jsonschema.validators import validator_for

from worker.cli.main import main


def printed(which: str) -> dict[str, Any]:
    """What ``logit-router schema <which>`` prints, read back as JSON."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["schema", which])
    assert code == 0
    schema: dict[str, Any] = json.loads(out.getvalue())
    return schema


@functools.cache
def validator(which: str) -> Validator:
    """A validator for the printed schema, in the dialect it names, the schema checked first."""
    schema = printed(which)
    cls = validator_for(schema)
    assert cls.META_SCHEMA["$id"] == schema["$schema"]
    cls.check_schema(schema)
    return cls(schema)


def check_output(doc: Any) -> None:
    """Raises ``jsonschema.ValidationError`` for a published event that breaks the schema."""
    validator("output").validate(doc)
