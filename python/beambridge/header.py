"""The 128-byte frame header: layout, packing and validation (protocol/SPEC.md §5-§6).

A frame is ``header (128 bytes) | metadata | zero padding | payload`` with the payload at
a 64-aligned offset. `encode_frame` builds one in private memory, `decode_frame` checks
one and returns a read-only view of its payload.

>>> frame = encode_frame(b"hello", metadata=b"greeting")
>>> header, metadata, payload = decode_frame(frame)
>>> header.payload_offset, metadata, bytes(payload)
(192, b'greeting', b'hello')
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import xxhash

from . import registry
from .errors import ChecksumError, HeaderError

__all__ = [
    "DEFAULT_MAX_DECODED_LENGTH",
    "FLAG_PAYLOAD_CHECKSUM",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_METADATA",
    "PAYLOAD_ALIGN",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "Codec",
    "Format",
    "Header",
    "decode_frame",
    "encode_frame",
    "header_checksum",
    "pack_header",
    "payload_offset_for",
    "validate_header",
    "with_fields",
]

MAGIC = b"BBFH"
VERSION_MAJOR = 2
VERSION_MINOR = 0
HEADER_SIZE = 128
MAX_METADATA = 1 << 20
DEFAULT_MAX_DECODED_LENGTH = 2**32
PAYLOAD_ALIGN = 64
FLAG_PAYLOAD_CHECKSUM = 1 << 0
#: Flag bits 0-15 must be understood by a reader; this is the set this reader knows.
KNOWN_REQUIRED_FLAGS = FLAG_PAYLOAD_CHECKSUM
REQUIRED_FLAGS_MASK = 0x0000FFFF
OPTIONAL_FLAGS_MASK = 0xFFFF0000
_U64_LIMIT = 2**64

# magic, version_major, version_minor, header_size, format, codec, flags, generation,
# schema_id, schema_version, metadata_length, payload_offset, payload_length,
# decoded_length, payload_checksum, reserved, header_checksum
_LAYOUT = struct.Struct("<4sHHHBBIQQIIQQQQ48sQ")
_CHECKSUMMED = 120  # header bytes covered by header_checksum
assert _LAYOUT.size == HEADER_SIZE


class Format(IntEnum):
    """Payload format codes (§5.1 ``format``), the registry's ``formats``."""

    RAW = registry.FORMATS["raw"]
    TENSOR = registry.FORMATS["tensor"]
    ARROW_STREAM = registry.FORMATS["arrow_stream"]
    ETF = registry.FORMATS["etf"]
    CUSTOM = registry.FORMATS["custom"]


class Codec(IntEnum):
    """Payload compression codes (§5.1 ``codec``), the registry's ``codecs``."""

    NONE = registry.CODECS["none"]
    LZ4_FRAME = registry.CODECS["lz4_frame"]
    ZSTD = registry.CODECS["zstd"]


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
    reserved: bytes = field(default=bytes(48), repr=False)


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
    """``xxh3_64(header[0:120] ++ metadata)``; ``header_prefix`` may be the full header."""
    h = xxhash.xxh3_64()
    h.update(header_prefix[:_CHECKSUMMED])
    h.update(metadata)
    return int(h.intdigest())


def _pack_fields(header: Header, checksum: int) -> bytes:
    return _LAYOUT.pack(
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
        header.reserved,
        checksum,
    )


def pack_header(header: Header, metadata: bytes = b"") -> bytes:
    """The 128 header bytes of ``header``, with ``header_checksum`` computed over
    ``header[0:120] ++ metadata`` (the ``header_checksum`` field of ``header`` is ignored).

    >>> raw = pack_header(Header(metadata_length=2), b"hi")
    >>> len(raw), raw[:4]
    (128, b'BBFH')
    """
    if len(header.reserved) != 48:
        raise ValueError(f"reserved must be 48 bytes, got {len(header.reserved)}")
    draft = _pack_fields(header, 0)
    return draft[:_CHECKSUMMED] + struct.pack("<Q", header_checksum(draft, metadata))


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


def _unpack(raw: bytes) -> tuple[bytes, Header]:
    (
        magic,
        version_major,
        version_minor,
        header_size,
        fmt,
        codec,
        flags,
        generation,
        schema_id,
        schema_version,
        metadata_length,
        payload_offset,
        payload_length,
        decoded_length,
        payload_checksum,
        reserved,
        checksum,
    ) = _LAYOUT.unpack(raw)
    header = object.__new__(Header)  # as Header(...) does, at a fifth of the cost
    header.__dict__.update(
        format=fmt,
        codec=codec,
        flags=flags,
        generation=generation,
        schema_id=schema_id,
        schema_version=schema_version,
        metadata_length=metadata_length,
        payload_offset=payload_offset,
        payload_length=payload_length,
        decoded_length=decoded_length,
        payload_checksum=payload_checksum,
        header_checksum=checksum,
        version_major=version_major,
        version_minor=version_minor,
        header_size=header_size,
        reserved=reserved,
    )
    return magic, header


def validate_header(
    frame_buffer: object,
    frame_size: int,
    *,
    max_decoded_length: int = DEFAULT_MAX_DECODED_LENGTH,
) -> tuple[Header, bytes]:
    """Copy the header and metadata out of ``frame_buffer`` and run checks 1-16 of §6.

    ``frame_size`` is the size of the frame area the bounds are checked against (for a
    slice: its length); it must not exceed ``len(frame_buffer)``. Only the
    private copies are checked and returned, so a peer rewriting the buffer meanwhile
    cannot make a check pass that the returned values would fail.

    Raises `HeaderError` with the reason and field of the first failing check.

    >>> validate_header(b"BBFH", 4)
    Traceback (most recent call last):
    ...
    beambridge.errors.HeaderError: truncated_header: field header is 4, expected 128
    """
    view = memoryview(frame_buffer).cast("B")  # type: ignore[arg-type]
    try:
        if frame_size > view.nbytes or frame_size < 0:
            raise ValueError(
                f"frame_size {frame_size} is not within the buffer of {view.nbytes} bytes"
            )
        # 1
        if frame_size < HEADER_SIZE:
            raise HeaderError("truncated_header", "header", frame_size, HEADER_SIZE)
        raw = bytes(view[:HEADER_SIZE])  # the private copy; nothing below reads `view` again
        magic, h = _unpack(raw)
        # 2-8: fields on their own
        if magic != MAGIC:
            raise HeaderError("bad_magic", "magic", magic, MAGIC)
        if h.version_major != VERSION_MAJOR:
            raise HeaderError(
                "unsupported_version", "version_major", h.version_major, VERSION_MAJOR
            )
        if h.header_size != HEADER_SIZE:
            raise HeaderError("bad_header_size", "header_size", h.header_size, HEADER_SIZE)
        if h.format > _MAX_FORMAT:
            raise HeaderError("unknown_format", "format", h.format, _MAX_FORMAT)
        if h.codec > _MAX_CODEC:
            raise HeaderError("unknown_codec", "codec", h.codec, _MAX_CODEC)
        unknown = h.flags & REQUIRED_FLAGS_MASK & ~KNOWN_REQUIRED_FLAGS
        if unknown:
            raise HeaderError(
                "unknown_flags",
                "flags",
                h.flags,
                KNOWN_REQUIRED_FLAGS,
                f"unknown_flags: field flags is {h.flags:#010x}; required bits "
                f"{unknown:#x} are unknown to this reader (it knows {KNOWN_REQUIRED_FLAGS:#x})",
            )
        if h.metadata_length > MAX_METADATA:
            raise HeaderError(
                "metadata_too_large", "metadata_length", h.metadata_length, MAX_METADATA
            )
        # 9-13: bounds, on Python ints (no wrap-around)
        metadata_end = HEADER_SIZE + h.metadata_length
        if metadata_end > frame_size:
            raise HeaderError(
                "metadata_out_of_bounds",
                "metadata_length",
                h.metadata_length,
                frame_size - HEADER_SIZE,
            )
        metadata = bytes(view[HEADER_SIZE:metadata_end])  # private copy
        if h.payload_offset % PAYLOAD_ALIGN:
            raise HeaderError(
                "misaligned_payload", "payload_offset", h.payload_offset, PAYLOAD_ALIGN
            )
        if h.payload_offset < metadata_end:
            raise HeaderError(
                "payload_overlaps_metadata", "payload_offset", h.payload_offset, metadata_end
            )
        payload_end = h.payload_offset + h.payload_length
        if payload_end >= _U64_LIMIT:
            raise HeaderError(
                "length_overflow",
                "payload_length",
                h.payload_length,
                _U64_LIMIT - 1 - h.payload_offset,
            )
        if payload_end > frame_size:
            raise HeaderError(
                "payload_out_of_bounds",
                "payload_length",
                h.payload_length,
                frame_size - h.payload_offset,
            )
        # 14-15
        if h.codec == Codec.NONE and h.decoded_length != h.payload_length:
            raise HeaderError(
                "bad_decoded_length", "decoded_length", h.decoded_length, h.payload_length
            )
        if h.codec != Codec.NONE and h.decoded_length > max_decoded_length:
            raise HeaderError(
                "decoded_too_large", "decoded_length", h.decoded_length, max_decoded_length
            )
        # 16
        expected = header_checksum(raw, metadata)
        if h.header_checksum != expected:
            raise HeaderError(
                "header_checksum_mismatch", "header_checksum", h.header_checksum, expected
            )
    finally:
        view.release()
    return _typed(h), metadata


#: The highest format and codec codes this reader knows (checks 5 and 6).
_MAX_FORMAT = int(max(Format))
_MAX_CODEC = int(max(Codec))


def _typed(h: Header) -> Header:
    # after checks 5 and 6 the codes are known: hand out the enums. `h` was made by
    # _unpack for this call and nobody else holds it yet, so it is completed in place
    # (a second frozen-dataclass construction cost more than the rest of the checks).
    h.__dict__.update(format=Format(h.format), codec=Codec(h.codec))
    return h


def verify_payload(header: Header, payload: object) -> None:
    """Check 17: raise `ChecksumError` if the flag ``PAYLOAD_CHECKSUM`` is set and
    ``payload_checksum`` differs from ``xxh3_64(payload)``."""
    if not header.flags & FLAG_PAYLOAD_CHECKSUM:
        return
    actual = xxhash.xxh3_64_intdigest(payload)  # type: ignore[arg-type]
    if actual != header.payload_checksum:
        raise ChecksumError(
            "checksum_mismatch",
            "payload_checksum",
            header.payload_checksum,
            actual,
            f"checksum_mismatch: field payload_checksum is {header.payload_checksum:#018x} "
            f"but the payload hashes to {actual:#018x}; the payload was changed or torn",
        )


def decode_frame(
    buf: object,
    *,
    verify: bool = True,
    max_decoded_length: int = DEFAULT_MAX_DECODED_LENGTH,
) -> tuple[Header, bytes, memoryview]:
    """Validate the frame in ``buf`` (the whole buffer is the frame area) and return
    ``(header, metadata, payload)``; ``payload`` is a read-only view into ``buf``.

    With ``verify`` (the default) the payload checksum is checked too (check 17).

    >>> h, meta, payload = decode_frame(encode_frame(b"abc", format=Format.ETF))
    >>> h.format, payload.readonly, bytes(payload)
    (<Format.ETF: 3>, True, b'abc')
    """
    view = memoryview(buf).cast("B")  # type: ignore[arg-type]
    header, metadata = validate_header(view, view.nbytes, max_decoded_length=max_decoded_length)
    start = header.payload_offset
    payload = view[start : start + header.payload_length].toreadonly()
    view.release()
    if verify:
        try:
            verify_payload(header, payload)
        except ChecksumError:
            payload.release()
            raise
    return header, metadata, payload


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
) -> Header:
    """A checked `Header` for a frame a writer is about to produce (no checksum yet)."""
    fmt = Format(format)
    cod = Codec(codec)
    if len(metadata) > MAX_METADATA:
        raise HeaderError("metadata_too_large", "metadata_length", len(metadata), MAX_METADATA)
    minimum = payload_offset_for(len(metadata))
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
    ):
        if not 0 <= value < 2**bits:
            raise ValueError(f"{name} {value} does not fit in u{bits}")
    flags = (FLAG_PAYLOAD_CHECKSUM if checksum else 0) | flags_extra
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
) -> bytes:
    """A complete frame (header, metadata, zero padding, payload) as ``bytes``.

    ``payload`` is any bytes-like object. ``payload_offset`` defaults to
    `payload_offset_for` ``(len(metadata))``; a larger multiple of 64 leaves extra room.

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
    )
    padding = header.payload_offset - HEADER_SIZE - len(metadata)
    return b"".join((pack_header(header, metadata), metadata, bytes(padding), data))
