"""What every command shares: exit codes, the one-line usage error, the argument parser and the
argument converters, and running a command's Kafka work. Values are checked here, at the edge,
and trusted after."""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import stat
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from worker.core import rules

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2

V = TypeVar("V")
R = TypeVar("R")
T = TypeVar("T")


class UsageError(Exception):
    """A bad command-line argument; reported on one line, exit 2."""


_NO_VALUE = re.compile(r"^argument (\S+): expected one argument$")
# A word this long in an error message is a value echoed back.
_LONG = re.compile(r"\S{81,}")


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument on one line, without the usage block."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes a value like -inf, -1h, -1:5 or -1,2 for an unknown option and says
        # only "expected one argument": read as values, they meet their own rule and its words.
        self._negative_number_matcher = re.compile(r"^-(\.?\d|inf|nan)", re.IGNORECASE)

    def add_commands(
        self, dest: str, metavar: str | None = None
    ) -> argparse._SubParsersAction[Parser]:
        """Subcommands stored under ``dest``. A missing one is refused when the handler is
        looked for: argparse's own check comes before its unknown-option one, so
        ``logit-router --bogus`` said a command was required and never named ``--bogus``."""
        wanted = metavar or dest

        def missing(_args: argparse.Namespace) -> int:
            raise UsageError(f"{self.prog}: the following arguments are required: {wanted}")

        self.set_defaults(handler=missing)  # a command's own handler replaces it
        return self.add_subparsers(dest=dest, metavar=metavar, required=False, parser_class=Parser)

    def error(self, message: str) -> NoReturn:
        missing = _NO_VALUE.match(message)
        if missing:
            flag = missing[1].split("/")[-1]
            message += f" (a value that starts with - is written {flag}=VALUE)"
        # What argparse echoes itself (an invalid choice, unknown arguments) is cut like shown().
        message = _LONG.sub(lambda m: m[0][:77] + "...", message)
        raise UsageError(f"{self.prog}: {message}")

    def _get_value(self, action: argparse.Action, arg_string: str) -> Any:
        # Bytes that are not UTF-8 arrive as lone surrogates (surrogateescape) and would fail
        # deep in orjson or matplotlib: every argument's value is refused here, once for all.
        # A command's own arguments are its parser's to check, not the command list's.
        if action.nargs != argparse.PARSER and not _utf8(arg_string):
            raise argparse.ArgumentError(action, "not valid UTF-8 text")
        return super()._get_value(action, arg_string)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown(text: str) -> str:
    """``text`` quoted for an error message, cut past 80 characters as config errors are (a
    value can be a whole file's worth of digits)."""
    quoted = repr(text)
    return quoted if len(quoted) <= 80 else quoted[:77] + "..."


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {shown(text.strip())}") from None


def float_list(text: str) -> list[float]:
    """``3.2,2.8,-inf`` to floats; NaN and +inf are refused here, -inf marks a masked class."""
    values = [_number(part) for part in text.split(",")]
    for part, value in zip(text.split(","), values, strict=True):
        if math.isnan(value) or value == math.inf:
            raise argparse.ArgumentTypeError(f"{shown(part.strip())} is not allowed (NaN or +inf)")
    return values


def _checked(rule: Callable[[V], R], value: V, text: str) -> R:
    """``value`` through one of the rules the config uses too, refused in the rule's words."""
    try:
        return rule(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {shown(text.strip())}") from None


def temperatures(text: str) -> list[float]:
    """Temperatures, ``0.5,0.7,1.0``: each under the config's rule for a temperature."""
    return [_checked(rules.temperature, _number(part), part) for part in text.split(",")]


def temperature(text: str) -> float:
    if "," in text:
        raise argparse.ArgumentTypeError(f"one temperature expected, got {shown(text)}")
    return _checked(rules.temperature, _number(text), text)


def probability(text: str) -> float:
    return _checked(rules.probability, _number(text), text)


def labels(text: str) -> tuple[str, ...]:
    return _checked(rules.labels, [part.strip() for part in text.split(",")], text)


def topic_name(text: str) -> str:
    """A topic named on the command line, held to the rule the config's names meet."""
    return _checked(rules.topic_name, text, text)


def existing_file(text: str) -> Path:
    """A file to read. A directory, or a name the system refuses (too long, say), is refused
    saying so: ``Path.is_file`` would call the one missing and raise on the other."""
    if not text:
        raise argparse.ArgumentTypeError("no file named (an empty path)")
    path = Path(text)
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise argparse.ArgumentTypeError(f"no such file: {shown(text)}") from None
    except OSError as exc:
        why = (exc.strerror or type(exc).__name__).lower()
        raise argparse.ArgumentTypeError(f"{why}: {shown(text)}") from None
    if stat.S_ISDIR(mode):
        raise argparse.ArgumentTypeError(f"is a directory, not a file: {shown(text)}")
    if not stat.S_ISREG(mode):
        raise argparse.ArgumentTypeError(f"not a regular file: {shown(text)}")
    return path


def _whole(text: str, low: int, high: int | None, refusal: str) -> int:
    """``text`` as an integer in [low, high]; else ``refusal``, or says it is no number."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {shown(text)}") from None
    if value < low or (high is not None and value > high):
        raise argparse.ArgumentTypeError(f"{refusal}, got {shown(text)}")
    return value


def positive_int(text: str) -> int:
    return _whole(text, 1, None, "must be > 0")


def int_between(text: str, low: int, high: int) -> int:
    return _whole(text, low, high, f"must be {low} to {high}")


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2d`` or plain seconds, to seconds; > 0 and finite."""
    body = text.strip()
    scale = _UNITS.get(body[-1:].lower(), 1.0) if body else 1.0
    number = body[:-1] if body[-1:].lower() in _UNITS else body
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a duration: {shown(text)} (e.g. 90s, 30m, 1h, 2d)"
        ) from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be > 0, got {shown(text)}")
    return value


def port(text: str) -> int:
    return _whole(text, 0, 65535, "not a port number (0 to 65535)")


# --- commands that read Kafka --------------------------------------------------------------


def configure_logs() -> None:
    from worker.observability import logs

    logs.configure("WARNING")  # failures reach the user as one line from the command


def load_config(config: Path | None, *, topics_needed: bool = True) -> Any:
    """The settings from ``--config`` and the environment; ``ConfigError`` is exit 2 in main.

    ``topics_needed=False`` for a command that uses only the connection and the output topics,
    so that it runs from the environment alone, with no ``[topics]`` to make up.
    """
    from worker.core.settings import load_settings

    return load_settings(config, topics_needed=topics_needed)


async def reachable(kafka: Any) -> None:
    """Wait for the brokers as the worker does, up to ``kafka.connect_timeout_s``."""
    from worker.stream.connections import make_admin, start_within

    client = make_admin(kafka)
    await start_within(client, kafka, "admin client")
    await client.close()


def run_async(command: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T | int:
    """Run ``work``; a refusal becomes ``UsageError``, a runtime failure one line and exit 1."""
    from aiokafka.errors import KafkaError

    from worker.audit.ranges import RangeError
    from worker.audit.replay import ReplayRefused
    from worker.stream.connections import FatalError

    try:
        return asyncio.run(work())
    except (RangeError, ReplayRefused) as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None
    except (LookupError, TimeoutError, KafkaError, FatalError, OSError) as exc:
        text = str(exc) or type(exc).__name__
        sys.stderr.write(f"logit-router {command}: {text}\n")
        return EXIT_FAILURE
