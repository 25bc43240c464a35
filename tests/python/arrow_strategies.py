"""Hypothesis strategies for Arrow data of every type of the columnar format, nested up
to a given depth, built as pyarrow arrays directly (so nulls, offsets, union codes, run
ends, views and dictionaries come out exactly as drawn). Used by
tests/cross/test_arrow_types.py against the Elixir reader and writer (Bridge.Arrow)."""

from __future__ import annotations

import decimal
import string
from typing import Any

import pyarrow as pa
from hypothesis import strategies as st

UNITS = ("s", "ms", "us", "ns")
PER_SECOND = {"s": 1, "ms": 1000, "us": 10**6, "ns": 10**9}
INT_TYPES = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
UINT_TYPES = [pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
MAX_PRECISION = {32: 9, 64: 18, 128: 38, 256: 76}
DECIMALS = {32: pa.decimal32, 64: pa.decimal64, 128: pa.decimal128, 256: pa.decimal256}
NAMES = st.text(string.ascii_letters + "é_", max_size=5)


# ------------------------------------------------------------------------ types


@st.composite
def decimal_types(draw: st.DrawFn) -> pa.DataType:
    bits = draw(st.sampled_from(sorted(DECIMALS)))
    precision = draw(st.integers(1, MAX_PRECISION[bits]))
    # Negative scales: pyarrow refuses full-precision values at them ("would cause data
    # loss"); Elixir tests cover them (arrow_types_test.exs).
    return DECIMALS[bits](precision, draw(st.integers(0, precision)))


def leaf_types() -> st.SearchStrategy[pa.DataType]:
    return st.one_of(
        st.sampled_from(
            [
                *INT_TYPES,
                *UINT_TYPES,
                pa.float16(),
                pa.float32(),
                pa.float64(),
                pa.bool_(),
                pa.null(),
                pa.string(),
                pa.large_string(),
                pa.string_view(),
                pa.binary(),
                pa.large_binary(),
                pa.binary_view(),
                pa.date32(),
                pa.date64(),
                pa.time32("s"),
                pa.time32("ms"),
                pa.time64("us"),
                pa.time64("ns"),
                pa.month_day_nano_interval(),
                *[pa.duration(u) for u in UNITS],
                *[pa.timestamp(u, tz) for u in UNITS for tz in (None, "UTC", "+05:30")],
            ]
        ),
        st.integers(1, 9).map(pa.binary),
        decimal_types(),
    )


def fields_of(inner: st.SearchStrategy[pa.DataType], min_size: int = 1) -> Any:
    return st.lists(
        st.tuples(NAMES, inner, st.booleans()),
        min_size=min_size,
        max_size=3,
        unique_by=lambda f: f[0],
    ).map(lambda fs: [pa.field(n, t, nullable=nullable or t == pa.null()) for n, t, nullable in fs])


def item(t: pa.DataType, nullable: bool) -> pa.Field:
    return pa.field("item", t, nullable=nullable or t == pa.null())


def nested(inner: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
    """One level of nesting around types drawn from ``inner``."""
    keys = st.sampled_from([pa.string(), pa.int32(), pa.int64(), pa.binary(3)])
    return st.one_of(
        st.builds(lambda t, n: pa.list_(item(t, n)), inner, st.booleans()),
        st.builds(lambda t, n: pa.large_list(item(t, n)), inner, st.booleans()),
        st.builds(lambda t, n: pa.list_view(item(t, n)), inner, st.booleans()),
        st.builds(lambda t, n: pa.large_list_view(item(t, n)), inner, st.booleans()),
        st.builds(lambda t, n, k: pa.list_(item(t, n), k), inner, st.booleans(), st.integers(1, 3)),
        fields_of(inner).map(pa.struct),
        st.builds(lambda k, v, s: pa.map_(k, v, keys_sorted=s), keys, inner, st.booleans()),
        union_types(inner),
        st.builds(
            lambda e, v: pa.run_end_encoded(e, v),
            st.sampled_from([pa.int16(), pa.int32(), pa.int64()]),
            inner,
        ),
        st.builds(
            lambda i, v: pa.dictionary(i, v),
            st.sampled_from(INT_TYPES + UINT_TYPES[:3]),
            inner.filter(lambda t: not _holds_dictionary(t) and t != pa.null()),
        ),
    )


@st.composite
def union_types(draw: st.DrawFn, inner: st.SearchStrategy[pa.DataType]) -> pa.DataType:
    # pyarrow's union constructors make every member nullable.
    fields = [f.with_nullable(True) for f in draw(fields_of(inner))]
    codes = draw(
        st.lists(st.integers(0, 127), min_size=len(fields), max_size=len(fields), unique=True)
    )
    return pa.union(fields, draw(st.sampled_from(["sparse", "dense"])), codes)


def _holds_dictionary(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        return True
    return any(_holds_dictionary(t.field(i).type) for i in range(t.num_fields))


def arrow_types(depth: int = 4) -> st.SearchStrategy[pa.DataType]:
    """Any type, nested up to ``depth`` levels."""
    return st.recursive(leaf_types(), nested, max_leaves=depth + 2)


# ----------------------------------------------------------------------- values


def _leaf_values(t: pa.DataType) -> st.SearchStrategy[Any]:
    p = pa.types
    if p.is_integer(t):
        info = (t.bit_width, p.is_signed_integer(t))
        lo, hi = (
            (-(2 ** (info[0] - 1)), 2 ** (info[0] - 1) - 1) if info[1] else (0, 2 ** info[0] - 1)
        )
        return st.integers(lo, hi)
    if p.is_floating(t):
        return st.floats(allow_nan=False, width=t.bit_width)
    if p.is_boolean(t):
        return st.booleans()
    if p.is_null(t):
        return st.none()
    if p.is_string(t) or p.is_large_string(t) or p.is_string_view(t):
        return st.text(max_size=20)
    if p.is_fixed_size_binary(t):
        return st.binary(min_size=t.byte_width, max_size=t.byte_width)
    if p.is_binary(t) or p.is_large_binary(t) or p.is_binary_view(t):
        return st.binary(max_size=20)
    # Temporal values stay where pyarrow's to_pylist can represent them (years 1..9999,
    # within a timedelta): tests compare values through Python objects. The extremes of
    # each storage type are covered by tests/cross/test_arrow_codec.py.
    if p.is_date32(t):
        return st.integers(-719_162, 2_932_896)
    if p.is_date64(t):
        return st.integers(-719_162, 2_932_896).map(lambda d: d * 86_400_000)
    if p.is_time32(t) or p.is_time64(t):
        return st.integers(0, 86_400 * PER_SECOND[t.unit] - 1)
    if p.is_timestamp(t) or p.is_duration(t):
        bound = 4_600_000_000 * PER_SECOND[t.unit]
        return st.integers(-bound, bound)
    if p.is_interval(t):
        i32 = st.integers(-(2**31), 2**31 - 1)
        return st.builds(
            lambda m, d, n: pa.MonthDayNano([m, d, n]), i32, i32, st.integers(-(2**63), 2**63 - 1)
        )
    if p.is_decimal(t):
        digits = st.integers(-(10**t.precision) + 1, 10**t.precision - 1)
        exact = decimal.Context(prec=100)
        return digits.map(lambda c: decimal.Decimal(c).scaleb(-t.scale, context=exact))
    raise AssertionError(t)


def _storage(t: pa.DataType) -> pa.DataType | None:
    """The integer type pyarrow builds temporal arrays from (their stored integers)."""
    p = pa.types
    if p.is_date32(t) or p.is_time32(t):
        return pa.int32()
    if p.is_date64(t) or p.is_time64(t) or p.is_timestamp(t) or p.is_duration(t):
        return pa.int64()
    return None


def _mask(draw: st.DrawFn, n: int, nullable: bool) -> list[bool] | None:
    if not nullable or not draw(st.booleans()):
        return None
    return draw(st.lists(st.booleans(), min_size=n, max_size=n))


def _pa_mask(mask: list[bool] | None) -> pa.Array | None:
    return None if mask is None else pa.array(mask, pa.bool_())


@st.composite
def arrays(draw: st.DrawFn, t: pa.DataType, n: int, nullable: bool = True) -> pa.Array:
    """An array of type ``t`` and length ``n``; nulls only where ``nullable``."""
    p = pa.types
    if p.is_null(t):
        return pa.nulls(n)
    if p.is_struct(t):
        children = [draw(arrays(f.type, n, f.nullable)) for f in t]
        return pa.StructArray.from_arrays(
            children, fields=list(t), mask=_pa_mask(_mask(draw, n, nullable))
        )
    if p.is_list(t) or p.is_large_list(t) or p.is_map(t):
        return draw(_lists(t, n, nullable))
    if p.is_list_view(t) or p.is_large_list_view(t):
        return draw(_list_views(t, n, nullable))
    if p.is_fixed_size_list(t) and t.list_size == 0:
        # FixedSizeListArray.from_arrays divides by the size (SIGFPE in pyarrow 26).
        mask = _mask(draw, n, nullable)
        return pa.array([None if mask and mask[i] else [] for i in range(n)], t)
    if p.is_fixed_size_list(t):
        child = draw(arrays(t.value_type, n * t.list_size, t.value_field.nullable))
        return pa.FixedSizeListArray.from_arrays(
            child, type=t, mask=_pa_mask(_mask(draw, n, nullable))
        )
    if p.is_union(t):
        return draw(_unions(t, n))
    if p.is_run_end_encoded(t):
        return draw(_runs(t, n, nullable))
    if p.is_dictionary(t):
        size = draw(st.integers(1, 4))
        dictionary = draw(arrays(t.value_type, size))
        mask = _mask(draw, n, nullable)
        indices = draw(st.lists(st.integers(0, size - 1), min_size=n, max_size=n))
        index_array = pa.array(
            [None if mask and mask[i] else x for i, x in enumerate(indices)], t.index_type
        )
        return pa.DictionaryArray.from_arrays(index_array, dictionary)
    values = draw(st.lists(_leaf_values(t), min_size=n, max_size=n))
    mask = _mask(draw, n, nullable)
    values = [None if mask and mask[i] else v for i, v in enumerate(values)]
    storage = _storage(t)
    if storage is not None:
        return pa.array(values, storage).view(t)
    return pa.array(values, t)


def _offsets(draw: st.DrawFn, n: int) -> list[int]:
    sizes = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    return offsets


@st.composite
def _lists(draw: st.DrawFn, t: pa.DataType, n: int, nullable: bool) -> pa.Array:
    offsets = _offsets(draw, n)
    mask = _mask(draw, n, nullable)
    large = pa.types.is_large_list(t)
    off = pa.array(offsets, pa.int64() if large else pa.int32())
    if pa.types.is_map(t):
        keys = draw(arrays(t.key_type, offsets[-1], False))
        items = draw(arrays(t.item_type, offsets[-1], t.item_field.nullable))
        if mask:
            off = pa.array(
                [None if i < n and mask[i] else o for i, o in enumerate(offsets)], pa.int32()
            )
        return pa.MapArray.from_arrays(off, keys, items, type=t)
    child = draw(arrays(t.value_type, offsets[-1], t.value_field.nullable))
    cls = pa.LargeListArray if large else pa.ListArray
    return cls.from_arrays(off, child, type=t, mask=_pa_mask(mask))


@st.composite
def _list_views(draw: st.DrawFn, t: pa.DataType, n: int, nullable: bool) -> pa.Array:
    total = draw(st.integers(0, 6))
    child = draw(arrays(t.value_type, total, t.value_field.nullable))
    starts = draw(st.lists(st.integers(0, total), min_size=n, max_size=n))
    sizes = [draw(st.integers(0, total - s)) for s in starts]
    width = pa.int64() if pa.types.is_large_list_view(t) else pa.int32()
    cls = pa.LargeListViewArray if pa.types.is_large_list_view(t) else pa.ListViewArray
    return cls.from_arrays(
        pa.array(starts, width),
        pa.array(sizes, width),
        child,
        type=t,
        mask=_pa_mask(_mask(draw, n, nullable)),
    )


@st.composite
def _unions(draw: st.DrawFn, t: pa.DataType, n: int) -> pa.Array:
    codes = list(t.type_codes)
    names = [t.field(i).name for i in range(t.num_fields)]
    picks = draw(st.lists(st.integers(0, len(codes) - 1), min_size=n, max_size=n))
    types = pa.array([codes[i] for i in picks], pa.int8())
    if t.mode == "sparse":
        children = [draw(arrays(f.type, n, f.nullable)) for f in t]
        return pa.UnionArray.from_sparse(types, children, names, codes)
    counts = [picks.count(i) for i in range(len(codes))]
    children = [draw(arrays(f.type, c, f.nullable)) for f, c in zip(t, counts, strict=False)]
    seen = [0] * len(codes)
    offsets = []
    for i in picks:
        offsets.append(seen[i])
        seen[i] += 1
    return pa.UnionArray.from_dense(types, pa.array(offsets, pa.int32()), children, names, codes)


@st.composite
def _runs(draw: st.DrawFn, t: pa.DataType, n: int, nullable: bool) -> pa.Array:
    if n == 0:
        return pa.RunEndEncodedArray.from_arrays(
            pa.array([], t.run_end_type), draw(arrays(t.value_type, 0)), t
        )
    inner = st.sets(st.integers(1, n - 1), max_size=4) if n > 1 else st.just(set())
    cuts = [*sorted(draw(inner)), n]
    values = draw(arrays(t.value_type, len(cuts), nullable))
    return pa.RunEndEncodedArray.from_arrays(pa.array(cuts, t.run_end_type), values, t)
