"""The result as people read it (a table) and as programs read it (the last line, JSON)."""

from __future__ import annotations

from typing import Any

TARGETS = (
    # name, numerator, denominator, minimum ratio of events per second
    ("worker >= 0.85 x raw", "worker", "raw", 0.85),
    ("worker >= 1.5 x quix", "worker", "quix", 1.5),
    ("worker_eos >= 0.8 x worker", "worker_eos", "worker", 0.8),
    # The field's peers, each at the worker's guarantee.
    ("worker >= 1.5 x kstreams", "worker", "kstreams", 1.5),
    ("worker_eos >= 1.5 x kstreams_eos", "worker_eos", "kstreams_eos", 1.5),
    ("worker >= 1.5 x faststream", "worker", "faststream", 1.5),
    ("worker >= 1.5 x faststream_tuned", "worker", "faststream_tuned", 1.5),
)


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def targets(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, num, den, minimum in TARGETS:
        a, b = results.get(num, {}), results.get(den, {})
        ratio = None
        if a.get("available") and b.get("available"):
            ratio = round(a["events_per_s"] / b["events_per_s"], 3)
        out.append(
            {"target": name, "ratio": ratio, "met": None if ratio is None else ratio >= minimum}
        )
    worker = results.get("worker", {})
    p99 = (worker.get("latency") or {}).get("receipt_ms", {}).get("p99")
    out.append({"target": "worker p99 <= 50 ms at half load", "value_ms": p99,
                "met": None if p99 is None else p99 <= 50})  # fmt: skip
    growth = worker.get("rss_growth")
    out.append({"target": "worker RSS growth <= 10 %", "value": growth,
                "met": None if growth is None else growth <= 0.10})  # fmt: skip
    cpu = worker.get("cpu_us_per_event")
    out.append({"target": "worker CPU <= 15 us per event", "value": cpu,
                "met": None if cpu is None else cpu <= 15})  # fmt: skip
    return out


def table(results: dict[str, dict[str, Any]]) -> str:
    head = (
        f"{'contender':<28} {'events/s':>9} {'x raw':>6} {'x wkr':>6} {'CPU us/ev':>9} "
        f"{'peak MiB':>8} {'RSS grow':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} "
        f"{'lag p99':>7}  out/in"
    )
    lines = [head, "-" * len(head)]
    for r in results.values():
        if not r.get("available"):
            lines.append(f"{r['label']:<28} not available: {r.get('reason', '?')}")
            continue
        lat = (r.get("latency") or {}).get("receipt_ms") or {}
        lag = (r.get("latency") or {}).get("pacer_lag_ms") or {}
        lines.append(
            f"{r['label']:<28} {r['events_per_s']:>9,.0f} {_fmt(r.get('ratio_to_raw'), '.2f'):>6} "
            f"{_fmt(r.get('ratio_to_worker'), '.2f'):>6} {r['cpu_us_per_event']:>9.1f} "
            f"{r['peak_rss_mb']:>8.0f} {_fmt(r.get('rss_growth'), '+.1%'):>8} "
            f"{_fmt(lat.get('p50'), '.1f'):>7} {_fmt(lat.get('p99'), '.1f'):>7} "
            f"{_fmt(lat.get('p99.9'), '.1f'):>8} {_fmt(lag.get('p99'), '.1f'):>7}  "
            f"{r['events_out']}/{r['events_in']}"
        )
    return "\n".join(lines)


def throughput_line(r: dict[str, Any]) -> str:
    """The throughput phase of one contender, with who used the CPU while it ran."""
    if not r.get("available"):
        return f"  not available: {r.get('reason')}"
    cores = ", ".join(f"{k} {v:.2f}" for k, v in (r.get("cpu_cores") or {}).items())
    return (
        f"  {r['events_per_s']:,.0f} events/s, {r['cpu_us_per_event']} us CPU/event; "
        f"CPU in the phase (cores): {cores or '-'}"
    )


def latency_line(lat: dict[str, Any]) -> str:
    """The latency window of one contender: its load, percentiles and who used the CPU."""
    if "error" in lat or not lat:
        return f"  latency: not measured: {lat.get('error', '?')}"
    q = lat.get("receipt_ms") or {}
    lag = lat.get("pacer_lag_ms") or {}
    cores = ", ".join(f"{k} {v:.2f}" for k, v in (lat.get("cpu_cores") or {}).items())
    return (
        f"  latency at {lat['achieved_rate']:,.0f} events/s after {lat['warmup_s']:g} s of "
        f"warm-up: p50 {_fmt(q.get('p50'), '.1f')} ms, p99 {_fmt(q.get('p99'), '.1f')} ms "
        f"(the load's own lag behind its schedule: p50 {_fmt(lag.get('p50'), '.1f')}, "
        f"p99 {_fmt(lag.get('p99'), '.1f')}, max {_fmt(lag.get('max'), '.1f')} ms); "
        f"CPU in the window (cores): {cores or '-'}"
    )


def target_lines(checks: list[dict[str, Any]]) -> str:
    lines = []
    for c in checks:
        value = c.get("ratio", c.get("value_ms", c.get("value")))
        verdict = {True: "met", False: "MISSED", None: "n/a"}[c["met"]]
        lines.append(f"  {c['target']:<36} {_fmt(value):>8}  {verdict}")
    return "\n".join(lines)
