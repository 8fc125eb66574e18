"""Configuration: one frozen pydantic-settings model, from a TOML file plus the environment.

Precedence, highest first: environment (``LOGIT_ROUTER_`` prefix, ``__`` between levels, e.g.
``LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS``), secret files (``secrets_dir``), the TOML file,
defaults. Settings are built once in the CLI and passed down; nothing here is global.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.core import rules
from worker.core.config_types import DAY_S, FROZEN, INT32_MAX, TopicName
from worker.core.environment import EnvironmentSource
from worker.core.errors import ConfigError
from worker.core.kafka_settings import KafkaSettings
from worker.core.routing import Policy
from worker.core.topic_settings import TopicPolicy

__all__ = ["ConfigError", "Settings", "load_settings", "routing_document", "version_of"]

ENV_PREFIX = "LOGIT_ROUTER_"
MASK = "'**********'"  # what a secret's value is shown as


class OutputTopics(BaseModel):
    """The three output topics and the config history: all different, none an input topic."""

    model_config = FROZEN

    routed: TopicName = "logits.routed"
    """Confident events: downstream systems act on the top-1 label."""
    escalated: TopicName = "logits.escalated"
    """Uncertain events, for a person or a stronger model to look at."""
    dead_letter: TopicName = "logits.dead-letter"
    """Records that cannot be scored, unchanged, with the reason in headers."""
    config_history: TopicName = "logit-router.config-history"
    """A compacted topic where the worker records each routing config it runs (key: its
    `config_version`, value: the document hashed), for `config show` and `replay
    --as-published`. Not part of the hash itself."""

    @model_validator(mode="after")
    def _distinct(self) -> OutputTopics:
        names = [self.routed, self.escalated, self.dead_letter, self.config_history]
        if len(set(names)) != len(names):
            raise ValueError(f"output topics must be four different topics, got {names}")
        return self


class Limits(BaseModel):
    """Bounds on one input event; an event past them is dead-lettered."""

    model_config = FROZEN

    max_classes: StrictInt = Field(10_000, ge=2)
    """The most logits an event may have (else `too_many_classes`)."""
    max_event_bytes: StrictInt = Field(1_048_576, ge=64)
    """The largest input record value, in bytes (else `payload_too_large`)."""


BATCH_RECORDS = 2_000
EXACTLY_ONCE_BATCH_RECORDS = 10_000


class Processing(BaseModel):
    """How batches are processed, committed and stopped."""

    model_config = FROZEN

    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    """`at_least_once`: offsets are committed once the outputs are acknowledged. `exactly_once`:
    a batch's outputs and offsets go in one Kafka transaction per input partition; readers of
    the outputs must use `isolation_level=read_committed`."""
    max_batch_records: StrictInt | None = Field(
        None,
        ge=1,
        le=100_000,
        description=f"The most records in a batch (one fetch). Unset: {BATCH_RECORDS:,}, or "
        f"{EXACTLY_ONCE_BATCH_RECORDS:,} under exactly-once, where a larger batch spreads each "
        "transaction's round trips over more records.",
    )
    drain_timeout_s: StrictFloat = Field(10.0, gt=0.0, le=DAY_S)
    """The bound on a graceful stop: finish the batches in hand, flush, commit; past it, give up
    and exit."""
    transaction_timeout_ms: StrictInt = Field(60_000, ge=1_000, le=INT32_MAX)
    """Under exactly-once, how long a transaction may stay open before the broker aborts it.
    Must be below `kafka.max_poll_interval_ms`."""
    native: StrictBool = True
    """Route with the compiled hot path when it is installed. The Python path writes the same
    bytes, so this only trades speed (off: to rule the extension out)."""

    @property
    def batch_records(self) -> int:
        """``max_batch_records`` if set, else the default for the guarantee: larger under
        exactly-once, where every batch pays a transaction's round trips for each input
        partition, as Kafka Streams shortens its commit interval under exactly-once (the
        figures: docs/performance.md)."""
        if self.max_batch_records is not None:
            return self.max_batch_records
        return EXACTLY_ONCE_BATCH_RECORDS if self.guarantee == "exactly_once" else BATCH_RECORDS


def _listen_address(host: str) -> str:
    """not empty (`0.0.0.0` or `::` for every interface)"""
    # The server reads an empty host as every interface, /-/reload included: that must be asked
    # for by name, never reached by an empty variable.
    if not host.strip():
        raise ValueError("must not be empty: give 0.0.0.0 or :: to listen on every interface")
    return host


class HttpSettings(BaseModel):
    """The HTTP server for `/metrics`, `/healthz` and `/readyz`, all on one port."""

    model_config = FROZEN

    enabled: StrictBool = True
    """Serve `/metrics`, `/healthz` and `/readyz`."""
    host: Annotated[str, AfterValidator(_listen_address)] = "127.0.0.1"
    """The address to listen on: loopback unless opened up on purpose (`0.0.0.0` in a
    container)."""
    port: StrictInt = Field(9464, ge=0, le=65_535)
    """The port; 0 takes any free one."""


class LogSettings(BaseModel):
    """The worker's log on stderr."""

    model_config = FROZEN

    level: rules.LogLevel = "INFO"
    """The lowest level written."""
    format: Literal["text", "json"] = "text"
    """`text` for people; `json`, one object a line, for log collectors."""


class Settings(BaseSettings):
    # The environment is read by EnvironmentSource, with ENV_PREFIX (see the sources below).
    model_config = SettingsConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)
    from_environment: ClassVar[bool] = True  # and secret files; else the values given alone

    kafka: KafkaSettings = KafkaSettings()
    outputs: OutputTopics = OutputTopics()
    topics: dict[TopicName, TopicPolicy] = Field(min_length=1)
    """The input topics, each with its policy, as `[topics."NAME"]` tables; at least one, each
    `NAME` a Kafka topic name (1 to 249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`)."""
    limits: Limits = Limits()
    processing: Processing = Processing()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()

    @model_validator(mode="after")
    def _transactions_end_before_the_poll_interval(self) -> Settings:
        # A transaction still open when the group gives up on this member would hold its
        # partitions' outputs hostage until the broker's transaction timeout.
        if self.processing.transaction_timeout_ms >= self.kafka.max_poll_interval_ms:
            raise ValueError(
                "processing.transaction_timeout_ms "
                f"({self.processing.transaction_timeout_ms}) must be below "
                f"kafka.max_poll_interval_ms ({self.kafka.max_poll_interval_ms})"
            )
        return self

    @model_validator(mode="after")
    def _inputs_are_not_outputs(self) -> Settings:
        o = self.outputs
        outputs = {o.routed, o.escalated, o.dead_letter, o.config_history}
        loops = sorted(outputs & set(self.topics))
        if loops:
            raise ValueError(f"input topics {loops} are also output topics")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        if not cls.from_environment:
            return (init_settings,)
        # The environment beats the file (given as init kwargs), as twelve-factor apps expect.
        # Our own reader of it, not pydantic-settings': that one lower-cases a topic's name.
        return EnvironmentSource(settings_cls, ENV_PREFIX), file_secret_settings, init_settings

    def policies(self) -> dict[str, Policy]:
        return {topic: tp.policy() for topic, tp in self.topics.items()}

    @property
    def config_version(self) -> str:
        return config_version(self)


# What a decision depends on. The history topic's name is left out: it changes no decision,
# and leaving it out kept every version from before it existed.
ROUTING_FIELDS: dict[str, Any] = {
    "topics": True,
    "outputs": {"routed", "escalated", "dead_letter"},
    "limits": True,
}


def routing_document(settings: Settings) -> bytes:
    """The canonical routing config: the bytes ``config_version`` is the hash of, and the value
    the worker records in the history topic (JSON, keys sorted, no spaces)."""
    effective = settings.model_dump(mode="json", include=ROUTING_FIELDS)
    for topic in effective["topics"].values():
        topic.pop("drift", None)  # watching changes no decision
    return orjson.dumps(effective, option=orjson.OPT_SORT_KEYS)


def version_of(document: bytes) -> str:
    return "sha256:" + hashlib.sha256(document).hexdigest()


def config_version(settings: Settings) -> str:
    """A stable hash of the effective routing config: topics, policies, outputs and limits.

    Connection details (brokers, credentials, ports) are left out on purpose: moving a worker to
    another cluster or rotating a password does not change a single decision, so auditors should
    not see a new version for it, and a secret never feeds a published hash.
    """
    return version_of(routing_document(settings))


class _Recorded(Settings):
    """Settings from the values given alone: an override in today's environment must not
    rewrite a config of the past."""

    from_environment: ClassVar[bool] = False


def settings_from_document(document: bytes, current: Settings) -> Settings:
    """The settings that a recorded routing document stood for: its topics, outputs and limits,
    everything else (Kafka, processing, the history topic) from ``current``.

    Validated as the model, without the environment (``_Recorded``). ``ConfigError`` if the
    document is not one.
    """
    try:
        doc = orjson.loads(document)
        outputs = {**doc["outputs"], "config_history": current.outputs.config_history}
        return _Recorded(
            kafka=current.kafka,
            processing=current.processing,
            http=current.http,
            log=current.log,
            topics=doc["topics"],
            outputs=outputs,
            limits=doc["limits"],
        )
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"not a routing document: {type(exc).__name__}: {exc}") from None
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


class _Connection(Settings):
    """Settings for a command that reads Kafka and no input topic's policy (``config show``,
    ``drift``): the file or the environment need not name a topic for it."""

    topics: dict[TopicName, TopicPolicy] = Field(default_factory=dict)


def load_settings(
    path: Path | None = None, *, topics_needed: bool = True, **overrides: Any
) -> Settings:
    """Read the TOML file (if any), apply the environment, validate; ConfigError if bad.

    ``topics_needed=False``: no input topic is required (any given are still checked).
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except UnicodeDecodeError as exc:  # TOML is UTF-8; tomllib decodes before it parses
            raise ConfigError(
                f"config file {path} cannot be read: not UTF-8 text "
                f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
            ) from None
    data.update(overrides)
    try:
        settings = (Settings if topics_needed else _Connection)(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
    _refuse_topics_differing_in_case(settings, data.get("topics"))
    return settings


def _refuse_topics_differing_in_case(settings: Settings, given: Any) -> None:
    """``ConfigError`` for a topic that only the environment names, spelt like one of the file's
    but for case.

    Kafka's topic names are case-sensitive, so the environment's are kept as written and an
    unknown one adds a topic; but ``SUPPORT.INTENTS`` beside the file's ``support.intents`` is
    a typo far more often than a second topic, and would start consuming a topic that may not
    exist while the intended override is silently missing.
    """
    named = set(given) if isinstance(given, Mapping) else set()
    by_case = {name.casefold(): name for name in named}
    for name in settings.topics:
        twin = by_case.get(name.casefold())
        if name not in named and twin is not None:
            raise ConfigError(
                f'invalid config: topics."{name}" is set only in the environment and differs '
                f"from the file's {twin!r} only in case (topic names are case-sensitive: write "
                "it as the file does)"
            )


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: where it is, the value given, what is wrong. Secrets are masked."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = err["loc"]
        # A bad key of a table (an input topic's name) is reported as the table's NAME, as the
        # reference writes it, not as the bad name followed by pydantic's "[key]".
        if loc[-1:] == ("[key]",):
            loc = (*loc[:-2], '"NAME"')
        where = ".".join(str(part) for part in loc) or "(top level)"
        value = err.get("input")
        # A misspelt secret field (``sasl_pasword``) is unknown, but its value is still a secret.
        unknown = err["type"] == "extra_forbidden"
        masked = _looks_secret(where) or (unknown and _may_be_secret(where))
        shown = MASK if masked else short_value(value)
        # A rule's own ValueError text, without pydantic's "Value error, " in front of it.
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where} = {shown}: {message}")
    return "invalid config: " + "; ".join(lines)


def _looks_secret(where: str) -> bool:
    return any(word in where for word in ("password", "secret", "token"))


def _may_be_secret(where: str) -> bool:
    name = where.rsplit(".", 1)[-1].lower()
    return any(word in name for word in ("pas", "pw", "secret", "token", "key", "cred", "auth"))


def short_value(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{…}"
    text = repr(str(value)) if isinstance(value, Path) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
