"""``python -m worker.devkit.broker``: a broker until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

from worker.devkit.broker.base import Broker, BrokerError
from worker.devkit.broker.start import start_broker

log = logging.getLogger(__name__)


class _Interrupted(BaseException):
    pass


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so cleanup is not interrupted in turn.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _Interrupted(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Start a broker, print its address, run until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(
        prog="python -m worker.devkit.broker",
        description="Run a throwaway Kafka broker until SIGTERM or Ctrl-C.",
    )
    parser.add_argument(
        "--no-auto-create-topics", action="store_true", help="disable auto.create.topics.enable"
    )
    parser.add_argument(
        "--set",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="extra broker property (repeatable)",
    )
    parser.add_argument("--start-timeout", type=float, default=120.0, metavar="SECONDS")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="on failure, also print the broker's log tail"
    )
    args = parser.parse_args(argv)
    extra: dict[str, str] = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            parser.error(f"--set expects KEY=VALUE, got {item!r}")
        extra[key.strip()] = value
    logging.basicConfig(
        level=logging.INFO, format="worker.devkit.broker: %(message)s", stream=sys.stderr
    )

    signal.signal(signal.SIGTERM, _raise_interrupted)
    signal.signal(signal.SIGINT, _raise_interrupted)
    broker: Broker | None = None
    try:
        broker = start_broker(
            auto_create_topics=not args.no_auto_create_topics,
            extra_config=extra,
            start_timeout=args.start_timeout,
        )
        lines = [f"bootstrap_servers={broker.bootstrap_servers}", f"source={broker.source}"]
        if broker.pid is not None:
            lines.append(f"pid={broker.pid}")
        if broker.workdir is not None:
            lines.append(f"workdir={broker.workdir}")
        if broker.log_path is not None:
            lines.append(f"log={broker.log_path}")
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        log.info("running; SIGTERM or Ctrl-C stops it")
        while True:
            time.sleep(3600)
    except _Interrupted:
        return 0
    except BrokerError as exc:
        sys.stderr.write(f"worker.devkit.broker: error: {exc}\n")
        if args.verbose:
            for note in getattr(exc, "__notes__", []):
                sys.stderr.write(f"{note}\n")
        return 1
    finally:
        if broker is not None:
            broker.stop()
