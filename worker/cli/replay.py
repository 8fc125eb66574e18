"""The ``replay`` command: its arguments, checks, printing and exit codes. The work is in
``worker.audit.replay``, imported only when the command runs.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing), or with
``--fail-on-diff`` a difference or a missing original; 2 a bad argument or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    UsageError,
    configure_logs,
    load_config,
    probability,
    reachable,
    run_async,
    topic_name,
)
from worker.cli.options import check_order, range_arguments, report_path


def replay_command(args: argparse.Namespace) -> int:
    from worker.audit import replay

    configure_logs()
    settings = load_config(args.config)
    check_order("replay", args)
    try:
        # refused before any I/O
        replay.check_target(settings, args.topic, args.to_topic, args.as_published)
    except replay.ReplayRefused as exc:
        raise UsageError(f"logit-router replay: {exc}") from None
    to_stdout = args.out == "-"
    path = args.out if isinstance(args.out, Path) else None
    partial = path.with_name(path.name + ".partial") if path is not None else None
    try:
        sink = sys.stdout.buffer if to_stdout else (partial.open("wb") if partial else None)
    except OSError as exc:
        raise UsageError(f"logit-router replay: cannot write {args.out}: {exc}") from None

    async def work() -> dict[str, Any]:
        await reachable(settings.kafka)
        return await replay.replay(
            settings,
            args.topic,
            args.start,
            args.end,
            write=sink.write if sink is not None else None,
            to_topic=args.to_topic,
            tolerance=args.tolerance,
            as_published=args.as_published,
        )

    try:
        result = run_async("replay", work)
    finally:
        if sink is not None and not to_stdout:
            sink.close()
    if isinstance(result, int):
        if partial is not None:
            partial.unlink(missing_ok=True)
        return result
    if partial is not None and path is not None:
        os.replace(partial, path)
    text = replay.human(result)
    (sys.stderr if to_stdout else sys.stdout).write(text)
    if args.fail_on_diff and replay.differs(result):
        return EXIT_FAILURE
    return EXIT_OK


# --- whatif and plot margins: where the events come from ---------------------------------


def _add_replay(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "replay", help="re-score a topic range and diff it against what was published"
    )
    p.add_argument("--topic", type=topic_name, required=True, help="the input topic to replay")
    range_arguments(
        p,
        "TOML config to re-score with (default: from the environment); with --as-published, "
        "where to read, and the config for events that no output names a version for",
    )
    p.add_argument(
        "--as-published",
        action="store_true",
        help="re-score each event with the config version its output names, from the config "
        "history, instead of one config",
    )
    p.add_argument(
        "--out",
        type=report_path,
        default=None,
        help="JSONL report: one line per event, then a summary; - for stdout",
    )
    p.add_argument(
        "--to-topic",
        default=None,
        help="also publish the re-scored records to this (non-live) topic",
    )
    p.add_argument(
        "--tolerance",
        type=probability,
        default=0.0,
        help="probability change up to which events count as identical (default 0)",
    )
    p.add_argument(
        "--fail-on-diff", action="store_true", help="exit 1 if anything differs or is missing"
    )
    p.set_defaults(handler=replay_command)


REGISTRARS = [_add_replay]
