"""The metadata descriptor of an Arrow frame (protocol/formats/arrow.md): a small ETF
term readable without touching the payload, a map with binary keys::

    %{"version" => 1, "num_rows" => non_neg_integer, "num_columns" => non_neg_integer,
      "num_batches" => non_neg_integer,
      "fields" => [{name :: binary, type :: binary, nullable :: boolean}] | nil}

``type`` is Arrow's canonical type string (``"int64"``, ``"string"``,
``"timestamp[us, tz=UTC]"``, ``"list<item: int32>"``, ``"dictionary<values=string,
indices=int32, ordered=0>"``). ``fields`` is ``nil`` when listing them would take more
than `MAX_FIELDS_BYTES` (very wide schemas), which keeps the descriptor far below
``MAX_METADATA``.

>>> import pyarrow as pa
>>> meta = encode_descriptor(pa.schema([("id", pa.int64())]), num_rows=3, num_batches=1)
>>> arrow_descriptor(meta)
ArrowDescriptor(num_rows=3, num_columns=1, num_batches=1, fields=(('id', 'int64', True),))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ... import etf
from ...errors import EtfError, FormatError

__all__ = [
    "DESCRIPTOR_VERSION",
    "MAX_FIELDS_BYTES",
    "ArrowDescriptor",
    "arrow_descriptor",
    "bad_metadata",
    "encode_descriptor",
]

#: ``"version"`` of the metadata descriptor this module writes and reads.
DESCRIPTOR_VERSION = 1
#: The descriptor lists its fields only while they take at most this many bytes.
MAX_FIELDS_BYTES = 64 * 1024


@dataclass(frozen=True)
class ArrowDescriptor:
    """The decoded frame metadata of an Arrow payload (see the module docstring).

    ``fields`` holds ``(name, type, nullable)`` per column, or ``None`` when the writer
    left them out (more than `MAX_FIELDS_BYTES`).
    """

    num_rows: int
    num_columns: int
    num_batches: int
    fields: tuple[tuple[str, str, bool], ...] | None


def encode_descriptor(schema: pa.Schema, num_rows: int, num_batches: int) -> bytes:
    """The frame metadata descriptor (see the module docstring) of a stream."""
    fields: list[tuple[str, str, bool]] | None = [
        (f.name, str(f.type), bool(f.nullable)) for f in schema
    ]
    encoded_fields = etf.encode(fields)
    if len(encoded_fields) > MAX_FIELDS_BYTES:
        fields = None
    return etf.encode(
        {
            b"version": DESCRIPTOR_VERSION,
            b"num_rows": num_rows,
            b"num_columns": len(schema),
            b"num_batches": num_batches,
            b"fields": fields,
        }
    )


def bad_metadata(value: Any, message: str) -> FormatError:
    """The `beambridge.errors.FormatError` ``bad_metadata`` of a descriptor."""
    return FormatError("bad_metadata", "metadata", value, None, f"bad_metadata: {message}")


def arrow_descriptor(metadata: bytes) -> ArrowDescriptor:
    """Decode an Arrow frame's metadata descriptor without touching the payload.

    Raises `beambridge.FormatError` ``bad_metadata`` when it is not a version-1
    descriptor (the ETF is decoded with the safe decoder of §8.2).

    >>> arrow_descriptor(b"junk")
    Traceback (most recent call last):
    ...
    beambridge.errors.FormatError: bad_metadata: not ETF: ...
    """
    try:
        term = etf.decode(metadata)
    except EtfError as exc:
        raise bad_metadata(None, f"not ETF: {exc}") from None
    if not isinstance(term, dict):
        raise bad_metadata(type(term).__name__, "the descriptor is not a map")
    if term.get(b"version") != DESCRIPTOR_VERSION:
        raise bad_metadata(
            term.get(b"version"),
            f"descriptor version {term.get(b'version')!r}, not {DESCRIPTOR_VERSION}",
        )
    counts = []
    for key in (b"num_rows", b"num_columns", b"num_batches"):
        value = term.get(key)
        if type(value) is not int or value < 0:
            raise bad_metadata(value, f"{key.decode()} is {value!r}, not a count")
        counts.append(value)
    raw_fields = term.get(b"fields")
    fields: tuple[tuple[str, str, bool], ...] | None = None
    if raw_fields is not None:
        fields = _fields(raw_fields)
    return ArrowDescriptor(counts[0], counts[1], counts[2], fields)


def _fields(raw_fields: Any) -> tuple[tuple[str, str, bool], ...]:
    if not isinstance(raw_fields, list):
        raise bad_metadata(type(raw_fields).__name__, "fields is not a list or nil")
    out = []
    for item in raw_fields:
        if not (
            isinstance(item, tuple)
            and len(item) == 3
            and type(item[0]) is bytes
            and type(item[1]) is bytes
            and type(item[2]) is bool
        ):
            raise bad_metadata(item, f"field entry {item!r} is not {{name, type, bool}}")
        try:
            out.append((item[0].decode(), item[1].decode(), item[2]))
        except UnicodeDecodeError:
            raise bad_metadata(item, "a field name or type is not UTF-8") from None
    return tuple(out)
