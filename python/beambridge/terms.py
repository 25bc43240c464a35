"""Data terms (protocol/SPEC.md §7.4, §8.1, transport-v2.md §5.3): the tags of the
tagged terms and the handle kinds, shared by `beambridge.decoder` (arguments) and
`beambridge.encoder` (results).

``{:"$bb_slice", kind, index}`` stands for the value in entry ``index`` of the frame's
``slices``; ``kind`` says how to read it and which frames it accepts:

>>> KIND_FORMATS[KIND_RECORDS].name, KIND_SCHEMAS[KIND_TENSOR]
('ARROW_STREAM', (1,))
>>> sorted(COPIED_KINDS)
[Atom('binary'), Atom('custom'), Atom('packed'), Atom('records')]
"""

from __future__ import annotations

from .etf import Atom
from .header import Format

__all__ = [
    "COPIED_KINDS",
    "DEFAULT_THRESHOLD",
    "KINDS",
    "KIND_ARROW",
    "KIND_BINARY",
    "KIND_BUFFER",
    "KIND_CUSTOM",
    "KIND_FORMATS",
    "KIND_PACKED",
    "KIND_RECORDS",
    "KIND_SCHEMAS",
    "KIND_SPARSE_COO",
    "KIND_TENSOR",
    "KIND_TENSOR_BUNDLE",
    "LAYOUT_COLUMNS",
    "LAYOUT_ROWS",
    "POLICIES",
    "TAG_ARROW",
    "TAG_BUFFER",
    "TAG_CUSTOM",
    "TAG_PACKED",
    "TAG_RECORDS",
    "TAG_SLICE",
    "TAG_SPARSE_COO",
    "TAG_TENSOR",
    "TAG_TENSOR_BUNDLE",
]

#: Payloads of at least this many bytes travel in slices (SPEC §8; BEAMBRIDGE_THRESHOLD).
DEFAULT_THRESHOLD = 65536

TAG_SLICE = Atom("$bb_slice")
TAG_BUFFER = Atom("$bb_buffer")
TAG_TENSOR = Atom("$bb_tensor")
TAG_TENSOR_BUNDLE = Atom("$bb_tensor_bundle")
TAG_SPARSE_COO = Atom("$bb_sparse_coo")
TAG_ARROW = Atom("$bb_arrow")
TAG_PACKED = Atom("$bb_packed")
TAG_RECORDS = Atom("$bb_records")
TAG_CUSTOM = Atom("$bb_custom")
KIND_BINARY = Atom("binary")
KIND_BUFFER = Atom("buffer")
KIND_TENSOR = Atom("tensor")
KIND_TENSOR_BUNDLE = Atom("tensor_bundle")
KIND_SPARSE_COO = Atom("sparse_coo")
KIND_ARROW = Atom("arrow")
KIND_PACKED = Atom("packed")
KIND_RECORDS = Atom("records")
KIND_CUSTOM = Atom("custom")
LAYOUT_ROWS, LAYOUT_COLUMNS = Atom("rows"), Atom("columns")

#: The frame format each handle kind reads (SPEC §7.4, §8.1, formats/custom.md).
KIND_FORMATS = {
    KIND_BINARY: Format.RAW,
    KIND_BUFFER: Format.RAW,
    KIND_TENSOR: Format.TENSOR,
    KIND_TENSOR_BUNDLE: Format.TENSOR,
    KIND_SPARSE_COO: Format.TENSOR,
    KIND_ARROW: Format.ARROW_STREAM,
    KIND_PACKED: Format.TENSOR,
    KIND_RECORDS: Format.ARROW_STREAM,
    KIND_CUSTOM: Format.CUSTOM,
}
KINDS = tuple(KIND_FORMATS)
#: The tensor frame schemas (formats/tensor.md §1) of the tensor handle kinds; ``packed``
#: frames are schema 0, ``{dtype, [length]}`` (SPEC §8.1).
KIND_SCHEMAS = {KIND_TENSOR: (1,), KIND_TENSOR_BUNDLE: (2,), KIND_SPARSE_COO: (3,)}
#: Kinds whose value is copied out of its slice: the lease ends with the conversion.
COPIED_KINDS = frozenset((KIND_BINARY, KIND_PACKED, KIND_RECORDS, KIND_CUSTOM))
#: Result format policies (the ``"format"`` call option, SPEC §7.3, §8.1).
POLICIES = ("auto", "etf", "packed", "arrow")
