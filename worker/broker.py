"""A real, throwaway Apache Kafka 4.x broker for tests and the ``demo`` command.

``start_broker()`` / ``throwaway_broker()`` return a :class:`Broker` from the
first source that works:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set (and not empty): that broker is used
   as-is. Nothing is started or stopped, and ``auto_create_topics`` /
   ``extra_config`` cannot be applied (configure that broker yourself).
2. A Docker engine answers (``docker info``, 5 s timeout; without the CLI a
   ``/_ping`` on the engine's unix socket): the official ``apache/kafka`` image,
   run through testcontainers' core ``DockerContainer`` (imported lazily; if
   testcontainers is missing, or the container fails, the local source is
   tried next). testcontainers-python's own ``KafkaContainer`` is not used: it
   drives the start scripts of Confluent's ``cp-kafka`` image and cannot run
   ``apache/kafka``. The image is configured through its ``KAFKA_*``
   environment variables, with the same properties as the local broker.
3. Otherwise a local broker process: ``java -cp <jars> kafka.Kafka``.

``LOGIT_ROUTER_BROKER=docker`` or ``=local`` skips the automatic choice
between 2 and 3 (useful on CI machines that have both).

Why each choice:

* **Jars from Maven, not the release tarball.** Developer machines and CI reach
  only package registries (Maven Central, PyPI, Debian), not the Apache
  download mirrors. ``org.apache.kafka:kafka_2.13`` on Central plus its runtime
  dependencies is exactly the tarball's ``libs/``. ``kafka/pom.xml`` pins the
  version and adds the one thing the tarball has and the POM lacks: the
  slf4j->log4j2 binding, without which the broker logs nothing.
* **Jar cache outside the clone, written atomically.** The jars (~43 MB) live
  in ``${XDG_CACHE_HOME:-~/.cache}/logit-router/kafka-<version>/libs``, so a
  fresh clone (CI's) reuses them and later runs need no network. Maven copies
  into a temporary sibling directory that is renamed into place only when
  complete, under a file lock, so a killed or concurrent fetch never leaves a
  half-filled cache. A stamp file holds the POM's hash; editing the POM
  refetches.
* **KRaft with a static one-voter quorum** (``controller.quorum.voters``).
  Kafka 4.x's ``--standalone`` format flag requires the dynamic-quorum setting
  ``controller.quorum.bootstrap.servers`` and refuses ``controller.quorum.voters``;
  the apache/kafka image's entrypoint formats *without* that flag, so a static
  voter set lets one properties builder serve both the local and the Docker
  broker. Storage is formatted (``kafka.tools.StorageTool format``) with a
  fresh cluster id in a fresh temporary directory on every start.
* **Ports** are picked free on 127.0.0.1 and every listener binds to
  127.0.0.1 only: tests must not be reachable from, or talk to, anything else.
  A port lost to a race between picking and binding is retried with new ports.
* **Readiness** is a raw Kafka ApiVersions request over a socket, not a TCP
  connect: Kafka binds its port long before it serves requests, and opens its
  request handlers only once the broker is registered and unfenced. No Kafka
  client library is needed (aiokafka may not be importable here).
* **Cleanup, always.** ``stop()`` is graceful (SIGTERM, then SIGKILL after a
  grace period) and idempotent, and removes the temporary directory. Every
  live broker is also stopped at interpreter exit (``atexit``) and on SIGTERM
  (a handler is installed if SIGTERM still has its default action; it cleans
  up, then lets the signal kill the process as before).
* **PR_SET_PDEATHSIG.** ``atexit`` and signal handlers do not run when the
  Python process is SIGKILLed or crashes; without this a JVM would linger,
  holding ports and ~500 MB. The kernel SIGKILLs the JVM when the *thread*
  that forked it ends, so forks are done from the main thread or from one
  long-lived helper thread, never from a short-lived worker thread (e.g. an
  ``asyncio.to_thread`` call) that would take the broker down with it.
  Linux only; elsewhere it is skipped. The work dir of a SIGKILLed parent is
  left behind; each later local start removes those whose owner is dead.
* The broker writes its log (log4j2 to stdout, and any JVM error) to
  ``<tmp>/broker.log``; start-up failures carry its last lines, and
  ``Broker.log_tail()`` keeps them after ``stop()`` removed the file.
* One-node settings: every internal topic with one replica and one partition,
  ``transaction.state.log.min.isr=1``, ``group.initial.rebalance.delay.ms=0``,
  1 MiB segments, few threads, a 512 MiB heap, and a 3 s broker session so
  that ``restart()`` after ``kill()`` is not held up ~9 s by the dead
  incarnation's registration.

Only the standard library is imported at module import time.

Run ``python -m worker.broker`` to get a broker until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import concurrent.futures
import contextlib
import ctypes
import hashlib
import importlib
import logging
import os
import queue
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any, Final, Literal, cast

__all__ = [
    "KAFKA_VERSION",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "main",
    "start_broker",
    "throwaway_broker",
]

log = logging.getLogger(__name__)

#: Kafka version run locally (must equal ``kafka.version`` in kafka/pom.xml)
#: and the apache/kafka image tag used with Docker.
KAFKA_VERSION: Final = "4.4.0"
_DOCKER_IMAGE: Final = f"apache/kafka:{KAFKA_VERSION}"
_POM: Final = Path(__file__).resolve().parent.parent / "kafka" / "pom.xml"
_INSTALL_HINT: Final = (
    "no Kafka broker available: install Java 17 and Maven, or Docker, "
    "or set KAFKA_BOOTSTRAP_SERVERS"
)
_LOOPBACK: Final = "127.0.0.1"
_HEAP: Final = ("-Xms128m", "-Xmx512m")
_STOP_GRACE_S: Final = 30.0
_MVN_TIMEOUT_S: Final = 900.0
_WORKDIR_PREFIX: Final = "logit-router-kafka-"  # in tempfile.gettempdir()
_OWNER_FILE: Final = "owner.pid"  # the Python process that owns a work dir
_DOCKER_LOG_DIR: Final = "/var/lib/kafka/data"  # the image's data volume

Source = Literal["env", "docker", "local"]


class BrokerError(RuntimeError):
    """A broker could not be started or used. ``str()`` is one line; start-up
    failures add the broker's last log lines as an exception note."""


class BrokerUnavailable(BrokerError):
    """No source of a broker exists on this machine (nothing to install from)."""


class _PortClash(BrokerError):
    pass


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


class Broker:
    """A running Kafka broker. Get one from :func:`start_broker`."""

    bootstrap_servers: str
    """``"127.0.0.1:PORT"`` (or whatever ``KAFKA_BOOTSTRAP_SERVERS`` says)."""
    source: Source
    log_path: Path | None
    """The broker's log file while it exists (local source only)."""
    workdir: Path | None
    """Temporary directory holding config, data and log (local source only)."""
    listeners: Mapping[str, str]
    """Advertised listener name -> ``host:port``, e.g. ``{"PLAINTEXT": ...}``;
    extra listeners added through ``extra_config`` show up here."""

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        source: Source,
        listeners: Mapping[str, str] | None = None,
        log_path: Path | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.source = source
        self.listeners = dict(listeners or {})
        self.log_path = log_path
        self.workdir = workdir

    @property
    def pid(self) -> int | None:
        """PID of the broker JVM while it runs (local source only)."""
        return None

    def stop(self) -> None:
        """Stop the broker and remove everything it wrote. Idempotent."""

    def kill(self) -> None:
        """SIGKILL the broker process, keeping its data for :meth:`restart`."""
        raise BrokerError(self._local_only("kill"))

    def restart(self) -> None:
        """Start again on the same data and ports; return once it answers."""
        raise BrokerError(self._local_only("restart"))

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the broker's log (kept after ``stop()``)."""
        return ""

    def _local_only(self, what: str) -> str:
        return (
            f"{what}() works only on a broker started as a local process; "
            f"this one came from {self.source} (set LOGIT_ROUTER_BROKER=local)"
        )

    def __repr__(self) -> str:
        return f"<Broker {self.source} {self.bootstrap_servers}>"


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


# --------------------------------------------------------------------------
# server properties (shared by the local and the Docker broker)
# --------------------------------------------------------------------------

_APPENDABLE: Final = ("listeners", "advertised.listeners", "listener.security.protocol.map")
_PORT_RE: Final = re.compile(r"\{port:([A-Za-z0-9_.-]+)\}")


def _free_port(taken: set[int]) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((_LOOPBACK, 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            taken.add(port)
            return port
    raise BrokerError("could not find a free port on 127.0.0.1")


def _allocate_ports(extra: Mapping[str, str]) -> tuple[dict[str, int], dict[str, str]]:
    """Pick ports for ``broker``, ``controller`` and every ``{port:NAME}`` in
    ``extra``; return them and ``extra`` with the placeholders filled in."""
    taken: set[int] = set()
    ports = {"broker": _free_port(taken), "controller": _free_port(taken)}

    def fill(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in ports:
            ports[name] = _free_port(taken)
        return str(ports[name])

    resolved = {k: _PORT_RE.sub(fill, v) for k, v in extra.items()}
    return ports, resolved


def _server_properties(
    *,
    ports: Mapping[str, int],
    bind_host: str,
    advertised_host: str,
    controller_host: str,
    log_dir: str,
    auto_create_topics: bool,
    extra: Mapping[str, str],
) -> dict[str, str]:
    b, c = ports["broker"], ports["controller"]
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{controller_host}:{c}",
        "controller.listener.names": "CONTROLLER",
        "listeners": f"PLAINTEXT://{_LOOPBACK}:{b},CONTROLLER://{controller_host}:{c}",
        "advertised.listeners": f"PLAINTEXT://{advertised_host}:{b}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": log_dir,
        # one node: every internal topic has one replica and one partition
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "share.coordinator.state.topic.num.partitions": "1",
        "group.initial.rebalance.delay.ms": "0",
        # After a kill() the controller (restarted with it) keeps the old
        # broker registration until its session expires and refuses the new
        # one meanwhile (DUPLICATE_BROKER_REGISTRATION): 9 s by default.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "500",
        "auto.create.topics.enable": "true" if auto_create_topics else "false",
        # small and light: 2-core machines, short-lived data
        "log.segment.bytes": str(1024 * 1024),
        "log.index.size.max.bytes": str(1024 * 1024),
        "num.network.threads": "2",
        "num.io.threads": "2",
        "background.threads": "2",
        "num.recovery.threads.per.data.dir": "1",
        "log.cleaner.dedupe.buffer.size": str(2 * 1024 * 1024),
    }
    for key, value in extra.items():
        if key in _APPENDABLE and value.startswith("+"):
            props[key] = f"{props[key]},{value[1:]}"
        else:
            props[key] = value
    if bind_host != _LOOPBACK:
        props["listeners"] = props["listeners"].replace(f"://{_LOOPBACK}:", f"://{bind_host}:")
    return props


def _advertised(props: Mapping[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in props.get("advertised.listeners", "").split(","):
        name, sep, addr = item.strip().partition("://")
        if sep:
            out[name] = addr
    return out


def _escape_property(text: str, *, key: bool) -> str:
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[ch])
        elif ch in "=: #!" and (key or (ch in "#! " and i == 0)):
            out.append("\\" + ch)
        elif not 0x20 <= ord(ch) <= 0x7E:
            # java.util.Properties reads ISO-8859-1; \\uXXXX per UTF-16 unit
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{units[j]:02x}{units[j + 1]:02x}" for j in range(0, len(units), 2))
        else:
            out.append(ch)
    return "".join(out)


def _properties_text(props: Mapping[str, str]) -> str:
    return "".join(
        f"{_escape_property(k, key=True)}={_escape_property(v, key=False)}\n"
        for k, v in props.items()
    )


def _docker_env_name(prop: str) -> str:
    """apache/kafka image convention: '.' -> '_', '_' -> '__', '-' -> '___'."""
    return "KAFKA_" + prop.replace("_", "__").replace("-", "___").replace(".", "_").upper()


def _cluster_id() -> str:
    # Kafka's Uuid.randomUuid().toString(): url-safe base64, no padding,
    # never starting with '-' (it would read as a command-line flag).
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


# --------------------------------------------------------------------------
# readiness probe: a raw ApiVersions v0 request
# --------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def _api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if the broker answers ApiVersions without error."""
    correlation = 0x4C52  # arbitrary
    client_id = b"logit-router-probe"
    header = struct.pack(">hhih", 18, 0, correlation, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(header)) + header)
            (size,) = struct.unpack(">i", _recv_exact(sock, 4))
            body = _recv_exact(sock, size)
    except (OSError, struct.error):
        return False
    if len(body) < 6:
        return False
    got, error_code = struct.unpack(">ih", body[:6])
    return bool(got == correlation and error_code == 0)


# --------------------------------------------------------------------------
# live brokers: atexit, SIGTERM
# --------------------------------------------------------------------------

_live: set[Broker] = set()
_live_lock = threading.Lock()
_atexit_registered = False
_sigterm_installed = False


def _register(broker: Broker) -> None:
    global _atexit_registered
    with _live_lock:
        _live.add(broker)
        if not _atexit_registered:
            atexit.register(_stop_all)
            _atexit_registered = True
    _install_sigterm_handler()


def _unregister(broker: Broker) -> None:
    with _live_lock:
        _live.discard(broker)


def _stop_all() -> None:
    with _live_lock:
        brokers = list(_live)
    for broker in brokers:
        with contextlib.suppress(Exception):
            broker.stop()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_sigterm_handler() -> None:
    """Clean up on SIGTERM, but only where nobody else handles it."""
    global _sigterm_installed
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
        _sigterm_installed = True


# --------------------------------------------------------------------------
# spawning the JVM: pdeathsig, from a thread that lives as long as the process
# --------------------------------------------------------------------------

_PR_SET_PDEATHSIG: Final = 1


def _pdeathsig_preexec() -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # parent died before prctl took effect
            os._exit(1)

    return preexec


_SpawnJob = tuple[list[str], dict[str, Any], "concurrent.futures.Future[subprocess.Popen[bytes]]"]
_spawn_queue: queue.SimpleQueue[_SpawnJob] = queue.SimpleQueue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawner_loop() -> None:
    while True:
        argv, kwargs, future = _spawn_queue.get()
        try:
            proc = cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **kwargs))  # noqa: S603
            future.set_result(proc)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            future.set_exception(exc)


def _spawn(argv: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Popen with pdeathsig; forks from the main thread or a permanent one."""
    kwargs["preexec_fn"] = _pdeathsig_preexec()
    if threading.current_thread() is threading.main_thread():
        return cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **kwargs))  # noqa: S603
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(
                target=_spawner_loop, name="logit-router-broker-spawner", daemon=True
            )
            _spawner.start()
    future: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _spawn_queue.put((argv, kwargs, future))
    return future.result()


# --------------------------------------------------------------------------
# Java and the jar cache
# --------------------------------------------------------------------------


def _java_major(home: Path) -> int | None:
    try:
        text = (home / "release").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _find_java_home() -> Path | None:
    """JAVA_HOME if it is 17+, else an installed JDK (17 first), else PATH."""

    def usable(home: Path) -> bool:
        major = _java_major(home)
        return os.access(home / "bin" / "java", os.X_OK) and (major is None or major >= 17)

    env_home = os.environ.get("JAVA_HOME")
    if env_home and usable(Path(env_home)):
        return Path(env_home)
    found: list[tuple[int, str, Path]] = []
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        for home in jvm_root.iterdir():
            major = _java_major(home)
            if major is not None and major >= 17 and usable(home):
                found.append((0 if major == 17 else major, home.name, home))
    if found:
        return min(found)[2]
    on_path = shutil.which("java")
    if on_path:
        home = Path(os.path.realpath(on_path)).parent.parent
        if usable(home):
            return home
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logit-router"


def _pom_kafka_version(pom: Path) -> str | None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(pom).getroot()  # noqa: S314 - our own kafka/pom.xml
    node = root.find("m:properties/m:kafka.version", ns)
    return node.text.strip() if node is not None and node.text else None


def _libs_ready(libs: Path, stamp: str | None) -> bool:
    if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return False
    try:
        have = (libs / ".pom-sha256").read_text().strip()
    except OSError:
        return False
    return stamp is None or have == stamp


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only; imported here so the module imports anywhere

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_kafka_libs(java_home: Path) -> Path:
    """Return the cached jar directory, fetching it with Maven if needed."""
    home = _cache_root() / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    pom = _POM if _POM.is_file() else None
    stamp = hashlib.sha256(pom.read_bytes()).hexdigest() if pom else None
    if _libs_ready(libs, stamp):
        return libs
    with _file_lock(home.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if _libs_ready(libs, stamp):
            return libs
        if pom is None or stamp is None:
            raise BrokerError(f"no Kafka jars in {libs} and no kafka/pom.xml to fetch them")
        pinned = _pom_kafka_version(pom)
        if pinned != KAFKA_VERSION:
            raise BrokerError(
                f"kafka/pom.xml pins Kafka {pinned} but worker/broker.py expects {KAFKA_VERSION}"
            )
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerUnavailable(f"{_INSTALL_HINT} (Maven not found)")
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
        try:
            out = tmp / "libs"
            log.info("fetching Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
            started = time.monotonic()
            try:
                proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    [
                        mvn,
                        "-q",
                        "-B",
                        "-f",
                        str(pom),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={out}",
                    ],
                    cwd=tmp,
                    env={**os.environ, "JAVA_HOME": str(java_home)},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=_MVN_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"Maven did not fetch the Kafka jars within {_MVN_TIMEOUT_S:.0f}s"
                ) from None
            output = proc.stdout.decode(errors="replace")
            if proc.returncode != 0 or not (out / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
                err = BrokerError(
                    f"Maven could not fetch the Kafka jars (exit {proc.returncode}): "
                    f"{_last_error_line(output)}"
                )
                err.add_note(_tail_text(output, 40))
                raise err
            (out / ".pom-sha256").write_text(stamp + "\n")
            old = home / f".old-{uuid.uuid4().hex}"
            if libs.exists():
                libs.rename(old)
            out.rename(libs)  # atomic: the cache is complete or absent
            shutil.rmtree(old, ignore_errors=True)
            log.info("fetched Kafka jars in %.1fs", time.monotonic() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [
        ln
        for ln in lines
        if "ERROR" in ln
        and "Re-run Maven" not in ln
        and "Help 1" not in ln
        and ln.rstrip() != "[ERROR]"
    ]
    pick = errors[0] if errors else (lines[-1] if lines else "no output")
    return re.sub(r"\x1b\[[0-9;]*m", "", pick)[:300]


def _java_error_line(output: str) -> str:
    """The most telling line of a JVM's output: the exception message, if any."""
    lines = [
        ln.strip()
        for ln in output.splitlines()
        if ln.strip() and not ln.startswith(("\t", " ")) and not ln.startswith("Caused by")
    ]
    for ln in lines:
        m = re.search(r"(?:^|\s)([\w.$]*(?:Exception|Error)): (.+)$", ln)
        if m:
            return f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}"[:300]
    return lines[-1][:300] if lines else "no output"


def _tail_text(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _tail_file(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 256 * 1024))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return _tail_text(data, lines)


# --------------------------------------------------------------------------
# local broker process
# --------------------------------------------------------------------------

_LOG4J2: Final = """\
status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = ${sys:logit.router.loglevel:-INFO}
rootLogger.appenderRef.out.ref = OUT
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


class _LocalBroker(Broker):
    def __init__(
        self,
        *,
        java_home: Path,
        libs: Path,
        auto_create_topics: bool,
        extra: Mapping[str, str],
    ) -> None:
        ports, resolved = _allocate_ports(extra)
        workdir = Path(tempfile.mkdtemp(prefix=_WORKDIR_PREFIX))
        props = _server_properties(
            ports=ports,
            bind_host=_LOOPBACK,
            advertised_host=_LOOPBACK,
            controller_host=_LOOPBACK,
            log_dir=str(workdir / "data"),
            auto_create_topics=auto_create_topics,
            extra=resolved,
        )
        super().__init__(
            bootstrap_servers=f"{_LOOPBACK}:{ports['broker']}",
            source="local",
            listeners=_advertised(props),
            log_path=workdir / "broker.log",
            workdir=workdir,
        )
        self._dir = workdir
        self._ports = ports
        self._java = str(java_home / "bin" / "java")
        self._classpath = f"{libs}{os.sep}*"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._stopped = False
        self._saved_tail = ""
        _register(self)  # from here on, atexit/SIGTERM remove the workdir
        (workdir / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        (workdir / "server.properties").write_text(_properties_text(props), encoding="latin-1")
        (workdir / "log4j2.properties").write_text(_LOG4J2)

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def _jvm(self, main_class: str, *args: str, tool: bool = False) -> list[str]:
        # The one-shot storage tool gets the quick-start JIT (C1 only) and a
        # small serial heap: ~0.8 s less per start on 2 cores. The broker keeps
        # the full JIT so later throughput tests measure Kafka, not C1.
        vm = (
            ("-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1")
            if tool
            else (*_HEAP, "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20")
        )
        return [
            self._java,
            *vm,
            "-XX:+ExitOnOutOfMemoryError",
            "-XX:-UsePerfData",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self._dir / 'log4j2.properties'}",
            f"-Dlogit.router.loglevel={'WARN' if tool else 'INFO'}",
            f"-Dkafka.logs.dir={self._dir}",
            "-cp",
            self._classpath,
            main_class,
            *args,
        ]

    def format_storage(self) -> None:
        argv = self._jvm(
            "kafka.tools.StorageTool",
            "format",
            "-t",
            _cluster_id(),
            "-c",
            str(self._dir / "server.properties"),
            tool=True,
        )
        try:
            proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                argv,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise BrokerError("Kafka storage format did not finish within 120s") from None
        if proc.returncode != 0:
            output = proc.stdout.decode(errors="replace")
            err = BrokerError(
                f"Kafka storage format failed (exit {proc.returncode}): {_java_error_line(output)}"
            )
            err.add_note(_tail_text(output, 40))
            raise err

    def launch(self, timeout: float) -> None:
        with self._lock:
            if self._stopped:
                raise BrokerError("broker was stopped")
            self._close_log()
            self._log_fh = open(self._dir / "broker.log", "ab")  # closed by _close_log()
            self._proc = _spawn(
                self._jvm("kafka.Kafka", str(self._dir / "server.properties")),
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready(self._proc, timeout)

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        port = self._ports["broker"]
        while True:
            rc = proc.poll()
            if rc is not None:
                tail = self.log_tail(40)
                if "Address already in use" in tail or "BindException" in tail:
                    raise _PortClash("a broker port was taken")
                err = BrokerError(
                    f"Kafka broker exited with code {rc} during start-up: "
                    f"{_java_error_line(self.log_tail(200))}"
                )
                err.add_note(f"last lines of {self.log_path}:\n{tail}")
                raise err
            if _api_versions_ok(_LOOPBACK, port, timeout=1.0):
                return
            if time.monotonic() > deadline:
                tail = self.log_tail(40)
                err = BrokerError(
                    f"Kafka broker did not answer on {_LOOPBACK}:{port} within {timeout:.0f}s"
                )
                err.add_note(f"last lines of {self.log_path}:\n{tail}")
                raise err
            time.sleep(0.1)

    def _terminate(self, sig: signal.Signals, grace: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning(
                    "Kafka broker pid %d ignored %s for %.0fs; killing it",
                    proc.pid,
                    sig.name,
                    grace,
                )
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None

    def stop(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            try:
                self._terminate(signal.SIGTERM, _STOP_GRACE_S)
            finally:
                self._saved_tail = self.log_tail(200)
                if self.workdir is not None:
                    shutil.rmtree(self.workdir, ignore_errors=True)
                self.log_path = None
                _unregister(self)

    def kill(self) -> None:
        with self._lock:
            if self._stopped:
                raise BrokerError("broker was stopped")
            self._terminate(signal.SIGKILL, 10.0)

    def restart(self, timeout: float = 120.0) -> None:
        with self._lock:
            if self._stopped:
                raise BrokerError("broker was stopped")
            self._terminate(signal.SIGTERM, _STOP_GRACE_S)
            self.launch(timeout)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is not None and self.log_path.exists():
            return _tail_file(self.log_path, lines)
        return _tail_text(self._saved_tail, lines)


def _sweep_orphans() -> None:
    """Remove work dirs left by Python processes that were SIGKILLed (their
    JVM died with them through pdeathsig, but nothing removed the files)."""
    for path in Path(tempfile.gettempdir()).glob(f"{_WORKDIR_PREFIX}*"):
        try:
            owner = int((path / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or just being created
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            log.info("removing %s left by dead process %d", path, owner)
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue  # alive, owned by another user


def _start_local(auto_create: bool, extra: Mapping[str, str], timeout: float) -> Broker:
    _sweep_orphans()
    java_home = _find_java_home()
    if java_home is None:
        raise BrokerUnavailable(f"{_INSTALL_HINT} (no Java 17+ found)")
    libs = _ensure_kafka_libs(java_home)
    for attempt in range(3):
        broker = _LocalBroker(
            java_home=java_home, libs=libs, auto_create_topics=auto_create, extra=extra
        )
        started = time.monotonic()
        try:
            broker.format_storage()
            broker.launch(timeout)
        except _PortClash:
            broker.stop()
            log.info("port clash on attempt %d; retrying with new ports", attempt + 1)
            continue
        except BaseException:
            broker.stop()
            raise
        log.info(
            "Kafka %s broker up at %s in %.1fs (pid %s)",
            KAFKA_VERSION,
            broker.bootstrap_servers,
            time.monotonic() - started,
            broker.pid,
        )
        return broker
    raise BrokerError("could not bind the broker's ports after 3 attempts")


# --------------------------------------------------------------------------
# Docker (testcontainers)
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# python -m worker.broker
# --------------------------------------------------------------------------


class _Interrupted(BaseException):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so cleanup is not interrupted in turn.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a broker, print its address, run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.broker",
        description="Run a throwaway Kafka broker until SIGTERM or Ctrl-C.",
    )
    parser.add_argument(
        "--no-auto-create-topics", action="store_true", help="disable auto.create.topics.enable"
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra broker property (repeatable)",
    )
    parser.add_argument("--start-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="on failure, also print the broker's log tail"
    )
    args = parser.parse_args(argv)
    extra: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = value
    logging.basicConfig(level=logging.INFO, format="worker.broker: %(message)s", stream=sys.stderr)

    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    broker: Broker | None = None
    try:
        broker = start_broker(
            auto_create_topics=not args.no_auto_create_topics,
            extra_config=extra,
            start_timeout=args.start_timeout,
        )
        lines = [f"bootstrap_servers={broker.bootstrap_servers}", f"source={broker.source}"]
        if broker.pid is not None:
            lines.append(f"pid={broker.pid}")
        if broker.workdir is not None:
            lines.append(f"workdir={broker.workdir}")
        if broker.log_path is not None:
            lines.append(f"log={broker.log_path}")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        log.info("running; SIGTERM or Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except _Interrupted:
        return 0
    except BrokerError as exc:
        sys.stderr.write(f"worker.broker: error: {exc}\n")
        if args.verbose:
            for note in getattr(exc, "__notes__", []):
                sys.stderr.write(f"{note}\n")
        return 1
    finally:
        if broker is not None:
            broker.stop()


if __name__ == "__main__":
    sys.exit(main())
