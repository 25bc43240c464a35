"""Payload compression (`beambridge.codecs`, protocol/SPEC.md §5.1 ``codec``, §6 checks
14-15): every codec round-trips any bytes and any contiguous buffer, reads and is read by
the plain libraries, and `decompress` refuses whatever does not decode to exactly
``decoded_length`` bytes (a flipped bit, a cut, trailing bytes, a length that lies) with
a `HeaderError`, before allocating for a size the payload merely declares."""

from __future__ import annotations

import gzip as gzip_module
import struct
import sys
import time
import tracemalloc
import zlib

import lz4.frame
import numpy as np
import pytest
import xxhash
import zstandard
from beambridge import registry
from beambridge.codecs import CODEC_NAMES, compress, decompress
from beambridge.errors import HeaderError
from beambridge.header import Codec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

GZIP = registry.CODECS["gzip"]
LZ4, ZSTD, NONE = int(Codec.LZ4_FRAME), int(Codec.ZSTD), int(Codec.NONE)
COMPRESSED = [LZ4, ZSTD, GZIP]
ALL = [NONE, *COMPRESSED]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Bytes with repeats in them, which the codecs actually shrink.
compressible = st.builds(
    lambda parts, times: b"".join(parts) * times,
    st.lists(st.binary(min_size=1, max_size=40), min_size=1, max_size=8),
    st.integers(1, 300),
)
payloads = st.one_of(st.binary(max_size=4000), compressible)
TEXT = b'{"id": 17, "name": "sensor-4", "values": [1.5, 2.25, 3.0]}\n' * 40


def refused(codec: int, data: bytes, decoded_length: int, **kwargs: int) -> HeaderError:
    with pytest.raises(HeaderError) as info:
        decompress(codec, data, decoded_length, **kwargs)
    return info.value


def assert_bad(codec: int, data: bytes, decoded_length: int, **kwargs: int) -> HeaderError:
    err = refused(codec, data, decoded_length, **kwargs)
    assert (err.reason, err.field, err.limit) == ("bad_compressed_data", "payload", decoded_length)
    assert "corrupted or truncated" in str(err) and CODEC_NAMES[codec] in str(err)
    return err


# ---- round trips --------------------------------------------------------------------------


def test_the_codes_are_the_registry_s() -> None:
    assert dict(CODEC_NAMES) == {0: "none", 1: "lz4_frame", 2: "zstd", 3: "gzip"}
    for reason in ("bad_compressed_data", "decoded_too_large", "unknown_codec"):
        assert reason in registry.WIRE_REASONS and registry.reason_kind(reason) == "header"


@SETTINGS
@given(codec=st.sampled_from(ALL), data=payloads)
def test_round_trip(codec: int, data: bytes) -> None:
    packed = compress(codec, data)
    assert type(packed) is bytes
    out = decompress(codec, packed, len(data))
    assert type(out) is bytes and out == data


@pytest.mark.parametrize("codec", ALL)
def test_round_trip_of_empty_and_of_compressible_data(codec: int) -> None:
    assert decompress(codec, compress(codec, b""), 0) == b""
    packed = compress(codec, TEXT)
    assert decompress(codec, packed, len(TEXT)) == TEXT
    if codec != NONE:
        assert len(packed) < len(TEXT) // 5
    assert compress(Codec(codec) if codec != GZIP else codec, TEXT) == packed


@pytest.mark.parametrize("codec", ALL)
def test_buffers_of_any_kind(codec: int) -> None:
    array = (np.arange(100_000) % 1000).astype(np.float32)
    raw = array.tobytes()
    for data in (array, array.reshape(100, 1000), memoryview(array), bytearray(raw)):
        packed = compress(codec, data)
        assert packed == compress(codec, raw)
        # the compressed side may be any buffer as well
        for holder in (np.frombuffer(packed, np.uint8), memoryview(packed), bytearray(packed)):
            out = decompress(codec, holder, len(raw))
            assert np.array_equal(np.frombuffer(out, np.float32), array)
    window = memoryview(bytearray(raw))[1000:5000]
    assert decompress(codec, compress(codec, window), 4000) == raw[1000:5000]


@pytest.mark.parametrize("codec", COMPRESSED)
def test_levels(codec: int) -> None:
    for level in (1, 3, 9):
        assert decompress(codec, compress(codec, TEXT, level), len(TEXT)) == TEXT
    assert len(compress(codec, TEXT * 50, 9)) <= len(compress(codec, TEXT * 50))


# ---- what is written, and what is read --------------------------------------------------


def test_the_fast_defaults_and_their_framing() -> None:
    data = TEXT * 3
    assert compress(LZ4, data) == lz4.frame.compress(data, store_size=True, content_checksum=True)
    info = lz4.frame.get_frame_info(compress(LZ4, data))
    assert info["content_size"] == len(data) and info["content_checksum"]
    zstd = zstandard.ZstdCompressor(level=1, write_content_size=True, write_checksum=True)
    assert compress(ZSTD, data) == zstd.compress(data)
    params = zstandard.get_frame_parameters(compress(ZSTD, data))
    assert params.content_size == len(data) and params.has_checksum
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    assert compress(GZIP, data) == packer.compress(data) + packer.flush()
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    assert compress(GZIP, data, 9) == packer.compress(data) + packer.flush()


@SETTINGS
@given(data=payloads)
def test_gzip_interop(data: bytes) -> None:
    ours = compress(GZIP, data)
    assert zlib.decompress(ours, 31) == data and gzip_module.decompress(ours) == data
    for theirs in (gzip_module.compress(data), gzip_module.compress(data, 1, mtime=0)):
        assert decompress(GZIP, theirs, len(data)) == data
    assert decompress(GZIP, zlib.compress(data, 6, 31), len(data)) == data


@SETTINGS
@given(data=payloads)
def test_lz4_and_zstd_interop(data: bytes) -> None:
    assert lz4.frame.decompress(compress(LZ4, data)) == data
    for theirs in (
        lz4.frame.compress(data, store_size=True),
        lz4.frame.compress(data, store_size=True, content_checksum=True, block_checksum=True),
        lz4.frame.compress(data, store_size=True, block_linked=False, compression_level=12),
    ):
        assert decompress(LZ4, theirs, len(data)) == data
    assert zstandard.ZstdDecompressor().decompress(compress(ZSTD, data)) == data
    for theirs in (
        zstandard.ZstdCompressor().compress(data),  # content size, no checksum
        zstandard.ZstdCompressor(level=19, write_checksum=True).compress(data),
    ):
        assert decompress(ZSTD, theirs, len(data)) == data


def test_a_frame_that_does_not_declare_its_size_is_refused() -> None:
    unsized = lz4.frame.compress(TEXT, store_size=False)
    assert_bad(LZ4, unsized, len(TEXT))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    assert zstandard.frame_content_size(unsized) == -1
    assert assert_bad(ZSTD, unsized, len(TEXT)).value == -1


# ---- refusals -----------------------------------------------------------------------------


@pytest.mark.parametrize("function", [compress, decompress])
def test_an_unknown_codec(function: object) -> None:
    for code in (4, 255, -1):
        with pytest.raises(HeaderError) as info:
            if function is compress:
                compress(code, b"abc")
            else:
                decompress(code, b"abc", 3)
        assert (info.value.reason, info.value.field, info.value.value) == (
            "unknown_codec",
            "codec",
            code,
        )


def test_codec_none_checks_the_length() -> None:
    assert decompress(NONE, b"abc", 3) == b"abc"
    for n in (2, 4, 0):
        err = refused(NONE, b"abc", n)
        assert (err.reason, err.field, err.value, err.limit) == (
            "bad_decoded_length",
            "decoded_length",
            n,
            3,
        )


@pytest.mark.parametrize("codec", COMPRESSED)
def test_decoded_too_large(codec: int) -> None:
    packed = compress(codec, TEXT)
    for n, limit in ((2**32 + 1, None), (len(TEXT), len(TEXT) - 1), (10**30, 2**40)):
        kwargs = {} if limit is None else {"max_decoded": limit}
        err = refused(codec, packed, n, **kwargs)
        assert (err.reason, err.field, err.value) == ("decoded_too_large", "decoded_length", n)
        assert err.limit == (2**32 if limit is None else limit)
    assert decompress(codec, packed, len(TEXT), max_decoded=len(TEXT)) == TEXT


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codec=st.sampled_from(COMPRESSED), data=payloads, choice=st.data())
def test_a_flipped_bit_is_refused_or_harmless(
    codec: int, data: bytes, choice: st.DataObject
) -> None:
    packed = bytearray(compress(codec, data))
    bit = choice.draw(st.integers(0, len(packed) * 8 - 1), label="bit")
    packed[bit // 8] ^= 1 << (bit % 8)
    try:
        out = decompress(codec, bytes(packed), len(data))
    except HeaderError as err:
        assert (err.reason, err.field) == ("bad_compressed_data", "payload")
    else:
        # a bit nothing reads (gzip's mtime or OS byte) leaves an equivalent stream
        assert out == data


@pytest.mark.parametrize("codec", COMPRESSED)
@pytest.mark.parametrize("data", [b"", b"x", TEXT[:300], bytes(range(256))])
def test_every_truncation_is_refused(codec: int, data: bytes) -> None:
    packed = compress(codec, data)
    for cut in range(len(packed)):
        assert_bad(codec, packed[:cut], len(data))


@pytest.mark.parametrize("codec", COMPRESSED)
@pytest.mark.parametrize("data", [b"", TEXT])
def test_trailing_bytes_are_refused(codec: int, data: bytes) -> None:
    packed = compress(codec, data)
    for tail in (b"\0", b"garbage", bytes(100), packed, compress(codec, b"")):
        assert_bad(codec, packed + tail, len(data))


@pytest.mark.parametrize("codec", COMPRESSED)
@pytest.mark.parametrize("data", [b"", b"x", TEXT])
def test_a_decoded_length_that_lies(codec: int, data: bytes) -> None:
    packed = compress(codec, data)
    n = len(data)
    for lie in {n - 1, n + 1, 0, 1, 2**32 + n} - {n, -1}:
        # above the default max_decoded a lie is decoded_too_large; below, the payload's
        # own size or its decoding gives it away
        assert_bad(codec, packed, lie, max_decoded=2**40)
    assert refused(codec, packed, 2**32 + 1).reason == "decoded_too_large"


# ---- frames that lie about their size -----------------------------------------------------


def lz4_declaring(size: int, data: bytes) -> bytes:
    """An LZ4 frame of ``data`` whose header declares ``size`` bytes of content."""
    frame = lz4.frame.compress(data, store_size=True, content_checksum=True)
    assert frame[4] & 0x08  # the content-size flag: FLG, BD, 8 bytes of size, HC
    descriptor = frame[4:6] + struct.pack("<Q", size)
    check = (xxhash.xxh32_intdigest(descriptor) >> 8) & 0xFF
    return frame[:4] + descriptor + bytes([check]) + frame[15:]


def zstd_declaring(size: int, data: bytes) -> bytes:
    """A Zstandard frame of ``data`` whose header declares ``size`` bytes of content."""
    frame = zstandard.ZstdCompressor(level=1, write_content_size=False).compress(data)
    descriptor = frame[4]
    assert descriptor & 0xE3 == 0  # no content size, not single-segment, no dictionary
    return frame[:4] + bytes([descriptor | 0xC0]) + frame[5:6] + struct.pack("<Q", size) + frame[6:]


def gzip_declaring(size: int, data: bytes) -> bytes:
    return compress(GZIP, data)[:-4] + struct.pack("<I", size % 2**32)


FORGERS = {LZ4: lz4_declaring, ZSTD: zstd_declaring, GZIP: gzip_declaring}


@pytest.mark.parametrize("codec", COMPRESSED)
def test_forged_frames_read_when_honest(codec: int) -> None:
    assert decompress(codec, FORGERS[codec](len(TEXT), TEXT), len(TEXT)) == TEXT


@pytest.mark.parametrize("codec", [LZ4, ZSTD])
def test_a_huge_declared_size_is_refused_before_allocating(codec: int) -> None:
    forged = FORGERS[codec](2**40, TEXT)
    tracemalloc.start()
    try:
        start = time.perf_counter()
        err = assert_bad(codec, forged, 100, max_decoded=2**41)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert err.value == 2**40 and elapsed < 0.5 and peak < 1 << 20


@pytest.mark.parametrize("codec", COMPRESSED)
def test_a_bomb_that_understates_its_size_allocates_no_more(codec: int) -> None:
    # 64 MiB of zeros in a frame whose header (or gzip's trailer) says 100 bytes
    bomb = FORGERS[codec](100, bytes(64 << 20))
    assert len(bomb) < 1 << 20
    tracemalloc.start()
    try:
        err = assert_bad(codec, bomb, 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak
    assert err.value in (101, None)  # one byte past decoded_length is where it stops


@pytest.mark.parametrize("codec", COMPRESSED)
def test_a_frame_that_overstates_its_size(codec: int) -> None:
    forged = FORGERS[codec](len(TEXT) + 10, TEXT)
    assert_bad(codec, forged, len(TEXT) + 10)
    assert_bad(codec, forged, len(TEXT))


def test_the_gzip_header_and_trailer() -> None:
    packed = compress(GZIP, TEXT)
    assert_bad(GZIP, b"\x1f\x8b" + bytes(15), 0)  # 17 bytes: too short to be a member
    assert_bad(GZIP, b"\x1f\x9b" + packed[2:], len(TEXT))
    assert assert_bad(GZIP, packed, len(TEXT) + 1).value == len(TEXT)
    # the trailer holds the length modulo 2^32: a lie of 2^32 more is refused, since
    # 99 bytes of deflate cannot make that many
    err = assert_bad(GZIP, packed, len(TEXT) + 2**32, max_decoded=2**40)
    assert err.value is None and "at most" in str(err)


@pytest.mark.parametrize("codec", COMPRESSED)
def test_a_length_no_payload_of_its_size_could_reach_is_refused_before_allocating(
    codec: int,
) -> None:
    # header and payload agree on 4 GiB, from a payload of a few hundred bytes: the
    # libraries would allocate the whole output first; this refuses it unread
    forged = FORGERS[codec](2**32, TEXT)
    assert len(forged) < 4096
    tracemalloc.start()
    try:
        err = assert_bad(codec, forged, 2**32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "at most" in str(err) and peak < 1 << 20


@pytest.mark.parametrize(("codec", "module"), [(LZ4, "lz4.frame"), (ZSTD, "zstandard")])
def test_a_codec_whose_package_is_missing(
    codec: int, module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    for call in (lambda: compress(codec, b"abc"), lambda: decompress(codec, b"abc", 3)):
        with pytest.raises(HeaderError) as info:
            call()
        assert (info.value.reason, info.value.field, info.value.value) == (
            "unknown_codec",
            "codec",
            codec,
        )
        assert f"pip install {module.split('.')[0]}" in str(info.value)
    assert decompress(GZIP, compress(GZIP, b"abc"), 3) == b"abc"
