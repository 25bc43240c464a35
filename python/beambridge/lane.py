"""The worker's side of its lane (protocol/SPEC.md §8.5).

A lane is one sealed shared object the BEAM makes for each interpreter and both sides
read and write. While the worker polls for the next call (``awake``), the BEAM puts the
call there instead of on the pipe, and while the BEAM polls for the answer the worker
puts the answer there: neither process is woken through the kernel, which on a virtual
CPU costs tens of microseconds. A side that stopped polling is rung with a ``:lane``
frame on the pipe. Each area holds a batch of frames exactly as they would cross the
pipe (a 4-byte big-endian length, then the frame).

Words are little-endian u64 at the offsets of ``registry.json`` "lane"; the worker
writes ``answer_seq``, ``answer_len`` and ``awake``, the BEAM the others. Stores are
made in program order (data, then length, then sequence number), which is what the
reader needs on a CPU that keeps stores in order (x86-64).
"""

from __future__ import annotations

from typing import Any

from .control import ObjectAnnouncement, ProtocolError
from .objects import PeerObject
from .registry import LANE

__all__ = ["Lane", "frames"]

_CALL_SEQ, _CALL_LEN = LANE["call_seq"] // 8, LANE["call_len"] // 8
_ANSWER_SEQ, _ANSWER_LEN = LANE["answer_seq"] // 8, LANE["answer_len"] // 8
_AWAKE, _PARKED = LANE["awake"] // 8, LANE["parked"] // 8
_CALL_AREA, _ANSWER_AREA, _AREA = LANE["call_area"], LANE["answer_area"], LANE["area_size"]


def frames(batch: bytes | bytearray | memoryview) -> list[memoryview]:
    """The frames of a batch (`ProtocolError` when a length runs past it).

    >>> [bytes(f) for f in frames(b"\\x00\\x00\\x00\\x02hi\\x00\\x00\\x00\\x00")]
    [b'hi', b'']
    """
    view = memoryview(batch)
    out, at, end = [], 0, view.nbytes
    while at < end:
        size = int.from_bytes(view[at : at + 4], "big")
        if at + 4 + size > end:
            raise ProtocolError(
                "bad_term",
                "lane",
                size,
                end - at - 4,
                f"bad_term: a lane batch frame of {size} bytes runs past the batch",
            )
        out.append(view[at + 4 : at + 4 + size])
        at += 4 + size
    return out


class Lane:
    """The lane the BEAM announced, mapped read-write."""

    def __init__(self, obj: PeerObject) -> None:
        if obj.size < LANE["size"]:
            raise ProtocolError(
                "bad_term", "lane", obj.size, LANE["size"], "bad_term: a lane is too small"
            )
        self.obj = obj
        self.view = obj.view()
        self.words = self.view[:_CALL_AREA].cast("Q")
        self.seen = self.words[_CALL_SEQ]  # the last call taken
        self.words[_AWAKE] = 1

    @classmethod
    def open(cls, message: ObjectAnnouncement) -> Lane:
        m = message
        return cls(PeerObject.open("lane", m.owner_pid, m.fd, m.object_id, m.size, m.nonce))

    def pending(self) -> bool:
        """Is a call waiting that has not been taken?"""
        return self.words[_CALL_SEQ] != self.seen

    def take(self) -> tuple[int, bytes]:
        """The waiting call's sequence number and batch (copied out)."""
        seq = self.words[_CALL_SEQ]
        size = self.words[_CALL_LEN]
        if size > _AREA:
            raise ProtocolError(
                "bad_term", "lane", size, _AREA, f"bad_term: a lane call of {size} bytes"
            )
        self.seen = seq
        return seq, bytes(self.view[_CALL_AREA : _CALL_AREA + size])

    def sleep(self) -> bool:
        """Stop polling: False (and still awake) when a call came in the meantime."""
        self.words[_AWAKE] = 0
        if self.pending():
            self.words[_AWAKE] = 1
            return False
        return True

    def wake(self) -> None:
        self.words[_AWAKE] = 1

    def answer(self, seq: int, frames: list[list[Any]]) -> bool:
        """Put the answer to call ``seq`` (frames, each a list of bytes-like parts) in the
        lane; False, with nothing written, when it does not fit."""
        size = sum(4 + sum(map(len, parts)) for parts in frames)
        if size > _AREA:
            return False
        view, at = self.view, _ANSWER_AREA
        for parts in frames:
            n = sum(map(len, parts))
            view[at : at + 4] = n.to_bytes(4, "big")
            at += 4
            for part in parts:
                k = len(part)
                view[at : at + k] = part
                at += k
        self.publish(seq, size)
        return True

    def publish(self, seq: int, size: int) -> None:
        """Answer ``seq`` with the ``size`` bytes of the answer area (0: the answer went
        on the pipe)."""
        self.words[_ANSWER_LEN] = size
        self.words[_ANSWER_SEQ] = seq

    def parked(self, seq: int) -> bool:
        """Did the BEAM stop polling for the answer to ``seq`` (ring it)?"""
        return bool(self.words[_PARKED] == seq)

    def close(self) -> None:
        self.words[_AWAKE] = 0
        self.words.release()
        self.obj.close()
