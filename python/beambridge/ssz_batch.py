"""Batches of typed-schema values (protocol/formats/ssz.md, "Batches"): a list of values
of one schema is one SSZ ``List`` of its container, the bytes any SSZ implementation
reads. A container of numbers, booleans, strings, bytes and lists and vectors of numbers
goes a field at a time (`beambridge.ssz_columns`); any other, or a batch with a value
that does not fit as it is, through the container's compiled codec, value after value.
A value that does not fit, or bytes that are no list, are `SchemaError`s naming the
index and the field:

>>> from dataclasses import dataclass
>>> from beambridge.ssz import schema, schema_type
>>> from beambridge.types import float32, uint16
>>> @schema("example.Sample", version="1.0")
... @dataclass
... class Sample:
...     step: uint16
...     loss: float32
>>> t = schema_type(Sample)
>>> data = encode_list(t, [Sample(1, 0.5), Sample(2, 0.25)])
>>> data.hex()
'01000000003f02000000803e'
>>> decode_list(t, data)
[Sample(step=1, loss=0.5), Sample(step=2, loss=0.25)]
>>> encode_list(t, [Sample(1, 0.5)] * 9 + [Sample(70000, 0.0)])
Traceback (most recent call last):
...
beambridge.types.SchemaError: bad_value: Sample[9].step is 70000, expected uint16 (0 to 65535)
"""

from __future__ import annotations

import contextlib
import functools
import gc
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .ssz import ContainerType, _with_offsets, codec
from .ssz_columns import OFFSET_LIMIT, plan, spans
from .types import ListType, SchemaError

__all__ = ["decode_list", "encode_list"]

#: Batches of at least this many values are made and read without the cyclic GC.
_GC_PAUSE = 10_000


@contextlib.contextmanager
def _no_gc(n: int) -> Iterator[None]:
    """Without the cyclic collector while a batch of ``n`` values is made or read: the
    values hold no cycles, and a collection every 700 allocations that walks them all
    would make a large batch two to three times slower."""
    if n < _GC_PAUSE or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def encode_list(t: ContainerType, values: Sequence[Any], first: int = 0) -> bytes:
    """The SSZ bytes of ``values``, each a value of the container ``t``; ``values`` are
    those from index ``first`` of a longer list (a piece, SPEC §8.6), which an error
    names."""
    with _no_gc(len(values)):
        try:
            return _encode_list(t, values)
        except SchemaError as err:
            if first == 0:
                raise
            raise _shifted(err, t.name, first) from None


def _shifted(err: SchemaError, name: str, first: int) -> SchemaError:
    """``err`` naming ``name[i + first]`` where it named ``name[i]``."""
    pattern = re.compile(re.escape(name) + r"\[(\d+)\]")

    def shift(text: str) -> str:
        return pattern.sub(lambda m: f"{name}[{int(m.group(1)) + first}]", text, count=1)

    message = shift(err.message).removeprefix(f"{err.reason}: ")
    return SchemaError(err.reason, message, shift(err.field) if err.field else err.field)


def _encode_list(t: ContainerType, values: Sequence[Any]) -> bytes:
    p = plan(t)
    if p is not None and values:
        data = p.encode(values)
        if data is not None:
            return data
    enc = codec(t)[0]
    try:
        parts = [enc(v, t.name) for v in values]
    except SchemaError:
        named: bytes = _generic(t)[0](values, t.name)  # raises, naming the index
        return named
    if t.fixed_size is not None:
        return b"".join(parts)
    total = 4 * len(parts) + sum(map(len, parts))
    if total >= OFFSET_LIMIT:
        raise SchemaError(
            "bad_value",
            f"{t.name}[]: {len(parts)} values of {total} bytes, past the 4 GiB an SSZ offset "
            "reaches: send them in parts",
        )
    return _with_offsets(parts, 4 * len(parts))


def decode_list(t: ContainerType, data: bytes | memoryview) -> list[Any]:
    """The values of the container ``t`` that ``data`` (an SSZ list of them) holds."""
    b = memoryview(data).cast("B")
    with _no_gc(len(b) // max(t.fixed_size or 16, 1)):
        return _decode_list(t, b)


def _decode_list(t: ContainerType, b: memoryview) -> list[Any]:
    if not b:
        return []
    p = plan(t)
    if p is not None:
        values = p.decode(b)
        if values is not None:
            return values
    dec = codec(t)[1]
    size = t.fixed_size
    if size is not None:
        if size == 0 or len(b) % size:
            raise SchemaError(
                "bad_ssz", f"{t.name}[]: {len(b)} bytes are no whole number of {size}", t.name
            )
        try:
            return [dec(b[i : i + size], t.name) for i in range(0, len(b), size)]
        except SchemaError:
            pass
    else:
        found = spans(np.frombuffer(b, dtype="u1"))
        if found is not None:  # else the generic codec names what is wrong
            starts, ends = found[0].tolist(), found[1].tolist()
            try:
                return [dec(b[lo:hi], t.name) for lo, hi in zip(starts, ends, strict=True)]
            except SchemaError:
                pass
    return _generic(t)[1](b, t.name)  # type: ignore[no-any-return]


@functools.cache
def _generic(t: ContainerType) -> Any:
    """The plain list codec: slower, and names the index of what is wrong."""
    return codec(ListType(t, OFFSET_LIMIT))
