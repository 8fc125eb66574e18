"""SASL/SCRAM-SHA-512 and TLS against a real broker, with the worker as a subprocess
(``python -m worker run``): the right credentials work, from the environment or from a secrets
file; a wrong password or an untrusted certificate ends the worker at once with one clear line
and exit 1; the password never shows in its output or its ``/metrics``.

The broker (``tests/integration/secure_broker.py``) is a dedicated one with SCRAM and TLS
listeners; the tests create topics, publish and read back through its plain listener."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration.helpers import (
    create_all,
    make_settings,
    read_inputs,
    read_outputs,
    wait_until_committed,
)
from tests.integration.secure_broker import SecureBroker, secure_broker
from worker.core.settings import Settings
from worker.devkit import traffic

pytestmark = pytest.mark.integration

CONNECT_TIMEOUT_S = 120  # far longer than a refusal may take: retrying it would show


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    with secure_broker(tmp_path_factory.mktemp("pki")) as broker:
        yield broker


def toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | Path):
        return orjson.dumps(str(value)).decode()  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return repr(value)


def worker_config(settings: Settings, kafka: dict[str, Any], path: Path, guarantee: str) -> Path:
    """The test's topics and group, reached through a secured listener. No password in here."""
    lines = ["[kafka]"]
    base = {
        "group_id": settings.kafka.group_id,
        "connect_timeout_s": CONNECT_TIMEOUT_S,
        "session_timeout_ms": 10_000,
    }
    lines += [f"{k} = {toml(v)}" for k, v in {**base, **kafka}.items()]
    o = settings.outputs
    lines += ["[outputs]", f"routed = {toml(o.routed)}", f"escalated = {toml(o.escalated)}"]
    lines += [f"dead_letter = {toml(o.dead_letter)}", f"config_history = {toml(o.config_history)}"]
    lines += ["[http]", "enabled = true", "port = 0", "[processing]"]
    lines += [f"guarantee = {toml(guarantee)}", "drain_timeout_s = 10"]
    for topic, policy in settings.topics.items():
        lines.append(f"[topics.{toml(topic)}]")
        dumped = policy.model_dump(exclude_none=True)
        lines += [f"{k} = {toml(v)}" for k, v in dumped.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@contextlib.contextmanager
def worker_process(
    config: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOGIT_ROUTER_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**clean, **env},
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def metrics_port(log: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(log.read_text, errors="replace")
        m = re.search(r"on http://127\.0\.0\.1:(\d+)", text)
        if m:
            return int(m.group(1))
        assert proc.poll() is None, text
        await asyncio.sleep(0.1)
    raise AssertionError("the worker never served /metrics")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


async def process_events_through(
    secure: SecureBroker,
    uid: str,
    tmp_path: Path,
    kafka: dict[str, Any],
    env: dict[str, str],
    guarantee: str = "at_least_once",
) -> str:
    """Run a worker with these settings over 300 events; check every input has its output;
    return the worker's whole output (stdout and stderr) and its last /metrics page."""
    settings = make_settings(secure.plain, uid)
    await create_all(settings)
    config = worker_config(settings, kafka, tmp_path / "worker.toml", guarantee)
    log = tmp_path / "worker.log"
    with worker_process(config, env, log) as proc:
        port = await metrics_port(log, proc)
        for n, topic in enumerate(sorted(settings.topics)):
            classes = 3 if topic.startswith("support") else 2
            events = traffic.synthetic(150, seed=n, classes=classes, malformed_rate=0.05)
            await traffic.produce(secure.plain, topic, events)
        await wait_until_committed(settings)
        page = await asyncio.to_thread(scrape, port)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    output = log.read_text(errors="replace")
    assert code == 0, output
    inputs = await read_inputs(settings)
    by_source = (await read_outputs(settings)).by_source()
    assert len(inputs) == 300
    assert all(len(by_source.get((r.topic, r.partition, r.offset), [])) == 1 for r in inputs)
    assert "logit_router_events_total" in page
    return output + page


def sasl(secure: SecureBroker, listener: str = "SASL_PLAINTEXT") -> dict[str, Any]:
    return {
        "bootstrap_servers": secure.address(listener),
        "security_protocol": listener,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": secure.user,
    }


@pytest.mark.parametrize("guarantee", ["at_least_once", "exactly_once"])
async def test_scram_password_from_the_environment(
    secure: SecureBroker, uid: str, tmp_path: Path, guarantee: str
) -> None:
    env = {"LOGIT_ROUTER_KAFKA__SASL_PASSWORD": secure.password}
    seen = await process_events_through(secure, uid, tmp_path, sasl(secure), env, guarantee)
    assert secure.password not in seen


async def test_scram_over_tls_with_the_password_in_a_secrets_file(
    secure: SecureBroker, uid: str, tmp_path: Path
) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(secure.password + "\n")  # as `echo` or kubectl would leave it
    kafka = {**sasl(secure, "SASL_SSL"), "ssl_cafile": secure.pki.ca}
    env = {"LOGIT_ROUTER_KAFKA__SASL_PASSWORD_FILE": str(secret)}
    seen = await process_events_through(secure, uid, tmp_path, kafka, env)
    assert secure.password not in seen


async def test_mutual_tls_with_an_encrypted_client_key(
    secure: SecureBroker, uid: str, tmp_path: Path
) -> None:
    key_password = tmp_path / "key-password"
    key_password.write_text(secure.pki.key_password)
    kafka = {
        "bootstrap_servers": secure.address("SSL"),
        "security_protocol": "SSL",
        "ssl_cafile": secure.pki.ca,
        "ssl_certfile": secure.pki.client_cert,
        "ssl_keyfile": secure.pki.client_key,
        "ssl_key_password_file": key_password,
    }
    seen = await process_events_through(secure, uid, tmp_path, kafka, {})
    assert secure.pki.key_password not in seen


def run_refused(
    secure: SecureBroker, uid: str, tmp_path: Path, kafka: dict[str, Any], env: dict[str, str]
) -> tuple[int, str, float]:
    """Run a worker that must be refused; return its exit code, output and run time."""
    settings = make_settings(secure.plain, uid)
    config = worker_config(settings, kafka, tmp_path / "worker.toml", "at_least_once")
    log = tmp_path / "worker.log"
    started = time.monotonic()
    with worker_process(config, env, log) as proc:
        code = proc.wait(timeout=CONNECT_TIMEOUT_S + 60)
    return code, log.read_text(errors="replace"), time.monotonic() - started


def last_line(output: str) -> str:
    return output.strip().splitlines()[-1]


@pytest.mark.parametrize("user", ["router", "nobody"])
def test_wrong_credentials_fail_at_once_with_a_clear_message(
    secure: SecureBroker, uid: str, tmp_path: Path, user: str
) -> None:
    wrong = "wrong-" + os.urandom(8).hex()
    kafka = {**sasl(secure), "sasl_username": user}
    env = {"LOGIT_ROUTER_KAFKA__SASL_PASSWORD": wrong}
    code, output, took = run_refused(secure, uid, tmp_path, kafka, env)
    assert code == 1, output
    line = last_line(output)
    assert f"Kafka authentication failed for user '{user}' (SCRAM-SHA-512)" in line, output
    assert "check kafka.sasl_username and the password" in line
    assert "cannot reach Kafka" not in output  # refused, not retried until the deadline
    assert took < CONNECT_TIMEOUT_S
    assert "Traceback" not in output
    assert wrong not in output and secure.password not in output


def test_untrusted_broker_certificate_fails_at_once(
    secure: SecureBroker, uid: str, tmp_path: Path
) -> None:
    kafka = {
        "bootstrap_servers": secure.address("SSL"),
        "security_protocol": "SSL",
        "ssl_cafile": secure.pki.wrong_ca,  # signed by another CA than the broker's
    }
    code, output, took = run_refused(secure, uid, tmp_path, kafka, {})
    assert code == 1, output
    line = last_line(output)
    address = secure.address("SSL")
    assert f"TLS: the certificate of {address} is not trusted" in line, output
    assert "check kafka.ssl_cafile" in line
    assert took < CONNECT_TIMEOUT_S
    assert "Traceback" not in output


def test_missing_client_certificate_fails_at_once(
    secure: SecureBroker, uid: str, tmp_path: Path
) -> None:
    kafka = {
        "bootstrap_servers": secure.address("SSL"),
        "security_protocol": "SSL",
        "ssl_cafile": secure.pki.ca,  # trusted, but the listener wants a client certificate
    }
    code, output, took = run_refused(secure, uid, tmp_path, kafka, {})
    assert code == 1, output
    line = last_line(output)
    assert f"TLS handshake with {secure.address('SSL')} failed" in line, output
    assert "check kafka.ssl_certfile" in line
    assert took < CONNECT_TIMEOUT_S


@pytest.mark.parametrize("key_password", [None, "wrong"])
def test_encrypted_client_key_without_its_password_fails_at_once(
    secure: SecureBroker, uid: str, tmp_path: Path, key_password: str | None
) -> None:
    """No terminal prompt (OpenSSL's default for an encrypted key), no traceback: one line, as
    a bad config (exit 2), naming the key file, before any broker is contacted."""
    kafka = {
        "bootstrap_servers": secure.address("SSL"),
        "security_protocol": "SSL",
        "ssl_cafile": secure.pki.ca,
        "ssl_certfile": secure.pki.client_cert,
        "ssl_keyfile": secure.pki.client_key,
    }
    env = {} if key_password is None else {"LOGIT_ROUTER_KAFKA__SSL_KEY_PASSWORD": key_password}
    code, output, took = run_refused(secure, uid, tmp_path, kafka, env)
    assert code == 2, output
    line = last_line(output)
    assert f"ssl_keyfile {secure.pki.client_key}: no private key" in line, output
    assert "is ssl_key_password right?" in line
    assert took < CONNECT_TIMEOUT_S
    assert "Traceback" not in output
    assert secure.pki.key_password not in output


def test_a_config_error_never_prints_the_password(tmp_path: Path) -> None:
    """A bad config is refused before Kafka is touched, and its message masks the secret."""
    secret = "pw-" + os.urandom(8).hex()
    config = tmp_path / "bad.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = "127.0.0.1:9"\nsecurity_protocol = "SASL_SSL"\n'
        f'sasl_mechanism = "SCRAM-SHA-512"\nsasl_pasword = "{secret}"\n[topics."t"]\n'
    )
    env = {"LOGIT_ROUTER_KAFKA__SASL_PASSWORD": secret}  # and no sasl_username anywhere
    log = tmp_path / "worker.log"
    with worker_process(config, env, log) as proc:
        code = proc.wait(timeout=60)
    output = log.read_text(errors="replace")
    assert code == 2, output
    assert "kafka.sasl_pasword = '**********'" in output
    assert secret not in output
    assert len(output.strip().splitlines()) == 1
