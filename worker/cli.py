"""The command line: ``logit-router`` and ``python -m worker`` both call ``main``.

``main`` returns an exit code. A bad argument gets one line on stderr and exit 2, a bad config
exit 2 naming the field, a runtime failure one line and exit 1: never a traceback for a
user's mistake. Commands import their heavy modules lazily, so ``score`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import orjson

from worker import __version__

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A bad command-line argument; reported on one line, exit 2."""


class _Parser(argparse.ArgumentParser):
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


# --- score -------------------------------------------------------------------------------


def _add_score(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("score", help="score one logit vector offline, JSON to stdout")
    p.add_argument("--logits", type=float_list, required=True, help="e.g. 3.2,2.8,0.5")
    p.add_argument("--temperature", type=temperature, default=1.0)
    p.add_argument("--min-margin", type=probability, default=0.1)
    p.add_argument("--min-top1", type=probability, default=None)
    p.add_argument("--labels", type=labels, default=None, help="e.g. billing,tech,sales")
    p.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from worker.routing import Policy, ScoringError, route

    try:
        policy = Policy(args.temperature, args.min_margin, args.min_top1)
        routing = route(args.logits, policy, args.labels)
    except ScoringError as exc:
        raise UsageError(f"logit-router score: {exc}") from None
    s = routing.scores
    doc = {
        "probabilities": s.probabilities,
        "top1": s.top1,
        "top2": s.top2,
        "margin": s.margin,
        "entropy": s.entropy,
        "class_index": s.class_index,
        "label": routing.label,
        "decision": routing.decision,
        "reason": routing.reason,
        "temperature": policy.temperature,
        "policy": {"min_margin": policy.min_margin, "min_top1": policy.min_top1},
    }
    sys.stdout.write(orjson.dumps(doc).decode() + "\n")
    return EXIT_OK


# --- run and demo ------------------------------------------------------------------------


def _add_run(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("run", help="the worker: consume, score, publish, commit")
    p.add_argument("--config", type=existing_file, required=True, help="TOML config file")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from worker import logs
    from worker.settings import load_settings

    settings = load_settings(args.config)  # a bad config exits 2 here, before any Kafka call
    logs.configure(settings.log.level, settings.log.format)
    from worker.service import run

    return run(settings)


def _add_demo(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser("demo", help="the whole flow on a throwaway local broker, then a summary")
    p.add_argument("--events", type=positive_int, default=3000, help="per input topic")
    p.add_argument("--http-port", type=port, default=0, help="0 picks a free port")
    p.add_argument("--keep-running", action="store_true", help="stay up, serving /metrics")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from worker import logs

    logs.configure("WARNING")
    # The first group request on a new broker meets "coordinator not available" while Kafka
    # creates __consumer_offsets; aiokafka logs that as an error and retries. Not news here.
    logging.getLogger("aiokafka.consumer.group_coordinator").setLevel(logging.CRITICAL)
    from worker.broker import BrokerError
    from worker.demo import run_demo

    try:
        return run_demo(args.events, args.http_port, args.keep_running)
    except BrokerError as exc:
        sys.stderr.write(f"logit-router demo: {exc}\n")
        return EXIT_FAILURE


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


# --- main --------------------------------------------------------------------------------

Registrar = Callable[["argparse._SubParsersAction[_Parser]"], None]


REGISTRARS: list[Registrar] = [_add_score, _add_run, _add_demo]


def build_parser() -> _Parser:
    parser = _Parser(
        prog="logit-router",
        description="Route classifier logits from Kafka by softmax confidence margin.",
    )
    parser.add_argument("--version", action="version", version=f"logit-router {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from worker.settings import ConfigError

    try:
        args = build_parser().parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except UsageError as exc:
        sys.stderr.write(f"{exc}\n")
        return EXIT_USAGE
    except ConfigError as exc:
        sys.stderr.write(f"logit-router: {exc}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
