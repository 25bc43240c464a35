"""The header's layout (protocol/SPEC.md §5): its constants, its fields as `Header`,
the format and codec codes, and packing.

>>> raw = pack_header(Header(payload_length=3, decoded_length=3))
>>> len(raw), raw[:4]
(128, b'BBFH')
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import xxhash

from .. import registry

__all__ = [
    "CHECKSUMMED",
    "DEFAULT_MAX_DECODED_LENGTH",
    "FLAG_HOLDS_META",
    "FLAG_PAYLOAD_CHECKSUM",
    "HEADER_SIZE",
    "KNOWN_REQUIRED_FLAGS",
    "LAYOUT",
    "MAGIC",
    "MAX_METADATA",
    "OPTIONAL_FLAGS_MASK",
    "PAYLOAD_ALIGN",
    "REQUIRED_FLAGS_MASK",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "Codec",
    "Format",
    "Header",
    "header_checksum",
    "pack_fields",
    "pack_header",
    "payload_offset_for",
    "with_fields",
]

MAGIC = b"BBFH"
VERSION_MAJOR = 2
VERSION_MINOR = 1
HEADER_SIZE = 128
MAX_METADATA = 1 << 20
DEFAULT_MAX_DECODED_LENGTH = 2**32
PAYLOAD_ALIGN = 64
FLAG_PAYLOAD_CHECKSUM = 1 << 0
#: Optional: the provenance block starts with a stored meta (SPEC §5.2, §5.4).
FLAG_HOLDS_META = 1 << 16
#: Flag bits 0-15 must be understood by a reader; this is the set this reader knows.
KNOWN_REQUIRED_FLAGS = FLAG_PAYLOAD_CHECKSUM
REQUIRED_FLAGS_MASK = 0x0000FFFF
OPTIONAL_FLAGS_MASK = 0xFFFF0000

# magic, version_major, version_minor, header_size, format, codec, flags, generation,
# schema_id, schema_version, metadata_length, payload_offset, payload_length,
# decoded_length, payload_checksum, created_at, frame_id, provenance_length, reserved,
# provenance_checksum, reserved, header_checksum
LAYOUT = struct.Struct("<4sHHHBBIQQIIQQQQQQI4sQ16sQ")
CHECKSUMMED = 120  # header bytes covered by header_checksum
_ZERO4, _ZERO16 = bytes(4), bytes(16)
assert LAYOUT.size == HEADER_SIZE


class Format(IntEnum):
    """Payload format codes (§5.1 ``format``), the registry's ``formats``."""

    RAW = registry.FORMATS["raw"]
    TENSOR = registry.FORMATS["tensor"]
    ARROW_STREAM = registry.FORMATS["arrow_stream"]
    ETF = registry.FORMATS["etf"]
    CUSTOM = registry.FORMATS["custom"]
    SSZ = registry.FORMATS["ssz"]


class Codec(IntEnum):
    """Payload compression codes (§5.1 ``codec``), the registry's ``codecs``."""

    NONE = registry.CODECS["none"]
    LZ4_FRAME = registry.CODECS["lz4_frame"]
    ZSTD = registry.CODECS["zstd"]
    GZIP = registry.CODECS["gzip"]


@dataclass(frozen=True)
class Header:
    """Every field of a frame header (§5.1); ``magic`` is implied.

    A `Header` returned by `validate_header` passed checks 1-16. One built by hand is
    just values; `pack_header` writes them as given.
    """

    format: Format | int = Format.RAW
    codec: Codec | int = Codec.NONE
    flags: int = FLAG_PAYLOAD_CHECKSUM
    generation: int = 0
    schema_id: int = 0
    schema_version: int = 0
    metadata_length: int = 0
    payload_offset: int = HEADER_SIZE
    payload_length: int = 0
    decoded_length: int = 0
    payload_checksum: int = 0
    header_checksum: int = 0
    version_major: int = VERSION_MAJOR
    version_minor: int = VERSION_MINOR
    header_size: int = HEADER_SIZE
    created_at: int = 0
    frame_id: int = 0
    provenance_length: int = 0
    provenance_checksum: int = 0


def payload_offset_for(metadata_length: int) -> int:
    """The smallest multiple of 64 that is at least ``128 + metadata_length``.

    >>> payload_offset_for(0), payload_offset_for(1), payload_offset_for(64)
    (128, 192, 192)
    """
    if metadata_length < 0:
        raise ValueError(f"metadata_length must be >= 0, got {metadata_length}")
    end = HEADER_SIZE + metadata_length
    return -(-end // PAYLOAD_ALIGN) * PAYLOAD_ALIGN


def header_checksum(header_prefix: bytes, metadata: bytes) -> int:
    """``xxh3_64(header[0:120] ++ metadata)``; ``header_prefix`` may be the full header
    (bytes). One-shot: the streaming hasher costs twice as much on a header."""
    prefix = header_prefix[:CHECKSUMMED]
    return xxhash.xxh3_64_intdigest(prefix + metadata if metadata else prefix)


def pack_fields(header: Header, checksum: int) -> bytes:
    return LAYOUT.pack(
        MAGIC,
        header.version_major,
        header.version_minor,
        header.header_size,
        int(header.format),
        int(header.codec),
        header.flags,
        header.generation,
        header.schema_id,
        header.schema_version,
        header.metadata_length,
        header.payload_offset,
        header.payload_length,
        header.decoded_length,
        header.payload_checksum,
        header.created_at,
        header.frame_id,
        header.provenance_length,
        _ZERO4,
        header.provenance_checksum,
        _ZERO16,
        checksum,
    )


def pack_header(header: Header, metadata: bytes = b"") -> bytes:
    """The 128 header bytes of ``header``, with ``header_checksum`` computed over
    ``header[0:120] ++ metadata`` (the ``header_checksum`` field of ``header`` is ignored).

    >>> raw = pack_header(Header(metadata_length=2), b"hi")
    >>> len(raw), raw[:4]
    (128, b'BBFH')
    """
    draft = pack_fields(header, 0)
    return draft[:CHECKSUMMED] + struct.pack("<Q", header_checksum(draft, metadata))


def with_fields(header: Header, **changes: Any) -> Header:
    """``dataclasses.replace(header, **changes)`` without its cost (about 5 µs, twice per
    frame written): the copy is made by filling a new instance's ``__dict__``. Only for
    field names of `Header` (it has no ``__post_init__`` to skip).

    >>> with_fields(Header(), generation=7).generation
    7
    """
    new = object.__new__(Header)
    new.__dict__.update(header.__dict__)
    new.__dict__.update(changes)
    return new
