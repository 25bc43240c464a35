"""Hypothesis strategies for values format selection cares about (protocol/SPEC.md
§10.1), shared by tests/python/test_select.py and tests/cross/test_cross_formats.py."""

from __future__ import annotations

from typing import Any

from beambridge.etf import Atom
from hypothesis import strategies as st

INT64 = (-(2**63), 2**63 - 1)
RANGES = [(-128, 127), (0, 255), (-(2**15), 2**15 - 1), (0, 2**16 - 1), (-(2**31), 2**31 - 1),
          (0, 2**32 - 1), INT64, (0, 2**64 - 1)]  # fmt: skip


@st.composite
def number_lists(draw: st.DrawFn) -> list[Any]:
    n = draw(st.integers(2, 600))
    if draw(st.booleans()):
        lo, hi = draw(st.sampled_from(RANGES))
        values = draw(st.lists(st.integers(lo, hi), min_size=n, max_size=n))
        return [*values, lo, hi] if draw(st.booleans()) else values
    return draw(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=n,
                         max_size=n))  # fmt: skip


WORDS = ["", "a", "id", "grün", "青", "🎉", "x y", "name"]
KINDS = ["int", "float", "bool", "bytes", "str", "null"]


def column(kind: str, n: int, nullable: bool) -> st.SearchStrategy[list[Any]]:
    base: st.SearchStrategy[Any] = {
        "int": st.integers(*INT64),
        "float": st.floats(allow_nan=False, allow_infinity=False),
        "bool": st.booleans(),
        "bytes": st.binary(max_size=12),
        "str": st.text(max_size=8),
        "null": st.none(),
    }[kind]
    if nullable and kind != "null":
        base = st.one_of(st.none(), base)
    return st.lists(base, min_size=n, max_size=n)


@st.composite
def records(draw: st.DrawFn, max_rows: int = 40) -> Any:
    """A record list or a column map: one key kind, one column kind per key."""
    names = draw(st.lists(st.sampled_from(WORDS), min_size=1, max_size=5, unique=True))
    key_kind = draw(st.sampled_from(["str", "atom", "bytes"]))
    keys = [n if key_kind == "str" else Atom(n) if key_kind == "atom" else n.encode()
            for n in names]  # fmt: skip
    n = draw(st.integers(0, max_rows))
    cols = {k: draw(column(draw(st.sampled_from(KINDS)), n, draw(st.booleans()))) for k in keys}
    if n == 0 or draw(st.booleans()):
        return cols
    return [{k: cols[k][i] for k in keys} for i in range(n)]
