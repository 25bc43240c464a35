"""Plans for batches of typed-schema values (`beambridge.ssz_batch`): a list of values of
one container read and written by compiled code, not by Python a field and a value at a
time.

A plan exists for a container whose fields are all numbers, booleans and vectors of
numbers (its fixed part), strings, bytes and lists of numbers. It runs in C when the
extension module `beambridge._sszc` (``beambridge/_sszc.c``) is built, as `make build`
and a wheel build do: one pass over the values, four to six times the speed of the
other way. Without it, a field at a time with NumPy and Arrow: reading gathers each
field's bytes from all the values into one buffer and makes its Python values in one
pass (`tolist`, or Arrow's `to_pylist` for strings, bytes and lists), the fixed part
one NumPy structured dtype; writing makes each field one array and joins each value's
parts with Arrow's ``binary_join_element_wise``. Either way the bytes are exactly the
value-at-a-time codec's.

A plan never decides what is wrong: whenever a value does not fit as it is (a type to
check or convert, a number out of range, bad bytes), it gives up with None and the
caller's exact codec does the whole batch again, naming the index and the field.

>>> from dataclasses import dataclass
>>> from beambridge.ssz import schema, schema_type, to_ssz
>>> from beambridge.types import String, List, uint16
>>> @schema("example.Columns", version="1.0")
... @dataclass
... class Columns:
...     name: String
...     layers: List[uint16, 8]
>>> p = plan(schema_type(Columns))
>>> data = p.encode([Columns("a", [1, 2]), Columns("bc", [])])
>>> data.hex()
'080000001500000008000000090000006101000200080000000a0000006263'
>>> p.decode(memoryview(data))
[Columns(name='a', layers=[1, 2]), Columns(name='bc', layers=[])]
>>> p.encode([Columns("a", [70000])]) is None  # the exact codec names it
True
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .types import (
    FLOAT32_MAX,
    Boolean,
    BytesType,
    Float,
    Int,
    ListType,
    StringType,
    UInt,
    VectorType,
)

try:
    from . import _sszc as _native_module
except ImportError:  # not built: NumPy and Arrow do it
    _native_module = None

#: The C plans, or None; tests set it to None to run the NumPy and Arrow ones.
native: Any = _native_module

__all__ = ["Plan", "plan"]

#: SSZ offsets are u32: a list ends within 4 GiB.
OFFSET_LIMIT = 1 << 32
#: Bytes gathered or scattered at a time: the index arrays stay this many int64s.
_BLOCK = 1 << 18
_BINARY = pa.large_binary()
_NOTHING = pa.scalar(b"", _BINARY)

_DTYPES = {
    "B": "u1", "H": "<u2", "I": "<u4", "Q": "<u8",
    "b": "i1", "h": "<i2", "i": "<i4", "q": "<i8",
    "f": "<f4", "d": "<f8", "?": "u1",
}  # fmt: skip
_ARROW = {
    "B": pa.uint8(), "H": pa.uint16(), "I": pa.uint32(), "Q": pa.uint64(),
    "b": pa.int8(), "h": pa.int16(), "i": pa.int32(), "q": pa.int64(),
    "f": pa.float32(), "d": pa.float64(),
}  # fmt: skip


def _number(t: Any) -> bool:
    return isinstance(t, (UInt, Int, Float))


def _fixed(t: Any) -> bool:
    """A field of the fixed part the dtype holds as it is."""
    return _number(t) or isinstance(t, Boolean) or (isinstance(t, VectorType) and _number(t.elem))


#: Field kinds as beambridge/_sszc.c numbers them (its enum), then string 11, bytes 12,
#: list 13, vector 14.
_KINDS = {
    name: k
    for k, name in enumerate(
        ["uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
         "float32", "float64", "boolean"]
    )
}  # fmt: skip


def _kind(t: Any) -> tuple[int, int, int]:
    """A field as beambridge/_sszc.c takes it: (kind, element kind, n)."""
    if isinstance(t, StringType):
        return (11, 0, 0)
    if isinstance(t, BytesType):
        return (12, 0, 0)
    if isinstance(t, ListType):
        return (13, _KINDS[t.elem.name], t.limit)
    if isinstance(t, VectorType):
        return (14, _KINDS[t.elem.name], t.length)
    return (_KINDS[t.name], 0, 0)


def _variable(t: Any) -> bool:
    """A variable-size field a plan reads and writes as a column."""
    return isinstance(t, (StringType, BytesType)) or (isinstance(t, ListType) and _number(t.elem))


@functools.cache
def plan(t: Any) -> Plan | None:
    """The column plan of container ``t``, or None when a field is of a type it does not
    take (unions, optionals, nested containers, lists of anything but numbers)."""
    fields: list[Any] = []
    if not t.fields:
        return None
    for name, ft, _ in t.fields:
        if _fixed(ft):
            e: Any = ft.elem if isinstance(ft, VectorType) else ft
            shape = (ft.length,) if isinstance(ft, VectorType) else ()
            fields.append((name, _DTYPES[e.code], shape))
        elif _variable(ft):
            fields.append((name, "<u4"))
        else:
            return None
    return Plan(t, np.dtype(fields))


class Plan:
    """How the values of one container are read and written a field at a time."""

    def __init__(self, t: Any, dtype: np.dtype[Any]) -> None:
        self.t, self.dtype, self.size = t, dtype, dtype.itemsize
        self.fields = [(name, ft) for name, ft, _ in t.fields]
        self.variable = [(name, ft) for name, ft in self.fields if _variable(ft)]
        self.make = t.cls
        self.spec = tuple((name, *_kind(ft)) for name, ft in self.fields)

    # ---- reading ----------------------------------------------------------------------

    def decode(self, b: memoryview) -> list[Any] | None:
        """The values of the SSZ list ``b`` (not empty), or None when one is bad."""
        if native is not None:
            return native.decode(b, self.spec, self.size, self.make)  # type: ignore[no-any-return]
        buf = np.frombuffer(b, dtype="u1")
        if not self.variable:
            if len(buf) % self.size:
                return None
            return self._make(buf.view(self.dtype), None, None)
        found = spans(buf)
        if found is None:
            return None
        starts, ends = found
        if (ends - starts < self.size).any():
            return None
        fixed = _gather_rows(buf, starts, self.size).view(self.dtype).reshape(len(starts))
        return self._make(fixed, buf, (starts, ends))

    def _make(self, fixed: Any, buf: Any, bounds: Any) -> list[Any] | None:
        columns: dict[str, Any] = {}
        for name, ft in self.fields:
            if not _variable(ft):
                col = fixed[name]
                if isinstance(ft, Boolean):
                    if (col > 1).any():
                        return None
                    col = col.astype(bool)
                elif isinstance(getattr(ft, "elem", ft), Float) and not np.isfinite(col).all():
                    return None
                columns[name] = col.tolist()
        if self.variable:
            starts, ends = bounds
            lengths = ends - starts
            offsets = [fixed[name].astype(np.int64) for name, _ in self.variable]
            if (offsets[0] != self.size).any():
                return None
            for k, (name, ft) in enumerate(self.variable):
                hi = offsets[k + 1] if k + 1 < len(self.variable) else lengths
                if (offsets[k] > hi).any() or (hi > lengths).any():
                    return None
                col = _read_column(ft, buf, starts + offsets[k], starts + hi)
                if col is None:
                    return None
                columns[name] = col
        return list(map(self.make, *[columns[name] for name, _ in self.fields]))

    # ---- writing ----------------------------------------------------------------------

    def encode(self, values: Sequence[Any]) -> bytes | None:
        """The SSZ list of ``values`` (not empty), or None when one may not fit."""
        if native is not None:
            rows = values if type(values) is list else list(values)
            return native.encode(rows, self.spec, self.size)  # type: ignore[no-any-return]
        n = len(values)
        fixed = np.empty(n, dtype=self.dtype)
        parts: list[Any] = []  # each variable field's values, as an Arrow binary array
        try:
            for name, ft in self.fields:
                column = list(map(attrgetter(name), values))
                if _variable(ft):
                    part = _write_column(ft, column)
                    if part is None:
                        return None
                    parts.append(part)
                else:
                    col = _fixed_column(ft, column, n)
                    if col is None:
                        return None
                    fixed[name] = col
        except AttributeError:
            return None
        if not parts:
            return fixed.tobytes()
        at: Any = np.full(n, self.size, dtype=np.int64)  # each value's next offset
        for (name, _), part in zip(self.variable, parts, strict=True):
            fixed[name] = at
            at += np.diff(np.frombuffer(part.buffers()[1], dtype=np.int64))
        table = 4 * n
        if table + int(at.sum()) >= OFFSET_LIMIT:
            return None  # the exact codec says how many bytes, and what to do
        rows = pa.Array.from_buffers(pa.binary(self.size), n, [None, pa.py_buffer(fixed)])
        # each value: its fixed part, then its variable parts, joined by Arrow's kernel
        joined = pc.binary_join_element_wise(rows.cast(_BINARY), *parts, _NOTHING)
        _, offsets, body = joined.buffers()
        heads = np.frombuffer(offsets, dtype=np.int64)[:n] + table
        return b"".join((heads.astype("<u4").tobytes(), body))


# ---- columns ----------------------------------------------------------------------------


def _read_column(ft: Any, buf: Any, lo: Any, hi: Any) -> list[Any] | None:
    """The values of a variable-size field whose bytes are ``buf[lo[i]:hi[i]]``."""
    lengths = hi - lo
    data = _gather(buf, lo, lengths)
    if isinstance(ft, ListType):
        e: Any = ft.elem
        size = e.fixed_size
        if (lengths % size).any() or (lengths > size * ft.limit).any():
            return None
        flat = data.view(_DTYPES[e.code])
        if isinstance(e, Float) and not np.isfinite(flat).all():
            return None
        items = pa.Array.from_buffers(_ARROW[e.code], len(flat), [None, pa.py_buffer(flat)])
        arrow_type: Any = pa.large_list(_ARROW[e.code])
        offsets = _offsets(lengths // size)
        return pa.Array.from_buffers(  # type: ignore[no-any-return]
            arrow_type, len(lengths), [None, pa.py_buffer(offsets)], children=[items]
        ).to_pylist()
    arrow_type = pa.large_string() if isinstance(ft, StringType) else pa.large_binary()
    column = pa.Array.from_buffers(
        arrow_type, len(lengths), [None, pa.py_buffer(_offsets(lengths)), pa.py_buffer(data)]
    )
    try:
        column.validate(full=True)  # UTF-8, each string alone
    except pa.ArrowInvalid:
        return None
    return column.to_pylist()  # type: ignore[no-any-return]


def _write_column(ft: Any, column: list[Any]) -> Any:
    """A variable-size field's bytes as an Arrow ``large_binary`` array, one value each."""
    kinds = set(map(type, column))
    if isinstance(ft, ListType):
        if not kinds <= {list, tuple}:
            return None
        lengths = np.fromiter(map(len, column), dtype=np.int64, count=len(column))
        if (lengths > ft.limit).any():
            return None
        flat = list(itertools.chain.from_iterable(column))
        col = _fixed_column(ft.elem, flat, len(flat))
        if col is None:
            return None
        e: Any = ft.elem
        data = np.asarray(col, dtype=_DTYPES[e.code])
        offsets = _offsets(lengths * e.fixed_size)
        buffers = [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        return pa.Array.from_buffers(_BINARY, len(column), buffers)
    if isinstance(ft, StringType):
        if not kinds <= {str}:
            return None
        try:
            return pa.array(column, pa.large_string()).cast(_BINARY)
        except UnicodeEncodeError:  # a lone surrogate: the exact codec names it
            return None
    if not kinds <= {bytes}:
        return None
    return pa.array(column, _BINARY)


def _fixed_column(ft: Any, column: Sequence[Any], n: int) -> Any:
    """A column of the fixed part as an array of its type, checked; None when a value
    does not fit as it is."""
    if isinstance(ft, VectorType):  # every row a list or tuple of its length
        if not set(map(type, column)) <= {list, tuple} or set(map(len, column)) - {ft.length}:
            return None
        flat = list(itertools.chain.from_iterable(column))
        col = _fixed_column(ft.elem, flat, len(flat))
        return None if col is None else col.reshape(n, ft.length)
    kinds = set(map(type, column))
    if isinstance(ft, Boolean):
        return np.array(column, dtype="u1") if kinds <= {bool} else None
    if isinstance(ft, Float):
        if not kinds <= {float, int}:
            return None
        try:
            col = np.array(column, dtype="<f8")
        except OverflowError:
            return None
        if kinds != {float} and (np.abs(col) >= 2.0**53).any():
            return None
        limit = FLOAT32_MAX if ft.bits == 32 else np.finfo("f8").max
        if not np.isfinite(col).all() or (np.abs(col) > limit).any():
            return None
        return col
    if not kinds <= {int}:
        return None
    try:
        col = np.array(column, dtype="<u8" if isinstance(ft, UInt) and ft.bits == 64 else "<i8")
    except OverflowError:
        return None
    if ft.bits < 64 and (
        (col < ft.low if isinstance(ft, Int) else col < 0).any() or (col > ft.high).any()
    ):
        return None
    return col


# ---- gathering and scattering -----------------------------------------------------------


def spans(buf: Any) -> tuple[Any, Any] | None:
    """Where each of a list of variable-size values starts and ends (``buf`` its bytes,
    a NumPy ``u1`` array), or None when the offsets are bad."""
    if len(buf) < 4:
        return None
    first = int(buf[:4].view("<u4")[0])
    if first % 4 or not 4 <= first <= len(buf):
        return None
    starts = buf[:first].view("<u4").astype(np.int64)
    ends = np.append(starts[1:], len(buf))
    if (starts > ends).any():
        return None
    return starts, ends


def _offsets(lengths: Any) -> Any:
    """Arrow's offsets (int64, one more than the values) of values of ``lengths``."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def _blocks(offsets: Any) -> Iterator[tuple[int, int]]:
    """Ranges of values whose bytes (``offsets``, as `_offsets` makes) are about
    `_BLOCK` together; a value larger than that is a range of its own."""
    n, i = len(offsets) - 1, 0
    while i < n:
        j = int(np.searchsorted(offsets, offsets[i] + _BLOCK, side="right")) - 1
        j = min(max(j, i + 1), n)
        yield i, j
        i = j


def _ranges(starts: Any, lengths: Any, offsets: Any) -> Any:
    """The indices of ``[starts[k], starts[k] + lengths[k])``, one range after another;
    ``offsets`` are where each begins among them. (One pass: steps of 1, and at the
    first index of each range the jump from the end of the one before, summed.)"""
    steps = np.ones(int(offsets[-1] - offsets[0]), dtype=np.int64)
    some = lengths > 0
    firsts, lens = starts[some], lengths[some]
    if len(firsts):
        at = offsets[:-1][some] - offsets[0]
        steps[at[0]] = firsts[0]
        steps[at[1:]] = firsts[1:] - (firsts[:-1] + lens[:-1] - 1)
    return np.cumsum(steps, out=steps)


def _gather(buf: Any, lo: Any, lengths: Any) -> Any:
    """``buf[lo[k]:lo[k] + lengths[k]]`` for every k, one after another."""
    offsets = _offsets(lengths)
    out = np.empty(int(offsets[-1]), dtype="u1")
    for i, j in _blocks(offsets):
        out[offsets[i] : offsets[j]] = buf[_ranges(lo[i:j], lengths[i:j], offsets[i : j + 1])]
    return out


def _gather_rows(buf: Any, starts: Any, size: int) -> Any:
    """The ``size`` bytes at each of ``starts``, as rows."""
    out = np.empty((len(starts), size), dtype="u1")
    step = max(_BLOCK // size, 1)
    width = np.arange(size, dtype=np.int64)
    for i in range(0, len(starts), step):
        out[i : i + step] = buf[starts[i : i + step, None] + width]
    return out
