"""`Frame`: a frame read from a region, holding a reader lease (protocol/SPEC.md §2.2).

The payload is a read-only memoryview straight into shared memory: each frame maps the
payload's pages once more, read-only (``PROT_READ``), so nothing can write through it,
and so that the lease can follow the exact lifetime of every view made from it. The
lease ends (``reader_leases`` is decremented, exactly once) when that private mapping
goes away:

* `Frame.release` or the end of a ``with`` block, if no view made from the payload is
  still alive (else it raises `LeaseError` and keeps the lease), or
* the moment the last object pointing into it (the frame, ``frame.payload``, memoryview
  slices, NumPy arrays made with ``numpy.frombuffer``) is garbage-collected.

While the lease lives, the writer refuses to rewrite the region (``leased``), so the
bytes under any view cannot change.
"""

from __future__ import annotations

import mmap
import weakref
from types import TracebackType

from . import _atomic
from .control import OFF_READER_LEASES
from .errors import LeaseError
from .header import Header

__all__ = ["Frame"]


def _end_lease(control: mmap.mmap) -> None:
    if not control.closed:
        _atomic.fetch_sub_u32(control, OFF_READER_LEASES, 1)


class Frame:
    """A published frame: ``header``, ``metadata`` (private bytes) and ``payload`` (a
    read-only memoryview into shared memory, no copy).

    Made by `beambridge.Region.read_frame`; not constructed directly.

    >>> from beambridge import Region
    >>> with Region.create_for_frame(3) as region:
    ...     _ = region.write_frame(b"abc")
    ...     with region.read_frame() as frame:
    ...         bytes(frame.payload), frame.payload.readonly
    (b'abc', True)
    """

    __slots__ = ("__weakref__", "_lease", "_mapping", "_payload", "header", "metadata")

    header: Header
    metadata: bytes

    def __init__(
        self,
        control: mmap.mmap,
        header: Header,
        metadata: bytes,
        mapping: mmap.mmap | None,
        payload: memoryview,
    ) -> None:
        self.header = header
        self.metadata = metadata
        self._mapping = mapping
        self._payload = payload
        # Exactly once: when `mapping` is collected (its last view is gone), or on
        # release(), or at interpreter exit. `control` is the region's own mapping, which
        # holds the lease word.
        self._lease = weakref.finalize(
            mapping if mapping is not None else self, _end_lease, control
        )

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
            self._payload.release()
            if self._mapping is not None:
                self._mapping.close()
        except BufferError:
            raise LeaseError(
                "leased",
                "payload",
                None,
                None,
                "leased: cannot release the frame yet: views made from its payload "
                "(memoryview slices, numpy arrays) are still alive; the lease ends "
                "when they are garbage-collected",
            ) from None
        self._lease()

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
