"""``strings: :str`` (beambridge.strings): every argument binary becomes str, or the call
fails naming where the binary that is not UTF-8 was."""

from __future__ import annotations

from typing import Any

import pytest
from beambridge.errors import BridgeError
from beambridge.strings import to_str
from hypothesis import given
from hypothesis import strategies as st

_text = st.text(max_size=20)
_leaves = st.one_of(_text.map(lambda s: s.encode()), st.integers(), st.floats(allow_nan=False))


def _nested(leaves: Any) -> Any:
    return st.recursive(
        leaves,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.tuples(inner, inner),
            st.dictionaries(_text.map(lambda s: s.encode()), inner, max_size=4),
        ),
        max_leaves=20,
    )


def _decoded(value: Any) -> Any:
    if type(value) is bytes:
        return value.decode()
    if type(value) is list:
        return [_decoded(v) for v in value]
    if type(value) is tuple:
        return tuple(_decoded(v) for v in value)
    if type(value) is dict:
        return {_decoded(k): _decoded(v) for k, v in value.items()}
    return value


@given(st.lists(_nested(_leaves), max_size=4))
def test_every_binary_becomes_str_and_nothing_else_changes(args: list[Any]) -> None:
    assert to_str(args) == _decoded(args)


@given(st.lists(_nested(_leaves), min_size=1, max_size=3), st.data())
def test_a_binary_that_is_not_utf8_anywhere_is_refused(args: list[Any], data: Any) -> None:
    where = data.draw(st.integers(0, len(args) - 1))
    args[where] = [args[where], {b"k": b"ok\xff"}]
    with pytest.raises(BridgeError) as info:
        to_str(args)
    assert info.value.reason == "invalid_utf8"
    assert f"argument {where} [1] ['k'] is not UTF-8" in str(info.value)


def test_views_arrays_and_atoms_are_left_alone() -> None:
    import numpy as np
    from beambridge.etf import Atom

    view, array, atom = memoryview(b"\xff"), np.arange(3), Atom("ok")
    out = to_str([view, array, atom, b"x"])
    assert out[0] is view and out[1] is array and out[2] is atom and out[3] == "x"
