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
    ConfigDict,
    Field,
    FilePath,
    PrivateAttr,
    SecretStr,
    SerializerFunctionWrapHandler,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    model_serializer,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker.core import drift, rules
from worker.core.environment import EnvironmentSource
from worker.core.errors import ConfigError
from worker.core.routing import Policy

__all__ = ["ConfigError", "Settings", "load_settings", "routing_document", "version_of"]

ENV_PREFIX = "LOGIT_ROUTER_"
MASK = "'**********'"  # what a secret's value is shown as


# Numbers and switches are strict (StrictInt, StrictFloat, StrictBool): in the file, a bool or a
# string does not stand for a number (``temperature = true`` is refused, not read as 1.0), though
# an int does for a float. The environment has only strings: worker.core.environment reads each
# as its field's type before the model sees it.

# The policy types: the rules in ``rules``, which the command line's converters call too.
Temperature = Annotated[StrictFloat, AfterValidator(rules.temperature)]
Probability = Annotated[StrictFloat, AfterValidator(rules.probability)]
Labels = Annotated[tuple[str, ...], AfterValidator(rules.labels)]

# Field docs are the docstrings under each field (they reach docs/configuration.md).
_FROZEN = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class KafkaSettings(BaseModel):
    """How the worker connects to Kafka, and its consumer's and producer's settings."""

    model_config = _FROZEN

    bootstrap_servers: str = Field("localhost:9092", min_length=1)
    """The brokers to contact first, as `host:port`, several separated by commas."""
    group_id: str = Field("logit-router", min_length=1)
    """The consumer group: workers with the same group share the input partitions. Under
    exactly-once it also begins every transactional id."""
    client_id: str = Field("logit-router", min_length=1)
    """The name the clients give the brokers (their logs and quotas use it)."""
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    """How to talk to the brokers: in the clear, over TLS, with SASL, or SASL over TLS."""
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    """The SASL mechanism; required with a `SASL_` protocol."""
    sasl_username: str | None = None
    """The SASL user; required with a `SASL_` protocol."""
    sasl_password: SecretStr | None = None
    """The SASL password; required with a `SASL_` protocol. Masked wherever the config is
    printed; give it in the environment or through `sasl_password_file`."""
    # Read once at load: see _SECRET_FILES.
    sasl_password_file: Path | None = None
    """A file holding the SASL password (a Kubernetes or Docker secret, say), read once at start
    without its final line break. Give this or `sasl_password`, not both."""
    # FilePath: a missing file is a config error (exit 2), named before anything connects.
    ssl_cafile: FilePath | None = None
    """The CA certificates that the brokers' certificates are checked against; the system's when
    unset. Certificates are always checked."""
    ssl_certfile: FilePath | None = None
    """The client certificate, for brokers that authenticate clients by TLS."""
    ssl_keyfile: FilePath | None = None
    """The client certificate's private key; needs `ssl_certfile`."""
    ssl_key_password: SecretStr | None = None
    """The password of an encrypted `ssl_keyfile`. Masked like every secret."""
    ssl_key_password_file: Path | None = None
    """A file holding the key's password, read as `sasl_password_file` is. Give this or
    `ssl_key_password`, not both."""
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    """Where to start in a partition that the group has committed nothing for."""
    session_timeout_ms: StrictInt = Field(45_000, ge=1_000)
    """How long the group waits for a heartbeat before it gives this worker's partitions to
    another member."""
    heartbeat_interval_ms: StrictInt = Field(3_000, ge=100)
    """How often the consumer tells the group it is alive."""
    max_poll_interval_ms: StrictInt = Field(300_000, ge=1_000)
    """The longest the worker may take between fetches before the group counts it as stuck and
    moves its partitions. Must be above `processing.transaction_timeout_ms`."""
    request_timeout_ms: StrictInt = Field(40_000, ge=1_000)
    """How long a client waits for a broker's answer to a request."""
    connect_timeout_s: StrictFloat = Field(30.0, gt=0.0)
    """How long the worker may go without reaching the brokers, at start or later, before it
    gives up and exits with status 1."""
    # Fewer, larger batches at moderate load, for a few ms of latency (docs/performance.md).
    fetch_min_bytes: StrictInt = Field(196_608, ge=1)
    """A fetch is answered once this many bytes are waiting, or after `fetch_max_wait_ms`,
    whichever comes first."""
    fetch_max_wait_ms: StrictInt = Field(10, ge=0)
    """The longest a fetch waits for `fetch_min_bytes`: what it may add to the latency at low
    rates, and how often an idle worker asks the brokers for records (raise it where many idle
    workers share a cluster)."""
    max_partition_fetch_bytes: StrictInt = Field(1_048_576, ge=1024)
    """The most bytes one fetch returns from one partition."""
    linger_ms: StrictInt = Field(0, ge=0)
    """How long the producer waits for more records before sending. 0: send at once, since the
    worker hands over whole batches."""
    max_batch_size: StrictInt = Field(262_144, ge=1024)
    """The most bytes in one record batch of one partition."""
    # Large enough that the topic's own max.message.bytes, not the client, bounds a record.
    max_request_size: StrictInt = Field(8_388_608, ge=1024)
    """The largest produce request. Large, so that a dead-letter record can carry its input byte
    for byte, however big it was."""
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Compression of the output batches; none when unset."""

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
    """The three output topics and the config history: all different, none an input topic."""

    model_config = _FROZEN

    routed: str = Field("logits.routed", min_length=1)
    """Confident events: downstream systems act on the top-1 label."""
    escalated: str = Field("logits.escalated", min_length=1)
    """Uncertain events, for a person or a stronger model to look at."""
    dead_letter: str = Field("logits.dead-letter", min_length=1)
    """Records that cannot be scored, unchanged, with the reason in headers."""
    config_history: str = Field("logit-router.config-history", min_length=1)
    """A compacted topic where the worker records each routing config it runs (key: its
    `config_version`, value: the document hashed), for `config show` and `replay
    --as-published`. Not part of the hash itself."""

    @model_validator(mode="after")
    def _distinct(self) -> OutputTopics:
        names = [self.routed, self.escalated, self.dead_letter, self.config_history]
        if len(set(names)) != len(names):
            raise ValueError(f"output topics must be four different topics, got {names}")
        return self


class Thresholds(BaseModel):
    """A temperature and the thresholds a decision is taken with: a topic's live policy, or
    its shadow."""

    model_config = _FROZEN

    temperature: Temperature = 1.0
    """The softmax temperature: above 1 spreads the probabilities out, below 1 sharpens them."""
    min_margin: Probability = 0.1
    """An event whose top-1 minus top-2 probability is below this is escalated (`low_margin`)."""
    min_top1: Probability | None = None
    """An event whose top-1 probability is below this is escalated (`low_top1`); no such check
    when unset."""


class ShadowPolicy(Thresholds):
    """A policy evaluated beside a topic's live one, never deciding where an event goes."""


def _drift_reference(path: Path) -> Path:
    """a drift reference (`logit-router drift snapshot`)"""
    read_reference(path)  # refused here, so the field is named; kept by DriftWatch
    return path


def read_reference(path: Path) -> drift.Reference:
    try:
        return drift.parse_reference(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or 'unknown error'})") from None
    except drift.ReferenceError as exc:
        raise ValueError(str(exc)) from None


class DriftWatch(BaseModel):
    """Watching a topic's margin and top-1 distributions against a reference
    (`logit_router_drift_psi`, docs/drift.md). Not part of `config_version`: it changes no
    decision."""

    model_config = _FROZEN

    reference: Annotated[FilePath, AfterValidator(_drift_reference)]
    """The reference file that `logit-router drift snapshot` wrote, read once when the config
    is loaded (a path relative to the worker's working directory). A reload applies a different
    path live; a file rewritten under the same path is read at the next start."""
    window_s: StrictFloat = Field(600.0, gt=0.0)
    """The PSI is of the events scored in the last this many seconds."""
    min_events: StrictInt = Field(1_000, ge=1)
    """Below this many events in the window the gauge reads NaN: too few to say (an unchanged
    distribution reads a PSI of about 0.02 at 1,000 events, about 0.1 at 200)."""
    _reference: drift.Reference | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._reference = read_reference(self.reference)

    def loaded(self) -> drift.Reference:
        """The reference as read when this config was loaded."""
        if self._reference is None:  # never: model_post_init sets it
            raise RuntimeError("drift reference not loaded")
        return self._reference


class TopicPolicy(Thresholds):
    """The policy of one input topic (the lab: temperature is set per use case)."""

    labels: Labels | None = None
    """Class names by index, for events that carry no `labels` of their own; an event with a
    different number of logits is dead-lettered. Unset: the label is the class index."""
    audit_sample_rate: Probability = 0.0
    """The share of the events that would be routed that are escalated instead (`audit_sample`),
    so that reviewers also see confident events. Chosen by a hash of the event id
    (docs/events.md), so a replay or a retry draws the same events."""
    shadow: ShadowPolicy | None = None
    """A policy to try on live traffic: `[topics."NAME".shadow]` with `temperature`,
    `min_margin`, `min_top1`. None when unset."""
    drift: DriftWatch | None = None
    """Drift watch: `[topics."NAME".drift]` with `reference` (and optionally `window_s`,
    `min_events`). None when unset: no `logit_router_drift_psi` for the topic."""

    @model_serializer(mode="wrap")
    def _unset_features_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # So a config using neither keeps the config_version it had before they existed.
        data: dict[str, Any] = handler(self)
        if self.audit_sample_rate == 0.0:
            data.pop("audit_sample_rate", None)
        if self.shadow is None:
            data.pop("shadow", None)
        if self.drift is None:
            data.pop("drift", None)
        return data

    def policy(self) -> Policy:
        shadow = self.shadow
        return Policy(
            self.temperature,
            self.min_margin,
            self.min_top1,
            self.labels,
            self.audit_sample_rate,
            None
            if shadow is None
            else Policy(shadow.temperature, shadow.min_margin, shadow.min_top1, self.labels),
        )


class Limits(BaseModel):
    """Bounds on one input event; an event past them is dead-lettered."""

    model_config = _FROZEN

    max_classes: StrictInt = Field(10_000, ge=2)
    """The most logits an event may have (else `too_many_classes`)."""
    max_event_bytes: StrictInt = Field(1_048_576, ge=64)
    """The largest input record value, in bytes (else `payload_too_large`)."""


BATCH_RECORDS = 2_000
EXACTLY_ONCE_BATCH_RECORDS = 5_000


class Processing(BaseModel):
    """How batches are processed, committed and stopped."""

    model_config = _FROZEN

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
    drain_timeout_s: StrictFloat = Field(10.0, gt=0.0)
    """The bound on a graceful stop: finish the batches in hand, flush, commit; past it, give up
    and exit."""
    transaction_timeout_ms: StrictInt = Field(60_000, ge=1_000)
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


class HttpSettings(BaseModel):
    """The HTTP server for `/metrics`, `/healthz` and `/readyz`, all on one port."""

    model_config = _FROZEN

    enabled: StrictBool = True
    """Serve `/metrics`, `/healthz` and `/readyz`."""
    host: str = "127.0.0.1"
    """The address to listen on: loopback unless opened up on purpose (`0.0.0.0` in a
    container)."""
    port: StrictInt = Field(9464, ge=0, le=65_535)
    """The port; 0 takes any free one."""


class LogSettings(BaseModel):
    """The worker's log on stderr."""

    model_config = _FROZEN

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
    topics: dict[str, TopicPolicy] = Field(min_length=1)
    """The input topics, each with its policy, as `[topics."NAME"]` tables; at least one."""
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
