"""Real Prometheus tools for the tests: ``promtool``, and a throwaway Prometheus server process
bound to 127.0.0.1 with its TSDB in a temporary directory. Both come from Debian's
``prometheus`` package (``.ci/install-prometheus``); a missing binary fails the test, naming
what to install, rather than skipping it."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy" / "prometheus"
JOB = "logit-router"  # the job name alerts.yml and the dashboard select on
CALIBRATION_JOB = "logit-router-calibration"  # the calibration monitor's (calibrate --watch)


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.fail(
            f"{binary} not found: the observability tests need Debian's 'prometheus' package "
            "(apt-get install prometheus; .ci/install-prometheus does it as root)",
            pytrace=False,
        )
    return path


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [require("promtool"), *args], input=stdin, capture_output=True, timeout=120, check=False
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """A plain GET; (status, headers, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> dict[str, Any]:
        """The HTTP API's decoded JSON answer, also for errors (status "error"). Parameters
        are POSTed as a form (no URL length limit); without any, a plain GET."""
        parts = urllib.parse.urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
        try:
            if params:
                conn.request(
                    "POST",
                    "/api/v1/" + path,
                    body=urllib.parse.urlencode(params),
                    headers={"Content-Type": "application/x-www-form-urlencoded"},
                )
            else:
                conn.request("GET", "/api/v1/" + path)
            answer: dict[str, Any] = json.loads(conn.getresponse().read())
            return answer
        finally:
            conn.close()

    def query(self, expr: str) -> dict[str, Any]:
        return self.api("query", query=expr)

    def vector(self, expr: str) -> list[dict[str, Any]]:
        """The samples of an instant query that must succeed."""
        answer = self.query(expr)
        assert answer["status"] == "success", f"{expr}: {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def scrape_config(
    targets: list[str], rule_files: list[Path], interval: str, job: str = JOB
) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_timeout": interval,
                "static_configs": [{"targets": targets}],
            }
        ],
    }


@contextlib.contextmanager
def prometheus_server(
    workdir: Path, targets: list[str], rule_files: list[Path], interval: str = "1s", job: str = JOB
) -> Iterator[Prometheus]:
    """A real Prometheus scraping ``targets`` as ``job``; stopped on exit."""
    binary = require("prometheus")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(targets, rule_files, interval, job)))
    log = workdir / "prometheus.log"
    for _attempt in range(3):  # another process may take the free port before Prometheus does
        port = free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        server = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            if _wait_ready(server):
                break
        except BaseException:
            _stop(proc)
            raise
        _stop(proc)
        if "address already in use" not in server.logs():
            pytest.fail(f"prometheus did not start:\n{server.logs()}", pytrace=False)
    else:
        pytest.fail(f"prometheus found no free port:\n{server.logs()}", pytrace=False)
    try:
        yield server
    finally:
        _stop(proc)


@contextlib.asynccontextmanager
async def running_prometheus(
    workdir: Path, targets: list[str], rule_files: list[Path], interval: str = "1s", job: str = JOB
) -> AsyncIterator[Prometheus]:
    """``prometheus_server`` for async tests: starts and stops in a thread, so that an
    in-process worker on the test's event loop keeps answering scrapes meanwhile."""
    cm = prometheus_server(workdir, targets, rule_files, interval, job)
    server = await asyncio.to_thread(cm.__enter__)
    try:
        yield server
    finally:
        await asyncio.to_thread(cm.__exit__, None, None, None)


def _wait_ready(server: Prometheus, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            status, _, _ = http_get(server.url + "/-/ready", timeout=2)
            if status == 200:
                return True
        time.sleep(0.1)
    return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
