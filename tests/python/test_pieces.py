"""A list that comes in pieces (SPEC §8.6, "Pieces"): ``{:"$bb_pieces", sid, count}``
stands for the values of the lists that are the elements of argument stream ``sid``, read
whole before the handler runs, each piece decoded as it arrives. The BEAM sends a long
list of schema values so; here a real worker reads pieces fed by hand."""

from __future__ import annotations

import dataclasses
from typing import Any

import beambridge
import pytest
from beambridge import control
from beambridge import stream_control as sc
from beambridge.etf import Atom, encode_parts
from beambridge.types import String, uint32
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_streams import MOD, feed
from test_streams import STREAM_TAG as STREAM
from worker_harness import WorkerProcess, running

PIECES = Atom("$bb_pieces")


def send_all(w: WorkerProcess, call_id: int, sid: int, pieces: list[Any]) -> None:
    """Every piece at once, then the stream's end (a feed that ignores the window)."""
    chain = 0
    for seq, piece in enumerate(pieces, 1):
        parts = encode_parts(piece)
        chain = sc.chain(chain, seq, sc.body_digest(b"".join(parts)))
        w.send_frame(control.join(sc.element(call_id, sid, seq, None, []), parts))
    w.send(sc.done(call_id, sid, len(pieces), chain))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.lists(st.one_of(st.integers(), st.binary(max_size=50)), max_size=30)),
    window=st.integers(1, 4),
)
def test_pieces_arrive_as_one_list_in_order(pieces: list[list[Any]], window: int) -> None:
    values = [v for piece in pieces for v in piece]
    with running() as w:
        w.flush()
        w.send(control.call(3, MOD, Atom("as_list"), {}, []), [(PIECES, 1, len(values))])
        feed(w, 3, 1, pieces, window)
        answer = w.recv()
        assert answer.ok and w.body == values


@pytest.mark.parametrize(
    ("count", "pieces", "said"),
    [
        (5, [[1, 2], [3]], b"the pieces of 5 values hold 3"),
        (2, [[1, 2], [3]], b"a piece of 1 values after 2 of 2"),
        (3, [[1, 2], b"3"], b"a piece of bytes after 2 of 3"),
        (-1, [], b"pieces are"),
    ],
)
def test_pieces_that_do_not_make_the_list_are_a_bad_call(
    count: int, pieces: list[Any], said: bytes
) -> None:
    with running() as w:
        w.flush()
        w.send(control.call(4, MOD, Atom("as_list"), {}, []), [(PIECES, 1, count)])
        send_all(w, 4, 1, pieces)
        answer = w.recv()
        assert not answer.ok and answer.error[:2] == (Atom("bad_call"), Atom("bad_term"))
        assert said in answer.error[2]
        assert w.ok("total", [1], module=MOD) == 1  # the rest was dropped; the worker serves


def test_an_aborted_piece_stream_is_a_bad_call_and_the_handler_never_runs() -> None:
    """The BEAM aborts the stream when a piece cannot be written (a value that does not
    fit its schema); the worker answers without calling the handler."""
    with running() as w:
        w.flush()
        w.send(control.call(5, MOD, Atom("as_list"), {}, []), [(PIECES, 1, 4)])
        w.send_frame(control.join(sc.element(5, 1, 1, None, []), encode_parts([1, 2])))
        w.send(sc.abort(5, 1, b"bad_value: Sample[2].step is 70000"))
        answer = w.recv()
        assert not answer.ok and answer.error[:2] == (Atom("bad_call"), Atom("badarg"))
        assert b"stream_aborted" in answer.error[2] and b"Sample[2].step" in answer.error[2]
        assert w.ok("total", [2], module=MOD) == 2


# ---- a long result list, worker to BEAM ----------------------------------------------

PIECE = Atom("$bb_piece")


@beambridge.schema("test.Sample", version="1.0")
@dataclasses.dataclass
class Sample:
    """bbtest_streams.Sample, as the BEAM's side of these tests reads it."""

    step: uint32
    name: String


def take_pieces(w: WorkerProcess, call_id: int, start: int = 0) -> tuple[Any, list[int], list[Any]]:
    """Plays the BEAM for a call whose result may come in pieces (after the first
    ``start``, taken and acknowledged): checks each piece (in order, within the window
    of 4), reads it and acknowledges in pairs; returns the answer, the sizes and the
    values of the pieces it took, and checks the chain when the first was among them."""
    w.ack_chunks = False
    sizes: list[int] = [0] * start
    values: list[Any] = []
    chain = 0
    acked = start
    while True:
        message = w.recv_any(60)
        if isinstance(message, sc.Element):
            assert (message.call_id, message.sid, message.seq) == (call_id, 1, len(sizes) + 1)
            assert message.seq - acked <= 4
            tag, _count, handle = w.body
            assert tag == PIECE
            chain = sc.chain(chain, message.seq, sc.body_digest(w.raw_body))
            piece = w.beam.read(handle, message.slices)
            sizes.append(len(piece))
            values.extend(piece)
            if message.seq % 2 == 0:
                acked = message.seq
                w.send(sc.ack(call_id, 1, acked))
        elif isinstance(message, sc.Done):
            assert (message.sid, message.count) == (1, len(sizes))
            assert start or message.checksum == chain
        elif isinstance(message, control.Answer):
            return message, sizes[start:], values


def test_a_long_result_list_of_schema_values_goes_as_pieces() -> None:
    """140,000 values: pieces of 1,024, then as many as fill about 4 MiB (65,536 at
    most), sent while the BEAM reads the ones before; the answer names the stream."""
    n = 140_000
    with running(BEAMBRIDGE_PROTOCOL="2.3") as w:
        w.flush()
        w.send(control.call(5, MOD, Atom("samples"), {}, []), [n])
        answer, sizes, values = take_pieces(w, 5)
        assert answer.ok and w.body == (PIECES, 1, n)
        assert sizes == [1_024, 65_536, 65_536, n - 1_024 - 2 * 65_536]
        assert values == [Sample(i, f"s{i}") for i in range(n)]
        # a BEAM before 2.3 takes no pieces: one list, as ever
    with running(BEAMBRIDGE_PROTOCOL="2.2") as w:
        w.flush()
        w.send(control.call(6, MOD, Atom("samples"), {}, []), [n])
        answer = w.recv()
        assert answer.ok and len(w.read(w.body)) == n


def test_a_bad_value_in_a_later_piece_is_the_answer_naming_its_index() -> None:
    with running(BEAMBRIDGE_PROTOCOL="2.3") as w:
        w.flush()
        w.send(control.call(7, MOD, Atom("samples"), {}, []), [140_000, 139_999])
        answer, sizes, _ = take_pieces(w, 7)
        assert not answer.ok and answer.error[:2] == (Atom("bad_call"), Atom("bad_value"))
        assert b"Sample[139999].step is -1" in answer.error[2]
        assert len(sizes) == 3  # the pieces before it went
        w.send(control.call(8, MOD, Atom("samples"), {}, []), [3])
        assert w.recv().ok and w.read(w.body) == [Sample(i, f"s{i}") for i in range(3)]


def test_an_error_in_a_piece_names_the_index_in_the_whole_list() -> None:
    from beambridge.ssz_batch import encode_list
    from beambridge.types import SchemaError

    values = [Sample(i, f"s{i}") for i in range(10)]
    values[7].step = -1
    for first, named in [(0, "Sample[7].step"), (65_536, "Sample[65543].step")]:
        with pytest.raises(SchemaError) as info:
            encode_list(Sample.__bb_schema__.type, values, first)
        assert info.value.field == named and f"{named} is -1" in info.value.message
        assert info.value.message.count("bad_value") == 1


def test_a_result_set_aside_for_its_pieces_is_taken_back_whole() -> None:
    """While pieces go, the answer's own slices wait uncommitted (`suspend`); when a
    piece fails, `resume` then `cancel` gives every one back."""
    from beambridge.objects import PeerObject
    from beambridge.result_slices import ResultSlices, WorkerArenas
    from worker_harness import BeamSide

    beam = BeamSide(tickets=8)
    arenas = WorkerArenas(limit=64 << 20, min_arena=1 << 20)
    arenas.set_lease_table(PeerObject.open(*beam.table.announcement()))
    slices = ResultSlices(arenas)
    try:
        slices.begin()
        slices.place("binary", memoryview(bytes(300_000)))
        answer = slices.suspend()
        assert slices.entries == []
        slices.place("binary", memoryview(bytes(200_000)))  # a piece, committed
        slices.commit()
        assert arenas.lent == 2
        slices.resume(answer)
        assert len(slices.entries) == 1
        slices.cancel()
        assert slices.entries == [] and arenas.lent == 1  # the piece's stays lent
    finally:
        slices.close()
        beam.close()


def test_an_abort_that_crosses_the_end_of_its_stream_is_dropped() -> None:
    """The BEAM aborts the argument streams of a caller that exited, ended ones too; it
    may come while the worker sends the result's pieces: the call goes on, and the
    worker with it."""
    with running(BEAMBRIDGE_PROTOCOL="2.3") as w:
        w.flush()
        w.send(control.call(9, MOD, Atom("samples_after"), {}, []), [(STREAM, 1), 400_000])
        feed(w, 9, 1, list(range(10)))
        w.ack_chunks = False
        first = w.recv_any(30)
        assert isinstance(first, sc.Element) and first.seq == 1
        w.send(sc.abort(9, 1, b"the caller exited"))
        w.send(sc.ack(9, 1, 1))
        answer, sizes, _ = take_pieces(w, 9, start=1)
        assert answer.ok and w.body == (PIECES, 1, 400_000) and len(sizes) == 7
