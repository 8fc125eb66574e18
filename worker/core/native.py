"""The compiled hot path (``native/``, Rust), used when it is installed and not switched off.

``logit_router_native.route_many`` does for each record of a slice what ``Router.process``
does in Python (decode, score, decide, encode), and gives the same bytes on the same platform:
the document is written back as ``orjson.dumps`` writes it, and the scores are the reference's
(``routing.score``: the platform's C-library ``exp`` and ``log1p``, the ones ``math.exp`` and
``math.log1p`` call, and exactly rounded sums), bit for bit. A record it is not sure of
(an escape in a string, a key the output sets, anything malformed) it declines, and the Python
path handles it and names any refusal. ``tests/unit/test_native.py`` holds the two paths to
the same bytes. Without a Rust toolchain at install time the package is absent and the worker
runs the Python path alone: slower, same outputs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

import orjson

from worker.core.events import FAST_MAX_BRACKETS, MAX_ID_CHARS, MIN_CLASSES
from worker.core.routing import Policy, audit_threshold
from worker.core.schema import Slot
from worker.core.settings import Settings

if TYPE_CHECKING:
    from logit_router_native import RecordBatch as _RecordBatch
    from logit_router_native import RouteJob as _RouteJob

_ext: ModuleType | None
try:
    import logit_router_native
except ImportError:  # built only where cargo was found at install time
    _ext = None
else:
    _ext = logit_router_native

# What the compiled path gives for a record: value, routed?, reason, top1, margin, entropy,
# and the shadow's routed? (None for a topic without a shadow).
Compiled = tuple[bytes, bool, str | None, float, float, float, bool | None]
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
# Outputs by (topic, partition) as that partitioner places them, given each topic's sorted
# partitions; None where an output has no key or a topic is not given (``worker.stream.publish``).
partition_slots: (
    Callable[[list[Any], dict[str, list[int]]], dict[tuple[str, int], list[Any]] | None] | None
) = _ext.partition_slots if _ext is not None else None
# Per record its output (``records.Outbound``) from its compiled result, None where it has none
# (``Router.finish``).
outbounds: (
    Callable[[list[Any], list[Any], tuple[type, type, type], tuple[str, ...]], list[Any]] | None
) = _ext.outbounds if _ext is not None else None
# What the metrics read of a batch of outputs, in one pass (``worker.observability.metrics``):
# label sets with counts, source topics, then per output columns as bytes for numpy.
output_columns: Callable[[list[Any]], tuple[Any, ...]] | None = (
    _ext.output_columns if _ext is not None else None
)
# Whether every complete v2 record batch of fetched bytes has the right checksum
# (``worker.stream.fetched``).
batches_crc_ok: Callable[[bytes], bool] | None = _ext.batches_crc_ok if _ext is not None else None
# Fetched bytes unpacked whole: per batch its offsets, flags and records, or None where aiokafka
# must unpack them (``worker.stream.fetched``).
UnpackBatches = Callable[[bytes, type, str, int], list[tuple[Any, ...]] | None]
unpack_batches: UnpackBatches | None = _ext.unpack_batches if _ext is not None else None
# A Kafka record batch filled from outputs in one call (``worker.stream.publish``).
RecordBatch: type[_RecordBatch] | None = _ext.RecordBatch if _ext is not None else None
# ``route_many`` on the compiled module's two routing threads, for the event loop to go on
# meanwhile (``worker.stream.offload``).
RouteJob: type[_RouteJob] | None = _ext.RouteJob if _ext is not None else None


def available() -> bool:
    return _ext is not None


def in_use(settings: Settings) -> bool:
    """Whether the worker routes with the compiled hot path: installed and not switched off."""
    return settings.processing.native and _ext is not None


def topics(
    policies: Mapping[str, Policy],
    templates: Mapping[str, dict[str, Any]],
    *,
    max_bytes: int,
    max_classes: int,
) -> dict[str, Any]:
    """One compiled ``Topic`` per input topic. Its output's constant parts are the topic's
    template (``schema.template``) encoded here by orjson, so they are byte for byte what the
    Python path writes; its limits and the keys it must not find in an input come from here."""
    if _ext is None:
        raise RuntimeError("logit_router_native is not installed")
    out = {}
    for topic, p in policies.items():
        pieces, slots = _pieces(templates[topic])
        shadow = p.shadow
        out[topic] = _ext.Topic(
            p.temperature,
            p.min_margin,
            p.min_top1,
            None if p.labels is None else [orjson.dumps(label) for label in p.labels],
            audit_threshold=audit_threshold(p.audit_sample_rate),
            shadow=None if shadow is None else (shadow.temperature, shadow.min_margin),
            shadow_min_top1=None if shadow is None else shadow.min_top1,
            max_bytes=max_bytes,
            max_classes=max_classes,
            min_classes=MIN_CLASSES,
            max_id_chars=MAX_ID_CHARS,
            max_brackets=FAST_MAX_BRACKETS,
            output_keys=[key.encode() for key in templates[topic]],
            pieces=pieces,
            slots=slots,
        )
    return out


# A slot's stand-in while a template is encoded: a string no constant of a template holds.
_MARK = "\x00slot:"
_MARKED = re.compile(re.escape(orjson.dumps(_MARK)[:-1]) + rb'([a-z0-9_.]+)"')


def _pieces(fields: dict[str, Any]) -> tuple[list[bytes], list[str]]:
    """A template as the bytes around its slots, the first piece opening with the comma that
    follows the input's last field and the last one closing the document; and the slots' names,
    in the order the compiled path fills them."""
    marked: list[str] = []

    def mark(value: object) -> str:
        if not isinstance(value, Slot):
            raise TypeError(f"not in a template: {value!r}")
        marked.append(value.name)
        return _MARK + value.name

    parts = _MARKED.split(orjson.dumps(fields, default=mark))
    pieces, slots = parts[0::2], [name.decode() for name in parts[1::2]]
    if slots != marked:
        raise ValueError(f"template slots {marked} read back as {slots}")
    return [b"," + pieces[0][1:], *pieces[1:]], slots
