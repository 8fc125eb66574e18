"""What the numbers depend on, printed at the top of every run: versions, the fast path
(aiokafka's compiled record codec, uvloop), the machine and its load."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import sys
from typing import Any


def aiokafka_c_extension() -> bool:
    """True when aiokafka encodes and decodes record batches with its compiled extension.

    ``aiokafka.util.NO_EXTENSIONS`` (set by ``AIOKAFKA_NO_EXTENSIONS``) forces the pure-Python
    codec; a wheel without the ``_crecords`` modules falls back to it silently. Either way the
    classes in use then live outside ``aiokafka.record._crecords``.
    """
    import aiokafka.util
    from aiokafka.record import default_records, memory_records

    compiled = "aiokafka.record._crecords"
    return (
        not aiokafka.util.NO_EXTENSIONS
        and default_records.DefaultRecordBatchBuilder.__module__.startswith(compiled)
        and memory_records.MemoryRecords.__module__.startswith(compiled)
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(broker_source: str) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "aiokafka": _version("aiokafka"),
        "aiokafka_c_extension": aiokafka_c_extension(),
        "uvloop": _version("uvloop"),  # worker.service.run_loop uses it when installed
        "orjson": _version("orjson"),
        "numpy": _version("numpy"),
        "pydantic": _version("pydantic"),
        "quixstreams": _version("quixstreams"),
        "confluent_kafka": _version("confluent-kafka"),
        "cpus": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": sys.platform,
        "broker": broker_source,
    }
