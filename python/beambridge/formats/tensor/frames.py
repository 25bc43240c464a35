"""Tensor frames (format ``tensor``, protocol/formats/tensor.md): an array, a `Bundle`
or a `COO` written once into a frame and read back as read-only views in place.

`plan` says what a frame of a value holds (metadata, schema, payload length) and how to
fill its payload; `write` puts it in a slice of an `beambridge.arena.ArenaSet` (the
worker's results do the same through `beambridge.result_slices`). `read` and its
variants take a `beambridge.frame.Frame`, read in place: every array is a view over the
frame's payload, and the frame's lease lasts as long as the arrays (or anything made
from them) live.

>>> from beambridge.arena import ArenaSet, PeerObject
>>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
>>> s = write_bundle(arenas, {"w": np.ones((2, 2), "<f4"), "step": np.array(7)})
>>> peer = PeerObject.open(*arenas.announcement(s.object_id))
>>> back = read(peer.read_frame(s.offset, s.length, s.generation))
>>> sorted(back), back["w"].flags.writeable, int(back["step"])
(['step', 'w'], False, 7)
>>> del back; peer.close(); arenas.close()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import TensorError
from ...etf import decode, encode
from ...frame import Frame
from ...header import Format, Header
from .bundle import Bundle
from .coo import COO, coo_from_parts
from .dtype import MAX_DTYPE_DEPTH, MAX_NAME_BYTES, check_dims, short
from .wire import (
    ALIGN,
    KEY_NAME,
    KEY_OFFSET,
    KEY_ORDER,
    KEY_SHAPE,
    KEY_TENSORS,
    MAX_TENSORS,
    SCHEMA_BUNDLE,
    SCHEMA_COO,
    SCHEMA_TENSOR,
    SCHEMA_VERSION,
    Array,
    align,
    array_from_buffer,
    as_array,
    bytewise,
    descriptor,
    memory_order,
    name_bytes,
    order_of,
    parse_descriptor,
)

if TYPE_CHECKING:
    from ...arena import ArenaSet, Slice

__all__ = [
    "Plan",
    "plan",
    "read",
    "read_bundle",
    "read_coo",
    "read_tensor",
    "write",
    "write_bundle",
    "write_coo",
    "write_tensor",
]

#: (array, order written, payload offset) of each tensor of a frame
Parts = tuple[tuple[Array, str, int], ...]


def _bad(field: str, value: Any, message: str) -> TensorError:
    return TensorError("bad_term", field, value, None, f"bad_term: {message}")


# ---- writing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What a writer puts in a frame: ``metadata`` (the descriptor's ETF),
    ``schema_id``/``schema_version``, the payload length ``nbytes``, and ``fill``, which
    writes the payload into the writable area it is given (each array copied once);
    ``parts`` the arrays with the order each is written in and its payload offset."""

    metadata: bytes
    schema_id: int
    schema_version: int
    nbytes: int
    fill: Callable[[memoryview], None]
    parts: Parts


def _filler(parts: Parts) -> Callable[[memoryview], None]:
    def fill(area: memoryview) -> None:
        dst = np.frombuffer(area, dtype=np.uint8)
        try:
            for arr, order, offset in parts:
                n = arr.dtype.itemsize * arr.size
                if n == 0:
                    continue
                src = bytewise(arr)
                target = np.ndarray(
                    arr.shape, dtype=src.dtype, buffer=dst, offset=offset, order=memory_order(order)
                )
                np.copyto(target, src, casting="no")  # one pass, straight into the slice
                del target, src
                pad_end = min(align(offset + n), dst.nbytes)
                dst[offset + n : pad_end] = 0
        finally:
            del dst

    return fill


def _entries(items: Iterable[tuple[str, Array]]) -> tuple[list[dict[bytes, Any]], Parts, int]:
    entries: list[dict[bytes, Any]] = []
    parts = []
    offset = 0
    for name, value in items:
        arr = as_array(value, name)
        desc = descriptor(arr)
        entries.append({KEY_NAME: name_bytes(name), **desc, KEY_OFFSET: offset})
        parts.append((arr, desc[KEY_ORDER].decode(), offset))
        offset = align(offset + arr.dtype.itemsize * arr.size)
        if len(entries) > MAX_TENSORS:
            raise ValueError(f"a bundle holds at most {MAX_TENSORS} tensors")
    end = parts[-1][2] + parts[-1][0].dtype.itemsize * parts[-1][0].size if parts else 0
    return entries, tuple(parts), end


def plan(value: Any) -> Plan:
    """The frame of an ndarray, a `Bundle` (or any mapping of str -> ndarray) or a
    `COO`. A tensor is always schema 1, a descriptor map.

    >>> p = plan(np.zeros(3, dtype="|b1"))
    >>> p.schema_id, p.nbytes, decode(p.metadata)
    (1, 3, {b'dtype': b'|b1', b'shape': [3], b'order': b'C'})
    """
    if isinstance(value, np.ndarray):
        arr = value
        parts: Parts = ((arr, order_of(arr), 0),)
        metadata = encode(descriptor(arr))
        nbytes = arr.dtype.itemsize * arr.size
        return Plan(metadata, SCHEMA_TENSOR, SCHEMA_VERSION, nbytes, _filler(parts), parts)
    if isinstance(value, COO):
        entries, parts, end = _entries([("indices", value.indices), ("values", value.values)])
        metadata = encode({KEY_SHAPE: list(value.shape), KEY_TENSORS: entries})
        return Plan(metadata, SCHEMA_COO, SCHEMA_VERSION, end, _filler(parts), parts)
    if isinstance(value, Mapping):
        entries, parts, end = _entries(value.items())
        metadata = encode({KEY_TENSORS: entries})
        return Plan(metadata, SCHEMA_BUNDLE, SCHEMA_VERSION, end, _filler(parts), parts)
    raise TypeError(
        f"cannot write a {type(value).__name__} as a tensor frame (an ndarray, a Bundle or "
        "mapping of str -> ndarray, or a COO)"
    )


def write(arenas: ArenaSet, value: Any, *, checksum: bool = True) -> Slice:
    """Write ``value`` (see `plan`) as one tensor frame in a new slice of ``arenas`` and
    return the slice; every array is copied once, straight into the shared memory."""
    p = plan(value)
    into = arenas.put_into(
        p.nbytes,
        metadata=p.metadata,
        format=Format.TENSOR,
        schema_id=p.schema_id,
        schema_version=p.schema_version,
        checksum=checksum,
    )
    with into as (s, area):
        p.fill(area)
        del area
    return s


def write_tensor(arenas: ArenaSet, array: Array, *, checksum: bool = True) -> Slice:
    """Write one array (C or Fortran order kept; a non-contiguous array is made
    C-contiguous while it is copied in)."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"write_tensor needs a numpy.ndarray, got {type(array).__name__}")
    return write(arenas, array, checksum=checksum)


def write_bundle(arenas: ArenaSet, tensors: Mapping[str, Array], *, checksum: bool = True) -> Slice:
    """Write named arrays in one frame, each 64-byte aligned, in the mapping's order."""
    if not isinstance(tensors, Mapping):
        raise TypeError(
            f"write_bundle needs a mapping of str -> ndarray, got {type(tensors).__name__}"
        )
    return write(arenas, tensors, checksum=checksum)


def write_coo(arenas: ArenaSet, coo: COO, *, checksum: bool = True) -> Slice:
    """Write a sparse `COO` array (indices and values, each 64-byte aligned)."""
    if not isinstance(coo, COO):
        raise TypeError(f"write_coo needs a COO, got {type(coo).__name__}")
    return write(arenas, coo, checksum=checksum)


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


def _check_length(h: Header, expected: int) -> None:
    if h.payload_length != expected:
        raise TensorError(
            "bad_term",
            "payload_length",
            h.payload_length,
            expected,
            f"bad_term: the descriptor needs a payload of {expected} bytes, the frame holds "
            f"{h.payload_length}",
        )


def read_tensor(frame: Frame) -> Array:
    """The array of a single-tensor frame (schema 1): a read-only view over the frame's
    payload. The frame's lease lasts as long as the array (or anything made from it)
    lives."""
    h = _check_frame(frame, (SCHEMA_TENSOR,))
    dt, dims, order = parse_descriptor(_meta(frame))
    _check_length(h, dt.itemsize * math.prod(dims))
    return array_from_buffer(dt, dims, order, frame.payload)


def _entry_name(entry: Any, seen: dict[str, Array]) -> str:
    if type(entry) is not dict:
        raise _bad("tensors", short(entry), "a bundle entry is a map")
    raw = entry.get(KEY_NAME)
    if type(raw) is not bytes or not 0 < len(raw) <= MAX_NAME_BYTES:
        raise _bad("name", short(raw), f"a tensor name is a binary of 1 to {MAX_NAME_BYTES} bytes")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("name", raw, f"tensor name {raw!r} is not UTF-8") from None
    if name in seen:
        raise _bad("name", raw, f"tensor name {name!r} appears twice")
    return name


def _read_entries(
    frame: Frame, entries: Any, names: tuple[str, ...] | None = None
) -> dict[str, Array]:
    if type(entries) is not list or len(entries) > MAX_TENSORS:
        raise _bad(
            "tensors", short(entries), f'"tensors" is a list of at most {MAX_TENSORS} entries'
        )
    out: dict[str, Array] = {}
    offset = 0
    end = 0
    for entry in entries:
        name = _entry_name(entry, out)
        dt, dims, order = parse_descriptor(entry)
        if entry.get(KEY_OFFSET) != offset or type(entry.get(KEY_OFFSET)) is not int:
            raise _bad(
                "offset",
                entry.get(KEY_OFFSET),
                f"tensor {name!r} must start at payload offset {offset} (each tensor at the "
                f"next multiple of {ALIGN})",
            )
        nbytes = dt.itemsize * math.prod(dims)
        if offset + nbytes > frame.header.payload_length:
            raise _bad(
                "shape",
                dims,
                f"tensor {name!r} ({nbytes} bytes at {offset}) runs past the payload of "
                f"{frame.header.payload_length} bytes",
            )
        out[name] = array_from_buffer(dt, dims, order, frame.payload, offset)
        end = offset + nbytes
        offset = align(end)
    if names is not None and tuple(out) != names:
        raise _bad("tensors", list(out), f"expected tensors named {list(names)}")
    _check_length(frame.header, end)
    return out


def read_bundle(frame: Frame) -> Bundle:
    """The `Bundle` of a schema 2 frame: read-only views, one per tensor."""
    _check_frame(frame, (SCHEMA_BUNDLE,))
    meta = _meta(frame)
    if type(meta) is not dict:
        raise _bad("metadata", short(meta), 'bundle metadata is a map {"tensors" => [...]}')
    return Bundle(_read_entries(frame, meta.get(KEY_TENSORS)))


def read_coo(frame: Frame) -> COO:
    """The `COO` of a schema 3 frame (indices and values are read-only views)."""
    _check_frame(frame, (SCHEMA_COO,))
    meta = _meta(frame)
    if type(meta) is not dict:
        raise _bad("metadata", short(meta), 'COO metadata is a map {"shape", "tensors"}')
    shape = tuple(check_dims(meta.get(KEY_SHAPE), "shape"))
    parts = _read_entries(frame, meta.get(KEY_TENSORS), ("indices", "values"))
    return coo_from_parts(parts["indices"], parts["values"], shape)


def read(frame: Frame) -> Array | Bundle | COO:
    """Whatever a tensor frame holds, by its ``schema_id``."""
    h = _check_frame(frame, (SCHEMA_TENSOR, SCHEMA_BUNDLE, SCHEMA_COO))
    if h.schema_id == SCHEMA_BUNDLE:
        return read_bundle(frame)
    if h.schema_id == SCHEMA_COO:
        return read_coo(frame)
    return read_tensor(frame)
