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
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.core import rules
from worker.core.environment import EnvironmentSource
from worker.core.errors import ConfigError
from worker.core.routing import Policy

__all__ = ["ConfigError", "Settings", "load_settings"]

ENV_PREFIX = "LOGIT_ROUTER_"


# Numbers and switches are strict (StrictInt, StrictFloat, StrictBool): in the file, a bool or a
# string does not stand for a number (``temperature = true`` is refused, not read as 1.0), though
# an int does for a float. The environment has only strings: worker.core.environment reads each
# as its field's type before the model sees it.

# The policy types: the rules in ``rules``, which the command line's converters call too.
Temperature = Annotated[StrictFloat, AfterValidator(rules.temperature)]
Probability = Annotated[StrictFloat, AfterValidator(rules.probability)]
Labels = Annotated[tuple[str, ...], AfterValidator(rules.labels)]

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class KafkaSettings(BaseModel):
    model_config = _FROZEN

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    group_id: str = Field("logit-router", min_length=1)
    client_id: str = Field("logit-router", min_length=1)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    # Or a file holding it (a Kubernetes or Docker secret), read once at load: see _SECRET_FILES.
    sasl_password_file: Path | None = None
    # FilePath: a missing file is a config error (exit 2), named before anything connects.
    ssl_cafile: FilePath | None = None
    ssl_certfile: FilePath | None = None
    ssl_keyfile: FilePath | None = None
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: Path | None = None
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: StrictInt = Field(45_000, ge=1_000)
    heartbeat_interval_ms: StrictInt = Field(3_000, ge=100)
    max_poll_interval_ms: StrictInt = Field(300_000, ge=1_000)
    request_timeout_ms: StrictInt = Field(40_000, ge=1_000)
    # How long the worker may go without reaching the brokers before it gives up, exit 1.
    connect_timeout_s: StrictFloat = Field(30.0, gt=0.0)
    # A fetch is answered once 192 KiB are there or after 10 ms, not for each first record:
    # fewer, larger batches. At 20,000 events/s, in three paired benchmark runs against 64 KiB
    # or 5 ms, it took a sixth off the worker's CPU and up to a third off the broker's, and the
    # p99 went from 33-42 to 30-34 ms, for 3 to 6 ms more on the median (docs/performance.md).
    # At low rates it adds at most 10 ms. An idle worker asks every 10 ms: raise
    # fetch_max_wait_ms where that matters more.
    fetch_min_bytes: StrictInt = Field(196_608, ge=1)
    fetch_max_wait_ms: StrictInt = Field(10, ge=0)
    max_partition_fetch_bytes: StrictInt = Field(1_048_576, ge=1024)
    # 0: send as soon as a batch is handed over; our batches are already large, and lingering
    # only added latency (p99 35 -> 21 ms at 1,000 events/s, same throughput: docs/performance.md).
    linger_ms: StrictInt = Field(0, ge=0)
    max_batch_size: StrictInt = Field(262_144, ge=1024)
    # Large enough that the topic's own max.message.bytes, not the client, bounds a record:
    # a dead-letter record must carry its input byte for byte, however big it was.
    max_request_size: StrictInt = Field(8_388_608, ge=1024)
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        for name in _SECRET_FILES:
            path = data.get(f"{name}_file")
            if path is None:
                continue
            if data.get(name) is not None:
                raise ValueError(f"give {name} or {name}_file, not both")
            data[name] = read_secret_file(Path(path), f"{name}_file")
        return data

    @model_validator(mode="after")
    def _client_certificate_complete(self) -> KafkaSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required with {self.security_protocol}")
        return self


_SECRET_FILES = ("sasl_password", "ssl_key_password")


def read_secret_file(path: Path, field: str) -> SecretStr:
    """A secret from a file, without its final line break (``echo`` and editors add one).

    Errors name the field and the file, never the content.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"{field} {path}: cannot read it ({exc.strerror or 'unknown error'})"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{field} {path}: not UTF-8 text") from None
    secret = text.removesuffix("\n").removesuffix("\r")
    if not secret:
        raise ValueError(f"{field} {path}: the file is empty")
    return SecretStr(secret)


class OutputTopics(BaseModel):
    model_config = _FROZEN

    routed: str = Field("logits.routed", min_length=1)
    escalated: str = Field("logits.escalated", min_length=1)
    dead_letter: str = Field("logits.dead-letter", min_length=1)

    @model_validator(mode="after")
    def _distinct(self) -> OutputTopics:
        names = [self.routed, self.escalated, self.dead_letter]
        if len(set(names)) != 3:
            raise ValueError(f"output topics must be three different topics, got {names}")
        return self


class TopicPolicy(BaseModel):
    """The policy of one input topic (the lab: temperature is set per use case)."""

    model_config = _FROZEN

    temperature: Temperature = 1.0
    min_margin: Probability = 0.1
    min_top1: Probability | None = None
    labels: Labels | None = None

    def policy(self) -> Policy:
        return Policy(self.temperature, self.min_margin, self.min_top1, self.labels)


class Limits(BaseModel):
    model_config = _FROZEN

    max_classes: StrictInt = Field(10_000, ge=2)
    max_event_bytes: StrictInt = Field(1_048_576, ge=64)


BATCH_RECORDS = 2_000
EXACTLY_ONCE_BATCH_RECORDS = 5_000


class Processing(BaseModel):
    model_config = _FROZEN

    guarantee: Literal["at_least_once", "exactly_once"] = "at_least_once"
    # Records per batch (one fetch). Unset: BATCH_RECORDS, or under exactly-once
    # EXACTLY_ONCE_BATCH_RECORDS (see ``batch_records``).
    max_batch_records: StrictInt | None = Field(None, ge=1, le=100_000)
    # Bound on a graceful stop: finish the batch in hand, flush, commit; past it, give up.
    drain_timeout_s: StrictFloat = Field(10.0, gt=0.0)
    transaction_timeout_ms: StrictInt = Field(60_000, ge=1_000)
    # Route with the compiled hot path (worker.core.native) when it is installed; the Python path
    # writes the same bytes, so this only trades speed (off: to rule the extension out).
    native: StrictBool = True

    @property
    def batch_records(self) -> int:
        """``max_batch_records`` if set, else the default for the guarantee. Under
        exactly-once every batch pays a transaction's round trips for each input partition, so
        larger batches amortise them, as Kafka Streams shortens its commit interval when it
        switches to exactly-once: measured, 1,000 records gave 0.65 to 0.84 of at-least-once's
        throughput, 5,000 about 1.0 (docs/performance.md). At-least-once takes 2,000: in three
        paired runs on one pre-fill it routed 1.05x to 1.15x what 1,000 did, and at a fixed
        17,000 events/s its p99 was no worse (the bound only binds when the worker is behind;
        at 17,000 events/s a 10-ms fetch wait holds about 170 records)."""
        if self.max_batch_records is not None:
            return self.max_batch_records
        return EXACTLY_ONCE_BATCH_RECORDS if self.guarantee == "exactly_once" else BATCH_RECORDS


class HttpSettings(BaseModel):
    model_config = _FROZEN

    enabled: StrictBool = True
    host: str = "127.0.0.1"  # loopback unless the operator opens it up on purpose
    port: StrictInt = Field(9464, ge=0, le=65_535)


class LogSettings(BaseModel):
    model_config = _FROZEN

    level: rules.LogLevel = "INFO"
    format: Literal["text", "json"] = "text"


class Settings(BaseSettings):
    # The environment is read by EnvironmentSource, with ENV_PREFIX (see the sources below).
    model_config = SettingsConfigDict(frozen=True, extra="forbid")

    kafka: KafkaSettings = KafkaSettings()
    outputs: OutputTopics = OutputTopics()
    topics: dict[str, TopicPolicy] = Field(min_length=1)
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
        outputs = {self.outputs.routed, self.outputs.escalated, self.outputs.dead_letter}
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
        # The environment beats the file (given as init kwargs), as twelve-factor apps expect.
        # Our own reader of it, not pydantic-settings': that one lower-cases a topic's name.
        return EnvironmentSource(settings_cls, ENV_PREFIX), file_secret_settings, init_settings

    def policies(self) -> dict[str, Policy]:
        return {topic: tp.policy() for topic, tp in self.topics.items()}

    @property
    def config_version(self) -> str:
        return config_version(self)


def config_version(settings: Settings) -> str:
    """A stable hash of the effective routing config: topics, policies, outputs and limits.

    Connection details (brokers, credentials, ports) are left out on purpose: moving a worker to
    another cluster or rotating a password does not change a single decision, so auditors should
    not see a new version for it, and a secret never feeds a published hash.
    """
    effective = settings.model_dump(mode="json", include={"topics", "outputs", "limits"})
    canonical = orjson.dumps(effective, option=orjson.OPT_SORT_KEYS)
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read the TOML file (if any), apply the environment, validate; ConfigError if bad."""
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad field: where it is, the value given, what is wrong. Secrets are masked."""
    lines = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "(top level)"
        value = err.get("input")
        # A misspelt secret field (``sasl_pasword``) is unknown, but its value is still a secret.
        unknown = err["type"] == "extra_forbidden"
        masked = _looks_secret(where) or (unknown and _may_be_secret(where))
        shown = "'**********'" if masked else _short(value)
        # A rule's own ValueError text, without pydantic's "Value error, " in front of it.
        message = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where} = {shown}: {message}")
    return "invalid config: " + "; ".join(lines)


def _looks_secret(where: str) -> bool:
    return any(word in where for word in ("password", "secret", "token"))


def _may_be_secret(where: str) -> bool:
    name = where.rsplit(".", 1)[-1].lower()
    return any(word in name for word in ("pas", "pw", "secret", "token", "key", "cred", "auth"))


def _short(value: Any) -> str:
    if isinstance(value, Mapping):
        return "{…}"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
