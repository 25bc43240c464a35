"""`Frame`: a frame read in place from a peer's slice, holding a lease
(protocol/SPEC.md §4, `beambridge.objects.PeerObject.read_frame`).

The payload is a read-only memoryview straight into the peer's object, mapped once
(already warm), no copy and no second mapping. It is a view of a private NumPy array
made for this frame over the read-only mapping, so nothing can write through it (the
array's ``writeable`` flag cannot be turned back on), and every view made from the
payload (memoryview slices, ``numpy.frombuffer``, arrays made from those) keeps that
array alive. The lease ends (the slice is reported released, exactly once) when that
array goes away:

* `Frame.release` or the end of a ``with`` block, if no view made from the payload is
  still alive (else it raises `LeaseError` and keeps the lease), or
* the moment the last object pointing into it (the frame, ``frame.payload``, memoryview
  slices, NumPy arrays made with ``numpy.frombuffer``) is garbage-collected.

A frame with an empty payload points into nothing: its lease ends with the frame.

While the lease lives, the owner does not free or rewrite the slice, so the bytes under
any view cannot change. `Frame.from_bytes` makes a frame of bytes in private memory (a
protocol vector, a test), which holds no lease.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .errors import BridgeError, LeaseError
from .header import DEFAULT_MAX_DECODED_LENGTH, Header, decode_frame, validate_header

__all__ = ["Frame", "describe", "describe_file", "dump"]


class Frame:
    """A published frame: ``header``, ``metadata`` (private bytes) and ``payload`` (a
    read-only memoryview into shared memory, no copy).

    Made by `beambridge.objects.PeerObject.read_frame` (or `from_bytes`); not
    constructed directly.

    >>> from beambridge.arena import ArenaSet, PeerObject
    >>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
    >>> s = arenas.put(b"abc")
    >>> peer = PeerObject.open(*arenas.announcement(s.object_id))
    >>> with peer.read_frame(s.offset, s.length, s.generation) as frame:
    ...     bytes(frame.payload), frame.payload.readonly
    (b'abc', True)
    >>> frame.released
    True
    >>> peer.close(); arenas.close()
    """

    __slots__ = (
        "__weakref__",
        "_lease",
        "_on_frame",
        "_origin",
        "_payload",
        "header",
        "metadata",
    )

    header: Header
    metadata: bytes

    def __init__(
        self,
        end_lease: Callable[[], None],
        header: Header,
        metadata: bytes,
        array: Any,
        payload: memoryview,
        origin: Callable[[], memoryview] | None = None,
    ) -> None:
        self.header = header
        self.metadata = metadata
        self._payload = payload  # memoryview(array): it alone keeps the array alive
        self._on_frame = array is None
        self._origin = origin
        if origin is not None and array is not None:
            _ORIGINS[id(array)] = origin
            end_lease = functools.partial(_ended, end_lease, id(array))
        # Exactly once: when `array` is collected (the last view made from the payload is
        # gone), or at interpreter exit; for an empty payload (no array) when the frame
        # is released or collected. `end_lease` tells the owner (the list of released
        # slices, `beambridge.leases.LeaseBook`).
        self._lease = weakref.finalize(self if array is None else array, end_lease)

    @classmethod
    def from_bytes(
        cls,
        data: object,
        *,
        verify: bool = True,
        max_decoded_length: int = DEFAULT_MAX_DECODED_LENGTH,
    ) -> Frame:
        """The frame that fills the bytes-like ``data`` (a frame in private memory: a
        protocol vector, a test), checked as `beambridge.header.decode_frame` checks it
        (`beambridge.errors.HeaderError` otherwise). The payload is a read-only view of
        ``data``; the frame holds no lease.

        >>> from beambridge.header import encode_frame
        >>> frame = Frame.from_bytes(encode_frame(b"abc", metadata=b"m"))
        >>> bytes(frame.payload), frame.metadata, frame.header.payload_offset
        (b'abc', b'm', 192)
        """
        header, metadata, payload = decode_frame(
            data, verify=verify, max_decoded_length=max_decoded_length
        )
        whole = memoryview(data).cast("B")  # type: ignore[arg-type]
        return cls(_nothing, header, metadata, None, payload, lambda: whole)

    @classmethod
    def from_decoded(cls, header: Header, metadata: bytes, data: bytes) -> Frame:
        """The frame of a payload decompressed into the private bytes ``data`` (its
        ``header`` says so: codec none); it holds no lease."""
        return cls(_nothing, header, metadata, None, memoryview(data))

    @property
    def payload(self) -> memoryview:
        """The payload bytes as stored: read-only, pointing into shared memory.

        Unusable (ValueError on access) once the frame is released."""
        return self._payload

    @property
    def released(self) -> bool:
        """True once the lease has ended."""
        return not self._lease.alive

    def release(self) -> None:
        """Release the payload view and end the reader lease (idempotent).

        Raises `LeaseError` ``leased`` while objects made from the payload (memoryview
        slices, NumPy arrays) are still alive; the lease then ends when they are gone.
        """
        if not self._lease.alive:
            return
        try:
            self._payload.release()  # drops the frame's reference to the array
            released = True
        except BufferError:  # a C consumer still holds the payload's buffer
            released = False
        if self._on_frame and released:
            self._lease()
        elif self._lease.alive:
            # the array lives on: views made from the payload still point into it
            raise LeaseError(
                "leased",
                "payload",
                None,
                None,
                "leased: cannot release the frame yet: views made from its payload "
                "(memoryview slices, numpy arrays) are still alive; the lease ends "
                "when they are garbage-collected",
            )

    def __enter__(self) -> Frame:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "leased"
        h = self.header
        return (
            f"<Frame {state} format={h.format!r} generation={h.generation} "
            f"metadata={len(self.metadata)}B payload={h.payload_length}B>"
        )


def _nothing() -> None:
    return None


def _ended(end_lease: Callable[[], None], key: int) -> None:
    """A payload array is gone: its lease ends and it no longer names a frame."""
    _ORIGINS.pop(key, None)
    end_lease()


#: The payload arrays of frames read from slices (by id, while they live), and how to see
#: their frames again.
_ORIGINS: dict[int, Callable[[], memoryview]] = {}


def _frame_bytes(obj: Any) -> memoryview | None:
    """The bytes of the frame ``obj`` was read from (a `Frame`, its payload, or a NumPy
    array or memoryview made from that payload), from the frame's first byte: a view
    that reaches at least the payload's end. None when ``obj`` holds no frame."""
    if isinstance(obj, Frame):
        return None if obj._origin is None else obj._origin()
    for _ in range(32):
        origin = _ORIGINS.get(id(obj))
        if origin is not None:
            return origin()
        nxt = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if nxt is None or nxt is obj:
            return None
        obj = nxt
    return None


def describe(obj: Any) -> dict[str, Any]:
    """What the frame ``obj`` was read from says of itself (SPEC §5.4): format, codec,
    schema, lengths, checksum state (never verified: the payload is not read),
    ``created_at``, ``producer``, ``meta`` and ``lineage`` (`beambridge.description`).

    ``obj`` is a `Frame`, an argument a handler received as a view of a BEAM slice
    (``memoryview``, NumPy array, or an array made from one), or a frame's bytes.
    Anything else raises `beambridge.errors.BridgeError` ``not_a_frame``.

    >>> from beambridge.header import encode_frame
    >>> describe(encode_frame(b"abc"))["lengths"]["payload"]
    3
    """
    from .description import describe_bytes

    view = _frame_bytes(obj)
    if view is None and isinstance(obj, (bytes, bytearray)) and obj[:4] == b"BBFH":
        view = memoryview(obj)
    if view is None:
        raise _not_a_frame(obj)
    return describe_bytes(view)


def dump(obj: Any, path: str) -> None:
    """Write the frame of ``obj`` to the file ``path``: the frame it was read from, as
    it is (header, metadata, provenance block, payload), or else a new frame holding it
    (bytes-like: raw; a NumPy array: a tensor; anything else the worker can send: ETF)
    with the provenance of the call in flight. `describe_file` and ``python -m
    beambridge inspect PATH`` read it back."""
    view = _frame_bytes(obj)
    if view is not None:
        header, _ = validate_header(view, view.nbytes)
        data = bytes(view[: header.payload_offset + header.payload_length])
    else:
        data = _new_frame(obj)
    with open(path, "wb") as f:
        f.write(data)


def describe_file(path: str) -> dict[str, Any]:
    """The description of a dump, or of the live slice ``/proc/PID/fd/FD@OFFSET``
    (`beambridge.description.read_file`)."""
    from .description import read_file

    return read_file(path)


def _new_frame(obj: Any) -> bytes:
    from .call_record import current_block
    from .etf import encode as etf_encode
    from .header import Format, encode_frame
    from .provenance import next_frame_id, now_ns

    block, created_at, frame_id = current_block(), now_ns(), next_frame_id()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return encode_frame(
            memoryview(obj).cast("B"),
            format=Format.RAW,
            created_at=created_at,
            frame_id=frame_id,
            provenance=block,
        )
    if type(obj).__module__ == "numpy" or type(obj).__name__ in ("Bundle", "COO"):
        from .formats.tensor.frames import plan

        p = plan(obj)
        area = bytearray(p.nbytes)
        p.fill(memoryview(area))
        return encode_frame(
            area,
            metadata=p.metadata,
            format=Format.TENSOR,
            schema_id=p.schema_id,
            schema_version=p.schema_version,
            created_at=created_at,
            frame_id=frame_id,
            provenance=block,
        )
    return encode_frame(
        etf_encode(obj),
        format=Format.ETF,
        created_at=created_at,
        frame_id=frame_id,
        provenance=block,
    )


def _not_a_frame(obj: Any) -> BridgeError:
    return BridgeError(
        "not_a_frame",
        "value",
        None,
        None,
        f"not_a_frame: a {type(obj).__name__} holds no frame: only a Frame, an argument "
        "read from a slice (a memoryview or NumPy array of it) or a frame's bytes can be "
        "described",
    )
