"""``logit-router config show VERSION`` and ``config history``: the routing configs a worker
has recorded in its config history topic (``worker.stream.history``).

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, the history topic missing) or,
for ``show``, a version the history does not hold; 2 a bad argument or config.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    configure_logs,
    existing_file,
    load_config,
    reachable,
    run_async,
    shown,
)

# A full version, or the start of one (outputs and reports print them shortened).
_VERSION = re.compile(r"^sha256:[0-9a-f]{4,64}$")


def _version(text: str) -> str:
    if not _VERSION.match(text):
        raise argparse.ArgumentTypeError(
            f"not a config version: {shown(text)} (sha256: and at least 4 hex digits of the hash)"
        )
    return text


def _entries(command: str, config: Path | None) -> list[Any] | int:
    """The history's entries, oldest first, or the exit status of a failure."""
    from worker.stream import history

    settings = load_config(config, topics_needed=False)

    async def work() -> list[Any]:
        await reachable(settings.kafka)
        return await history.read_history(settings.kafka, settings.outputs.config_history)

    return run_async(f"config {command}", work)


def show_command(args: argparse.Namespace) -> int:
    configure_logs()
    entries = _entries("show", args.config)
    if isinstance(entries, int):
        return entries
    found = [e for e in entries if e.version.startswith(args.version)]
    if len(found) != 1:
        why = "is not in the config history" if not found else f"names {len(found)} versions"
        sys.stderr.write(f"logit-router config show: {args.version} {why}\n")
        return EXIT_FAILURE
    doc = orjson.loads(found[0].document)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    sys.stdout.write("\n")
    return EXIT_OK


def history_command(args: argparse.Namespace) -> int:
    configure_logs()
    entries = _entries("history", args.config)
    if isinstance(entries, int):
        return entries
    if args.json:
        rows = [
            {
                "version": e.version,
                "first_seen": _iso(e.first_seen_ms),
                "first_seen_ms": e.first_seen_ms,
                "document": orjson.loads(e.document),
            }
            for e in entries
        ]
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_SORT_KEYS).decode() + "\n")
        return EXIT_OK
    for e in entries:
        sys.stdout.write(f"{_iso(e.first_seen_ms)}  {e.version}  {_policies(e.document)}\n")
    if not entries:
        sys.stdout.write("no versions recorded\n")
    return EXIT_OK


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _policies(document: bytes) -> str:
    """``topic T=0.7 m=0.15; ...``: what sets one version apart at a glance."""
    topics = orjson.loads(document)["topics"]
    parts = []
    for name, p in sorted(topics.items()):
        text = f"{name} T={p['temperature']:g} m={p['min_margin']:g}"
        if p.get("min_top1") is not None:
            text += f" top1={p['min_top1']:g}"
        parts.append(text)
    return "; ".join(parts)


def _add_config(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("config", help="the routing configs recorded in the config history")
    commands = p.add_commands("config_command", metavar="show|history")
    help_config = "TOML config: brokers and the history topic (default: from the environment)"
    show = commands.add_parser("show", help="the routing document of a config_version, as JSON")
    show.add_argument("version", type=_version, help="sha256:… (a unique start is enough)")
    show.add_argument("--config", type=existing_file, default=None, help=help_config)
    show.set_defaults(handler=show_command)
    listing = commands.add_parser("history", help="every recorded version, oldest first")
    listing.add_argument("--config", type=existing_file, default=None, help=help_config)
    listing.add_argument("--json", action="store_true", help="JSON on stdout instead of lines")
    listing.set_defaults(handler=history_command)


REGISTRARS = [_add_config]
