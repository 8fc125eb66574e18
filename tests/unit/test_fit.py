"""Outputs checked against their topics' limits before they are sent (``worker.stream.limits``),
and the dead letters and claim checks that take their place."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.consumed import Consumed
from worker.core.records import DLQ_PREFIX, Outbound, Router
from worker.core.settings import Settings
from worker.stream.connections import FatalError
from worker.stream.limits import Fitter, TopicLimit, refusal, surely_fit

SETTINGS = Settings(topics={"in": {"temperature": 1.0, "min_margin": 0.1}})
OUT = SETTINGS.outputs
ROOMY = TopicLimit(max_bytes=1_000_000, compacted=False)


def fitter(routed: int = 1_000_000, dlq: int = 1_000_000, compacted: bool = False) -> Fitter:
    limits = {
        OUT.routed: TopicLimit(routed, compacted),
        OUT.escalated: ROOMY,
        OUT.dead_letter: TopicLimit(dlq, False),
    }
    return Fitter(Router(SETTINGS), SETTINGS.kafka, limits)


def record(value: bytes, key: bytes | None = b"k", offset: int = 5) -> Consumed:
    return Consumed("in", 2, offset, 1_800_000_000_000, key, value, [("trace", b"t")])


def event(padding: int = 0) -> bytes:
    return orjson.dumps({"id": "e", "logits": [9.0, 0.0], "metadata": {"pad": "x" * padding}})


def fit(f: Fitter, rec: Consumed) -> tuple[str, bytes | None, dict[str, bytes], bytes | None]:
    (o,) = f.fit([rec], f.router.process([rec]))
    return o.topic, o.key, dict(o.headers), o.value


def test_an_output_that_fits_is_left_as_it_is() -> None:
    rec = record(event())
    f = fitter()
    assert fit(f, rec) == fit(Fitter(f.router, SETTINGS.kafka, {}), rec)
    assert fit(f, rec)[0] == OUT.routed


def test_an_output_too_large_for_its_topic_is_dead_lettered_unchanged() -> None:
    rec = record(event(padding=3000))
    topic, key, headers, value = fit(fitter(routed=3000), rec)
    assert (topic, key, value) == (OUT.dead_letter, b"k", rec.value)
    assert headers[DLQ_PREFIX + "reason"] == b"output_too_large"
    assert headers["trace"] == b"t"


def test_a_keyless_output_for_a_compacted_topic_is_dead_lettered() -> None:
    topic, _, headers, _ = fit(fitter(compacted=True), record(event(), key=None))
    assert topic == OUT.dead_letter
    assert headers[DLQ_PREFIX + "reason"] == b"output_refused"


def test_a_dead_letter_too_large_for_its_topic_becomes_a_claim_check() -> None:
    rec = record(b"not json" * 1000, offset=42)
    topic, key, headers, value = fit(fitter(dlq=5000), rec)
    assert (topic, key, value) == (OUT.dead_letter, None, None)
    assert headers[DLQ_PREFIX + "reason"] == b"dead_letter_too_large"
    assert headers[DLQ_PREFIX + "original_reason"] == b"not_json"
    assert headers[DLQ_PREFIX + "source.offset"] == b"42"
    assert headers[DLQ_PREFIX + "source.partition"] == b"2"
    assert "trace" not in headers


def test_an_output_too_large_whose_dead_letter_is_too_large_too_becomes_a_claim_check() -> None:
    _, _, headers, value = fit(fitter(routed=3000, dlq=3000), record(event(padding=3000)))
    assert value is None
    assert headers[DLQ_PREFIX + "original_reason"] == b"output_too_large"


def test_a_dead_letter_topic_too_small_even_for_a_claim_check_stops_the_worker() -> None:
    with pytest.raises(FatalError, match="claim check"):
        fit(fitter(dlq=200), record(b"not json"))


def test_dlq_headers_a_record_already_carries_are_renamed_prior() -> None:
    rec = Consumed(
        "in", 0, 9, 0, None, b"not json", [("dlq.reason", b"old"), ("dlq.source.offset", b"1")]
    )
    (o,) = Router(SETTINGS).process([rec])
    names = [name for name, _ in o.headers]
    assert names[:2] == ["prior.dlq.reason", "prior.dlq.source.offset"]
    ours = {name: value for name, value in o.headers if name.startswith(DLQ_PREFIX)}
    assert ours[DLQ_PREFIX + "source.offset"] == b"9"
    assert ours[DLQ_PREFIX + "reason"] == b"not_json"


@settings(max_examples=300, deadline=None)
@given(
    outputs=st.lists(
        st.builds(
            lambda key, size, headers: Outbound(
                OUT.routed, key, b"x" * size, headers, "routed", None, "in", 0, 0, 0, None
            ),
            st.none() | st.binary(max_size=300),
            st.integers(0, 5000),
            st.lists(st.tuples(st.text(max_size=40), st.binary(max_size=300)), max_size=4),
        ),
        min_size=1,
        max_size=30,
    ),
    limit=st.integers(1, 6000),
)
def test_a_whole_batch_judged_at_once_never_passes_what_one_record_would_not(
    outputs: list[Outbound], limit: int
) -> None:
    """The batch's bound, read in C, only says "all fit" when every output does alone."""
    limits = {OUT.routed: TopicLimit(limit, False), OUT.escalated: ROOMY}
    if surely_fit(outputs, limits):
        assert all(refusal(o, limits[o.topic]) is None for o in outputs)


def test_a_batch_of_ordinary_outputs_is_judged_at_once() -> None:
    f = fitter()
    recs = [record(event(padding=100), offset=i) for i in range(50)]
    assert surely_fit(f.router.process(recs), f.limits)
    assert not surely_fit(f.router.process(recs), {**f.limits, OUT.routed: TopicLimit(300, False)})
    assert not surely_fit(f.router.process(recs), {**f.limits, OUT.routed: TopicLimit(10**6, True)})
