"""Helpers shared by the Python tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

from beambridge.arena import ArenaSet, PeerObject, Slice
from beambridge.frame import Frame
from beambridge.leases import buffer_address

MIB = 1 << 20


class Slices:
    """Both ends of a slice in one process: the owner's arenas (`ArenaSet`, where a
    format's writer puts a frame) and a reader's read-only mappings of them
    (`PeerObject`), with the frames the reader holds counted (`leases`)."""

    def __init__(self, limit: int = 1 << 30, min_arena: int = MIB) -> None:
        self.arenas = ArenaSet(limit=limit, min_arena=min_arena, checksum=True)
        self.peers: dict[int, PeerObject] = {}
        self.leases = 0  # frames read whose lease has not ended

    def put(self, payload: Any, **header: Any) -> Slice:
        """A new slice holding one frame of ``payload`` (``header``: the fields
        `ArenaSet.put` takes; checksummed unless told otherwise)."""
        return self.arenas.put(payload, **{"checksum": True, **header})

    def place(self, frame: bytes) -> Slice:
        """A new slice whose bytes start with ``frame`` exactly as given (a frame that
        may be malformed); the slice's generation is the one the frame names (bytes
        16-24 of its header) when it is long enough to name one."""
        s = self.arenas.alloc(len(frame))
        with self.arenas.area(s) as area:
            area[: len(frame)] = frame
        if len(frame) >= 24:
            s.generation = int.from_bytes(frame[16:24], "little")
        return s

    def peer(self, object_id: int) -> PeerObject:
        """The reader's mapping of an owned arena (opened as a peer opens it)."""
        if object_id not in self.peers:
            self.peers[object_id] = PeerObject.open(*self.arenas.announcement(object_id))
        return self.peers[object_id]

    def read(self, s: Slice, *, verify: bool = True, length: int | None = None) -> Frame:
        """The frame of ``s`` read in place through the reader's mapping (``length``:
        the slice length to read it with, ``s.length`` by default). It counts in
        `leases` until it and every view made from its payload are gone."""
        frame = self.peer(s.object_id).read_frame(
            s.offset,
            s.length if length is None else length,
            s.generation,
            verify=verify,
            on_release=self._ended,
        )
        self.leases += 1
        return frame

    def _ended(self) -> None:
        self.leases -= 1

    def mapping(self, object_id: int) -> tuple[int, int]:
        """``(first, end)`` addresses of the reader's mapping of an object."""
        peer = self.peer(object_id)
        start = buffer_address(peer.view())
        return start, start + peer.size

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()
        self.peers.clear()
        self.arenas.close()


def python_child(code: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start `python -c code` with line-buffered text pipes."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-u", "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
