"""The command line: ``logit-router`` and ``python -m worker`` both call ``main``.

``main`` returns an exit code. A bad argument gets one line on stderr and exit 2, a bad config
exit 2 naming the field, a runtime failure one line and exit 1: never a traceback for a
user's mistake. Commands import their heavy modules lazily, so ``score`` starts fast.
"""

from __future__ import annotations

import argparse
import logging
import math
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import orjson

from worker import __version__
from worker.errors import ConfigError

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
    # A stop asked for while the program is still importing and loading its config is kept
    # and honoured as soon as the event loop runs, rather than killing the process outright.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    from worker import logs
    from worker.settings import load_settings

    settings = load_settings(args.config)  # a bad config exits 2 here, before any Kafka call
    logs.configure(settings.log.level, settings.log.format)
    from worker.service import run

    return run(settings, stop_requested=lambda: bool(early))


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


# --- replay, whatif, plot (audits and tuning; the commands live in worker/cli_audit.py) ---


def _bound(text: str) -> object:
    from worker.ranges import RangeError, parse_bound

    try:
        return parse_bound(text)
    except RangeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _probabilities(text: str) -> list[float]:
    return [probability(part) for part in text.split(",")]


def _png_path(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"no such directory: {path.parent}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"is a directory: {text}")
    return path


def _range_arguments(p: _Parser, what: str) -> None:
    p.add_argument("--config", type=existing_file, default=None, help=what)
    p.add_argument(
        "--from",
        dest="start",
        type=_bound,
        default=None,
        help="ISO time with a timezone (2026-11-26T12:00:00Z) or partition:offset[,...]",
    )
    p.add_argument(
        "--to",
        dest="end",
        type=_bound,
        default=None,
        help="end of the range, excluded; same forms as --from",
    )


def _add_replay(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "replay", help="re-score a topic range and diff it against what was published"
    )
    p.add_argument("--topic", required=True, help="the input topic to replay")
    _range_arguments(p, "TOML config to re-score with (default: from the environment)")
    p.add_argument(
        "--out", default=None, help="JSONL report: one line per event, then a summary; - for stdout"
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
    p.set_defaults(handler=_replay)


def _replay(args: argparse.Namespace) -> int:
    from worker.cli_audit import replay_command

    return replay_command(args)


def _add_whatif(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "whatif", help="escalation rate against temperature and thresholds on recorded events"
    )
    p.add_argument(
        "--topic", action="append", default=[], help="repeatable; default: every configured topic"
    )
    _range_arguments(p, "TOML config: brokers, topic labels, current policies")
    p.add_argument(
        "--input", type=existing_file, default=None, help="JSONL events instead of Kafka"
    )
    p.add_argument(
        "--temperatures", type=positive_floats, default=None, help="default 0.5,0.7,1.0,1.3,1.6,2.0"
    )
    p.add_argument(
        "--min-margins", type=_probabilities, default=None, help="default 0.05,0.1,0.15,0.2,0.3"
    )
    p.add_argument("--min-top1", type=_probabilities, default=None, help="optional, e.g. 0.6")
    p.add_argument(
        "--target-escalation-rate",
        type=probability,
        default=None,
        help="suggest a temperature and min_margin reaching this rate, e.g. 0.2",
    )
    p.add_argument("--png", type=_png_path, default=None, help="chart of rate against temperature")
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of tables")
    p.set_defaults(handler=_whatif)


def _whatif(args: argparse.Namespace) -> int:
    from worker.cli_audit import whatif_command

    return whatif_command(args)


def _add_plot(sub: argparse._SubParsersAction[_Parser]) -> None:
    p = sub.add_parser(
        "plot", help="the lab's chart (probability vs temperature) or a margin histogram"
    )
    p.add_argument("chart", nargs="?", choices=["temperature", "margins"], default="temperature")
    p.add_argument("-o", "--output", type=_png_path, required=True, help="PNG file to write")
    p.add_argument(
        "--logits", type=float_list, default=None, help="temperature chart: e.g. 3.2,2.8,0.5"
    )
    p.add_argument(
        "--temperatures", type=positive_floats, default=None, help="default 0.5,0.7,1.0,1.3,1.6,2.0"
    )
    p.add_argument(
        "--labels", type=labels, default=None, help="legend names (default class_1, class_2, ...)"
    )
    p.add_argument(
        "--topic",
        action="append",
        default=[],
        help="margins: repeatable; default every configured topic",
    )
    _range_arguments(p, "margins: TOML config (brokers, policies)")
    p.add_argument(
        "--input", type=existing_file, default=None, help="margins: JSONL events instead of Kafka"
    )
    p.add_argument(
        "--temperature",
        type=temperature,
        default=None,
        help="margins: instead of the configured one",
    )
    p.add_argument(
        "--bins", type=positive_int, default=None, help="margins: histogram bins (default 50)"
    )
    p.set_defaults(handler=_plot)


def _plot(args: argparse.Namespace) -> int:
    from worker.cli_audit import plot_command

    return plot_command(args)


# --- end of replay, whatif, plot ----------------------------------------------------------


# --- main --------------------------------------------------------------------------------

Registrar = Callable[["argparse._SubParsersAction[_Parser]"], None]


REGISTRARS: list[Registrar] = [_add_score, _add_run, _add_demo]
REGISTRARS += [_add_replay, _add_whatif, _add_plot]


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
