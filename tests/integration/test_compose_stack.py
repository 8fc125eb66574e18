"""docker-compose.yml's application services, run without Docker on a real broker.

No Docker engine here, so the containers' processes are run as the compose file and the image
define them: the worker's command (the image's ENTRYPOINT + CMD) twice, as two replicas in one
group, with config/compose.toml and the environment of the image and of the compose file; the
sample producer's command; the image's HEALTHCHECK command against each replica; then each
stopped by its compose stop signal. What changes: the broker address (the session broker, not
kafka:9092), uuid-suffixed topic and group names so tests share nothing, HTTP on loopback port 0
(two replicas on one host), and the interpreter path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath

import orjson
import pytest

from tests.integration.helpers import read_inputs, read_outputs, wait_until_committed
from tests.unit.deploy_files import (
    COMPOSE_CONFIG,
    dockerfile_env,
    effective_command,
    environment,
    healthcheck_command,
    host_path_of,
    option_values,
    seconds,
    service,
)
from worker.core.settings import ENV_PREFIX, Settings, load_settings
from worker.stream import admin, history

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent  # the image puts its virtualenv's bin first on PATH
PORT_LINE = re.compile(rb"on http://127\.0\.0\.1:(\d+)")


class Process:
    """A child process whose stderr is collected as it runs (so its pipe never fills)."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.lines: list[bytes] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.lines.append(line)

    def log(self) -> str:
        return b"".join(self.lines[-40:]).decode(errors="replace")

    async def http_port(self, deadline: float) -> int:
        while time.monotonic() < deadline:
            for line in self.lines:
                if match := PORT_LINE.search(line):
                    return int(match.group(1))
            assert self.proc.returncode is None, f"{self.name} exited:\n{self.log()}"
            await asyncio.sleep(0.1)
        pytest.fail(f"{self.name} never served HTTP:\n{self.log()}")

    async def stop(self, sig: signal.Signals, grace_s: float) -> int:
        """Send ``sig``; past ``grace_s`` the process is killed, as Docker would."""
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            code = await asyncio.wait_for(self.proc.wait(), grace_s)
        except TimeoutError:
            code = None
        finally:
            if self.proc.returncode is None:
                self.proc.kill()
                await self.proc.wait()
            await self._reader
        if code is None:
            pytest.fail(f"{self.name} still ran {grace_s:g}s after {sig.name}:\n{self.log()}")
        return code


@contextlib.asynccontextmanager
async def spawn(name: str, argv: list[str], env: dict[str, str]) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    child = Process(name, proc)
    try:
        yield child
    finally:
        await child.stop(signal.SIGKILL, grace_s=30)


def renamed_config(uid: str, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """config/compose.toml with every topic name suffixed by the test's uid."""
    text = COMPOSE_CONFIG.read_text()
    deployed = load_settings(COMPOSE_CONFIG)
    o = deployed.outputs
    topics = [*deployed.topics, o.routed, o.escalated, o.dead_letter, o.config_history]
    names = {t: f"{t}-{uid}" for t in topics}
    for old, new in names.items():
        assert f'"{old}"' in text
        text = text.replace(f'"{old}"', f'"{new}"')
    path = tmp_path / "compose.toml"
    path.write_text(text)
    return path, names


async def http_status(port: int, path: str) -> int:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return 0
    try:
        writer.write(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(status.split()[1]) if status else 0


async def wait_ready(ports: list[int], replicas: list[Process], deadline: float) -> None:
    while time.monotonic() < deadline:
        if all([await http_status(p, "/readyz") == 200 for p in ports]):
            return
        for r in replicas:
            assert r.proc.returncode is None, f"{r.name} exited:\n{r.log()}"
        await asyncio.sleep(0.2)
    pytest.fail("the replicas did not both become ready:\n" + "\n".join(r.log() for r in replicas))


async def wait_some_committed(settings: Settings, deadline: float) -> None:
    """Until every input partition has had records consumed and committed by the group."""
    while time.monotonic() < deadline:
        parts = await admin.end_offsets(settings.kafka, settings.topics)
        seen = await admin.wait_for_commits(settings.kafka, settings.kafka.group_id, parts, 0.5)
        if all(seen[tp] > 0 for tp in parts):
            return
        await asyncio.sleep(0.5)
    pytest.fail("the workers committed nothing on some input partition")


async def test_compose_workers_and_producer_run_drain_and_stop_cleanly(
    bootstrap: str, uid: str, tmp_path: Path
) -> None:
    worker_svc, producer_svc = service("worker"), service("producer")
    init_svc = service("kafka-init")
    config, names = renamed_config(uid, tmp_path)

    # the worker replicas: the image's command, its config path mapped to the renamed copy
    argv = effective_command(worker_svc)
    config_arg = argv.index("--config") + 1
    assert host_path_of(worker_svc, PurePosixPath(argv[config_arg])) == COMPOSE_CONFIG
    argv[config_arg] = str(config)
    argv[0] = str(BIN / argv[0])
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env |= dockerfile_env() | environment(worker_svc)
    env.pop("PATH", None)
    env["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
    env |= {
        f"{ENV_PREFIX}KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        f"{ENV_PREFIX}KAFKA__GROUP_ID": f"g-{uid}",
        f"{ENV_PREFIX}HTTP__HOST": "127.0.0.1",
        f"{ENV_PREFIX}HTTP__PORT": "0",
    }
    settings = load_settings(
        config,
        kafka={"bootstrap_servers": bootstrap, "group_id": f"g-{uid}"},
    )
    partitions = int(environment(init_svc)["PARTITIONS"])
    o = settings.outputs
    big = {"max.message.bytes": environment(init_svc)["MAX_MESSAGE_BYTES"]}
    await admin.create_topics(
        settings.kafka, [*settings.topics, o.routed, o.escalated, o.dead_letter], partitions, big
    )
    await history.create_topic(settings.kafka, o.config_history)

    # the sample producer: its compose command, pointed at the session broker and renamed topics
    p_argv = effective_command(producer_svc)
    assert p_argv[0] == "python"
    p_argv[0] = sys.executable
    p_argv[p_argv.index("--bootstrap-servers") + 1] = bootstrap
    topics_at = p_argv.index("--topics") + 1
    for i, topic in enumerate(option_values(p_argv, "--topics")):
        p_argv[topics_at + i] = names[topic]
    assert set(option_values(p_argv, "--topics")) == set(settings.topics)

    replicas_n = worker_svc["deploy"]["replicas"]
    deadline = time.monotonic() + 180
    async with contextlib.AsyncExitStack() as stack:
        replicas = [
            await stack.enter_async_context(spawn(f"worker-{n + 1}", argv, env))
            for n in range(replicas_n)
        ]
        ports = [await r.http_port(deadline) for r in replicas]
        producer = await stack.enter_async_context(spawn("producer", p_argv, env))
        await wait_ready(ports, replicas, deadline)

        # the image's HEALTHCHECK command passes against each live replica
        for port in ports:
            check = healthcheck_command()
            check[0] = sys.executable
            proc = await asyncio.create_subprocess_exec(
                *check, env=env | {f"{ENV_PREFIX}HTTP__PORT": str(port)}
            )
            assert await asyncio.wait_for(proc.wait(), 60) == 0

        await wait_some_committed(settings, deadline)

        # compose's stop signal for the producer ends it cleanly (exit 0, producer flushed)
        p_signal = signal.Signals[producer_svc["stop_signal"]]
        code = await producer.stop(p_signal, max(seconds(producer_svc["stop_grace_period"]), 60))
        assert code == 0, producer.log()

        await wait_until_committed(settings)

        # SIGTERM (the image's STOPSIGNAL) drains and stops each replica with exit 0
        grace = max(seconds(worker_svc["stop_grace_period"]), 60)
        codes = await asyncio.gather(*(r.stop(signal.SIGTERM, grace) for r in replicas))
        assert codes == [0] * replicas_n, "\n".join(r.log() for r in replicas)
        # JSON logs, as LOGIT_ROUTER_LOG__FORMAT asks: every line is one JSON object
        for r in replicas:
            for line in r.lines:
                assert isinstance(orjson.loads(line), dict), line

    # every input offset ended in at least one output (at-least-once across a rebalance)
    inputs = await read_inputs(settings)
    by_source = (await read_outputs(settings)).by_source()
    missing = [
        (r.topic, r.partition, r.offset)
        for r in inputs
        if (r.topic, r.partition, r.offset) not in by_source
    ]
    assert inputs and not missing, f"{len(missing)} of {len(inputs)} inputs have no output"
    assert set(by_source) == {(r.topic, r.partition, r.offset) for r in inputs}
