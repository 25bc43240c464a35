"""Transport v2 shared objects on the Python side (protocol/transport-v2.md).

`SharedObject` is an object this process owns: a sealed ``memfd`` with its 64-byte
header, mapped read-write. `PeerObject` is a peer's object mapped read-only from a
read-only descriptor (``/proc/<pid>/fd/<n>``), after its seals and header are checked.
`ArenaSet` sub-allocates owned arenas into slices, each holding one frame, and gives
every slice it lends a ticket whose word in the peer's lease table says when the
lease has ended.

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
import errno
import fcntl
import itertools
import mmap
import os
import struct
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import xxhash

from .errors import ArenaError, HeaderError
from .frame import Frame
from .header import (
    DEFAULT_MAX_DECODED_LENGTH,
    HEADER_SIZE,
    Codec,
    Format,
    build_header,
    pack_header,
    validate_header,
    verify_payload,
    with_fields,
)

__all__ = [
    "KINDS",
    "KIND_ARENA",
    "KIND_LEASE_TABLE",
    "KIND_SEALED",
    "OBJECT_HEADER",
    "ArenaSet",
    "PeerObject",
    "SharedObject",
    "Slice",
    "fd_count",
]

OBJECT_HEADER = 64
MAGIC = b"BBAR"
LAYOUT_VERSION = 1
KIND_ARENA, KIND_SEALED, KIND_LEASE_TABLE = 0, 1, 2
#: Kind codes by the names control messages use (§5).
KINDS = {"arena": KIND_ARENA, "sealed": KIND_SEALED, "lease_table": KIND_LEASE_TABLE}
PAGE = 4096
ALIGN = 64
MAX_OBJECT = 1 << 40
MAX_ARENAS = 16
_MIB = 1 << 20
#: magic, layout_version, header_size, owner_pid, object_id, object_size, nonce, kind,
#: entries, 24 reserved bytes (§1.1)
_OBJECT = struct.Struct("<4sHHIIQQII24x")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
#: One counter per OS process for object ids and one for slice generations (§1.1, §3).
_object_ids = itertools.count(1)
_generations = itertools.count(1)


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def fd_count() -> int:
    """Open descriptors of this process."""
    return len(os.listdir("/proc/self/fd")) - 1


class SharedObject:
    """An object this process owns (§1): created, page-reserved, sealed against
    resizing, mapped read-write, its header written. ``fd`` stays open while it lives,
    since the peer opens the object through it."""

    def __init__(self, size: int, kind: int, entries: int = 0) -> None:
        if size % PAGE or not PAGE <= size <= MAX_OBJECT:
            raise ValueError(f"an object size is a multiple of {PAGE} in {PAGE}..2**40")
        fd = os.memfd_create("beambridge", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:
                no_space = exc.errno in (errno.ENOSPC, errno.ENOMEM)
                raise ArenaError(
                    "no_space" if no_space else errno.errorcode.get(exc.errno or 0, "eio").lower(),
                    "object_size",
                    size,
                    None,
                    f"cannot reserve {size} bytes of shared memory: {exc.strerror}; "
                    "lower the arena limit or give the process more memory",
                    exc.errno,
                ) from None
            seals = _SEALS | (0 if kind == KIND_SEALED else fcntl.F_SEAL_SEAL)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            self.mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.size = size
        self.kind = kind
        self.object_id = next(_object_ids)
        self.nonce = int.from_bytes(os.urandom(8), "little")
        self.mm[:OBJECT_HEADER] = _OBJECT.pack(
            MAGIC,
            LAYOUT_VERSION,
            OBJECT_HEADER,
            os.getpid(),
            self.object_id,
            size,
            self.nonce,
            kind,
            entries,
        )
        self._closer = weakref.finalize(self, _close_object, self.mm, fd)

    def announcement(self) -> tuple[str, int, int, int, int, int]:
        """``(kind name, owner_pid, fd, object_id, object_size, nonce)`` (§5)."""
        name = next(k for k, v in KINDS.items() if v == self.kind)
        return (name, os.getpid(), self.fd, self.object_id, self.size, self.nonce)

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        """Unmap and close the descriptor (the memory goes when the peer lets go too)."""
        self._closer()


def _close_object(mm: mmap.mmap, fd: int) -> None:
    with contextlib.suppress(BufferError, ValueError):
        mm.close()
    with contextlib.suppress(OSError):
        os.close(fd)


def _bad_object(field: str, value: Any, expected: Any) -> ArenaError:
    return ArenaError(
        "bad_object",
        field,
        value,
        expected,
        f"bad_object: the object's {field} is {value!r}, its announcement said {expected!r}",
    )


class PeerObject:
    """A peer's object mapped read-only (§2): nothing in this process, ctypes and
    ``memoryview.obj`` tricks included, can write through the mapping, and nothing the
    owner does can make a read fault (the object is sealed against resizing)."""

    def __init__(self, mm: mmap.mmap, size: int, object_id: int, kind: int) -> None:
        self.mm = mm
        self.size = size
        self.object_id = object_id
        self.kind = kind
        self._view: memoryview | None = None

    @classmethod
    def open(
        cls, kind: str, owner_pid: int, fd: int, object_id: int, size: int, nonce: int
    ) -> PeerObject:
        """Open ``/proc/<owner_pid>/fd/<fd>`` read-only and map it after the checks of
        §2; `ArenaError` (``peer_open_failed``, ``size_mismatch``, ``not_sealed``,
        ``bad_object`` naming the field) otherwise."""
        code = KINDS.get(kind)
        if code is None or size % PAGE or not PAGE <= size <= MAX_OBJECT:
            raise ArenaError(
                "bad_object",
                "kind" if code is None else "object_size",
                (kind, size),
                None,
                f"bad_object: cannot map a {kind!r} object of {size} bytes",
            )
        path = f"/proc/{owner_pid}/fd/{fd}"
        try:
            pfd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as exc:
            raise ArenaError(
                "peer_open_failed",
                "fd",
                exc.errno,
                None,
                f"peer_open_failed: cannot open {path}: {exc.strerror}; both "
                "sides must run as one user that can read the other's /proc "
                "entries",
                exc.errno,
            ) from None
        try:
            st = os.fstat(pfd)
            if st.st_size != size or not (st.st_mode & 0o170000 == 0o100000):
                raise ArenaError(
                    "size_mismatch",
                    "object_size",
                    st.st_size,
                    size,
                    f"size_mismatch: {path} has {st.st_size} bytes, its announcement said {size}",
                )
            want = _SEALS | (fcntl.F_SEAL_WRITE if code == KIND_SEALED else 0)
            try:
                seals = fcntl.fcntl(pfd, fcntl.F_GET_SEALS)
            except OSError:
                seals = 0
            if seals & want != want:
                raise ArenaError(
                    "not_sealed",
                    "seals",
                    seals,
                    want,
                    f"not_sealed: {path} is not sealed as a {kind} must be "
                    f"(seals {seals:#x}, need {want:#x}); refused to map it",
                )
            raw = os.pread(pfd, OBJECT_HEADER, 0)
            if len(raw) != OBJECT_HEADER:
                raise _bad_object("header", len(raw), OBJECT_HEADER)
            magic, layout, hsize, pid, oid, osize, ononce, okind, _ = _OBJECT.unpack(raw)
            for field, value, expected in (
                ("magic", magic, MAGIC),
                ("layout_version", layout, LAYOUT_VERSION),
                ("header_size", hsize, OBJECT_HEADER),
                ("owner_pid", pid, owner_pid),
                ("object_id", oid, object_id),
                ("object_size", osize, size),
                ("nonce", ononce, nonce),
                ("kind", okind, code),
            ):
                if value != expected:
                    raise _bad_object(field, value, expected)
            mm = mmap.mmap(pfd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(pfd)
        return cls(mm, size, object_id, code)

    def view(self) -> memoryview:
        """A read-only view of the whole mapping (made once)."""
        if self._view is None:
            self._view = memoryview(self.mm)
        return self._view

    def check_slice(self, offset: int, length: int) -> None:
        """`ArenaError` ``slice_out_of_bounds`` unless the slice lies in the object (§3)."""
        if (
            type(offset) is not int
            or type(length) is not int
            or offset < OBJECT_HEADER
            or offset % ALIGN
            or length < HEADER_SIZE
            or offset + length > self.size
        ):
            raise ArenaError(
                "slice_out_of_bounds",
                "slice",
                (offset, length),
                self.size,
                f"slice_out_of_bounds: a slice at {offset!r} of {length!r} bytes "
                f"is not a 64-aligned slice inside object {self.object_id} "
                f"({self.size} bytes)",
            )

    def read_frame(
        self,
        offset: int,
        length: int,
        generation: int,
        *,
        verify: bool = False,
        on_release: Callable[[], None] | None = None,
        max_decoded_length: int = DEFAULT_MAX_DECODED_LENGTH,
    ) -> Frame:
        """The frame at the start of the slice ``[offset, offset + length)``: header and
        metadata copied and validated (SPEC §4, the slice length as the frame size), the
        payload a read-only view into the mapping. ``on_release`` runs once, when the
        payload and every view made from it are gone (or at `Frame.release`)."""
        self.check_slice(offset, length)
        with self.view()[offset : offset + length] as area:
            header, metadata = validate_header(area, length, max_decoded_length=max_decoded_length)
        if header.generation != generation:
            raise HeaderError(
                "stale_generation",
                "generation",
                header.generation,
                generation,
                f"stale_generation: the handle names generation {generation}, "
                f"the slice holds generation {header.generation}",
            )
        arr = None
        if header.payload_length == 0:
            payload = memoryview(b"")
        else:
            import numpy as np

            arr = np.frombuffer(
                self.mm,
                dtype=np.uint8,
                count=header.payload_length,
                offset=offset + header.payload_offset,
            )
            payload = arr.data
        if verify:
            verify_payload(header, payload)
        return Frame(on_release or _nothing, header, metadata, arr, payload)

    def close(self) -> None:
        """Unmap (once nothing made from the mapping is alive; else it stays mapped until
        the last view goes)."""
        if self._view is not None:
            with contextlib.suppress(BufferError):
                self._view.release()
        with contextlib.suppress(BufferError):
            self.mm.close()


def _nothing() -> None:
    return None


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
        self.min_arena = _round_up(max(min_arena, PAGE), PAGE)
        self.checksum = checksum
        self._arenas: dict[int, _Arena] = {}
        self._table: Any = None  # the peer's lease table words (numpy view), once known
        self._table_object: PeerObject | None = None
        self._lent: dict[int, Slice] = {}
        self._free_tickets: list[int] = []
        self.stats = {"allocs": 0, "grows": 0, "drops": 0, "reclaimed": 0, "peak_bytes": 0}

    # ---- the lease table -------------------------------------------------------------

    def set_lease_table(self, table: PeerObject, entries: int) -> None:
        """Use the peer's lease table (§4) for the tickets of lent slices."""
        import numpy as np

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
        return _round_up(OBJECT_HEADER + _round_up(max(frame_len, HEADER_SIZE), ALIGN), PAGE)

    def alloc(self, frame_len: int) -> Slice:
        """A slice for a frame of ``frame_len`` bytes: from the smallest arena with room,
        else after reclaiming returned slices, else in a new arena. `ArenaError`
        ``too_large`` (never fits ``limit``) or ``arena_full`` (not now)."""
        length = _round_up(max(frame_len, HEADER_SIZE), ALIGN)
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
        return Slice(arena.obj.object_id, offset, length, next(_generations))

    def _take(self, length: int) -> tuple[_Arena, int] | None:
        for arena in sorted(self._arenas.values(), key=lambda a: a.obj.size):
            if arena.obj.size - OBJECT_HEADER - arena.used >= length:
                offset = arena.take(length)
                if offset is not None:
                    return arena, offset
        return None

    def _grow(self, length: int) -> None:
        need = _round_up(OBJECT_HEADER + length, PAGE)
        largest = max((a.obj.size for a in self._arenas.values()), default=0)
        # a value as big as the arenas gets one of its own size; small ones grow the
        # set geometrically, so 16 arenas reach any limit
        size = max(self.min_arena, _round_up(need, _MIB) if 2 * need > largest else 2 * largest)
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
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool | None = None,
    ) -> Slice:
        """A new slice holding one frame of ``payload`` (any C-contiguous buffer)."""
        with memoryview(payload) as view, view.cast("B") as data:  # type: ignore[arg-type]
            into = self.put_into(
                data.nbytes,
                metadata=metadata,
                format=format,
                codec=codec,
                schema_id=schema_id,
                schema_version=schema_version,
                checksum=checksum,
            )
            with into as (s, area):
                area[:] = data
        return s

    @contextlib.contextmanager
    def put_into(
        self,
        payload_length: int,
        *,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        codec: Codec | int = Codec.NONE,
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool | None = None,
    ) -> Iterator[tuple[Slice, memoryview]]:
        """Yields ``(slice, area)``: a new slice and a writable view of its payload area
        for a producer (NumPy, pyarrow) to fill; the header goes in when the block ends.
        On an exception the slice is freed."""
        checksum = self.checksum if checksum is None else checksum
        metadata = bytes(metadata)
        draft = build_header(
            payload_length,
            0,
            metadata=metadata,
            format=format,
            codec=codec,
            schema_id=schema_id,
            schema_version=schema_version,
            checksum=False,
        )
        s = self.alloc(draft.payload_offset + payload_length)
        try:
            with self.area(s) as whole:
                start = draft.payload_offset
                end_of_metadata = HEADER_SIZE + len(metadata)
                whole[HEADER_SIZE:end_of_metadata] = metadata
                whole[end_of_metadata:start] = bytes(start - end_of_metadata)
                with whole[start : start + payload_length] as area:
                    yield s, area
                    digest = xxhash.xxh3_64_intdigest(area) if checksum else 0
                flags = draft.flags | (1 if checksum else 0)
                header = with_fields(
                    draft, generation=s.generation, flags=flags, payload_checksum=digest
                )
                whole[:HEADER_SIZE] = pack_header(header, metadata)
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
            self.reclaim()
            if not self._free_tickets:
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
        return ticket

    def reclaim(self) -> int:
        """Free every lent slice whose lease the peer has ended; returns how many."""
        table = self._table
        if table is None or not self._lent:
            return 0
        done = [t for t, s in self._lent.items() if int(table[t]) == s.generation]
        for t in done:
            s = self._lent.pop(t)
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
        """Drop arenas empty for at least ``idle_seconds``, largest first, until the empty
        ones left hold at most ``keep_bytes``; returns the ids dropped."""
        self.reclaim()
        now = time.monotonic()
        empty = [a for a in self._arenas.values() if a.live == 0]
        left = sum(a.obj.size for a in empty)
        dropped = []
        for arena in sorted(empty, key=lambda a: -a.obj.size):
            if left <= keep_bytes:
                break
            if now - arena.idle_since >= idle_seconds:
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
