"""Frames read in place from a peer's slice (`beambridge.frame.Frame`,
protocol/SPEC.md §3-§4): the payload is a read-only view into the one mapping
of the object, the lease follows the payload and every view made from it exactly, a
refused frame holds nothing, and the owner writes any contiguous bytes-like value with
its checksum. `Frame.from_bytes` reads a frame in private memory the same way."""

from __future__ import annotations

import ctypes
import gc
from collections.abc import Iterator

import numpy as np
import pytest
import xxhash
from beambridge.errors import ChecksumError, HeaderError, LeaseError
from beambridge.frame import Frame
from beambridge.header import Format, encode_frame
from helpers import Slices


@pytest.fixture
def slices() -> Iterator[Slices]:
    s = Slices()
    yield s
    gc.collect()
    s.close()


def test_payload_is_read_only_and_zero_copy(slices: Slices) -> None:
    s = slices.put(np.arange(256, dtype=np.uint8), metadata=b"meta", format=Format.ETF)
    frame = slices.read(s)
    assert frame.metadata == b"meta" and frame.header.format == Format.ETF
    assert frame.payload.readonly
    with pytest.raises(TypeError):
        frame.payload[0] = 1  # type: ignore[index]
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr.setflags(write=True)
    # the array's bytes are inside the reader's one mapping of the arena, at the
    # payload's offset in the slice, 64-byte aligned ...
    lo, hi = slices.mapping(s.object_id)
    address = arr.__array_interface__["data"][0]
    assert address - lo == s.offset + frame.header.payload_offset
    assert address + arr.size <= hi and address % 64 == 0
    # ... which is the shared memory itself: a store through the owner's mapping shows
    with slices.arenas.area(s) as area:
        area[frame.header.payload_offset] = 0xAB
    assert arr[0] == 0xAB and frame.payload[0] == 0xAB
    del arr
    frame.release()
    assert slices.leases == 0


def test_the_payload_array_cannot_be_made_writable(slices: Slices) -> None:
    with slices.read(slices.put(b"abc")) as frame:
        arr = frame.payload.obj
        assert isinstance(arr, np.ndarray) and not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        del arr


def test_empty_payload(slices: Slices) -> None:
    with slices.read(slices.put(b"")) as frame:
        assert bytes(frame.payload) == b"" and frame.payload.readonly
    assert frame.released and slices.leases == 0


def test_with_block_releases_once(slices: Slices) -> None:
    with slices.read(slices.put(b"x")) as frame:
        assert not frame.released and slices.leases == 1
    assert frame.released
    frame.release()  # idempotent: the lease is not ended twice
    assert slices.leases == 0
    with pytest.raises(ValueError):
        bytes(frame.payload)  # released view


def test_a_garbage_collected_frame_ends_its_lease(slices: Slices) -> None:
    frame = slices.read(slices.put(b"x"))
    assert slices.leases == 1
    del frame
    gc.collect()
    assert slices.leases == 0


def test_views_made_from_the_payload_keep_the_lease(slices: Slices) -> None:
    s = slices.put(b"0123456789")
    frame = slices.read(s)
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    with pytest.raises(LeaseError) as info:
        frame.release()
    assert info.value.reason == "leased"
    del arr
    frame.release()
    assert slices.leases == 0
    # a slice that outlives its frame holds the lease until it is gone
    frame = slices.read(s)
    tail = frame.payload[5:]
    del frame
    gc.collect()
    assert slices.leases == 1
    assert bytes(tail) == b"56789"
    del tail
    gc.collect()
    assert slices.leases == 0


def test_the_lease_follows_a_numpy_view_exactly(slices: Slices) -> None:
    # no gc.collect() anywhere: the lease ends the moment the last view is dropped
    frame = slices.read(slices.put(b"0123456789"))
    view = np.frombuffer(frame.payload, dtype=np.uint8)[2:6]
    with pytest.raises(LeaseError):
        frame.release()
    with pytest.raises(LeaseError):
        frame.release()  # still held: still refused, the lease is not ended twice
    del frame
    assert slices.leases == 1
    assert bytes(view) == b"2345"
    del view
    assert slices.leases == 0


def test_many_frames_of_one_slice_share_one_mapping(slices: Slices) -> None:
    s = slices.put(bytes(range(200)))
    frames = [slices.read(s) for _ in range(3)]
    assert slices.leases == 3
    addresses = set()
    for f in frames:
        arr = np.frombuffer(f.payload, dtype=np.uint8)
        addresses.add(arr.__array_interface__["data"][0])
        del arr
    assert len(addresses) == 1
    for f in frames:
        f.release()
    assert slices.leases == 0


def test_a_refused_frame_holds_no_lease(slices: Slices) -> None:
    s = slices.put(b"abcdef", checksum=True)
    with slices.arenas.area(s) as area:
        area[128] ^= 1  # a peer outside the protocol scribbles over the payload
    with pytest.raises(ChecksumError) as info:
        slices.read(s)
    # the exception (and its traceback) is alive, yet it pins neither lease nor mapping
    assert info.value.reason == "checksum_mismatch" and slices.leases == 0
    with slices.read(s, verify=False) as frame:
        assert bytes(frame.payload) == b"`bcdef"
    with slices.arenas.area(s) as area:
        area[0:4] = b"XXXX"
    with pytest.raises(HeaderError) as hinfo:
        slices.read(s, verify=False)
    assert hinfo.value.reason == "bad_magic" and slices.leases == 0


def test_a_handle_of_another_generation_is_stale(slices: Slices) -> None:
    s = slices.put(b"data")
    s.generation += 1  # the handle names an allocation the slice no longer holds
    with pytest.raises(HeaderError) as info:
        slices.read(s)
    assert (info.value.reason, info.value.field, info.value.value, info.value.limit) == (
        "stale_generation",
        "generation",
        s.generation - 1,
        s.generation,
    )
    assert slices.leases == 0


@pytest.mark.parametrize("length", [1, 255, 1 << 16, 3 * (1 << 16) + 17])
def test_the_checksum_is_xxh3_of_the_whole_payload(slices: Slices, length: int) -> None:
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    s = slices.put(data)
    with slices.read(s) as frame:  # verified
        assert frame.header.payload_checksum == xxhash.xxh3_64_intdigest(data.tobytes())
        assert bytes(frame.payload) == data.tobytes()
    s = slices.put(data[::-1].copy(), checksum=False)
    with slices.read(s) as frame:
        assert frame.header.payload_checksum == 0 and frame.header.flags == 0
        assert bytes(frame.payload) == data[::-1].tobytes()


def test_the_owner_writes_any_contiguous_bytes_like(slices: Slices) -> None:
    with slices.read(slices.put(np.arange(4, dtype="<u2"))) as frame:
        assert bytes(frame.payload) == b"\x00\x00\x01\x00\x02\x00\x03\x00"
    count = slices.arenas.stats["allocs"]
    with pytest.raises(TypeError):
        slices.put(np.arange(8, dtype=np.uint8)[::2])
    assert slices.arenas.stats["allocs"] == count  # refused before a slice was taken


def test_a_write_that_leaves_a_view_of_its_area_publishes_nothing(slices: Slices) -> None:
    kept = []
    with pytest.raises(LeaseError) as info, slices.arenas.put_into(4) as (s, area):
        area[:] = b"abcd"
        kept.append(area[1:])  # a view of the area the producer forgot
    assert info.value.reason == "leased"
    kept.clear()
    with pytest.raises(LeaseError), slices.arenas.put_into(4) as (s, area):
        kept.append((ctypes.c_char * 4).from_buffer(area))  # a C consumer keeps the area
    kept.clear()
    # no header was written, and the slice went back: the next one takes its place
    with slices.arenas.area(s) as whole:
        assert bytes(whole[:4]) != b"BBFH"
    again = slices.put(b"wxyz")
    assert (again.object_id, again.offset) == (s.object_id, s.offset)
    with slices.read(again) as frame:
        assert bytes(frame.payload) == b"wxyz"


def test_a_failing_producer_gets_its_own_error_back(slices: Slices) -> None:
    kept = []
    with (
        pytest.raises(RuntimeError, match="producer failed"),
        slices.arenas.put_into(4) as (_, area),
    ):
        kept.append(np.frombuffer(area, dtype=np.uint8))  # held by the traceback, say
        raise RuntimeError("producer failed")
    kept.clear()
    assert slices.arenas.put(b"next").length == 192


def test_a_frame_in_private_memory() -> None:
    data = encode_frame(b"hello", metadata=b"greeting", format=Format.RAW)
    frame = Frame.from_bytes(data)
    assert (bytes(frame.payload), frame.metadata, frame.payload.readonly) == (
        b"hello",
        b"greeting",
        True,
    )
    view = np.frombuffer(frame.payload, dtype=np.uint8)
    frame.release()  # no lease to hold: the view keeps the private bytes alive
    assert frame.released and bytes(view) == b"hello"
    with pytest.raises(ChecksumError):
        Frame.from_bytes(data[:-1] + b"!")
    assert bytes(Frame.from_bytes(data[:-1] + b"!", verify=False).payload) == b"hell!"
