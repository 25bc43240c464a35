"""Data terms (protocol/SPEC.md §9, §10.1): the tags of the
tagged terms and the handle kinds, shared by `beambridge.decoder` (arguments) and
`beambridge.encoder` (results). The tables come from the registry
(`beambridge.registry`); a tag or kind named here that the registry lacks fails at
import.

``{:"$bb_slice", kind, index}`` stands for the value in entry ``index`` of the frame's
``slices``; ``kind`` says how to read it and which frames it accepts:

>>> KIND_FORMATS[KIND_RECORDS].name, KIND_SCHEMAS[KIND_TENSOR]
('ARROW_STREAM', (1,))
>>> sorted(COPIED_KINDS)
[Atom('binary'), Atom('custom'), Atom('packed'), Atom('records'), Atom('schema_list')]
"""

from __future__ import annotations

from . import registry
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
    "KIND_SCHEMA_LIST",
    "KIND_SPARSE_COO",
    "KIND_TENSOR",
    "KIND_TENSOR_BUNDLE",
    "LAYOUT_COLUMNS",
    "LAYOUT_ROWS",
    "POLICIES",
    "TAG_ARROW",
    "TAG_BUFFER",
    "TAG_CHUNKED",
    "TAG_CUSTOM",
    "TAG_PACKED",
    "TAG_RECORDS",
    "TAG_SCHEMA",
    "TAG_SCHEMA_LIST",
    "TAG_SLICE",
    "TAG_SPARSE_COO",
    "TAG_STREAM",
    "TAG_TENSOR",
    "TAG_TENSOR_BUNDLE",
]

#: Payloads of at least this many bytes travel in slices (SPEC §10; BEAMBRIDGE_THRESHOLD).
DEFAULT_THRESHOLD = 65536


def _tag(name: str) -> Atom:
    if name not in registry.TAGS:
        raise registry.RegistryError(f"the tag {name!r} is not in the registry's tags")
    return Atom(name)


def _kind(name: str) -> Atom:
    if name not in registry.HANDLE_KINDS:
        raise registry.RegistryError(f"the handle kind {name!r} is not in the registry")
    return Atom(name)


TAG_SLICE = _tag("$bb_slice")
TAG_BUFFER = _tag("$bb_buffer")
TAG_TENSOR = _tag("$bb_tensor")
TAG_TENSOR_BUNDLE = _tag("$bb_tensor_bundle")
TAG_SPARSE_COO = _tag("$bb_sparse_coo")
TAG_ARROW = _tag("$bb_arrow")
TAG_PACKED = _tag("$bb_packed")
TAG_RECORDS = _tag("$bb_records")
TAG_CUSTOM = _tag("$bb_custom")
TAG_STREAM = _tag("$bb_stream")
TAG_CHUNKED = _tag("$bb_chunked")
TAG_PIECES = _tag("$bb_pieces")
TAG_PIECE = _tag("$bb_piece")
TAG_SCHEMA = _tag("$bb_schema")
TAG_SCHEMA_LIST = _tag("$bb_schema_list")
TAG_PID = _tag("$bb_pid")
TAG_REF = _tag("$bb_ref")
KIND_BINARY = _kind("binary")
KIND_BUFFER = _kind("buffer")
KIND_TENSOR = _kind("tensor")
KIND_TENSOR_BUNDLE = _kind("tensor_bundle")
KIND_SPARSE_COO = _kind("sparse_coo")
KIND_ARROW = _kind("arrow")
KIND_PACKED = _kind("packed")
KIND_RECORDS = _kind("records")
KIND_CUSTOM = _kind("custom")
KIND_SCHEMA_LIST = _kind("schema_list")
LAYOUT_ROWS, LAYOUT_COLUMNS = Atom("rows"), Atom("columns")
if (LAYOUT_ROWS, LAYOUT_COLUMNS) != registry.RECORDS_LAYOUTS:
    raise registry.RegistryError("the records layouts are not the registry's rows, columns")

#: The frame format each handle kind reads (SPEC §9, §10.1, formats/custom.md), from the
#: registry's ``handle_kinds``.
KIND_FORMATS = {Atom(kind): Format[fmt.upper()] for kind, fmt in registry.HANDLE_KINDS.items()}
KINDS = tuple(KIND_FORMATS)
#: The tensor frame schemas (formats/tensor.md §1) of the tensor handle kinds; ``packed``
#: frames are schema 0, ``{dtype, [length]}`` (SPEC §10.1), read by their own reader.
KIND_SCHEMAS = {
    Atom(kind): schemas
    for kind, schemas in registry.HANDLE_KIND_SCHEMAS.items()
    if kind != KIND_PACKED
}
#: Kinds whose value is copied out of its slice: the lease ends with the conversion.
COPIED_KINDS = frozenset(Atom(kind) for kind in registry.COPIED_KINDS)
#: Result format policies (the ``"format"`` call option, SPEC §8.3, §10.1), the default
#: first.
POLICIES = registry.POLICIES
