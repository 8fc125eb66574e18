"""The ``replay``, ``whatif`` and ``plot`` commands behind ``worker.cli``: argument checks,
loading, printing and exit codes. The work itself is in ``replay``, ``whatif``, ``sources``
and ``plot``; ``worker.cli`` defines the arguments and imports this module only when one of
these commands runs.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing), or for
``replay --fail-on-diff`` a difference or a missing original; 2 a bad argument or config,
or matplotlib missing for a chart.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import orjson

from worker.cli import EXIT_FAILURE, EXIT_OK, UsageError

T = TypeVar("T")


def _configure_logs() -> None:
    import logging

    from worker import logs

    logs.configure("WARNING")
    # Failures reach the user as one line from the command; aiokafka's own log would repeat
    # them (and its retries) with timestamps.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("worker.connections").setLevel(logging.ERROR)  # retries: not news here


async def reachable(kafka: Any) -> None:
    """Wait for the brokers as the worker does, up to ``kafka.connect_timeout_s``."""
    from worker.connections import make_admin, start_within

    client = make_admin(kafka)
    await start_within(client, kafka, "admin client")
    await client.close()


def _run_async(command: str, work: Callable[[], Coroutine[Any, Any, T]]) -> T | int:
    """Run ``work``; a refusal becomes ``UsageError``, a runtime failure one line and exit 1."""
    from aiokafka.errors import KafkaError

    from worker.connections import FatalError
    from worker.ranges import RangeError
    from worker.replay import ReplayRefused

    try:
        return asyncio.run(work())
    except (RangeError, ReplayRefused) as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None
    except (LookupError, TimeoutError, KafkaError, FatalError, OSError) as exc:
        text = str(exc) or type(exc).__name__
        sys.stderr.write(f"logit-router {command}: {text}\n")
        return EXIT_FAILURE


def _check_order(command: str, args: argparse.Namespace) -> None:
    from worker.ranges import RangeError, check_order

    try:
        check_order(args.start, args.end)
    except RangeError as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None


def _settings(config: Path | None) -> Any:
    from worker.settings import load_settings

    return load_settings(config)  # ConfigError -> exit 2 in main


# --- replay ------------------------------------------------------------------------------


def replay_command(args: argparse.Namespace) -> int:
    from worker import replay

    _configure_logs()
    settings = _settings(args.config)
    _check_order("replay", args)
    try:
        replay.check_target(settings, args.topic, args.to_topic)  # refuse before any I/O
    except replay.ReplayRefused as exc:
        raise UsageError(f"logit-router replay: {exc}") from None
    to_stdout = args.out == "-"
    path = None if args.out in (None, "-") else Path(args.out)
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
        )

    try:
        result = _run_async("replay", work)
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


def _load(command: str, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]] | int:
    """(settings or None, Loaded, spans per topic) from ``--input`` or the topics' ranges."""
    from worker import sources

    if args.input is not None:
        if args.start is not None or args.end is not None:
            raise UsageError(f"logit-router {command}: --from/--to read topics, not --input")
        settings = _settings(args.config) if args.config is not None else None
        limits = settings.limits if settings is not None else None
        try:
            return settings, sources.from_file(args.input, args.topic, limits), {}
        except OSError as exc:
            raise UsageError(f"logit-router {command}: cannot read {args.input}: {exc}") from None
    _check_order(command, args)
    settings = _settings(args.config)
    topics = args.topic or sorted(settings.topics)
    if len(topics) > 1 and any(b is not None and b.offsets for b in (args.start, args.end)):
        raise UsageError(f"logit-router {command}: partition:offset bounds need a single --topic")

    async def work() -> tuple[Any, Any]:
        await reachable(settings.kafka)
        return await sources.from_topics(settings, topics, args.start, args.end)

    result = _run_async(command, work)
    if isinstance(result, int):
        return result
    loaded, spans = result
    return settings, loaded, spans


def _labels(settings: Any, topic: str) -> Any:
    if settings is None or topic not in settings.topics:
        return None
    return settings.topics[topic].labels


def _current(settings: Any, topic: str) -> Any:
    if settings is None or topic not in settings.topics:
        return None
    return settings.topics[topic].policy()


# --- whatif ------------------------------------------------------------------------------


def whatif_command(args: argparse.Namespace) -> int:
    from worker import plot, whatif

    _configure_logs()
    if args.png is not None:
        _need_matplotlib("whatif")
    temperatures = args.temperatures or list(whatif.LAB_TEMPERATURES)
    min_margins = args.min_margins or list(whatif.DEFAULT_MIN_MARGINS)
    min_top1s: list[float | None] = list(args.min_top1) if args.min_top1 else [None]
    loaded = _load("whatif", args)
    if isinstance(loaded, int):
        return loaded
    settings, events, spans = loaded
    report: dict[str, Any] = {}
    cells: dict[str, list[Any]] = {}
    configured: dict[str, Any] = {}
    picks: dict[str, Any] = {}
    blocks: list[str] = []
    for topic in events.topics():
        samples = events.samples[topic]
        labels = _labels(settings, topic)
        grid = whatif.grid(samples, temperatures, min_margins, min_top1s, labels)
        current = _current(settings, topic)
        rows = list(grid)
        if current is not None and not any(_same(c, current) for c in rows):
            rows.append(whatif.evaluate(samples, current))
        cells[topic] = grid
        now = [c for c in rows if _same(c, current)]
        if now:
            configured[topic] = now[0]
        first = rows[0]
        doc: dict[str, Any] = {
            "events": len(samples) + events.unreadable[topic],
            "unreadable": events.unreadable[topic],
            "scored": first.scored,
            "top1_labels": first.top1_labels,
            "grid": [{**c.as_dict(), "current": _same(c, current)} for c in rows],
        }
        text = whatif.table(topic, rows, current)
        if events.unreadable[topic]:
            text += f"  ({events.unreadable[topic]} records not readable as events)\n"
        if args.target_escalation_rate is not None:
            target = args.target_escalation_rate
            best, per = whatif.suggest(samples, temperatures, target, min_top1s, labels)
            picks[topic] = best
            doc["target"] = {
                "rate": target,
                "per_temperature": [r.as_dict() for r in per],
                "suggested": best.as_dict() if best is not None else None,
            }
            text += whatif.target_table(target, best, per)
        report[topic] = doc
        blocks.append(text)
    out: dict[str, Any] = {"topics": report}
    if spans:
        out["range"] = {
            t: [{"partition": s.partition, "from": s.start, "to": s.end} for s in ss]
            for t, ss in spans.items()
        }
    if args.json:
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_SORT_KEYS).decode() + "\n")
    else:
        sys.stdout.write("\n".join(blocks) if blocks else "no events\n")
    if args.png is not None:
        plot.draw_rates(args.png, cells, args.target_escalation_rate, picks, configured)
        sys.stderr.write(f"wrote {args.png}\n")
    return EXIT_OK


def _same(cell: Any, policy: Any) -> bool:
    if policy is None:
        return False
    return bool(
        (cell.temperature, cell.min_margin, cell.min_top1)
        == (policy.temperature, policy.min_margin, policy.min_top1)
    )


def _need_matplotlib(command: str) -> None:
    from worker.plot import MissingExtra, require_matplotlib

    try:
        require_matplotlib()
    except MissingExtra as exc:
        raise UsageError(f"logit-router {command}: {exc}") from None


# --- plot --------------------------------------------------------------------------------

_TEMPERATURE_ONLY = ("logits", "temperatures", "labels")
_MARGINS_ONLY = ("config", "topic", "start", "end", "input", "temperature", "bins")


def plot_command(args: argparse.Namespace) -> int:
    _configure_logs()
    if args.chart == "temperature":
        _refuse(args, _MARGINS_ONLY, "the temperature chart")
        if args.logits is None:
            raise UsageError("logit-router plot: --logits is required for the temperature chart")
        _need_matplotlib("plot")
        return _plot_temperature(args)
    _refuse(args, _TEMPERATURE_ONLY, "the margins chart")
    _need_matplotlib("plot")
    return _plot_margins(args)


def _refuse(args: argparse.Namespace, names: tuple[str, ...], chart: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value != []:
            flag = {"start": "from", "end": "to"}.get(name, name).replace("_", "-")
            raise UsageError(f"logit-router plot: --{flag} does not apply to {chart}")


def _plot_temperature(args: argparse.Namespace) -> int:
    from worker import plot
    from worker.routing import ScoringError
    from worker.whatif import LAB_TEMPERATURES

    temperatures = args.temperatures or list(LAB_TEMPERATURES)
    if args.labels is not None and len(args.labels) != len(args.logits):
        raise UsageError(
            f"logit-router plot: {len(args.labels)} labels for {len(args.logits)} logits"
        )
    try:
        rows = plot.temperature_series(args.logits, temperatures)
    except ScoringError as exc:
        raise UsageError(f"logit-router plot: {exc}") from None
    names = plot.class_names(len(args.logits), args.labels)
    plot.draw_temperature_chart(args.output, temperatures, rows, names)
    sys.stdout.write(plot.series_table(temperatures, rows, names) + f"wrote {args.output}\n")
    return EXIT_OK


def _plot_margins(args: argparse.Namespace) -> int:
    from worker import plot, whatif
    from worker.routing import Policy

    loaded = _load("plot", args)
    if isinstance(loaded, int):
        return loaded
    settings, events, _ = loaded
    histograms = []
    lines = []
    for topic in events.topics():
        policy = _current(settings, topic) or Policy(1.0, 0.1)
        if args.temperature is not None:
            policy = Policy(args.temperature, policy.min_margin, policy.min_top1, policy.labels)
        values = whatif.margins(events.samples[topic], policy)
        h = plot.margin_histogram(
            values,
            args.bins or 50,
            f"{topic}: margins at T={policy.temperature:g} ({len(values)} events)",
            {"min_margin": policy.min_margin},
        )
        histograms.append(h)
        below = sum(1 for v in values if v < policy.min_margin)
        share = below / len(values) if values else 0.0
        lines.append(
            f"{topic}: {len(values)} events at T={policy.temperature:g}, "
            f"{below} ({share:.1%}) below min_margin {policy.min_margin:g}\n"
        )
    if not histograms:
        sys.stderr.write("logit-router plot: no events to draw\n")
        return EXIT_FAILURE
    plot.draw_histograms(args.output, histograms)
    sys.stdout.write("".join(lines) + f"wrote {args.output}\n")
    return EXIT_OK
