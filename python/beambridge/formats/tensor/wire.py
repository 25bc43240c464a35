"""Tensors on the wire (protocol/formats/tensor.md): the version-1 descriptor of an
array, the schema ids of tensor frames, and the inline data terms
``{:"$bb_tensor", descriptor, data}`` and ``[{name, descriptor, data}]`` (bundles, COO
arrays). The Python side of ``Bridge.Tensor.Wire``; the frames themselves are
`beambridge.formats.tensor.frames`.

A descriptor is ``%{"dtype" => descr, "shape" => dims, "order" => "C" | "F"}``; an
array read from one is a read-only view over the bytes it arrived in, no copy.

>>> arr = np.arange(6, dtype=">i2").reshape(2, 3).T
>>> desc = descriptor(arr)
>>> desc
{b'dtype': b'>i2', b'shape': [3, 2], b'order': b'F'}
>>> back = from_inline(desc, raw_bytes(arr, "F").tobytes())
>>> bool((back == arr).all()), back.flags.writeable
(True, False)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import numpy as np

from ... import registry
from ...errors import TensorError
from .dtype import MAX_NAME_BYTES, check_dims, dtype_from_descr, dtype_to_descr, short

__all__ = [
    "ALIGN",
    "KEY_DTYPE",
    "KEY_NAME",
    "KEY_OFFSET",
    "KEY_ORDER",
    "KEY_SHAPE",
    "KEY_TENSORS",
    "MAX_TENSORS",
    "SCHEMA_BUNDLE",
    "SCHEMA_COO",
    "SCHEMA_PACKED",
    "SCHEMA_TENSOR",
    "SCHEMA_VERSION",
    "Array",
    "align",
    "array_from_buffer",
    "as_array",
    "bytewise",
    "descriptor",
    "from_inline",
    "from_inline_entries",
    "inline_entries",
    "memory_order",
    "name_bytes",
    "order_of",
    "parse_descriptor",
    "raw_bytes",
]

#: ``{dtype, [length]}``: the layout of ``packed`` frames (SPEC §10.1), not a tensor schema.
SCHEMA_PACKED = registry.TENSOR_SCHEMAS["packed"][0]
#: One tensor: a descriptor map.
SCHEMA_TENSOR = registry.TENSOR_SCHEMAS["tensor"][0]
#: Named tensors: ``%{"tensors" => [entry]}``.
SCHEMA_BUNDLE = registry.TENSOR_SCHEMAS["bundle"][0]
#: A sparse COO array: ``%{"shape" => dims, "tensors" => [indices, values]}``.
SCHEMA_COO = registry.TENSOR_SCHEMAS["coo"][0]
#: The descriptor version of schemas 1-3 this module reads and writes.
SCHEMA_VERSION = registry.TENSOR_SCHEMAS["tensor"][1]
#: Every tensor of a frame starts at a multiple of this many bytes of the payload.
ALIGN = 64
#: Most tensors in one bundle.
MAX_TENSORS = 65536
#: The keys of descriptors and of the entries of bundles and COO arrays.
KEY_DTYPE, KEY_SHAPE, KEY_ORDER = b"dtype", b"shape", b"order"
KEY_NAME, KEY_OFFSET, KEY_TENSORS = b"name", b"offset", b"tensors"

Array = np.ndarray[Any, Any]


def _bad(field: str, value: Any, message: str) -> TensorError:
    return TensorError("bad_term", field, value, None, f"bad_term: {message}")


def align(n: int) -> int:
    """``n`` rounded up to a multiple of `ALIGN`."""
    return -(-n // ALIGN) * ALIGN


def memory_order(order: str) -> Literal["C", "F"]:
    """``"F"`` for ``"F"``, ``"C"`` for anything else (NumPy's ``order=``)."""
    return "F" if order == "F" else "C"


def order_of(arr: Array) -> str:
    """The order an array is written in: its own when it is Fortran-contiguous (and not
    also C-contiguous), C otherwise (a non-contiguous array is made C-contiguous)."""
    return "F" if arr.flags.f_contiguous and not arr.flags.c_contiguous else "C"


# ---- descriptors -----------------------------------------------------------------------------


def descriptor(arr: Array) -> dict[bytes, Any]:
    """The version-1 descriptor of an array: ``{"dtype", "shape", "order"}``; refuses
    a dtype that cannot be sent (`beambridge.errors.UnsupportedDtypeError`).

    >>> descriptor(np.zeros((2, 3), dtype="<u2", order="F"))
    {b'dtype': b'<u2', b'shape': [2, 3], b'order': b'F'}
    """
    return {
        KEY_DTYPE: dtype_to_descr(arr.dtype),
        KEY_SHAPE: [int(d) for d in arr.shape],
        KEY_ORDER: order_of(arr).encode(),
    }


def parse_descriptor(desc: Any) -> tuple[np.dtype[Any], list[int], str]:
    """``(dtype, shape, order)`` of a descriptor from the peer, or
    `beambridge.errors.TensorError`.

    >>> parse_descriptor({b"dtype": b"<f4", b"shape": [2]})
    (dtype('float32'), [2], 'C')
    """
    if type(desc) is not dict:
        raise _bad(
            "descriptor",
            short(desc),
            'a tensor descriptor is a map with keys "dtype", "shape" and "order"',
        )
    if KEY_DTYPE not in desc or KEY_SHAPE not in desc:
        raise _bad("descriptor", short(desc), 'a tensor descriptor needs "dtype" and "shape"')
    dt = dtype_from_descr(desc[KEY_DTYPE])
    dims = check_dims(desc[KEY_SHAPE], "shape")
    order = desc.get(KEY_ORDER, b"C")
    if order not in (b"C", b"F") or type(order) is not bytes:
        raise _bad("order", order, f'order {order!r} is not "C" or "F"')
    return dt, dims, order.decode()


# ---- bytes ---------------------------------------------------------------------------------


def array_from_buffer(
    dtype: np.dtype[Any], shape: list[int], order: str, buf: Any, offset: int = 0
) -> Array:
    """A read-only array view of ``dtype``/``shape``/``order`` over ``buf[offset:]`` (no
    copy). The view keeps ``buf`` alive. `beambridge.errors.TensorError` if ``buf`` is
    too short."""
    nbytes = dtype.itemsize * math.prod(shape)  # Python ints: no overflow
    available = memoryview(buf).nbytes - offset
    if nbytes > available:
        raise _bad(
            "shape",
            shape,
            f"a {dtype.str} tensor of shape {shape} needs {nbytes} bytes, the payload holds "
            f"{max(available, 0)} at offset {offset}",
        )
    if nbytes == 0:  # no bytes to point at: a view of an empty buffer
        empty = np.frombuffer(b"", dtype=dtype)
        arr = empty.reshape(shape, order=memory_order(order))
    else:
        arr = np.ndarray(shape, dtype=dtype, buffer=buf, offset=offset, order=memory_order(order))
    arr.flags.writeable = False
    return arr


def bytewise(arr: Array) -> Array:
    """``arr`` itself, or for a record type a view as raw items of the same size, so a
    copy moves every byte (padding between fields included), not field by field."""
    if arr.dtype.fields is None:
        return arr
    return arr.view(np.dtype((np.void, arr.dtype.itemsize)))


def raw_bytes(arr: Array, order: str) -> Array:
    """The bytes of ``arr`` in ``order`` as a 1-D uint8 array: a view when the array is
    already contiguous in that order, else one copy.

    >>> raw_bytes(np.arange(3, dtype="<u2"), "C").tobytes()
    b'\\x00\\x00\\x01\\x00\\x02\\x00'
    """
    contiguous = arr.flags.f_contiguous if order == "F" else arr.flags.c_contiguous
    src = arr if contiguous else bytewise(arr).copy(order=memory_order(order))
    return src.ravel(order="K").view(np.uint8)


# ---- inline terms (SPEC §9 data terms) -------------------------------------------------------


def from_inline(desc: Any, data: Any) -> Array:
    """The array of an inline ``{:"$bb_tensor", descriptor, data}`` term: a read-only
    view over ``data``, which must hold exactly the tensor's bytes."""
    dt, dims, order = parse_descriptor(desc)
    expected = dt.itemsize * math.prod(dims)
    nbytes = memoryview(data).nbytes
    if nbytes != expected:
        raise TensorError(
            "bad_term",
            "data",
            nbytes,
            expected,
            f"bad_term: a {dt.str} tensor of shape {dims} needs {expected} bytes of data, "
            f"got {nbytes}",
        )
    return array_from_buffer(dt, dims, order, data)


def as_array(value: Any, name: str) -> Array:
    """``value`` when it is an ndarray, else ``TypeError`` naming the bundle entry."""
    if not isinstance(value, np.ndarray):
        raise TypeError(
            f"tensor {name!r} of a bundle is a {type(value).__name__}, not a numpy.ndarray"
        )
    return value


def name_bytes(name: Any) -> bytes:
    """A bundle name as UTF-8 (``TypeError``/``ValueError`` for one that is not a str of
    1 to `MAX_NAME_BYTES` bytes)."""
    if not isinstance(name, str):
        raise TypeError(f"bundle names are str, got {type(name).__name__} {name!r:.80}")
    encoded = name.encode("utf-8")
    if not 0 < len(encoded) <= MAX_NAME_BYTES:
        raise ValueError(f"bundle name {name!r:.80} must be 1 to {MAX_NAME_BYTES} UTF-8 bytes")
    return encoded


def inline_entries(items: Iterable[tuple[str, Array]]) -> list[tuple[bytes, dict[bytes, Any], Any]]:
    """``[{name, descriptor, data}]`` for an inline bundle or COO term (data a byte
    view of each array in its recorded order)."""
    out = []
    for name, value in items:
        arr = as_array(value, name)
        desc = descriptor(arr)
        out.append((name_bytes(name), desc, raw_bytes(arr, desc[KEY_ORDER].decode()).data))
    return out


def from_inline_entries(entries: Any, names: tuple[str, ...] | None = None) -> dict[str, Array]:
    """The arrays of ``[{name, descriptor, data}]`` from the peer (read-only views);
    ``names``, when given, the names they must have, in order."""
    if type(entries) is not list or len(entries) > MAX_TENSORS:
        raise _bad(
            "tensors",
            short(entries),
            f"a list of at most {MAX_TENSORS} {{name, descriptor, data}} entries",
        )
    out: dict[str, Array] = {}
    for entry in entries:
        if type(entry) is not tuple or len(entry) != 3 or type(entry[0]) is not bytes:
            raise _bad("tensors", short(entry), "an entry is {name, descriptor, data}")
        try:
            name = entry[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad("name", entry[0], f"tensor name {entry[0]!r} is not UTF-8") from None
        if not 0 < len(entry[0]) <= MAX_NAME_BYTES or name in out:
            raise _bad("name", entry[0], f"tensor name {name!r:.80} is empty, too long or repeated")
        if type(entry[2]) is not bytes:
            raise _bad("data", short(entry[2]), "tensor data is a binary")
        out[name] = from_inline(entry[1], entry[2])
    if names is not None and tuple(out) != names:
        raise _bad("tensors", list(out), f"expected tensors named {list(names)}")
    return out
