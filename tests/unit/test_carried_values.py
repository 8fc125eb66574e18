"""What an event carries reaches its output with the same JSON values: integers of any size,
floats however they are spelled, unicode, nesting. On both paths (compiled and Python), which
also write the same bytes."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.consumed import Consumed
from worker.core.records import Outbound, Router
from worker.core.settings import Settings

TOPICS = {"t": {"temperature": 0.7, "min_margin": 0.1}}
ROUTERS = [
    Router(Settings(topics=TOPICS, processing={"native": native})) for native in (True, False)
]

# Integers up to the size a double can stand for: a longer literal is refused as non-finite.
INTEGERS = st.integers(min_value=-(10**300), max_value=10**300)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALARS = st.none() | st.booleans() | INTEGERS | FLOATS | st.text(max_size=12)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=16,
)


@st.composite
def spelled(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text, each number and string in one of its valid spellings."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        padded = text + "00" if "." in text and "e" not in text else text
        return draw(st.sampled_from([text, f"{value:.17e}", f"{value:.17E}", padded]))
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=draw(st.booleans()))
    if isinstance(value, list):
        return "[" + " , ".join(draw(spelled(v)) for v in value) + "]"
    items = (f"{json.dumps(k)}: {draw(spelled(v))}" for k, v in value.items())
    return "{" + ",".join(items) + "}"


def route_both(raw: bytes) -> list[Outbound]:
    record = Consumed("t", 0, 7, 1_800_000_000_000, b"k", raw, [])
    return [router.process([record])[0] for router in ROUTERS]


@given(
    data=st.data(),
    metadata=st.dictionaries(st.text(max_size=6), VALUES, max_size=4),
    carried=VALUES,
)
def test_carried_values_keep_their_meaning_on_both_paths(
    data: st.DataObject, metadata: dict[str, Any], carried: Any
) -> None:
    meta, extra = data.draw(spelled(metadata)), data.draw(spelled(carried))
    check_carried(f'{{"id": "e-1", "logits": [3.2, 2.8, 0.5], "metadata": {meta}, "x": {extra}}}')


def test_integers_past_64_bits_are_carried_digit_for_digit() -> None:
    out = check_carried(
        '{"id": "e-1", "logits": [3.2, 2.8, 0.5], "trace": 123456789012345678901234567890,'
        ' "metadata": {"account": 98765432109876543210, "low": -9223372036854775809}}'
    )
    assert b'"trace":123456789012345678901234567890' in out
    assert b'{"account":98765432109876543210,"low":-9223372036854775809}' in out


def check_carried(text: str) -> bytes:
    """Route ``text`` on both paths; every field but the added ones keeps its JSON value."""
    raw = text.encode()
    compiled, python = route_both(raw)
    assert compiled == python  # the same bytes, the same decision
    assert python.kind in ("routed", "escalated"), python.headers
    assert python.value is not None
    sent, out = json.loads(raw), json.loads(python.value)
    carried = {k: out[k] for k in sent}
    assert carried == sent
    assert _types(carried) == _types(sent)  # an integer stays an integer, a float a float
    return python.value


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    return type(value).__name__
