"""The :class:`Broker` handle every source returns, its errors, and the
constants the sources share.

The base class is also what the ``env`` source returns: a broker that this
package neither started nor stops, so every method is a no-op or refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Final, Literal

#: Kafka version run locally (must equal ``kafka.version`` in kafka/pom.xml)
#: and the apache/kafka image tag used with Docker.
KAFKA_VERSION: Final = "4.4.0"
_INSTALL_HINT: Final = (
    "no Kafka broker available: install Java 17 and Maven, or Docker, "
    "or set KAFKA_BOOTSTRAP_SERVERS"
)
_LOOPBACK: Final = "127.0.0.1"
# Kafka's own default (``kafka-server-start.sh``: ``KAFKA_HEAP_OPTS="-Xmx1G -Xms1G"``). With the
# heap fixed, G1 sizes its young generation by its pause goal from the start; a heap that began
# at 128 MiB kept it small, and at 16,000 events/s the broker paused for a young collection
# every 0.6 s instead of every 3 s: pauses that stall every client on a 2-core machine
# (docs/performance.md).
_HEAP: Final = ("-Xms1g", "-Xmx1g")

Source = Literal["env", "docker", "local"]


class BrokerError(RuntimeError):
    """A broker could not be started or used. ``str()`` is one line; start-up
    failures add the broker's last log lines as an exception note."""


class BrokerUnavailable(BrokerError):
    """No source of a broker exists on this machine (nothing to install from)."""


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
