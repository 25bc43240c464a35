"""Checks 1-17 of protocol/SPEC.md §6 on a frame's header, metadata and payload:
`validate_header`, `verify_payload`, and `decode_frame`, which runs both over a frame in
private memory.

>>> from beambridge.header import encode_frame
>>> h, meta, payload = decode_frame(encode_frame(b"abc", format=Format.ETF))
>>> h.format, payload.readonly, bytes(payload)
(<Format.ETF: 3>, True, b'abc')
"""

from __future__ import annotations

import xxhash

from ..errors import ChecksumError, HeaderError
from .layout import (
    DEFAULT_MAX_DECODED_LENGTH,
    FLAG_PAYLOAD_CHECKSUM,
    HEADER_SIZE,
    KNOWN_REQUIRED_FLAGS,
    LAYOUT,
    MAGIC,
    MAX_METADATA,
    PAYLOAD_ALIGN,
    REQUIRED_FLAGS_MASK,
    VERSION_MAJOR,
    Codec,
    Format,
    Header,
    header_checksum,
)

__all__ = ["decode_frame", "validate_header", "verify_payload"]

_U64_LIMIT = 2**64


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
        created_at,
        frame_id,
        provenance_length,
        _,
        provenance_checksum,
        _,
        checksum,
    ) = LAYOUT.unpack(raw)
    if version_minor == 0:  # bytes 72-119 were reserved in minor 0 (SPEC §5.1)
        created_at = frame_id = provenance_length = provenance_checksum = 0
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
        created_at=created_at,
        frame_id=frame_id,
        provenance_length=provenance_length,
        provenance_checksum=provenance_checksum,
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
#: The enums by code (a dict lookup costs a tenth of ``Format(code)``).
_FORMATS = {int(f): f for f in Format}
_CODECS = {int(c): c for c in Codec}


def _typed(h: Header) -> Header:
    # after checks 5 and 6 the codes are known: hand out the enums. `h` was made by
    # _unpack for this call and nobody else holds it yet, so it is completed in place
    # (a second frozen-dataclass construction cost more than the rest of the checks).
    h.__dict__.update(format=_FORMATS[h.format], codec=_CODECS[h.codec])
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

    >>> from beambridge.header import encode_frame
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
