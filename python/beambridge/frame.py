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

import weakref
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .errors import LeaseError
from .header import DEFAULT_MAX_DECODED_LENGTH, Header, decode_frame

__all__ = ["Frame"]


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

    __slots__ = ("__weakref__", "_lease", "_on_frame", "_payload", "header", "metadata")

    header: Header
    metadata: bytes

    def __init__(
        self,
        end_lease: Callable[[], None],
        header: Header,
        metadata: bytes,
        array: Any,
        payload: memoryview,
    ) -> None:
        self.header = header
        self.metadata = metadata
        self._payload = payload  # memoryview(array): it alone keeps the array alive
        self._on_frame = array is None
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
        return cls(_nothing, header, metadata, None, payload)

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
