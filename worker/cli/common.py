"""What every command shares: exit codes, the one-line usage error, the argument parser and the
argument converters. Values are checked here, at the edge, and trusted after."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command-line argument; reported on one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line, without the usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def float_list(text: str) -> list[float]:
    """``3.2,2.8,-inf`` to floats; NaN and +inf are refused here, -inf marks a masked class."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {part.strip()!r}") from None
        if math.isnan(value) or value == math.inf:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not allowed (NaN or +inf)")
        values.append(value)
    return values


def positive_floats(text: str) -> list[float]:
    values = float_list(text)
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"temperatures must be finite and > 0: {text!r}")
    return values


def temperature(text: str) -> float:
    return positive_floats(text)[0] if "," not in text else _too_many(text)


def _too_many(text: str) -> float:
    raise argparse.ArgumentTypeError(f"one temperature expected, got {text!r}")


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text!r}")
    return value


def labels(text: str) -> list[str]:
    return [part.strip() for part in text.split(",")]


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return value
