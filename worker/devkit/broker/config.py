"""Server properties, shared by the local and the Docker broker: ports,
listeners, the one-node settings, ``.properties`` escaping, the cluster id.

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
* One-node settings: every internal topic with one replica and one partition,
  ``transaction.state.log.min.isr=1``, ``group.initial.rebalance.delay.ms=0``,
  1 MiB segments, two network and two I/O threads, and a 3 s broker session so
  that ``restart()`` after ``kill()`` is not held up ~9 s by the dead
  incarnation's registration.
"""

from __future__ import annotations

import base64
import re
import socket
import uuid
from collections.abc import Mapping
from typing import Final

from worker.devkit.broker.base import _LOOPBACK, BrokerError

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
