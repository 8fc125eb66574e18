"""What a reload of the config would change, and whether it can be applied without a restart.

Pure: two ``Settings`` in, a ``Change`` out. The routing part (``topics`` and ``limits``) is
applied at a batch boundary by ``worker.stream.reload``; every other section is read once at
start (connections, the group, the guarantee, the output topics, the HTTP port, the log), so a
reload that changes any of it is refused and the running config stays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, SecretStr

from worker.core.settings import MASK, Settings, short_value

Result = Literal["applied", "refused", "unchanged"]
RESULTS: tuple[Result, ...] = ("applied", "refused", "unchanged")
# Read once at start: a different value needs a restart.
RESTART_ONLY = ("kafka", "outputs", "processing", "http", "log")


class Change(NamedTuple):
    """The differences between the running config and a new one."""

    restart_only: list[str]  # one description per differing field that needs a restart
    routing: list[str]  # one per differing routing field (topics, limits)
    added: list[str]  # input topics the new config adds
    removed: list[str]  # input topics it removes

    @property
    def result(self) -> Result:
        if self.restart_only:
            return "refused"
        return "applied" if self.routing else "unchanged"

    @property
    def resubscribes(self) -> bool:
        """The set of input topics changes: the consumer re-subscribes, which is a rebalance."""
        return bool(self.added or self.removed)

    def refusal(self) -> str:
        return "needs a restart: " + "; ".join(self.restart_only)


def compare(old: Settings, new: Settings) -> Change:
    restart_only: list[str] = []
    routing: list[str] = []
    for name in type(old).model_fields:
        found = differences(getattr(old, name), getattr(new, name), name)
        (restart_only if name in RESTART_ONLY else routing).extend(found)
    return Change(
        restart_only,
        routing,
        added=sorted(set(new.topics) - set(old.topics)),
        removed=sorted(set(old.topics) - set(new.topics)),
    )


def differences(old: Any, new: Any, where: str) -> list[str]:
    """``where old -> new`` for every leaf that differs; a secret's value is never shown."""
    if isinstance(old, BaseModel) and type(old) is type(new):
        return [
            line
            for name in type(old).model_fields
            for line in differences(getattr(old, name), getattr(new, name), f"{where}.{name}")
        ]
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines = []
        for key in sorted(set(old) | set(new)):
            at = f'{where}."{key}"'
            if key not in new:
                lines.append(f"{at} removed")
            elif key not in old:
                lines.append(f"{at} added")
            else:
                lines += differences(old[key], new[key], at)
        return lines
    if old == new:
        return []
    if isinstance(old, SecretStr) or isinstance(new, SecretStr):
        return [f"{where} {MASK} -> {MASK}"]
    return [f"{where} {short_value(old)} -> {short_value(new)}"]
