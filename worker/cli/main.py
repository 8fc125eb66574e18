"""The command line: ``logit-router`` and ``python -m worker`` both call ``main``.

``main`` returns an exit code. A bad argument gets one line on stderr and exit 2, a bad config
exit 2 naming the field, a runtime failure one line and exit 1: never a traceback for a
user's mistake. Commands import their heavy modules lazily, so ``score`` starts fast.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

import orjson

from worker import __version__
from worker.cli import audit, calibrate, config, drift, replay
from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Parser,
    UsageError,
    existing_file,
    float_list,
    labels,
    port,
    positive_int,
    probability,
    temperature,
)
from worker.core.errors import ConfigError
from worker.core.rules import LOG_LEVELS

# --- score -------------------------------------------------------------------------------


def _add_score(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("score", help="score one logit vector offline, JSON to stdout")
    p.add_argument("--logits", type=float_list, required=True, help="e.g. 3.2,2.8,0.5")
    p.add_argument("--temperature", type=temperature, default=1.0)
    p.add_argument("--min-margin", type=probability, default=0.1)
    p.add_argument("--min-top1", type=probability, default=None)
    p.add_argument("--labels", type=labels, default=None, help="e.g. billing,tech,sales")
    p.set_defaults(handler=_score)


def _score(args: argparse.Namespace) -> int:
    from worker.core.routing import Policy, ScoringError, route

    policy = Policy(args.temperature, args.min_margin, args.min_top1)  # checked by the parser
    try:
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


def _add_run(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("run", help="the worker: consume, score, publish, commit")
    p.add_argument("--config", type=existing_file, required=True, help="TOML config file")
    p.add_argument(
        "--log-level",
        type=str.upper,
        choices=LOG_LEVELS,
        default=None,
        help="instead of log.level; DEBUG also shows the Kafka client's own lines",
    )
    p.add_argument(
        "--watch-config",
        type=positive_int,
        default=None,
        metavar="SECONDS",
        help="also reload when the file changes, looking this often (a mounted ConfigMap)",
    )
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    # A stop asked for while the program is still importing and loading its config is kept
    # and honoured as soon as the event loop runs, rather than killing the process outright.
    early: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    # A reload asked for this early is moot (the config is about to be read); not a stop.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    from worker.core.settings import load_settings
    from worker.observability import logs

    settings = load_settings(args.config)  # a bad config exits 2 here, before any Kafka call
    logs.configure(args.log_level or settings.log.level, settings.log.format)
    from worker.stream.service import run

    return run(
        settings,
        stop_requested=lambda: bool(early),
        config_path=args.config,
        watch_s=args.watch_config,
    )


def _add_demo(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("demo", help="the whole flow on a throwaway local broker, then a summary")
    p.add_argument("--events", type=positive_int, default=3000, help="per input topic")
    p.add_argument("--http-port", type=port, default=0, help="0 picks a free port")
    p.add_argument("--keep-running", action="store_true", help="stay up, serving /metrics")
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from worker.observability import logs

    logs.configure("WARNING")
    from worker.devkit.broker import BrokerError
    from worker.devkit.demo import run_demo

    try:
        return run_demo(args.events, args.http_port, args.keep_running)
    except BrokerError as exc:
        sys.stderr.write(f"logit-router demo: {exc}\n")
        return EXIT_FAILURE


# --- schema ------------------------------------------------------------------------------


def _add_schema(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("schema", help="the JSON Schema of the input or output event, to stdout")
    p.add_argument("event", choices=["input", "output"])
    p.set_defaults(handler=_schema)


def _schema(args: argparse.Namespace) -> int:
    from worker.core.schema import json_schema

    sys.stdout.write(orjson.dumps(json_schema(args.event), option=orjson.OPT_INDENT_2).decode())
    sys.stdout.write("\n")
    return EXIT_OK


# --- main --------------------------------------------------------------------------------

Registrar = Callable[["argparse._SubParsersAction[Parser]"], None]


REGISTRARS: list[Registrar] = [_add_score, _add_run, _add_demo, _add_schema]
REGISTRARS += replay.REGISTRARS
REGISTRARS += audit.REGISTRARS
REGISTRARS += calibrate.REGISTRARS
REGISTRARS += drift.REGISTRARS
REGISTRARS += config.REGISTRARS


def build_parser() -> Parser:
    parser = Parser(
        prog="logit-router",
        description="Route classifier logits from Kafka by softmax confidence margin.",
    )
    parser.add_argument("--version", action="version", version=f"logit-router {__version__}")
    sub = parser.add_commands("command")
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
