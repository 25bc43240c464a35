"""Transport v2 shared objects in one process (protocol/SPEC.md): owned arenas,
slices and tickets, read-only peer mappings, seals, and what a hostile process of the
same uid can and cannot do to them."""

from __future__ import annotations

import ctypes
import fcntl
import gc
import itertools
import mmap
import os
import tempfile

import numpy as np
import pytest
from beambridge.arena import (
    KIND_LEASE_TABLE,
    OBJECT_HEADER,
    ArenaSet,
    PeerObject,
    SharedObject,
    fd_count,
)
from beambridge.errors import ArenaError, ChecksumError, HeaderError
from beambridge.header import Format
from hypothesis import given, settings
from hypothesis import strategies as st

MIB = 1 << 20


def peer_of(arenas: ArenaSet, object_id: int) -> PeerObject:
    return PeerObject.open(*arenas.announcement(object_id))


@pytest.fixture
def arenas() -> ArenaSet:
    a = ArenaSet(limit=64 * MIB, min_arena=MIB)
    yield a
    a.close()


class Table:
    """A lease table owned by the test, standing in for the BEAM's (§4)."""

    def __init__(self, entries: int) -> None:
        self.obj = SharedObject(
            4096 * ((OBJECT_HEADER + 8 * entries + 4095) // 4096), KIND_LEASE_TABLE, entries
        )
        self.entries = entries
        self.peer = PeerObject.open(*self.obj.announcement())

    def end_lease(self, ticket: int, generation: int) -> None:
        at = OBJECT_HEADER + 8 * ticket
        self.obj.mm[at : at + 8] = generation.to_bytes(8, "little")

    def close(self) -> None:
        self.obj.close()


def test_frame_round_trip_through_a_read_only_peer_mapping(arenas: ArenaSet) -> None:
    payload = os.urandom(100_000)
    s = arenas.put(payload, metadata=b"meta", format=Format.TENSOR, checksum=True)
    assert s.offset % 64 == 0 and s.offset >= OBJECT_HEADER and s.length % 64 == 0
    peer = peer_of(arenas, s.object_id)
    released: list[int] = []
    frame = peer.read_frame(
        s.offset, s.length, s.generation, verify=True, on_release=lambda: released.append(1)
    )
    assert bytes(frame.payload) == payload
    assert frame.metadata == b"meta" and frame.header.format == Format.TENSOR
    assert frame.header.generation == s.generation
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    del frame
    gc.collect()
    assert released == []  # the array made from the payload still holds the lease
    del arr
    gc.collect()
    assert released == [1]
    peer.close()


def test_put_into_lets_a_producer_write_in_place(arenas: ArenaSet) -> None:
    with arenas.put_into(8, format=Format.RAW) as (s, area):
        np.frombuffer(area, dtype=np.uint8)[:] = np.arange(8, dtype=np.uint8)
    peer = peer_of(arenas, s.object_id)
    with peer.read_frame(s.offset, s.length, s.generation) as frame:
        assert bytes(frame.payload) == bytes(range(8))
    with pytest.raises(RuntimeError), arenas.put_into(8) as (_s2, _area):
        raise RuntimeError("producer failed")
    assert arenas._arenas[s.object_id].live == 1  # the failed slice went back


def test_nothing_in_the_reader_can_write_through_the_mapping(arenas: ArenaSet) -> None:
    s = arenas.put(b"immutable bytes")
    peer = peer_of(arenas, s.object_id)
    frame = peer.read_frame(s.offset, s.length, s.generation)
    payload = frame.payload
    assert payload.readonly
    with pytest.raises(TypeError):
        payload.obj.base[0] = 1  # the private array's base: the read-only mmap
    with pytest.raises(TypeError):
        peer.mm[0:1] = b"x"
    arr = np.frombuffer(payload, dtype=np.uint8)
    with pytest.raises(ValueError):
        arr.flags.writeable = True
    with pytest.raises(TypeError):
        ctypes.c_char.from_buffer(peer.mm)
    # the mapping is PROT_READ from an O_RDONLY descriptor: mprotect cannot lift it
    libc = ctypes.CDLL(None, use_errno=True)
    address = arr.__array_interface__["data"][0] & ~4095
    assert libc.mprotect(ctypes.c_void_p(address), 4096, 3) == -1  # PROT_READ|PROT_WRITE
    assert ctypes.get_errno() == 13  # EACCES
    del arr, payload
    frame.release()
    peer.close()


def test_nobody_can_resize_an_arena(arenas: ArenaSet) -> None:
    s = arenas.put(b"x" * 1000)
    obj = arenas._arenas[s.object_id].obj
    for fd in (obj.fd, os.open(f"/proc/self/fd/{obj.fd}", os.O_RDWR)):
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 4096)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, obj.size * 2)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)  # F_SEAL_SEAL is set
        if fd != obj.fd:
            os.close(fd)
    peer = peer_of(arenas, s.object_id)
    with peer.read_frame(s.offset, s.length, s.generation) as frame:
        assert bytes(frame.payload) == b"x" * 1000
    peer.close()


def test_open_refuses_what_is_not_the_announced_sealed_object(arenas: ArenaSet) -> None:
    s = arenas.put(b"x")
    kind, pid, fd, oid, size, nonce = arenas.announcement(s.object_id)
    cases = [
        ((kind, pid, fd, oid, size, nonce + 1), "bad_object", "nonce"),
        ((kind, pid, fd, oid + 999, size, nonce), "bad_object", "object_id"),
        (("lease_table", pid, fd, oid, size, nonce), "bad_object", "kind"),
        ((kind, pid, fd, oid, size + 4096, nonce), "size_mismatch", "object_size"),
        (("sealed", pid, fd, oid, size, nonce), "not_sealed", "seals"),
        ((kind, pid, 99_999, oid, size, nonce), "peer_open_failed", "fd"),
        (("nope", pid, fd, oid, size, nonce), "bad_object", "kind"),
    ]
    for args, reason, field in cases:
        with pytest.raises(ArenaError) as info:
            PeerObject.open(*args)
        assert (info.value.reason, info.value.field) == (reason, field), args

    # a plain file, and a memfd without seals, are refused before anything is mapped
    with tempfile.TemporaryFile() as f:
        f.truncate(4096)
        with pytest.raises(ArenaError) as info:
            PeerObject.open("arena", os.getpid(), f.fileno(), 1, 4096, 0)
        assert info.value.reason == "not_sealed"
    raw = os.memfd_create("unsealed")
    os.ftruncate(raw, 4096)
    with pytest.raises(ArenaError) as info:
        PeerObject.open("arena", os.getpid(), raw, 1, 4096, 0)
    assert info.value.reason == "not_sealed"
    os.close(raw)


def test_slices_are_checked_against_the_object(arenas: ArenaSet) -> None:
    s = arenas.put(b"abc")
    peer = peer_of(arenas, s.object_id)
    for offset, length in [(0, 128), (96, 128), (64, 64), (peer.size - 64, 128), (-64, 128)]:
        with pytest.raises(ArenaError) as info:
            peer.read_frame(offset, length, s.generation)
        assert info.value.reason == "slice_out_of_bounds"
    with pytest.raises(HeaderError) as hinfo:
        peer.read_frame(s.offset, s.length, s.generation + 1)
    assert hinfo.value.reason == "stale_generation"
    # an empty, never-written slice is not a frame
    blank = arenas.alloc(256)
    with pytest.raises(HeaderError) as hinfo:
        peer.read_frame(blank.offset, blank.length, blank.generation)
    assert hinfo.value.reason in ("bad_magic", "header_checksum_mismatch")
    peer.close()


def test_a_scribbled_payload_fails_its_checksum(arenas: ArenaSet) -> None:
    s = arenas.put(b"y" * 5000, checksum=True)
    area = arenas.area(s)
    area[128] = ord("z")  # the owner (or anyone of the uid) rewrites a payload byte
    area.release()
    peer = peer_of(arenas, s.object_id)
    with pytest.raises(ChecksumError):
        peer.read_frame(s.offset, s.length, s.generation, verify=True)
    peer.close()


def test_ten_thousand_slices_cost_no_descriptors(arenas: ArenaSet) -> None:
    before = fd_count()
    slices = [arenas.put(bytes([i % 256]) * 1000) for i in range(10_000)]
    assert arenas.arena_count() <= 16
    assert fd_count() - before <= 16
    assert len({(s.object_id, s.offset) for s in slices}) == 10_000
    for s in slices:
        arenas.free(s)
    assert all(a.live == 0 for a in arenas._arenas.values())


def test_limits_too_large_at_once_and_arena_full_while_held() -> None:
    arenas = ArenaSet(limit=4 * MIB, min_arena=MIB)
    with pytest.raises(ArenaError) as info:
        arenas.alloc(5 * MIB)
    assert (info.value.reason, info.value.field) == ("too_large", "arena_limit")
    held = []
    with pytest.raises(ArenaError) as info:
        for _ in range(20):
            held.append(arenas.put(b"h" * 900_000))
    assert info.value.reason == "arena_full"
    assert len(held) >= 3 and arenas.total <= 4 * MIB
    for s in held:
        arenas.free(s)
    arenas.put(b"h" * 900_000)
    arenas.close()


def test_a_lent_slice_comes_back_when_its_ticket_holds_its_generation(arenas: ArenaSet) -> None:
    table = Table(4)
    arenas.set_lease_table(table.peer, 4)
    s = arenas.put(b"lent")
    ticket = arenas.lend(s)
    assert arenas.reclaim() == 0 and arenas.lent == 1
    table.end_lease(ticket, s.generation - 1)  # an older loan's generation: not this one
    assert arenas.reclaim() == 0
    table.end_lease(ticket, s.generation)
    assert arenas.reclaim() == 1 and arenas.lent == 0
    # tickets run out, then come back
    lent = [arenas.put(b"t") for _ in range(4)]
    tickets = [arenas.lend(x) for x in lent]
    with pytest.raises(ArenaError) as info:
        arenas.lend(arenas.put(b"one too many"))
    assert info.value.reason == "no_tickets"
    table.end_lease(tickets[0], lent[0].generation)
    assert arenas.lend(arenas.put(b"now")) == tickets[0]
    table.close()


def test_values_past_the_tickets_do_not_rescan_the_table_for_each_one(arenas: ArenaSet) -> None:
    """A result of many more values than tickets: each refused value goes inline, and
    the table is scanned again only after 1/256 of the tickets were asked for in vain
    (a scan per value made such a result quadratic)."""
    table = Table(4096)
    arenas.set_lease_table(table.peer, 4096)
    lent = [arenas.put(b"x") for _ in range(4096)]
    tickets = [arenas.lend(x) for x in lent]
    scans = arenas.stats["reclaim_scans"]
    spare = arenas.put(b"spare")
    refused = 0
    for _ in range(3200):
        with pytest.raises(ArenaError):
            arenas.lend(spare)
        refused += 1
    assert arenas.stats["reclaim_scans"] - scans <= 1 + refused // 16
    # a lease the peer ends is seen within 16 more asks
    table.end_lease(tickets[7], lent[7].generation)
    for _ in range(17):
        try:
            assert arenas.lend(spare) == tickets[7]
            break
        except ArenaError:
            pass
    else:
        pytest.fail("the ended lease was never reclaimed")
    table.close()


def test_trim_drops_empty_idle_arenas_and_keeps_what_it_is_told() -> None:
    arenas = ArenaSet(limit=64 * MIB, min_arena=MIB)
    dropped_ids: list[int] = []
    arenas.on_dropped_arena = dropped_ids.append  # type: ignore[method-assign]
    slices = [arenas.put(b"z" * 900_000) for _ in range(6)]
    n = arenas.arena_count()
    assert n > 1 and arenas.trim(0, 0) == []
    for s in slices:
        arenas.free(s)
    dropped = arenas.trim(0, MIB)
    assert len(dropped) == n - 1 and dropped == dropped_ids
    assert arenas.arena_count() == 1 and arenas.total == MIB
    arenas.close()


def test_a_big_value_gets_an_arena_of_its_own_size() -> None:
    arenas = ArenaSet(limit=1 << 30, min_arena=8 * MIB)
    with arenas.put_into(64 * MIB) as (_s, area):
        area[:1] = b"x"
    with arenas.put_into(64 * MIB) as (_s2, area2):
        area2[:1] = b"y"
    # two 64 MiB values in flight cost two arenas of about their size, not 3x
    assert arenas.total <= 2 * (64 * MIB + MIB)
    arenas.close()


def test_closing_an_owned_object_with_a_live_peer_mapping_keeps_the_peer_valid() -> None:
    arenas = ArenaSet(limit=8 * MIB, min_arena=MIB)
    s = arenas.put(b"survives")
    peer = peer_of(arenas, s.object_id)
    arenas.close()
    with peer.read_frame(s.offset, s.length, s.generation) as frame:
        assert bytes(frame.payload) == b"survives"
    peer.close()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 300_000)), max_size=120))
def test_allocator_never_overlaps_and_coalesces_back(ops: list[tuple[bool, int]]) -> None:
    arenas = ArenaSet(limit=32 * MIB, min_arena=MIB)
    live = []
    try:
        for free_one, size in ops:
            if free_one and live:
                arenas.free(live.pop(size % len(live)))
                continue
            try:
                live.append(arenas.alloc(size))
            except ArenaError as exc:
                assert exc.reason == "arena_full"
        spans = sorted((s.object_id, s.offset, s.offset + s.length) for s in live)
        for (o1, _, e1), (o2, b2, _) in itertools.pairwise(spans):
            assert o1 != o2 or e1 <= b2
        for s in live:
            arena = arenas._arenas[s.object_id]
            assert s.offset >= OBJECT_HEADER and s.offset + s.length <= arena.obj.size
        for s in live:
            arenas.free(s)
        for arena in arenas._arenas.values():
            assert arena.free == [[OBJECT_HEADER, arena.obj.size - OBJECT_HEADER]]
            assert arena.used == 0 and arena.live == 0
    finally:
        arenas.close()


def test_mapping_is_the_size_the_owner_reserved() -> None:
    obj = SharedObject(8192, 0)
    st_size = os.fstat(obj.fd).st_size
    assert st_size == 8192
    assert os.readlink(f"/proc/self/fd/{obj.fd}").startswith("/memfd:beambridge")
    obj.close()
    assert obj.closed
    assert isinstance(mmap.PAGESIZE, int)
