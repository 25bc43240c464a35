"""The worker's shortcuts on the control channel (protocol/SPEC.md §8.3): `read_beam`
reads the envelope most calls have without the general decoder, and `answer_head`
encodes the answer of most calls directly. Both must give exactly what the general
path gives, on every frame, good or bad."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from beambridge import Atom, control, control_shortcuts
from beambridge.etf import decode, encode
from hypothesis import example, given, settings
from hypothesis import strategies as st

NAMES = st.text(st.characters(codec="latin-1"), min_size=1, max_size=12)


def erlang_atom(text: str, latin1: bool) -> bytes:
    """An atom as ``term_to_binary`` writes it: ATOM_EXT (OTP 25) or SMALL_ATOM_UTF8."""
    if latin1:
        raw = text.encode("latin-1")
        return b"d" + struct.pack(">H", len(raw)) + raw
    raw = text.encode("utf-8")
    return b"w" + bytes((len(raw),)) + raw


def erlang_int(value: int) -> bytes:
    """An integer as ``term_to_binary`` writes it (body without the version byte)."""
    return encode(value)[1:]


def erlang_slices(slices: list[tuple[int, ...]]) -> bytes:
    """A call's slices list: NIL, or LIST of 4-tuples (any arity, to test refusals)."""
    if not slices:
        return b"j"
    entries = b"".join(b"h" + bytes((len(e),)) + b"".join(erlang_int(v) for v in e) for e in slices)
    return b"l" + struct.pack(">I", len(slices)) + entries + b"j"


def call_frame(
    call_id: int,
    module: str,
    function: str,
    latin1: bool,
    body: bytes,
    slices: list[tuple[int, ...]] | None = None,
) -> bytes:
    envelope = (
        b"\x83h\x06"
        + erlang_atom("call", latin1)
        + erlang_int(call_id)
        + erlang_atom(module, latin1)
        + erlang_atom(function, latin1)
        + b"t\x00\x00\x00\x00"
        + erlang_slices(slices or [])
    )
    return struct.pack(">I", len(envelope)) + envelope + body


def general(frame: bytes) -> tuple[Any, bytes | None] | type[control.ProtocolError]:
    """What `split` and `from_beam` make of ``frame``."""
    try:
        envelope, body = control.split(frame)
        message = control.from_beam(envelope, body is not None)
    except control.ProtocolError:
        return control.ProtocolError
    return message, (None if body is None else bytes(body))


def quick(frame: bytes) -> tuple[Any, bytes | None] | type[control.ProtocolError]:
    try:
        message, body = control_shortcuts.read_beam(frame)
    except control.ProtocolError:
        return control.ProtocolError
    return message, (None if body is None else bytes(body))


IDS = st.one_of(st.integers(1, 255), st.integers(-(2**31), 2**31 - 1), st.integers(-(2**70), 2**70))
#: A call's slices: mostly well-formed entries, sometimes a field out of range or an
#: entry of another arity (which the call, not the channel, refuses).
SLICES = st.lists(
    st.one_of(
        st.tuples(IDS, IDS, IDS, IDS),
        st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**32), IDS, st.integers(0, 99)),
        st.tuples(IDS, IDS, IDS),
    ),
    max_size=4,
)


@settings(max_examples=400)
@given(
    IDS,
    NAMES,
    NAMES,
    st.booleans(),
    st.sampled_from([b"", b"\x83j", encode([b"x" * 40])]),
    SLICES,
)
@example(0, "m", "f", True, b"\x83j", [])
@example(2**64 - 1, "m", "f", True, b"\x83j", [(1, 64, 256, 9)])
@example(2**64, "m", "f", False, b"\x83j", [])
@example(-5, "m", "f", True, b"", [])
@example(3, "m", "f", True, b"\x83j", [(1, -64, 256, 9)])
@example(3, "m", "f", True, b"\x83j", [(1, 64, 256)])
def test_read_beam_reads_what_split_and_from_beam_read(
    call_id: int,
    module: str,
    function: str,
    latin1: bool,
    body: bytes,
    slices: list[tuple[int, ...]],
) -> None:
    frame = call_frame(call_id, module, function, latin1, body, slices)
    expected = general(frame)  # also makes the atoms known, so the shortcut may apply
    assert quick(frame) == expected
    assert quick(frame) == expected


@settings(max_examples=400)
@given(IDS, NAMES, NAMES, st.booleans(), SLICES, st.data())
def test_read_beam_agrees_on_damaged_frames(
    call_id: int,
    module: str,
    function: str,
    latin1: bool,
    slices: list[tuple[int, ...]],
    data: st.DataObject,
) -> None:
    frame = bytearray(call_frame(call_id, module, function, latin1, b"\x83j", slices))
    general(bytes(frame))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    damaged = bytes(frame[:cut])
    expected = general(damaged)
    assert quick(damaged) == expected


def test_read_beam_takes_the_shortcut_for_a_plain_call(monkeypatch: pytest.MonkeyPatch) -> None:
    slices = [(3, 64, 16512, 2**40), (4, 128, 192, 7)]
    frame = call_frame(2**40, "bench_handlers", "echo", True, encode([b"abc"]), slices)
    message, body = control_shortcuts.read_beam(frame)  # the first time the atoms become known

    def no_general_path(*_: object) -> None:
        raise AssertionError("the general decoder was used")

    monkeypatch.setattr(control, "split", no_general_path)
    again, again_body = control_shortcuts.read_beam(frame)
    expected = control.Call(2**40, Atom("bench_handlers"), Atom("echo"), {}, slices, True)
    assert again == message == expected
    assert body is not None and again_body is not None
    assert decode(again_body) == [b"abc"]


U64 = st.integers(0, 2**64 - 1)
ENTRIES = st.lists(
    st.one_of(
        st.builds(control.worker_slice, U64, U64, U64, U64, U64),
        st.builds(control.sealed_slice, U64, U64, U64, U64),
        st.builds(control.beam_slice, U64, U64, U64, U64, U64),
    ),
    max_size=4,
)


@given(U64, ENTRIES, st.lists(st.tuples(U64, U64, U64), max_size=4))
def test_answer_head_is_the_etf_of_ok(call_id: int, slices: list[Any], released: list[Any]) -> None:
    expected = encode(control.ok(call_id, slices, released))
    assert control_shortcuts.answer_head(call_id, slices, released) == expected
