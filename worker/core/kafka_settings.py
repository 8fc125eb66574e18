"""``[kafka]``: how the worker reaches the brokers, its clients' settings and its secrets."""

from __future__ import annotations

import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    FilePath,
    SecretStr,
    StrictFloat,
    StrictInt,
    model_validator,
)

from worker.core.config_types import DAY_S, FROZEN, INT32_MAX

PARTITION_FETCH_BYTES = 1_048_576
EXACTLY_ONCE_PARTITION_FETCH_BYTES = 8_388_608
BUSY_FETCH_MIN_BYTES = 524_288
BUSY_FETCH_MAX_WAIT_MS = 20

# A broker: a name or IPv4 address, or an IPv6 address in brackets, then a port of digits (int()
# alone would take "+1" or "1_0", and aiokafka quietly swaps a negative port for 9092).
_BROKER = re.compile(r"(?:\[(?P<ipv6>[^\[\]]+)\]|(?P<host>[^\s:\[\],/]+)):(?P<port>[0-9]{1,5})")


def _brokers(text: str) -> str:
    """`host:port` pairs separated by commas, an IPv6 address in brackets (`[::1]:9092`)"""
    for entry in text.split(","):
        entry = entry.strip()  # aiokafka strips each one too
        if not entry:
            raise ValueError("an empty entry between commas" if "," in text else "no broker")
        found = _BROKER.fullmatch(entry)
        if found is None:
            raise ValueError(f"{entry!r} is not host:port (an IPv6 address goes in brackets)")
        if found["ipv6"] is not None:
            try:
                ipaddress.IPv6Address(found["ipv6"])
            except ValueError:
                raise ValueError(f"{entry!r}: not an IPv6 address in the brackets") from None
        if not 1 <= int(found["port"]) <= 65_535:
            raise ValueError(f"{entry!r}: the port must lie in 1..65535")
    return text


class KafkaSettings(BaseModel):
    """How the worker connects to Kafka, and its consumer's and producer's settings."""

    model_config = FROZEN

    bootstrap_servers: Annotated[str, AfterValidator(_brokers)] = "localhost:9092"
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
    session_timeout_ms: StrictInt = Field(45_000, ge=1_000, le=INT32_MAX)
    """How long the group waits for a heartbeat before it gives this worker's partitions to
    another member."""
    heartbeat_interval_ms: StrictInt = Field(3_000, ge=100, le=INT32_MAX)
    """How often the consumer tells the group it is alive. Must be below `session_timeout_ms`
    (Kafka advises at most a third of it)."""
    max_poll_interval_ms: StrictInt = Field(300_000, ge=1_000, le=INT32_MAX)
    """The longest the worker may take between fetches before the group counts it as stuck and
    moves its partitions. Must be above `processing.transaction_timeout_ms`."""
    request_timeout_ms: StrictInt = Field(40_000, ge=1_000, le=INT32_MAX)
    """How long a client waits for a broker's answer to a request."""
    connect_timeout_s: StrictFloat = Field(30.0, gt=0.0, le=DAY_S)
    """How long the worker may go without reaching the brokers, at start or later (an offset
    commit included), before it gives up and exits with status 1."""
    # Fewer, larger batches at moderate load, for a few ms of latency (docs/performance.md).
    fetch_min_bytes: StrictInt = Field(196_608, ge=1, le=INT32_MAX)
    """A fetch is answered once this many bytes are waiting, or after `fetch_max_wait_ms`,
    whichever comes first."""
    fetch_max_wait_ms: StrictInt = Field(10, ge=0, le=INT32_MAX)
    """The longest a fetch waits for `fetch_min_bytes`: what it may add to the latency at low
    rates, and how often an idle worker asks the brokers for records (raise it where many idle
    workers share a cluster)."""
    # Where the event loop is busy, fewer and larger fetches shorten the queue behind it.
    fetch_min_bytes_busy: StrictInt | None = Field(
        None,
        ge=1,
        le=INT32_MAX,
        description=f"What `fetch_min_bytes` grows to while the worker's event loop is busy (its "
        "thread on a core more than 60 % of the time; back below 45 %), a quarter of the way "
        f"per second, under at-least-once. Unset: {BUSY_FETCH_MIN_BYTES:,}, or "
        "`fetch_min_bytes` if larger. Set both `_busy` values to the light ones to keep the "
        "fetch fixed.",
    )
    fetch_max_wait_ms_busy: StrictInt | None = Field(
        None,
        ge=0,
        le=INT32_MAX,
        description="What `fetch_max_wait_ms` grows to while the event loop is busy (see "
        f"`fetch_min_bytes_busy`). Unset: {BUSY_FETCH_MAX_WAIT_MS}, or `fetch_max_wait_ms` if "
        "larger.",
    )
    max_partition_fetch_bytes: StrictInt | None = Field(
        None,
        ge=1024,
        le=INT32_MAX,
        description=f"The most bytes one fetch returns from one partition. Unset: "
        f"{PARTITION_FETCH_BYTES:,}, or {EXACTLY_ONCE_PARTITION_FETCH_BYTES:,} under "
        "exactly-once, where what a batch holds of a partition (at most one fetch of it) is one "
        "transaction: larger fetches, fewer transactions, for more memory (up to this much per "
        "partition fetched and not yet processed).",
    )
    linger_ms: StrictInt = Field(0, ge=0, le=INT32_MAX)
    """How long the producer waits for more records before sending. 0: send at once, since the
    worker hands over whole batches."""
    max_batch_size: StrictInt = Field(1_048_576, ge=1024, le=INT32_MAX)
    """The most bytes in one record batch of one partition (and never more than the topic's
    `max.message.bytes`). Large, because aiokafka keeps one produce request in flight per
    broker: each round trip should carry a whole batch of the worker's."""
    # Large enough that the topic's own max.message.bytes, not the client, bounds a record.
    max_request_size: StrictInt = Field(8_388_608, ge=1024, le=INT32_MAX)
    """The largest produce request. Large, so that a dead-letter record can carry its input byte
    for byte, however big it was."""
    compression_type: Literal["gzip", "snappy", "lz4", "zstd"] | None = None
    """Compression of the output batches; none when unset."""

    def partition_fetch_bytes(self, *, exactly_once: bool) -> int:
        """``max_partition_fetch_bytes`` if set, else the default for the guarantee."""
        if self.max_partition_fetch_bytes is not None:
            return self.max_partition_fetch_bytes
        return EXACTLY_ONCE_PARTITION_FETCH_BYTES if exactly_once else PARTITION_FETCH_BYTES

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

    def busy_fetch(self) -> tuple[int, int]:
        """The fetch's min bytes and max wait (ms) while the event loop is busy."""
        return (
            max(self.fetch_min_bytes, BUSY_FETCH_MIN_BYTES)
            if self.fetch_min_bytes_busy is None
            else self.fetch_min_bytes_busy,
            max(self.fetch_max_wait_ms, BUSY_FETCH_MAX_WAIT_MS)
            if self.fetch_max_wait_ms_busy is None
            else self.fetch_max_wait_ms_busy,
        )

    @model_validator(mode="after")
    def _busy_fetch_not_smaller(self) -> KafkaSettings:
        for name in ("fetch_min_bytes", "fetch_max_wait_ms"):
            busy = getattr(self, f"{name}_busy")
            if busy is not None and busy < getattr(self, name):
                raise ValueError(f"{name}_busy must be at least {name}")
        return self

    @model_validator(mode="after")
    def _heartbeat_within_the_session(self) -> KafkaSettings:
        # Kafka's own rule: a member whose heartbeats come no more often than the session
        # timeout is dropped from the group between two of them.
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(
                f"heartbeat_interval_ms ({self.heartbeat_interval_ms}) must be below "
                f"session_timeout_ms ({self.session_timeout_ms})"
            )
        return self

    @model_validator(mode="after")
    def _client_certificate_complete(self) -> KafkaSettings:
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile needs ssl_certfile (the client certificate)")
        return self

    @model_validator(mode="after")
    def _tls_files_load(self) -> KafkaSettings:
        # A file that exists but is no certificate or key is as much a config error as a
        # missing one: refused here, by name, not at the first connection with exit 1.
        if self.security_protocol in ("SSL", "SASL_SSL"):
            refusal = tls_files_refusal(self)
            if refusal is not None:
                raise ValueError(refusal)
        return self

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL_"):
            for name in ("sasl_mechanism", "sasl_username", "sasl_password"):
                if getattr(self, name) is None:
                    raise ValueError(f"{name} is required with {self.security_protocol}")
        return self


_SECRET_FILES = ("sasl_password", "ssl_key_password")


def tls_files_refusal(kafka: KafkaSettings) -> str | None:
    """What is wrong with the TLS files, naming the field and the file; ``None`` if they load.

    Loaded one at a time, since OpenSSL's error for them all at once ("PEM lib") does not say
    which file it choked on: the CA file, the certificate alone, then the key with it.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cafile, certfile, keyfile = kafka.ssl_cafile, kafka.ssl_certfile, kafka.ssl_keyfile
    if cafile is not None:
        why = _load(lambda: context.load_verify_locations(cafile=cafile))
        if why is not None:
            return f"ssl_cafile {cafile}: no CA certificate read from it ({why})"
    if certfile is None:
        return None
    # Read as CA certificates, in a context of its own: the certificate checked without its key.
    why = _load(lambda: ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(certfile))
    if why is not None:
        return f"ssl_certfile {certfile}: no certificate read from it ({why})"
    secret = kafka.ssl_key_password
    # Never no password: OpenSSL would ask on the terminal for the one of an encrypted key.
    password = secret.get_secret_value() if secret is not None else ""
    why = _load(lambda: context.load_cert_chain(certfile, keyfile, lambda: password))
    if why is None:
        return None
    field, path = ("ssl_keyfile", keyfile) if keyfile is not None else ("ssl_certfile", certfile)
    if why == "KEY_VALUES_MISMATCH":
        return f"{field} {path}: its private key is not the certificate's"
    return (
        f"{field} {path}: no private key for the certificate read from it ({why}; is "
        "ssl_key_password right?)"
    )


def _load(step: Callable[[], object]) -> str | None:
    """Why ``step`` (loading a TLS file) failed, in OpenSSL's or the system's words."""
    try:
        step()
    except ssl.SSLError as exc:  # OpenSSL's reasons never quote a password
        return str(exc.reason or exc)
    except OSError as exc:
        return f"cannot read it: {exc.strerror or 'unknown error'}"
    return None


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
