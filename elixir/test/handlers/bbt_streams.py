"""Stream handlers for elixir/test/bridge_stream_test.exs (protocol/SPEC.md §8.6)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from typing import Any

import beambridge

#: What the generators' ``finally`` blocks saw, in order.
closed: list[str] = []


def count(n: int, checkpoint: bytes | None = None) -> Any:
    """0..n-1, each a checkpoint whose token is where a resumed stream starts."""
    start = 0 if checkpoint is None else int(checkpoint)
    try:
        for i in range(start, n):
            yield beambridge.checkpoint(i, str(i + 1))
    finally:
        closed.append(f"count from {start}")


def sparse(n: int, every: int, checkpoint: bytes | None = None) -> Any:
    """0..n-1, a checkpoint every ``every`` elements only."""
    start = 0 if checkpoint is None else int(checkpoint)
    for i in range(start, n):
        yield beambridge.checkpoint(i, str(i + 1)) if (i + 1) % every == 0 else i


def die_at(n: int, at: int, marker: str, checkpoint: bytes | None = None) -> Any:
    """Like count, but the interpreter is killed (SIGKILL) before element ``at``
    the first time (``marker`` is a file that says it happened already)."""
    start = 0 if checkpoint is None else int(checkpoint)
    for i in range(start, n):
        if i == at and not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write("died")
            os.kill(os.getpid(), signal.SIGKILL)
        yield beambridge.checkpoint(i.to_bytes(4, "little") * 40_000, str(i + 1))


def die_after_big(size: int) -> Any:
    """One small element, then one of ``size`` bytes (too big for the arenas
    the worker has: a new one is announced with it), then SIGKILL at once, so
    the BEAM reads that element's frame from an interpreter already dead."""
    yield beambridge.checkpoint(b"small", "1")
    yield beambridge.checkpoint(b"\x01" * size, "2")
    os.kill(os.getpid(), signal.SIGKILL)


def was_closed() -> list[str]:
    return list(closed)


def blobs(n: int, size: int) -> Any:
    chunk = b"\xab" * size
    for _ in range(n):
        yield chunk


async def ticks(n: int) -> Any:
    try:
        for i in range(n):
            await asyncio.sleep(0)
            yield i
    finally:
        closed.append("ticks")


def record_batches(n: int, chunk: int) -> Any:
    import pyarrow as pa

    table = pa.table({"id": list(range(n)), "x": [i * 0.5 for i in range(n)]})
    return table.to_batches(max_chunksize=chunk)


def sha256(stream: Any) -> str:
    h = hashlib.sha256()
    for chunk in stream:
        h.update(chunk)
    return h.hexdigest()


def total(stream: Any) -> int:
    return sum(stream)


def double(stream: Any) -> Any:
    for x in stream:
        yield x * 2


def fails_after(n: int) -> Any:
    yield from range(n)
    raise ValueError(f"failed after {n}")


def slow(n: int, seconds: float) -> Any:
    import time

    for i in range(n):
        time.sleep(seconds)
        yield i


def mutate_after_checksum(n: int, size: int) -> Any:
    """Elements whose payload is changed after its checksum was written: the
    shared memory a consumer reads no longer matches (a corrupted chunk)."""
    from beambridge import frame_writer

    real = frame_writer.xxhash.xxh3_64_intdigest

    class Lying:
        @staticmethod
        def xxh3_64_intdigest(data: Any) -> int:
            return int(real(data)) ^ 1  # as if a byte changed after hashing

    for i in range(n):
        if i == 1:
            frame_writer.xxhash = Lying  # type: ignore[assignment]
        try:
            yield bytes([i]) * size
        finally:
            frame_writer.xxhash = __import__("xxhash")


def worker_memory() -> dict[str, int]:
    """The worker's own arenas: slices still lent to the BEAM (after taking back
    those whose leases ended), bytes of arenas held, and their peak."""
    import gc

    found = [o for o in gc.get_objects() if type(o).__name__ == "Worker"]
    (worker,) = [o for o in found if hasattr(o, "out_fd")]
    arenas = worker.path.arenas
    arenas.reclaim()
    return {"lent": len(arenas._lent), "bytes": arenas.total, "peak": arenas.stats["peak_bytes"]}


def _worker() -> Any:
    import gc

    found = [o for o in gc.get_objects() if type(o).__name__ == "Worker"]
    (worker,) = [o for o in found if hasattr(o, "out_fd")]
    return worker


def forge_duplicate() -> Any:
    """Yields 0, then writes element 1 of its own call again on the channel (a
    duplicate the BEAM must refuse), then yields 1."""
    from beambridge import stream_control as sc
    from beambridge.etf import encode

    yield 0
    worker = _worker()
    call_id = worker.path.streams.call_id
    worker.send_frames([(sc.element(call_id, 0, 1, None, []), [encode(0)])])
    yield 1


def forge_checksum(n: int) -> Any:
    """Elements whose chain the worker computes wrong: the end disagrees."""
    from beambridge import stream_control as sc

    real = sc.chain
    sc.chain = lambda previous, seq, digest: real(previous, seq, digest) ^ 1  # type: ignore[assignment]
    try:
        yield from range(n)
    finally:
        sc.chain = real  # type: ignore[assignment]


def describe(value: Any) -> list[Any]:
    """The type, length and SHA-256 of a value that may have come in chunks."""
    return [type(value).__name__, len(value), hashlib.sha256(value).hexdigest()]


def exit_after_first(stream: Any) -> None:
    """Takes one element of its argument stream, then the interpreter exits."""
    next(iter(stream))
    os._exit(3)


def length(value: Any) -> int:
    return len(value)


def paced(n: int, seconds: float, checkpoint: bytes | None = None) -> Any:
    """0..n-1 as 8-byte little-endian binaries, one every ``seconds``, each a checkpoint."""
    import time

    start = 0 if checkpoint is None else int(checkpoint)
    for i in range(start, n):
        time.sleep(seconds)
        yield beambridge.checkpoint(i.to_bytes(8, "little"), str(i + 1))
