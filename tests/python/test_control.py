"""The control channel's messages (protocol/SPEC.md §8) and the bookkeeping of
slices in one process: leases on the BEAM's slices (`LeaseBook`), the worker's result
slices (`ResultSlices`), and a decoder's releases of the slices a call names."""

from __future__ import annotations

import gc
import threading
from typing import Any

import numpy as np
import pytest
from beambridge import Atom, control
from beambridge.arena import ArenaSet
from beambridge.decoder import Decoder
from beambridge.errors import ArenaError, EtfError
from beambridge.etf import encode
from beambridge.leases import LeaseBook, PeerObjects
from beambridge.objects import KIND_SEALED, PeerObject
from beambridge.result_slices import ResultSlices, WorkerArenas
from beambridge.terms import TAG_SLICE
from hypothesis import given, settings
from hypothesis import strategies as st
from worker_harness import BeamSide, Loopback

u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)

# ---- frames and messages ------------------------------------------------------------------


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=200)))
def test_join_and_split_are_inverse(payload: bytes, body: bytes | None) -> None:
    envelope = (Atom("log"), Atom("stdout"), payload)
    parts = control.join(envelope, None if body is None else [encode(body)])
    got, rest = control.split(b"".join(parts))
    assert got == envelope
    assert (None if rest is None else bytes(rest)) == (None if body is None else encode(body))


@pytest.mark.parametrize(
    "frame", [b"", b"\x00\x00\x00", b"\x00\x00\x00\x05\x83a", b"\x00\x00\x00\x02xy"]
)
def test_split_refuses_frames_whose_sizes_or_envelope_are_wrong(frame: bytes) -> None:
    with pytest.raises(control.ProtocolError):
        control.split(frame)


@settings(max_examples=50)
@given(st.sampled_from(["arena", "lease_table"]), u32, u32, u32, u64, u64)
def test_beam_messages_are_checked_and_read_back(
    kind: str, pid: int, fd: int, object_id: int, size: int, nonce: int
) -> None:
    announcement = control.object_announcement(kind, pid, fd, object_id, size, nonce)
    message = control.from_beam(announcement, False)
    assert message == control.ObjectAnnouncement(kind, pid, fd, object_id, size, nonce)
    assert message.args() == (kind, pid, fd, object_id, size, nonce)
    assert control.from_beam(control.object_dropped(object_id), False) == control.ObjectDropped(
        object_id
    )
    assert control.from_beam(control.sealed_mapped([object_id]), False) == control.SealedMapped(
        [object_id]
    )
    call = control.from_beam(control.call(pid + 1, Atom("m"), b"f", {}, []), True)
    assert call == control.Call(pid + 1, Atom("m"), b"f", {}, [], True)


@pytest.mark.parametrize(
    ("envelope", "has_body"),
    [
        (control.SHUTDOWN, True),  # a body on a message without one
        (control.object_dropped(1), True),
        (control.object_announcement("sealed", 1, 2, 3, 4096, 5), False),  # not the BEAM's
        (control.object_announcement("arena", 1, 2, 3, -1, 5), False),
        ((Atom("call"), 0, Atom("m"), Atom("f"), {}, []), True),  # ids are positive
        ((Atom("call"), 1, Atom("m"), Atom("f"), {}), True),
        (control.sealed_mapped([-1]), False),
        ((Atom("ok"), 1, [], []), False),  # the worker's
        ([], False),
    ],
)
def test_from_beam_refuses_what_is_no_message(envelope: Any, has_body: bool) -> None:
    with pytest.raises(control.ProtocolError):
        control.from_beam(envelope, has_body)


def test_worker_messages_are_checked_and_read_back() -> None:
    assert control.from_worker(control.ready(42), False) == control.Ready(
        42, control.PROTOCOL_VERSION
    )
    entries = [
        control.worker_slice(1, 64, 128, 7, 0),
        control.sealed_slice(2, 64, 256, 8),
        control.beam_slice(3, 64, 9, 128, 10),
    ]
    answer = control.from_worker(control.ok(5, entries, [(3, 128, 4)]), True)
    assert answer == control.Answer(5, True, entries, None, [(3, 128, 4)])
    detail = control.bad_call("stale_generation", b"why")
    answer = control.from_worker(control.error(5, detail, []), False)
    assert answer == control.Answer(5, False, [], detail, [])
    assert control.from_worker(control.released([(1, 64, 2)]), False) == control.Released(
        [(1, 64, 2)]
    )
    with pytest.raises(control.ProtocolError):
        control.from_worker(control.ok(5, entries, []), False)  # an ok carries a body
    with pytest.raises(control.ProtocolError):
        control.from_worker(control.ok(5, [(Atom("worker"), 1)], []), True)
    with pytest.raises(control.ProtocolError):
        control.from_worker(control.released([(1, 64)]), False)


def test_bad_call_reasons_the_beam_may_not_know_go_as_badarg() -> None:
    assert control.bad_call("enoent", b"m") == (Atom("bad_call"), Atom("badarg"), b"m")
    for reason in ("slice_out_of_bounds", "stale_generation", "too_large", "arena_full"):
        assert control.bad_call(reason, b"m")[1] == reason


def test_slice_refs_are_checked() -> None:
    assert control.slice_refs([(1, 64, 128, 2)]) == ([(1, 64, 128, 2)], None)
    for bad in ([(1, 64, 128)], (1, 64, 128, 2), [(1, 64, 128, -2)], [[1, 64, 128, 2]]):
        refs, problem = control.slice_refs(bad)
        assert refs == [] and isinstance(problem, EtfError) and problem.reason == "bad_term"
    # the well-formed entries of a malformed list are kept: they are released all the same
    assert control.slice_refs([(1, 64, 128, 2), (1,)])[0] == [(1, 64, 128, 2)]


# ---- leases on the BEAM's slices ----------------------------------------------------------


@pytest.fixture
def beam() -> Any:
    side = BeamSide(tickets=16)
    yield side
    side.close()


def peers_of(beam: BeamSide) -> PeerObjects:
    peers = PeerObjects()
    for notice in beam.notices():
        message = control.from_beam(notice, False)
        if isinstance(message, control.ObjectAnnouncement) and message.kind == "arena":
            peers.open(*message.args())
    return peers


def test_each_slice_is_released_once_when_every_view_is_gone(beam: BeamSide) -> None:
    arg = beam.slice("buffer", b"v" * 1000)
    peers, book = peers_of(beam), LeaseBook()
    decoder = Decoder(peers, book)
    terms, refs = beam.prepare([arg, arg, (arg,)])
    views = decoder.decode(terms, refs)
    assert book.take_released() == [] and len(book) == 1
    first = views[0]
    del views
    assert book.take_released() == []  # `first` still points into the slice
    part = first[10:20]
    del first
    assert book.take_released() == []
    del part
    assert book.take_released() == [arg.key]
    assert book.take_released() == []  # once
    peers.close()


def test_a_slice_whose_views_are_gone_is_no_longer_in_use_once_settled(beam: BeamSide) -> None:
    # (how the worker knows a call's arguments hold no slice: CallPath._leased)
    arg = beam.slice("buffer", b"s" * 500)
    peers, book = peers_of(beam), LeaseBook()
    terms, refs = beam.prepare([arg])
    views = Decoder(peers, book).decode(terms, refs)
    book.settle()
    assert arg.key in book  # a view is alive
    del views
    assert arg.key in book  # its finalizer ran, not yet counted
    book.settle()
    assert arg.key not in book
    assert book.take_released() == [arg.key]  # settled, still released once
    assert book.take_released() == []
    peers.close()


def test_copied_and_unnamed_slices_are_released_at_once(beam: BeamSide) -> None:
    named, unnamed = beam.slice("binary", b"b" * 100), beam.slice("buffer", b"u" * 100)
    peers, book = peers_of(beam), LeaseBook()
    terms, refs = beam.prepare([named], [unnamed])
    assert Decoder(peers, book).decode(terms, refs) == [b"b" * 100]
    assert sorted(book.take_released()) == sorted([named.key, unnamed.key])
    peers.close()


def test_a_failed_decode_releases_every_slice_of_the_call(beam: BeamSide) -> None:
    good, bad = beam.slice("buffer", b"g" * 100), beam.slice("binary", b"b" * 100)
    peers, book = peers_of(beam), LeaseBook()
    terms, refs = beam.prepare([good, bad])
    terms[1] = (TAG_SLICE, Atom("tensor"), 1)  # a frame of another format
    with pytest.raises(EtfError) as info:
        Decoder(peers, book).decode(terms, refs)
    assert info.value.field == "format"
    del info
    gc.collect()
    assert sorted(book.take_released()) == sorted([good.key, bad.key])
    peers.close()


def test_releases_noted_from_other_threads_are_counted_once(beam: BeamSide) -> None:
    args = [beam.slice("buffer", bytes([i]) * 200) for i in range(64)]
    peers, book = peers_of(beam), LeaseBook()
    terms, refs = beam.prepare(args)
    views = Decoder(peers, book).decode(terms, refs)
    holders = [[v] for v in views]
    del views
    threads = [threading.Thread(target=h.clear) for h in holders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    released = book.take_released()
    assert sorted(released) == sorted(a.key for a in args)
    peers.close()


def test_find_says_which_live_frame_holds_a_buffer(beam: BeamSide) -> None:
    arg = beam.slice("buffer", bytes(range(256)) * 4)
    peers, book = peers_of(beam), LeaseBook()
    terms, refs = beam.prepare([arg])
    (view,) = Decoder(peers, book).decode(terms, refs)
    address = np.frombuffer(view, np.uint8).__array_interface__["data"][0]
    found = book.find(address + 10, 100)
    assert found is not None and found[0] == arg.key
    assert address - found[1] == 128  # the payload starts after the frame header
    assert book.find(address + 1000, 100) is None  # runs past the payload
    del view
    assert book.find(address, 1) is None
    peers.close()


def test_an_unknown_object_is_slice_out_of_bounds() -> None:
    with pytest.raises(ArenaError) as info:
        PeerObjects().get(7)
    assert info.value.reason == "slice_out_of_bounds" and info.value.field == "object_id"


# ---- the worker's result slices -------------------------------------------------------------


def test_a_cancelled_result_gives_back_its_tickets_and_sealed_objects() -> None:
    beam = BeamSide(tickets=2)
    arenas = WorkerArenas(limit=1 << 22, min_arena=1 << 20)
    arenas.set_lease_table(PeerObject.open(*beam.table.announcement()))
    out = ResultSlices(arenas)
    for _ in range(3):  # three results of two slices each, all cancelled: never short
        out.begin()
        assert out.place("binary", memoryview(b"x" * 1000)) == 0
        assert out.place("binary", memoryview(b"y" * 1000)) == 1
        out.cancel()
    assert arenas.lent == 0
    sealed = ResultSlices(None, sealed=True, limit=1 << 20)
    sealed.begin()
    assert sealed.place("binary", memoryview(b"s" * 5000)) == 0
    assert sealed.entries[0][0] == Atom("sealed") and sealed.entries[0][2] == 64
    sealed.cancel()
    assert sealed.unconfirmed == {} and sealed.commit() == []
    out.close()
    beam.close()


def test_sealed_objects_are_announced_sealed_and_closed_when_confirmed() -> None:
    out = ResultSlices(None, sealed=True, limit=1 << 20)
    out.begin()
    index = out.place("binary", memoryview(b"s" * 5000))
    assert index == 0
    (notice,) = out.commit()
    message = control.from_worker(notice, False)
    assert isinstance(message, control.ObjectAnnouncement) and message.kind == "sealed"
    peer = PeerObject.open(*message.args())  # refused unless F_SEAL_WRITE is set
    _, object_id, offset, length, generation = out.entries[0]
    frame = peer.read_frame(offset, length, generation)
    assert bytes(frame.payload) == b"s" * 5000 and peer.kind == KIND_SEALED
    out.sealed_mapped([object_id])
    assert out.unconfirmed == {}
    assert bytes(frame.payload) == b"s" * 5000  # the peer's mapping outlives the owner's fd
    frame.release()
    peer.close()


def test_sealed_objects_count_against_the_limit() -> None:
    out = ResultSlices(None, sealed=True, limit=3 * 4096)
    out.begin()
    assert out.place("binary", memoryview(b"a" * 5000)) == 0  # 8 KiB object
    assert out.place("binary", memoryview(b"b" * 5000)) is None  # arena_full: inline
    out.commit()
    out.begin()
    assert out.place("binary", memoryview(b"c" * 5000)) is None  # still unconfirmed
    out.sealed_mapped(list(out.unconfirmed))
    assert out.place("binary", memoryview(b"d" * 5000)) == 0
    assert out.place("binary", memoryview(b"e" * 100_000)) is None  # too_large: inline
    out.cancel()
    out.close()


def test_a_value_that_fits_neither_a_slice_nor_a_frame_is_refused() -> None:
    out = ResultSlices(WorkerArenas(limit=1 << 20, min_arena=1 << 20))
    out.begin()

    def never(area: memoryview) -> None:
        raise AssertionError("nothing is copied for a value that cannot go anywhere")

    with pytest.raises(ArenaError) as info:
        out.place("binary", never, nbytes=control.MAX_CONTROL_FRAME)
    assert info.value.reason == "too_large" and ":arena_limit" in str(info.value)
    out.close()


def test_an_echo_pins_its_slice_until_the_answer_is_written() -> None:
    loop = Loopback(threshold=64)
    arg = loop.beam.slice("buffer", b"e" * 4096)
    (view,) = loop.argument([arg])
    term = loop.result(view[100:200])
    assert loop.entries == [control.beam_slice(*arg.key, 128 + 100, 100)]
    assert term == (TAG_SLICE, Atom("binary"), 0)
    del view
    assert loop.leases.take_released() == []  # pinned: not in this answer
    loop.slices.unpin()
    assert loop.leases.take_released() == [arg.key]
    loop.close()


def test_an_arena_set_gives_back_a_recalled_slice() -> None:
    beam = BeamSide(tickets=1)
    arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
    arenas.set_lease_table(PeerObject.open(*beam.table.announcement()))
    s = arenas.put(b"r" * 100)
    assert arenas.lend(s) == 0
    arenas.recall(s)
    assert arenas.lent == 0 and s.ticket == -1
    t = arenas.put(b"t" * 100)
    assert arenas.lend(t) == 0 and t.offset == s.offset  # the ticket and the bytes are back
    arenas.close()
    beam.close()
