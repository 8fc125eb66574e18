"""The ``whatif`` and ``plot`` commands: their arguments, checks, loading, printing
and exit codes. The work itself is in ``worker.audit``, imported only when one of these
commands runs.

Exit status: 0 done; 1 a runtime failure (Kafka unreachable, a topic missing); 2 a bad
argument or config, or matplotlib missing for a chart.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from worker.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    Parser,
    UsageError,
    configure_logs,
    existing_file,
    float_list,
    int_between,
    labels,
    load_config,
    probability,
    reachable,
    run_async,
    temperature,
    temperatures,
    topic_name,
)
from worker.cli.options import (
    check_order,
    need_matplotlib,
    output_path,
    probabilities,
    range_arguments,
)


def _load(command: str, args: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]] | int:
    """(settings or None, Loaded, spans per topic) from ``--input`` or the topics' ranges."""
    from worker.audit import sources

    if args.input is not None:
        if args.start is not None or args.end is not None:
            raise UsageError(f"logit-router {command}: --from/--to read topics, not --input")
        settings = load_config(args.config) if args.config is not None else None
        limits = settings.limits if settings is not None else None
        try:
            from_file = sources.from_file(args.input, args.topic, limits)
        except OSError as exc:
            raise UsageError(f"logit-router {command}: cannot read {args.input}: {exc}") from None
        return _some_events(command, str(args.input), (settings, from_file, {}))
    check_order(command, args)
    settings = load_config(args.config)
    topics = args.topic or sorted(settings.topics)
    if len(topics) > 1 and any(b is not None and b.offsets for b in (args.start, args.end)):
        raise UsageError(f"logit-router {command}: partition:offset bounds need a single --topic")

    async def work() -> tuple[Any, Any]:
        await reachable(settings.kafka)
        return await sources.from_topics(settings, topics, args.start, args.end)

    result = run_async(command, work)
    if isinstance(result, int):
        return result
    loaded, spans = result
    return _some_events(command, ", ".join(topics), (settings, loaded, spans))


def _some_events(
    command: str, where: str, loaded: tuple[Any, Any, dict[str, Any]]
) -> tuple[Any, Any, dict[str, Any]] | int:
    """``loaded``, or one line and exit 1 when it holds no event to score."""
    events = loaded[1]
    if any(events.samples.values()):
        return loaded
    unreadable = sum(events.unreadable.values())
    sys.stderr.write(
        f"logit-router {command}: no events to score in {where}"
        f" ({unreadable} records not readable as events)\n"
    )
    return EXIT_FAILURE


def _labels(settings: Any, topic: str) -> Any:
    if settings is None or topic not in settings.topics:
        return None
    return settings.topics[topic].labels


def _current(settings: Any, topic: str) -> Any:
    if settings is None or topic not in settings.topics:
        return None
    return settings.topics[topic].policy()


# A chart's temperature axis stops here. matplotlib pads an axis by 5% and spaces its ticks
# in doubles, which overflow near the largest one (at 1e308 numpy warned on stderr, at 1.6e308
# drawing raised); this is far past any temperature worth drawing, and clear of that.
CHART_MAX_TEMPERATURE = 1e300


def _drawable(command: str, temperatures: list[float]) -> None:
    top = max(temperatures)
    if top > CHART_MAX_TEMPERATURE:
        raise UsageError(
            f"logit-router {command}: the chart's temperature axis stops at "
            f"{CHART_MAX_TEMPERATURE:g}, got temperature {top:g}"
        )


# --- whatif ------------------------------------------------------------------------------


def whatif_command(args: argparse.Namespace) -> int:
    from worker.audit import plot, whatif

    configure_logs()
    if args.png is not None:
        need_matplotlib("whatif")
    temperatures = args.temperatures or list(whatif.LAB_TEMPERATURES)
    if args.png is not None:
        _drawable("whatif", temperatures)
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
        text = whatif.table(topic, rows, current, events.unreadable[topic])
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


# --- plot --------------------------------------------------------------------------------

_TEMPERATURE_ONLY = ("logits", "temperatures", "labels")
_MARGINS_ONLY = ("config", "topic", "start", "end", "input", "temperature", "bins")


def plot_command(args: argparse.Namespace) -> int:
    configure_logs()
    if args.chart == "temperature":
        _refuse(args, _MARGINS_ONLY, "the temperature chart")
        if args.logits is None:
            raise UsageError("logit-router plot: --logits is required for the temperature chart")
        need_matplotlib("plot")
        return _plot_temperature(args)
    _refuse(args, _TEMPERATURE_ONLY, "the margins chart")
    need_matplotlib("plot")
    return _plot_margins(args)


def _refuse(args: argparse.Namespace, names: tuple[str, ...], chart: str) -> None:
    for name in names:
        value = getattr(args, name)
        if value is not None and value != []:
            flag = {"start": "from", "end": "to"}.get(name, name).replace("_", "-")
            raise UsageError(f"logit-router plot: --{flag} does not apply to {chart}")


def _plot_temperature(args: argparse.Namespace) -> int:
    from worker.audit import plot
    from worker.audit.whatif import LAB_TEMPERATURES
    from worker.core.routing import ScoringError

    temperatures = args.temperatures or list(LAB_TEMPERATURES)
    _drawable("plot", temperatures)
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
    from worker.audit import plot, whatif
    from worker.core.routing import Policy

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


# --- arguments ---------------------------------------------------------------------------

# The histogram is 700 pixels wide: past a thousand bins a bar is under a pixel and no more can
# be seen, while numpy and matplotlib take minutes over 10^8 bins, or refuse a larger count.
MAX_BINS = 1000


def _bins(text: str) -> int:
    return int_between(text, 1, MAX_BINS)


def _temperatures_argument(p: Parser) -> None:
    # The lab's temperatures (``whatif.LAB_TEMPERATURES``, not imported: it loads numpy).
    help_text = "default 0.5,0.7,1.0,1.3,1.6,2.0"
    p.add_argument("--temperatures", type=temperatures, default=None, help=help_text)


def _add_whatif(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "whatif", help="escalation rate against temperature and thresholds on recorded events"
    )
    p.add_argument(
        "--topic",
        action="append",
        type=topic_name,
        default=[],
        help="repeatable; default: every configured topic",
    )
    range_arguments(p, "TOML config: brokers, topic labels, current policies")
    p.add_argument(
        "--input", type=existing_file, default=None, help="JSONL events instead of Kafka"
    )
    _temperatures_argument(p)
    p.add_argument(
        "--min-margins", type=probabilities, default=None, help="default 0.05,0.1,0.15,0.2,0.3"
    )
    p.add_argument("--min-top1", type=probabilities, default=None, help="optional, e.g. 0.6")
    p.add_argument(
        "--target-escalation-rate",
        type=probability,
        default=None,
        help="suggest a temperature and min_margin reaching this rate, e.g. 0.2",
    )
    p.add_argument(
        "--png", type=output_path, default=None, help="chart of rate against temperature"
    )
    p.add_argument("--json", action="store_true", help="JSON on stdout instead of tables")
    p.set_defaults(handler=whatif_command)


def _add_plot(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser(
        "plot", help="the lab's chart (probability vs temperature) or a margin histogram"
    )
    p.add_argument("chart", nargs="?", choices=["temperature", "margins"], default="temperature")
    p.add_argument("-o", "--output", type=output_path, required=True, help="PNG file to write")
    p.add_argument(
        "--logits", type=float_list, default=None, help="temperature chart: e.g. 3.2,2.8,0.5"
    )
    _temperatures_argument(p)
    p.add_argument(
        "--labels", type=labels, default=None, help="legend names (default class_1, class_2, ...)"
    )
    p.add_argument(
        "--topic",
        action="append",
        type=topic_name,
        default=[],
        help="margins: repeatable; default every configured topic",
    )
    range_arguments(p, "margins: TOML config (brokers, policies)")
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
        "--bins",
        type=_bins,
        default=None,
        help=f"margins: histogram bins (default 50, at most {MAX_BINS})",
    )
    p.set_defaults(handler=plot_command)


REGISTRARS = [_add_whatif, _add_plot]
