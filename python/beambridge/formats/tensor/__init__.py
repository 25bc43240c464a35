"""The tensor format (``format`` 1): NumPy arrays, named bundles of them and sparse COO
arrays written once into a frame (an arena slice or a sealed object) and read back as
read-only views in place, or carried inline in a data term.

protocol/formats/tensor.md is the contract; this package is its Python side, one
module per concept as on the Elixir side: `beambridge.formats.tensor.dtype` (element
types and their descriptors, ``Bridge.Tensor.Dtype``), `beambridge.formats.tensor.wire`
(array descriptors and inline terms, ``Bridge.Tensor.Wire``),
`beambridge.formats.tensor.frames` (tensor frames), `beambridge.formats.tensor.bundle`
and `beambridge.formats.tensor.coo` (``Bridge.Tensor.Bundle``, ``Bridge.Tensor.COO``).
Every public name is importable from here.

A frame's ``schema_id`` says what it holds (``schema_version`` the descriptor version):

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
layout of ``packed`` frames (SPEC §10.1, `beambridge.formats.packed`).

Descriptors are plain ETF terms decoded by the restricted decoder (no pickle, no eval);
dtype strings are checked against a grammar before NumPy sees them, then must be
NumPy's canonical spelling. Object dtypes and anything else that would need pickle are
refused on the way out with `UnsupportedDtypeError` (a ``TypeError``) that says what to
do instead.

>>> import numpy as np
>>> from beambridge.arena import ArenaSet, PeerObject
>>> arr = np.arange(6, dtype=">i2").reshape(2, 3).T        # big-endian, Fortran order
>>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
>>> s = write_tensor(arenas, arr)
>>> peer = PeerObject.open(*arenas.announcement(s.object_id))
>>> back = read_tensor(peer.read_frame(s.offset, s.length, s.generation))
>>> bool((back == arr).all()), back.dtype.str, back.flags.f_contiguous
(True, '>i2', True)
>>> del back; peer.close(); arenas.close()
"""

from __future__ import annotations

from ...errors import TensorError, UnsupportedDtypeError
from .bundle import Bundle
from .coo import COO, coo_from_parts
from .dtype import (
    MAX_DTYPE_DEPTH,
    MAX_FIELDS,
    MAX_ITEMSIZE,
    MAX_NAME_BYTES,
    MAX_NDIM,
    Descr,
    check_dims,
    dtype_from_descr,
    dtype_to_descr,
)
from .frames import (
    Plan,
    plan,
    read,
    read_bundle,
    read_coo,
    read_tensor,
    write,
    write_bundle,
    write_coo,
    write_tensor,
)
from .wire import (
    ALIGN,
    MAX_TENSORS,
    SCHEMA_BUNDLE,
    SCHEMA_COO,
    SCHEMA_PACKED,
    SCHEMA_TENSOR,
    SCHEMA_VERSION,
    array_from_buffer,
    descriptor,
    from_inline,
    from_inline_entries,
    inline_entries,
    parse_descriptor,
    raw_bytes,
)

__all__ = [
    "ALIGN",
    "COO",
    "MAX_DTYPE_DEPTH",
    "MAX_FIELDS",
    "MAX_ITEMSIZE",
    "MAX_NAME_BYTES",
    "MAX_NDIM",
    "MAX_TENSORS",
    "SCHEMA_BUNDLE",
    "SCHEMA_COO",
    "SCHEMA_PACKED",
    "SCHEMA_TENSOR",
    "SCHEMA_VERSION",
    "Bundle",
    "Descr",
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
    "parse_descriptor",
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
