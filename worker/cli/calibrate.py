"""The ``calibrate`` command: its arguments, checks, reading, printing and exit codes. The work
is in ``worker.audit.verdicts`` (reading and joining) and ``worker.audit.calibrate`` (the
report), imported only when the command runs.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing) or no verdict
that can be used; 2 a bad argument or config, or matplotlib missing for ``--png``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from worker.cli.audit import _bound, _need_matplotlib, _png_path
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    UsageError,
    configure_logs,
    existing_file,
    load_config,
    reachable,
    run_async,
)

COMMAND = "calibrate"


def _error_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text!r}")
    return value


def _add_calibrate(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        COMMAND,
        help="fit a topic's temperature to reviewers' verdicts; a min_margin for a target error",
    )
    p.add_argument("--topic", required=True, help="the input topic whose policy is calibrated")
    p.add_argument("--config", type=existing_file, required=True, help="TOML config file")
    verdicts = p.add_mutually_exclusive_group(required=True)
    verdicts.add_argument("--verdicts", default=None, help='topic of {"id": …, "label": …}')
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
        "--from", dest="start", type=_bound, default=None, help="ISO time with a timezone"
    )
    p.add_argument(
        "--to",
        dest="end",
        type=_bound,
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
    p.add_argument("--png", type=_png_path, default=None, help="reliability and risk-coverage")
    p.add_argument("--json", action="store_true", help="the report as JSON on stdout")
    p.set_defaults(handler=calibrate_command)


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

    configure_logs()
    settings = load_config(args.config)
    _check(args, settings)
    if args.png is not None:
        _need_matplotlib(COMMAND)
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


REGISTRARS = [_add_calibrate]
