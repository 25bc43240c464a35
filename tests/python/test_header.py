"""Frame header: packing, round trips and validation (SPEC.md §5-§6)."""

from __future__ import annotations

import contextlib
import struct

import pytest
import xxhash
from beambridge.errors import ChecksumError, HeaderError
from beambridge.header import (
    Codec,
    Format,
    Header,
    decode_frame,
    encode_frame,
    pack_header,
    payload_offset_for,
    validate_header,
)
from beambridge.registry import CODECS, FORMATS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

U64 = 2**64
LAYOUT = struct.Struct("<4sHHHBBIQQIIQQQQ48sQ")

frame_kwargs = st.fixed_dictionaries(
    {
        "metadata": st.binary(max_size=300),
        "format": st.sampled_from(list(Format)),
        "schema_id": st.integers(0, U64 - 1),
        "schema_version": st.integers(0, 2**32 - 1),
        "generation": st.integers(0, U64 - 1),
        "checksum": st.booleans(),
        "version_minor": st.integers(0, 2**16 - 1),
        "flags_extra": st.integers(0, 0xFFFF).map(lambda b: b << 16),
    }
)


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, bytes, dict[str, object]]:
    payload = draw(st.binary(max_size=700))
    kwargs = dict(draw(frame_kwargs))
    codec = draw(st.sampled_from(list(Codec)))
    kwargs["codec"] = codec
    if codec != Codec.NONE:
        kwargs["decoded_length"] = draw(st.integers(0, 2**32))
    minimum = payload_offset_for(len(kwargs["metadata"]))  # type: ignore[arg-type]
    kwargs["payload_offset"] = minimum + 64 * draw(st.integers(0, 3))
    return encode_frame(payload, **kwargs), payload, kwargs  # type: ignore[arg-type]


@given(frames())
def test_round_trip(case: tuple[bytes, bytes, dict[str, object]]) -> None:
    frame, payload, kw = case
    header, metadata, view = decode_frame(frame)
    assert bytes(view) == payload and view.readonly
    assert metadata == kw["metadata"]
    assert header.format == kw["format"] and isinstance(header.format, Format)
    assert header.codec == kw["codec"] and isinstance(header.codec, Codec)
    assert header.generation == kw["generation"]
    assert header.schema_id == kw["schema_id"]
    assert header.schema_version == kw["schema_version"]
    assert header.version_minor == kw["version_minor"]
    assert header.payload_offset == kw["payload_offset"]
    assert header.payload_offset % 64 == 0
    assert header.decoded_length == kw.get("decoded_length", len(payload))
    assert header.flags == (1 if kw["checksum"] else 0) | kw["flags_extra"]  # type: ignore[operator]
    assert header.payload_checksum == (xxhash.xxh3_64_intdigest(payload) if kw["checksum"] else 0)
    assert pack_header(header, metadata) == frame[:128]
    assert len(frame) == header.payload_offset + len(payload)
    assert frame[128 + len(metadata) : header.payload_offset] == bytes(
        header.payload_offset - 128 - len(metadata)
    )


@given(frames(), st.data())
def test_mutated_frame_is_a_header_error_or_valid(
    case: tuple[bytes, bytes, dict[str, object]], data: st.DataObject
) -> None:
    frame = case[0]
    buf = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(buf) - 1))
        buf[i] ^= data.draw(st.integers(1, 255))
    try:
        decode_frame(bytes(buf))
    except HeaderError:
        return
    # accepted: only bytes outside the header checksum may have changed (padding, the
    # payload when it has no checksum)
    header = decode_frame(bytes(buf))[0]
    assert bytes(buf[: 128 + header.metadata_length]) == frame[: 128 + header.metadata_length]


@given(frames(), st.data())
def test_truncated_frame_is_a_header_error(
    case: tuple[bytes, bytes, dict[str, object]], data: st.DataObject
) -> None:
    frame, _, _ = case
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(HeaderError) as info:
        decode_frame(frame[:cut])
    expected = "truncated_header" if cut < 128 else None
    if expected:
        assert info.value.reason == expected


# ---- a reference validator written from the §6 table, checked against the package ----

FIELD_NAMES = [
    "magic", "version_major", "version_minor", "header_size", "format", "codec", "flags",
    "generation", "schema_id", "schema_version", "metadata_length", "payload_offset",
    "payload_length", "decoded_length", "payload_checksum", "reserved", "header_checksum",
]  # fmt: skip


def reference_reason(frame: bytes, max_decoded: int = 2**32) -> tuple[str, str] | None:
    n = len(frame)
    if n < 128:
        return ("truncated_header", "header")
    f = dict(zip(FIELD_NAMES, LAYOUT.unpack(frame[:128]), strict=True))
    ml, po, pl = f["metadata_length"], f["payload_offset"], f["payload_length"]
    table = [
        (f["magic"] != b"BBFH", "bad_magic", "magic"),
        (f["version_major"] != 2, "unsupported_version", "version_major"),
        (f["header_size"] != 128, "bad_header_size", "header_size"),
        (f["format"] > max(FORMATS.values()), "unknown_format", "format"),
        (f["codec"] not in CODECS.values(), "unknown_codec", "codec"),
        (f["flags"] & 0xFFFE != 0, "unknown_flags", "flags"),
        (ml > 1048576, "metadata_too_large", "metadata_length"),
        (128 + ml > n, "metadata_out_of_bounds", "metadata_length"),
        (po % 64 != 0, "misaligned_payload", "payload_offset"),
        (po < 128 + ml, "payload_overlaps_metadata", "payload_offset"),
        (po + pl >= U64, "length_overflow", "payload_length"),
        (po + pl > n, "payload_out_of_bounds", "payload_length"),
        (f["codec"] == 0 and f["decoded_length"] != pl, "bad_decoded_length", "decoded_length"),
        (f["codec"] != 0 and f["decoded_length"] > max_decoded, "decoded_too_large",
         "decoded_length"),
        (f["header_checksum"] != xxhash.xxh3_64_intdigest(frame[:120] + frame[128:128 + ml]),
         "header_checksum_mismatch", "header_checksum"),
        (f["flags"] & 1 and f["payload_checksum"] != xxhash.xxh3_64_intdigest(frame[po:po + pl]),
         "checksum_mismatch", "payload_checksum"),
    ]  # fmt: skip
    for failed, reason, field in table:
        if failed:
            return (reason, field)
    return None


def mostly(
    valid: st.SearchStrategy[object], invalid: st.SearchStrategy[object]
) -> st.SearchStrategy[object]:
    """``valid`` nine times out of ten, so that later checks get reached too."""
    return st.integers(0, 99).flatmap(lambda k: invalid if k % 10 == 7 else valid)


def near(limit: int) -> st.SearchStrategy[int]:
    """Integers around a boundary."""
    return st.integers(max(limit - 2, 0), min(limit + 2, U64 - 1))


@st.composite
def raw_frames(draw: st.DrawFn) -> bytes:
    ml = draw(mostly(st.integers(0, 300), st.sampled_from([1048576, 1048577, 2**32 - 1])))
    body = draw(st.binary(min_size=min(ml, 300), max_size=min(ml, 300) + 600))
    if draw(mostly(st.just(False), st.just(True))):
        body = body[: max(len(body) - 2, 0)]
    size = 128 + len(body)
    po = draw(
        mostly(
            st.integers(min(-(-(128 + ml) // 64), 16), 16).map(lambda k: 64 * k),
            st.one_of(st.integers(0, 1100), near(U64 - 1)),
        )
    )
    pl_valid = max(size - po, 0)
    pl = draw(
        mostly(
            st.one_of(st.just(pl_valid), st.integers(0, pl_valid)),
            st.one_of(near(pl_valid), near(U64 - po), st.integers(0, U64 - 1)),
        )
    )
    known = max(CODECS.values())  # the registry's codes are 0..known
    codec = draw(mostly(st.integers(0, known), st.integers(known + 1, 255)))
    dl = draw(
        mostly(
            st.just(pl) if codec == 0 else st.integers(0, 2**32),
            st.one_of(near(pl), near(2**32), st.integers(0, U64 - 1)),
        )
    )
    fields = [
        draw(mostly(st.just(b"BBFH"), st.binary(min_size=4, max_size=4))),
        draw(mostly(st.just(1), st.sampled_from([0, 2, 0xFFFF]))),
        draw(st.integers(0, 2**16 - 1)),
        draw(mostly(st.just(128), st.sampled_from([0, 64, 127, 129, 256]))),
        draw(mostly(st.integers(0, 4), st.integers(5, 255))),
        codec,
        draw(
            mostly(st.integers(0, 0xFFFF).map(lambda b: (b << 16) | 1), st.integers(0, 2**32 - 1))
        ),
        draw(st.integers(0, U64 - 1)),
        draw(st.integers(0, U64 - 1)),
        draw(st.integers(0, 2**32 - 1)),
        ml,
        po,
        pl,
        dl,
        0,
        draw(st.binary(min_size=48, max_size=48)),
        0,
    ]
    frame = bytearray(LAYOUT.pack(*fields) + body)
    if po + pl <= size and draw(mostly(st.just(True), st.just(False))):
        struct.pack_into("<Q", frame, 64, xxhash.xxh3_64_intdigest(bytes(frame[po : po + pl])))
    if draw(mostly(st.just(True), st.just(False))):
        seal = xxhash.xxh3_64_intdigest(bytes(frame[:120] + frame[128 : 128 + ml]))
        struct.pack_into("<Q", frame, 120, seal)
    return bytes(frame)


@settings(max_examples=800, suppress_health_check=[HealthCheck.too_slow])
@given(raw_frames())
def test_validation_order_matches_the_spec_table(frame: bytes) -> None:
    expected = reference_reason(frame)
    try:
        decode_frame(frame)
    except HeaderError as err:
        assert (err.reason, err.field) == expected
        assert isinstance(err, ValueError)
    else:
        assert expected is None


@given(st.binary(max_size=400))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    with contextlib.suppress(HeaderError):
        decode_frame(data)


# ---- example tests --------------------------------------------------------------------


def test_validate_header_copies_before_checking() -> None:
    frame = bytearray(encode_frame(b"abc", metadata=b"meta"))
    header, metadata = validate_header(frame, len(frame))
    frame[:8] = b"\0" * 8  # the peer scribbles after validation
    frame[128:132] = b"XXXX"
    assert metadata == b"meta" and isinstance(metadata, bytes)
    assert header.version_major == 2


def test_validate_header_uses_frame_size_not_buffer_length() -> None:
    frame = encode_frame(b"x" * 100)
    with pytest.raises(HeaderError) as info:
        validate_header(frame, len(frame) - 1)
    assert info.value.reason == "payload_out_of_bounds"
    with pytest.raises(ValueError, match="frame_size"):
        validate_header(frame, len(frame) + 1)


def test_decode_without_verify_skips_the_payload_checksum() -> None:
    frame = bytearray(encode_frame(b"payload"))
    frame[-1] ^= 1
    with pytest.raises(ChecksumError) as info:
        decode_frame(frame)
    assert info.value.reason == "checksum_mismatch"
    assert info.value.field == "payload_checksum"
    assert "payload_checksum" in str(info.value)
    _, _, payload = decode_frame(frame, verify=False)
    assert payload[-1] == ord("d") ^ 1


def test_max_decoded_length_is_the_readers_limit() -> None:
    frame = encode_frame(b"zz", codec=Codec.ZSTD, decoded_length=1000)
    assert decode_frame(frame, max_decoded_length=1000)[0].decoded_length == 1000
    with pytest.raises(HeaderError) as info:
        decode_frame(frame, max_decoded_length=999)
    assert (info.value.reason, info.value.value, info.value.limit) == (
        "decoded_too_large",
        1000,
        999,
    )


def test_error_carries_value_and_limit() -> None:
    frame = bytearray(encode_frame(b""))
    frame[4:6] = (1).to_bytes(2, "little")
    with pytest.raises(HeaderError) as info:
        decode_frame(frame)
    err = info.value
    assert (err.reason, err.field, err.value, err.limit) == (
        "unsupported_version",
        "version_major",
        1,
        2,
    )
    assert "version_major" in str(err) and "1" in str(err)


def test_length_overflow_is_detected_not_wrapped() -> None:
    frame = bytearray(encode_frame(b"abc"))
    struct.pack_into("<Q", frame, 48, U64 - 128)  # 128 + (2^64 - 128) wraps to 0 in u64
    struct.pack_into("<Q", frame, 56, U64 - 128)
    with pytest.raises(HeaderError) as info:
        decode_frame(frame)
    assert info.value.reason == "length_overflow"


def test_payload_offset_for() -> None:
    assert [payload_offset_for(n) for n in (0, 1, 63, 64, 65, 128)] == [
        128, 192, 192, 192, 256, 256,
    ]  # fmt: skip


def test_encode_refuses_what_a_reader_would_refuse() -> None:
    with pytest.raises(HeaderError, match="metadata_too_large"):
        encode_frame(b"", metadata=bytes((1 << 20) + 1))
    with pytest.raises(ValueError, match="payload_offset"):
        encode_frame(b"", metadata=b"x", payload_offset=128)
    with pytest.raises(ValueError, match="optional"):
        encode_frame(b"", flags_extra=2)
    with pytest.raises(ValueError, match="decoded_length"):
        encode_frame(b"", codec=Codec.LZ4_FRAME)
    with pytest.raises(ValueError):
        encode_frame(b"", generation=U64)
    with pytest.raises(ValueError):
        encode_frame(b"", format=9)


def test_header_is_frozen() -> None:
    header = decode_frame(encode_frame(b""))[0]
    with pytest.raises(AttributeError):
        header.generation = 5  # type: ignore[misc]
    assert isinstance(header, Header)


def test_decode_frame_accepts_any_buffer() -> None:
    frame = encode_frame(b"abc")
    for buf in (frame, bytearray(frame), memoryview(frame)):
        assert bytes(decode_frame(buf)[2]) == b"abc"
    view = decode_frame(bytearray(frame))[2]
    assert view.readonly
