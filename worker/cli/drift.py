"""The ``drift`` commands: ``drift snapshot`` writes a topic's reference, ``drift`` compares a
range of the topic with one (PSI and KS, docs/drift.md). The work is in ``worker.audit.drift``,
imported only when the command runs.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing) or no scored
event in the range; 2 a bad argument, config or reference file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import orjson

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
    topic_name,
)
from worker.cli.options import check_order, output_path, range_arguments


def drift_command(args: argparse.Namespace) -> int:
    from worker.audit import drift as audit_drift
    from worker.core import drift

    command = "drift snapshot" if args.action == "snapshot" else "drift"
    if args.action == "snapshot":
        if args.output is None or args.reference is not None or args.json:
            raise UsageError(
                "logit-router drift snapshot: needs -o FILE, and takes neither --reference "
                "nor --json"
            )
    elif args.reference is None or args.output is not None:
        raise UsageError("logit-router drift: needs --reference FILE (-o is for drift snapshot)")
    configure_logs()
    reference = None
    if args.reference is not None:
        try:
            reference = drift.parse_reference(args.reference.read_bytes())
        except (OSError, drift.ReferenceError) as exc:
            raise UsageError(f"logit-router drift: --reference {args.reference}: {exc}") from None
    settings = load_config(args.config, topics_needed=False)
    check_order(command, args)

    async def work() -> Any:
        await reachable(settings.kafka)
        return await audit_drift.published(settings, args.topic, args.start, args.end)

    found = run_async(command, work)
    if isinstance(found, int):
        return found
    if found.n == 0:
        sys.stderr.write(f"logit-router {command}: no scored events of {args.topic} in the range\n")
        return EXIT_FAILURE
    if reference is None:
        made = audit_drift.snapshot(found, audit_drift.window_of(args.start, args.end))
        _write(Path(str(args.output)), made.to_json())
        sys.stdout.write(f"wrote {args.output}: {made.n:,} scored events of {args.topic}\n")
        return EXIT_OK
    report = audit_drift.compare(reference, found)
    if args.json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(audit_drift.human(report))
    return EXIT_OK


def _write(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    except OSError as exc:
        raise UsageError(f"logit-router drift snapshot: cannot write {path}: {exc}") from None


def _add_drift(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "drift",
        help="a topic's margin and top-1 distributions: write a reference (snapshot), or "
        "compare a range with one (PSI, KS)",
    )
    p.add_argument("action", nargs="?", choices=["snapshot"], default=None)
    p.add_argument(
        "--topic", type=topic_name, required=True, help="the input topic whose outputs are read"
    )
    range_arguments(p, "TOML config: brokers and output topics (default: from the environment)")
    p.add_argument("-o", "--output", type=output_path, default=None, help="snapshot: file to write")
    p.add_argument(
        "--reference", type=existing_file, default=None, help="the reference to compare with"
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of a table")
    p.set_defaults(handler=drift_command)


REGISTRARS = [_add_drift]
