"""Frame vectors (SPEC §5, §6): good frames and bad ones, each bad one failing at exactly
its intended check, and the JSON that describes them."""

from __future__ import annotations

import struct
from typing import Any

import lz4.frame
import xxhash
from beambridge.codecs import compress, decompress
from beambridge.errors import HeaderError
from beambridge.header import Codec, Format, decode_frame, encode_frame

# Header field offsets and struct codes, straight from SPEC.md §3.1 (kept independent
# of the package's own layout on purpose).
FIELDS: dict[str, tuple[int, str]] = {
    "magic": (0, "4s"),
    "version_major": (4, "<H"),
    "version_minor": (6, "<H"),
    "header_size": (8, "<H"),
    "format": (10, "<B"),
    "codec": (11, "<B"),
    "flags": (12, "<I"),
    "generation": (16, "<Q"),
    "schema_id": (24, "<Q"),
    "schema_version": (32, "<I"),
    "metadata_length": (36, "<I"),
    "payload_offset": (40, "<Q"),
    "payload_length": (48, "<Q"),
    "decoded_length": (56, "<Q"),
    "payload_checksum": (64, "<Q"),
    "created_at": (72, "<Q"),
    "frame_id": (80, "<Q"),
    "provenance_length": (88, "<I"),
    "reserved_92": (92, "4s"),
    "provenance_checksum": (96, "<Q"),
    "reserved_104": (104, "16s"),
    "header_checksum": (120, "<Q"),
}
JSON_HEADER_FIELDS = [f for f in FIELDS if f != "magic" and not f.startswith("reserved")]
#: Given a meaning by minor 1; a reader of a minor-0 frame takes them as 0 (SPEC §5.1).
MINOR1_FIELDS = ("created_at", "frame_id", "provenance_length", "provenance_checksum")


def get(frame: bytes, field: str) -> Any:
    offset, code = FIELDS[field]
    return struct.unpack_from(code, frame, offset)[0]


def patch(frame: bytes, reseal: bool = True, **values: Any) -> bytes:
    """Set header fields; recompute the header checksum unless ``reseal`` is False."""
    buf = bytearray(frame)
    for field, value in values.items():
        offset, code = FIELDS[field]
        struct.pack_into(code, buf, offset, value)
    if reseal:
        metadata_length = min(get(bytes(buf), "metadata_length"), max(len(buf) - 128, 0))
        digest = xxhash.xxh3_64_intdigest(
            bytes(buf[:120]) + bytes(buf[128 : 128 + metadata_length])
        )
        struct.pack_into("<Q", buf, 120, digest)
    return bytes(buf)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes."""
    return bytes((i * 131 + seed * 17 + (i >> 8) * 7) & 0xFF for i in range(n))


# Erlang term_to_binary({ok, 42}) with OTP 26+ encoding (SMALL_ATOM_UTF8_EXT)
ETF_OK_42 = bytes([131, 104, 2, 119, 2]) + b"ok" + bytes([97, 42])
# An Arrow IPC stream holding no record batch: just the end-of-stream marker
ARROW_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"
LZ4_SOURCE = b"beambridge lz4 frame vector " * 40
LZ4_PAYLOAD = lz4.frame.compress(
    LZ4_SOURCE,
    compression_level=0,
    block_size=lz4.frame.BLOCKSIZE_MAX64KB,
    content_checksum=False,
    block_linked=True,
    store_size=True,
)
#: Payloads of the codecs beambridge writes (SPEC §15.3): content size and checksum kept.
CODEC_SOURCE = b"beambridge codec vector: the same words again and again. " * 30
ZSTD_PAYLOAD = compress(Codec.ZSTD, CODEC_SOURCE)
GZIP_PAYLOAD = compress(Codec.GZIP, CODEC_SOURCE)
LZ4_CHECKED = compress(Codec.LZ4_FRAME, CODEC_SOURCE)
TENSOR_META = b'{"dtype":"<f4","shape":[4,8],"order":"C"}'
CUSTOM_META = b'{"type":"MyApp.Point","version":3}'


def good_vectors() -> list[tuple[str, str, bytes]]:
    v = []
    for n in (0, 1, 63, 64, 65, 300):
        desc = f"raw payload of {n} bytes, no metadata"
        v.append((f"good_raw_{n}", desc, encode_frame(pattern(n), generation=n + 1)))
    v += [
        (
            "good_tensor_meta",
            "tensor format with a JSON descriptor as metadata; payload 128 bytes",
            encode_frame(pattern(128, 1), metadata=TENSOR_META, format=Format.TENSOR,
                         generation=7),
        ),
        (
            "good_meta_64",
            "metadata of exactly 64 bytes: the payload starts at 192",
            encode_frame(pattern(10, 2), metadata=pattern(64, 3), generation=2),
        ),
        (
            "good_arrow_stream",
            "arrow_stream format: an Arrow IPC stream with only the end-of-stream marker",
            encode_frame(ARROW_EOS, format=Format.ARROW_STREAM, generation=3),
        ),
        (
            "good_etf",
            "etf format: term_to_binary({ok, 42})",
            encode_frame(ETF_OK_42, format=Format.ETF, generation=4),
        ),
        (
            "good_custom_schema",
            "custom format with schema_id and schema_version and a type descriptor",
            encode_frame(pattern(40, 4), metadata=CUSTOM_META, format=Format.CUSTOM,
                         schema_id=0x0123456789ABCDEF, schema_version=3, generation=5),
        ),
        (
            "good_lz4_frame",
            "lz4_frame codec: a real LZ4 frame; decoded_length > payload_length",
            encode_frame(LZ4_PAYLOAD, codec=Codec.LZ4_FRAME, decoded_length=len(LZ4_SOURCE),
                         generation=6),
        ),
        (
            "good_zstd",
            "zstd codec: one Zstandard frame with its content size and checksum",
            encode_frame(ZSTD_PAYLOAD, codec=Codec.ZSTD, decoded_length=len(CODEC_SOURCE)),
        ),
        (
            "good_gzip",
            "gzip codec (since 2.7): one gzip member, level 1",
            encode_frame(GZIP_PAYLOAD, codec=Codec.GZIP, decoded_length=len(CODEC_SOURCE)),
        ),
        (
            "good_no_checksum",
            "flag PAYLOAD_CHECKSUM clear: payload_checksum is 0 and not verified",
            encode_frame(pattern(50, 5), checksum=False),
        ),
        (
            "good_extra_padding",
            "payload_offset 320 although 192 would do (writer left room)",
            encode_frame(pattern(20, 6), metadata=b"meta", payload_offset=320),
        ),
        (
            "good_minor2_optional_flag",
            "version_minor 2 (newer than this reader) with unknown optional flag bit 16 and "
            "non-zero reserved bytes: a reader of minor 1 accepts it",
            patch(
                encode_frame(pattern(33, 7), version_minor=2, flags_extra=1 << 16),
                reserved_92=bytes(range(1, 5)),
                reserved_104=bytes(range(5, 21)),
            ),
        ),
        (
            "good_minor0_reserved",
            "version_minor 0 with non-zero bytes 72-119 (reserved in minor 0): a reader takes "
            "created_at, frame_id and the provenance fields as 0",
            patch(
                encode_frame(pattern(40, 11), version_minor=0),
                created_at=0x0102030405060708,
                frame_id=99,
                provenance_length=7,
                provenance_checksum=5,
            ),
        ),
        (
            "good_trailing_bytes",
            "frame area bigger than the frame: 100 bytes after the payload end",
            encode_frame(pattern(16, 8)) + b"\xee" * 100,
        ),
        (
            "good_max_generation",
            "generation 2^64-1",
            encode_frame(pattern(8, 9), generation=2**64 - 1),
        ),
    ]  # fmt: skip
    return v


BASE = encode_frame(pattern(64, 10), metadata=b"base-meta", generation=9)  # offset 192


def bad_vectors() -> list[tuple[str, str, bytes, str, str]]:
    lz4 = encode_frame(LZ4_PAYLOAD, codec=Codec.LZ4_FRAME, decoded_length=len(LZ4_SOURCE))
    flipped_meta = bytearray(BASE)
    flipped_meta[128] ^= 0x01
    flipped_payload = bytearray(BASE)
    flipped_payload[192 + 5] ^= 0x80
    return [
        ("bad_truncated_header", "127 bytes: one short of a header",
         BASE[:127], "truncated_header", "header"),
        ("bad_truncated_empty", "an empty frame area",
         b"", "truncated_header", "header"),
        ("bad_magic", "magic BBFX",
         patch(BASE, magic=b"BBFX"), "bad_magic", "magic"),
        ("bad_version_major_3", "version_major 3 (a newer major)",
         patch(BASE, version_major=3), "unsupported_version", "version_major"),
        ("bad_version_major_1", "version_major 1 (transport 1, retired)",
         patch(BASE, version_major=1), "unsupported_version", "version_major"),
        ("bad_version_major_0", "version_major 0",
         patch(BASE, version_major=0), "unsupported_version", "version_major"),
        ("bad_header_size", "header_size 64",
         patch(BASE, header_size=64), "bad_header_size", "header_size"),
        ("bad_unknown_format", "format 200",
         patch(BASE, format=200), "unknown_format", "format"),
        ("bad_unknown_codec", "codec 200",
         patch(BASE, codec=200), "unknown_codec", "codec"),
        ("bad_unknown_flags", "required flag bit 1 set",
         patch(BASE, flags=0b11), "unknown_flags", "flags"),
        ("bad_metadata_too_large", "metadata_length 1048577",
         patch(BASE, metadata_length=(1 << 20) + 1), "metadata_too_large", "metadata_length"),
        ("bad_metadata_out_of_bounds", "metadata_length runs past the frame end",
         patch(BASE, metadata_length=len(BASE) - 127), "metadata_out_of_bounds",
         "metadata_length"),
        ("bad_misaligned_payload", "payload_offset 160",
         patch(BASE, payload_offset=160), "misaligned_payload", "payload_offset"),
        ("bad_payload_overlaps_metadata", "payload_offset 128 with 9 bytes of metadata",
         patch(BASE, payload_offset=128), "payload_overlaps_metadata", "payload_offset"),
        ("bad_length_overflow", "payload_offset + payload_length = 2^64 exactly",
         patch(BASE, payload_length=2**64 - 192), "length_overflow", "payload_length"),
        ("bad_length_overflow_max", "payload_length 2^64-1",
         patch(BASE, payload_length=2**64 - 1, decoded_length=2**64 - 1),
         "length_overflow", "payload_length"),
        ("bad_payload_out_of_bounds", "payload_length one past the frame end",
         patch(BASE, payload_length=65, decoded_length=65), "payload_out_of_bounds",
         "payload_length"),
        ("bad_decoded_length", "codec none and decoded_length != payload_length",
         patch(BASE, decoded_length=65), "bad_decoded_length", "decoded_length"),
        ("bad_decoded_too_large", "lz4_frame declaring 2^32+1 decoded bytes",
         patch(lz4, decoded_length=2**32 + 1), "decoded_too_large", "decoded_length"),
        ("bad_header_checksum_mismatch", "header_checksum off by one",
         patch(BASE, reseal=False, header_checksum=get(BASE, "header_checksum") ^ 1),
         "header_checksum_mismatch", "header_checksum"),
        ("bad_header_checksum_metadata", "a metadata byte changed after sealing",
         bytes(flipped_meta), "header_checksum_mismatch", "header_checksum"),
        ("bad_checksum_mismatch", "a payload byte changed; header intact",
         bytes(flipped_payload), "checksum_mismatch", "payload_checksum"),
    ]  # fmt: skip


def compressed_bad_vectors() -> list[tuple[str, str, bytes, str, str]]:
    """Frames whose headers are valid and whose compressed payloads are not: each fails
    when decompressed (stage ``decompress``), with ``bad_compressed_data``."""
    flipped = bytearray(LZ4_CHECKED)
    flipped[len(flipped) // 2] ^= 0x08
    n = len(CODEC_SOURCE)
    return [
        ("bad_compressed_bit_flip", "lz4_frame payload with one bit flipped (content checksum)",
         encode_frame(bytes(flipped), codec=Codec.LZ4_FRAME, decoded_length=n, checksum=False),
         "bad_compressed_data", "payload"),
        ("bad_compressed_truncated", "gzip payload cut 10 bytes short",
         encode_frame(GZIP_PAYLOAD[:-10], codec=Codec.GZIP, decoded_length=n, checksum=False),
         "bad_compressed_data", "payload"),
        ("bad_compressed_lying_length", "zstd payload whose header says one byte more",
         encode_frame(ZSTD_PAYLOAD, codec=Codec.ZSTD, decoded_length=n + 1, checksum=False),
         "bad_compressed_data", "payload"),
    ]  # fmt: skip


def describe_compressed_bad(
    name: str, description: str, frame: bytes, reason: str, field: str
) -> dict[str, Any]:
    header, _, payload = decode_frame(frame)  # the header is good
    try:
        decompress(header.codec, payload, header.decoded_length)
    except HeaderError as exc:
        assert (exc.reason, exc.field) == (reason, field), f"{name}: {exc}"
    else:
        raise AssertionError(f"{name}: decompresses, meant to fail with {reason}")
    return {
        "name": name,
        "description": description,
        "valid": False,
        "stage": "decompress",
        "frame_size": len(frame),
        "error": {"reason": reason, "field": field},
    }  # fmt: skip


def _read(frame: bytes, field: str) -> Any:
    """A header field as a reader reports it."""
    if field in MINOR1_FIELDS and get(frame, "version_minor") == 0:
        return 0
    return get(frame, field)


def describe_good(name: str, description: str, frame: bytes) -> dict[str, Any]:
    header, metadata, payload = decode_frame(frame)  # raises if the vector is not good
    raw = bytes(payload)
    out: dict[str, Any] = {
        "name": name,
        "description": description,
        "valid": True,
        "frame_size": len(frame),
        "header": {field: _read(frame, field) for field in JSON_HEADER_FIELDS},
        "metadata_hex": metadata.hex(),
        "payload_xxh3": xxhash.xxh3_64_intdigest(raw),
    }
    if len(raw) <= 256:
        out["payload_hex"] = raw.hex()
    if header.codec != Codec.NONE:  # what the payload decompresses to
        out["decoded_xxh3"] = xxhash.xxh3_64_intdigest(
            decompress(header.codec, raw, header.decoded_length)
        )
    assert out["header"]["payload_length"] == header.payload_length
    return out


def describe_bad(
    name: str, description: str, frame: bytes, reason: str, field: str
) -> dict[str, Any]:
    try:
        decode_frame(frame)
    except HeaderError as exc:
        if (exc.reason, exc.field) != (reason, field):
            raise AssertionError(
                f"{name}: fails with {exc.reason}/{exc.field}, meant {reason}/{field}"
            ) from exc
    else:
        raise AssertionError(f"{name}: decodes, meant to fail with {reason}")
    return {
        "name": name,
        "description": description,
        "valid": False,
        "frame_size": len(frame),
        "error": {"reason": reason, "field": field},
    }  # fmt: skip
