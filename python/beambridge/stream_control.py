"""The messages of streams on the control channel (protocol/SPEC.md §8.6), and the
chain both ends of a stream keep.

A stream is named by ``(id, sid)``: the call's id, and 0 for the result stream or a
positive integer for an argument stream. Its producer sends ``{:element, id, sid, seq,
checkpoint, slices}`` (the element as the frame's body) and ``{:done, id, sid, count,
checksum}``; its consumer sends ``{:ack, id, sid, seq}`` and, from the BEAM,
``{:cancel, id, sid}``; the BEAM ends an argument stream whose producer failed with
``{:abort, id, sid, message}``. `parse` checks an envelope and returns the message as
one of the dataclasses below, or None when it is no stream message.

>>> parse(ack(7, 0, 3), False)
Ack(call_id=7, sid=0, seq=3)
>>> parse(element(7, 0, 1, b"1", []), True)
Element(call_id=7, sid=0, seq=1, checkpoint=b'1', slices=[])
>>> parse(element(7, 0, 1, None, []), False) is None   # an element has a body
True
>>> chain(0, 1, 0) == chain(0, 1, 0) != chain(0, 2, 0)
True
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import xxhash

from .etf import Atom

__all__ = [
    "MAX_WINDOW",
    "Abort",
    "Ack",
    "Cancel",
    "Done",
    "Element",
    "StreamMessage",
    "abort",
    "ack",
    "body_digest",
    "cancel",
    "chain",
    "done",
    "element",
    "parse",
]

#: The largest window a result stream may ask for (``"stream" => %{"window" => w}``).
MAX_WINDOW = 1024

A_ELEMENT, A_ACK, A_DONE = Atom("element"), Atom("ack"), Atom("done")
A_CANCEL, A_ABORT = Atom("cancel"), Atom("abort")

_U64 = 2**64
_CHAIN = struct.Struct("<QQQ")


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < _U64


@dataclass(frozen=True, slots=True)
class Element:
    """``{:element, id, sid, seq, checkpoint, slices}`` + the element."""

    call_id: int
    sid: int
    seq: int
    checkpoint: bytes | None
    slices: Any


@dataclass(frozen=True, slots=True)
class Ack:
    """``{:ack, id, sid, seq}``: the consumer took every element up to ``seq``."""

    call_id: int
    sid: int
    seq: int


@dataclass(frozen=True, slots=True)
class Done:
    """``{:done, id, sid, count, checksum}``: the stream ended after ``count``."""

    call_id: int
    sid: int
    count: int
    checksum: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """``{:cancel, id, sid}``: the consumer stops the stream."""

    call_id: int
    sid: int


@dataclass(frozen=True, slots=True)
class Abort:
    """``{:abort, id, sid, message}``: the producer of an argument stream failed."""

    call_id: int
    sid: int
    message: bytes


StreamMessage = Element | Ack | Done | Cancel | Abort


def element(
    call_id: int, sid: int, seq: int, checkpoint: bytes | None, slices: list[Any]
) -> tuple[Any, ...]:
    return (A_ELEMENT, call_id, sid, seq, checkpoint, slices)  # None goes as nil


def ack(call_id: int, sid: int, seq: int) -> tuple[Any, ...]:
    return (A_ACK, call_id, sid, seq)


def done(call_id: int, sid: int, count: int, checksum: int) -> tuple[Any, ...]:
    return (A_DONE, call_id, sid, count, checksum)


def cancel(call_id: int, sid: int) -> tuple[Any, ...]:
    return (A_CANCEL, call_id, sid)


def abort(call_id: int, sid: int, message: bytes) -> tuple[Any, ...]:
    return (A_ABORT, call_id, sid, message)


def parse(envelope: Any, has_body: bool) -> StreamMessage | None:
    """The stream message of ``envelope``, or None when it is none (or malformed: the
    caller then treats it as any frame that is no message). Only an element has a
    body; its ``slices`` are checked by whoever reads them (a malformed list is the
    call's error, not the channel's)."""
    if type(envelope) is not tuple or len(envelope) < 3:
        return None
    tag, n = envelope[0], len(envelope)
    if not (_uint(envelope[1]) and envelope[1] > 0 and _uint(envelope[2])):
        return None
    if tag == A_ELEMENT:
        if n == 6 and has_body and _uint(envelope[3]) and envelope[3] > 0:
            point = envelope[4]  # nil decodes to None
            if point is None or type(point) is bytes:
                return Element(envelope[1], envelope[2], envelope[3], point, envelope[5])
        return None
    if has_body:
        return None
    if tag == A_ACK and n == 4 and _uint(envelope[3]):
        return Ack(envelope[1], envelope[2], envelope[3])
    if tag == A_DONE and n == 5 and _uint(envelope[3]) and _uint(envelope[4]):
        return Done(envelope[1], envelope[2], envelope[3], envelope[4])
    if tag == A_CANCEL and n == 3:
        return Cancel(envelope[1], envelope[2])
    if tag == A_ABORT and n == 4 and type(envelope[3]) is bytes:
        return Abort(envelope[1], envelope[2], envelope[3])
    return None


def body_digest(body: Any) -> int:
    """``xxh3_64`` of an element's body (bytes, or a list of bytes-like parts)."""
    if isinstance(body, list):
        h = xxhash.xxh3_64()
        for part in body:
            h.update(part)
        return int(h.intdigest())
    return int(xxhash.xxh3_64_intdigest(body))


def chain(previous: int, seq: int, digest: int) -> int:
    """The stream chain after element ``seq`` whose body hashes to ``digest``:
    ``xxh3_64(le64(previous) || le64(seq) || le64(digest))`` (§8.6)."""
    return int(xxhash.xxh3_64_intdigest(_CHAIN.pack(previous, seq, digest)))
