"""One contender, start to finish: its topics, its child process, the throughput phase
(drain the pre-filled topics), count its outputs, the latency phase (a paced load), stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bench import kstreams, measure
from bench.load import LOAD_POOL, paced, prepare
from bench.spec import POLICIES, PROFILE_ENV, WIDTHS, Spec

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.1
MIB = 1_048_576
INPUT_CONFIG = {"segment.bytes": str(128 * MIB), "max.message.bytes": str(8 * MIB)}
# The broker stamps outputs as it appends them: the "append" latency reads that stamp.
OUTPUT_CONFIG = {**INPUT_CONFIG, "message.timestamp.type": "LogAppendTime"}
# In the latency phase a partition keeps its last 256 MiB or so, in segments of 32 MiB, so the
# phase's page cache stays a few gigabytes however long it runs (docs/performance.md, "Memory").
# The phase's inputs have it from the start; the outputs once the throughput phase's are counted.
LATENCY_RETENTION = {"segment.bytes": str(32 * MIB), "retention.bytes": str(256 * MIB)}


@dataclass(frozen=True)
class Contender:
    name: str
    label: str
    kind: str  # raw | worker | quix | kstreams | faststream
    processing: dict[str, Any] = field(default_factory=dict)
    processes: int = 1  # child processes in the contender's one consumer group (replicas)
    policy: dict[str, Any] = field(default_factory=dict)  # added to every input's policy
    peer: dict[str, Any] = field(default_factory=dict)  # a peer's own settings (Spec.peer)


@dataclass
class Run:
    """What every contender shares in one benchmark run."""

    bootstrap: str
    run_id: str
    inputs: dict[str, int]  # input topic -> width
    ends: dict[TopicPartition, int]  # the pre-filled end offsets: the work to do
    partitions: int
    workdir: Path
    kafka: dict[str, Any]
    processing: dict[str, Any]
    quix_commit_interval: float
    latency_seconds: float
    warmup_seconds: float  # the same load before the latency window, left out of its figures
    stall_s: float
    profile_dir: Path | None
    seed: int
    samples_dir: Path | None = None  # --latency-samples: the probe writes NAME.txt there
    broker_pid: int | None = None  # a local broker: its CPU is measured in both phases
    created: list[str] = field(default_factory=list)


async def _alter_topics(run: Run, names: Iterable[str], config: dict[str, str]) -> None:
    """Give ``names`` exactly ``config`` (AlterConfigs replaces a topic's whole set)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    try:
        resources = [ConfigResource(ConfigResourceType.TOPIC, n, config) for n in names]
        for response in await admin.alter_configs(resources):
            for error_code, message, _, name in response.resources:
                if error_code:
                    raise Unavailable(f"cannot set the latency phase's retention on {name}: "
                                      f"{message} (error {error_code})")  # fmt: skip
    finally:
        await admin.close()


class Unavailable(Exception):
    """The contender could not run; the reason goes into the report instead of a number."""


async def create_topics(run: Run, names: list[str], config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(n, run.partitions, 1, topic_configs=config) for n in names]
        )
    finally:
        await admin.close()
    run.created += names


def _child_env(profile: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGIT_ROUTER_")}
    env.pop(PROFILE_ENV, None)
    if profile is not None:
        env[PROFILE_ENV] = str(profile)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def command(c: Contender, spec_path: Path) -> list[str]:
    """A Python child (``bench.child``), or the Kafka Streams peer's JVM."""
    if c.kind == "kstreams":
        try:
            return kstreams.command(spec_path)
        except kstreams.BuildError as exc:
            raise Unavailable(str(exc)) from None
    return [sys.executable, "-m", "bench.child", str(spec_path)]


async def _lines(stream: asyncio.StreamReader, into: asyncio.Queue[dict[str, Any]]) -> None:
    async for line in stream:
        try:
            into.put_nowait(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue


def _tail(path: Path, lines: int = 5) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(text[-lines:])


async def run_contender(
    run: Run, c: Contender, rate: float | None, *, latency: bool = True
) -> dict[str, Any]:
    """Run ``c`` over the pre-filled inputs and measure it; then, unless ``latency`` is false,
    its latency phase at ``rate`` (half its own rate when ``None``)."""
    result: dict[str, Any] = {"name": c.name, "label": c.label, "available": False}
    prefix = f"{run.run_id}-{c.name}"
    outputs = {k: f"{prefix}-{k}" for k in ("routed", "escalated", "dead_letter")}
    latency_inputs = {f"{prefix}-lat-w{w}": w for w in WIDTHS}
    await create_topics(run, list(outputs.values()), OUTPUT_CONFIG)
    await create_topics(run, list(latency_inputs), {**INPUT_CONFIG, **LATENCY_RETENTION})
    # The worker records its config before it starts; the others ignore the name.
    config_history = f"{prefix}-config-history"
    await create_topics(run, [config_history], {"cleanup.policy": "compact"})
    spec: Spec = {
        "kind": c.kind,
        "bootstrap": run.bootstrap,
        "group": f"{prefix}-group",
        "inputs": {
            t: {**POLICIES[w], **c.policy} for t, w in {**run.inputs, **latency_inputs}.items()
        },
        "outputs": {**outputs, "config_history": config_history},
        "kafka": run.kafka,
        "processing": {**run.processing, **c.processing},
        "quix_commit_interval": run.quix_commit_interval,
        "peer": c.peer,
    }
    spec_path = run.workdir / f"{c.name}.json"
    spec_path.write_bytes(orjson.dumps(spec))
    log_path = run.workdir / f"{c.name}.log"
    try:
        argv = command(c, spec_path)
    except Unavailable as exc:
        return {**result, "reason": str(exc)}
    procs: list[asyncio.subprocess.Process] = []
    with log_path.open("wb") as log:  # the replicas share one log
        for i in range(c.processes):
            name = c.name if c.processes == 1 else f"{c.name}-{i}"
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdout=asyncio.subprocess.PIPE, stderr=log, cwd=REPO,
                env=_child_env(run.profile_dir / f"{name}.prof" if run.profile_dir else None),
            )  # fmt: skip
            procs.append(proc)
    queues: list[asyncio.Queue[dict[str, Any]]] = [asyncio.Queue() for _ in procs]
    readers = []
    for proc, queue in zip(procs, queues, strict=True):
        if proc.stdout is None:  # pragma: no cover - asked for a pipe above
            raise RuntimeError("no pipe to the contender")
        readers.append(asyncio.create_task(_lines(proc.stdout, queue)))
    try:
        result.update(await _throughput(run, spec, procs, queues, log_path))
        out_ends = await measure.end_offsets(run.bootstrap, outputs.values())
        counted = await measure.count_records(run.bootstrap, out_ends, timeout_s=600)
        # The first contender (the worker) sets the load: half of its own rate.
        load = rate if rate is not None else result["events_per_s"] / 2
        try:
            if latency:
                await _alter_topics(run, outputs.values(), {**OUTPUT_CONFIG, **LATENCY_RETENTION})
                result["latency"] = await _latency(
                    run, c.name, procs, outputs, latency_inputs, load
                )
        except Unavailable as exc:
            result["latency"] = {"error": str(exc)}
    except Unavailable as exc:
        result["available"] = False
        result["reason"] = str(exc)
        return result
    finally:
        codes = await asyncio.gather(*(_stop(p) for p in procs))
        result["exit_code"] = next((code for code in codes if code != 0), 0)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    result["events_out"] = counted.records
    # Offsets that hold no record are transaction markers: the outputs were transactional.
    result["transactional_outputs"] = sum(out_ends.values()) > counted.records
    first = result.pop("first_consumed")
    if counted.last_timestamp_ms:
        to_last_output = counted.last_timestamp_ms / 1000 - first
        result["events_per_s_to_last_output"] = round(result["events_in"] / to_last_output, 1)
    if c.processing.get("guarantee") == "exactly_once" and not result["transactional_outputs"]:
        result["available"] = False
        result["reason"] = "exactly_once was accepted, but no transaction markers in the outputs"
    return result


async def _throughput(
    run: Run,
    spec: Spec,
    procs: list[asyncio.subprocess.Process],
    queues: list[asyncio.Queue[dict[str, Any]]],
    log_path: Path,
) -> dict[str, Any]:
    """Poll the group's commits until they reach the pre-filled end offsets. With several
    processes (replicas in one group), CPU and memory are their sums, and the phase starts
    when the first of them consumes. A local broker's CPU is taken from the first report
    seen to the end: with the contender's, it says how full the two cores were."""
    total = sum(run.ends.values())
    broker = _CpuWindow({"broker": [run.broker_pid]} if run.broker_pid is not None else {})
    admin = AIOKafkaAdminClient(bootstrap_servers=run.bootstrap)
    await admin.start()
    firsts: list[dict[str, Any] | None] = [None] * len(procs)
    rss = measure.RssWindows(total)
    last_done, last_move = -1, time.monotonic()
    try:
        while True:
            for i, queue in enumerate(queues):
                while not queue.empty():
                    msg = queue.get_nowait()
                    if "refused" in msg:
                        raise Unavailable(f"settings refused: {msg['refused']}")
                    if "first_consumed" in msg:
                        firsts[i] = msg
                        if broker.start is None:
                            broker.open()
            for proc in procs:
                if proc.returncode is not None:
                    raise Unavailable(f"exited with status {proc.returncode}: {_tail(log_path)}")
            done = measure.progress(await measure.committed(admin, spec["group"]), run.ends)
            mem = _memory(procs)
            rss.add(done, mem["VmRSS"])
            if done >= total:
                finished = time.time()
                cpu_end = [measure.cpu_seconds(p.pid) for p in procs]
                broker.close()
                break
            if done > last_done:
                last_done, last_move = done, time.monotonic()
            elif time.monotonic() - last_move > run.stall_s:
                raise Unavailable(
                    f"no progress for {run.stall_s:g}s at {done}/{total}: {_tail(log_path)}"
                )
            await asyncio.sleep(POLL_S)
    finally:
        await admin.close()
    # The line is written before the first commit; it may still be in the pipe. A replica
    # that never consumed (no partitions) counts all of its CPU.
    deadline = time.monotonic() + 10
    for i, queue in enumerate(queues):
        if firsts[i] is None:
            with contextlib.suppress(TimeoutError):
                left = max(0.0, deadline - time.monotonic())
                late = await asyncio.wait_for(queue.get(), timeout=left)
                # A replica whose first records came after the phase ended (the latency
                # phase's) consumed none of it: all its CPU up to the end counts.
                if late["first_consumed"] <= finished:
                    firsts[i] = late
    started = [f for f in firsts if f is not None]
    if not started:
        raise Unavailable(f"no first-consumed report: {_tail(log_path)}")
    first_consumed = min(f["first_consumed"] for f in started)
    seconds = finished - first_consumed
    cpu = sum(end - (f["cpu"] if f else 0.0) for end, f in zip(cpu_end, firsts, strict=True))
    cores = {"contender": round(cpu / seconds, 2), **broker.cores()}
    return {
        "available": True,
        "processes": len(procs),
        "events_in": total,
        "first_consumed": first_consumed,
        "seconds": round(seconds, 3),
        "events_per_s": round(total / seconds, 1),
        "cpu_s": round(cpu, 2),
        "cpu_us_per_event": round(1e6 * cpu / total, 2),
        "cpu_cores": cores,
        "peak_rss_mb": round(mem["VmHWM"], 1),
        "rss_mb_first_tenth": round(rss.first, 1),
        "rss_mb_last_tenth": round(rss.last, 1),
        "rss_growth": round(rss.growth(), 4),
    }


def _memory(procs: list[asyncio.subprocess.Process]) -> dict[str, float]:
    """``VmRSS`` and ``VmHWM`` summed over the processes (for one, its own)."""
    out = {"VmRSS": 0.0, "VmHWM": 0.0}
    for proc in procs:
        mem = measure.memory_mb(proc.pid)
        for key in out:
            out[key] += mem[key]
    return out


async def _latency(
    run: Run,
    name: str,
    procs: list[asyncio.subprocess.Process],
    outputs: dict[str, str],
    inputs: dict[str, int],
    rate: float,
) -> dict[str, Any]:
    """The paced load for the warm-up and then the window; the probe's percentiles cover the
    window, and so does the CPU of each process on the machine's cores that the bench knows."""
    warmup = round(rate * run.warmup_seconds)
    count = warmup + max(1, round(rate * run.latency_seconds))
    prepared = prepare(inputs, min(count, LOAD_POOL), run.seed)
    deadline = (run.warmup_seconds + run.latency_seconds) * 2 + 60
    dump = str(run.samples_dir / f"{name}.txt") if run.samples_dir else ""
    probe = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.probe", run.bootstrap, str(count), str(deadline), dump,
        *outputs.values(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=REPO, env=_child_env(),
    )  # fmt: skip
    if probe.stdout is None or probe.stdin is None:  # pragma: no cover - asked for pipes above
        raise RuntimeError("no pipe to the probe")
    pids = {"contender": [p.pid for p in procs], "load": [os.getpid()], "probe": [probe.pid]}
    if run.broker_pid is not None:
        pids["broker"] = [run.broker_pid]
    cpu = _CpuWindow(pids)
    try:
        ready = await asyncio.wait_for(probe.stdout.readline(), timeout=60)
        if not ready:
            raise Unavailable("the latency probe did not start")
        with _LowestFree() as free:
            window = await paced(run.bootstrap, prepared, rate, count, warmup, on_measure=cpu.open)
        cpu.close()
        probe.stdin.write(b"%d\n" % window.measured_from_ns)
        await probe.stdin.drain()
        line = await asyncio.wait_for(probe.stdout.readline(), timeout=deadline + 30)
        found: dict[str, Any] = orjson.loads(line)
    except (TimeoutError, ConnectionError, orjson.JSONDecodeError) as exc:  # a probe gone too
        raise Unavailable(f"the latency probe gave no result: {type(exc).__name__}") from None
    finally:
        await _stop(probe)
    return {
        "rate": round(rate, 1),
        "achieved_rate": round(window.achieved_rate, 1),
        "warmup_s": run.warmup_seconds,
        "sent": count,
        "warmup_sent": warmup,
        "measured_from_ns": window.measured_from_ns,
        **found,
        "pacer_lag_ms": window.lag_ms,
        "cpu_cores": cpu.cores(),
        "memory_free_min_mb": round(free.mb),
    }


class _LowestFree:
    """The machine's free memory (``MemFree``), sampled every second inside the ``with``: the
    lowest seen. On a VM whose host lends memory lazily, pages taken past some point cost far
    more than the ones before (docs/performance.md, "Memory"); this shows how near a phase went."""

    def __init__(self) -> None:
        self.mb = measure.free_memory_mb()
        self._task: asyncio.Task[None] | None = None

    def __enter__(self) -> _LowestFree:
        self._task = asyncio.create_task(self._sample())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.mb = min(self.mb, measure.free_memory_mb())

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.mb = min(self.mb, measure.free_memory_mb())


class _CpuWindow:
    """CPU time of named groups of processes between ``open`` and ``close``, in cores (CPU
    seconds per second): what the contender, the broker, the load and the probe each took of
    the machine while the latency window ran, and the broker in the throughput phase."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.start: tuple[float, dict[str, float]] | None = None
        self.end: tuple[float, dict[str, float]] | None = None

    def _sample(self) -> tuple[float, dict[str, float]]:
        used: dict[str, float] = {}
        for group, pids in self.pids.items():
            with contextlib.suppress(OSError):  # a process gone: the group is left out
                used[group] = sum(measure.cpu_seconds(pid) for pid in pids)
        return time.monotonic(), used

    def open(self) -> None:
        self.start = self._sample()

    def close(self) -> None:
        self.end = self._sample()

    def cores(self) -> dict[str, float]:
        if self.start is None or self.end is None or self.end[0] <= self.start[0]:
            return {}
        (t0, a), (t1, b) = self.start, self.end
        return {g: round((b[g] - a[g]) / (t1 - t0), 2) for g in b if g in a}


async def _stop(proc: asyncio.subprocess.Process, grace_s: float = 60) -> int | None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=grace_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    return proc.returncode
