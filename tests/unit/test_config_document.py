"""The routing document: the bytes a ``config_version`` is the hash of, and back to settings."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from worker.core.errors import ConfigError
from worker.core.settings import (
    Settings,
    load_settings,
    routing_document,
    settings_from_document,
    version_of,
)

EXAMPLE = Path(__file__).parents[2] / "config" / "example.toml"


def test_the_version_is_the_sha256_of_the_document() -> None:
    settings = load_settings(EXAMPLE)
    document = routing_document(settings)
    assert settings.config_version == "sha256:" + hashlib.sha256(document).hexdigest()
    assert version_of(document) == settings.config_version
    doc = orjson.loads(document)
    assert sorted(doc) == ["limits", "outputs", "topics"]
    assert orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) == document  # canonical: keys sorted
    assert doc["topics"]["support.intents"]["temperature"] == 0.7


def test_settings_rebuilt_from_a_document_have_its_version() -> None:
    base = load_settings(EXAMPLE)
    doc = base.model_dump(mode="json")
    doc["topics"]["fraud.scores"]["temperature"] = 2.25
    doc["topics"]["support.intents"]["labels"] = ["a", "b", "c"]
    older = Settings(**doc)
    rebuilt = settings_from_document(routing_document(older), base)
    assert rebuilt.config_version == older.config_version != base.config_version
    assert rebuilt.topics == older.topics
    assert rebuilt.kafka == base.kafka and rebuilt.processing == base.processing


def test_the_environment_does_not_rewrite_a_recorded_document(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = load_settings(EXAMPLE)
    document = routing_document(base)
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__fraud.scores__TEMPERATURE", "3.0")
    now = load_settings(EXAMPLE)
    assert now.topics["fraud.scores"].temperature == 3.0
    rebuilt = settings_from_document(document, now)
    assert rebuilt.topics["fraud.scores"].temperature == 1.5
    assert rebuilt.config_version == version_of(document)


def test_the_history_topic_is_not_part_of_the_version() -> None:
    base = load_settings(EXAMPLE)
    moved = load_settings(EXAMPLE, outputs={**base.outputs.model_dump(), "config_history": "h2"})
    assert moved.outputs.config_history == "h2"
    assert moved.config_version == base.config_version
    assert b"h2" not in routing_document(moved)


@pytest.mark.parametrize("name", ["logits.routed", "support.intents"])
def test_the_history_topic_is_a_topic_of_its_own(name: str) -> None:
    base = load_settings(EXAMPLE)
    with pytest.raises(ConfigError, match=name):
        load_settings(EXAMPLE, outputs={**base.outputs.model_dump(), "config_history": name})


@pytest.mark.parametrize("document", [b"not json", b"{}", b'{"topics": {}, "outputs": {}}'])
def test_a_document_that_is_not_one_is_a_config_error(document: bytes) -> None:
    with pytest.raises(ConfigError):
        settings_from_document(document, load_settings(EXAMPLE))
