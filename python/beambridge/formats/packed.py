"""Packed number lists (protocol/SPEC.md §10.1).

A **number list** (at least 2 elements, all ``int`` in one of the int64/uint64 ranges,
or all finite ``float``) goes **packed**: ``{:"$bb_packed", dtype, data}`` with the
narrowest of the registry's nine `PACKED_DTYPES`, or a slice of kind ``packed`` holding
a schema-0 tensor frame ``{dtype, [length]}``. The receiver gets the same ``list`` ETF
would give.

>>> c = classify_numbers([1, 2, 300])
>>> c.dtype
'<i2'
>>> unpack(b"<i2", pack([1, 2, 300], c.dtype).tobytes())
[1, 2, 300]
>>> classify_numbers([1, 2.5]).code
'mixed_numbers'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import etf, registry
from ..errors import EtfError
from ..frame import Frame
from ..header import Format
from .selection import Unsuitable

__all__ = [
    "FLOAT_DTYPE",
    "INT_DTYPES",
    "PACKED_DTYPES",
    "SCHEMA",
    "Numbers",
    "classify_numbers",
    "pack",
    "packed_metadata",
    "read_packed",
    "unpack",
]

#: The nine dtypes of the packed form, narrowest first (the registry's
#: ``packed_dtypes``).
PACKED_DTYPES: tuple[bytes, ...] = registry.PACKED_DTYPES
#: ``(dtype, min, max)`` of the integer dtypes of `PACKED_DTYPES`, in its order: the
#: narrowest first, signed first at equal size.
INT_DTYPES: tuple[tuple[str, int, int], ...] = tuple(
    (d.decode(), int(np.iinfo(d.decode()).min), int(np.iinfo(d.decode()).max))
    for d in PACKED_DTYPES
    if np.dtype(d.decode()).kind in "iu"
)
#: ``(schema_id, schema_version)`` of a packed frame: a tensor frame of schema 0.
SCHEMA = registry.TENSOR_SCHEMAS["packed"]
#: The dtype of a packed list of floats.
FLOAT_DTYPE: str = next(d.decode() for d in PACKED_DTYPES if np.dtype(d.decode()).kind == "f")


def _bad(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


@dataclass(frozen=True)
class Numbers:
    """A number list: its packed ``dtype``."""

    dtype: str


def classify_numbers(values: list[Any]) -> Numbers | Unsuitable:
    """Whether ``values`` is a number list (§10.1), and its dtype.

    >>> classify_numbers([0, 127]).dtype, classify_numbers([0, 200]).dtype
    ('|i1', '|u1')
    >>> classify_numbers([-1, 2**63]).code, classify_numbers([1.0, math.nan]).code
    ('integer_range', 'not_finite')
    """
    if len(values) < 2:
        return Unsuitable("too_short", "a number list has at least 2 elements")
    kinds = set(map(type, values))
    if len(kinds) != 1:
        names = ", ".join(sorted(t.__name__ for t in kinds))
        if kinds == {int, float}:  # packing would turn 1 into 1.0
            return Unsuitable("mixed_numbers", f"the list mixes {names}")
        return Unsuitable("not_numbers", f"the list holds {names}, not only numbers")
    kind = kinds.pop()
    if kind is int:
        lo, hi = min(values), max(values)
        for dtype, dlo, dhi in INT_DTYPES:
            if dlo <= lo and hi <= dhi:
                return Numbers(dtype)
        return Unsuitable("integer_range", f"its integers {lo}..{hi} fit neither int64 nor uint64")
    if kind is float:
        if not np.isfinite(np.array(values, dtype=FLOAT_DTYPE)).all():
            bad = next(v for v in values if not math.isfinite(v))
            return Unsuitable("not_finite", f"it holds the float {bad}")
        return Numbers(FLOAT_DTYPE)
    return Unsuitable("not_numbers", f"its elements are {kind.__name__}, not int or float")


def pack(values: list[Any], dtype: str) -> np.ndarray[Any, Any]:
    """The 1-D array of a number list in its packed dtype (one C-level pass)."""
    return np.array(values, dtype=np.dtype(dtype))


def packed_metadata(dtype: str, length: int) -> bytes:
    """The schema-0 tensor metadata ``{dtype, [length]}`` of a ``packed`` slice.

    >>> etf.decode(packed_metadata("<u2", 3))
    (b'<u2', [3])
    """
    return etf.encode((dtype.encode(), [length]))


def _packed_dtype(dtype: Any) -> np.dtype[Any]:
    if type(dtype) is not bytes or dtype not in PACKED_DTYPES:
        known = ", ".join(d.decode() for d in PACKED_DTYPES)
        raise _bad("dtype", dtype, f"packed dtype {_short(dtype)} is not one of {known}")
    return np.dtype(dtype.decode())


def _to_list(data: Any, dt: np.dtype[Any]) -> list[Any]:
    arr = np.frombuffer(data, dtype=dt)
    if dt.kind == "f" and not np.isfinite(arr).all():
        raise _bad(
            "data",
            None,
            "packed floats hold NaN or an infinity, which Erlang floats (and ETF) cannot be",
        )
    values: list[Any] = arr.tolist()
    return values


def unpack(dtype: Any, data: Any) -> list[Any]:
    """The list of ``{:"$bb_packed", dtype, data}``, or `beambridge.errors.EtfError`
    ``bad_term`` (a dtype outside the nine, a length that is not a multiple of the item
    size, non-finite floats)."""
    dt = _packed_dtype(dtype)
    if type(data) is not bytes:
        raise _bad("data", _short(data), "packed data is a binary")
    if len(data) % dt.itemsize:
        raise EtfError(
            "bad_term",
            "data",
            len(data),
            None,
            f"bad_term: {len(data)} bytes of packed {dt.str} data are not a multiple of its "
            f"item size {dt.itemsize}",
        )
    return _to_list(data, dt)


def read_packed(frame: Frame) -> list[Any]:
    """The list of a ``packed`` slice's frame: a tensor frame of schema 0,
    ``{dtype, [length]}``, dtype one of the nine. The payload is copied into the list
    (the caller may release the frame at once). `beambridge.errors.EtfError`
    ``bad_term`` otherwise."""
    h = frame.header
    if h.format != Format.TENSOR or (h.schema_id, h.schema_version) != SCHEMA:
        raise _bad(
            "format",
            (int(h.format), h.schema_id, h.schema_version),
            "a packed slice holds a tensor frame of schema 0 (format 1, schema_id 0, "
            f"schema_version 0), not format {int(h.format)} schema {h.schema_id} "
            f"version {h.schema_version}",
        )
    try:
        meta = etf.decode(frame.metadata, max_depth=4)
    except EtfError as exc:
        raise _bad("metadata", None, f"packed slice metadata: {exc}") from None
    if (
        type(meta) is not tuple
        or len(meta) != 2
        or type(meta[1]) is not list
        or len(meta[1]) != 1
        or type(meta[1][0]) is not int
        or meta[1][0] < 0
    ):
        raise _bad(
            "metadata", _short(meta), "packed slice metadata is {dtype, [length]} (a 1-D tensor)"
        )
    dt = _packed_dtype(meta[0])
    expected = dt.itemsize * meta[1][0]
    if h.payload_length != expected:
        raise EtfError(
            "bad_term",
            "payload_length",
            h.payload_length,
            expected,
            f"bad_term: {meta[1][0]} packed {dt.str} elements need {expected} bytes, the "
            f"frame holds {h.payload_length}",
        )
    return _to_list(frame.payload, dt)
