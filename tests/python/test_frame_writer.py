"""Writing frames (protocol/SPEC.md §5): the direct writers of the call path give the
same bytes as the general ones, and reading a copy checks what reading a view checks."""

from __future__ import annotations

import pytest
from beambridge.errors import ArenaError, ChecksumError, HeaderError
from beambridge.frame_writer import frame_length, write_frame, write_frame_bytes
from beambridge.header import (
    Format,
    build_header,
    decode_frame,
    pack_header,
    pack_plain_header,
)
from beambridge.objects import KIND_ARENA, OBJECT_HEADER, PeerObject, SharedObject
from hypothesis import given
from hypothesis import strategies as st

FORMATS = st.sampled_from(list(Format))
U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)


@given(U64, st.binary(max_size=300), FORMATS, U64, U64, U32, st.one_of(st.none(), U64))
def test_pack_plain_header_is_build_then_pack(
    payload_length: int,
    metadata: bytes,
    fmt: Format,
    generation: int,
    schema_id: int,
    schema_version: int,
    checksum: int | None,
) -> None:
    header = build_header(
        payload_length,
        checksum or 0,
        metadata=metadata,
        format=fmt,
        schema_id=schema_id,
        schema_version=schema_version,
        generation=generation,
        checksum=checksum is not None,
    )
    assert pack_plain_header(
        payload_length,
        metadata,
        format=fmt,
        generation=generation,
        schema_id=schema_id,
        schema_version=schema_version,
        payload_checksum=checksum,
    ) == pack_header(header, metadata)


@given(
    st.binary(max_size=2000),
    st.binary(max_size=200),
    FORMATS,
    st.booleans(),
    U64,
    st.binary(max_size=300),
)
def test_write_frame_bytes_writes_what_write_frame_writes(
    payload: bytes, metadata: bytes, fmt: Format, checksum: bool, generation: int, block: bytes
) -> None:
    size = frame_length(len(payload), len(metadata) + len(block)) + 64
    direct = bytearray(b"\xee" * size)
    general = bytearray(b"\xee" * size)
    frame = {
        "generation": generation,
        "metadata": metadata,
        "format": fmt,
        "schema_id": 3,
        "schema_version": 4,
        "checksum": checksum,
        "provenance": block,
        "created_at": 1_796_000_000_000_000_000,
        "frame_id": generation ^ 0x5A5A,
    }
    write_frame_bytes(memoryview(direct), memoryview(payload), **frame)
    with write_frame(memoryview(general), len(payload), **frame) as area:
        area[:] = payload
    assert direct == general
    header, got_metadata, got = decode_frame(
        direct[: frame_length(len(payload), len(metadata) + len(block))]
    )
    assert (bytes(got), got_metadata) == (payload, metadata)
    assert (header.created_at, header.frame_id) == (frame["created_at"], frame["frame_id"])
    start = 128 + len(metadata)
    assert (header.provenance_length, bytes(direct[start : start + len(block)])) == (
        len(block),
        block,
    )


def test_write_frame_bytes_refuses_an_area_too_small() -> None:
    with pytest.raises(ValueError, match="a frame of 133 bytes in 132"):
        write_frame_bytes(memoryview(bytearray(132)), memoryview(b"hello"), generation=1)


def test_copy_frame_checks_what_read_frame_checks_and_verifies_its_copy() -> None:
    obj = SharedObject(8192, KIND_ARENA)
    length = frame_length(5)
    with obj.area(OBJECT_HEADER, 256) as whole:
        write_frame_bytes(whole, memoryview(b"hello"), generation=7, checksum=True)
    peer = PeerObject.open(*obj.announcement())
    header, data = peer.copy_frame(OBJECT_HEADER, length, 7, verify=True)
    assert (data, header.generation, type(data)) == (b"hello", 7, bytes)
    with pytest.raises(HeaderError) as stale:
        peer.copy_frame(OBJECT_HEADER, length, 8)
    assert stale.value.reason == "stale_generation"
    with pytest.raises(ArenaError) as outside:
        peer.copy_frame(OBJECT_HEADER + 8, length, 7)
    assert outside.value.reason == "slice_out_of_bounds"
    # the owner changes the payload after the header was written: the copy fails its
    # checksum (with verify), and is what it is without
    with obj.area(OBJECT_HEADER, 256) as whole:
        whole[128] = ord("j")
    with pytest.raises(ChecksumError):
        peer.copy_frame(OBJECT_HEADER, length, 7, verify=True)
    assert peer.copy_frame(OBJECT_HEADER, length, 7)[1] == b"jello"
    peer.close()
    obj.close()
