"""``replay --as-published`` without a broker: which version re-scores which event."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.consumed import Consumed
from worker.audit.diff import View
from worker.audit.published import AsPublished
from worker.cli.main import main
from worker.core.settings import Settings, load_settings, routing_document

EXAMPLE = Path(__file__).parents[2] / "config" / "example.toml"
TOPIC = "fraud.scores"


def settings_at(temperature: float) -> Settings:
    doc = load_settings(EXAMPLE).model_dump()
    doc["topics"][TOPIC]["temperature"] = temperature
    return Settings(**doc)


def view(version: str | None) -> View:
    decision = "routed" if version else "dead_letter"
    return View(decision, None, None, None, None, None, None, None, version, None, (None, None, ()))


def record(offset: int, value: bytes = b'{"id": "e", "logits": [2.0, 0.5]}') -> Consumed:
    return Consumed(TOPIC, 0, offset, 1_000 + offset, None, value, [])


def temperature_of(outbound: object) -> float:
    return float(orjson.loads(outbound.value)["temperature"])  # type: ignore[attr-defined]


def test_an_event_takes_its_own_version_and_a_dead_letter_the_one_before() -> None:
    a, b = settings_at(1.5), settings_at(0.9)
    va, vb = a.config_version, b.config_version
    originals = {
        (0, 0): [view(None)],  # a dead letter before any scored output: the one after it
        (0, 1): [view(va)],
        (0, 2): [view(None)],
        (0, 3): [view(vb)],
        (0, 4): [view(None)],
    }
    documents = {va: routing_document(a), vb: routing_document(b)}
    published = AsPublished(load_settings(EXAMPLE), documents, originals)
    assert [published.version(0, o) for o in range(5)] == [va, va, va, vb, vb]
    out = published.process([record(1), record(3)])
    assert [v for _, v in out] == [va, vb]
    assert [temperature_of(o) for o, _ in out] == [1.5, 0.9]
    assert published.routers.keys() == {va, vb}  # built once per version
    assert published.used == {va: 1, vb: 1}


def test_no_scored_output_in_the_partition_means_the_current_config() -> None:
    current = load_settings(EXAMPLE)
    published = AsPublished(current, {}, {(0, 7): [view(None)]})
    [(outbound, version)] = published.process([record(7)])
    assert version is None and outbound is not None
    assert temperature_of(outbound) == current.topics[TOPIC].temperature
    assert published.used == {"current": 1}


def test_a_version_the_history_lacks_is_not_guessed() -> None:
    published = AsPublished(load_settings(EXAMPLE), {}, {(0, 0): [view("sha256:abcd")]})
    assert published.process([record(0)]) == [(None, "sha256:abcd")]
    assert published.unknown == {"sha256:abcd": 1}


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "show", "abc"],
        ["config", "show", "sha256:xyz1"],
        ["config", "show"],
        ["config", "history", "--config", "/nonexistent.toml"],
        ["config"],
    ],
)
def test_bad_config_arguments_are_one_line_and_exit_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["config", "history"],
        ["config", "show", "sha256:abcd"],
        ["drift", "snapshot", "--topic", "support.intents", "-o", "REF"],
        ["drift", "--topic", "support.intents", "--reference", "REF"],
    ],
)
def test_commands_that_need_no_policy_run_from_the_environment_alone(
    argv: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # They read only the brokers and the output topics, as docs/audit.md says: no [topics]
    # should have to be made up for them (this was exit 2, "topics = {}: Field required").
    import os

    from worker.core import drift

    for key in list(os.environ):
        if key.startswith("LOGIT_ROUTER_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
    reference = tmp_path / "ref.json"
    found = {m: [0.5] * 10 for m in drift.MEASURES}
    reference.write_bytes(drift.make_reference("t", found, "2026-01-01T00:00:00Z", {}).to_json())
    argv = [str(tmp_path / "out.json") if a == "REF" and "-o" in argv else a for a in argv]
    argv = [str(reference) if a == "REF" else a for a in argv]
    reached: list[str] = []

    async def no_broker(kafka: object) -> None:  # the config passed; stop before any socket
        reached.append(str(getattr(kafka, "bootstrap_servers", "")))
        raise TimeoutError("no broker in a unit test")

    monkeypatch.setattr("worker.cli.config.reachable", no_broker)
    monkeypatch.setattr("worker.cli.drift.reachable", no_broker)
    assert main(argv) == 1
    assert reached == ["127.0.0.1:1"]
    assert "no broker in a unit test" in capsys.readouterr().err
