"""Readers of the Dockerfile and docker-compose.yml for tests/unit/test_deploy.py: instructions
and stages, exec-form arguments, services, environment, mounts mapped between the container and
the repository, compose durations, and the settings a worker replica runs with."""

from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from worker.core.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "config" / "compose.toml"
APP_SERVICES = ("worker", "producer")  # the services that run this project's image


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction; fails on shell form."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        pytest.fail(f"not exec form (a JSON array): {args}")
    assert isinstance(value, list), f"not exec form (a JSON array): {args}"
    assert all(isinstance(v, str) for v in value)
    return value


def only(stage: list[tuple[str, str]], word: str) -> str:
    found = [args for w, args in stage if w == word]
    assert found, f"the final stage has no {word}"
    return found[-1]  # the last one is the one in force


def healthcheck_command() -> list[str]:
    args = only(final_stage(), "HEALTHCHECK")
    _, _, command = args.partition("CMD ")
    return exec_form(command.strip())


def image_command() -> list[str]:
    stage = final_stage()
    return exec_form(only(stage, "ENTRYPOINT")) + exec_form(only(stage, "CMD"))


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, args in final_stage():
        if word == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def service(name: str) -> dict[str, Any]:
    services = compose()["services"]
    assert name in services, f"docker-compose.yml has no service {name!r}"
    svc = services[name]
    assert isinstance(svc, dict)
    return svc


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment", {})
    if isinstance(env, list):  # the KEY=VALUE list form
        env = dict(item.partition("=")[::2] for item in env)
    return {str(k): str(v) for k, v in env.items()}


def mounts(svc: dict[str, Any]) -> list[dict[str, Any]]:
    """Volumes in the long form, whichever syntax the file uses."""
    out = []
    for vol in svc.get("volumes", []):
        if isinstance(vol, str):
            parts = vol.split(":")
            source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/")) else "volume"
            out.append({"type": kind, "source": source, "target": target})
        else:
            out.append(vol)
    return out


def binds(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path (resolved against the repository) of each bind mount."""
    return {m["target"]: (ROOT / m["source"]).resolve() for m in mounts(svc) if m["type"] == "bind"}


def container_path_of(svc: dict[str, Any], host_path: Path) -> PurePosixPath:
    """Where a repository file appears inside the container, through the service's binds."""
    for target, source in binds(svc).items():
        if host_path.resolve() == source:
            return PurePosixPath(target)
        if source.is_dir() and host_path.resolve().is_relative_to(source):
            return PurePosixPath(target) / host_path.resolve().relative_to(source).as_posix()
    pytest.fail(f"{host_path.relative_to(ROOT)} is not mounted into the service")


def host_path_of(svc: dict[str, Any], container_path: PurePosixPath) -> Path | None:
    """The repository file behind a container path, through the service's binds."""
    for target, source in binds(svc).items():
        if container_path == PurePosixPath(target):
            return source
        if container_path.is_relative_to(target):
            return source / container_path.relative_to(target)
    return None


def seconds(duration: str) -> float:
    """A compose duration (``30s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"bad duration {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def effective_command(svc: dict[str, Any]) -> list[str]:
    stage = final_stage()
    entrypoint = svc.get("entrypoint", exec_form(only(stage, "ENTRYPOINT")))
    command = svc.get("command", exec_form(only(stage, "CMD")))
    return [*entrypoint, *command]


def option_values(argv: list[str], option: str) -> list[str]:
    """The values after ``option`` up to the next option (argparse ``nargs='+'`` style)."""
    i = argv.index(option)
    values = []
    for arg in argv[i + 1 :]:
        if arg.startswith("--"):
            break
        values.append(arg)
    return values


def pom_kafka_version() -> str:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(ROOT / "kafka" / "pom.xml").getroot()  # noqa: S314 - our own file
    node = root.find("m:properties/m:kafka.version", ns)
    assert node is not None and node.text
    return node.text.strip()


def field_of(env_name: str) -> tuple[str, ...]:
    """``LOGIT_ROUTER_KAFKA__BOOTSTRAP_SERVERS`` -> ("kafka", "bootstrap_servers") if that is a
    real field of Settings (walking nested models), else a test failure naming the variable."""
    assert env_name.startswith(ENV_PREFIX), env_name
    path = tuple(part.lower() for part in env_name[len(ENV_PREFIX) :].split("__"))
    model: type[BaseModel] = Settings
    for depth, name in enumerate(path):
        assert name in model.model_fields, (
            f"{env_name}: {'.'.join(path[: depth + 1])} is not a settings field"
        )
        annotation = model.model_fields[name].annotation
        if depth < len(path) - 1:
            assert isinstance(annotation, type) and issubclass(annotation, BaseModel), (
                f"{env_name}: {'.'.join(path[: depth + 1])} has no sub-fields"
            )
            model = annotation
    return path


def settings_as_deployed(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """config/compose.toml with the worker's environment: the image's ENV, then compose's."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    for name, value in {**dockerfile_env(), **environment(service("worker"))}.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    return load_settings(COMPOSE_CONFIG)


def effective_command_of_init(init: dict[str, Any]) -> list[str]:
    entrypoint, command = init["entrypoint"], init["command"]
    assert entrypoint[0] in ("/bin/sh", "/bin/bash") and entrypoint[1].endswith("c")
    return [*entrypoint, *command]


def prometheus_datasource_uids(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") == "prometheus":
            found.append(str(ds.get("uid")))
        for value in node.values():
            found += prometheus_datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            found += prometheus_datasource_uids(value)
    return found
