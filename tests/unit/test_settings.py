"""Config from TOML plus environment; a bad config is refused naming the field and value."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from worker.core.settings import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).parents[2] / "config" / "example.toml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("LOGIT_ROUTER_"):
            monkeypatch.delenv(key)


def test_example_config_loads() -> None:
    s = load_settings(EXAMPLE)
    assert s.kafka.bootstrap_servers == "localhost:9092"
    assert s.topics["support.intents"].temperature == 0.7
    assert s.topics["support.intents"].labels == ("billing", "tech", "sales")
    assert s.topics["fraud.scores"].min_top1 == 0.6
    assert s.outputs.dead_letter == "logits.dead-letter"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS", "10.0.0.1:9093")
    monkeypatch.setenv("LOGIT_ROUTER_PROCESSING__DRAIN_TIMEOUT_S", "3.5")
    s = load_settings(EXAMPLE)
    assert s.kafka.bootstrap_servers == "10.0.0.1:9093"
    assert s.kafka.group_id == "logit-router"  # the rest of [kafka] still comes from the file
    assert s.processing.drain_timeout_s == 3.5


def test_settings_are_frozen() -> None:
    s = load_settings(EXAMPLE)
    with pytest.raises(ValueError, match="frozen"):
        s.kafka = s.kafka  # type: ignore[misc]


def test_config_version_is_stable_and_tracks_routing_config(tmp_path: Path) -> None:
    a = load_settings(EXAMPLE).config_version
    assert a == load_settings(EXAMPLE).config_version
    assert a.startswith("sha256:") and len(a) == len("sha256:") + 64
    moved = load_settings(EXAMPLE, kafka={"bootstrap_servers": "elsewhere:9092"})
    assert moved.config_version == a  # where the brokers are does not change a decision
    text = EXAMPLE.read_text().replace("temperature = 0.7", "temperature = 0.8")
    changed = tmp_path / "c.toml"
    changed.write_text(text)
    assert load_settings(changed).config_version != a


BAD_FIELDS = [
    ('[topics."t"]\ntemperature = 0', "topics.t.temperature", "0"),
    ('[topics."t"]\ntemperature = -1.5', "topics.t.temperature", "-1.5"),
    ('[topics."t"]\ntemperature = inf', "topics.t.temperature", "inf"),
    ('[topics."t"]\ntemperature = nan', "topics.t.temperature", "nan"),
    ('[topics."t"]\ntemperature = "hot"', "topics.t.temperature", "'hot'"),
    ('[topics."t"]\nmin_margin = 1.5', "topics.t.min_margin", "1.5"),
    ('[topics."t"]\nmin_margin = -0.1', "topics.t.min_margin", "-0.1"),
    ('[topics."t"]\nmin_top1 = 2', "topics.t.min_top1", "2"),
    ('[topics."t"]\nlabels = ["only-one"]', "topics.t.labels", "['only-one']"),
    # Strict types in the file: no bool or string for a number, no string for a bool.
    ('[topics."t"]\ntemperature = true', "topics.t.temperature", "True"),
    ('[topics."t"]\nmin_margin = "0.15"', "topics.t.min_margin", "'0.15'"),
    ('[topics."t"]\nmin_top1 = false', "topics.t.min_top1", "False"),
    ("[kafka]\nsession_timeout_ms = '45000'\n[topics.t]", "kafka.session_timeout_ms", "'45000'"),
    ("[http]\nenabled = 'no'\n[topics.t]", "http.enabled", "'no'"),
    # Labels: each one named, none twice.
    ('[topics."t"]\nlabels = ["", ""]', "topics.t.labels", "['', '']"),
    ('[topics."t"]\nlabels = ["a", "a", "b"]', "topics.t.labels", "['a', 'a', 'b']"),
    ('[topics."t"]\ncolour = "red"', "topics.t.colour", "'red'"),
    ("[kafka]\nbootstrap_servers = ''\n[topics.t]", "kafka.bootstrap_servers", "''"),
    ("[kafka]\nsession_timeout_ms = 5\n[topics.t]", "kafka.session_timeout_ms", "5"),
    ("[kafka]\nfetch_min_bytes = 0\n[topics.t]", "kafka.fetch_min_bytes", "0"),
    (
        "[kafka]\nfetch_min_bytes = 1000\nfetch_min_bytes_busy = 999\n[topics.t]",
        "fetch_min_bytes_busy must be at least fetch_min_bytes",
        "",
    ),
    ("[kafka]\nfetch_max_wait_ms_busy = 5\n[topics.t]", "fetch_max_wait_ms_busy", ""),
    ("[kafka]\nsecurity_protocol = 'SSH'\n[topics.t]", "kafka.security_protocol", "'SSH'"),
    ("[http]\nport = 70000\n[topics.t]", "http.port", "70000"),
    ("[processing]\nguarantee = 'maybe'\n[topics.t]", "processing.guarantee", "'maybe'"),
    ("[processing]\ndrain_timeout_s = 0\n[topics.t]", "processing.drain_timeout_s", "0"),
    ("[limits]\nmax_classes = 1\n[topics.t]", "limits.max_classes", "1"),
    ("[outputs]\nrouted = 'x'\nescalated = 'x'\n[topics.t]", "outputs", ""),
    ("[outputs]\nrouted = 't'\n[topics.t]", "input topics ['t'] are also output topics", ""),
    ("[kafka]\nbootstrap_servers = 'x:1'", "topics", ""),
    ("[log]\nlevel = 'LOUD'\n[topics.t]", "log.level", "'LOUD'"),
]


@pytest.mark.parametrize(("toml", "field", "value"), BAD_FIELDS)
def test_bad_config_names_field_and_value(
    tmp_path: Path, toml: str, field: str, value: str
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    message = str(err.value)
    assert field in message
    assert f"= {value}" in message or not value


def test_whole_numbers_stand_for_floats(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[topics."t"]\ntemperature = 1\nmin_margin = 0\n[kafka]\nconnect_timeout_s = 5\n'
    )
    s = load_settings(path)
    assert (s.topics["t"].temperature, s.topics["t"].min_margin) == (1.0, 0.0)
    assert s.kafka.connect_timeout_s == 5.0


@pytest.mark.parametrize(
    ("name", "text", "field", "shown"),
    [
        ("LOGIT_ROUTER_HTTP__PORT", "eighty", "http.port", "'eighty'"),
        (
            "LOGIT_ROUTER_TOPICS__support.intents__TEMPERATURE",
            "hot",
            "topics.support.intents.temperature",
            "'hot'",
        ),
        (
            "LOGIT_ROUTER_TOPICS__support.intents__TEMPERATURE",
            "0",
            "topics.support.intents.temperature",
            "0.0",
        ),
        ("LOGIT_ROUTER_HTTP__ENABLED", "maybe", "http.enabled", "'maybe'"),
        ("LOGIT_ROUTER_KAFKA__BOGUS", "1", "kafka.bogus", "'1'"),
    ],
)
def test_bad_environment_value_names_the_field(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, field: str, shown: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(ConfigError) as err:
        load_settings(EXAMPLE)
    assert f"{field} = {shown}:" in str(err.value)


def test_environment_strings_are_read_as_the_fields_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__support.intents__TEMPERATURE", "0.9")
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__fraud.scores__MIN_TOP1", "0.5")
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__fraud.scores__LABELS", '["ok", "fraud"]')
    monkeypatch.setenv("LOGIT_ROUTER_PROCESSING__MAX_BATCH_RECORDS", "300")
    monkeypatch.setenv("LOGIT_ROUTER_HTTP__ENABLED", "false")
    s = load_settings(EXAMPLE)
    assert s.topics["support.intents"].temperature == 0.9
    assert s.topics["support.intents"].min_margin == 0.15  # the rest of the topic: the file's
    assert s.topics["fraud.scores"].min_top1 == 0.5
    assert s.topics["fraud.scores"].labels == ("ok", "fraud")
    assert s.processing.max_batch_records == 300
    assert s.http.enabled is False


@pytest.mark.parametrize("topic", ["Support-Intents", "Fraud.Scores-EU_v2", "a__b", "UPPER"])
def test_an_environment_override_reaches_a_topic_named_with_capitals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, topic: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[topics."{topic}"]\ntemperature = 0.7\nmin_margin = 0.15\n')
    monkeypatch.setenv(f"LOGIT_ROUTER_TOPICS__{topic}__MIN_MARGIN", "0.5")
    s = load_settings(path)
    assert list(s.topics) == [topic]  # no second topic under another spelling
    assert (s.topics[topic].temperature, s.topics[topic].min_margin) == (0.7, 0.5)


@pytest.mark.parametrize("topic", ["support", "a__b", "Shadow"])
def test_an_environment_variable_reaches_a_section_of_a_topic(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, topic: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[topics."{topic}".shadow]\ntemperature = 0.7\n')
    monkeypatch.setenv(f"LOGIT_ROUTER_TOPICS__{topic}__SHADOW__MIN_MARGIN", "0.25")
    monkeypatch.setenv(f"LOGIT_ROUTER_TOPICS__{topic}__MIN_MARGIN", "0.05")
    s = load_settings(path)
    assert list(s.topics) == [topic]
    shadow = s.topics[topic].shadow
    assert shadow is not None and (shadow.temperature, shadow.min_margin) == (0.7, 0.25)
    assert s.topics[topic].min_margin == 0.05


def test_an_environment_variable_for_a_new_topic_adds_it_under_its_exact_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_TOPICS__Billing.Disputes__TEMPERATURE", "1.2")
    s = load_settings(EXAMPLE)
    assert set(s.topics) == {"support.intents", "fraud.scores", "Billing.Disputes"}
    assert (s.topics["Billing.Disputes"].temperature, s.topics["Billing.Disputes"].min_margin) == (
        1.2,
        0.1,
    )


def test_field_names_match_in_any_case_and_other_variables_are_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("logit_router_kafka__group_id", "lower")
    monkeypatch.setenv("LOGIT_ROUTER_Log__Level", "DEBUG")
    monkeypatch.setenv("LOGIT_ROUTER_BROKER", "local")  # the dev kit's, not a setting
    s = load_settings(EXAMPLE)
    assert (s.kafka.group_id, s.log.level) == ("lower", "DEBUG")


def test_secrets_are_masked_in_errors_and_repr() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(
            EXAMPLE,
            kafka={"security_protocol": "SASL_SSL", "sasl_password": "hunter2-secret"},
        )
    assert "hunter2" not in str(err.value)
    assert "sasl_mechanism is required" in str(err.value)
    ok = load_settings(
        EXAMPLE,
        kafka={
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "SCRAM-SHA-512",
            "sasl_username": "router",
            "sasl_password": "hunter2-secret",
        },
    )
    assert "hunter2" not in repr(ok)
    assert "hunter2" not in ok.model_dump_json()
    assert ok.kafka.sasl_password is not None
    assert ok.kafka.sasl_password.get_secret_value() == "hunter2-secret"


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[topics\n")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_settings(broken)


def test_settings_can_be_built_directly() -> None:
    s = Settings(topics={"a": {"temperature": 2.0}})
    assert s.policies()["a"].temperature == 2.0
    assert s.policies()["a"].min_margin == 0.1


@pytest.mark.parametrize(
    ("processing", "expected"),
    [
        ({}, 2_000),
        ({"guarantee": "exactly_once"}, 10_000),  # larger batches amortise the transactions
        ({"guarantee": "exactly_once", "max_batch_records": 300}, 300),
        ({"max_batch_records": 20_000}, 20_000),
    ],
)
def test_batch_size_defaults_to_the_guarantee_and_yields_to_the_config(
    processing: dict[str, object], expected: int
) -> None:
    s = Settings(topics={"a": {}}, processing=processing)
    assert s.processing.batch_records == expected


def test_a_batch_size_out_of_bounds_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[topics.a]\n[processing]\nmax_batch_records = 0\n")
    with pytest.raises(ConfigError, match=r"processing\.max_batch_records"):
        load_settings(path)


async def test_the_consumer_fetches_with_the_configured_bounds() -> None:
    """``kafka.fetch_min_bytes`` and ``kafka.fetch_max_wait_ms`` reach the client, defaults
    included (192 KiB or 10 ms, whichever comes first: docs/performance.md)."""
    from worker.core.kafka_settings import KafkaSettings
    from worker.stream.connections import make_consumer

    default = make_consumer(KafkaSettings(bootstrap_servers="127.0.0.1:9"), group_id="g")
    tuned = make_consumer(
        KafkaSettings(bootstrap_servers="127.0.0.1:9", fetch_min_bytes=1, fetch_max_wait_ms=500),
        group_id="g",
    )
    try:
        # aiokafka keeps them as given until start() hands them to its fetcher.
        assert (default._fetch_min_bytes, default._fetch_max_wait_ms) == (196_608, 10)
        assert (tuned._fetch_min_bytes, tuned._fetch_max_wait_ms) == (1, 500)
    finally:
        await default.stop()
        await tuned.stop()


@pytest.mark.parametrize(
    ("exactly_once", "configured", "expected"),
    [
        (False, None, 1_048_576),
        (True, None, 8_388_608),  # what a batch holds of a partition is one transaction
        (True, 65_536, 65_536),
        (False, 4_194_304, 4_194_304),
    ],
)
async def test_the_fetch_size_per_partition_defaults_to_the_guarantee_and_yields_to_the_config(
    exactly_once: bool, configured: int | None, expected: int
) -> None:
    from worker.core.kafka_settings import KafkaSettings
    from worker.stream.connections import make_consumer

    kafka = KafkaSettings(bootstrap_servers="127.0.0.1:9", max_partition_fetch_bytes=configured)
    consumer = make_consumer(kafka, group_id="g", exactly_once=exactly_once)
    try:
        assert consumer._max_partition_fetch_bytes == expected
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    "servers",
    ["127.0.0.1:abc", "127.0.0.1:-1", "127.0.0.1:99999", "127.0.0.1:0", "127.0.0.1:1,,",
     ",127.0.0.1:1", "127.0.0.1", ":9092", "::1:9092", "[::1", "[not-v6]:9092", "a b:9092",
     "127.0.0.1:+1", "127.0.0.1:1_0"],
)  # fmt: skip
def test_a_broker_list_that_is_not_host_port_pairs_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, servers: str
) -> None:
    # From the environment too, where a typo used to reach aiokafka (a traceback, or port 9092).
    monkeypatch.setenv("LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS", servers)
    with pytest.raises(ConfigError, match=r"kafka\.bootstrap_servers = "):
        load_settings(EXAMPLE)


@pytest.mark.parametrize(
    "servers",
    ["b-1.kafka.internal:9093", "10.0.0.1:1,10.0.0.2:65535", "a:9092, b:9092", "[::1]:9092"],
)
def test_broker_lists_aiokafka_reads_are_accepted(servers: str) -> None:
    assert (
        load_settings(EXAMPLE, kafka={"bootstrap_servers": servers}).kafka.bootstrap_servers
        == servers
    )


@pytest.mark.parametrize("host", ["", " "])
def test_an_empty_http_host_is_refused_not_read_as_every_interface(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv("LOGIT_ROUTER_HTTP__HOST", host)
    with pytest.raises(ConfigError, match=r"http\.host = .*0\.0\.0\.0 or ::"):
        load_settings(EXAMPLE)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "127.0.0.1", "::1"])  # noqa: S104
def test_every_interface_is_still_there_by_name(host: str) -> None:
    assert load_settings(EXAMPLE, http={"host": host}).http.host == host


@pytest.mark.parametrize("name", ["", "a b/c", ".", "..", "x" * 250, "tópico", "a:b"])
def test_an_input_topic_kafka_would_refuse_is_refused_by_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[topics."{name}"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r'topics\."NAME" = .*not a Kafka topic name'):
        load_settings(path)


@pytest.mark.parametrize("field", ["routed", "escalated", "dead_letter", "config_history"])
def test_an_output_topic_kafka_would_refuse_is_refused_by_name(tmp_path: Path, field: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f'[topics.t]\n[outputs]\n{field} = "x y"\n')
    with pytest.raises(ConfigError, match=rf"outputs\.{field} = 'x y': not a Kafka topic name"):
        load_settings(path)


def test_topic_names_at_kafkas_limits_are_accepted() -> None:
    longest = "a" * 249
    s = Settings(topics={longest: {}, "A-Z_0.9": {}}, outputs={"routed": "..."})
    assert set(s.topics) == {longest, "A-Z_0.9"}


@pytest.mark.parametrize(
    "content", [b'[topics."\xff"]\n', b"\x7fELF\x02\x01\x01\x00\xff\xfe"], ids=["toml", "binary"]
)
def test_a_config_file_that_is_not_utf8_is_refused_naming_the_file(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=rf"config file {path} cannot be read: not UTF-8 text"):
        load_settings(path)


@pytest.mark.parametrize(
    ("name", "value", "shown"),
    [
        (b"LOGIT_ROUTER_TOPICS__support.intents__LABELS", b'["\xff","b","c"]', "its value"),
        (b"LOGIT_ROUTER_TOPICS__\xff__TEMPERATURE", b"1", "its name"),
        (b"LOGIT_ROUTER_KAFKA__SASL_PASSWORD", b"hunter2\xff", "its value"),
    ],
)
def test_an_environment_variable_that_is_not_utf8_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: bytes, value: bytes, shown: str
) -> None:
    # Python keeps such bytes as lone surrogates, which used to fail later, at the first encode.
    monkeypatch.setenv(os.fsdecode(name), os.fsdecode(value))
    with pytest.raises(ConfigError) as err:
        load_settings(EXAMPLE)
    printable = name.decode("ascii", "backslashreplace")
    assert str(err.value) == f"environment variable {printable}: {shown} is not UTF-8 text"
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    ("toml", "field"),
    [
        ("[kafka]\nconnect_timeout_s = inf", "kafka.connect_timeout_s"),
        ("[kafka]\nconnect_timeout_s = 1e300", "kafka.connect_timeout_s"),
        ("[kafka]\nconnect_timeout_s = 86400.5", "kafka.connect_timeout_s"),
        ("[processing]\ndrain_timeout_s = inf", "processing.drain_timeout_s"),
        ("[processing]\ndrain_timeout_s = 1e300", "processing.drain_timeout_s"),
        ("[processing]\ntransaction_timeout_ms = 2147483648", "processing.transaction_timeout_ms"),
        ("[kafka]\nsession_timeout_ms = 99999999999999999999", "kafka.session_timeout_ms"),
        ("[kafka]\nrequest_timeout_ms = 2147483648", "kafka.request_timeout_ms"),
        ("[kafka]\nfetch_max_wait_ms = 2147483648", "kafka.fetch_max_wait_ms"),
        ("[kafka]\nmax_batch_size = 2147483648", "kafka.max_batch_size"),
        ("[kafka]\nmax_partition_fetch_bytes = 2147483648", "kafka.max_partition_fetch_bytes"),
        ("[kafka]\nheartbeat_interval_ms = 60000", "heartbeat_interval_ms (60000) must be below"),
        ("[kafka]\nheartbeat_interval_ms = 45000", "session_timeout_ms (45000)"),
    ],
)
def test_numbers_past_what_kafka_or_a_timer_can_hold_are_refused_by_name(
    tmp_path: Path, toml: str, field: str
) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"{toml}\n[topics.t]\n")
    with pytest.raises(ConfigError, match=re.escape(field)):
        load_settings(path)


def test_the_largest_values_kafka_holds_are_accepted(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        "[kafka]\nconnect_timeout_s = 86400\nsession_timeout_ms = 2147483647\n"
        "heartbeat_interval_ms = 2147483646\nmax_poll_interval_ms = 2147483647\n"
        "[processing]\ndrain_timeout_s = 86400\n[topics.t]\n"
    )
    s = load_settings(path)
    assert (s.kafka.session_timeout_ms, s.kafka.connect_timeout_s) == (2**31 - 1, 86_400.0)


@pytest.mark.parametrize("window", ["inf", "1e-14", "0.5", "604801"])
def test_a_drift_window_outside_a_second_to_a_week_is_refused_by_name(
    tmp_path: Path, window: str
) -> None:
    from worker.core import drift

    reference = tmp_path / "ref.json"
    found = {m: [0.5] * 10 for m in drift.MEASURES}
    reference.write_bytes(drift.make_reference("t", found, "2026-01-01T00:00:00Z", {}).to_json())
    path = tmp_path / "c.toml"
    path.write_text(f'[topics.t.drift]\nreference = "{reference}"\nwindow_s = {window}\n')
    with pytest.raises(ConfigError, match=r"topics\.t\.drift\.window_s"):
        load_settings(path)


@pytest.mark.parametrize("name", ["SUPPORT.INTENTS", "Support.Intents"])
def test_an_override_for_a_file_topic_in_another_case_is_refused_not_a_new_topic(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # The reference once said a topic's name was read in lower case; Kafka's names are
    # case-sensitive, so this would have consumed a second topic and left the file's unchanged.
    monkeypatch.setenv(f"LOGIT_ROUTER_TOPICS__{name}__TEMPERATURE", "0.33")
    with pytest.raises(ConfigError, match=rf"topics\.\"{re.escape(name)}\" .*'support\.intents'"):
        load_settings(EXAMPLE)


def test_two_topics_differing_in_case_may_both_be_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[topics."Orders"]\n[topics."orders"]\ntemperature = 2.0\n')
    assert set(load_settings(path).topics) == {"Orders", "orders"}


def test_a_command_that_needs_no_policy_loads_without_topics_but_still_checks_any_given(
    tmp_path: Path,
) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[kafka]\nbootstrap_servers = '127.0.0.1:1'\n")
    assert load_settings(path, topics_needed=False).topics == {}
    with pytest.raises(ConfigError, match="topics"):
        load_settings(path)  # the worker itself still needs one
    path.write_text('[topics."a b"]\n')
    with pytest.raises(ConfigError, match="not a Kafka topic name"):
        load_settings(path, topics_needed=False)
