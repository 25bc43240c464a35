"""Writing headers (protocol/SPEC.md §5): `build_header` checks a writer's fields,
`encode_frame` lays a whole frame out in private memory.

>>> frame = encode_frame(b"x" * 10, metadata=b"m", schema_id=7)
>>> len(frame), frame[:4]
(202, b'BBFH')
"""

from __future__ import annotations

import struct

import xxhash

from ..errors import HeaderError
from ..provenance import holds_meta
from .layout import (
    CHECKSUMMED,
    FLAG_HOLDS_META,
    FLAG_PAYLOAD_CHECKSUM,
    HEADER_SIZE,
    LAYOUT,
    MAGIC,
    MAX_METADATA,
    OPTIONAL_FLAGS_MASK,
    PAYLOAD_ALIGN,
    VERSION_MAJOR,
    VERSION_MINOR,
    Codec,
    Format,
    Header,
    header_checksum,
    pack_header,
    payload_offset_for,
)

__all__ = ["build_header", "encode_frame", "pack_plain_header"]

_ZERO4, _ZERO16 = bytes(4), bytes(16)
_pack_checksum = struct.Struct("<Q").pack


def pack_plain_header(
    payload_length: int,
    metadata: bytes,
    *,
    format: Format | int,
    generation: int,
    schema_id: int = 0,
    schema_version: int = 0,
    payload_checksum: int | None = None,
    created_at: int = 0,
    frame_id: int = 0,
    provenance: bytes = b"",
) -> bytes:
    """The 128 header bytes of an uncompressed frame at the smallest payload offset, in
    one step: what `build_header` then `pack_header` give for these fields (a
    ``payload_checksum`` sets the flag ``PAYLOAD_CHECKSUM``; ``provenance`` is the block
    that follows the metadata, §5.4), for writers on the call path. ``format`` is not
    checked; a field that does not fit raises ``struct.error``.

    >>> from beambridge.header import decode_frame
    >>> head = pack_plain_header(3, b"", format=Format.RAW, generation=9)
    >>> decode_frame(head + b"abc")[0].generation
    9
    """
    if len(metadata) > MAX_METADATA:
        raise HeaderError("metadata_too_large", "metadata_length", len(metadata), MAX_METADATA)
    draft = LAYOUT.pack(
        MAGIC,
        VERSION_MAJOR,
        VERSION_MINOR,
        HEADER_SIZE,
        format,
        Codec.NONE,
        (0 if payload_checksum is None else FLAG_PAYLOAD_CHECKSUM)
        | (FLAG_HOLDS_META if holds_meta(provenance) else 0),
        generation,
        schema_id,
        schema_version,
        len(metadata),
        payload_offset_for(len(metadata) + len(provenance)),
        payload_length,
        payload_length,
        payload_checksum or 0,
        created_at,
        frame_id,
        len(provenance),
        _ZERO4,
        xxhash.xxh3_64_intdigest(provenance) if provenance else 0,
        _ZERO16,
        0,
    )
    return draft[:CHECKSUMMED] + _pack_checksum(header_checksum(draft, metadata))


def build_header(
    payload_length: int,
    payload_checksum: int,
    *,
    metadata: bytes = b"",
    format: Format | int = Format.RAW,
    codec: Codec | int = Codec.NONE,
    schema_id: int = 0,
    schema_version: int = 0,
    generation: int = 1,
    decoded_length: int | None = None,
    checksum: bool = True,
    version_minor: int = VERSION_MINOR,
    flags_extra: int = 0,
    payload_offset: int | None = None,
    created_at: int = 0,
    frame_id: int = 0,
    provenance: bytes = b"",
) -> Header:
    """A checked `Header` for a frame a writer is about to produce (no checksum yet);
    ``provenance`` is the block that will follow the metadata (§5.4)."""
    fmt = Format(format)
    cod = Codec(codec)
    if len(metadata) > MAX_METADATA:
        raise HeaderError("metadata_too_large", "metadata_length", len(metadata), MAX_METADATA)
    if provenance and version_minor == 0:
        raise ValueError("a frame of version_minor 0 has no provenance block (SPEC §5.4)")
    minimum = payload_offset_for(len(metadata) + len(provenance))
    offset = minimum if payload_offset is None else payload_offset
    if offset % PAYLOAD_ALIGN or offset < minimum:
        raise ValueError(
            f"payload_offset {offset} must be a multiple of {PAYLOAD_ALIGN} and >= {minimum}"
        )
    if flags_extra & ~OPTIONAL_FLAGS_MASK:
        raise ValueError(
            f"flags_extra {flags_extra:#x} may only set optional bits 16-31 "
            "(a required bit a reader does not know makes it refuse the frame)"
        )
    if decoded_length is None:
        if cod != Codec.NONE:
            raise ValueError(f"decoded_length is required for codec {cod.name.lower()}")
        decoded_length = payload_length
    elif cod == Codec.NONE and decoded_length != payload_length:
        raise ValueError(
            f"decoded_length {decoded_length} must equal payload_length {payload_length} "
            "for an uncompressed payload"
        )
    for name, value, bits in (
        ("generation", generation, 64),
        ("schema_id", schema_id, 64),
        ("schema_version", schema_version, 32),
        ("decoded_length", decoded_length, 64),
        ("version_minor", version_minor, 16),
        ("created_at", created_at, 64),
        ("frame_id", frame_id, 64),
    ):
        if not 0 <= value < 2**bits:
            raise ValueError(f"{name} {value} does not fit in u{bits}")
    flags = (FLAG_PAYLOAD_CHECKSUM if checksum else 0) | flags_extra
    if holds_meta(provenance):
        flags |= FLAG_HOLDS_META
    return Header(
        format=fmt,
        codec=cod,
        flags=flags,
        generation=generation,
        schema_id=schema_id,
        schema_version=schema_version,
        metadata_length=len(metadata),
        payload_offset=offset,
        payload_length=payload_length,
        decoded_length=decoded_length,
        payload_checksum=payload_checksum if checksum else 0,
        version_minor=version_minor,
        created_at=created_at,
        frame_id=frame_id,
        provenance_length=len(provenance),
        provenance_checksum=xxhash.xxh3_64_intdigest(provenance) if provenance else 0,
    )


def encode_frame(
    payload: object,
    *,
    metadata: bytes = b"",
    format: Format | int = Format.RAW,
    codec: Codec | int = Codec.NONE,
    schema_id: int = 0,
    schema_version: int = 0,
    generation: int = 1,
    decoded_length: int | None = None,
    checksum: bool = True,
    version_minor: int = VERSION_MINOR,
    flags_extra: int = 0,
    payload_offset: int | None = None,
    created_at: int = 0,
    frame_id: int = 0,
    provenance: bytes = b"",
) -> bytes:
    """A complete frame (header, metadata, provenance block, zero padding, payload) as
    ``bytes``.

    ``payload`` is any bytes-like object. ``payload_offset`` defaults to
    `payload_offset_for` ``(len(metadata) + len(provenance))``; a larger multiple of 64
    leaves extra room.

    >>> frame = encode_frame(b"x" * 10, metadata=b"m", schema_id=7)
    >>> len(frame), frame[:4]
    (202, b'BBFH')
    """
    data = memoryview(payload).cast("B")  # type: ignore[arg-type]
    metadata = bytes(metadata)
    header = build_header(
        data.nbytes,
        xxhash.xxh3_64_intdigest(data) if checksum else 0,
        metadata=metadata,
        format=format,
        codec=codec,
        schema_id=schema_id,
        schema_version=schema_version,
        generation=generation,
        decoded_length=decoded_length,
        checksum=checksum,
        version_minor=version_minor,
        flags_extra=flags_extra,
        payload_offset=payload_offset,
        created_at=created_at,
        frame_id=frame_id,
        provenance=provenance,
    )
    padding = header.payload_offset - HEADER_SIZE - len(metadata) - len(provenance)
    return b"".join((pack_header(header, metadata), metadata, provenance, bytes(padding), data))
