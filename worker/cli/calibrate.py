"""The ``calibrate`` command: its arguments, checks, reading, printing and exit codes. The work
is in ``worker.audit.verdicts`` (reading and joining) and ``worker.audit.calibrate`` (the
report), imported only when the command runs.

With ``--watch`` it keeps running as a monitor (``worker.audit.watch``) until SIGTERM or
SIGINT, then exits 0.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing) or no verdict
that can be used; 2 a bad argument or config, or matplotlib missing for ``--png``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    UsageError,
    configure_logs,
    duration,
    existing_file,
    load_config,
    port,
    positive_int,
    reachable,
    run_async,
    shown,
    topic_name,
)
from worker.cli.options import bound, need_matplotlib, output_path

COMMAND = "calibrate"
# --watch's options and their defaults (None in the parser, so that one given without --watch
# can be refused).
WATCH_DEFAULTS: dict[str, Any] = {
    "window": 3600.0,
    "interval": 30.0,
    "min_verdicts": 500,
    "max_outputs": 100_000,
    "max_verdicts": 100_000,
    "metrics_host": "127.0.0.1",
    "metrics_port": 9465,
}
# One-shot options that mean nothing to a monitor.
NOT_WITH_WATCH = (
    ("json", "--json"),
    ("png", "--png"),
    ("outputs_file", "--outputs-file"),
    ("verdicts_file", "--verdicts-file"),
    ("start", "--from"),
    ("end", "--to"),
    ("target_error", "--target-error"),
)


def _error_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text)}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {shown(text)}")
    return value


def _add_calibrate(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        COMMAND,
        help="fit a topic's temperature to reviewers' verdicts; a min_margin for a target error",
    )
    p.add_argument(
        "--topic", type=topic_name, required=True, help="the input topic whose policy is calibrated"
    )
    p.add_argument("--config", type=existing_file, required=True, help="TOML config file")
    verdicts = p.add_mutually_exclusive_group(required=True)
    verdicts.add_argument(
        "--verdicts", type=topic_name, default=None, help='topic of {"id": …, "label": …}'
    )
    verdicts.add_argument(
        "--verdicts-file", type=existing_file, default=None, help="verdicts as JSONL instead"
    )
    p.add_argument(
        "--outputs-file",
        type=existing_file,
        default=None,
        help="the worker's outputs as JSONL, instead of the routed and escalated topics",
    )
    p.add_argument(
        "--from", dest="start", type=bound, default=None, help="ISO time with a timezone"
    )
    p.add_argument(
        "--to",
        dest="end",
        type=bound,
        default=None,
        help="end of the window, excluded; verdicts stamped at or after it are late",
    )
    p.add_argument(
        "--target-error",
        type=_error_rate,
        default=None,
        help="the routed error rate to stay under (95%% upper bound), e.g. 0.05",
    )
    p.add_argument(
        "--ground-truth",
        action="store_true",
        help="every published event has a verdict: weigh all alike, routed ones included",
    )
    p.add_argument("--png", type=output_path, default=None, help="reliability and risk-coverage")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    live = p.add_argument_group("watching calibration live (--watch)")
    live.add_argument(
        "--watch",
        action="store_true",
        help="keep running: follow the topics and serve the figures of the last --window "
        "on /metrics",
    )
    live.add_argument(
        "--window", type=duration, default=None, help="how far back verdicts count (1h)"
    )
    live.add_argument(
        "--interval", type=duration, default=None, help="how often to work them out (30s)"
    )
    live.add_argument(
        "--min-verdicts",
        type=positive_int,
        default=None,
        help="fewer used verdicts in the window: the gauges read NaN (500)",
    )
    live.add_argument(
        "--max-outputs",
        type=positive_int,
        default=None,
        help="outputs kept for the join, the oldest dropped past it (100000)",
    )
    live.add_argument(
        "--max-verdicts",
        type=positive_int,
        default=None,
        help="verdicts kept, the oldest dropped past it (100000)",
    )
    live.add_argument(
        "--metrics-host", default=None, help="address of /metrics (127.0.0.1: loopback)"
    )
    live.add_argument("--metrics-port", type=port, default=None, help="port of /metrics (9465)")
    p.set_defaults(handler=calibrate_command)


def _check_watch(args: argparse.Namespace) -> None:
    """--watch with none of the one-shot options; the watch options only with --watch."""
    if not args.watch:
        given = [k for k in WATCH_DEFAULTS if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise UsageError(f"logit-router {COMMAND}: {flag} is for --watch")
        return
    for key, flag in NOT_WITH_WATCH:
        if getattr(args, key) not in (None, False):
            raise UsageError(f"logit-router {COMMAND}: --watch does not take {flag}")
    if args.verdicts is None:
        raise UsageError(f"logit-router {COMMAND}: --watch reads a --verdicts topic")
    for key, default in WATCH_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)


def _check(args: argparse.Namespace, settings: Any) -> None:
    if args.topic not in settings.topics:
        known = ", ".join(sorted(settings.topics))
        raise UsageError(
            f"logit-router {COMMAND}: --topic {args.topic} is not in the config ({known})"
        )
    bounds = [b for b in (args.start, args.end) if b is not None]
    if any(b.offsets for b in bounds):
        raise UsageError(
            f"logit-router {COMMAND}: --from/--to must be times here: outputs and verdicts "
            "are different topics, partition:offset means nothing across them"
        )
    if bounds and args.outputs_file is not None and args.verdicts_file is not None:
        raise UsageError(f"logit-router {COMMAND}: --from/--to read topics, not files")
    if args.start is not None and args.end is not None:
        from worker.audit.ranges import RangeError, check_order

        try:
            check_order(args.start, args.end)
        except RangeError as exc:
            raise UsageError(f"logit-router {COMMAND}: {exc}") from None


def _read(args: argparse.Namespace, settings: Any) -> tuple[Any, Any] | int:
    from worker.audit import verdicts as v

    try:
        outputs = (
            None
            if args.outputs_file is None
            else v.outputs_from_lines(v.read_lines(args.outputs_file), args.topic, settings.limits)
        )
        found = (
            None
            if args.verdicts_file is None
            else v.verdicts_from_lines(v.read_lines(args.verdicts_file))
        )
    except OSError as exc:
        raise UsageError(f"logit-router {COMMAND}: cannot read a file: {exc}") from None
    if outputs is not None and found is not None:
        return outputs, found

    async def work() -> tuple[Any, Any]:
        await reachable(settings.kafka)
        out = outputs or await v.outputs_from_topics(settings, args.topic, args.start, args.end)
        ver = found or await v.verdicts_from_topic(settings, args.verdicts, args.start, args.end)
        return out, ver

    return run_async(COMMAND, work)


def calibrate_command(args: argparse.Namespace) -> int:
    from worker.audit import calibrate, plot
    from worker.audit.verdicts import join

    _check_watch(args)
    configure_logs()
    settings = load_config(args.config)
    _check(args, settings)
    if args.watch:
        return _watch(args, settings)
    if args.png is not None:
        need_matplotlib(COMMAND)
    read = _read(args, settings)
    if isinstance(read, int):
        return read
    outputs, found = read
    policy = settings.topics[args.topic]
    joined = join(outputs, found, policy.labels, args.ground_truth)
    seen = {
        "read": outputs.read,
        "of_topic": len(outputs.by_id),
        "duplicates": outputs.duplicates,
        "unreadable": outputs.unreadable,
    }
    try:
        doc = calibrate.report(
            args.topic, joined, policy, args.target_error, args.ground_truth, seen
        )
    except calibrate.CalibrationRefused as exc:
        raise UsageError(f"logit-router {COMMAND}: {exc}") from None
    except calibrate.NoVerdicts as exc:
        sys.stderr.write(f"logit-router {COMMAND}: {exc}\n")
        return EXIT_FAILURE
    if args.json:
        sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    else:
        sys.stdout.write(calibrate.text(doc))
    if args.png is not None:
        plot.draw_calibration(args.png, doc)
        sys.stderr.write(f"wrote {args.png}\n")
    return EXIT_OK


def _watch(args: argparse.Namespace, settings: Any) -> int:
    from worker.audit import watch

    opts = watch.WatchOptions(
        topic=args.topic,
        verdicts=args.verdicts,
        window_s=args.window,
        interval_s=args.interval,
        min_verdicts=args.min_verdicts,
        max_outputs=args.max_outputs,
        max_verdicts=args.max_verdicts,
        ground_truth=args.ground_truth,
        host=args.metrics_host,
        port=args.metrics_port,
    )

    async def work() -> int:
        await reachable(settings.kafka)
        await watch.run(settings, opts)
        return EXIT_OK

    return run_async(COMMAND, work)


REGISTRARS = [_add_calibrate]
