"""What the benchmark reads of a process from ``/proc``: a JVM's JIT compiler time, which its
broker warm-up waits on (``bench.run._warm_broker``)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import measure
from worker.devkit.broker.jars import _find_java_home

SPIN = """
public class Spin {
    public static void main(String[] args) {
        long end = System.nanoTime() + 20_000_000_000L, x = 0;
        while (System.nanoTime() < end) { x += Long.toString(x).hashCode(); }
        System.out.println(x);
    }
}
"""


def test_jit_seconds_is_a_jvms_compiler_threads_and_nothing_else(tmp_path: Path) -> None:
    java_home = _find_java_home()
    assert java_home is not None, "the tests need Java 17 (README)"
    source = tmp_path / "Spin.java"
    source.write_text(SPIN)
    # A source file run directly: javac inside the JVM, then a hot loop, both compiled by the JIT.
    proc = subprocess.Popen([str(java_home / "bin" / "java"), str(source)])
    try:
        deadline = time.monotonic() + 15
        jit = 0.0
        while jit == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            jit = measure.jit_seconds(proc.pid)
        assert jit > 0, "no JIT compiler time seen in a busy JVM"
        assert jit <= measure.cpu_seconds(proc.pid)  # a part of the process's CPU
    finally:
        proc.kill()
        proc.wait()
    # Python has no threads of those names.
    assert measure.jit_seconds(os.getpid()) == 0
