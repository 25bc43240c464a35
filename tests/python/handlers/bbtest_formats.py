"""Handlers for the format-selection and custom-type tests (tests/python/test_select.py,
tests/python/test_serializers.py). Importing this module registers its serializers, as a
handler module of an application would."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import beambridge
from beambridge.etf import Atom


@dataclass
class Point:
    x: float
    y: float


@beambridge.schema("bbtest.Sample", version="1.0")
@dataclass
class Sample:
    """A typed schema (protocol/formats/ssz.md): lists of it cross as schema_list."""

    step: beambridge.types.uint32
    note: beambridge.types.String


def _encode_point(p: Point) -> bytes:
    return struct.pack("<dd", p.x, p.y)


def _decode_point(data: bytes, version: int) -> Point:
    if version == 1:  # version 1 carried x only
        (x,) = struct.unpack("<d", data)
        return Point(x, 0.0)
    return Point(*struct.unpack("<dd", data))


beambridge.register(
    Point, "bbtest.Point", version=2, reads=(1,), encode=_encode_point, decode=_decode_point
)


class Blob:
    """A type whose payload can be as big as wanted (for the slice form)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


beambridge.register(
    Blob, "bbtest.Blob", encode=lambda b: b.data, decode=lambda data, version: Blob(data)
)


@dataclass
class Broken:
    n: int


def _explode(*_: Any) -> Any:
    raise RuntimeError("the serializer exploded")


beambridge.register(Broken, "bbtest.Broken", encode=_explode, decode=_explode)


def point(x: float, y: float) -> Point:
    return Point(x, y)


def blob(n: int) -> Blob:
    return Blob(bytes(range(256)) * (n // 256) + bytes(n % 256))


def broken(n: int) -> Broken:
    return Broken(n)


def ints(n: int, lo: int = 0, step: int = 1) -> list[int]:
    return [lo + i * step for i in range(n)]


def floats(n: int) -> list[float]:
    return [i * 0.25 - 3.0 for i in range(n)]


def rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "x": i * 0.5, "flag": i % 3 == 0, "name": f"n{i}",
             "raw": bytes([i % 256]) if i % 2 else None} for i in range(n)]  # fmt: skip


def columns(n: int) -> dict[Any, list[Any]]:
    return {Atom("id"): list(range(n)), Atom("name"): [f"n{i}" for i in range(n)]}


def ragged() -> list[dict[str, int]]:
    return [{"a": 1}, {"a": 2, "b": 3}]


def value(v: Any) -> Any:
    """Return the argument as it is."""
    return v


def canon(v: Any) -> bytes:
    """Canonical text of what the handler received, types included."""
    return _canon(v).encode()


def _canon(v: Any) -> str:
    if v is None or type(v) is bool:
        return repr(v)
    if type(v) is int:
        return "i" + repr(v)
    if type(v) is float:
        return "f" + v.hex()
    if type(v) is Atom:
        return "A" + repr(str(v))
    if type(v) is str:
        return "s" + repr(v)
    if type(v) is bytes:
        return "b" + repr(v)
    if type(v) is list:
        return "[" + ",".join(_canon(x) for x in v) + "]"
    if type(v) is tuple:
        return "(" + ",".join(_canon(x) for x in v) + ")"
    if type(v) is dict:
        return "{" + ",".join(sorted(_canon(k) + ":" + _canon(x) for k, x in v.items())) + "}"
    if type(v) is Point:
        return f"Point({v.x!r},{v.y!r})"
    if type(v) is Blob:
        return f"Blob({len(v.data)})"
    if type(v) is Sample:
        return f"Sample({v.step},{v.note!r})"
    return "?" + type(v).__name__


def stats() -> Any:
    """The worker's format counters, as a list of {direction, form, reason, count, bytes}."""
    from beambridge import format_stats

    return [(d, f, r, e["count"], e["bytes"]) for (d, f, r), e in sorted(format_stats().items())]
