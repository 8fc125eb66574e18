"""A real, throwaway Apache Kafka 4.x broker for tests and the ``demo`` command.

``start_broker()`` / ``throwaway_broker()`` return a :class:`Broker` from the
first source that works: ``KAFKA_BOOTSTRAP_SERVERS``, a Docker engine, or a
local JVM process (see ``start`` for the order and ``LOGIT_ROUTER_BROKER``).
The broker is stopped, and everything it wrote removed, by ``stop()``, at
interpreter exit, on SIGTERM, and (for the JVM) when its Python parent dies.

The modules, by role:

* ``base``: the :class:`Broker` handle, its errors, ``KAFKA_VERSION``;
* ``start``: which source to use;
* ``config``: server properties (ports, listeners, one-node settings);
* ``probe``: readiness, a raw ApiVersions request;
* ``jars``: Java discovery and the Maven fetch of the Kafka jars;
* ``local``: the broker JVM (start, kill, restart, stop, log);
* ``spawn``: forking it with PR_SET_PDEATHSIG;
* ``docker``: the apache/kafka image through testcontainers;
* ``lifecycle``: stopping live brokers at exit and on SIGTERM;
* ``output``: the telling line and the tail of a process's output;
* ``cli``: ``python -m worker.devkit.broker``.

Each module's docstring gives the reasons for its choices. Only the standard
library is imported at import time.

Run ``python -m worker.devkit.broker`` to get a broker until SIGTERM/SIGINT.
"""

from worker.devkit.broker.base import KAFKA_VERSION, Broker, BrokerError, BrokerUnavailable
from worker.devkit.broker.cli import main
from worker.devkit.broker.start import start_broker, throwaway_broker

__all__ = [
    "KAFKA_VERSION",
    "Broker",
    "BrokerError",
    "BrokerUnavailable",
    "main",
    "start_broker",
    "throwaway_broker",
]
