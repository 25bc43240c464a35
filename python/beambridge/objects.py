"""Shared objects of transport v2 (protocol/SPEC.md §1-§2).

`SharedObject` is an object this process owns: a sealed ``memfd`` with its 64-byte
header, mapped read-write. `PeerObject` is a peer's object mapped read-only from a
read-only descriptor (``/proc/<pid>/fd/<n>``), after its seals and header are checked.
Frames are written into owned areas by `beambridge.frame_writer`.

>>> from beambridge.frame_writer import write_frame_bytes
>>> obj = SharedObject(4096, KIND_SEALED)
>>> gen = next_generation()
>>> with obj.area(OBJECT_HEADER, 256) as whole:
...     write_frame_bytes(whole, memoryview(b"hello"), generation=gen)
>>> obj.seal()
>>> peer = PeerObject.open(*obj.announcement())
>>> frame = peer.read_frame(OBJECT_HEADER, 256, gen)
>>> bytes(frame.payload), frame.payload.readonly
(b'hello', True)
>>> frame.release(); peer.close(); obj.close()
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import mmap
import os
import struct
import sys
import weakref
from collections.abc import Callable
from typing import Any

from . import registry
from .errors import ArenaError, HeaderError, os_failure
from .frame import Frame
from .header import (
    DEFAULT_MAX_DECODED_LENGTH,
    HEADER_SIZE,
    Header,
    validate_header,
    verify_payload,
)

__all__ = [
    "ALIGN",
    "KINDS",
    "KIND_ARENA",
    "KIND_LEASE_TABLE",
    "KIND_SEALED",
    "MAX_OBJECT",
    "OBJECT_HEADER",
    "PAGE",
    "PeerObject",
    "SharedObject",
    "fd_count",
    "next_generation",
    "round_up",
]

OBJECT_HEADER = 64
MAGIC = b"BBAR"
LAYOUT_VERSION = 1
#: Kind codes (§1.1) by the names control messages use (§8.3), from the registry.
KINDS: dict[str, int] = dict(registry.OBJECT_KINDS)
KIND_ARENA, KIND_SEALED, KIND_LEASE_TABLE = KINDS["arena"], KINDS["sealed"], KINDS["lease_table"]
KIND_LANE = KINDS["lane"]
PAGE = 4096
ALIGN = 64
MAX_OBJECT = 1 << 40
#: magic, layout_version, header_size, owner_pid, object_id, object_size, nonce, kind,
#: entries, 24 reserved bytes (§1.1)
_OBJECT = struct.Struct("<4sHHIIQQII24x")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
#: One counter per OS process for object ids and one for slice generations (§1.1, §3).
_object_ids = itertools.count(1)
_generations = itertools.count(1)


def next_generation() -> int:
    """The next value of this process's one generation counter (§3): every frame an
    owner writes, in an arena slice or a sealed object, gets its own."""
    return next(_generations)


def round_up(n: int, to: int) -> int:
    """``n`` rounded up to a multiple of ``to``."""
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
                raise os_failure(
                    exc,
                    "object_size",
                    size,
                    f"cannot reserve {size} bytes of shared memory",
                    "lower the arena limit or give the process more memory",
                ) from None
            seals = _SEALS | (0 if kind == KIND_SEALED else fcntl.F_SEAL_SEAL)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
            populate = getattr(mmap, "MAP_POPULATE", 0)
            self.mm = _map(fd, size, mmap.MAP_SHARED | populate, mmap.PROT_READ | mmap.PROT_WRITE)
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

    def area(self, offset: int, length: int) -> memoryview:
        """A writable view of ``[offset, offset + length)`` of the owner's mapping."""
        with memoryview(self.mm) as whole:
            return whole[offset : offset + length]

    def seal(self) -> None:
        """Make a ``sealed`` object's bytes final (§11): unmap the writable mapping, then
        add ``F_SEAL_WRITE | F_SEAL_SEAL``. Every view from `area` must be released
        first. The descriptor stays open (the peer opens the object through it)."""
        if self.kind != KIND_SEALED:
            raise ValueError("only an object of kind sealed is write-sealed")
        self.mm.close()
        fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)

    def announcement(self) -> tuple[str, int, int, int, int, int]:
        """``(kind name, owner_pid, fd, object_id, object_size, nonce)`` (§8.3)."""
        name = next(k for k, v in KINDS.items() if v == self.kind)
        return (name, os.getpid(), self.fd, self.object_id, self.size, self.nonce)

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    def close(self) -> None:
        """Unmap and close the descriptor (the memory goes when the peer lets go too)."""
        self._closer()


#: CPython's mmap keeps a duplicate of the descriptor it maps unless told not to
#: (``trackfd``, Python 3.13): a mapping then costs no descriptor of its own.
_UNTRACKED: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def _map(fd: int, size: int, flags: int, prot: int) -> mmap.mmap:
    return mmap.mmap(fd, size, flags=flags, prot=prot, **_UNTRACKED)


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

    def __init__(
        self, mm: mmap.mmap, size: int, object_id: int, kind: int, entries: int = 0
    ) -> None:
        self.mm = mm
        self.size = size
        self.object_id = object_id
        self.kind = kind
        #: A lease table's number of tickets (the header's ``entries``); else 0.
        self.entries = entries
        self._view: memoryview | None = None

    @classmethod
    def open(
        cls, kind: str, owner_pid: int, fd: int, object_id: int, size: int, nonce: int
    ) -> PeerObject:
        """Open ``/proc/<owner_pid>/fd/<fd>`` read-only and map it after the checks of
        §2; `ArenaError` (``peer_open_failed``, ``size_mismatch``, ``not_sealed``,
        ``bad_object`` naming the field) otherwise. A ``lane`` (§8.5), the one object
        both sides write, is opened and mapped read-write."""
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
            access = os.O_RDWR if code == KIND_LANE else os.O_RDONLY
            pfd = os.open(path, access | os.O_CLOEXEC | os.O_NONBLOCK)
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
            magic, layout, hsize, pid, oid, osize, ononce, okind, entries = _OBJECT.unpack(raw)
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
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if code == KIND_LANE else 0)
            mm = _map(pfd, size, mmap.MAP_SHARED, prot)
        finally:
            os.close(pfd)
        return cls(mm, size, object_id, code, entries)

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
        metadata copied and validated (SPEC §6, the slice length as the frame size), the
        payload a read-only view into the mapping. ``on_release`` runs once, when the
        payload and every view made from it are gone (or at `Frame.release`)."""
        header, metadata = self._header(offset, length, generation, max_decoded_length)
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
        origin = functools.partial(self._slice_view, offset, length)
        return Frame(on_release or _nothing, header, metadata, arr, payload, origin)

    def _slice_view(self, offset: int, length: int) -> memoryview:
        return self.view()[offset : offset + length]

    def copy_frame(
        self, offset: int, length: int, generation: int, *, verify: bool = False
    ) -> tuple[Header, bytes]:
        """The header and a private copy of the payload of the frame `read_frame` would
        read (same checks; with ``verify`` the copy is what the checksum is checked
        against, so the peer cannot change it after). No view, no lease: for values
        the reader copies anyway."""
        header, _ = self._header(offset, length, generation, DEFAULT_MAX_DECODED_LENGTH)
        start = offset + header.payload_offset
        with self.view()[start : start + header.payload_length] as area:
            data = area.tobytes()
        if verify:
            verify_payload(header, data)
        return header, data

    def _header(
        self, offset: int, length: int, generation: int, max_decoded_length: int
    ) -> tuple[Header, bytes]:
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
        return header, metadata

    def provenance_block(self, offset: int, length: int, header: Header) -> bytes:
        """A private copy of the provenance block (SPEC §5.4) of the frame at the start of
        the slice ``[offset, offset + length)`` whose ``header`` was validated, unchecked
        (`beambridge.provenance.read_block` checks it); empty when it has none or it
        would run past the slice."""
        size = header.provenance_length
        start = 128 + header.metadata_length
        if header.version_minor == 0 or size == 0 or start + size > length:
            return b""
        with self.view()[offset + start : offset + start + size] as area:
            return area.tobytes()

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
