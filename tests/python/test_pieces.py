"""A list that comes in pieces (SPEC §8.6, "Pieces"): ``{:"$bb_pieces", sid, count}``
stands for the values of the lists that are the elements of argument stream ``sid``, read
whole before the handler runs, each piece decoded as it arrives. The BEAM sends a long
list of schema values so; here a real worker reads pieces fed by hand."""

from __future__ import annotations

from typing import Any

import pytest
from beambridge import control
from beambridge import stream_control as sc
from beambridge.etf import Atom, encode_parts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_streams import MOD, feed
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
