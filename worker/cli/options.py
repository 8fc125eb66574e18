"""Argument types and checks that the audit commands share (replay, whatif, plot, calibrate,
drift): time or offset ranges, probability lists, PNG paths, the plot extra."""

from __future__ import annotations

import argparse
from pathlib import Path

from worker.cli.common import Parser, UsageError, existing_file, probability, shown


def check_order(command: str, args: argparse.Namespace) -> None:
    from worker.audit import ranges

    try:
        ranges.check_order(args.start, args.end)
    except ranges.RangeError as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None


def need_matplotlib(command: str) -> None:
    from worker.audit.plot import MissingExtra, require_matplotlib

    try:
        require_matplotlib()
    except MissingExtra as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None


def bound(text: str) -> object:
    from worker.audit.ranges import RangeError, parse_bound

    try:
        return parse_bound(text)
    except RangeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def probabilities(text: str) -> list[float]:
    return [probability(part) for part in text.split(",")]


def output_path(text: str) -> Path:
    """A file to write: named, its directory exists and it is not a directory itself."""
    if not text:
        raise argparse.ArgumentTypeError("no file named (an empty path)")
    path = Path(text)
    try:
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"no such directory: {shown(str(path.parent))}")
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"is a directory: {shown(text)}")
    except OSError as exc:  # a name the system refuses outright, e.g. too long
        why = (exc.strerror or type(exc).__name__).lower()
        raise argparse.ArgumentTypeError(f"{why}: {shown(text)}") from None
    return path


def report_path(text: str) -> str | Path:
    """``-`` for stdout, else a file to write, checked now rather than after the whole run."""
    return text if text == "-" else output_path(text)


def range_arguments(p: Parser, what: str) -> None:
    p.add_argument("--config", type=existing_file, default=None, help=what)
    p.add_argument(
        "--from",
        dest="start",
        type=bound,
        default=None,
        help="ISO time with a timezone (2026-11-26T12:00:00Z) or partition:offset[,...]",
    )
    p.add_argument(
        "--to",
        dest="end",
        type=bound,
        default=None,
        help="end of the range, excluded; same forms as --from",
    )
