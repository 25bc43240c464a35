"""Regions in one process: creation, names, attach refusals, the lease protocol,
zero-copy reads, closing (SPEC.md §1-§2)."""

from __future__ import annotations

import gc
import os
import re
import stat

import numpy as np
import pytest
import xxhash
from beambridge import _atomic
from beambridge.control_block import (
    OFF_WRITER_GENERATION,
    WriterState,
    pack_control_block,
    process_start_time,
)
from beambridge.errors import ChecksumError, HeaderError, LeaseError, RegionError, region_error
from beambridge.header import Format
from beambridge.region import COPY_CHUNK, Region
from helpers import PREFIX, exists, make_raw_object, shm_path, unlink

NAME_RE = re.compile(r"^/bbpy-([0-9]{1,10})-([0-9a-f]{16})$")


@pytest.fixture
def region() -> Region:
    r = Region.create(4096, prefix=PREFIX)
    yield r  # type: ignore[misc]
    gc.collect()
    r.close()


# ---- creation and names -----------------------------------------------------------


def test_name_mode_and_control_block(region: Region) -> None:
    m = NAME_RE.match(region.name)
    assert m and int(m.group(1)) == os.getpid()
    st = os.stat(shm_path(region.name))
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()
    assert st.st_size == 4096
    assert st.st_blocks * 512 >= 4096  # pages reserved (posix_fallocate), not sparse
    cb = region.control_block()
    assert (cb.owner_pid, cb.region_size, cb.writer_state, cb.reader_leases) == (
        os.getpid(), 4096, WriterState.EMPTY, 0,
    )  # fmt: skip
    assert cb.owner_start_time == process_start_time() != 0
    assert region._mm[:8] == b"BBCB\x01\x00\x40\x00"


def test_names_are_random() -> None:
    regions = [Region.create(192, prefix=PREFIX) for _ in range(8)]
    try:
        rands = {NAME_RE.match(r.name).group(2) for r in regions}  # type: ignore[union-attr]
        assert len(rands) == 8
    finally:
        for r in regions:
            r.close()


def test_create_for_frame_is_exact() -> None:
    with Region.create_for_frame(1000, 10, prefix=PREFIX) as r:
        assert r.size == 64 + 192 + 1000 and r.frame_size == 192 + 1000
        r.write_frame(b"x" * 1000, metadata=b"m" * 10)
        with pytest.raises(RegionError) as info:
            r.write_frame(b"x" * 1001, metadata=b"m" * 10)
        assert info.value.reason == "out_of_bounds"
    with Region.create_for_frame(0, prefix=PREFIX) as r:
        assert r.size == 192


def test_create_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Region.create(191, prefix=PREFIX)
    with pytest.raises(ValueError):
        Region.create(2**48 + 1, prefix=PREFIX)
    with pytest.raises(ValueError):
        Region.create(4096, prefix="Bad-Prefix")


def test_name_collision_after_16_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"/{PREFIX}-{os.getpid()}-{'0' * 16}"
    make_raw_object(name, b"")
    try:
        monkeypatch.setattr("beambridge.region.make_name", lambda prefix: name)
        with pytest.raises(RegionError) as info:
            Region.create(4096, prefix=PREFIX)
        assert info.value.reason == "name_collision"
        assert os.path.getsize(shm_path(name)) == 0  # not opened, truncated or adopted
    finally:
        unlink(name)


def test_region_error_mapping() -> None:
    import errno

    assert region_error(errno.ENOSPC, name="/x", op="create", asked=10, free=5).reason == "no_space"
    err = region_error(errno.EACCES, name="/x", op="attach")
    assert (err.reason, err.errno, isinstance(err, OSError)) == ("eacces", errno.EACCES, True)
    assert region_error(errno.EEXIST, name="/x", op="create").reason == "name_collision"
    assert region_error(errno.ENOENT, name="/x", op="attach").reason == "not_found"
    assert "raise the tmpfs size" in str(region_error(errno.ENOSPC, name="/x", op="create"))


# ---- attach -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["/etc/passwd", "bbpy-1-0123456789abcdef", "/bbpy-1-0123456789ABCDEF", "/bbpy-1-0123",
     "/bbpy-12345678901-0123456789abcdef", "/../bbpy-1-0123456789abcdef", "/" + "a" * 17
     + "-1-0123456789abcdef"],
)  # fmt: skip
def test_attach_bad_name(name: str) -> None:
    with pytest.raises(RegionError) as info:
        Region.attach(name)
    assert info.value.reason == "bad_name"


def test_attach_not_found() -> None:
    with pytest.raises(RegionError) as info:
        Region.attach(f"/{PREFIX}-1-{'f' * 16}")
    assert (info.value.reason, info.value.errno) == ("not_found", 2)


def test_attach_bad_permissions_mode(region: Region) -> None:
    os.chmod(shm_path(region.name), 0o640)
    with pytest.raises(RegionError) as info:
        Region.attach(region.name)
    assert (info.value.reason, info.value.field) == ("bad_permissions", "mode")


def test_attach_bad_permissions_uid(region: Region) -> None:
    if os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    os.chown(shm_path(region.name), 12345, -1)
    with pytest.raises(RegionError) as info:
        Region.attach(region.name)
    assert (info.value.reason, info.value.field) == ("bad_permissions", "uid")


def test_attach_not_a_regular_file() -> None:
    name = f"/{PREFIX}-1-{'a' * 16}"
    os.mkfifo(shm_path(name), 0o600)
    try:
        with pytest.raises(RegionError) as info:
            Region.attach(name)
        assert info.value.reason == "bad_permissions"
    finally:
        os.unlink(shm_path(name))


def test_attach_too_small() -> None:
    name = f"/{PREFIX}-1-{'b' * 16}"
    make_raw_object(name, pack_control_block(owner_pid=1, owner_start_time=0, region_size=191)
                    + bytes(127))  # fmt: skip
    try:
        with pytest.raises(RegionError) as info:
            Region.attach(name)
        assert info.value.reason == "region_too_small"
    finally:
        unlink(name)


@pytest.mark.parametrize(
    ("patch", "field"),
    [((0, b"XBCB"), "cb_magic"), ((4, b"\x02\x00"), "layout_version"),
     ((6, b"\x20\x00"), "cb_size"), ((24, (4097).to_bytes(8, "little")), "region_size")],
)  # fmt: skip
def test_attach_bad_control_block(patch: tuple[int, bytes], field: str) -> None:
    name = f"/{PREFIX}-1-{'c' * 16}"
    content = bytearray(pack_control_block(owner_pid=1, owner_start_time=0, region_size=4096))
    content += bytes(4096 - 64)
    content[patch[0] : patch[0] + len(patch[1])] = patch[1]
    make_raw_object(name, bytes(content))
    try:
        with pytest.raises(RegionError) as info:
            Region.attach(name)
        assert (info.value.reason, info.value.field) == ("bad_control_block", field)
    finally:
        unlink(name)


def test_attach_uses_fstat_size(region: Region) -> None:
    peer = Region.attach(region.name)
    assert (peer.size, peer.frame_size, peer.owner) == (4096, 4032, False)
    with pytest.raises(RegionError) as info:
        peer.write_frame(b"x")
    assert info.value.reason == "not_owner"
    with pytest.raises(RegionError) as info:
        peer.unlink()
    assert info.value.reason == "not_owner"
    peer.close()
    assert exists(region.name)  # a peer never unlinks


# ---- writing and reading ------------------------------------------------------------


def test_write_read_round_trip(region: Region) -> None:
    header = region.write_frame(b"hello", metadata=b"meta", format=Format.ETF, schema_id=3,
                                schema_version=4)  # fmt: skip
    assert (header.generation, header.payload_offset, header.format) == (1, 192, Format.ETF)
    peer = Region.attach(region.name)
    with peer.read_frame() as frame:
        assert frame.header == header
        assert frame.metadata == b"meta"
        assert bytes(frame.payload) == b"hello"
    assert region.write_frame(b"again").generation == 2
    with peer.read_frame() as frame:
        assert bytes(frame.payload) == b"again" and frame.metadata == b""
    peer.close()


def test_payload_is_read_only_and_zero_copy(region: Region) -> None:
    data = np.arange(256, dtype=np.uint8)
    header = region.write_frame(data)
    peer = Region.attach(region.name)
    frame = peer.read_frame()
    assert frame.payload.readonly
    with pytest.raises(TypeError):
        frame.payload[0] = 1  # type: ignore[index]
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr.setflags(write=True)
    # the array's bytes are inside the peer's one mapping of the region (no second
    # mapping per frame), at the payload's offset ...
    with memoryview(peer._mm) as whole:
        mapping = np.frombuffer(whole, dtype=np.uint8)
    base = mapping.ctypes.data
    assert base <= arr.ctypes.data < base + mapping.size
    assert arr.ctypes.data - base == 64 + header.payload_offset
    assert arr.ctypes.data + arr.size <= base + mapping.size
    assert arr.ctypes.data % 64 == 0  # 64-byte aligned payload
    # ... which is the shared memory itself: a store through the owner's mapping shows
    start = 64 + header.payload_offset
    region._mm[start] = 0xAB
    assert arr[0] == 0xAB and frame.payload[0] == 0xAB and mapping[start] == 0xAB
    del arr, mapping
    frame.release()
    peer.close()


def test_empty_payload(region: Region) -> None:
    region.write_frame(b"")
    with region.read_frame() as frame:
        assert bytes(frame.payload) == b"" and frame.payload.readonly
    assert region.control_block().reader_leases == 0


def test_payload_checksum_verified_on_read(region: Region) -> None:
    header = region.write_frame(b"abcdef")
    region._mm[64 + header.payload_offset] ^= 1  # a peer outside the protocol
    with pytest.raises(ChecksumError):
        region.read_frame()
    assert region.control_block().reader_leases == 0
    with region.read_frame(verify=False) as frame:
        assert bytes(frame.payload) == b"`bcdef"
    region.write_frame(b"unchecked", checksum=False)
    region._mm[64 + 128] ^= 1
    with region.read_frame() as frame:
        assert frame.header.flags == 0


# ---- the lease protocol ----------------------------------------------------------------


def test_writer_refuses_while_a_frame_is_alive(region: Region) -> None:
    region.write_frame(b"first")
    peer = Region.attach(region.name)
    frame = peer.read_frame()
    assert region.control_block().reader_leases == 1
    before = bytes(region._mm)
    with pytest.raises(LeaseError) as info:
        region.write_frame(b"second")
    assert info.value.reason == "leased"
    assert bytes(region._mm) == before  # nothing written, state restored to PUBLISHED
    assert region.control_block().writer_state == WriterState.PUBLISHED
    assert bytes(frame.payload) == b"first"
    frame.release()
    frame.release()  # exactly once
    assert region.control_block().reader_leases == 0
    assert region.write_frame(b"second").generation == 2
    peer.close()


def test_with_block_releases_once(region: Region) -> None:
    region.write_frame(b"x")
    with region.read_frame() as frame:
        assert not frame.released
    assert frame.released
    frame.release()
    assert region.control_block().reader_leases == 0
    with pytest.raises(ValueError):
        bytes(frame.payload)  # released view


def test_garbage_collected_frame_ends_its_lease(region: Region) -> None:
    region.write_frame(b"x")
    frame = region.read_frame()
    assert region.control_block().reader_leases == 1
    del frame
    gc.collect()
    assert region.control_block().reader_leases == 0


def test_views_made_from_the_payload_keep_the_lease(region: Region) -> None:
    region.write_frame(b"0123456789")
    frame = region.read_frame()
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    with pytest.raises(LeaseError):
        frame.release()
    with pytest.raises(LeaseError):
        region.write_frame(b"y")
    del arr
    frame.release()
    assert region.control_block().reader_leases == 0
    # a slice that outlives its frame holds the lease until it is gone
    frame = region.read_frame()
    tail = frame.payload[5:]
    del frame
    gc.collect()
    assert region.control_block().reader_leases == 1
    with pytest.raises(LeaseError):
        region.write_frame(b"z")
    assert bytes(tail) == b"56789"
    del tail
    gc.collect()
    assert region.control_block().reader_leases == 0
    region.write_frame(b"z")


def test_the_lease_follows_a_numpy_view_exactly(region: Region) -> None:
    # no gc.collect() anywhere: the lease ends the moment the last view is dropped
    region.write_frame(b"0123456789")
    peer = Region.attach(region.name)
    frame = peer.read_frame()
    view = np.frombuffer(frame.payload, dtype=np.uint8)[2:6]
    with pytest.raises(LeaseError) as info:
        frame.release()
    assert info.value.reason == "leased"
    with pytest.raises(LeaseError):
        frame.release()  # still held: still refused, the lease is not ended twice
    del frame
    assert region.control_block().reader_leases == 1
    with pytest.raises(LeaseError) as info:
        region.write_frame(b"y")
    assert info.value.reason == "leased"
    with pytest.raises(LeaseError):
        peer.close()  # the view points into the peer's mapping
    assert bytes(view) == b"2345"
    del view
    assert region.control_block().reader_leases == 0
    assert region.write_frame(b"y").generation == 2
    peer.close()


def test_payload_cannot_be_made_writable(region: Region) -> None:
    region.write_frame(b"abc")
    with region.read_frame() as frame:
        arr = frame.payload.obj
        assert isinstance(arr, np.ndarray) and not arr.flags.writeable
        with pytest.raises(ValueError):
            arr.setflags(write=True)
        del arr


def test_a_failed_read_leaves_nothing_mapped() -> None:
    r = Region.create(4096, prefix=PREFIX)
    header = r.write_frame(b"abcdef")
    r._mm[64 + header.payload_offset] ^= 1
    with pytest.raises(ChecksumError) as info:
        r.read_frame()
    # the exception (and its traceback) is alive, yet it pins neither lease nor mapping
    assert info.value.reason == "checksum_mismatch"
    assert r.control_block().reader_leases == 0
    r.close()
    assert r.closed


def test_many_frames_share_one_mapping(region: Region) -> None:
    region.write_frame(bytes(range(200)))
    frames = [region.read_frame() for _ in range(3)]
    assert region.control_block().reader_leases == 3
    assert {np.frombuffer(f.payload, dtype=np.uint8).ctypes.data for f in frames} == {
        np.frombuffer(frames[0].payload, dtype=np.uint8).ctypes.data
    }
    for f in frames:
        f.release()
    assert region.control_block().reader_leases == 0
    with region.read_frame() as frame:
        assert bytes(frame.payload) == bytes(range(200))


@pytest.mark.parametrize("length", [1, 255, COPY_CHUNK, 3 * COPY_CHUNK + 17])
def test_write_frame_checksum_is_xxh3_of_the_whole_payload(length: int) -> None:
    data = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    with Region.create_for_frame(length, prefix=PREFIX) as r:
        header = r.write_frame(data)
        assert header.payload_checksum == xxhash.xxh3_64_intdigest(data.tobytes())
        with r.read_frame() as frame:  # verified
            assert bytes(frame.payload) == data.tobytes()
        assert r.write_frame(data[::-1].copy(), checksum=False).payload_checksum == 0
        with r.read_frame() as frame:
            assert bytes(frame.payload) == data[::-1].tobytes()


def test_write_frame_takes_any_contiguous_bytes_like(region: Region) -> None:
    region.write_frame(np.arange(4, dtype="<u2"))
    with region.read_frame() as frame:
        assert bytes(frame.payload) == b"\x00\x00\x01\x00\x02\x00\x03\x00"
    with pytest.raises(TypeError):
        region.write_frame(np.arange(8, dtype=np.uint8)[::2])
    assert region.control_block().writer_state == WriterState.PUBLISHED  # untouched


def test_write_frame_into_refuses_with_a_slice_alive(region: Region) -> None:
    kept = []
    with pytest.raises(LeaseError) as info, region.write_frame_into(4) as area:
        area[:] = b"abcd"
        kept.append(area[1:])
    assert info.value.reason == "leased"
    assert region.control_block().writer_state == WriterState.EMPTY
    kept.clear()
    with region.write_frame_into(4) as area:
        area[:] = b"wxyz"
    with region.read_frame() as frame:
        assert bytes(frame.payload) == b"wxyz"


def test_reader_refuses_until_published_and_while_writing(region: Region) -> None:
    with pytest.raises(LeaseError) as info:
        region.read_frame()
    assert info.value.reason == "not_published"
    peer = Region.attach(region.name)
    region.write_frame(b"old")
    with region.write_frame_into(3) as area:
        assert region.control_block().writer_state == WriterState.WRITING
        with pytest.raises(LeaseError) as info:
            peer.read_frame()
        assert info.value.reason == "not_published"
        assert peer.control_block().reader_leases == 0
        area[:] = b"new"
    with peer.read_frame() as frame:
        assert bytes(frame.payload) == b"new" and frame.header.generation == 2
    peer.close()


def test_write_frame_into_publishes_checksum_and_header(region: Region) -> None:
    with region.write_frame_into(8, metadata=b"md", format=Format.TENSOR) as area:
        assert not area.readonly
        np.frombuffer(area, dtype=np.float32)[:] = [1.5, 2.5]
    with region.read_frame() as frame:
        assert frame.header.format == Format.TENSOR and frame.metadata == b"md"
        assert np.frombuffer(frame.payload, dtype=np.float32).tolist() == [1.5, 2.5]


def test_write_frame_into_exception_leaves_region_empty(region: Region) -> None:
    region.write_frame(b"old")
    with pytest.raises(RuntimeError), region.write_frame_into(3) as area:
        area[:] = b"new"
        raise RuntimeError("producer failed")
    assert region.control_block().writer_state == WriterState.EMPTY
    with pytest.raises(LeaseError) as info:
        region.read_frame()
    assert info.value.reason == "not_published"
    assert region.write_frame(b"ok").generation == 3


def test_write_frame_into_refuses_to_publish_with_views_alive(region: Region) -> None:
    kept = []
    with pytest.raises(LeaseError), region.write_frame_into(4) as area:
        kept.append(np.frombuffer(area, dtype=np.uint8))
    assert region.control_block().writer_state == WriterState.EMPTY
    kept.clear()


def test_stale_generation(region: Region) -> None:
    region.write_frame(b"data")
    _atomic.store_u64(region._mm, OFF_WRITER_GENERATION, 2)  # header says 1
    with pytest.raises(HeaderError) as info:
        region.read_frame()
    assert (info.value.reason, info.value.field, info.value.value, info.value.limit) == (
        "stale_generation", "generation", 1, 2,
    )  # fmt: skip
    assert region.control_block().reader_leases == 0


def test_bad_header_in_region_releases_the_lease(region: Region) -> None:
    region.write_frame(b"data")
    region._mm[64:68] = b"XXXX"
    with pytest.raises(HeaderError) as info:
        region.read_frame()
    assert info.value.reason == "bad_magic"
    assert region.control_block().reader_leases == 0


# ---- closing ---------------------------------------------------------------------------


def test_owner_close_unlinks_and_is_idempotent() -> None:
    r = Region.create(4096, prefix=PREFIX)
    name = r.name
    r.close()
    r.close()
    assert not exists(name) and r.closed
    with pytest.raises(RegionError) as info:
        r.read_frame()
    assert info.value.reason == "closed"


def test_close_refuses_while_views_are_alive(region: Region) -> None:
    region.write_frame(b"x")
    frame = region.read_frame()
    with pytest.raises(LeaseError):
        region.close()
    assert not region.closed and exists(region.name)
    assert bytes(frame.payload) == b"x"
    frame.release()
    view = memoryview(region._mm)
    with pytest.raises(LeaseError):
        region.close()
    view.release()


def test_peer_mapping_survives_owner_close() -> None:
    r = Region.create(4096, prefix=PREFIX)
    r.write_frame(b"survives")
    peer = Region.attach(r.name)
    frame = peer.read_frame()
    r.close()
    assert not exists(peer.name)
    assert bytes(frame.payload) == b"survives"
    frame.release()
    peer.close()


def test_garbage_collected_owner_unlinks() -> None:
    r = Region.create(4096, prefix=PREFIX)
    name = r.name
    del r
    gc.collect()
    assert not exists(name)


def test_unlink_keeps_the_mapping(region: Region) -> None:
    region.unlink()
    assert not exists(region.name)
    region.write_frame(b"still mapped")
    with region.read_frame() as frame:
        assert bytes(frame.payload) == b"still mapped"
    region.unlink()  # idempotent
