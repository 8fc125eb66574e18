"""The compiled hot path (``native/``, Rust), used when it is installed and not switched off.

``logit_router_native.route_many`` does for each record of a slice what ``Router.process``
does in Python (decode, score, decide, encode), and gives the same bytes on the same platform:
the document is written back as ``orjson.dumps`` writes it, and the scores are the reference's
(``routing.score``: the platform's C-library ``exp`` and ``log``, the ones ``math.exp`` and
``math.log`` call, and exactly rounded sums), bit for bit. A record it is not sure of
(an escape in a string, a key the output sets, anything malformed) it declines, and the Python
path handles it and names any refusal. ``tests/unit/test_native.py`` holds the two paths to
the same bytes. Without a Rust toolchain at install time the package is absent and the worker
runs the Python path alone: slower, same outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any

import orjson

from worker import __version__
from worker.core.routing import Policy
from worker.core.settings import Settings

_ext: ModuleType | None
try:
    import logit_router_native
except ImportError:  # built only where cargo was found at install time
    _ext = None
else:
    _ext = logit_router_native

# What the compiled path gives for a record: value, routed?, reason, top1, margin, entropy.
Compiled = tuple[bytes, bool, str | None, float, float, float]
# Per record its Compiled, or None: "let the Python path do it". It releases the GIL.
RouteMany = Callable[
    [list[Any], list[bytes | None], list[int], list[int], list[int | None]],
    list[Compiled | None],
]
route_many: RouteMany | None = _ext.route_many if _ext is not None else None
# The default partitioner's choice for a key: an index into the sorted partitions.
partition_index: Callable[[bytes, int], int] | None = (
    _ext.partition_index if _ext is not None else None
)


def available() -> bool:
    return _ext is not None


def in_use(settings: Settings) -> bool:
    """Whether the worker routes with the compiled hot path: installed and not switched off."""
    return settings.processing.native and _ext is not None


def topics(
    policies: Mapping[str, Policy],
    policy_docs: Mapping[str, dict[str, Any]],
    *,
    max_bytes: int,
    max_classes: int,
    config_version: str,
) -> dict[str, Any]:
    """One compiled ``Topic`` per input topic, with the constant parts of its outputs encoded
    here by orjson, so that they are byte for byte what the Python path writes."""
    if _ext is None:
        raise RuntimeError("logit_router_native is not installed")
    tail = (
        b'},"config_version":'
        + orjson.dumps(config_version)
        + b',"worker_version":'
        + orjson.dumps(__version__)
        + b"}"
    )
    return {
        topic: _ext.Topic(
            p.temperature,
            p.min_margin,
            p.min_top1,
            None if p.labels is None else [orjson.dumps(label) for label in p.labels],
            max_bytes,
            max_classes,
            b',"temperature":'
            + orjson.dumps(p.temperature)
            + b',"policy":'
            + orjson.dumps(policy_docs[topic]),
            b',"source":{"topic":' + orjson.dumps(topic) + b',"partition":',
            tail,
        )
        for topic, p in policies.items()
    }
