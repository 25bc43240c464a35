"""Arenas, slices and leases of transport v2 (protocol/SPEC.md §3-§4).

`ArenaSet` sub-allocates owned arenas (`beambridge.objects.SharedObject` of kind
``arena``) into slices, each holding one frame, and gives every slice it lends a
ticket whose word in the peer's lease table says when the lease has ended. The shared
objects themselves, owned and peer, are `beambridge.objects`; their names are
re-exported here.

>>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
>>> s = arenas.put(b"hello", metadata=b"m")
>>> peer = PeerObject.open(*arenas.announcement(s.object_id))
>>> frame = peer.read_frame(s.offset, s.length, s.generation)
>>> bytes(frame.payload), frame.metadata, frame.payload.readonly
(b'hello', b'm', True)
>>> frame.release(); arenas.free(s); arenas.close(); peer.close()
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .errors import ArenaError
from .frame_writer import write_frame, write_frame_bytes
from .header import HEADER_SIZE, Codec, Format, payload_offset_for
from .objects import (
    ALIGN,
    KIND_ARENA,
    KIND_LEASE_TABLE,
    KIND_SEALED,
    KINDS,
    OBJECT_HEADER,
    PAGE,
    PeerObject,
    SharedObject,
    fd_count,
    next_generation,
    round_up,
)

__all__ = [
    "KINDS",
    "KIND_ARENA",
    "KIND_LEASE_TABLE",
    "KIND_SEALED",
    "MAX_ARENAS",
    "OBJECT_HEADER",
    "ArenaSet",
    "PeerObject",
    "SharedObject",
    "Slice",
    "fd_count",
]

MAX_ARENAS = 16
_MIB = 1 << 20


@dataclass
class Slice:
    """A slice of an owned arena (§3). ``ticket`` is set while it is lent."""

    object_id: int
    offset: int
    length: int
    generation: int
    ticket: int = -1


class _Arena:
    """One owned arena and its free extents (sorted by offset, coalesced)."""

    def __init__(self, size: int) -> None:
        self.obj = SharedObject(size, KIND_ARENA)
        self.free: list[list[int]] = [[OBJECT_HEADER, size - OBJECT_HEADER]]
        self.used = 0
        self.live = 0
        self.idle_since = time.monotonic()

    def take(self, length: int) -> int | None:
        for i, ext in enumerate(self.free):
            if ext[1] >= length:
                offset = ext[0]
                ext[0] += length
                ext[1] -= length
                if ext[1] == 0:
                    del self.free[i]
                self.used += length
                self.live += 1
                return offset
        return None

    def give(self, offset: int, length: int) -> None:
        free = self.free
        lo, hi = 0, len(free)
        while lo < hi:
            mid = (lo + hi) // 2
            if free[mid][0] < offset:
                lo = mid + 1
            else:
                hi = mid
        i = lo
        if i > 0 and free[i - 1][0] + free[i - 1][1] == offset:
            free[i - 1][1] += length
            if i < len(free) and free[i - 1][0] + free[i - 1][1] == free[i][0]:
                free[i - 1][1] += free[i][1]
                del free[i]
        elif i < len(free) and offset + length == free[i][0]:
            free[i][0] = offset
            free[i][1] += length
        else:
            free.insert(i, [offset, length])
        self.used -= length
        self.live -= 1
        if self.live == 0:
            self.idle_since = time.monotonic()


class ArenaSet:
    """The arenas this process owns, at most `MAX_ARENAS` and ``limit`` bytes (§3).

    `alloc` / `put` / `put_into` make slices; `lend` gives a slice a ticket when its
    handle goes to the peer, and the slice comes back (is freed) once the peer's lease
    table holds its generation at that ticket (`reclaim`); `free` gives back a slice
    that was never lent. `trim` drops arenas that have been empty for a while.
    """

    def __init__(
        self, limit: int = 1 << 30, min_arena: int = 8 * _MIB, *, checksum: bool = False
    ) -> None:
        self.limit = limit
        self.min_arena = round_up(max(min_arena, PAGE), PAGE)
        self.checksum = checksum
        self._arenas: dict[int, _Arena] = {}
        self._table: Any = None  # the peer's lease table words (numpy view), once known
        self._table_object: PeerObject | None = None
        self._lent: dict[int, Slice] = {}
        self._free_tickets: list[int] = []
        self._expected: Any = None  # per ticket: the generation lent under it, or 0
        self._refused = 0  # lends refused since the last reclaim that freed nothing
        self.stats = {
            "allocs": 0,
            "grows": 0,
            "drops": 0,
            "reclaimed": 0,
            "reclaim_scans": 0,
            "peak_bytes": 0,
        }

    # ---- the lease table -------------------------------------------------------------

    def set_lease_table(self, table: PeerObject, entries: int | None = None) -> None:
        """Use the peer's lease table (§4) for the tickets of lent slices; ``entries``
        defaults to the table's own header."""
        import numpy as np

        entries = table.entries if entries is None else entries
        if table.kind != KIND_LEASE_TABLE or OBJECT_HEADER + 8 * entries > table.size:
            raise ArenaError(
                "bad_object",
                "entries",
                entries,
                (table.size - 64) // 8,
                "bad_object: not a lease table of that many entries",
            )
        self._table_object = table
        self._table = np.frombuffer(table.mm, dtype="<u8", count=entries, offset=OBJECT_HEADER)
        self._expected = np.zeros(entries, dtype="<u8")  # generations start at 1
        self._free_tickets = list(range(entries - 1, -1, -1))

    # ---- allocation ------------------------------------------------------------------

    @property
    def total(self) -> int:
        """Bytes of arenas held."""
        return sum(a.obj.size for a in self._arenas.values())

    def fits(self, frame_len: int) -> bool:
        """Whether a frame of ``frame_len`` bytes could ever fit under the limit."""
        return self._arena_size_for(frame_len) <= self.limit

    @staticmethod
    def _arena_size_for(frame_len: int) -> int:
        return round_up(OBJECT_HEADER + round_up(max(frame_len, HEADER_SIZE), ALIGN), PAGE)

    def alloc(self, frame_len: int) -> Slice:
        """A slice for a frame of ``frame_len`` bytes: from the smallest arena with room,
        else after reclaiming returned slices, else in a new arena. `ArenaError`
        ``too_large`` (never fits ``limit``) or ``arena_full`` (not now)."""
        length = round_up(max(frame_len, HEADER_SIZE), ALIGN)
        if not self.fits(frame_len):
            raise ArenaError(
                "too_large",
                "arena_limit",
                frame_len,
                self.limit,
                f"too_large: a {frame_len}-byte frame can never fit in the arena "
                f"limit of {self.limit} bytes; raise the limit",
            )
        found = self._take(length)
        if found is None and self._lent and self.reclaim():
            found = self._take(length)
        if found is None:
            self._grow(length)
            found = self._take(length)
        if found is None:  # pragma: no cover - a new arena always has room
            raise ArenaError("arena_full", "arena_limit", frame_len, self.limit)
        arena, offset = found
        self.stats["allocs"] += 1
        return Slice(arena.obj.object_id, offset, length, next_generation())

    def _take(self, length: int) -> tuple[_Arena, int] | None:
        for arena in sorted(self._arenas.values(), key=lambda a: a.obj.size):
            if arena.obj.size - OBJECT_HEADER - arena.used >= length:
                offset = arena.take(length)
                if offset is not None:
                    return arena, offset
        return None

    def _grow(self, length: int) -> None:
        need = round_up(OBJECT_HEADER + length, PAGE)
        largest = max((a.obj.size for a in self._arenas.values()), default=0)
        # a value as big as the arenas gets one of its own size; small ones grow the
        # set geometrically, so 16 arenas reach any limit
        size = max(self.min_arena, round_up(need, _MIB) if 2 * need > largest else 2 * largest)
        while True:
            room = (self.limit - self.total) // PAGE * PAGE
            size = max(min(size, room), need)
            if len(self._arenas) < MAX_ARENAS and size <= room:
                break
            empty = [a for a in self._arenas.values() if a.live == 0]
            if not empty:
                raise ArenaError(
                    "arena_full",
                    "arena_limit",
                    length,
                    self.limit,
                    f"arena_full: no room for a {length}-byte slice: the arenas "
                    f"(limit {self.limit} bytes) are full of slices the peer "
                    "still holds",
                )
            self._drop(max(empty, key=lambda a: a.obj.size))
        arena = _Arena(size)
        self._arenas[arena.obj.object_id] = arena
        self.stats["grows"] += 1
        self.stats["peak_bytes"] = max(self.stats["peak_bytes"], self.total)
        self.on_new_arena(arena.obj)

    def on_new_arena(self, obj: SharedObject) -> None:
        """Called with every new arena (the worker announces it to the peer)."""

    def free(self, s: Slice) -> None:
        """Give back a slice that was never lent (or whose lease has ended)."""
        arena = self._arenas.get(s.object_id)
        if arena is not None:
            arena.give(s.offset, s.length)

    # ---- writing frames --------------------------------------------------------------

    def area(self, s: Slice) -> memoryview:
        """A writable view of the slice (the owner's mapping)."""
        mm = self._arenas[s.object_id].obj.mm
        with memoryview(mm) as whole:
            return whole[s.offset : s.offset + s.length]

    def put(
        self,
        payload: object,
        *,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        codec: Codec | int = Codec.NONE,
        decoded_length: int | None = None,
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool | None = None,
        provenance: bytes = b"",
    ) -> Slice:
        """A new slice holding one frame of ``payload`` (any C-contiguous buffer) and
        the provenance block ``provenance`` (SPEC §5.4); a payload already compressed
        with ``codec`` says its ``decoded_length``."""
        with memoryview(payload) as view, view.cast("B") as data:  # type: ignore[arg-type]
            if codec != Codec.NONE:
                into = self.put_into(
                    data.nbytes,
                    metadata=metadata,
                    format=format,
                    codec=codec,
                    decoded_length=decoded_length,
                    schema_id=schema_id,
                    schema_version=schema_version,
                    checksum=checksum,
                    provenance=provenance,
                )
                with into as (s, area):
                    area[:] = data
                return s
            metadata = bytes(metadata)
            s = self.alloc(payload_offset_for(len(metadata) + len(provenance)) + data.nbytes)
            try:
                with self.area(s) as whole:
                    write_frame_bytes(
                        whole,
                        data,
                        generation=s.generation,
                        metadata=metadata,
                        format=format,
                        schema_id=schema_id,
                        schema_version=schema_version,
                        checksum=self.checksum if checksum is None else checksum,
                        provenance=provenance,
                    )
            except BaseException:
                self.free(s)
                raise
        return s

    @contextlib.contextmanager
    def put_into(
        self,
        payload_length: int,
        *,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        codec: Codec | int = Codec.NONE,
        decoded_length: int | None = None,
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool | None = None,
        provenance: bytes = b"",
    ) -> Iterator[tuple[Slice, memoryview]]:
        """Yields ``(slice, area)``: a new slice and a writable view of its payload area
        for a producer (NumPy, pyarrow) to fill; the header goes in when the block ends.
        On an exception the slice is freed."""
        checksum = self.checksum if checksum is None else checksum
        s = self.alloc(payload_offset_for(len(metadata) + len(provenance)) + payload_length)
        try:
            with (
                self.area(s) as whole,
                write_frame(
                    whole,
                    payload_length,
                    generation=s.generation,
                    metadata=metadata,
                    format=format,
                    codec=codec,
                    decoded_length=decoded_length,
                    schema_id=schema_id,
                    schema_version=schema_version,
                    checksum=checksum,
                    provenance=provenance,
                ) as area,
            ):
                yield s, area
        except BaseException:
            self.free(s)
            raise

    # ---- leases ----------------------------------------------------------------------

    def lend(self, s: Slice) -> int:
        """Give ``s`` a ticket for its handle (§4); `ArenaError` ``no_tickets`` when every
        ticket is in use even after `reclaim` (the caller then sends the value inline
        and frees the slice)."""
        if self._table is None:
            raise ArenaError(
                "no_tickets",
                "lease_table",
                None,
                None,
                "no_tickets: the peer has not sent its lease table",
            )
        if not self._free_tickets:
            # every ticket is out: look at the table again only after a share of them
            # have been asked for in vain, so a result of 100,000 values past the
            # tickets costs a few scans, not one per value
            if self._refused >= len(self._lent) // 256:
                self._refused = 0
                self.reclaim()
            if not self._free_tickets:
                self._refused += 1
                raise ArenaError(
                    "no_tickets",
                    "tickets",
                    len(self._lent),
                    len(self._table),
                    f"no_tickets: all {len(self._table)} tickets are held by the peer",
                )
        ticket = self._free_tickets.pop()
        s.ticket = ticket
        self._lent[ticket] = s
        self._expected[ticket] = s.generation
        return ticket

    def recall(self, s: Slice) -> None:
        """Take back a lent slice whose handle never reached the peer (the answer that
        named it failed): its ticket and its bytes are free again at once."""
        if self._lent.get(s.ticket) is s:
            del self._lent[s.ticket]
            self._expected[s.ticket] = 0
            self._free_tickets.append(s.ticket)
        s.ticket = -1
        self.free(s)

    def reclaim(self) -> int:
        """Free every lent slice whose lease the peer has ended; returns how many."""
        import numpy as np

        table, expected = self._table, self._expected
        if table is None or not self._lent:
            return 0
        self.stats["reclaim_scans"] += 1
        done = np.flatnonzero((table == expected) & (expected != 0)).tolist()
        for t in done:
            s = self._lent.pop(t)
            expected[t] = 0
            self.free(s)
            self._free_tickets.append(t)
        self.stats["reclaimed"] += len(done)
        return len(done)

    @property
    def lent(self) -> int:
        """Slices the peer holds now."""
        return len(self._lent)

    # ---- shrinking -------------------------------------------------------------------

    def trim(self, idle_seconds: float, keep_bytes: int) -> list[int]:
        """Drop arenas empty for at least ``idle_seconds``, largest first, until those
        left hold at most ``keep_bytes``; returns the ids dropped. (An arena empty for
        less long counts for nothing, so a small warm arena is not dropped to make up
        for a big one that is not idle yet.)"""
        self.reclaim()
        now = time.monotonic()
        idle = [
            a for a in self._arenas.values() if a.live == 0 and now - a.idle_since >= idle_seconds
        ]
        left = sum(a.obj.size for a in idle)
        dropped = []
        for arena in sorted(idle, key=lambda a: -a.obj.size):
            if left <= keep_bytes:
                break
            left -= arena.obj.size
            dropped.append(arena.obj.object_id)
            self._drop(arena)
        return dropped

    def _drop(self, arena: _Arena) -> None:
        del self._arenas[arena.obj.object_id]
        arena.obj.close()
        self.stats["drops"] += 1
        self.on_dropped_arena(arena.obj.object_id)

    def on_dropped_arena(self, object_id: int) -> None:
        """Called with the id of every arena dropped (the worker tells the peer)."""

    def announcement(self, object_id: int) -> tuple[str, int, int, int, int, int]:
        return self._arenas[object_id].obj.announcement()

    def arena_count(self) -> int:
        return len(self._arenas)

    def close(self) -> None:
        for arena in list(self._arenas.values()):
            arena.obj.close()
        self._arenas.clear()
        self._lent.clear()
        if self._table_object is not None:
            self._table = None
            self._table_object.close()
            self._table_object = None
