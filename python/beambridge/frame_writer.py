"""Writing one frame (protocol/SPEC.md §5) into an owned, writable area: a slice of an
arena (`beambridge.arena`) or a sealed object (untrusted results).

`write_frame_bytes` copies a payload that already exists; `write_frame` yields the
payload area for a producer (NumPy, pyarrow) to fill and writes the header after.

>>> area = memoryview(bytearray(256))
>>> write_frame_bytes(area, memoryview(b"hi"), generation=3, metadata=b"m")
>>> with write_frame(area, 2, generation=4) as payload:
...     payload[:] = b"yo"
>>> from beambridge.header import decode_frame
>>> decode_frame(area[: frame_length(2)])[0].generation
4
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Generator, Iterator

import xxhash

from .errors import LeaseError
from .header import (
    HEADER_SIZE,
    Codec,
    Format,
    build_header,
    pack_header,
    pack_plain_header,
    payload_offset_for,
    with_fields,
)
from .provenance import next_frame_id, now_ns

__all__ = ["frame_length", "write_frame", "write_frame_bytes"]


def write_frame_bytes(
    whole: memoryview,
    data: memoryview,
    *,
    generation: int,
    metadata: bytes = b"",
    format: Format | int = Format.RAW,
    schema_id: int = 0,
    schema_version: int = 0,
    checksum: bool = False,
    provenance: bytes = b"",
    created_at: int | None = None,
    frame_id: int | None = None,
) -> None:
    """Lay one uncompressed frame of the bytes ``data`` (a flat ``B`` view) out at the
    start of ``whole`` (which must hold `frame_length` bytes): what `write_frame` writes
    for them, without a producer to wait for."""
    start = payload_offset_for(len(metadata) + len(provenance))
    end = start + data.nbytes
    if end > whole.nbytes:
        raise ValueError(f"a frame of {end} bytes in {whole.nbytes}")
    _lay_out(whole, metadata, provenance, start)
    whole[start:end] = data
    whole[:HEADER_SIZE] = pack_plain_header(
        data.nbytes,
        metadata,
        format=format,
        generation=generation,
        schema_id=schema_id,
        schema_version=schema_version,
        payload_checksum=xxhash.xxh3_64_intdigest(data) if checksum else None,
        created_at=now_ns() if created_at is None else created_at,
        frame_id=next_frame_id() if frame_id is None else frame_id,
        provenance=provenance,
    )


def _lay_out(whole: memoryview, metadata: bytes, provenance: bytes, start: int) -> None:
    """Metadata, provenance block (SPEC §5.4) and zero padding up to ``start``."""
    end_of_metadata = HEADER_SIZE + len(metadata)
    whole[HEADER_SIZE:end_of_metadata] = metadata
    end_of_block = end_of_metadata + len(provenance)
    whole[end_of_metadata:end_of_block] = provenance
    whole[end_of_block:start] = bytes(start - end_of_block)


@contextlib.contextmanager
def write_frame(
    whole: memoryview,
    payload_length: int,
    *,
    generation: int,
    metadata: bytes = b"",
    format: Format | int = Format.RAW,
    codec: Codec | int = Codec.NONE,
    decoded_length: int | None = None,
    schema_id: int = 0,
    schema_version: int = 0,
    checksum: bool = False,
    provenance: bytes = b"",
    created_at: int | None = None,
    frame_id: int | None = None,
) -> Iterator[memoryview]:
    """Lay one frame out at the start of the writable area ``whole``: the metadata, the
    provenance block ``provenance`` (SPEC §5.4) and their padding now, then yield the
    payload area for a producer to fill, then the header (with the payload's checksum
    when ``checksum``; ``created_at`` and ``frame_id`` now and a new id unless given). A
    payload compressed with ``codec`` says its ``decoded_length``.
    ``whole`` must hold `frame_length` bytes. The views made here are released when the
    block ends; a view made from the payload area that is still alive then is
    `LeaseError` ``leased``, and no header is written."""
    metadata = bytes(metadata)
    draft = build_header(
        payload_length,
        0,
        metadata=metadata,
        format=format,
        codec=codec,
        decoded_length=decoded_length,
        schema_id=schema_id,
        schema_version=schema_version,
        generation=generation,
        checksum=False,
        created_at=now_ns() if created_at is None else created_at,
        frame_id=next_frame_id() if frame_id is None else frame_id,
        provenance=provenance,
    )
    start = draft.payload_offset
    if start + payload_length > whole.nbytes:
        raise ValueError(f"a frame of {start + payload_length} bytes in {whole.nbytes}")
    _lay_out(whole, metadata, provenance, start)
    if payload_length == 0:
        yield memoryview(bytearray())
        digest = xxhash.xxh3_64_intdigest(b"") if checksum else 0
    else:
        digest = yield from _fill_area(whole, start, payload_length, checksum)
    header = with_fields(draft, flags=draft.flags | (1 if checksum else 0), payload_checksum=digest)
    whole[:HEADER_SIZE] = pack_header(header, metadata)


def _fill_area(
    whole: memoryview, start: int, length: int, checksum: bool
) -> Generator[memoryview, None, int]:
    """Yield the payload area; return its checksum (0 without ``checksum``). The area is
    a view of a private NumPy array over ``whole``: every view made from it (slices,
    ``numpy.frombuffer``, a C consumer's buffer) keeps that array alive, so whether it
    outlives the block tells whether the producer left any."""
    import numpy as np  # not at module level: the worker reports a broken NumPy

    arr = np.frombuffer(whole, dtype=np.uint8, count=length, offset=start)
    area = arr.data
    alive = weakref.ref(arr)
    del arr
    try:
        yield area
    except BaseException:
        # the producer's error goes on, even while views it made are still alive (its
        # traceback may hold them)
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
            "leased: views made from the payload area are still alive at the end of the "
            "write; drop them inside the block (no header was written)",
        )
    return digest


def frame_length(payload_length: int, metadata_length: int = 0) -> int:
    """Bytes of a frame: header, metadata and provenance block (``metadata_length``
    counts both), padding to 64, payload (SPEC §5)."""
    return payload_offset_for(metadata_length) + payload_length
