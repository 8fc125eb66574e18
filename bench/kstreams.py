"""The Kafka Streams peer (``bench/kstreams/``): built once with Maven, cached, run with ``java``.

The build goes where the broker's jars go (``worker.devkit.broker.jars``: under
``${XDG_CACHE_HOME:-~/.cache}/logit-router``), in a directory named by a hash of the POM and the
sources, so an edit rebuilds and an unchanged clone reuses it. Maven builds in a scratch copy
(nothing written into the clone); the result is renamed into place whole, under a file lock,
so a killed or concurrent build never leaves half a cache. A first build fetches Kafka Streams,
Jackson and Maven's plugins from Maven Central (about a minute here); later ones need no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from worker.devkit.broker.jars import _cache_root, _file_lock, _find_java_home, _last_error_line

PROJECT = Path(__file__).resolve().parent / "kstreams"
JAR = "kstreams-peer.jar"
MVN_TIMEOUT_S = 900.0
# The JVM's settings, stated: a fixed heap (the job holds no state; 1 GiB is ample and keeps
# the RSS figure from being the collector's choice), the default collector (G1), and the
# client's own log at WARN (at INFO it prints every configuration it builds).
JVM_FLAGS = ("-Xms1g", "-Xmx1g", "-XX:+UseG1GC", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn")


class BuildError(Exception):
    """The peer could not be built; the message says why in one line."""


def _sources_hash() -> str:
    digest = hashlib.sha256()
    for path in sorted([PROJECT / "pom.xml", *PROJECT.glob("src/**/*.java")]):
        digest.update(path.relative_to(PROJECT).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ensure_built() -> Path:
    """The built jar (its ``libs/`` beside it), building it with Maven when not cached."""
    home = _cache_root() / f"kstreams-peer-{_sources_hash()}"
    jar = home / JAR
    if jar.is_file():
        return jar
    with _file_lock(_cache_root() / ".kstreams-peer.lock"):
        if jar.is_file():
            return jar
        java_home = _find_java_home()
        mvn = shutil.which("mvn")
        if java_home is None or mvn is None:
            raise BuildError("the Kafka Streams peer needs Java 17+ and Maven (mvn) on PATH")
        _cache_root().mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".kstreams-build-", dir=_cache_root()))
        try:
            src = scratch / "src"
            shutil.copytree(PROJECT, src, ignore=shutil.ignore_patterns("target"))
            try:
                proc = subprocess.run(
                    [mvn, "-q", "-B", "package"],
                    cwd=src, env={**os.environ, "JAVA_HOME": str(java_home)},
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    timeout=MVN_TIMEOUT_S, check=False,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                raise BuildError(f"Maven did not build the peer in {MVN_TIMEOUT_S:.0f}s") from None
            built = src / "target"
            if proc.returncode != 0 or not (built / JAR).is_file():
                output = proc.stdout.decode(errors="replace")
                raise BuildError(
                    f"Maven could not build the peer (exit {proc.returncode}): "
                    f"{_last_error_line(output)}"
                )
            ready = scratch / "ready"
            ready.mkdir()
            (built / JAR).rename(ready / JAR)
            (built / "libs").rename(ready / "libs")
            ready.rename(home)  # atomic: the cache is complete or absent
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return jar


def command(spec_path: Path) -> list[str]:
    """The child's command line: ``java ... -jar kstreams-peer.jar SPEC.json``."""
    jar = ensure_built()
    java_home = _find_java_home()
    java = str(java_home / "bin" / "java") if java_home else "java"
    clk_tck = os.sysconf("SC_CLK_TCK")
    return [java, *JVM_FLAGS, f"-Dbench.clk_tck={clk_tck}", "-jar", str(jar), str(spec_path)]


if __name__ == "__main__":  # ``python -m bench.kstreams``: build (or find) it, print the path
    print(ensure_built())
