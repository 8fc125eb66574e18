"""The Docker source: the official ``apache/kafka`` image through testcontainers.

Used when a Docker engine answers (``docker info``, 5 s timeout; without the
CLI a ``/_ping`` on the engine's unix socket). testcontainers is imported
lazily; if it is missing, or the container fails, the local source is tried
next. testcontainers-python's own ``KafkaContainer`` is not used: it drives the
start scripts of Confluent's ``cp-kafka`` image and cannot run
``apache/kafka``. The image is configured through its ``KAFKA_*`` environment
variables, with the same properties as the local broker.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Mapping
from typing import Any, Final

from worker.devkit.broker.base import _HEAP, _LOOPBACK, KAFKA_VERSION, Broker, BrokerError
from worker.devkit.broker.config import (
    _advertised,
    _allocate_ports,
    _cluster_id,
    _docker_env_name,
    _server_properties,
)
from worker.devkit.broker.lifecycle import _register, _unregister
from worker.devkit.broker.output import _tail_text
from worker.devkit.broker.probe import _api_versions_ok

log = logging.getLogger(__name__)

_DOCKER_IMAGE: Final = f"apache/kafka:{KAFKA_VERSION}"
_DOCKER_LOG_DIR: Final = "/var/lib/kafka/data"  # the image's data volume


class _DockerSkipped(Exception):
    pass


def _docker_answers(timeout: float = 5.0) -> bool:
    """Cheap check that a Docker engine is up; never hangs."""
    docker = shutil.which("docker")
    if docker is not None:
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [docker, "info", "--format", "{{.ServerVersion}}"],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return proc.returncode == 0 and bool(proc.stdout.strip())
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(host[len("unix://") :])
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64)
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.") and b" 200 " in status_line


class _DockerBroker(Broker):
    def __init__(self, container: Any, props: Mapping[str, str], port: int) -> None:
        super().__init__(
            bootstrap_servers=f"{_LOOPBACK}:{port}", source="docker", listeners=_advertised(props)
        )
        self._container = container
        self._stopped = False
        self._saved_tail = ""
        self._lock = threading.Lock()
        _register(self)

    def log_tail(self, lines: int = 40) -> str:
        if self._stopped:
            return _tail_text(self._saved_tail, lines)
        try:
            out, err = self._container.get_logs()
        except Exception:  # noqa: BLE001 - docker errors vary; the engine may be gone
            return ""
        return _tail_text((bytes(out) + bytes(err)).decode(errors="replace"), lines)

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._saved_tail = self.log_tail(200)
            self._stopped = True
            try:
                self._container.stop()
            except Exception as exc:  # noqa: BLE001 - docker errors vary
                log.warning("could not remove the Kafka container: %s", exc)
            finally:
                _unregister(self)


def _start_docker(auto_create: bool, extra: Mapping[str, str], timeout: float) -> Broker:
    try:
        tc = importlib.import_module("testcontainers.core.container")
    except ImportError:
        raise _DockerSkipped("the testcontainers package is not installed") from None
    # testcontainers' own KafkaContainer drives Confluent's cp-kafka start
    # scripts and cannot run apache/kafka, so the plain container is used,
    # configured through the image's KAFKA_* environment variables.
    ports, resolved = _allocate_ports(extra)
    props = _server_properties(
        # 0.0.0.0 inside the container only; published on 127.0.0.1 below
        ports=ports,
        bind_host="0.0.0.0",  # noqa: S104
        advertised_host=_LOOPBACK,
        controller_host="localhost",
        log_dir=_DOCKER_LOG_DIR,
        auto_create_topics=auto_create,
        extra=resolved,
    )
    container: Any = None
    try:
        container = tc.DockerContainer(_DOCKER_IMAGE)  # connects to the engine
        container.with_env("CLUSTER_ID", _cluster_id())
        container.with_env("KAFKA_HEAP_OPTS", " ".join(_HEAP))
        for key, value in props.items():
            container.with_env(_docker_env_name(key), value)
        for name, port in ports.items():
            if name != "controller":
                # host side bound to loopback only; same number inside and out
                # so the advertised address is right without a second round trip
                container.ports[f"{port}/tcp"] = (_LOOPBACK, port)
        container.start()
    except Exception as exc:  # noqa: BLE001 - docker errors vary; reported as BrokerError
        if container is not None:
            with contextlib.suppress(Exception):
                container.stop()
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise BrokerError(f"could not start {_DOCKER_IMAGE}: {first_line}") from None
    broker = _DockerBroker(container, props, ports["broker"])
    try:
        problem = _wait_for_container(container, ports["broker"], timeout)
    except BaseException:
        broker.stop()
        raise
    if problem:
        err = BrokerError(f"the {_DOCKER_IMAGE} container {problem}")
        err.add_note(broker.log_tail(40))
        broker.stop()
        raise err
    return broker


def _wait_for_container(container: Any, port: int, timeout: float) -> str:
    """Wait until the broker answers; return "" or what went wrong."""
    deadline = time.monotonic() + timeout
    while not _api_versions_ok(_LOOPBACK, port, timeout=1.0):
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            return "exited during start-up"
        if time.monotonic() > deadline:
            return f"did not answer within {timeout:.0f}s"
        time.sleep(0.2)
    return ""
