"""Java discovery and the Kafka jars, fetched with Maven into a cache.

* **Jars from Maven, not the release tarball.** Developer machines and CI reach
  only package registries (Maven Central, PyPI, Debian), not the Apache
  download mirrors. ``org.apache.kafka:kafka_2.13`` on Central plus its runtime
  dependencies is exactly the tarball's ``libs/``. ``kafka/pom.xml`` pins the
  version and adds the one thing the tarball has and the POM lacks: the
  slf4j->log4j2 binding, without which the broker logs nothing.
* **Jar cache outside the clone, written atomically.** The jars (~43 MB) live
  in ``${XDG_CACHE_HOME:-~/.cache}/logit-router/kafka-<version>/libs``, so a
  fresh clone (CI's) reuses them and later runs need no network. Maven copies
  into a temporary sibling directory that is renamed into place only when
  complete, under a file lock, so a killed or concurrent fetch never leaves a
  half-filled cache. A stamp file holds the POM's hash; editing the POM
  refetches.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from worker.devkit.broker.base import _INSTALL_HINT, KAFKA_VERSION, BrokerError, BrokerUnavailable
from worker.devkit.broker.output import _tail_text

log = logging.getLogger(__name__)

_POM: Final = Path(__file__).resolve().parents[3] / "kafka" / "pom.xml"
_MVN_TIMEOUT_S: Final = 900.0


def _java_major(home: Path) -> int | None:
    try:
        text = (home / "release").read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.M)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def _find_java_home() -> Path | None:
    """JAVA_HOME if it is 17+, else an installed JDK (17 first), else PATH."""

    def usable(home: Path) -> bool:
        major = _java_major(home)
        return os.access(home / "bin" / "java", os.X_OK) and (major is None or major >= 17)

    env_home = os.environ.get("JAVA_HOME")
    if env_home and usable(Path(env_home)):
        return Path(env_home)
    found: list[tuple[int, str, Path]] = []
    jvm_root = Path("/usr/lib/jvm")
    if jvm_root.is_dir():
        for home in jvm_root.iterdir():
            major = _java_major(home)
            if major is not None and major >= 17 and usable(home):
                found.append((0 if major == 17 else major, home.name, home))
    if found:
        return min(found)[2]
    on_path = shutil.which("java")
    if on_path:
        home = Path(os.path.realpath(on_path)).parent.parent
        if usable(home):
            return home
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "logit-router"


def _pom_kafka_version(pom: Path) -> str | None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(pom).getroot()  # noqa: S314 - our own kafka/pom.xml
    node = root.find("m:properties/m:kafka.version", ns)
    return node.text.strip() if node is not None and node.text else None


def _libs_ready(libs: Path, stamp: str | None) -> bool:
    if not (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
        return False
    try:
        have = (libs / ".pom-sha256").read_text().strip()
    except OSError:
        return False
    return stamp is None or have == stamp


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    import fcntl  # POSIX only; imported here so the module imports anywhere

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _ensure_kafka_libs(java_home: Path) -> Path:
    """Return the cached jar directory, fetching it with Maven if needed."""
    home = _cache_root() / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    pom = _POM if _POM.is_file() else None
    stamp = hashlib.sha256(pom.read_bytes()).hexdigest() if pom else None
    if _libs_ready(libs, stamp):
        return libs
    with _file_lock(home.parent / f".kafka-{KAFKA_VERSION}.lock"):
        if _libs_ready(libs, stamp):
            return libs
        if pom is None or stamp is None:
            raise BrokerError(f"no Kafka jars in {libs} and no kafka/pom.xml to fetch them")
        pinned = _pom_kafka_version(pom)
        if pinned != KAFKA_VERSION:
            raise BrokerError(
                f"kafka/pom.xml pins Kafka {pinned} "
                f"but worker/devkit/broker/base.py expects {KAFKA_VERSION}"
            )
        mvn = shutil.which("mvn")
        if mvn is None:
            raise BrokerUnavailable(f"{_INSTALL_HINT} (Maven not found)")
        home.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=home))
        try:
            out = tmp / "libs"
            log.info("fetching Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
            started = time.monotonic()
            try:
                proc = subprocess.run(  # noqa: S603 - fixed argv, no shell
                    [
                        mvn,
                        "-q",
                        "-B",
                        "-f",
                        str(pom),
                        "dependency:copy-dependencies",
                        f"-DoutputDirectory={out}",
                    ],
                    cwd=tmp,
                    env={**os.environ, "JAVA_HOME": str(java_home)},
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    timeout=_MVN_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise BrokerError(
                    f"Maven did not fetch the Kafka jars within {_MVN_TIMEOUT_S:.0f}s"
                ) from None
            output = proc.stdout.decode(errors="replace")
            if proc.returncode != 0 or not (out / f"kafka_2.13-{KAFKA_VERSION}.jar").is_file():
                err = BrokerError(
                    f"Maven could not fetch the Kafka jars (exit {proc.returncode}): "
                    f"{_last_error_line(output)}"
                )
                err.add_note(_tail_text(output, 40))
                raise err
            (out / ".pom-sha256").write_text(stamp + "\n")
            old = home / f".old-{uuid.uuid4().hex}"
            if libs.exists():
                libs.rename(old)
            out.rename(libs)  # atomic: the cache is complete or absent
            shutil.rmtree(old, ignore_errors=True)
            log.info("fetched Kafka jars in %.1fs", time.monotonic() - started)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return libs


def _last_error_line(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    errors = [
        ln
        for ln in lines
        if "ERROR" in ln
        and "Re-run Maven" not in ln
        and "Help 1" not in ln
        and ln.rstrip() != "[ERROR]"
    ]
    pick = errors[0] if errors else (lines[-1] if lines else "no output")
    return re.sub(r"\x1b\[[0-9;]*m", "", pick)[:300]
