"""worker.devkit.broker against a real Kafka 4.x broker.

Most tests force the local-process source (``LOGIT_ROUTER_BROKER=local``) since
kill/restart, pids and temp dirs exist only there; ``test_round_trip`` takes
whatever source the session fixture ``kafka_broker`` (tests/conftest.py) got.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import UnknownTopicOrPartitionError

from worker.devkit.broker import (
    KAFKA_VERSION,
    Broker,
    BrokerError,
    BrokerUnavailable,
    start_broker,
    throwaway_broker,
)
from worker.devkit.broker.config import _docker_env_name
from worker.devkit.broker.jars import _pom_kafka_version
from worker.devkit.broker.local import _sweep_orphans
from worker.devkit.broker.probe import _api_versions_ok

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _topic() -> str:
    return f"test-broker-{uuid.uuid4().hex[:10]}"


async def _create_topic(bootstrap: str, topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name=topic, num_partitions=1, replication_factor=1)])
    finally:
        await admin.close()


async def _produce(bootstrap: str, topic: str, *values: bytes, timeout_ms: int = 30_000) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", request_timeout_ms=timeout_ms
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def _consume(bootstrap: str, topic: str, count: int, within: float = 30.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    got: list[bytes] = []
    try:
        async with asyncio.timeout(within):
            while len(got) < count:
                msg = await consumer.getone()
                assert msg.value is not None
                got.append(msg.value)
    finally:
        await consumer.stop()
    return got


def _alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def _local_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["LOGIT_ROUTER_BROKER"] = "local"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class _Cli:
    """``python -m worker.devkit.broker`` as a child process."""

    def __init__(self, stderr_path: Path, *args: str) -> None:
        self.stderr_path = stderr_path
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker.devkit.broker", *args],
            cwd=REPO,
            env=_local_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def read_info(self, timeout: float = 180.0) -> dict[str, str]:
        """The ``key=value`` lines printed once the broker answers."""
        info: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while not {"bootstrap_servers", "pid", "workdir", "log"} <= info.keys():
            try:
                line = self._lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                pytest.fail(f"no broker info from the CLI; stderr:\n{self.stderr()}")
            key, _, value = line.partition("=")
            info[key] = value
        return info

    def stderr(self) -> str:
        self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextlib.contextmanager
def _cli(tmp_path: Path, *args: str) -> Iterator[_Cli]:
    cli = _Cli(tmp_path / "cli-stderr.txt", *args)
    try:
        yield cli
    finally:
        cli.close()


def _local_broker(**kwargs: object) -> Broker:
    try:
        return start_broker(**kwargs)  # type: ignore[arg-type]
    except BrokerUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no local Kafka on this machine: {exc}")


@pytest.fixture
def force_local(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LOGIT_ROUTER_BROKER", "local")


# --------------------------------------------------------------------------
# tests
# --------------------------------------------------------------------------


async def test_round_trip(kafka_broker: Broker) -> None:
    """On the session broker (tests/conftest.py), whatever its source."""
    assert kafka_broker.source in ("env", "docker", "local")
    if kafka_broker.source != "env":
        assert kafka_broker.bootstrap_servers.startswith("127.0.0.1:")
    bootstrap, topic = kafka_broker.bootstrap_servers, _topic()
    await _create_topic(bootstrap, topic)
    await _produce(bootstrap, topic, b"hello", b"world")
    assert await _consume(bootstrap, topic, 2) == [b"hello", b"world"]


async def test_kill_restart_keeps_data_and_stop_cleans_up(force_local: None) -> None:
    extra = "EXTRA://127.0.0.1:{port:extra}"
    broker = _local_broker(
        auto_create_topics=False,
        extra_config={
            "listeners": f"+{extra}",
            "advertised.listeners": f"+{extra}",
            "listener.security.protocol.map": "+EXTRA:PLAINTEXT",
        },
    )
    try:
        assert broker.source == "local"
        workdir, log_path, first_pid = broker.workdir, broker.log_path, broker.pid
        assert workdir is not None and log_path is not None and first_pid is not None
        assert workdir.is_dir() and log_path.is_file()
        assert set(broker.listeners) == {"PLAINTEXT", "EXTRA"}
        assert broker.listeners["PLAINTEXT"] == broker.bootstrap_servers
        bootstrap = broker.bootstrap_servers

        # auto_create_topics=False reached the broker: an unknown topic stays unknown
        with pytest.raises(UnknownTopicOrPartitionError):
            await _produce(bootstrap, _topic(), b"nope", timeout_ms=1_000)
        topic = _topic()
        await _create_topic(bootstrap, topic)
        await _produce(bootstrap, topic, b"before-kill")

        broker.kill()
        assert broker.pid is None
        assert _wait_gone(first_pid, timeout=5)
        assert workdir.is_dir()  # data kept for restart()

        broker.restart()
        assert broker.bootstrap_servers == bootstrap
        assert broker.pid is not None and broker.pid != first_pid
        assert await _consume(bootstrap, topic, 1) == [b"before-kill"]
        # the extra listener came back on its same port and serves clients too
        await _produce(broker.listeners["EXTRA"], topic, b"after-restart")
        assert await _consume(broker.listeners["EXTRA"], topic, 2) == [
            b"before-kill",
            b"after-restart",
        ]
        assert "Kafka Server started" in broker.log_tail(400)

        second_pid = broker.pid
        broker.stop()
        assert not workdir.exists()
        assert _wait_gone(second_pid, timeout=1)
        assert broker.pid is None and broker.log_path is None
        assert broker.log_tail(), "log lines are kept after stop()"
        broker.stop()  # idempotent
        with pytest.raises(BrokerError):
            broker.restart()
    finally:
        broker.stop()


def test_cli_sigterm_stops_java_and_cleans_up(tmp_path: Path) -> None:
    with _cli(tmp_path) as cli:
        info = cli.read_info()
        assert info["source"] == "local"
        bootstrap = info["bootstrap_servers"]
        assert _api_versions_ok(*_host_port(bootstrap))
        java_pid, workdir = int(info["pid"]), Path(info["workdir"])
        assert _alive(java_pid) and workdir.is_dir()
        # topics are created on first use by default
        topic = _topic()
        asyncio.run(_produce(bootstrap, topic, b"auto-created"))
        assert asyncio.run(_consume(bootstrap, topic, 1)) == [b"auto-created"]

        cli.proc.send_signal(signal.SIGTERM)
        assert cli.proc.wait(timeout=60) == 0, cli.stderr()
        assert _wait_gone(java_pid, timeout=1)
        assert not workdir.exists()
        assert "Traceback" not in cli.stderr()


def test_java_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: SIGKILL of the Python parent takes the JVM with it."""
    with _cli(tmp_path) as cli:
        info = cli.read_info()
        java_pid, workdir = int(info["pid"]), Path(info["workdir"])
        try:
            cli.proc.kill()
            cli.proc.wait(timeout=10)
            assert _wait_gone(java_pid, timeout=10), "JVM outlived its SIGKILLed parent"
            assert workdir.is_dir()  # nothing could clean up...
            _sweep_orphans()  # ...until the next local start
            assert not workdir.exists()
        finally:
            if _alive(java_pid):
                os.kill(java_pid, signal.SIGKILL)
            shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        pytest.param(
            [],
            {"LOGIT_ROUTER_BROKER": "carrier-pigeon"},
            "LOGIT_ROUTER_BROKER='carrier-pigeon': expected auto, docker or local",
            id="bad-source",
        ),
        pytest.param(
            ["--set", "log.segment.bytes=12"],
            {},
            "Kafka storage format failed (exit 1): ConfigException: Invalid value 12 for "
            "configuration log.segment.bytes: Value must be at least 1048576",
            id="bad-broker-config",
        ),
    ],
)
def test_cli_error_is_one_line(args: list[str], env: dict[str, str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "worker.devkit.broker", *args],
        cwd=REPO,
        env=_local_env() | env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert errors == [f"worker.devkit.broker: error: {message}"], proc.stderr
    assert "Traceback" not in proc.stderr


def test_env_source_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    with throwaway_broker() as broker:
        assert (broker.source, broker.bootstrap_servers) == ("env", "127.0.0.1:1")
        assert broker.pid is None and broker.workdir is None and broker.log_path is None
        with pytest.raises(BrokerError, match="local"):
            broker.kill()
        with pytest.raises(BrokerError, match="local"):
            broker.restart()
    broker.stop()  # a no-op, again


def test_pom_pins_the_module_version() -> None:
    assert _pom_kafka_version(REPO / "kafka" / "pom.xml") == KAFKA_VERSION


class _FakeContainer:
    """Stands in for testcontainers' DockerContainer (no engine here)."""

    instances: ClassVar[list[_FakeContainer]] = []

    def __init__(self, image: str) -> None:
        self.image = image
        self.env: dict[str, str] = {}
        self.ports: dict[str, object] = {}
        self.started = self.stopped = False
        self.status = "exited"
        _FakeContainer.instances.append(self)

    def with_env(self, key: str, value: str) -> _FakeContainer:
        self.env[key] = value
        return self

    def start(self) -> _FakeContainer:
        self.started = True
        return self

    def stop(self) -> None:
        self.stopped = True

    def get_wrapped_container(self) -> _FakeContainer:
        return self

    def reload(self) -> None:
        pass

    def get_logs(self) -> tuple[bytes, bytes]:
        return b"fake kafka log line\n", b""


def test_docker_source_configures_apache_kafka_image(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Docker path as far as it goes without an engine: image, env, ports."""
    fake_module = type(sys)("testcontainers.core.container")
    fake_module.DockerContainer = _FakeContainer  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "testcontainers.core.container", fake_module)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.setenv("LOGIT_ROUTER_BROKER", "docker")
    _FakeContainer.instances.clear()

    with pytest.raises(BrokerError, match="exited during start-up") as caught:
        start_broker(auto_create_topics=False, extra_config={"log.retention.ms": "1000"})
    assert "fake kafka log line" in "\n".join(caught.value.__notes__)

    (container,) = _FakeContainer.instances
    assert container.image == f"apache/kafka:{KAFKA_VERSION}"
    assert container.started and container.stopped
    env = container.env
    port = int(env["KAFKA_ADVERTISED_LISTENERS"].rpartition(":")[2])
    assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://127.0.0.1:{port}"
    assert env["KAFKA_LISTENERS"].startswith(f"PLAINTEXT://0.0.0.0:{port},CONTROLLER://localhost:")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    assert env["KAFKA_LOG_RETENTION_MS"] == "1000"
    assert env["CLUSTER_ID"] and env["KAFKA_HEAP_OPTS"]
    assert container.ports == {f"{port}/tcp": ("127.0.0.1", port)}  # loopback only
    assert _docker_env_name("listener.name.sasl_plaintext.scram-sha-256.x") == (
        "KAFKA_LISTENER_NAME_SASL__PLAINTEXT_SCRAM___SHA___256_X"
    )
