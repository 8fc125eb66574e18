"""``replay --as-published``: each event re-scored with the config that published it.

Routed and escalated outputs name their ``config_version``; its document is looked up in the
config history (``worker.stream.history``) and turned back into settings (topics, outputs and
limits from the document, Kafka from the current config). A dead-letter record names no
version: it is re-scored with the version of the scored output before it in the same input
partition (a partition is routed in offset order, so that is the config then in force), else
the first one after it, else with the current config. A version
that the history does not hold cannot be re-scored: such an event is reported as
``unknown_version``, never guessed at.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from worker.audit.diff import View
from worker.core.errors import ConfigError
from worker.core.records import Outbound, Router
from worker.core.settings import Settings, settings_from_document

CURRENT = None  # the version key of the current config: no recorded version applies


class AsPublished:
    """Routers per recorded version, built once each, and the choice of version per event."""

    def __init__(
        self,
        current: Settings,
        documents: Mapping[str, bytes],
        originals: Mapping[tuple[int, int], Sequence[View]],
    ) -> None:
        self.current = current
        self.documents = documents
        self.originals = originals
        self.routers: dict[str | None, Router | None] = {}
        self.used: Counter[str] = Counter()  # events re-scored per version ("current": fallback)
        self.unknown: Counter[str] = Counter()  # events whose version the history lacks
        scored: dict[int, list[tuple[int, str]]] = {}
        for (partition, offset), views in originals.items():
            version = _recorded(views)
            if version is not None:
                scored.setdefault(partition, []).append((offset, version))
        self._scored = {p: sorted(pairs) for p, pairs in scored.items()}

    def version(self, partition: int, offset: int) -> str | None:
        """The version an event was published with, or that of the scored output before it."""
        own = _recorded(self.originals.get((partition, offset), ()))
        if own is not None:
            return own
        pairs = self._scored.get(partition, [])
        at = bisect.bisect_left(pairs, (offset, ""))
        if at > 0:
            return pairs[at - 1][1]
        return pairs[at][1] if at < len(pairs) else CURRENT

    def router(self, version: str | None) -> Router | None:
        if version not in self.routers:
            self.routers[version] = self._build(version)
        return self.routers[version]

    def _build(self, version: str | None) -> Router | None:
        if version is CURRENT:
            return Router(self.current)
        document = self.documents.get(version)
        if document is None:
            return None
        try:
            return Router(settings_from_document(document, self.current))
        except ConfigError:  # a document this code cannot read counts as one it does not have
            return None

    def process(self, batch: Sequence[Any]) -> list[tuple[Outbound | None, str | None]]:
        """Each record re-scored by its version's router, in order; ``None`` where unknown."""
        versions = [self.version(r.partition, r.offset) for r in batch]
        out: list[tuple[Outbound | None, str | None]] = [(None, v) for v in versions]
        groups: dict[str | None, list[int]] = {}
        for i, version in enumerate(versions):
            groups.setdefault(version, []).append(i)
        for version, indices in groups.items():
            router = self.router(version)
            label = "current" if version is CURRENT else version
            if router is None or batch[indices[0]].topic not in router.policies:
                self.unknown[label] += len(indices)
                continue
            self.used[label] += len(indices)
            outbound = router.process([batch[i] for i in indices])
            for i, o in zip(indices, outbound, strict=True):
                out[i] = (o, version)
        return out


def _recorded(views: Sequence[View]) -> str | None:
    """The version named by the first scored copy of an event's outputs."""
    return next((v.config_version for v in views if v.config_version is not None), None)
