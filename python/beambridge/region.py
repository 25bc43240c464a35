"""`Region`: one POSIX shared-memory object holding a control block and one frame
(protocol/SPEC.md §1-§2).

The owner creates it (``O_CREAT | O_EXCL``, mode 0600, pages reserved with
``posix_fallocate``), writes frames into it and unlinks it on close; a peer attaches by
name and reads. Regions are opened with ``posix_ipc`` (never
``multiprocessing.shared_memory``, whose resource tracker unlinks what it does not own).

>>> with Region.create_for_frame(5, prefix="bbdoc") as region:
...     header = region.write_frame(b"hello")
...     peer = Region.attach(region.name)
...     with peer.read_frame() as frame:
...         bytes(frame.payload), frame.header.generation
...     peer.close()
(b'hello', 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import mmap
import os
import stat
import weakref
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any

import posix_ipc
import xxhash

from . import _atomic
from .control_block import (
    CB_SIZE,
    MAX_REGION_SIZE,
    MIN_REGION_SIZE,
    NAME_PATTERN,
    OFF_READER_LEASES,
    OFF_WRITER_GENERATION,
    OFF_WRITER_STATE,
    ControlBlock,
    WriterState,
    check_prefix,
    make_name,
    pack_control_block,
    parse_control_block,
    process_start_time,
)
from .errors import HeaderError, LeaseError, RegionError, region_error
from .frame import Frame
from .header import (
    DEFAULT_MAX_DECODED_LENGTH,
    HEADER_SIZE,
    Codec,
    Format,
    Header,
    build_header,
    pack_header,
    payload_offset_for,
    validate_header,
    verify_payload,
    with_fields,
)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SHM_DIR", "Region"]

SHM_DIR = "/dev/shm"
NAME_ATTEMPTS = 16
#: `Region.write_frame` copies a payload in and hashes it in chunks of this many bytes,
#: each hashed right after it is copied, while it is still in the CPU's cache.
COPY_CHUNK = 256 * 1024


def _free_bytes() -> int:
    """Free bytes in /dev/shm as statvfs reports them (the creation precheck)."""
    st = os.statvfs(SHM_DIR)
    return st.f_bavail * st.f_frsize


def _free_bytes_or_none() -> int | None:
    try:
        return _free_bytes()
    except OSError:
        return None


def _open_shm(name: str, flags: int, op: str, mode: int = 0o600) -> posix_ipc.SharedMemory:
    """posix_ipc.SharedMemory, its failures as `RegionError` (EEXIST passes through)."""
    try:
        return posix_ipc.SharedMemory(name, flags, mode=mode, size=0)
    except posix_ipc.ExistentialError:
        if flags & posix_ipc.O_EXCL:
            raise
        raise region_error(errno.ENOENT, name=name, op=op) from None
    except posix_ipc.PermissionsError:
        raise region_error(errno.EACCES, name=name, op=op) from None
    except OSError as exc:
        raise region_error(exc.errno or errno.EIO, name=name, op=op) from exc


def _end_lease(control: mmap.mmap) -> None:
    if not control.closed:
        _atomic.fetch_sub_u32(control, OFF_READER_LEASES, 1)


def _unlink_quietly(name: str) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)


class Region:
    """A mapped region. Make one with `Region.create`, `Region.create_for_frame` or
    `Region.attach`; close it with `close` or a ``with`` block."""

    def __init__(self, name: str, fd: int, mm: mmap.mmap, size: int, owner: bool) -> None:
        # private: use create / create_for_frame / attach
        self._name = name
        self._fd = fd
        self._mm = mm
        self._size = size
        self._owner = owner
        self._closed = False
        # the read-only view of the whole mapping every payload is read through (lazy)
        self._ro: memoryview | None = None
        # payload arrays of live frames, to count them in close()'s error
        self._frames: weakref.WeakValueDictionary[int, np.ndarray[Any, Any]] = (
            weakref.WeakValueDictionary()
        )
        self._writing = False
        self._last_header = Header()
        self._unlinker = weakref.finalize(self, _unlink_quietly, name) if owner else None
        self._fd_closer = weakref.finalize(self, os.close, fd)

    @property
    def last_header(self) -> Header:
        """The header this handle published last (`write_frame` returns it too;
        `write_frame_into` yields the area, so a writer through it reads it here)."""
        return self._last_header

    # ---- creation and attach -------------------------------------------------------

    @classmethod
    def create(cls, size: int, *, prefix: str = "bb") -> Region:
        """Create and own a new region of ``size`` bytes (control block + frame area).

        Raises `RegionError`: ``no_space`` when /dev/shm cannot hold ``size`` bytes (the
        pages are reserved now, so a full /dev/shm never shows up later as SIGBUS),
        ``name_collision`` after 16 taken names, or an errno reason.

        >>> region = Region.create(4096, prefix="bbdoc")
        >>> region.size, region.frame_size, region.owner
        (4096, 4032, True)
        >>> region.close()
        """
        check_prefix(prefix)
        if not MIN_REGION_SIZE <= size <= MAX_REGION_SIZE:
            raise ValueError(
                f"region size {size} must be between {MIN_REGION_SIZE} and {MAX_REGION_SIZE}"
            )
        where = f"/{prefix}-{os.getpid()}-*"
        free = _free_bytes()
        if size > free:
            raise region_error(errno.ENOSPC, name=where, op="create", asked=size, free=free)
        for _ in range(NAME_ATTEMPTS):
            name = make_name(prefix)
            try:
                shm = _open_shm(name, posix_ipc.O_CREX, "create")
                break
            except posix_ipc.ExistentialError:
                continue
        else:
            raise region_error(errno.EEXIST, name=where, op="create")
        fd = shm.fd
        try:
            os.posix_fallocate(fd, 0, size)
            mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            mm[:CB_SIZE] = pack_control_block(
                owner_pid=os.getpid(), owner_start_time=process_start_time(), region_size=size
            )
        except BaseException as exc:
            _unlink_quietly(name)
            os.close(fd)
            if isinstance(exc, OSError) and exc.errno is not None:
                raise region_error(
                    exc.errno, name=name, op="create", asked=size, free=_free_bytes_or_none()
                ) from exc
            raise
        return cls(name, fd, mm, size, owner=True)

    @classmethod
    def create_for_frame(
        cls, payload_length: int, metadata_length: int = 0, *, prefix: str = "bb"
    ) -> Region:
        """Create a region exactly big enough for one frame with these lengths.

        >>> with Region.create_for_frame(100, 10, prefix="bbdoc") as region:
        ...     region.size
        356
        """
        if payload_length < 0:
            raise ValueError(f"payload_length must be >= 0, got {payload_length}")
        return cls.create(
            CB_SIZE + payload_offset_for(metadata_length) + payload_length, prefix=prefix
        )

    @classmethod
    def attach(cls, name: str) -> Region:
        """Attach to a region another process (or this one) created (§1.3).

        Raises `RegionError`: ``bad_name``, ``not_found``, ``bad_permissions`` (not a
        regular file, another owner uid, or group/other bits set), ``region_too_small``,
        ``bad_control_block``, or an errno reason.

        >>> Region.attach("/etc/passwd")
        Traceback (most recent call last):
        ...
        beambridge.errors.RegionError: bad_name: ...
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise RegionError(
                "bad_name",
                "name",
                name,
                NAME_PATTERN.pattern,
                f"bad_name: {name!r} is not a region name (/<prefix>-<pid>-<16 hex digits>)",
            )
        shm = _open_shm(name, 0, "attach")
        fd = shm.fd
        try:
            st = os.fstat(fd)
            _check_attach_stat(name, st)
            mm = mmap.mmap(
                fd, st.st_size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE
            )
            try:
                parse_control_block(mm[:CB_SIZE], st.st_size)
            except BaseException:
                mm.close()
                raise
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError) and not isinstance(exc, RegionError) and exc.errno:
                raise region_error(exc.errno, name=name, op="attach") from exc
            raise
        return cls(name, fd, mm, st.st_size, owner=False)

    # ---- properties ----------------------------------------------------------------

    @property
    def name(self) -> str:
        """The region's name, ``/<prefix>-<pid>-<rand>``; give it to the peer."""
        return self._name

    @property
    def size(self) -> int:
        """Region size in bytes (for an attached region: the fstat size at attach)."""
        return self._size

    @property
    def frame_size(self) -> int:
        """Size of the frame area: ``size - 64``."""
        return self._size - CB_SIZE

    @property
    def owner(self) -> bool:
        """True when this handle created the region (it writes, it unlinks)."""
        return self._owner

    @property
    def closed(self) -> bool:
        """True after `close`."""
        return self._closed

    def control_block(self) -> ControlBlock:
        """A snapshot of the control block (mutable words read atomically)."""
        self._check_open()
        cb = parse_control_block(self._mm[:CB_SIZE], self._size)
        return dataclasses.replace(
            cb,
            writer_state=_atomic.load_u32(self._mm, OFF_WRITER_STATE),
            reader_leases=_atomic.load_u32(self._mm, OFF_READER_LEASES),
            writer_generation=_atomic.load_u64(self._mm, OFF_WRITER_GENERATION),
        )

    # ---- writer side -----------------------------------------------------------------

    def write_frame(
        self,
        payload: object,
        *,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        codec: Codec | int = Codec.NONE,
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool = True,
        decoded_length: int | None = None,
    ) -> Header:
        """Publish one frame (the writer side of the lease protocol, §2.2).

        Raises `LeaseError` ``leased`` while a reader holds a lease (nothing is written),
        `RegionError` ``not_owner`` on an attached region, ``out_of_bounds`` when the
        frame does not fit.

        >>> with Region.create_for_frame(2, prefix="bbdoc") as region:
        ...     region.write_frame(b"hi", format=Format.RAW).generation
        1
        """
        metadata = bytes(metadata)
        with memoryview(payload) as view, view.cast("B") as data:  # type: ignore[arg-type]
            length = data.nbytes
            draft = self._prepare_write(length, metadata, format, codec, schema_id,
                                        schema_version, checksum, decoded_length)  # fmt: skip
            start, generation = self._begin_frame(draft, metadata)
            published = False
            try:
                mm = self._mm
                if not checksum:
                    mm[start : start + length] = data
                    digest = 0
                else:
                    # copy and hash chunk by chunk: each chunk is hashed from the source
                    # while it is still in cache (one pass over memory, not two)
                    hasher = xxhash.xxh3_64()
                    for lo in range(0, length, COPY_CHUNK):
                        with data[lo : lo + COPY_CHUNK] as chunk:
                            mm[start + lo : start + lo + chunk.nbytes] = chunk
                            hasher.update(chunk)
                    digest = hasher.intdigest()
                self._publish(draft, generation, digest, metadata)
                published = True
            finally:
                self._end_write(published)
        return self._last_header

    @contextlib.contextmanager
    def write_frame_into(
        self,
        payload_length: int,
        *,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        codec: Codec | int = Codec.NONE,
        schema_id: int = 0,
        schema_version: int = 0,
        checksum: bool = True,
        decoded_length: int | None = None,
    ) -> Iterator[memoryview]:
        """Context manager yielding a writable memoryview of the payload area, so a
        producer (NumPy, pyarrow) can write straight into shared memory. The frame is
        published (checksum, header, ``PUBLISHED``) when the block ends cleanly; on an
        exception the region goes back to ``EMPTY`` (its previous frame may have been
        overwritten) and nothing is published. Views made from the yielded one must be
        gone when the block ends.

        >>> with Region.create_for_frame(4, prefix="bbdoc") as region:
        ...     with region.write_frame_into(4) as area:
        ...         area[:] = b"abcd"
        ...     with region.read_frame() as frame:
        ...         bytes(frame.payload)
        b'abcd'
        """
        metadata = bytes(metadata)
        draft = self._prepare_write(payload_length, metadata, format, codec, schema_id,
                                    schema_version, checksum, decoded_length)  # fmt: skip
        start, generation = self._begin_frame(draft, metadata)
        published = False
        try:
            if payload_length == 0:
                yield memoryview(bytearray())
                digest = xxhash.xxh3_64_intdigest(b"") if checksum else 0
            else:
                # The yielded view sits on a private array over the region's own mapping:
                # views made from it (slices, numpy.frombuffer) keep that array alive, so
                # whether it outlives the block tells whether the caller left any.
                import numpy as np  # not at module level: the worker reports a broken NumPy

                with memoryview(self._mm) as whole:
                    arr = np.frombuffer(whole, dtype=np.uint8, count=payload_length,
                                        offset=start)  # fmt: skip
                area = arr.data  # memoryview(arr)
                alive = weakref.ref(arr)
                del arr
                try:
                    yield area
                except BaseException:
                    with contextlib.suppress(BufferError):
                        area.release()
                    raise
                digest = xxhash.xxh3_64_intdigest(area) if checksum else 0
                try:
                    area.release()
                    held = alive() is not None
                except BufferError:  # a C consumer still holds the buffer
                    held = True
                if held:
                    raise LeaseError(
                        "leased",
                        "payload",
                        None,
                        None,
                        "leased: views made from the payload area are still alive at the "
                        "end of write_frame_into; drop them inside the block (nothing was "
                        "published)",
                    )
            self._publish(draft, generation, digest, metadata)
            published = True
        finally:
            self._end_write(published)

    def _prepare_write(
        self,
        payload_length: int,
        metadata: bytes,
        format: Format | int,
        codec: Codec | int,
        schema_id: int,
        schema_version: int,
        checksum: bool,
        decoded_length: int | None,
    ) -> Header:
        """The checks before a write (nothing touched yet): the draft header."""
        self._check_open()
        if not self._owner:
            raise RegionError(
                "not_owner",
                "region",
                self._name,
                None,
                f"not_owner: region {self._name} was attached, not created here; "
                "only its owner writes frames",
            )
        if self._writing:
            raise LeaseError("leased", "writer_state", int(WriterState.WRITING), None,
                             "leased: a write into this region is already under way")  # fmt: skip
        draft = build_header(
            payload_length,
            0,
            metadata=metadata,
            format=format,
            codec=codec,
            schema_id=schema_id,
            schema_version=schema_version,
            decoded_length=decoded_length,
            checksum=checksum,
        )
        end = draft.payload_offset + payload_length
        if end > self.frame_size:
            raise RegionError(
                "out_of_bounds",
                "payload_length",
                payload_length,
                self.frame_size - draft.payload_offset,
                f"out_of_bounds: a frame of {end} bytes (metadata {len(metadata)}, payload "
                f"{payload_length}) does not fit the frame area of {self.frame_size} bytes "
                f"of region {self._name}; create a bigger region",
            )
        return draft

    def _begin_frame(self, draft: Header, metadata: bytes) -> tuple[int, int]:
        """Writer steps 1-3, then the metadata and its padding: returns the payload's
        offset in the mapping and the new generation. The caller must `_end_write`."""
        generation = self._begin_write()
        self._writing = True
        mm = self._mm
        try:
            meta_start = CB_SIZE + HEADER_SIZE
            mm[meta_start : meta_start + len(metadata)] = metadata
            pad_start = meta_start + len(metadata)
            payload_start = CB_SIZE + draft.payload_offset
            mm[pad_start:payload_start] = bytes(payload_start - pad_start)
        except BaseException:
            self._end_write(False)
            raise
        return payload_start, generation

    def _publish(self, draft: Header, generation: int, digest: int, metadata: bytes) -> None:
        """Writer step 4 (the header) and 5 (``PUBLISHED``)."""
        mm = self._mm
        header = with_fields(draft, generation=generation, payload_checksum=digest)
        raw = pack_header(header, metadata)
        mm[CB_SIZE : CB_SIZE + HEADER_SIZE] = raw
        _atomic.store_u32(mm, OFF_WRITER_STATE, WriterState.PUBLISHED)
        self._last_header = with_fields(header, header_checksum=int.from_bytes(raw[120:], "little"))

    def _end_write(self, published: bool) -> None:
        self._writing = False
        if not published:
            _atomic.store_u32(self._mm, OFF_WRITER_STATE, WriterState.EMPTY)

    def _begin_write(self) -> int:
        """Steps 1-3 of the writer side: returns the new generation or raises leased."""
        mm = self._mm
        previous = _atomic.load_u32(mm, OFF_WRITER_STATE)
        _atomic.store_u32(mm, OFF_WRITER_STATE, WriterState.WRITING)
        leases = _atomic.load_u32(mm, OFF_READER_LEASES)
        if leases != 0:
            _atomic.store_u32(mm, OFF_WRITER_STATE, previous)
            raise LeaseError(
                "leased",
                "reader_leases",
                leases,
                0,
                f"leased: region {self._name} has {leases} live reader lease(s); release "
                "the frames read from it (Frame.release / end the with block) or write "
                "into another region",
            )
        generation = (_atomic.load_u64(mm, OFF_WRITER_GENERATION) + 1) % 2**64
        _atomic.store_u64(mm, OFF_WRITER_GENERATION, generation)
        return generation

    # ---- reader side -----------------------------------------------------------------

    def read_frame(
        self, *, verify: bool = True, max_decoded_length: int = DEFAULT_MAX_DECODED_LENGTH
    ) -> Frame:
        """Take a reader lease and return the published frame (§2.2 reader side).

        Raises `LeaseError` ``not_published`` (no frame, or a write under way),
        `HeaderError` with a §4 reason (``stale_generation`` when the header is not the
        writer's current generation), `ChecksumError` when ``verify`` and the payload
        does not match. The lease is released on every failure.
        """
        self._check_open()
        mm = self._mm
        arr: np.ndarray[Any, Any] | None = None
        payload: memoryview | None = None
        _atomic.fetch_add_u32(mm, OFF_READER_LEASES, 1)
        try:
            state = _atomic.load_u32(mm, OFF_WRITER_STATE)
            generation = _atomic.load_u64(mm, OFF_WRITER_GENERATION)
            if state != WriterState.PUBLISHED:
                raise LeaseError(
                    "not_published",
                    "writer_state",
                    state,
                    int(WriterState.PUBLISHED),
                    f"not_published: region {self._name} has no published frame "
                    f"(writer_state {WriterState(state).name if state < 3 else state}); "
                    "read after the writer has published",
                )
            with memoryview(mm) as whole, whole[CB_SIZE:] as frame_area:
                header, metadata = validate_header(
                    frame_area, self.frame_size, max_decoded_length=max_decoded_length
                )
            if header.generation != generation:
                raise HeaderError(
                    "stale_generation",
                    "generation",
                    header.generation,
                    generation,
                    f"stale_generation: field generation is {header.generation} but the "
                    f"writer is at generation {generation}",
                )
            if header.payload_length == 0:
                payload = memoryview(b"")
            else:
                import numpy as np  # not at module level: the worker reports a broken NumPy

                # an array over the region's read-only view: its base is read-only, so
                # its `writeable` flag cannot be turned back on; every view made from
                # the payload keeps it alive, and the lease ends when it dies
                arr = np.frombuffer(self._readonly_view(), dtype=np.uint8,
                                    count=header.payload_length,
                                    offset=CB_SIZE + header.payload_offset)  # fmt: skip
                payload = arr.data  # memoryview(arr): .obj is arr
            if verify:
                verify_payload(header, payload)
        except BaseException:
            _atomic.fetch_sub_u32(mm, OFF_READER_LEASES, 1)
            # the traceback keeps this frame's locals: they must not pin the mapping
            if payload is not None:
                with contextlib.suppress(BufferError):
                    payload.release()
            arr = payload = None
            raise
        if arr is not None:
            self._frames[id(arr)] = arr
        return Frame(functools.partial(_end_lease, mm), header, metadata, arr, payload)

    def _readonly_view(self) -> memoryview:
        """The read-only view of the whole mapping (made once, released by close)."""
        ro = self._ro
        if ro is None:
            with memoryview(self._mm) as whole:
                ro = self._ro = whole.toreadonly()
        return ro

    # ---- closing -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RegionError(
                "closed", "region", self._name, None, f"closed: region {self._name} is closed"
            )

    def close(self) -> None:
        """Unmap the region; the owner also unlinks its name (idempotent).

        Raises `LeaseError` ``leased`` and changes nothing while frames read from this
        handle, or views of its mapping, are still alive.
        """
        if self._closed:
            return
        live = len(self._frames)
        try:
            if live:
                raise BufferError
            if self._ro is not None:
                self._ro.release()
                self._ro = None
            self._mm.close()
        except BufferError:
            raise LeaseError(
                "leased",
                "views",
                live,
                0,
                f"leased: cannot close region {self._name}: frames read from it or views "
                "of its mapping are still alive; release them first",
            ) from None
        self._closed = True
        self._fd_closer()
        if self._unlinker is not None:
            self._unlinker()

    def unlink(self) -> None:
        """Remove the region's name now (owner only); mappings stay valid.

        Raises `RegionError` ``not_owner`` on an attached region.
        """
        if self._unlinker is None:
            raise RegionError(
                "not_owner",
                "region",
                self._name,
                None,
                f"not_owner: region {self._name} was attached, not created here; only its "
                "owner unlinks it",
            )
        self._unlinker()

    def __enter__(self) -> Region:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        role = "owner" if self._owner else "attached"
        state = "closed" if self._closed else "open"
        return f"<Region {self._name} {self._size}B {role} {state}>"


def _check_attach_stat(name: str, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise RegionError("bad_permissions", "mode", oct(st.st_mode), "regular file",
                          f"bad_permissions: region {name} is not a regular file")  # fmt: skip
    if st.st_uid != os.geteuid():
        raise RegionError(
            "bad_permissions",
            "uid",
            st.st_uid,
            os.geteuid(),
            f"bad_permissions: region {name} is owned by uid {st.st_uid}, not by this "
            f"process's effective uid {os.geteuid()}",
        )
    if st.st_mode & 0o077:
        raise RegionError(
            "bad_permissions",
            "mode",
            oct(st.st_mode & 0o777),
            "0o600",
            f"bad_permissions: region {name} has mode {st.st_mode & 0o777:#o}; group or "
            "other bits are set (a region must be 0600)",
        )
    if st.st_size < MIN_REGION_SIZE:
        raise RegionError(
            "region_too_small",
            "size",
            st.st_size,
            MIN_REGION_SIZE,
            f"region_too_small: region {name} is {st.st_size} bytes, a region has at least "
            f"{MIN_REGION_SIZE} (control block + frame header)",
        )
