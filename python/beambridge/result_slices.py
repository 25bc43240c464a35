"""Where a result's big values go (protocol/SPEC.md §3-§4, §11): `ResultSlices`.

A value whose payload reaches the threshold is written, as one frame, into a slice of
the worker's arenas and lent to the BEAM under a ticket (``{:worker, object_id, offset,
length, generation, ticket}``), or, in an untrusted pool, into a sealed object of its
own (``{:sealed, object_id, 64, length, generation}``). A ``memoryview`` that lies in
the payload of a BEAM slice the worker still holds goes back as that slice's bytes
(``{:beam, object_id, offset, generation, start, length}``), without a copy. A value
that gets no slice (``arena_full``, ``no_tickets``, ``too_large``...) is sent inline,
counted in the format statistics and logged (at most once a second per cause); one
that could not go inline either is refused.

>>> from beambridge.arena import ArenaSet
>>> out = ResultSlices(WorkerArenas(limit=1 << 20, min_arena=1 << 16))
>>> out.begin()
>>> out.place("binary", memoryview(b"x" * 100), what="100 bytes") is None  # no lease table
True
>>> out.arenas.close()
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from . import control
from .arena import ArenaSet, Slice
from .codecs import compress
from .errors import ArenaError, os_failure
from .frame_writer import frame_length, write_frame, write_frame_bytes
from .header import HEADER_SIZE, Format
from .leases import Key, LeaseBook, buffer_address
from .objects import (
    ALIGN,
    KIND_SEALED,
    OBJECT_HEADER,
    PAGE,
    SharedObject,
    next_generation,
    round_up,
)
from .stats import RESULTS, note

__all__ = ["INLINE_FORMS", "Fill", "ResultSlices", "WorkerArenas"]

#: A payload: the bytes themselves (a C-contiguous byte view, copied in), or a function
#: that writes them into the area it is given.
Fill = memoryview | Callable[[memoryview], None]

#: The form (`beambridge.stats`) a value of each handle kind is counted under when it
#: is sent inline instead of in a slice.
#: Room left in a control frame for what is not an inline value (envelope, terms).
_FRAME_MARGIN = 1 << 16

INLINE_FORMS = {
    "binary": "raw",
    "tensor": "tensor",
    "tensor_bundle": "tensor",
    "sparse_coo": "tensor",
    "arrow": "arrow",
    "packed": "packed",
    "records": "records",
    "custom": "custom",
}

log = logging.getLogger("beambridge.slices")
#: When each cause of an inline fallback was last logged (at most once a second each).
_warned: dict[str, float] = {}


def _warn(cause: str, text: str) -> None:
    now = time.monotonic()
    last = _warned.get(cause)
    if last is None or now - last >= 1.0:
        _warned[cause] = now
        who = os.environ.get("BEAMBRIDGE_WORKER_ID", str(os.getpid()))
        log.warning("beambridge worker %s: warning: %s", who, text)


class WorkerArenas(ArenaSet):
    """The worker's result arenas: each new arena and each dropped one is queued in
    ``notices`` as the message announcing it (§8.3), to be sent before the next
    answer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[Any] = []

    def on_new_arena(self, obj: SharedObject) -> None:
        self.notices.append(control.object_announcement(*obj.announcement()))

    def on_dropped_arena(self, object_id: int) -> None:
        self.notices.append(control.object_dropped(object_id))


#: What `ResultSlices.begin` starts afresh: the state of the result being written.
_RESULT_STATE = ("entries", "fallbacks", "fallback_counts", "_lent", "_new_sealed", "_inline")


class ResultSlices:
    """The slices of one result at a time: `begin`, then `place` / `echo` per value
    (each returns the index of the answer's ``slices`` entry the handle names, or None
    for inline), then `commit` when the answer goes out, or `cancel` when it does not.

    ``arenas`` are the worker's arenas (None: no slices, only sealed objects or
    nothing); ``sealed`` puts every value in a sealed object of its own (§11), counted
    with the arenas against ``limit``; ``leases`` is the book of the BEAM slices the
    worker holds (for `echo`); ``checksum`` hashes every payload written;
    ``report_fallbacks``: tell the BEAM of values that went inline (``{:fallbacks, ...}``,
    protocol 2.1; a 2.0 BEAM does not know the message).
    """

    def __init__(
        self,
        arenas: WorkerArenas | None,
        *,
        limit: int | None = None,
        sealed: bool = False,
        leases: LeaseBook | None = None,
        checksum: bool = False,
        report_fallbacks: bool = True,
    ) -> None:
        self.arenas = arenas
        self.report_fallbacks = report_fallbacks
        self.limit = limit if limit is not None else (arenas.limit if arenas else 1 << 30)
        self.sealed = sealed
        self.leases = leases
        self.checksum = checksum
        #: The answer's ``slices`` entries so far.
        self.entries: list[tuple[Any, ...]] = []
        #: Why values of this result went inline although at or above the threshold.
        self.fallbacks: list[str] = []
        #: The same per (form, reason): [count, bytes] (the BEAM counts them too).
        self.fallback_counts: dict[tuple[str, str], list[int]] = {}
        #: Sealed objects announced, waiting for ``{:sealed_mapped, ...}``.
        self.unconfirmed: dict[int, SharedObject] = {}
        self._lent: list[Slice] = []
        self._new_sealed: list[SharedObject] = []
        self._pinned: list[Key] = []
        self._inline = 0  # bytes of this result's values due a slice that went inline
        #: The codec the call in flight's slices are written in (SPEC §15.3), 0: none.
        self.codec = 0
        #: The provenance block of the call in flight's frames (SPEC §5.4), made when
        #: its first frame is written.
        self.provenance: Callable[[], bytes] = _no_provenance

    # ---- one result --------------------------------------------------------------------

    def begin(self) -> None:
        """Start a result."""
        self.entries = []
        self.fallbacks = []
        self.fallback_counts = {}
        self._lent = []
        self._new_sealed = []
        self._inline = 0

    def suspend(self) -> tuple[Any, ...]:
        """Set the result being written aside (its slices stay placed, uncommitted) and
        start another; `resume` takes it back, to `commit` or `cancel` it. A result whose
        pieces go first (SPEC §8.6) waits so."""
        state = tuple(getattr(self, name) for name in _RESULT_STATE)
        self.begin()
        return state

    def resume(self, state: tuple[Any, ...]) -> None:
        """Take back the result `suspend` set aside (what was begun since is dropped:
        commit or cancel it first)."""
        for name, value in zip(_RESULT_STATE, state, strict=True):
            setattr(self, name, value)

    def place(
        self,
        kind: str,
        fill: Fill,
        *,
        nbytes: int | None = None,
        metadata: bytes = b"",
        format: Format | int = Format.RAW,
        schema_id: int = 0,
        schema_version: int = 0,
        what: str = "a value",
    ) -> int | None:
        """Write a payload of ``nbytes`` (``fill``'s own size when it is a view) as one
        frame and return its entry's index, or None: it goes inline (counted and logged
        with the reason). `ArenaError` when it can go neither way: its payload alone is
        over `beambridge.control.MAX_CONTROL_FRAME`."""
        size = fill.nbytes if isinstance(fill, memoryview) else nbytes
        assert size is not None
        frame: dict[str, Any] = {}
        raw = size  # what a fallback carries: the value as it is
        if self.codec:
            fill, frame = _compressed(self.codec, fill, size)
            size = fill.nbytes if isinstance(fill, memoryview) else size
        try:
            if self.sealed:
                entry = self._sealed(fill, size, metadata, format, schema_id, schema_version, frame)
            else:
                entry = self._in_arena(
                    fill, size, metadata, format, schema_id, schema_version, frame
                )
        except ArenaError as err:
            self._fallback(err, kind, raw, what)
            return None
        except OSError as exc:  # memfd_create, mmap: no descriptor or memory left
            self._fallback(
                os_failure(exc, "object", None, "cannot make a shared object"), kind, raw, what
            )
            return None
        self.entries.append(entry)
        return len(self.entries) - 1

    def echo(self, view: memoryview) -> int | None:
        """The index of a ``{:beam, ...}`` entry for ``view`` when its bytes lie in the
        payload of a BEAM slice the worker holds (the slice is then held until
        `unpin`: it is not in this answer's ``released``), else None."""
        if self.leases is None or view.nbytes == 0 or not view.c_contiguous:
            return None
        address = buffer_address(view)
        found = self.leases.find(address, view.nbytes)
        if found is None:
            return None
        key, start = found
        self.leases.hold(key)
        self._pinned.append(key)
        object_id, offset, generation = key
        self.entries.append(
            control.beam_slice(object_id, offset, generation, address - start, view.nbytes)
        )
        return len(self.entries) - 1

    def commit(self) -> list[Any]:
        """The answer is going out: the messages to send before it, announcing its sealed
        objects (they now wait for ``{:sealed_mapped, ...}``) and counting its values
        that went inline although at or above the threshold (``{:fallbacks, ...}``)."""
        notices = [control.object_announcement(*obj.announcement()) for obj in self._new_sealed]
        if self.fallback_counts and self.report_fallbacks:
            notices.append(control.fallbacks(self.fallback_counts))
            self.fallback_counts = {}
        self.unconfirmed.update((obj.object_id, obj) for obj in self._new_sealed)
        self._new_sealed = []
        self._lent = []
        return notices

    def cancel(self) -> None:
        """The answer does not go out: every slice lent for it and every sealed object
        made for it is taken back, every BEAM slice it echoed let go."""
        if self.arenas is not None:
            for s in self._lent:
                self.arenas.recall(s)
        for obj in self._new_sealed:
            obj.close()
        self.begin()
        self.unpin()

    def unpin(self) -> None:
        """Let go the BEAM slices echoed by the answer just written."""
        pinned, self._pinned = self._pinned, []
        if self.leases is not None:
            for key in pinned:
                self.leases.let_go(key)

    def sealed_mapped(self, object_ids: list[int]) -> None:
        """The BEAM mapped these sealed objects: close them (§11)."""
        for object_id in object_ids:
            obj = self.unconfirmed.pop(object_id, None)
            if obj is not None:
                obj.close()

    def take_notices(self) -> list[Any]:
        """Arenas made or dropped since the last call, as messages (§8.3)."""
        if self.arenas is None or not self.arenas.notices:
            return []
        notices, self.arenas.notices = self.arenas.notices, []
        return notices

    def close(self) -> None:
        for obj in [*self.unconfirmed.values(), *self._new_sealed]:
            obj.close()
        self.unconfirmed.clear()
        if self.arenas is not None:
            self.arenas.close()

    # ---- where a frame goes ------------------------------------------------------------

    def _in_arena(
        self,
        fill: Fill,
        nbytes: int,
        metadata: bytes,
        format: Format | int,
        schema_id: int,
        schema_version: int,
        frame: dict[str, Any],
    ) -> tuple[Any, ...]:
        arenas = self.arenas
        if arenas is None:
            raise ArenaError("arena_full", "arena_limit", nbytes, 0, "arena_full: no arenas")
        if isinstance(fill, memoryview):
            s = arenas.put(
                fill,
                metadata=metadata,
                format=format,
                schema_id=schema_id,
                schema_version=schema_version,
                checksum=self.checksum,
                provenance=self.provenance(),
                **frame,
            )
        else:
            with arenas.put_into(
                nbytes,
                metadata=metadata,
                format=format,
                schema_id=schema_id,
                schema_version=schema_version,
                checksum=self.checksum,
                provenance=self.provenance(),
            ) as (s, area):
                fill(area)
        try:
            ticket = arenas.lend(s)
        except ArenaError:
            arenas.free(s)
            raise
        self._lent.append(s)
        return control.worker_slice(s.object_id, s.offset, s.length, s.generation, ticket)

    def _sealed(
        self,
        fill: Fill,
        nbytes: int,
        metadata: bytes,
        format: Format | int,
        schema_id: int,
        schema_version: int,
        compressed: dict[str, Any],
    ) -> tuple[Any, ...]:
        provenance = self.provenance()
        length = round_up(
            max(frame_length(nbytes, len(metadata) + len(provenance)), HEADER_SIZE), ALIGN
        )
        size = round_up(OBJECT_HEADER + length, PAGE)
        if size > self.limit:
            raise ArenaError(
                "too_large",
                "arena_limit",
                size,
                self.limit,
                f"too_large: a {size}-byte sealed object can never fit in the arena limit "
                f"of {self.limit} bytes; raise the pool's :arena_limit",
            )
        held = sum(o.size for o in (*self.unconfirmed.values(), *self._new_sealed))
        held += self.arenas.total if self.arenas is not None else 0
        if held + size > self.limit:
            raise ArenaError(
                "arena_full",
                "arena_limit",
                size,
                self.limit,
                f"arena_full: {held} bytes of sealed objects the BEAM has not confirmed "
                f"leave no room for {size} more under the limit of {self.limit}",
            )
        obj = SharedObject(size, KIND_SEALED)
        generation = next_generation()
        frame: dict[str, Any] = {
            "generation": generation,
            "metadata": metadata,
            "format": format,
            "schema_id": schema_id,
            "schema_version": schema_version,
            "checksum": self.checksum,
            "provenance": provenance,
        }
        try:
            with obj.area(OBJECT_HEADER, length) as whole:
                if compressed:  # write_frame_bytes writes uncompressed frames
                    assert isinstance(fill, memoryview)
                    with write_frame(whole, nbytes, **frame, **compressed) as area:
                        area[:] = fill
                elif isinstance(fill, memoryview):
                    write_frame_bytes(whole, fill, **frame)
                else:
                    with write_frame(whole, nbytes, **frame) as area:
                        fill(area)
            obj.seal()
        except BaseException:
            obj.close()
            raise
        self._new_sealed.append(obj)
        return control.sealed_slice(obj.object_id, OBJECT_HEADER, length, generation)

    def _fallback(self, err: ArenaError, kind: str, nbytes: int, what: str) -> None:
        reason = err.reason
        if self._inline + nbytes > control.MAX_CONTROL_FRAME - _FRAME_MARGIN:
            raise ArenaError(
                reason,
                err.field,
                nbytes,
                err.limit,
                f"{reason}: {what} gets no slice ({err}) and cannot go inline either: a "
                f"control frame holds at most {control.MAX_CONTROL_FRAME} bytes (and "
                f"{self._inline} are taken by other values of the result); raise the "
                f"pool's :arena_limit (now {self.limit}) or return less",
            ) from None
        self._inline += nbytes
        self.fallbacks.append(reason)
        form = INLINE_FORMS.get(kind, kind)
        counted = self.fallback_counts.setdefault((form, reason), [0, 0])
        counted[0] += 1
        counted[1] += nbytes
        note(RESULTS, form, reason, nbytes, f"{what}, inline")
        _warn(reason, f"{what} gets no slice ({err}); sending it inline")


def _compressed(codec: int, fill: Fill, size: int) -> tuple[Fill, dict[str, Any]]:
    """The payload ``fill`` makes, compressed with ``codec``, and the frame fields that
    say so. A producer that writes in place (NumPy, pyarrow) writes into private memory
    first: a compressed frame is written once its size is known. A payload that does not
    compress (no memory for it, a codec's error) is written as it is: compression never
    fails a result."""
    if isinstance(fill, memoryview):
        data = fill
    else:
        data = memoryview(bytearray(size))
        fill(data)
    try:
        packed = compress(codec, data)
    except Exception:  # MemoryError, a library's own
        return data, {}
    return memoryview(packed), {"codec": codec, "decoded_length": size}


def _no_provenance() -> bytes:
    return b""
