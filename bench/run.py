"""``python -m bench``: pre-fill a broker, run every contender on the same topics, report.

Contenders run one after another, each in its own process. The worker (b) goes first: half of
its rate is the load of every contender's latency phase (unless ``--rate`` is given). Before
it, the worker runs over the pre-filled events under each guarantee, untimed, until the broker's
JIT compiler has gone quiet, so that the first contender does not pay for the broker's warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import orjson
from aiokafka.errors import KafkaError

from bench import kstreams, measure, report
from bench.contender import INPUT_CONFIG, Contender, Run, create_topics, run_contender
from bench.env import environment
from bench.load import prefill
from bench.spec import SHADOW_AND_SAMPLE, WIDTHS
from worker.cli.common import positive_int

CONTENDERS = {
    c.name: c
    for c in (
        Contender("worker", "(b) worker, at-least-once", "worker", {"guarantee": "at_least_once"}),
        Contender("raw", "(a) raw aiokafka pipe", "raw"),
        # What a shadow policy and the audit sample cost, beside (b).
        Contender(
            "worker_shadow",
            "(bs) worker, shadow+sample",
            "worker",
            {"guarantee": "at_least_once"},
            policy=SHADOW_AND_SAMPLE,
        ),
        Contender(
            "worker_eos", "(c) worker, exactly-once", "worker", {"guarantee": "exactly_once"}
        ),
        # Replicas in one group, the production answer for a CPU-bound Python worker: on
        # this 2-core machine the broker shares the cores, so it shows what a second core
        # buys here, not what it buys beside a remote broker.
        Contender(
            "worker_x2",
            "(b2) worker, 2 processes",
            "worker",
            {"guarantee": "at_least_once"},
            processes=2,
        ),
        Contender("quix", "(d) Quix Streams app", "quix"),
        # The field's peers, each doing the worker's job (bench/kstreams, bench/faststream_app;
        # their settings: docs/performance.md, "Peers").
        Contender("kstreams", "(e) Kafka Streams", "kstreams"),
        Contender(
            "kstreams_eos",
            "(f) Kafka Streams, EOS v2",
            "kstreams",
            {"guarantee": "exactly_once"},
        ),
        Contender("faststream", "(g) FastStream, defaults", "faststream"),
        Contender(
            "faststream_tuned",
            "(h) FastStream, tuned",
            "faststream",
            peer={"tuned": True},
        ),
    )
}
# The local broker's settings, so that what a phase wrote is gone soon after it (the machine's
# memory: docs/performance.md, "Memory"). A deleted topic's files go after a second, not after
# Kafka's minute (``_clear``); the latency phase's topics are trimmed to their retention every
# five seconds, not every five minutes (``bench.contender.LATENCY_RETENTION``).
BROKER_CONFIG = {"log.segment.delete.delay.ms": "1000", "log.retention.check.interval.ms": "5000"}

# Not a contender: the untimed passes that warm the broker up before the first one, which
# otherwise runs on a broker still compiling its request paths (docs/performance.md). They
# run the worker, whose requests (produce to three topics, commits) the raw pipe's do not
# cover: the peers that come later find the broker warmed by the worker's phases too. Each
# pass runs it under both guarantees: otherwise (c) was the first to meet the broker's
# transaction paths and paid, in its timed phase, for their compiling, which the Kafka Streams
# EOS peer after it did not.
BROKER_WARMUP = Contender("broker_warmup", "the broker's warm-up (the worker, untimed)", "worker")
BROKER_WARMUP_EOS = dataclasses.replace(
    BROKER_WARMUP, name="broker_warmup_eos", processing={"guarantee": "exactly_once"}
)
JIT_QUIET_CORES = 0.03  # a pass with less JIT compiling than this ends the warm-up...
SETTLED = 0.10  # ...if its events/s are also within this of the pass before it
BROKER_WARMUP_S = 240.0
FULL, QUICK = 1_000_000, 100_000
RESULTS = Path(__file__).resolve().parent / "results"  # where a full run's report is kept
# The broker's JIT compiler is still at work on the paths that small, paced requests take for
# the first 20 to 45 s of a latency phase (see docs/performance.md): figures from then say
# more about the JVM's warm-up than about the contender.
WARMUP_S = 30.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_float(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _seconds(text: str) -> float:
    value = _number(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be finite and 0 or more, got {text}")
    return value


def _setting(text: str) -> tuple[str, str, Any]:
    """``kafka.linger_ms=10`` -> ("kafka", "linger_ms", 10): a worker setting for (a), (b), (c)."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or section not in ("kafka", "processing") or not name:
        raise argparse.ArgumentTypeError(
            f"expected kafka.NAME=VALUE or processing.NAME=VALUE: {text!r}"
        )
    try:
        value: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return section, name, value


def _contenders(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONTENDERS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown contender {unknown}; choose from {sorted(CONTENDERS)}"
        )
    return names


def build_parser() -> _Parser:
    p = _Parser(prog="python -m bench", description=__doc__.splitlines()[0] if __doc__ else None)
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--events", type=positive_int, default=FULL, help="events to pre-fill (default 1,000,000)"
    )
    size.add_argument(
        "--quick", action="store_const", const=QUICK, dest="events", help="100,000 events"
    )
    p.add_argument(
        "--only",
        type=_contenders,
        default=list(CONTENDERS),
        metavar="NAMES",
        help=f"comma-separated subset of {','.join(CONTENDERS)}",
    )
    p.add_argument(
        "--partitions", type=positive_int, default=3, help="partitions per topic (default 3)"
    )
    p.add_argument(
        "--rate",
        type=_positive_float,
        help="latency-phase load, events/s (default: half the rate of the first contender, "
        "the worker unless --only leaves it out)",
    )
    p.add_argument(
        "--latency-seconds",
        type=_positive_float,
        default=20.0,
        help="length of the latency phase's measured window (default 20)",
    )
    p.add_argument(
        "--warmup-seconds",
        type=_seconds,
        default=WARMUP_S,
        help=f"the same load before that window, left out of its figures (default {WARMUP_S:g})",
    )
    p.add_argument(
        "--broker-warmup-seconds",
        type=_seconds,
        default=BROKER_WARMUP_S,
        help="untimed passes of the worker before the first contender, until the local "
        "broker's JIT compiler is quiet in one whose events/s are within 10%% of the pass "
        "before, or this many seconds have gone (always this "
        "long when the broker is not a local process: KAFKA_BOOTSTRAP_SERVERS or Docker); "
        f"0 runs none (default {BROKER_WARMUP_S:g})",
    )
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="SECTION.NAME=VALUE",
        help="a worker setting for (a), (b) and (c), e.g. kafka.linger_ms=10 (repeatable)",
    )
    p.add_argument(
        "--quix-commit-interval",
        type=_positive_float,
        default=5.0,
        help="Quix's commit_interval, seconds (default 5.0, Quix's own default)",
    )
    p.add_argument(
        "--stall-seconds",
        type=_positive_float,
        default=120.0,
        help="give a contender up after this long without committing anything new",
    )
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="run each contender under cProfile, writing DIR/NAME.prof (slows them down)",
    )
    p.add_argument(
        "--latency-samples",
        type=Path,
        metavar="DIR",
        help="write every latency sample of each contender to DIR/NAME.txt "
        "(sent_ns and receipt in µs, one line each)",
    )
    p.add_argument("--keep-topics", action="store_true", help="do not delete the topics afterwards")
    p.add_argument(
        "--save",
        type=Path,
        metavar="FILE",
        help="also write the report (the last line's JSON, indented) to FILE; a full run "
        "(1,000,000 events or more) writes it to bench/results/ unless this is given",
    )
    return p


async def bench(
    args: argparse.Namespace, bootstrap: str, source: str, broker_pid: int | None = None
) -> dict[str, Any]:
    env = environment(source)
    print(f"bench: {args.events:,} events over widths {WIDTHS}, {args.partitions} partitions each; "
          f"broker {bootstrap} ({source})")  # fmt: skip
    print("fast path: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    if not env["aiokafka_c_extension"]:
        print("WARNING: aiokafka runs without its C extension: every contender is slower")
    overrides: dict[str, dict[str, Any]] = {"kafka": {}, "processing": {}}
    for section, name, value in args.set:
        overrides[section][name] = value
    run_id = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="logit-router-bench-") as tmp:
        run = Run(
            bootstrap=bootstrap, run_id=run_id, inputs={f"{run_id}-w{w}": w for w in WIDTHS},
            ends={}, partitions=args.partitions, workdir=Path(tmp), kafka=overrides["kafka"],
            processing=overrides["processing"], quix_commit_interval=args.quix_commit_interval,
            latency_seconds=args.latency_seconds, warmup_seconds=args.warmup_seconds,
            stall_s=args.stall_seconds, seed=args.seed, profile_dir=args.profile,
            samples_dir=args.latency_samples, broker_pid=broker_pid,
        )  # fmt: skip
        try:
            return await _measure_all(args, run, env)
        finally:
            if not args.keep_topics and source == "env":
                await _delete(bootstrap, run.created)


async def _measure_all(args: argparse.Namespace, run: Run, env: dict[str, Any]) -> dict[str, Any]:
    if any(CONTENDERS[n].kind == "kstreams" for n in args.only):
        print("building the Kafka Streams peer with Maven (once; cached) ...", flush=True)
        # A failure is reported as each of its contenders' reason, with the others measured.
        with contextlib.suppress(kstreams.BuildError):
            await asyncio.to_thread(kstreams.ensure_built)
    await create_topics(run, list(run.inputs), INPUT_CONFIG)
    started = time.monotonic()
    produced = await prefill(run.bootstrap, run.inputs, args.events, args.seed)
    fill_s = time.monotonic() - started
    run.ends = await measure.end_offsets(run.bootstrap, run.inputs)
    print(
        f"pre-filled {produced:,} events in {fill_s:.1f}s ({produced / fill_s:,.0f}/s)", flush=True
    )
    warmup = None
    if args.broker_warmup_seconds > 0:
        warmup = await _warm_broker(run, args.broker_warmup_seconds, args.rate)
    rate: float | None = args.rate
    results: dict[str, dict[str, Any]] = {}
    for name in [n for n in CONTENDERS if n in args.only]:
        c = CONTENDERS[name]
        print(f"running {c.label} ...", flush=True)
        since = len(run.created)
        r = await _attempt(run, c, rate)
        await _clear(run, since)
        results[name] = r
        print(report.throughput_line(r), flush=True)
        if r.get("available"):
            print(report.latency_line(r.get("latency") or {}), flush=True)
        if rate is None and r.get("available"):
            rate = r["events_per_s"] / 2
    for base in ("raw", "worker"):
        of = results.get(base, {})
        for r in results.values():
            if r.get("available") and of.get("available"):
                r[f"ratio_to_{base}"] = round(r["events_per_s"] / of["events_per_s"], 3)
    checks = report.targets(results)
    print()
    print(report.table(results))
    print("targets:")
    print(report.target_lines(checks))
    return {
        "events_produced": produced,
        "prefill_seconds": round(fill_s, 2),
        "environment": env,
        "settings": {"kafka": run.kafka, "processing": run.processing,
                     "quix_commit_interval": run.quix_commit_interval},
        "broker_warmup": warmup,
        "latency_rate": rate,
        "contenders": results,
        "targets": checks,
    }  # fmt: skip


async def _attempt(
    run: Run, c: Contender, rate: float | None, *, latency: bool = True
) -> dict[str, Any]:
    """``run_contender``, with a failure of the broker's as the result's reason."""
    try:
        return await run_contender(run, c, rate, latency=latency)
    except (KafkaError, TimeoutError, OSError) as exc:  # the broker, not the contender
        return {"name": c.name, "label": c.label, "available": False,
                "reason": f"{type(exc).__name__}: {exc}"}  # fmt: skip


async def _warm_broker(run: Run, budget_s: float, rate: float | None) -> dict[str, Any]:
    """Passes of the worker, each under at-least-once then exactly-once, until one sees the
    broker's JIT compiler quiet and the throughput settled (within ``SETTLED`` of the pass
    before), or ``budget_s`` is spent (with no broker process to look at, the budget alone
    decides), as a JMH warm-up runs until its iterations agree; then one pass with a latency
    phase, at ``rate`` or half the last pass's rate. What it did, for the report."""
    print(f"running {BROKER_WARMUP.label} ...", flush=True)
    started = time.monotonic()
    done: dict[str, Any] = {"passes": 0, "jit_cores": [], "quiet": False, "events_per_s": [],
                            "events_per_s_exactly_once": []}  # fmt: skip
    for n in itertools.count(1):
        jit_before, pass_started = _jit(run), time.monotonic()
        r = await _untimed(run, BROKER_WARMUP, str(n))
        if not r.get("available"):
            print(f"  the warm-up failed ({r.get('reason')}); going on without it", flush=True)
            done["failed"] = r.get("reason")
            break
        line = f"  pass {n}: {r['events_per_s']:,.0f} events/s"
        if "exactly_once_failed" not in done:
            r_eos = await _untimed(run, BROKER_WARMUP_EOS, str(n))
            if r_eos.get("available"):
                done["events_per_s_exactly_once"].append(r_eos["events_per_s"])
                line += f", {r_eos['events_per_s']:,.0f} under exactly-once"
            else:  # (c) will say why too; the broker is still warmed for the others
                done["exactly_once_failed"] = r_eos.get("reason")
                line += f", exactly-once failed ({r_eos.get('reason')})"
        jit_after, now = _jit(run), time.monotonic()
        done["passes"] = n
        rates: list[float] = done["events_per_s"]
        rates.append(r["events_per_s"])
        settled = len(rates) > 1 and abs(rates[-1] - rates[-2]) <= SETTLED * rates[-2]
        if jit_before is not None and jit_after is not None:
            cores = round((jit_after - jit_before) / (now - pass_started), 3)
            done["jit_cores"].append(cores)
            done["quiet"] = cores < JIT_QUIET_CORES
            line += f", the broker's JIT compiler {cores:.2f} cores"
        print(line, flush=True)
        if (done["quiet"] and settled) or now - started >= budget_s:
            break
    if "failed" not in done:
        at = rate if rate is not None else done["events_per_s"][-1] / 2
        done["latency_pass"] = await _warm_latency(run, at)
    done["seconds"] = round(time.monotonic() - started, 1)
    return done


async def _untimed(
    run: Run, kind: Contender, suffix: str, rate: float | None = None, *, latency: bool = False
) -> dict[str, Any]:
    """One of the warm-up's runs, its topics deleted after it."""
    c = dataclasses.replace(kind, name=f"{kind.name}{suffix}")
    since = len(run.created)
    r = await _attempt(run, c, rate, latency=latency)
    await _clear(run, since)
    return r


async def _warm_latency(run: Run, rate: float) -> dict[str, Any]:
    """One more pass, with a latency phase at ``rate``: without it the first contender's
    latency window was the first time the broker served the paced load's small requests and
    the probe (what that cost: docs/performance.md)."""
    r = await _untimed(run, BROKER_WARMUP, "_latency", rate, latency=True)
    lat = r.get("latency") or {}
    if not r.get("available") or not lat or "error" in lat:
        why = r.get("reason") or lat.get("error")
        print(f"  the latency pass failed ({why}); going on", flush=True)
        return {"failed": why}
    print("  latency pass:" + report.latency_line(lat).removeprefix(" "), flush=True)
    return {k: lat.get(k) for k in ("rate", "receipt_ms", "cpu_cores")}


def _jit(run: Run) -> float | None:
    if run.broker_pid is None:
        return None
    try:
        return measure.jit_seconds(run.broker_pid)
    except OSError:
        return None


async def _clear(run: Run, since: int) -> None:
    """Delete the topics a contender made (its outputs, its latency phase's inputs), then
    write out what the machine still holds to write: the next contender starts on a broker
    and a disk with nothing of the last one's left to do. Without it the writeback of one
    phase's output (a gigabyte or more) went on in the next one's (docs/performance.md)."""
    made = run.created[since:]
    with contextlib.suppress(KafkaError, TimeoutError, OSError):  # else left for the end
        await _delete(run.bootstrap, made)
        del run.created[since:]
    await asyncio.to_thread(os.sync)


async def _delete(bootstrap: str, topics: list[str]) -> None:
    if not topics:
        return
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(topics)
    finally:
        await admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option, attr in (("--profile", "profile"), ("--latency-samples", "latency_samples")):
        given: Path | None = getattr(args, attr)
        if given is None:
            continue
        path = given.resolve()
        setattr(args, attr, path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            sys.stderr.write(f"python -m bench: error: {option} {path}: {exc.strerror}\n")
            return 2
    logging.basicConfig(level=logging.WARNING, format="bench: %(levelname)s %(name)s: %(message)s")
    # A topic's first produce requests can meet a leader not elected yet; aiokafka retries
    # them and says so at WARNING. Not news here.
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    from worker.devkit.broker import BrokerError, throwaway_broker
    from worker.stream.service import run_loop

    try:
        with throwaway_broker(auto_create_topics=False, extra_config=BROKER_CONFIG) as broker:
            summary: dict[str, Any] = {}

            async def go() -> int:
                summary.update(
                    await bench(args, broker.bootstrap_servers, broker.source, broker.pid)
                )
                return 0

            run_loop(go)
    except BrokerError as exc:
        sys.stderr.write(f"bench: error: {exc}\n")
        return 1
    line = orjson.dumps(summary)
    sys.stdout.write(line.decode() + "\n")
    save: Path | None = args.save
    if save is None and args.events >= FULL:
        stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
        save = RESULTS / f"{stamp}-full.json"
    if save is not None:
        try:
            save.write_bytes(orjson.dumps(summary, option=orjson.OPT_INDENT_2) + b"\n")
        except OSError as exc:
            sys.stderr.write(f"bench: error: cannot write {save}: {exc.strerror}\n")
            return 1
        sys.stderr.write(f"bench: the report is in {save}\n")
    return 0
