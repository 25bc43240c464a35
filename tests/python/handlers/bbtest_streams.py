"""Stream handlers for the tests of protocol/SPEC.md §8.6."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import beambridge
from beambridge.streams import checkpoint
from beambridge.types import String, uint32

closed: list[str] = []


def count(n: int, checkpoint: bytes | None = None) -> Any:
    """0..n-1, each a checkpoint whose token is the next start; ``finally`` notes the
    close."""
    start = 0 if checkpoint is None else int(checkpoint)
    try:
        for i in range(start, n):
            yield beambridge.checkpoint(i, str(i + 1))
    finally:
        closed.append(f"count {start}")


def plain(n: int) -> Any:
    """0..n-1 without checkpoints (resumed by skipping what was delivered)."""
    yield from range(n)


def blobs(n: int, size: int) -> Any:
    for i in range(n):
        yield bytes([i % 256]) * size


def as_list(values: list[Any]) -> list[Any]:
    return values


def fails_after(n: int) -> Any:
    yield from range(n)
    raise ValueError(f"failed after {n}")


def not_a_stream() -> bytes:
    return b"bytes"


async def ticks(n: int) -> Any:
    try:
        for i in range(n):
            await asyncio.sleep(0)
            yield i
    finally:
        closed.append("ticks")


def was_closed() -> list[str]:
    return list(closed)


def total(stream: Any) -> int:
    return sum(stream)


def joined(stream: Any) -> bytes:
    return b"".join(bytes(x) for x in stream)


def double(stream: Any) -> Any:
    for x in stream:
        yield x * 2


def first(stream: Any) -> Any:
    """Takes one element and stops reading."""
    return next(iter(stream))


def swallow(stream: Any) -> str:
    try:
        for _ in stream:
            pass
    except beambridge.streams.StreamError as err:
        return f"{err.reason}: {err}"
    return "ended"


def points(n: int) -> Any:
    for i in range(n):
        yield checkpoint(i, f"p{i}".encode())


def arrow_table(n: int, chunk: int) -> Any:
    """A pyarrow Table of ``n`` rows in record batches of ``chunk``: streamed as them."""
    import pyarrow as pa

    batches = [
        pa.record_batch({"x": list(range(i, min(i + chunk, n)))}) for i in range(0, n, chunk)
    ]
    return pa.Table.from_batches(batches)


def kind_and_size(value: Any) -> list[Any]:
    return [type(value).__name__, len(value), bytes(value[:3])]


def big(n: int) -> list[Any]:
    """A result with a binary of ``n`` bytes, its bytes counting up."""
    return [b"head", bytes(i % 251 for i in range(251)) * (n // 251) + b"\x00" * (n % 251)]


def tensor_info(arr: Any) -> list[Any]:
    return [list(arr.shape), str(arr.dtype), int(arr.sum())]


def big_tensor(n: int) -> Any:
    import numpy as np

    return np.arange(n, dtype="<i4")


@beambridge.schema("test.Sample", version="1.0")
@dataclasses.dataclass
class Sample:
    step: uint32
    name: String


def samples(n: int, bad_at: int = -1) -> list[Sample]:
    """``n`` Sample values; the one at ``bad_at`` out of its range (step is a uint32)."""
    values = [Sample(i, f"s{i}") for i in range(n)]
    if bad_at >= 0:
        values[bad_at].step = -1
    return values


def samples_after(stream: Any, n: int) -> list[Sample]:
    """``samples(n)`` once the stream is read to its end."""
    for _ in stream:
        pass
    return samples(n)
