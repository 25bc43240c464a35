"""The tensor format (``format`` 1): NumPy arrays, named bundles of them and sparse COO
arrays written once into a frame (an arena slice, a sealed object, or a region) and
read back as read-only views in place.

protocol/formats/tensor.md is the contract; this module is its Python side. A frame's
``schema_id`` says what it holds (``schema_version`` the descriptor version):

====================  =========  ====================================================
``schema_id``         version    metadata (ETF) and value
====================  =========  ====================================================
1 ``SCHEMA_TENSOR``   1          a descriptor map: one tensor, any supported dtype,
                                 C or Fortran order
2 ``SCHEMA_BUNDLE``   1          ``{"tensors" => [entry]}``: a `Bundle`, name -> array
3 ``SCHEMA_COO``      1          ``{"shape" => dims, "tensors" => [indices, values]}``:
                                 a `COO` sparse array
====================  =========  ====================================================

Schema 0 (`SCHEMA_PACKED`, ``{dtype, [length]}``) is not a tensor schema: it is only the
layout of ``packed`` frames (SPEC §8.1, `beambridge.formats.records`).

Descriptors are plain ETF terms decoded by the restricted decoder (no pickle, no eval);
dtype strings are checked against a grammar before NumPy sees them, then must be
NumPy's canonical spelling. Object dtypes and anything else that would need pickle are
refused on the way out with `UnsupportedDtypeError` (a ``TypeError``) that says what to
do instead.

>>> import numpy as np
>>> from beambridge.region import Region
>>> arr = np.arange(6, dtype=">i2").reshape(2, 3).T        # big-endian, Fortran order
>>> with Region.create(4096, prefix="bbdoc") as region:
...     _ = write_tensor(region, arr)
...     with region.read_frame() as frame:
...         back = read_tensor(frame)
...         same = bool((back == arr).all()), back.dtype.str, back.flags.f_contiguous
...         del back
>>> same
(True, '>i2', True)
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import BridgeError, EtfError
from ..etf import decode, encode
from ..frame import Frame
from ..header import Format, Header

if TYPE_CHECKING:
    from ..region import Region

__all__ = [
    "ALIGN",
    "COO",
    "MAX_NDIM",
    "SCHEMA_BUNDLE",
    "SCHEMA_COO",
    "SCHEMA_PACKED",
    "SCHEMA_TENSOR",
    "SCHEMA_VERSION",
    "Bundle",
    "Plan",
    "TensorError",
    "UnsupportedDtypeError",
    "array_from_buffer",
    "check_dims",
    "coo_from_parts",
    "descriptor",
    "dtype_from_descr",
    "dtype_to_descr",
    "from_inline",
    "from_inline_entries",
    "inline_entries",
    "plan",
    "raw_bytes",
    "read",
    "read_bundle",
    "read_coo",
    "read_tensor",
    "write",
    "write_bundle",
    "write_coo",
    "write_tensor",
]

#: ``{dtype, [length]}``: the layout of ``packed`` frames (SPEC §8.1), not a tensor schema.
SCHEMA_PACKED = 0
SCHEMA_TENSOR = 1
SCHEMA_BUNDLE = 2
SCHEMA_COO = 3
#: The descriptor version of schemas 1-3 this module reads and writes.
SCHEMA_VERSION = 1
#: Every tensor of a frame starts at a multiple of this many bytes of the payload.
ALIGN = 64
#: Most dimensions a tensor (or a field's subarray) may have.
MAX_NDIM = 32
#: Deepest nesting of structured dtypes (a struct field that is a struct...).
MAX_DTYPE_DEPTH = 8
#: Most fields of one structured dtype.
MAX_FIELDS = 4096
#: Most tensors in one bundle.
MAX_TENSORS = 65536
#: Longest tensor name or field name, in UTF-8 bytes.
MAX_NAME_BYTES = 1024
#: Largest item size (NumPy's own limit is a C int).
MAX_ITEMSIZE = 2**31 - 1

#: A dtype descriptor: a dtype string (``b"<f4"``), or
#: ``(b"struct", itemsize, [(name, descr | (b"subarray", descr, shape), offset), ...])``.
Descr = bytes | tuple[Any, ...]
_Array = np.ndarray[Any, Any]
#: (array, order written, payload offset) of each tensor of a frame
_Parts = tuple[tuple[_Array, str, int], ...]

_SIMPLE = re.compile(
    r"([<>|])([biufcmMSUV])([1-9][0-9]{0,9})"
    r"(?:\[([1-9][0-9]{0,9})?(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?"
)
_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16),
          "m": (8,), "M": (8,)}  # fmt: skip
_STRUCT, _SUBARRAY = b"struct", b"subarray"
_K_DTYPE, _K_SHAPE, _K_ORDER, _K_NAME, _K_OFFSET, _K_TENSORS = (
    b"dtype", b"shape", b"order", b"name", b"offset", b"tensors"
)  # fmt: skip


class TensorError(EtfError):
    """A tensor descriptor or payload from the peer was refused: an unknown schema or
    version, a dtype outside the grammar, a shape or offset that does not match the
    payload. ``reason`` is ``bad_term`` (what the worker reports in a ``bad_call``),
    ``field`` names what was wrong (``dtype``, ``shape``, ``order``, ``offset``,
    ``schema_id``...)."""


class UnsupportedDtypeError(BridgeError, TypeError):
    """An array whose dtype cannot be written (object, variable-width strings, long
    double, titled fields...): reason ``unsupported_dtype``; the message says what to do.
    """


def _bad(field: str, value: Any, message: str) -> TensorError:
    return TensorError("bad_term", field, value, None, f"bad_term: {message}")


def _unsupported(dt: np.dtype[Any], why: str, advice: str) -> UnsupportedDtypeError:
    return UnsupportedDtypeError(
        "unsupported_dtype",
        "dtype",
        str(dt),
        None,
        f"unsupported_dtype: cannot send an array of dtype {dt} ({dt.str}): {why}; {advice}",
    )


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


# ---- dtypes ------------------------------------------------------------------------------


def dtype_to_descr(dtype: Any) -> Descr:
    """The descriptor of a NumPy dtype, or `UnsupportedDtypeError` saying what to do.

    >>> dtype_to_descr(np.dtype(">f8")), dtype_to_descr(np.dtype("M8[ns]"))
    (b'>f8', b'<M8[ns]')
    >>> dtype_to_descr(np.dtype([("x", "<f4"), ("n", "S3", (2,))]))
    (b'struct', 10, [(b'x', b'<f4', 0), (b'n', (b'subarray', b'|S3', [2]), 4)])
    >>> dtype_to_descr(np.dtype(object))
    Traceback (most recent call last):
    ...
    beambridge.formats.tensor.UnsupportedDtypeError: unsupported_dtype: cannot send ...
    """
    return _to_descr(np.dtype(dtype), 0)


def _to_descr(dt: np.dtype[Any], depth: int) -> Descr:
    if dt.hasobject:
        raise _unsupported(dt, "it holds Python objects, which only pickle could carry",
                           "convert it to a fixed-size dtype (.astype('U'), .astype('S'), a "
                           "numeric type) or send .tolist()")  # fmt: skip
    if depth > MAX_DTYPE_DEPTH:
        raise _unsupported(dt, f"structured dtypes nest deeper than {MAX_DTYPE_DEPTH} levels",
                           "flatten the record type")  # fmt: skip
    if dt.fields is not None:
        names = dt.names or ()
        if not names or dt.itemsize == 0 or len(names) > MAX_FIELDS:
            raise _unsupported(dt, f"a record type needs 1 to {MAX_FIELDS} fields and a "
                               "non-zero size", "send the fields as separate arrays")  # fmt: skip
        fields = []
        for name in names:
            info = dt.fields[name]
            encoded = name.encode("utf-8")
            title = info[2] if len(info) > 2 else None
            if len(encoded) > MAX_NAME_BYTES or not (
                title is None or (type(title) is str and 0 < len(title.encode()) <= MAX_NAME_BYTES)
            ):
                raise _unsupported(dt, f"field {name!r} has a name or title that is not a str of "
                                   f"1 to {MAX_NAME_BYTES} bytes", "rename the field")  # fmt: skip
            field: tuple[Any, ...] = (encoded, _field_descr(info[0], depth + 1), int(info[1]))
            fields.append(field if title is None else (*field, title.encode("utf-8")))
        return (_STRUCT, dt.itemsize, fields)
    if dt.subdtype is not None:
        raise _unsupported(dt, "a subarray dtype stands only inside a record",
                           "use an array with the extra dimensions")  # fmt: skip
    text = dt.str
    m = _SIMPLE.fullmatch(text)
    kind = dt.kind
    if m is None or (kind in _SIZES and dt.itemsize not in _SIZES[kind]):
        advice = {
            "f": "cast it with .astype(np.float64)",
            "c": "cast it with .astype(np.complex128)",
            "T": "variable-width strings: cast to fixed width with .astype('U') or encode "
            "them and send .astype('S')",
        }.get(kind, "cast it to a fixed-size dtype")
        raise _unsupported(dt, "it is not one of the fixed-size dtypes the tensor format "
                           "carries (bool, int8-64, uint8-64, float16/32/64, complex64/128, "
                           "datetime64/timedelta64, S, U, V, records)", advice)  # fmt: skip
    return text.encode("ascii")


def _field_descr(dt: np.dtype[Any], depth: int) -> Descr:
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        if len(shape) > MAX_NDIM:
            raise _unsupported(dt, f"a field subarray has more than {MAX_NDIM} dimensions",
                               "reshape the field")  # fmt: skip
        return (_SUBARRAY, _to_descr(base, depth), [int(d) for d in shape])
    return _to_descr(dt, depth)


def dtype_from_descr(descr: Any) -> np.dtype[Any]:
    """The NumPy dtype of a descriptor from the peer, or `TensorError`.

    Only the grammar of protocol/formats/tensor.md, spelled as NumPy spells it.

    >>> dtype_from_descr(b"<U3"), dtype_from_descr(b">m8[10ms]")
    (dtype('<U3'), dtype('>m8[10ms]'))
    >>> dtype_from_descr(b"|O8")
    Traceback (most recent call last):
    ...
    beambridge.formats.tensor.TensorError: bad_term: tensor dtype b'|O8' is not ...
    """
    dt = _from_descr(descr, 0)
    # canonical: re-describing the dtype gives back exactly what was received
    if _to_descr_or_none(dt) != _canonical_term(descr):
        raise _bad("dtype", descr, f"tensor dtype {_short(descr)} is not in NumPy's "
                   "canonical spelling (e.g. '<i4', not '|i4' or '=i4')")  # fmt: skip
    return dt


def _to_descr_or_none(dt: np.dtype[Any]) -> Descr | None:
    try:
        return _to_descr(dt, 0)
    except UnsupportedDtypeError:
        return None


def _canonical_term(descr: Any) -> Any:
    # the ETF decoder gives lists and tuples exactly as sent: compare like with like
    if type(descr) is tuple:
        return tuple(_canonical_term(x) for x in descr)
    if type(descr) is list:
        return [_canonical_term(x) for x in descr]
    return descr


def _from_descr(descr: Any, depth: int) -> np.dtype[Any]:
    if depth > MAX_DTYPE_DEPTH:
        raise _bad("dtype", None, f"structured dtype nested deeper than {MAX_DTYPE_DEPTH}")
    if type(descr) is bytes:
        return _simple(descr)
    if type(descr) is tuple and len(descr) == 3 and descr[0] == _STRUCT:
        _, itemsize, fields = descr
        if type(itemsize) is not int or not 1 <= itemsize <= MAX_ITEMSIZE:
            raise _bad("dtype", itemsize, f"record itemsize {itemsize!r} is not in "
                       f"1..{MAX_ITEMSIZE}")  # fmt: skip
        if type(fields) is not list or not 1 <= len(fields) <= MAX_FIELDS:
            raise _bad("dtype", _short(fields), f"a record needs a list of 1 to {MAX_FIELDS} "
                       "fields")  # fmt: skip
        names: list[str] = []
        formats: list[np.dtype[Any]] = []
        offsets: list[int] = []
        titles: list[str | None] = []
        for field in fields:
            if type(field) is not tuple or len(field) not in (3, 4):
                raise _bad("dtype", _short(field), "a record field is {name, dtype, offset} "
                           "or {name, dtype, offset, title}")  # fmt: skip
            name, fdescr, offset = field[:3]
            titles.append(_title(field[3]) if len(field) == 4 else None)
            if type(name) is not bytes or not 0 < len(name) <= MAX_NAME_BYTES:
                raise _bad("dtype", name, f"field name {_short(name)} is not a binary of 1 to "
                           f"{MAX_NAME_BYTES} bytes")  # fmt: skip
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                raise _bad("dtype", name, f"field name {name!r} is not UTF-8") from None
            if text in names:
                raise _bad("dtype", name, f"field name {text!r} appears twice")
            fdt = _field_from_descr(fdescr, depth + 1)
            if type(offset) is not int or offset < 0 or offset + fdt.itemsize > itemsize:
                raise _bad("dtype", offset, f"field {text!r} at offset {offset!r} with "
                           f"{fdt.itemsize} bytes does not fit a {itemsize}-byte "
                           "record")  # fmt: skip
            names.append(text)
            formats.append(fdt)
            offsets.append(offset)
        try:
            spec: dict[str, Any] = {"names": names, "formats": formats, "offsets": offsets,
                                    "itemsize": itemsize}  # fmt: skip
            if any(t is not None for t in titles):
                spec["titles"] = titles
            return np.dtype(spec)  # type: ignore[call-overload, no-any-return]
        except (TypeError, ValueError) as exc:
            raise _bad("dtype", _short(descr), f"record dtype refused by NumPy: {exc}") from None
    raise _bad("dtype", _short(descr), f"tensor dtype {_short(descr)} is not a dtype string "
               "or {\"struct\", itemsize, fields}")  # fmt: skip


def _title(raw: Any) -> str:
    if type(raw) is not bytes or not 0 < len(raw) <= MAX_NAME_BYTES:
        raise _bad("dtype", _short(raw), f"a field title is a binary of 1 to {MAX_NAME_BYTES} "
                   "bytes")  # fmt: skip
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("dtype", raw, f"field title {raw!r} is not UTF-8") from None


def _field_from_descr(descr: Any, depth: int) -> np.dtype[Any]:
    if type(descr) is tuple and len(descr) == 3 and descr[0] == _SUBARRAY:
        _, base, shape = descr
        dims = check_dims(shape, "dtype")
        if type(base) is tuple and base and base[0] == _SUBARRAY:
            raise _bad("dtype", _short(descr), "a subarray of a subarray (give one shape)")
        bdt = _from_descr(base, depth)
        if bdt.itemsize * math.prod(dims) > MAX_ITEMSIZE:
            raise _bad("dtype", _short(descr), f"subarray of more than {MAX_ITEMSIZE} bytes")
        return np.dtype((bdt, tuple(dims)))
    return _from_descr(descr, depth)


def _simple(text: bytes) -> np.dtype[Any]:
    m = _SIMPLE.fullmatch(text.decode("ascii", "replace"))
    ok = m is not None
    if m is not None:
        _order, kind, size, unit = m.group(1), m.group(2), int(m.group(3)), m.group(5)
        if kind in _SIZES:
            ok = size in _SIZES[kind]
        else:  # S, V: bytes; U: characters of 4 bytes
            ok = size * (4 if kind == "U" else 1) <= MAX_ITEMSIZE
        ok = ok and (unit is None or kind in "mM")
    if not ok:
        raise _bad("dtype", text, f"tensor dtype {text!r} is not one of the fixed-size dtypes "
                   "(|b1, [<>]i/u 1-8, [<>]f 2/4/8, [<>]c 8/16, [<>]M8[unit], [<>]m8[unit], "
                   "|S<n>, [<>]U<n>, |V<n>, or a record)")  # fmt: skip
    try:
        return np.dtype(text.decode("ascii"))
    except TypeError as exc:
        raise _bad("dtype", text, f"tensor dtype {text!r} refused by NumPy: {exc}") from None


def check_dims(shape: Any, field: str) -> list[int]:
    """``shape`` from the peer, checked: a list of at most `MAX_NDIM` non-negative ints;
    `TensorError` (``field`` as given) otherwise."""
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise _bad(field, _short(shape), f"a shape is a list of at most {MAX_NDIM} "
                   f"non-negative integers, got {_short(shape)}")  # fmt: skip
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise _bad(field, _short(shape), f"shape {_short(shape)} holds {dim!r}, not a "
                       "non-negative integer")  # fmt: skip
    return shape


def _short(term: Any) -> str:
    text = repr(term)
    return text if len(text) <= 120 else text[:120] + "..."


# ---- descriptors -------------------------------------------------------------------------


def _lit(order: str) -> Literal["C", "F"]:
    return "F" if order == "F" else "C"


def _order_of(arr: np.ndarray[Any, Any]) -> str:
    """The order an array is written in: its own when it is Fortran-contiguous (and not
    also C-contiguous), C otherwise (a non-contiguous array is made C-contiguous)."""
    return "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


def descriptor(arr: np.ndarray[Any, Any]) -> dict[bytes, Any]:
    """The version-1 descriptor of an array: ``{"dtype", "shape", "order"}``.

    >>> descriptor(np.zeros((2, 3), dtype="<u2", order="F"))
    {b'dtype': b'<u2', b'shape': [2, 3], b'order': b'F'}
    """
    return {
        _K_DTYPE: dtype_to_descr(arr.dtype),
        _K_SHAPE: [int(d) for d in arr.shape],
        _K_ORDER: _order_of(arr).encode(),
    }


def _parse(desc: Any) -> tuple[np.dtype[Any], list[int], str]:
    if type(desc) is not dict:
        raise _bad("descriptor", _short(desc), "a tensor descriptor is a map with keys "
                   '"dtype", "shape" and "order"')  # fmt: skip
    if _K_DTYPE not in desc or _K_SHAPE not in desc:
        raise _bad("descriptor", _short(desc), 'a tensor descriptor needs "dtype" and "shape"')
    dt = dtype_from_descr(desc[_K_DTYPE])
    dims = check_dims(desc[_K_SHAPE], "shape")
    order = desc.get(_K_ORDER, b"C")
    if order not in (b"C", b"F") or type(order) is not bytes:
        raise _bad("order", order, f'order {order!r} is not "C" or "F"')
    return dt, dims, order.decode()


def array_from_buffer(
    dtype: np.dtype[Any], shape: list[int], order: str, buf: Any, offset: int = 0
) -> np.ndarray[Any, Any]:
    """A read-only array view of ``dtype``/``shape``/``order`` over ``buf[offset:]`` (no
    copy). The view keeps ``buf`` alive. `TensorError` if ``buf`` is too short."""
    nbytes = dtype.itemsize * math.prod(shape)  # Python ints: no overflow
    available = memoryview(buf).nbytes - offset
    if nbytes > available:
        raise _bad("shape", shape, f"a {dtype.str} tensor of shape {shape} needs {nbytes} "
                   f"bytes, the payload holds {max(available, 0)} at offset {offset}")  # fmt: skip
    if nbytes == 0:  # no bytes to point at: a view of an empty buffer
        arr = np.frombuffer(b"", dtype=dtype).reshape(shape, order=order)  # type: ignore[call-overload]
    else:
        arr = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, order=_lit(order))
    arr.flags.writeable = False
    return arr  # type: ignore[no-any-return]


def from_inline(desc: Any, data: Any) -> np.ndarray[Any, Any]:
    """The array of an inline ``{:"$bb_tensor", descriptor, data}`` term: a read-only
    view over ``data``, which must hold exactly the tensor's bytes."""
    dt, dims, order = _parse(desc)
    expected = dt.itemsize * math.prod(dims)
    nbytes = memoryview(data).nbytes
    if nbytes != expected:
        raise TensorError("bad_term", "data", nbytes, expected,
                          f"bad_term: a {dt.str} tensor of shape {dims} needs {expected} bytes "
                          f"of data, got {nbytes}")  # fmt: skip
    return array_from_buffer(dt, dims, order, data)


# ---- values: bundles and sparse arrays ---------------------------------------------------


class Bundle(dict[str, np.ndarray[Any, Any]]):
    """Named tensors, name (``str``) -> ``ndarray``, like a model's state dict; they
    cross the bridge in one frame (one region) with every tensor 64-byte aligned.

    Elixir's ``%Bridge.Tensor.Bundle{}`` arrives as a `Bundle` of read-only arrays;
    a handler returns one (``Bundle(model_state)``) to send ``%Bridge.Tensor.Bundle{}``
    back. A plain ``dict`` of arrays still travels as a plain map.

    >>> b = Bundle({"w": np.ones((2, 2)), "b": np.zeros(2)})
    >>> isinstance(b, dict), sorted(b)
    (True, ['b', 'w'])
    """

    __slots__ = ()


@dataclass(frozen=True, eq=False)
class COO:
    """A sparse array in coordinate format: ``indices`` (integers, shape ``(ndim,
    nnz)``), ``values`` (shape ``(nnz,)``) and the dense ``shape``. It crosses the
    bridge as Elixir's ``%Bridge.Tensor.COO{}``; both parts keep their dtypes.

    >>> c = COO(np.array([[0, 1], [2, 0]]), np.array([5.0, 7.0]), (2, 3))
    >>> c.todense().tolist()
    [[0.0, 0.0, 5.0], [7.0, 0.0, 0.0]]
    """

    indices: np.ndarray[Any, Any]
    values: np.ndarray[Any, Any]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check_coo(self.indices, self.values, self.shape, ValueError)

    @property
    def nnz(self) -> int:
        """The number of stored values."""
        return int(self.values.shape[0])

    def todense(self) -> np.ndarray[Any, Any]:
        """The dense array (duplicates are summed for numbers, the last one wins
        otherwise)."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        where = tuple(self.indices.astype(np.intp))
        if self.values.dtype.kind in "biufc" and self.values.dtype.fields is None:
            np.add.at(out, where, self.values)
        else:
            out[where] = self.values
        return out

    @classmethod
    def from_dense(cls, arr: Any) -> COO:
        """The non-zero entries of ``arr`` (int64 indices).

        >>> COO.from_dense(np.array([[0, 3], [4, 0]])).indices.tolist()
        [[0, 1], [1, 0]]
        """
        a = np.asarray(arr)
        idx = np.nonzero(a)
        return cls(np.array(idx, dtype=np.int64).reshape(a.ndim, -1), a[idx],
                   tuple(int(d) for d in a.shape))  # fmt: skip


def _check_coo(indices: Any, values: Any, shape: Any, error: Callable[[str], Exception]) -> None:
    if not isinstance(indices, np.ndarray) or not isinstance(values, np.ndarray):
        raise error("COO indices and values must be numpy arrays")
    if indices.dtype.kind not in "iu" or indices.ndim != 2:
        raise error(f"COO indices must be a 2-D integer array (ndim, nnz), got dtype "
                    f"{indices.dtype} shape {indices.shape}")  # fmt: skip
    if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        raise error(f"COO shape must be a tuple of non-negative ints, got {shape!r}")
    if len(shape) > MAX_NDIM or indices.shape[0] != len(shape):
        raise error(f"COO indices have {indices.shape[0]} rows for a shape of {len(shape)} "
                    "dimensions")  # fmt: skip
    if values.ndim != 1 or values.shape[0] != indices.shape[1]:
        raise error(f"COO values must be 1-D with one value per index column ("
                    f"{indices.shape[1]}), got shape {values.shape}")  # fmt: skip
    if indices.size:
        low = indices.min(axis=1)
        high = indices.max(axis=1)
        for axis, dim in enumerate(shape):
            if int(low[axis]) < 0 or int(high[axis]) >= dim:
                raise error(f"COO indices of axis {axis} run from {int(low[axis])} to "
                            f"{int(high[axis])}, outside 0..{dim - 1}")  # fmt: skip


# ---- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a writer puts in a frame: ``metadata`` (the descriptor's ETF),
    ``schema_id``/``schema_version``, the payload length ``nbytes``, and ``fill``, which
    writes the payload into the writable area it is given (each array copied once)."""

    metadata: bytes
    schema_id: int
    schema_version: int
    nbytes: int
    fill: Callable[[memoryview], None]
    parts: _Parts  # (array, order, offset)


def raw_bytes(arr: np.ndarray[Any, Any], order: str) -> np.ndarray[Any, Any]:
    """The bytes of ``arr`` in ``order`` as a 1-D uint8 array: a view when the array is
    already contiguous in that order, else one copy."""
    contiguous = arr.flags.f_contiguous if order == "F" else arr.flags.c_contiguous
    src = arr if contiguous else _bytewise(arr).copy(order=order)  # type: ignore[arg-type]
    return src.ravel(order="K").view(np.uint8)


def _bytewise(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``arr`` itself, or for a record type a view as raw items of the same size, so a
    copy moves every byte (padding between fields included), not field by field."""
    if arr.dtype.fields is None:
        return arr
    return arr.view(np.dtype((np.void, arr.dtype.itemsize)))


def _filler(
    parts: _Parts,
) -> Callable[[memoryview], None]:
    def fill(area: memoryview) -> None:
        dst = np.frombuffer(area, dtype=np.uint8)
        try:
            for arr, order, offset in parts:
                n = arr.dtype.itemsize * arr.size
                if n == 0:
                    continue
                src = _bytewise(arr)
                target = np.ndarray(arr.shape, dtype=src.dtype, buffer=dst, offset=offset,
                                    order=_lit(order))  # fmt: skip
                np.copyto(target, src, casting="no")  # one pass, straight into the region
                del target, src
                pad_end = min(_align(offset + n), dst.nbytes)
                dst[offset + n : pad_end] = 0
        finally:
            del dst

    return fill


def _entries(items: Iterable[tuple[str, _Array]]) -> tuple[list[dict[bytes, Any]], _Parts, int]:
    entries: list[dict[bytes, Any]] = []
    parts = []
    offset = 0
    for name, value in items:
        arr = _as_array(value, name)
        desc = descriptor(arr)
        encoded = _name_bytes(name)
        entries.append({_K_NAME: encoded, **desc, _K_OFFSET: offset})
        parts.append((arr, desc[_K_ORDER].decode(), offset))
        offset = _align(offset + arr.dtype.itemsize * arr.size)
        if len(entries) > MAX_TENSORS:
            raise ValueError(f"a bundle holds at most {MAX_TENSORS} tensors")
    end = parts[-1][2] + parts[-1][0].dtype.itemsize * parts[-1][0].size if parts else 0
    return entries, tuple(parts), end


def _as_array(value: Any, name: str) -> np.ndarray[Any, Any]:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"tensor {name!r} of a bundle is a {type(value).__name__}, not a "
                        "numpy.ndarray")  # fmt: skip
    return value


def _name_bytes(name: Any) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"bundle names are str, got {type(name).__name__} {name!r:.80}")
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) <= MAX_NAME_BYTES:
        raise ValueError(f"bundle name {name!r:.80} must be 1 to {MAX_NAME_BYTES} UTF-8 bytes")
    return encoded


def plan(value: Any) -> Plan:
    """The frame of an ndarray, a `Bundle` (or any mapping of str -> ndarray) or a
    `COO`. A tensor is always schema 1, a descriptor map.

    >>> p = plan(np.zeros(3, dtype="|b1"))
    >>> p.schema_id, p.nbytes, decode(p.metadata)
    (1, 3, {b'dtype': b'|b1', b'shape': [3], b'order': b'C'})
    """
    if isinstance(value, np.ndarray):
        arr = value
        parts: _Parts = ((arr, _order_of(arr), 0),)
        return Plan(
            encode(descriptor(arr)),
            SCHEMA_TENSOR,
            SCHEMA_VERSION,
            arr.dtype.itemsize * arr.size,
            _filler(parts),
            parts,
        )
    if isinstance(value, COO):
        entries, parts, end = _entries([("indices", value.indices), ("values", value.values)])
        meta = {_K_SHAPE: list(value.shape), _K_TENSORS: entries}
        return Plan(encode(meta), SCHEMA_COO, SCHEMA_VERSION, end, _filler(parts), parts)
    if isinstance(value, Mapping):
        entries, parts, end = _entries(value.items())
        return Plan(encode({_K_TENSORS: entries}), SCHEMA_BUNDLE, SCHEMA_VERSION, end,
                    _filler(parts), parts)  # fmt: skip
    raise TypeError(f"cannot write a {type(value).__name__} as a tensor frame (an ndarray, "
                    "a Bundle or mapping of str -> ndarray, or a COO)")  # fmt: skip


def write(region: Region, value: Any, *, checksum: bool = True) -> Header:
    """Publish ``value`` (see `plan`) as one tensor frame in ``region``; every array is
    copied once, straight into the mapping. Returns the header written."""
    p = plan(value)
    with region.write_frame_into(p.nbytes, metadata=p.metadata, format=Format.TENSOR,
                                 schema_id=p.schema_id, schema_version=p.schema_version,
                                 checksum=checksum) as area:  # fmt: skip
        p.fill(area)
        del area
    return region.last_header


def write_tensor(region: Region, array: np.ndarray[Any, Any], *, checksum: bool = True) -> Header:
    """Publish one array (C or Fortran order kept; a non-contiguous array is made
    C-contiguous while it is copied in)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"write_tensor needs a numpy.ndarray, got {type(array).__name__}")
    return write(region, array, checksum=checksum)


def write_bundle(
    region: Region, tensors: Mapping[str, np.ndarray[Any, Any]], *, checksum: bool = True
) -> Header:
    """Publish named arrays in one frame, each 64-byte aligned, in the mapping's order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(f"write_bundle needs a mapping of str -> ndarray, got "
                        f"{type(tensors).__name__}")  # fmt: skip
    return write(region, tensors, checksum=checksum)


def write_coo(region: Region, coo: COO, *, checksum: bool = True) -> Header:
    """Publish a sparse `COO` array (indices and values, each 64-byte aligned)."""
    if not isinstance(coo, COO):
        raise TypeError(f"write_coo needs a COO, got {type(coo).__name__}")
    return write(region, coo, checksum=checksum)


# ---- reading -----------------------------------------------------------------------------


def _check_frame(frame: Frame, schemas: tuple[int, ...]) -> Header:
    h = frame.header
    if h.format != Format.TENSOR:
        raise _bad("format", int(h.format), f"frame format {int(h.format)} is not tensor (1)")
    if h.codec != 0:
        raise _bad("codec", int(h.codec), "a tensor frame read in place must be uncompressed")
    if h.schema_id not in schemas:
        raise _bad(
            "schema_id",
            h.schema_id,
            f"tensor schema_id {h.schema_id} is not one of {list(schemas)} here "
            "(1 tensor, 2 bundle, 3 coo)",
        )
    if h.schema_version != SCHEMA_VERSION:
        raise _bad(
            "schema_version",
            h.schema_version,
            f"tensor schema {h.schema_id} version {h.schema_version} is not "
            f"{SCHEMA_VERSION}, the version this reader knows; upgrade beambridge",
        )
    return h


def _meta(frame: Frame) -> Any:
    return decode(frame.metadata, max_depth=8 + 4 * MAX_DTYPE_DEPTH)


def read_tensor(frame: Frame) -> np.ndarray[Any, Any]:
    """The array of a single-tensor frame (schema 1): a read-only view over the frame's
    payload. The frame's reader lease lasts as long as the array (or anything made from
    it) lives."""
    h = _check_frame(frame, (SCHEMA_TENSOR,))
    dt, dims, order = _parse(_meta(frame))
    _check_length(h, dt.itemsize * math.prod(dims))
    return array_from_buffer(dt, dims, order, frame.payload)


def _check_length(h: Header, expected: int) -> None:
    if h.payload_length != expected:
        raise TensorError("bad_term", "payload_length", h.payload_length, expected,
                          f"bad_term: the descriptor needs a payload of {expected} bytes, "
                          f"the frame holds {h.payload_length}")  # fmt: skip


def _read_entries(
    frame: Frame, entries: Any, names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray[Any, Any]]:
    if type(entries) is not list or len(entries) > MAX_TENSORS:
        raise _bad("tensors", _short(entries), f'"tensors" is a list of at most {MAX_TENSORS} '
                   "entries")  # fmt: skip
    out: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    end = 0
    for entry in entries:
        if type(entry) is not dict:
            raise _bad("tensors", _short(entry), "a bundle entry is a map")
        raw = entry.get(_K_NAME)
        if type(raw) is not bytes or not 0 < len(raw) <= MAX_NAME_BYTES:
            raise _bad("name", _short(raw), f"a tensor name is a binary of 1 to "
                       f"{MAX_NAME_BYTES} bytes")  # fmt: skip
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("name", raw, f"tensor name {raw!r} is not UTF-8") from None
        if name in out:
            raise _bad("name", raw, f"tensor name {name!r} appears twice")
        dt, dims, order = _parse(entry)
        if entry.get(_K_OFFSET) != offset or type(entry.get(_K_OFFSET)) is not int:
            raise _bad("offset", entry.get(_K_OFFSET), f"tensor {name!r} must start at "
                       f"payload offset {offset} (each tensor at the next multiple of "
                       f"{ALIGN})")  # fmt: skip
        nbytes = dt.itemsize * math.prod(dims)
        if offset + nbytes > frame.header.payload_length:
            raise _bad("shape", dims, f"tensor {name!r} ({nbytes} bytes at {offset}) runs past "
                       f"the payload of {frame.header.payload_length} bytes")  # fmt: skip
        out[name] = array_from_buffer(dt, dims, order, frame.payload, offset)
        end = offset + nbytes
        offset = _align(end)
    if names is not None and tuple(out) != names:
        raise _bad("tensors", list(out), f"expected tensors named {list(names)}")
    _check_length(frame.header, end)
    return out


def read_bundle(frame: Frame) -> Bundle:
    """The `Bundle` of a schema 2 frame: read-only views, one per tensor."""
    _check_frame(frame, (SCHEMA_BUNDLE,))
    meta = _meta(frame)
    if type(meta) is not dict:
        raise _bad("metadata", _short(meta), 'bundle metadata is a map {"tensors" => [...]}')
    return Bundle(_read_entries(frame, meta.get(_K_TENSORS)))


def read_coo(frame: Frame) -> COO:
    """The `COO` of a schema 3 frame (indices and values are read-only views)."""
    _check_frame(frame, (SCHEMA_COO,))
    meta = _meta(frame)
    if type(meta) is not dict:
        raise _bad("metadata", _short(meta), 'COO metadata is a map {"shape", "tensors"}')
    shape = tuple(check_dims(meta.get(_K_SHAPE), "shape"))
    parts = _read_entries(frame, meta.get(_K_TENSORS), ("indices", "values"))
    return coo_from_parts(parts["indices"], parts["values"], shape)


def coo_from_parts(indices: Any, values: Any, shape: tuple[int, ...]) -> COO:
    """A `COO` from arrays received from the peer (`TensorError` if inconsistent)."""

    def error(message: str) -> Exception:
        return _bad("coo", None, message)

    _check_coo(indices, values, shape, error)
    coo = object.__new__(COO)
    object.__setattr__(coo, "indices", indices)
    object.__setattr__(coo, "values", values)
    object.__setattr__(coo, "shape", shape)
    return coo


def read(frame: Frame) -> np.ndarray[Any, Any] | Bundle | COO:
    """Whatever a tensor frame holds, by its ``schema_id``."""
    h = _check_frame(frame, (SCHEMA_TENSOR, SCHEMA_BUNDLE, SCHEMA_COO))
    if h.schema_id == SCHEMA_BUNDLE:
        return read_bundle(frame)
    if h.schema_id == SCHEMA_COO:
        return read_coo(frame)
    return read_tensor(frame)


# ---- inline terms (SPEC §7.4 data terms) ---------------------------------------------------


def inline_entries(
    items: Iterable[tuple[str, _Array]],
) -> list[tuple[bytes, dict[bytes, Any], Any]]:
    """``[{name, descriptor, data}]`` for an inline bundle or COO term (data a byte
    view of each array in its recorded order)."""
    out = []
    for name, value in items:
        arr = _as_array(value, name)
        desc = descriptor(arr)
        out.append((_name_bytes(name), desc, raw_bytes(arr, desc[_K_ORDER].decode()).data))
    return out


def from_inline_entries(
    entries: Any, names: tuple[str, ...] | None = None
) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of ``[{name, descriptor, data}]`` from the peer (read-only views)."""
    if type(entries) is not list or len(entries) > MAX_TENSORS:
        raise _bad("tensors", _short(entries), f"a list of at most {MAX_TENSORS} "
                   "{name, descriptor, data} entries")  # fmt: skip
    out: dict[str, np.ndarray[Any, Any]] = {}
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 3 or type(entry[0]) is not bytes:
            raise _bad("tensors", _short(entry), "an entry is {name, descriptor, data}")
        try:
            name = entry[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("name", entry[0], f"tensor name {entry[0]!r} is not UTF-8") from None
        if not 0 < len(entry[0]) <= MAX_NAME_BYTES or name in out:
            raise _bad("name", entry[0], f"tensor name {name!r:.80} is empty, too long or "
                       "repeated")  # fmt: skip
        if type(entry[2]) is not bytes:
            raise _bad("data", _short(entry[2]), "tensor data is a binary")
        out[name] = from_inline(entry[1], entry[2])
    if names is not None and tuple(out) != names:
        raise _bad("tensors", list(out), f"expected tensors named {list(names)}")
    return out
