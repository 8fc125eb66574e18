"""Choosing the source: ``start_broker()`` and ``throwaway_broker()``.

They return a :class:`Broker` from the first source that works:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set (and not empty): that broker is used
   as-is. Nothing is started or stopped, and ``auto_create_topics`` /
   ``extra_config`` cannot be applied (configure that broker yourself).
2. A Docker engine answers: the official ``apache/kafka`` image, run through
   testcontainers (``docker``; if that fails, the local source is tried next).
3. Otherwise a local broker process: ``java -cp <jars> kafka.Kafka`` (``local``).

``LOGIT_ROUTER_BROKER=docker`` or ``=local`` skips the automatic choice
between 2 and 3 (useful on CI machines that have both).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping

from worker.devkit.broker.base import Broker, BrokerError, BrokerUnavailable
from worker.devkit.broker.docker import _docker_answers, _DockerSkipped, _start_docker
from worker.devkit.broker.local import _start_local

log = logging.getLogger(__name__)


def start_broker(
    *,
    auto_create_topics: bool = True,
    extra_config: Mapping[str, str] | None = None,
    start_timeout: float = 120.0,
) -> Broker:
    """Start (or find) a broker and wait until it answers; the caller stops it.

    ``extra_config`` entries override or add server properties. For
    ``listeners``, ``advertised.listeners`` and ``listener.security.protocol.map``
    a value starting with ``+`` is appended to the default instead of
    replacing it, and ``{port:NAME}`` anywhere in a value becomes a free
    127.0.0.1 port (the same one for the same NAME), kept across restarts.
    Example SASL listener::

        {"listeners": "+SASL_PLAINTEXT://127.0.0.1:{port:sasl}",
         "advertised.listeners": "+SASL_PLAINTEXT://127.0.0.1:{port:sasl}",
         "listener.security.protocol.map": "+SASL_PLAINTEXT:SASL_PLAINTEXT",
         "sasl.enabled.mechanisms": "SCRAM-SHA-256", ...}

    then ``broker.listeners["SASL_PLAINTEXT"]`` is its address.
    """
    extra = dict(extra_config or {})
    env_servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if env_servers:
        if extra or not auto_create_topics:
            log.info("KAFKA_BOOTSTRAP_SERVERS is set: broker settings were not applied")
        return Broker(bootstrap_servers=env_servers, source="env")

    forced = os.environ.get("LOGIT_ROUTER_BROKER", "auto").strip().lower() or "auto"
    if forced not in ("auto", "docker", "local"):
        raise BrokerError(f"LOGIT_ROUTER_BROKER={forced!r}: expected auto, docker or local")
    docker_problem = ""
    if forced == "docker" or (forced == "auto" and _docker_answers()):
        try:
            return _start_docker(auto_create_topics, extra, start_timeout)
        except _DockerSkipped as exc:
            if forced == "docker":
                raise BrokerUnavailable(f"Docker broker unavailable: {exc}") from None
            docker_problem = str(exc)
            log.info("Docker engine found but not used: %s", exc)
        except BrokerError as exc:
            if forced == "docker":
                raise
            docker_problem = str(exc)
            log.warning("Docker broker failed, trying a local one: %s", exc)
    try:
        return _start_local(auto_create_topics, extra, start_timeout)
    except BrokerUnavailable as exc:
        if docker_problem:
            raise BrokerUnavailable(f"{exc}; Docker: {docker_problem}") from None
        raise


@contextlib.contextmanager
def throwaway_broker(
    *,
    auto_create_topics: bool = True,
    extra_config: Mapping[str, str] | None = None,
    start_timeout: float = 120.0,
) -> Iterator[Broker]:
    """:func:`start_broker` as a context manager that always stops it."""
    broker = start_broker(
        auto_create_topics=auto_create_topics,
        extra_config=extra_config,
        start_timeout=start_timeout,
    )
    try:
        yield broker
    except Exception:
        tail = broker.log_tail(30)
        if tail:
            log.warning("last lines of the Kafka broker log:\n%s", tail)
        raise
    finally:
        broker.stop()
