"""``[topics."NAME"]``: an input topic's policy, its shadow and its drift watch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    FilePath,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StrictFloat,
    StrictInt,
    model_serializer,
)

from worker.core import drift
from worker.core.config_types import FROZEN, Labels, Probability, Temperature
from worker.core.routing import Policy

WEEK_S = 604_800.0


class Thresholds(BaseModel):
    """A temperature and the thresholds a decision is taken with: a topic's live policy, or
    its shadow."""

    model_config = FROZEN

    temperature: Temperature = 1.0
    """The softmax temperature: above 1 spreads the probabilities out, below 1 sharpens them."""
    min_margin: Probability = 0.1
    """An event whose top-1 minus top-2 probability is below this is escalated (`low_margin`)."""
    min_top1: Probability | None = None
    """An event whose top-1 probability is below this is escalated (`low_top1`); no such check
    when unset."""


class ShadowPolicy(Thresholds):
    """A policy evaluated beside a topic's live one, never deciding where an event goes."""


def _drift_reference(path: Path) -> Path:
    """a drift reference (`logit-router drift snapshot`)"""
    read_reference(path)  # refused here, so the field is named; kept by DriftWatch
    return path


def read_reference(path: Path) -> drift.Reference:
    try:
        return drift.parse_reference(path.read_bytes())
    except OSError as exc:
        raise ValueError(f"cannot read it ({exc.strerror or 'unknown error'})") from None
    except drift.ReferenceError as exc:
        raise ValueError(str(exc)) from None


class DriftWatch(BaseModel):
    """Watching a topic's margin and top-1 distributions against a reference
    (`logit_router_drift_psi`, docs/drift.md). Not part of `config_version`: it changes no
    decision."""

    model_config = FROZEN

    reference: Annotated[FilePath, AfterValidator(_drift_reference)]
    """The reference file that `logit-router drift snapshot` wrote, read once when the config
    is loaded (a path relative to the worker's working directory). A reload applies a different
    path live; a file rewritten under the same path is read at the next start."""
    # At least a second: the window is counted in tenths of it by a monotonic clock's int64
    # ticks, which a tiny window overflows; at most a week, a bound rather than "forever".
    window_s: StrictFloat = Field(600.0, ge=1.0, le=WEEK_S)
    """The PSI is of the events scored in the last this many seconds."""
    min_events: StrictInt = Field(1_000, ge=1)
    """Below this many events in the window the gauge reads NaN: too few to say (an unchanged
    distribution reads a PSI of about 0.02 at 1,000 events, about 0.1 at 200)."""
    _reference: drift.Reference | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._reference = read_reference(self.reference)

    def loaded(self) -> drift.Reference:
        """The reference as read when this config was loaded."""
        if self._reference is None:  # never: model_post_init sets it
            raise RuntimeError("drift reference not loaded")
        return self._reference


class TopicPolicy(Thresholds):
    """The policy of one input topic (the lab: temperature is set per use case)."""

    labels: Labels | None = None
    """Class names by index, for events that carry no `labels` of their own; an event with a
    different number of logits is dead-lettered. Unset: the label is the class index."""
    audit_sample_rate: Probability = 0.0
    """The share of the events that would be routed that are escalated instead (`audit_sample`),
    so that reviewers also see confident events. Chosen by a hash of the event id
    (docs/events.md), so a replay or a retry draws the same events."""
    shadow: ShadowPolicy | None = None
    """A policy to try on live traffic: `[topics."NAME".shadow]` with `temperature`,
    `min_margin`, `min_top1`. None when unset."""
    drift: DriftWatch | None = None
    """Drift watch: `[topics."NAME".drift]` with `reference` (and optionally `window_s`,
    `min_events`). None when unset: no `logit_router_drift_psi` for the topic."""

    @model_serializer(mode="wrap")
    def _unset_features_left_out(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # So a config using neither keeps the config_version it had before they existed.
        data: dict[str, Any] = handler(self)
        if self.audit_sample_rate == 0.0:
            data.pop("audit_sample_rate", None)
        if self.shadow is None:
            data.pop("shadow", None)
        if self.drift is None:
            data.pop("drift", None)
        return data

    def policy(self) -> Policy:
        shadow = self.shadow
        return Policy(
            self.temperature,
            self.min_margin,
            self.min_top1,
            self.labels,
            self.audit_sample_rate,
            None
            if shadow is None
            else Policy(shadow.temperature, shadow.min_margin, shadow.min_top1, self.labels),
        )
