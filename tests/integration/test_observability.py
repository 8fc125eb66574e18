"""Observability with real parts: a worker on a real broker serves /metrics, /healthz and
/readyz; a real Prometheus server scrapes it; every dashboard query and every rule in
deploy/ is evaluated through Prometheus' HTTP API; the metric values equal what the output
topics hold; promtool checks the exposition, the rules and their unit tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.integration.helpers import (
    Outputs,
    create_all,
    make_settings,
    read_outputs,
    wait_until_committed,
)
from tests.prom import (
    CALIBRATION_JOB,
    DEPLOY,
    JOB,
    REPO,
    Prometheus,
    http_get,
    promtool,
    running_prometheus,
)
from worker import __version__
from worker.core import drift, fetch_pace, native, routing
from worker.core.records import DLQ_PREFIX
from worker.core.settings import Settings
from worker.devkit import traffic
from worker.observability.health import HealthServer
from worker.observability.metrics import (
    DEAD_LETTER_REASONS,
    DECISIONS,
    ESCALATION_REASONS,
    POLICY_DECISIONS,
)
from worker.stream import fetch_pacing, pipeline
from worker.stream.pipeline import Worker
from worker.stream.service import serve

pytestmark = pytest.mark.integration

ALERTS = DEPLOY / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "logit-router.json"
DEADLINE_S = 120
T = TypeVar("T")


# ---- the files in deploy/, checked by Prometheus' own tool ---------------------------------


def test_promtool_check_rules_accepts_the_alert_rules() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()


def test_promtool_unit_tests_show_each_alert_firing_and_quiet() -> None:
    proc = promtool("test", "rules", str(DEPLOY / "alerts_test.yml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    tests = yaml.safe_load((DEPLOY / "alerts_test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    for alert in alert_names():
        fired = [c for c in cases if c["alertname"] == alert and c["exp_alerts"]]
        quiet = [c for c in cases if c["alertname"] == alert and not c["exp_alerts"]]
        assert fired and quiet, f"{alert}: needs a firing case and a quiet case"


def test_promtool_check_config_accepts_the_compose_scrape_config() -> None:
    proc = promtool("check", "config", str(DEPLOY / "prometheus.yml"))
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == [JOB, CALIBRATION_JOB]


def test_the_dashboard_has_the_panels_operators_watch() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(all_panels(dashboard))
    for p in panels:
        if p["type"] not in ("row", "text"):
            assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
            assert all(t["datasource"]["uid"] == "prometheus" for t in p["targets"]), p["title"]
    assert len({p["id"] for p in panels}) == len(panels)
    exprs = " ".join(expr for _, expr in dashboard_queries(dashboard))
    heatmaps = [p for p in panels if p["type"] == "heatmap"]
    assert any("logit_router_margin_bucket" in t["expr"] for p in heatmaps for t in p["targets"])
    assert any(p.get("repeat") == "topic" for p in heatmaps)  # one heatmap per topic
    for needle in (
        "histogram_quantile(0.5, sum by (topic, le) (rate(logit_router_margin_bucket",
        'decision="escalated"',
        "rate(logit_router_events_total",
        "logit_router_dead_letters_total",
        "logit_router_consumer_lag_records",
        'live="escalated", shadow="escalated"',
        "histogram_quantile(0.5, sum by (topic, le) (rate(logit_router_end_to_end_latency",
        "histogram_quantile(0.99, sum by (topic, le) (rate(logit_router_end_to_end_latency",
        "max by (topic, measure) (logit_router_drift_psi",
        "topic:logit_router_escalation_ratio:rate5m",
        'logit_router_calibration_error{job="logit-router-calibration", topic=~"$topic", '
        'temperature="live", binning="equal_width"}',
        "logit_router_calibration_fitted_temperature",
    ):
        assert needle in exprs, needle


def test_with_bool_turns_each_comparison_into_a_bool_comparison() -> None:
    expr = 'a{x!="1",y=~"b|c"} > 2 * b and on (i) c <= 3 unless d == bool 0'
    assert with_bool(expr) == (
        'a{x!="1",y=~"b|c"} > bool 2 * b and on (i) c <= bool 3 unless d == bool 0'
    )


# ---- the live worker ------------------------------------------------------------------------


async def test_readyz_waits_for_partitions_and_healthz_answers_during_a_batch(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    refresh_s = 0.01  # the lag gauge's refresh, shortened: a refresh follows nearly every batch
    monkeypatch.setattr(pipeline, "LAG_REFRESH_S", refresh_s)
    settings = make_settings(
        bootstrap,
        uid,
        http={"enabled": True, "port": 0},
        processing={"max_batch_records": 2000},  # a dozen batches: readings between them
        # Each batch waits the producer's linger for its delivery reports, so it spans many
        # probes; at full speed the whole backlog is worked off in under a second.
        kafka={"linger_ms": 250},
    )
    await create_all(settings)
    total = await publish(settings, per_topic=12_000, seed=11)
    registry = CollectorRegistry()
    async with serving_worker(settings, registry) as (worker, port):
        base = f"http://127.0.0.1:{port}"
        status, _, _ = await asyncio.to_thread(http_get, base + "/readyz")
        assert not worker.assignment, "partitions were assigned before the first probe"
        assert status == 503
        started = time.monotonic()
        while (status := (await asyncio.to_thread(http_get, base + "/readyz"))[0]) != 200:
            assert status == 503
            await until_deadline(started, "readiness")
        assert worker.assignment
        assert sample(registry, "logit_router_assigned_partitions") == len(worker.assignment)

        # Probe /healthz over and over while the backlog is worked off. An answer counts as
        # "during a batch" when a batch was in hand, and the count of finished batches was
        # the same, both before the request and after its answer: one batch spanned it.
        # Meanwhile, the lag over all assigned partitions is what is left of the backlog.
        during, statuses = 0, Counter[int]()
        left: list[tuple[float, int, float]] = []  # (when, backlog, lag) while it is worked off
        started = time.monotonic()
        while worker.processed < total:
            busy = worker.busy
            done = sample(registry, "logit_router_batch_duration_seconds_count")
            status, _, _ = await asyncio.to_thread(http_get, base + "/healthz")
            statuses[status] += 1
            same = sample(registry, "logit_router_batch_duration_seconds_count") == done
            during += busy and worker.busy and same
            if 0 < worker.processed < total:
                left.append((time.monotonic(), total - worker.processed, lag_total(registry)))
            assert time.monotonic() - started < DEADLINE_S, "waited too long for the backlog"
        assert statuses == {200: sum(statuses.values())}
        assert during > 0, "no /healthz answer arrived while a batch was in hand"

        # Every partition counts, also those without records in the last batch: once each
        # has been fetched, a refresh sets the lag to exactly the records not yet processed.
        # Between refreshes it holds, so a reading is never more than the backlog was one
        # refresh earlier (0.25 s of slack for a late refresh; the backlog only shrinks).
        def backlog_before(when: float) -> int:
            earlier = [backlog for t, backlog, _ in left if t <= when - refresh_s - 0.25]
            return earlier[-1] if earlier else total

        assert all(lag <= backlog_before(t) for t, _, lag in left), left
        assert any(lag == backlog for _, backlog, lag in left), left
        await wait_until_committed(settings)

        async def lags() -> dict[tuple[str, str], float]:
            return lag_series(registry)

        await poll(lags, lambda s: bool(s) and sum(s.values()) == 0, "the lag back to 0")
        assert {(t, int(p)) for t, p in lag_series(registry)} == {
            (tp.topic, tp.partition) for tp in worker.assignment
        }


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_the_fetch_grows_while_the_event_loop_is_busy_and_comes_back_when_it_is_idle(
    bootstrap: str, uid: str, monkeypatch: pytest.MonkeyPatch, guarantee: str
) -> None:
    """A backlog keeps the loop busy: the gauges show its load above the threshold and, under
    at-least-once, the fetch at the busy setting; once the backlog is worked off, the fetch is
    the light one. Under exactly-once the fetch stays light throughout."""
    monkeypatch.setattr(fetch_pacing, "PACE_S", 0.2)  # four looks to the top in 0.8 s
    settings = make_settings(
        bootstrap, uid, http={"enabled": True, "port": 0}, processing={"guarantee": guarantee}
    )
    light, busy = settings.kafka.fetch_min_bytes, settings.kafka.busy_fetch()[0]
    assert light < busy
    await create_all(settings)
    total = await publish(settings, per_topic=100_000, seed=13)
    registry = CollectorRegistry()
    async with serving_worker(settings, registry) as (worker, _):
        assert sample(registry, "logit_router_fetch_min_bytes") == light

        async def reading() -> tuple[float, float]:  # (the loop's load, the fetch)
            return (
                sample(registry, "logit_router_event_loop_cpu_ratio"),
                sample(registry, "logit_router_fetch_min_bytes"),
            )

        readings: list[tuple[float, float]] = []  # while the backlog is worked off
        started = time.monotonic()
        while worker.processed < total:
            readings.append(await reading())
            assert time.monotonic() - started < DEADLINE_S, "waited too long for the backlog"
            await asyncio.sleep(0.05)
        assert max(load for load, _ in readings) > fetch_pace.BUSY_FROM, readings
        fetches = {fetch for _, fetch in readings}
        assert fetches >= {light, busy} if guarantee == "at_least_once" else fetches == {light}
        idle_below = fetch_pace.IDLE_BELOW
        await poll(reading, lambda r: r[0] < idle_below and r[1] == light, "idle, the light fetch")


async def test_prometheus_scrapes_a_worker_and_every_query_and_rule_returns_data(
    bootstrap: str, uid: str, tmp_path: Path
) -> None:
    # One topic with a shadow policy and an audit sample, so that their panels have data.
    # Its drift reference is of the same kind of traffic, so its PSI is a number, below 0.1.
    reference = steady_reference(tmp_path / "ref.json", f"support-{uid}", temperature=0.7)
    shadowed = {
        "temperature": 0.7,
        "min_margin": 0.15,
        "audit_sample_rate": 0.1,
        "shadow": {"temperature": 1.2, "min_margin": 0.1},
        "drift": {"reference": str(reference)},
    }
    settings = make_settings(
        bootstrap, uid, http={"enabled": True, "port": 0}, topics={f"support-{uid}": shadowed}
    )
    topics = sorted(settings.topics)
    await create_all(settings)
    registry = CollectorRegistry()
    with parked_port() as down:  # a second target where no worker answers: WorkerDown fires
        async with (
            serving_worker(settings, registry) as (_, port),
            running_prometheus(tmp_path / "prom", [f"127.0.0.1:{port}", down], [ALERTS]) as prom,
        ):
            live = f"127.0.0.1:{port}"
            # A first scrape before any traffic, so that rates have a start.
            await poll_prom(prom, f'up{{instance="{live}"}} == 1', "the first scrape")
            total = await publish(settings, per_topic=2_500, seed=5)
            await wait_until_committed(settings)
            await poll_prom(
                prom,
                f'sum(logit_router_events_total{{instance="{live}"}}) == {total}',
                "a scrape of the final counts",
            )
            outputs = await read_outputs(settings)
            want = Expected.of(outputs)
            assert sum(want.decisions.values()) == total

            # The registry and Prometheus' copy both equal what the output topics hold.
            check_registry(registry, topics, want)
            await asyncio.to_thread(check_prometheus, prom, live, topics, want, settings)

            # The exposition Prometheus scraped passes promtool's lint.
            _, _, exposition = await asyncio.to_thread(http_get, f"http://{live}/metrics")
            proc = await asyncio.to_thread(promtool, "check", "metrics", stdin=exposition)
            assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()
            assert proc.stdout.strip() == b"", proc.stdout.decode()

            # Every dashboard query, variable and rule expression returns data without error;
            # those on the calibration monitor's metrics are checked where a monitor runs,
            # tests/integration/test_calwatch.py (this test starts none).
            await poll(
                lambda: asyncio.to_thread(empty_queries, prom, topics),
                lambda failing: not failing,
                "every query to return data",
            )
            # Alerts on the real server: dead letters (about 5% of the traffic) and the target
            # that is down are pending (their `for` has not passed); nothing else is active.
            expected = {("LogitRouterDeadLetters", t) for t in topics}
            expected.add(("LogitRouterWorkerDown", down))
            await poll(
                lambda: asyncio.to_thread(active_alerts, prom),
                lambda active: active == expected,
                f"the alerts {sorted(expected)}",
            )


# ---- expected values, read back from the output topics --------------------------------------


class Expected:
    def __init__(self) -> None:
        self.decisions: Counter[tuple[str, str]] = Counter()
        self.escalations: Counter[tuple[str, str]] = Counter()
        self.dead: Counter[tuple[str, str]] = Counter()
        self.margins: dict[str, list[float]] = {}
        self.shadow_pairs: Counter[tuple[str, str, str]] = Counter()

    @classmethod
    def of(cls, outputs: Outputs) -> Expected:
        e = cls()
        for kind, recs in (("routed", outputs.routed), ("escalated", outputs.escalated)):
            for r in recs:
                doc = orjson.loads(r.value)
                topic = doc["source"]["topic"]
                e.decisions[topic, kind] += 1
                e.margins.setdefault(topic, []).append(doc["margin"])
                if kind == "escalated":
                    e.escalations[topic, doc["reason"]] += 1
                if "shadow" in doc:
                    live = "routed" if doc["reason"] == "audit_sample" else kind
                    e.shadow_pairs[topic, live, doc["shadow"]["decision"]] += 1
        for r in outputs.dead:
            headers = dict(r.headers)
            topic = headers[DLQ_PREFIX + "source.topic"].decode()
            e.decisions[topic, "dead_letter"] += 1
            e.dead[topic, headers[DLQ_PREFIX + "reason"].decode()] += 1
        return e

    def margin_buckets(self, topic: str, le: str) -> int:
        bound = math.inf if le == "+Inf" else float(le)
        return sum(m <= bound for m in self.margins.get(topic, []))


def check_registry(registry: CollectorRegistry, topics: list[str], want: Expected) -> None:
    for topic in topics:
        for d in DECISIONS:
            got = sample(registry, "logit_router_events_total", topic=topic, decision=d)
            assert got == want.decisions[topic, d], (topic, d)
        for r in ESCALATION_REASONS:
            got = sample(registry, "logit_router_escalations_total", topic=topic, reason=r)
            assert got == want.escalations[topic, r], (topic, r)
        for r in DEAD_LETTER_REASONS:
            got = sample(registry, "logit_router_dead_letters_total", topic=topic, reason=r)
            assert got == want.dead[topic, r], (topic, r)
        scored = want.decisions[topic, "routed"] + want.decisions[topic, "escalated"]
        assert sample(registry, "logit_router_margin_count", topic=topic) == scored
        assert sample(registry, "logit_router_margin_sum", topic=topic) == pytest.approx(
            math.fsum(want.margins[topic]), rel=1e-9
        )
    assert sample(registry, "logit_router_batch_records_sum") == sum(want.decisions.values())
    assert sample(registry, "logit_router_commit_failures_total") == 0


def check_prometheus(
    prom: Prometheus, live: str, topics: list[str], want: Expected, settings: Settings
) -> None:
    sel = f'instance="{live}"'

    def by(expr: str, *labels: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(s["metric"][k] for k in labels): float(s["value"][1]) for s in prom.vector(expr)
        }

    events = by(f"logit_router_events_total{{{sel}}}", "topic", "decision")
    assert events == {(t, d): want.decisions[t, d] for t in topics for d in DECISIONS}
    escalations = by(f"logit_router_escalations_total{{{sel}}}", "topic", "reason")
    assert escalations == {
        (t, r): want.escalations[t, r] for t in topics for r in ESCALATION_REASONS
    }
    pairs = by(f"logit_router_shadow_decisions_total{{{sel}}}", "topic", "live", "shadow")
    assert pairs == {
        (t, live, shadow): want.shadow_pairs[t, live, shadow]
        for t in topics
        if settings.topics[t].shadow is not None
        for live in POLICY_DECISIONS
        for shadow in POLICY_DECISIONS
    }
    assert sum(n for (_, r), n in want.escalations.items() if r == "audit_sample") > 0
    dead = by(f"logit_router_dead_letters_total{{{sel}}}", "topic", "reason")
    assert dead == {(t, r): want.dead[t, r] for t in topics for r in DEAD_LETTER_REASONS}
    buckets = by(f"logit_router_margin_bucket{{{sel}}}", "topic", "le")
    assert len(buckets) > 2 * 40
    for (topic, le), value in buckets.items():
        assert value == want.margin_buckets(topic, le), (topic, le)
    info = by(f"logit_router_build_info{{{sel}}}", "version", "config_version", "hot_path")
    hot_path = "compiled" if native.in_use(settings) else "python"
    assert info == {(__version__, settings.config_version, hot_path): 1.0}
    assert by(f"logit_router_assigned_partitions{{{sel}}}") == {(): 6.0}
    lags = by(f"logit_router_consumer_lag_records{{{sel}}}", "topic", "partition")
    assert len(lags) == 6


# ---- every expression in deploy/, evaluated ---------------------------------------------------


def all_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dashboard["panels"]:
        yield p
        yield from p.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (p["title"], t["expr"])
        for p in all_panels(dashboard)
        for t in p.get("targets", [])
        if t.get("expr")
    ]


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Grafana's label_values(selector, label) as the PromQL that lists the same values."""
    out = []
    for var in dashboard["templating"]["list"]:
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert m, f"variable {var['name']}: unexpected query {query}"
        out.append((f"variable {var['name']}", f"count by ({m[2]}) ({m[1]})"))
    return out


def substitute(expr: str, topics: list[str]) -> str:
    """Grafana's variables as Grafana would fill them for this run. Rates over 5 minutes: the
    whole run, so that quantiles and shares are numbers rather than NaN."""
    values = {
        "__rate_interval": "5m",
        "__interval": "15s",
        "__range": "5m",
        "topic": "(" + "|".join(topics) + ")",
    }

    def fill(m: re.Match[str]) -> str:
        name = m[1] or m[2]
        assert name in values, f"unknown dashboard variable ${name} in {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", fill, expr)


def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def alert_names() -> list[str]:
    return [r["alert"] for r in rules() if "alert" in r]


COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def with_bool(expr: str) -> str:
    """Each comparison outside label matchers turned into a ``bool`` comparison, so that an
    alert that is quiet still returns a sample (0) for every series it compares: the proof that
    its metric names and label matching are right, whatever the current values."""
    out: list[str] = []
    depth, i, quote = 0, 0, ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
            out.append(c)
        elif c in "{}":
            depth += 1 if c == "{" else -1
            out.append(c)
        else:
            op = next((o for o in COMPARISONS if depth == 0 and expr.startswith(o, i)), None)
            if op is None:
                out.append(c)
            else:
                rest = expr[i + len(op) :]
                out.append(op if rest.lstrip().startswith("bool") else op + " bool")
                i += len(op)
                continue
        i += 1
    return "".join(out)


CALIBRATION_METRICS = "logit_router_calibration_"  # served by calibrate --watch, not a worker


def queries(topics: list[str], calibration: bool = False) -> list[tuple[str, str]]:
    """(what, PromQL) for every dashboard query and variable and every rule expression: those
    on the worker's metrics, or with ``calibration`` those on the calibration monitor's."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = [(title, substitute(e, topics)) for title, e in dashboard_queries(dashboard)]
    found += variable_queries(dashboard)
    for rule in rules():
        if "record" in rule:
            found.append((f"record {rule['record']}", rule["expr"]))
        else:
            found.append((f"alert {rule['alert']} (bool)", with_bool(rule["expr"])))
    return [(what, e) for what, e in found if (CALIBRATION_METRICS in e) == calibration]


def empty_queries(prom: Prometheus, topics: list[str], calibration: bool = False) -> list[str]:
    """What fails: an error, no samples, or (dashboards) not one number among the samples."""
    bad = []
    for rule in rules():  # alert expressions as written: valid, whether or not they fire
        answer = prom.query(rule["expr"])
        if answer["status"] != "success":
            bad.append(f"{rule.get('alert', rule.get('record'))}: {answer}")
    for what, expr in queries(topics, calibration):
        answer = prom.query(expr)
        if answer["status"] != "success":
            bad.append(f"{what}: {expr}: {answer}")
            continue
        values = [float(s["value"][1]) for s in answer["data"]["result"]]
        if not any(math.isfinite(v) for v in values):
            bad.append(f"{what}: {expr}: {answer['data']['result']}")
    return bad


def active_alerts(prom: Prometheus) -> set[tuple[str, str]]:
    answer = prom.api("alerts")
    assert answer["status"] == "success", answer
    return {
        (a["labels"]["alertname"], a["labels"].get("topic") or a["labels"].get("instance", ""))
        for a in answer["data"]["alerts"]
    }


# ---- helpers --------------------------------------------------------------------------------


def steady_reference(path: Path, topic: str, temperature: float) -> Path:
    """A drift reference of ``publish``'s kind of traffic (another seed), scored offline."""
    margins, top1s = [], []
    for e in traffic.synthetic(4_000, seed=99, classes=3, malformed_rate=0.0):
        s = routing.score(orjson.loads(e.value)["logits"], temperature)
        margins.append(s.margin)
        top1s.append(s.top1)
    values = {"margin": margins, "top1": top1s}
    path.write_bytes(drift.make_reference(topic, values, "2026-12-05T00:00:00Z", {}).to_json())
    return path


@contextlib.asynccontextmanager
async def serving_worker(
    settings: Settings, registry: CollectorRegistry
) -> AsyncIterator[tuple[Worker, int]]:
    """``serve`` in-process, as ``run`` would; yields the worker and its real HTTP port."""
    stop = asyncio.Event()
    ready: asyncio.Future[tuple[Worker, HealthServer | None]] = (
        asyncio.get_running_loop().create_future()
    )
    task = asyncio.create_task(
        serve(settings, stop, registry, on_ready=lambda w, h: ready.set_result((w, h)))
    )
    try:
        waiting: set[asyncio.Future[Any]] = {task, ready}
        await asyncio.wait(waiting, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        assert ready.done(), f"the worker did not start (exit {task.result()})"
        worker, http = ready.result()
        assert http is not None
        yield worker, http.port
    finally:
        stop.set()
        code = await asyncio.wait_for(task, timeout=60)
        assert code == 0


@contextlib.contextmanager
def parked_port() -> Iterator[str]:
    """127.0.0.1:port bound but not listening: connections are refused, and no one else can
    take the port while the test runs."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{s.getsockname()[1]}"


async def publish(settings: Settings, per_topic: int, seed: int) -> int:
    sent = 0
    for n, topic in enumerate(sorted(settings.topics)):
        classes = 3 if topic.startswith("support") else 2
        events = traffic.synthetic(per_topic, seed=seed + n, classes=classes, malformed_rate=0.05)
        sent += await traffic.produce(settings.kafka.bootstrap_servers, topic, events)
    return sent


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exposed"
    return value


def lag_series(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (s.labels["topic"], s.labels["partition"]): s.value
        for metric in registry.collect()
        if metric.name == "logit_router_consumer_lag_records"
        for s in metric.samples
    }


def lag_total(registry: CollectorRegistry) -> float:
    return sum(lag_series(registry).values())


async def until_deadline(started: float, what: str) -> None:
    assert time.monotonic() - started < DEADLINE_S, f"waited {DEADLINE_S}s for {what}"
    await asyncio.sleep(0.05)


async def poll(probe: Callable[[], Awaitable[T]], ok: Callable[[T], bool], what: str) -> T:
    """Await ``probe()`` until ``ok`` holds for its value; fail, showing the last value."""
    started = time.monotonic()
    while True:
        value = await probe()
        if ok(value):
            return value
        if time.monotonic() - started > DEADLINE_S:
            pytest.fail(f"waited {DEADLINE_S}s for {what}; last seen: {value}", pytrace=False)
        await asyncio.sleep(0.2)


async def poll_prom(prom: Prometheus, expr: str, what: str) -> None:
    await poll(lambda: asyncio.to_thread(prom.vector, expr), bool, what)
