"""A peer's slices read by this process (protocol/SPEC.md §2, §4): the peer's
objects mapped read-only (`PeerObjects`) and the leases held on their slices
(`LeaseBook`).

A lease is held per slice, named ``(object_id, offset, generation)``: from the moment a
message names the slice until every frame read from it, and every view made from one,
is gone. It then goes on the list the next answer (or ``{:released, ...}``) reports,
exactly once.

>>> from beambridge.arena import ArenaSet
>>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
>>> s = arenas.put(b"hello")
>>> peers, book = PeerObjects(), LeaseBook()
>>> _ = peers.open("arena", *arenas.announcement(s.object_id)[1:])
>>> key = (s.object_id, s.offset, s.generation)
>>> book.hold(key)
>>> frame = book.read_frame(peers, s.object_id, s.offset, s.length, s.generation)
>>> book.let_go(key)
>>> book.take_released()
[]
>>> del frame
>>> book.take_released() == [key]
True
>>> peers.close(); arenas.close()
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools

from .errors import ArenaError
from .frame import Frame
from .header import Header
from .objects import KIND_ARENA, KIND_SEALED, PeerObject

__all__ = ["Key", "LeaseBook", "PeerObjects", "buffer_address"]

#: A slice as a lease names it: ``(object_id, offset, generation)``.
Key = tuple[int, int, int]


def buffer_address(buffer: object) -> int:
    """The address of the first byte of a C-contiguous buffer (via NumPy's
    ``__array_interface__``; Python has no other portable way)."""
    import numpy as np

    with memoryview(buffer) as view:  # type: ignore[arg-type]
        if view.nbytes == 0:
            return 0
        arr = np.frombuffer(view.cast("B") if view.ndim != 1 else view, dtype=np.uint8)
        address: int = arr.__array_interface__["data"][0]
        del arr
    return address


class PeerObjects:
    """The peer's arenas (and sealed objects) this process has mapped, by object id. An
    object that could not be opened is remembered with its error, which every slice
    that names it then gets."""

    def __init__(self) -> None:
        self._objects: dict[int, PeerObject] = {}
        self._failed: dict[int, ArenaError] = {}
        self._bases: dict[int, int] = {}

    def open(
        self, kind: str, owner_pid: int, fd: int, object_id: int, size: int, nonce: int
    ) -> PeerObject:
        """Map an announced object (§2); `ArenaError` when it cannot be (remembered)."""
        self.drop(object_id)
        try:
            peer = PeerObject.open(kind, owner_pid, fd, object_id, size, nonce)
        except ArenaError as err:
            self._failed[object_id] = err
            raise
        self._objects[object_id] = peer
        self._bases[object_id] = buffer_address(peer.view())
        return peer

    def drop(self, object_id: int) -> None:
        """The owner dropped the object: forget it. The mapping goes when nothing made
        from it is alive any more."""
        self._failed.pop(object_id, None)
        self._bases.pop(object_id, None)
        peer = self._objects.pop(object_id, None)
        if peer is not None:
            peer.close()

    def get(self, object_id: int) -> PeerObject:
        """The mapped object; `ArenaError` ``slice_out_of_bounds`` for an id that names
        no mapped object, or the error its opening met."""
        peer = self._objects.get(object_id)
        if peer is not None:
            return peer
        failed = self._failed.get(object_id)
        if failed is not None:
            raise ArenaError(
                failed.reason,
                failed.field,
                failed.value,
                failed.limit,
                f"{failed.message} (object {object_id}, named by a slice)",
                failed.errno,
            )
        raise ArenaError(
            "slice_out_of_bounds",
            "object_id",
            object_id,
            None,
            f"slice_out_of_bounds: a slice names object {object_id}, which is not an "
            "announced arena (never announced, or dropped)",
        )

    def base(self, object_id: int) -> int:
        """The address where the object is mapped."""
        return self._bases[object_id]

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._objects

    def __len__(self) -> int:
        return len(self._objects)

    def close(self) -> None:
        for object_id in list(self._objects):
            self.drop(object_id)


class LeaseBook:
    """The leases this process holds on a peer's slices, one per `Key` however many
    messages and frames name it.

    `hold` / `let_go` count a message's use of a slice; `read_frame` reads a frame whose
    lease ends when the frame and every view made from it are gone (the end is noted
    from a finalizer, which may run in any thread, and counted in `take_released`).
    `find` says which live frame a buffer lies in (a result that is a view of an
    argument goes back as ``{:beam, ...}``).
    """

    def __init__(self) -> None:
        self._counts: dict[Key, int] = {}
        self._ended: collections.deque[Key] = collections.deque()
        self._frames: dict[int, tuple[Key, int, int, int]] = {}
        self._tokens = itertools.count()
        self._released: list[Key] = []

    def hold(self, key: Key) -> None:
        """One more use of ``key``."""
        self._counts[key] = self._counts.get(key, 0) + 1

    def let_go(self, key: Key) -> None:
        """One use of ``key`` less; the last one puts it on the released list."""
        n = self._counts.get(key, 0) - 1
        if n > 0:
            self._counts[key] = n
        elif key in self._counts:
            del self._counts[key]
            self._released.append(key)

    def read_frame(
        self,
        peers: PeerObjects,
        object_id: int,
        offset: int,
        length: int,
        generation: int,
        *,
        verify: bool = False,
    ) -> Frame:
        """The frame of a slice (checked as `PeerObject.read_frame` checks it), holding
        ``(object_id, offset, generation)`` until it and every view made from its
        payload are gone."""
        peer = peers.get(object_id)
        if peer.kind not in (KIND_ARENA, KIND_SEALED):
            raise ArenaError("bad_object", "kind", peer.kind, KIND_ARENA)
        key = (object_id, offset, generation)
        token = next(self._tokens)
        self.hold(key)
        try:
            frame = peer.read_frame(
                offset,
                length,
                generation,
                verify=verify,
                on_release=functools.partial(self._gone, token, key),
            )
        except BaseException:
            self.let_go(key)
            raise
        start = peers.base(object_id) + offset
        lo = start + frame.header.payload_offset
        self._frames[token] = (key, start, lo, lo + frame.header.payload_length)
        return frame

    def copy_frame(
        self,
        peers: PeerObjects,
        object_id: int,
        offset: int,
        length: int,
        generation: int,
        *,
        verify: bool = False,
    ) -> tuple[Header, bytes]:
        """`read_frame`'s checks, then the header and a copy of the payload
        (`PeerObject.copy_frame`): nothing outlives the call, so nothing is held."""
        peer = peers.get(object_id)
        if peer.kind not in (KIND_ARENA, KIND_SEALED):
            raise ArenaError("bad_object", "kind", peer.kind, KIND_ARENA)
        return peer.copy_frame(offset, length, generation, verify=verify)

    def _gone(self, token: int, key: Key) -> None:
        # a finalizer: any thread, any moment; two atomic operations and nothing else
        self._frames.pop(token, None)
        self._ended.append(key)

    def take_released(self) -> list[Key]:
        """The slices whose last use ended since the last call, each once."""
        self.settle()
        out, self._released = self._released, []
        return out

    def settle(self) -> None:
        """Counts the uses whose frames and views are gone (their finalizers ran): a key
        no longer in use is then not `in` the book, and waits on the released list."""
        while True:
            try:
                key = self._ended.popleft()
            except IndexError:
                break
            self.let_go(key)

    def find(self, address: int, nbytes: int) -> tuple[Key, int] | None:
        """``(key, slice start address)`` of a live frame whose payload holds the
        ``nbytes`` at ``address``, or None."""
        with contextlib.suppress(RuntimeError):  # the dict changed under us: no match
            for key, start, lo, hi in list(self._frames.values()):
                if lo <= address and address + nbytes <= hi:
                    return key, start
        return None

    def __contains__(self, key: object) -> bool:
        return key in self._counts

    def __len__(self) -> int:
        """Slices held now."""
        return len(self._counts)
