"""The worker's shortcuts on the control channel (protocol/SPEC.md §8.3): the messages
most calls exchange, read and written without the general ETF decoder and encoder.

`read_beam` reads a frame from the BEAM: a call whose options are ``%{}`` and whose
module and function are atoms some decode met before is read directly, anything else
goes through `beambridge.control.split` and `beambridge.control.from_beam`, so both
ways give the same message (and the same errors). `answer_head` writes the envelope of
an answer, ``{:ok, id, slices, released}``.

>>> from beambridge.etf import encode
>>> frame = b"".join(control.join(control.call(7, Atom("m"), Atom("f"), {}, []), [encode([1])]))
>>> read_beam(frame)[0]
Call(call_id=7, module=Atom('m'), function=Atom('f'), opts={}, slices=[], has_body=True)
>>> answer_head(7, [], []) == encode(control.ok(7, [], []))
True
"""

from __future__ import annotations

from typing import Any

from . import control
from .control import BeamMessage, Call
from .etf import NOT_CACHED, Atom, cached_atom, encode, encode_int  # noqa: F401 (Atom: examples)

__all__ = ["answer_head", "read_beam"]


def read_beam(frame: bytes | bytearray | memoryview) -> tuple[BeamMessage, memoryview | None]:
    """The BEAM's message in ``frame`` and the frame's body: `split`, then `from_beam`,
    with a shortcut for the envelope most calls have (atoms for module and function,
    no options, no slices) that gives the same message without the general decoder."""
    view = memoryview(frame)
    quick = _quick_call(view)
    if quick is not None:
        return quick
    envelope, body = control.split(view)
    return control.from_beam(envelope, body is not None), body


#: ``{:call,`` as ``term_to_binary`` writes it (Latin-1 or UTF-8 atom tag), and the
#: ETF of ``%{}``.
_CALL_HEAD_LATIN1 = b"\x83h\x06d\x00\x04call"
_CALL_HEAD_UTF8 = b"\x83h\x06w\x04call"
_EMPTY_MAP = b"t\x00\x00\x00\x00"


class _Other(Exception):
    """Raised inside `_quick_call` only: not the shape it reads."""


def _quick_call(view: memoryview) -> tuple[Call, memoryview | None] | None:
    """`read_beam`'s shortcut, or None whenever the frame is anything else (then the
    general path decides, errors included)."""
    try:
        end = 4 + int.from_bytes(view[:4], "big")
        if end > view.nbytes:
            return None
        if view[4:13] == _CALL_HEAD_UTF8:
            pos = 13
        elif view[4:14] == _CALL_HEAD_LATIN1:
            pos = 14
        else:
            return None
        call_id, pos = _quick_uint(view, pos)
        module, pos = _quick_atom(view, pos)
        function, pos = _quick_atom(view, pos)
        if view[pos : pos + 5] != _EMPTY_MAP:
            return None
        slices, pos = _quick_slices(view, pos + 5)
    except (_Other, IndexError):
        return None
    if pos != end or call_id <= 0:
        return None
    body = view[end:]
    has_body = body.nbytes > 0
    call = Call(call_id, module, function, {}, slices, has_body)
    return call, (body if has_body else None)


def _quick_uint(view: memoryview, pos: int) -> tuple[int, int]:
    """A non-negative integer below 2^64 (SMALL_INTEGER, INTEGER, SMALL_BIG)."""
    tag = view[pos]
    if tag == 97:  # SMALL_INTEGER
        return view[pos + 1], pos + 2
    if tag == 98:  # INTEGER
        value = int.from_bytes(view[pos + 1 : pos + 5], "big", signed=True)
        if value < 0:
            raise _Other
        return value, pos + 5
    if tag == 110 and view[pos + 2] == 0 and view[pos + 1] <= 8:  # SMALL_BIG, positive
        n = view[pos + 1]
        return int.from_bytes(view[pos + 3 : pos + 3 + n], "little"), pos + 3 + n
    raise _Other


def _quick_atom(view: memoryview, pos: int) -> tuple[Any, int]:
    """An atom some decode met before (ATOM or SMALL_ATOM_UTF8)."""
    tag = view[pos]
    if tag == 100:  # ATOM (Latin-1), u16 length
        n, start, utf8 = int.from_bytes(view[pos + 1 : pos + 3], "big"), pos + 3, False
    elif tag == 119:  # SMALL_ATOM_UTF8, u8 length
        n, start, utf8 = view[pos + 1], pos + 2, True
    else:
        raise _Other
    value = cached_atom(view[start : start + n].tobytes(), utf8)
    if value is NOT_CACHED or start + n > view.nbytes:
        raise _Other
    return value, start + n


def _quick_slices(view: memoryview, pos: int) -> tuple[list[Any], int]:
    """``[]`` or a list of ``{object_id, offset, length, generation}``."""
    if view[pos] == 106:  # NIL
        return [], pos + 1
    if view[pos] != 108:  # LIST
        raise _Other
    count = int.from_bytes(view[pos + 1 : pos + 5], "big")
    pos += 5
    if count > view.nbytes - pos:
        raise _Other
    slices = []
    for _ in range(count):
        if view[pos] != 104 or view[pos + 1] != 4:  # SMALL_TUPLE of 4
            raise _Other
        pos += 2
        object_id, pos = _quick_uint(view, pos)
        offset, pos = _quick_uint(view, pos)
        length, pos = _quick_uint(view, pos)
        generation, pos = _quick_uint(view, pos)
        slices.append((object_id, offset, length, generation))
    if view[pos] != 106:
        raise _Other
    return slices, pos + 1


#: The ETF of ``{:worker,``, ``{:sealed,`` and ``{:beam,`` (an answer's slice entries).
_ENTRY_HEADS = {
    control.A_WORKER: b"h\x06w\x06worker",
    control.A_SEALED: b"h\x05w\x06sealed",
    control.A_BEAM: b"h\x06w\x04beam",
}
_ENTRY_SIZES = {control.A_WORKER: 6, control.A_SEALED: 5, control.A_BEAM: 6}


def answer_head(call_id: int, slices: list[Any], released: list[Any]) -> bytes:
    """The ETF of ``{:ok, id, slices, released}`` (`beambridge.control.ok`), written
    directly: the entries and releases an answer carries are tuples of integers."""
    parts: list[Any] = [b"\x83h\x04w\x02ok"]
    encode_int(call_id, parts)
    try:
        for items, heads in ((slices, _ENTRY_HEADS), (released, None)):
            if items:
                parts.append(b"l" + len(items).to_bytes(4, "big"))
                for entry in items:
                    _entry(entry, heads, parts)
            parts.append(b"j")
    except _Other:
        return encode(control.ok(call_id, slices, released))
    return b"".join(parts)


def _entry(entry: Any, heads: dict[Any, bytes] | None, parts: list[Any]) -> None:
    if type(entry) is not tuple:
        raise _Other
    if heads is None:  # a release: {object_id, offset, generation}
        if len(entry) != 3:
            raise _Other
        parts.append(b"h\x03")
        values = entry
    else:
        head = heads.get(entry[0]) if entry else None
        if head is None or len(entry) != _ENTRY_SIZES[entry[0]]:
            raise _Other
        parts.append(head)
        values = entry[1:]
    for v in values:
        if type(v) is not int:
            raise _Other
        encode_int(v, parts)
