"""The local source: a Kafka broker as a JVM process (``java -cp <jars> kafka.Kafka``).

Each broker gets a fresh temporary work dir (config, data, log), formatted
storage, free ports; start-up waits for an ApiVersions answer (``probe``), and
a port taken between picking and binding is retried with new ports.
``kill()`` / ``restart()`` keep the data and ports. The JVM is forked with
pdeathsig (``spawn``); work dirs of SIGKILLed owners are swept on the next start.

* The broker writes its log (log4j2 to stdout, and any JVM error) to
  ``<tmp>/broker.log``; start-up failures carry its last lines, and
  ``Broker.log_tail()`` keeps them after ``stop()`` removed the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Final

from worker.devkit.broker.base import (
    _HEAP,
    _INSTALL_HINT,
    _LOOPBACK,
    KAFKA_VERSION,
    Broker,
    BrokerError,
    BrokerUnavailable,
)
from worker.devkit.broker.config import (
    _advertised,
    _allocate_ports,
    _cluster_id,
    _properties_text,
    _server_properties,
)
from worker.devkit.broker.jars import _ensure_kafka_libs, _find_java_home
from worker.devkit.broker.lifecycle import _register, _unregister
from worker.devkit.broker.output import _java_error_line, _tail_file, _tail_text
from worker.devkit.broker.probe import _api_versions_ok
from worker.devkit.broker.spawn import _spawn

log = logging.getLogger(__name__)

_STOP_GRACE_S: Final = 30.0
_WORKDIR_PREFIX: Final = "logit-router-kafka-"  # in tempfile.gettempdir()
_OWNER_FILE: Final = "owner.pid"  # the Python process that owns a work dir


class _PortClash(BrokerError):
    pass


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
