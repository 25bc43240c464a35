"""Hypothesis strategies for typed schemas (protocol/formats/ssz.md): schemas of every
field type, containers nested three deep, and values of them. Shared by
tests/python/test_ssz.py and tests/cross/test_ssz_cross.py."""

from __future__ import annotations

import dataclasses
from typing import Any

from beambridge import ssz
from beambridge import types as bt
from hypothesis import strategies as st

_counter = iter(range(10**9))

BASIC = [
    bt.uint8, bt.uint16, bt.uint32, bt.uint64,
    bt.int8, bt.int16, bt.int32, bt.int64,
    bt.float32, bt.float64, bt.boolean, bt.Bytes, bt.String,
]  # fmt: skip


def types(depth: int) -> st.SearchStrategy[bt.SszType]:
    basic = st.sampled_from(BASIC)
    if depth == 0:
        return basic
    inner = types(depth - 1)
    return st.one_of(
        basic,
        st.builds(lambda t, n: bt.List[t, n], inner, st.integers(0, 6)),
        st.builds(lambda t, n: bt.Vector[t, n], inner, st.integers(1, 4)),
        st.builds(lambda t: bt.Optional[t], inner.filter(_not_union)),
        st.builds(
            lambda ts: bt.Union[(None, *ts)],
            st.lists(inner.filter(_not_union), min_size=1, max_size=3),
        ),
        containers(depth - 1),
    )


def _not_union(t: bt.SszType) -> bool:
    return not isinstance(t, bt.UnionType)


def containers(depth: int) -> st.SearchStrategy[bt.SszType]:
    return st.lists(types(depth), min_size=1, max_size=5).map(_container)


def _container(field_types: list[bt.SszType]) -> bt.SszType:
    name = f"C{next(_counter)}"
    cls = dataclasses.make_dataclass(name, [(f"f{i}", t) for i, t in enumerate(field_types)])
    ssz.schema(f"test.{name}", version="1.0")(cls)
    return ssz.schema_type(cls)


def values(t: bt.SszType) -> st.SearchStrategy[Any]:
    if isinstance(t, bt.UInt):
        return st.integers(0, t.high)
    if isinstance(t, bt.Int):
        return st.integers(t.low, t.high)
    if isinstance(t, bt.Float):
        width = 32 if t.bits == 32 else 64
        return st.floats(allow_nan=False, allow_infinity=False, width=width)
    if isinstance(t, bt.Boolean):
        return st.booleans()
    if isinstance(t, bt.BytesType):
        return st.binary(max_size=20)
    if isinstance(t, bt.StringType):
        return st.text(max_size=10)
    if isinstance(t, bt.ListType):
        return st.lists(values(t.elem), max_size=t.limit)
    if isinstance(t, bt.VectorType):
        return st.lists(values(t.elem), min_size=t.length, max_size=t.length)
    if isinstance(t, bt.UnionType):
        if t.name.startswith("Optional["):
            return st.none() | values(t.options[1])  # type: ignore[arg-type]
        return st.one_of(
            st.just((0, None)),
            *[values(o).map(lambda v, i=i: (i, v)) for i, o in enumerate(t.options) if o],
        )
    assert isinstance(t, ssz.ContainerType)
    return st.tuples(*[values(ft) for _, ft, _ in t.fields]).map(lambda vs: t.cls(*vs))


@st.composite
def schema_and_value(draw: Any) -> tuple[ssz.ContainerType, Any]:
    t = draw(containers(3))
    return t, draw(values(t))


@st.composite
def nested_schema_and_value(draw: Any) -> tuple[ssz.ContainerType, Any]:
    """A container whose first field is a container (itself nesting up to two more)."""
    inner = draw(containers(2))
    t = _container([inner, *draw(st.lists(types(2), max_size=3))])
    return t, draw(values(t))
