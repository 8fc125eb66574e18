"""docs/configuration.md is the settings model's own reference, and says everything about it."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.devkit import configdoc

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_model_says() -> None:
    if REFERENCE.read_text(encoding="utf-8") != configdoc.render():
        pytest.fail(f"docs/configuration.md is out of date: run `{configdoc.COMMAND}`")


def test_every_key_is_in_the_reference_with_a_description() -> None:
    rows = [row for section in configdoc.sections() for row in section.rows]
    keys = {row.key.strip("`") for row in rows}
    assert {"kafka.bootstrap_servers", 'topics."NAME".temperature', "log.format"} <= keys
    assert [row.key for row in rows if not row.description] == []


def test_a_key_is_named_as_the_environment_names_it() -> None:
    rows = {row.key.strip("`"): row for s in configdoc.sections() for row in s.rows}
    assert rows["kafka.fetch_min_bytes"].env == "`LOGIT_ROUTER_KAFKA__FETCH_MIN_BYTES`"
    temperature = rows['topics."NAME".temperature']
    assert temperature.env == "`LOGIT_ROUTER_TOPICS__NAME__TEMPERATURE`"
    assert temperature.kind == "number, > 0, finite"
    assert temperature.default == "`1.0`"
