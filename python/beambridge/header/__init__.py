"""The 128-byte frame header (protocol/SPEC.md §5-§6): its layout and packing
(`beambridge.header.layout`), writing (`beambridge.header.builder`) and checking
(`beambridge.header.validator`).

A frame is ``header (128 bytes) | metadata | zero padding | payload`` with the payload at
a 64-aligned offset. `encode_frame` builds one in private memory, `decode_frame` checks
one and returns a read-only view of its payload.

>>> frame = encode_frame(b"hello", metadata=b"greeting")
>>> header, metadata, payload = decode_frame(frame)
>>> header.payload_offset, metadata, bytes(payload)
(192, b'greeting', b'hello')
"""

from __future__ import annotations

from .builder import build_header, encode_frame, pack_plain_header
from .layout import (
    DEFAULT_MAX_DECODED_LENGTH,
    FLAG_HOLDS_META,
    FLAG_PAYLOAD_CHECKSUM,
    HEADER_SIZE,
    MAGIC,
    MAX_METADATA,
    PAYLOAD_ALIGN,
    VERSION_MAJOR,
    VERSION_MINOR,
    Codec,
    Format,
    Header,
    header_checksum,
    pack_header,
    payload_offset_for,
    with_fields,
)
from .validator import decode_frame, validate_header, verify_payload

__all__ = [
    "DEFAULT_MAX_DECODED_LENGTH",
    "FLAG_HOLDS_META",
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
    "build_header",
    "decode_frame",
    "encode_frame",
    "header_checksum",
    "pack_header",
    "pack_plain_header",
    "payload_offset_for",
    "validate_header",
    "verify_payload",
    "with_fields",
]
