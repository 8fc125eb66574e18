"""Kafka clients built from settings: one place for connection, security and tuning options."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.helpers import create_ssl_context

from worker.core.kafka_settings import KafkaSettings, tls_files_refusal
from worker.stream import fetched, internals, wire
from worker.stream.security import permanent_failure

log = logging.getLogger(__name__)


class FatalError(Exception):
    """The worker cannot go on: a one-line reason for the operator, exit status 1."""


def aiokafka_c_extension() -> bool:
    """True when aiokafka encodes and decodes record batches with its compiled extension.

    ``aiokafka.util.NO_EXTENSIONS`` (set by ``AIOKAFKA_NO_EXTENSIONS``) forces the pure-Python
    codec; a wheel without the ``_crecords`` modules falls back to it silently. Either way the
    classes in use then live outside ``aiokafka.record._crecords``.
    """
    import aiokafka.util
    from aiokafka.record import default_records, memory_records

    compiled = "aiokafka.record._crecords"
    return (
        not aiokafka.util.NO_EXTENSIONS
        and default_records.DefaultRecordBatchBuilder.__module__.startswith(compiled)
        and memory_records.MemoryRecords.__module__.startswith(compiled)
    )


def connection_options(kafka: KafkaSettings) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "client_id": kafka.client_id,
        "security_protocol": kafka.security_protocol,
        "request_timeout_ms": kafka.request_timeout_ms,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = _ssl_context(kafka)
    if kafka.security_protocol.startswith("SASL_"):
        if kafka.sasl_password is None:  # settings refuse this already; say so if bypassed
            raise FatalError(f"sasl_password is required with {kafka.security_protocol}")
        opts["sasl_mechanism"] = kafka.sasl_mechanism
        opts["sasl_plain_username"] = kafka.sasl_username
        opts["sasl_plain_password"] = kafka.sasl_password.get_secret_value()
    return opts


def _ssl_context(kafka: KafkaSettings) -> ssl.SSLContext:
    # Without a password, OpenSSL would prompt on the terminal for an encrypted key and hang a
    # worker that has one; an empty password makes the load fail with an error instead.
    secret = kafka.ssl_key_password
    password = secret.get_secret_value() if secret is not None else _no_key_password
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
            password=password,
        )
    except ssl.SSLError as exc:  # never quotes the password: OpenSSL does not know it as text
        # The settings loaded these files already: one changed since is named as they name it.
        why = tls_files_refusal(kafka)
        raise FatalError(
            f"TLS: kafka.{why}"
            if why is not None
            else "TLS: cannot load kafka.ssl_cafile, ssl_certfile or ssl_keyfile "
            f"({exc.reason or exc}); is kafka.ssl_key_password right?"
        ) from None
    except OSError as exc:
        raise FatalError(
            f"TLS: cannot read {exc.filename or 'a TLS file'}: {exc.strerror}"
        ) from None
    return context


def _no_key_password() -> str:
    return ""


def make_consumer(
    kafka: KafkaSettings, *, group_id: str | None, exactly_once: bool = False, **extra: Any
) -> AIOKafkaConsumer:
    """A consumer of raw bytes with manual commits: we decode, and commit after the outputs.
    ``exactly_once``: the worker's consumer under that guarantee (its fetch size)."""
    fetched.install()  # records unpacked with less Python where the compiled module is
    wire.install()  # responses received whole, without the stream reader's copies
    return AIOKafkaConsumer(
        **connection_options(kafka),
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset=kafka.auto_offset_reset,
        isolation_level="read_committed",
        session_timeout_ms=kafka.session_timeout_ms,
        heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        max_poll_interval_ms=kafka.max_poll_interval_ms,
        fetch_min_bytes=kafka.fetch_min_bytes,
        fetch_max_wait_ms=kafka.fetch_max_wait_ms,
        max_partition_fetch_bytes=kafka.partition_fetch_bytes(exactly_once=exactly_once),
        **extra,
    )


def set_fetch(consumer: AIOKafkaConsumer, min_bytes: int, max_wait_ms: int) -> bool:
    """Make the consumer's next fetches wait for ``min_bytes`` or ``max_wait_ms``. aiokafka
    has no setter: its fetcher reads these two attributes for every request it builds, so they
    are set there, on the release that was tested, while they are there; False otherwise."""
    fetcher: Any = getattr(consumer, "_fetcher", None)
    names = ("_fetch_min_bytes", "_fetch_max_wait_ms")
    if not internals.tested_release() or not all(hasattr(fetcher, n) for n in names):
        return False
    fetcher._fetch_min_bytes = min_bytes
    fetcher._fetch_max_wait_ms = max_wait_ms
    return True


def make_producer(kafka: KafkaSettings, **extra: Any) -> AIOKafkaProducer:
    """An idempotent producer (acks=all): retries never duplicate or reorder a partition."""
    wire.install()  # record batches written to the socket without copies, responses whole
    return AIOKafkaProducer(
        **connection_options(kafka),
        enable_idempotence=True,
        acks="all",
        linger_ms=kafka.linger_ms,
        max_batch_size=kafka.max_batch_size,
        max_request_size=kafka.max_request_size,
        compression_type=kafka.compression_type,
        **extra,
    )


def make_admin(kafka: KafkaSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**connection_options(kafka))


async def acknowledged(futures: Sequence[asyncio.Future[Any]]) -> None:
    """Wait for every send to be acknowledged; then raise the first failure, if any.

    Unlike a plain ``gather``, no future is left with an exception nobody retrieved.
    """
    results = await asyncio.gather(*futures, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


async def stop_within(producer: AIOKafkaProducer, what: str, timeout_s: float = 10.0) -> None:
    """Stop a producer, giving up after ``timeout_s``: one whose requests never end (brokers
    gone, a transaction stuck) can hang in ``stop``, and a rebalance or a shutdown must not."""
    stopping = asyncio.ensure_future(producer.stop())
    done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    if not done:
        stopping.cancel()
        log.warning("%s did not stop in time", what)
    elif stopping.exception() is not None:  # a fenced producer may complain on the way out
        log.debug("stopping %s: %s", what, stopping.exception())


CLOSE_CANCELLED_S = 5.0  # how long a client whose start was cancelled is given to close


class StopRequested(Exception):
    """A stop was asked for while the clients were still connecting."""


class _Client(Protocol):
    async def start(self) -> None: ...


async def start_within(
    client: _Client, kafka: KafkaSettings, what: str, stop: asyncio.Event | None = None
) -> None:
    """Start a client, retrying while the brokers cannot be reached, up to the connect timeout.

    Authentication and authorisation errors are not retried: a wrong password stays wrong.
    A client that fails to start is closed again, as is one whose start is cancelled, and a stop
    ends the retries at once.
    """
    try:
        await _start_within(client, kafka, what, stop)
    except asyncio.CancelledError:
        # Closed here, or aiokafka reports an unclosed client (and its callbacks fail) later.
        with contextlib.suppress(TimeoutError):
            await asyncio.shield(asyncio.wait_for(_close(client), CLOSE_CANCELLED_S))
        raise


async def _start_within(
    client: _Client, kafka: KafkaSettings, what: str, stop: asyncio.Event | None
) -> None:
    deadline = time.monotonic() + kafka.connect_timeout_s
    delay = 0.2
    while True:
        try:
            await client.start()
        except KafkaConnectionError as exc:
            if stop is not None and stop.is_set():
                await _close(client)
                raise StopRequested from None
            # A wrong password or an untrusted certificate: say so now, not at the deadline.
            problem = await permanent_failure(kafka, connection_options(kafka))
            if problem is not None:
                await _close(client)
                raise FatalError(f"{what}: {problem}") from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await _close(client)
                raise FatalError(
                    f"cannot reach Kafka at {kafka.bootstrap_servers} within "
                    f"{kafka.connect_timeout_s:g}s ({what}): {exc}"
                ) from None
            log.info("%s: Kafka not reachable yet (%s); retrying", what, exc)
            pause = min(delay, remaining)  # so that the last try is at the deadline, not before
            if stop is None:
                await asyncio.sleep(pause)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
            delay = min(delay * 2, 2.0)
        except KafkaError as exc:
            await _close(client)
            raise FatalError(f"{what} failed to start: {type(exc).__name__}: {exc}") from None
        else:
            return


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()``, which may raise the ``CancelledError`` of its own fetch tasks when
    they were waiting out a retry (brokers gone; aio-libs/aiokafka#647): that is a stop that
    finished, not this task being cancelled, and a shutdown goes on."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        log.debug("the consumer's stop ended its fetch tasks' retries")


async def _close(client: _Client) -> None:
    # Consumers and producers stop(); the admin client close()s.
    closer = getattr(client, "stop", None) or getattr(client, "close", None)
    with contextlib.suppress(Exception):  # closing a client that never started is best effort
        if closer is not None:
            await closer()
