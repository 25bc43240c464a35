"""Handlers for elixir/test/bridge_format_test.exs and serializer_test.exs: format
selection (protocol/SPEC.md §10.1) and custom types (protocol/formats/custom.md).

What a handler received is reported as a canonical text (`canon`) that names every
value's exact Python type, so the Elixir tests compare what Python got from the packed
or records form with what it got from plain ETF.
"""

import hashlib
import struct
from dataclasses import dataclass

from beambridge import Atom, serializers


def canon(x):
    """A text naming each value's exact type and value, dict entries sorted."""
    t = type(x)
    if t is list:
        return "[" + ",".join(canon(e) for e in x) + "]"
    if t is tuple:
        return "(" + ",".join(canon(e) for e in x) + ")"
    if t is dict:
        return "{" + ",".join(sorted(canon(k) + ":" + canon(v) for k, v in x.items())) + "}"
    if t is memoryview:
        return "memoryview:" + repr(bytes(x))
    if t is Atom:
        return "Atom:" + str.__repr__(x)
    return t.__name__ + ":" + repr(x)


def shape(x):
    """The types only: "list[int]", "list[dict[Atom:int|Atom:NoneType]]"..."""
    t = type(x)
    if t is list:
        return "list[" + "|".join(sorted({shape(e) for e in x})) + "]"
    if t is dict:
        return "dict[" + "|".join(sorted({shape(k) + ":" + shape(v) for k, v in x.items()})) + "]"
    if t is tuple:
        return "tuple(" + ",".join(shape(e) for e in x) + ")"
    return t.__name__


def received(x):
    """(shape, sha256 of canon, the first 200 characters of canon)."""
    text = canon(x)
    return (shape(x), hashlib.sha256(text.encode()).hexdigest(), text[:200])


def echo(x):
    return x


# ---------------------------------------------------------------- results


def ints(n, lo, step):
    return [lo + i * step for i in range(n)]


def floats(n):
    return [i / 7 for i in range(n)]


def mixed(n):
    return [i if i % 2 else i + 0.5 for i in range(n)]


def huge_ints(n):
    """Integers beyond int64 (uint64 range): they pack as <u8."""
    return [2**64 - 1 - i for i in range(n)]


def _row(i, keys):
    keys = keys.decode() if isinstance(keys, bytes) else keys
    k = {"atom": Atom, "string": str, "binary": lambda s: s.encode()}[keys]
    return {
        k("id"): i,
        k("x"): None if i % 5 == 0 else i * 0.25,
        k("ok"): i % 2 == 0,
        k("name"): None if i % 7 == 0 else f"r{i}",
        k("raw"): bytes([i % 256, 255]),
        k("none"): None,
    }


def rows(n, keys="string"):
    return [_row(i, keys) for i in range(n)]


def columns(n, keys="string"):
    table = rows(n, keys)
    return {k: [r[k] for r in table] for k in (table[0] if table else {})}


def unknown_atom_rows(n):
    return [{Atom("bbt_no_such_atom_in_this_vm"): i} for i in range(n)]


def nested_rows(n):
    return [{"a": [i]} for i in range(n)]


# ---------------------------------------------------------------- custom types


@dataclass
class Point:
    x: float
    y: float


@dataclass
class Secret:
    """Registered here only: the BEAM has no serializer for "bbt.Secret"."""

    value: int


@dataclass
class Blob:
    """The BEAM's decoder refuses the payload b"bad"."""

    data: bytes


@dataclass
class Fragile:
    """Python's decoder refuses the payload b"bad"."""

    data: bytes


def _decode_fragile(data, version):
    if bytes(data) == b"bad":
        raise ValueError("fragile payload refused")
    return Fragile(bytes(data))


def _encode_point(p):
    if _point_version[0] == 1:
        return struct.pack("<ff", p.x, p.y)
    return struct.pack("<dd", p.x, p.y)


def _decode_point(data, version):
    if version == 1:
        return Point(*struct.unpack("<ff", data))
    return Point(*struct.unpack("<dd", data))


_point_version = [2]


def _register_point(version):
    serializers.register(
        Point,
        "bbt.Point",
        version=version,
        reads=(1, 2),
        encode=_encode_point,
        decode=_decode_point,
    )


_register_point(2)
serializers.register(
    Secret,
    "bbt.Secret",
    version=1,
    encode=lambda s: s.value.to_bytes(8, "little"),
    decode=lambda d, v: Secret(int.from_bytes(d, "little")),
)
serializers.register(
    Blob, "bbt.Blob", version=1, encode=lambda b: b.data, decode=lambda d, v: Blob(bytes(d))
)


serializers.register(
    Fragile, "bbt.Fragile", version=1, encode=lambda f: f.data, decode=_decode_fragile
)


def set_point_version(version):
    """Write bbt.Point with `version` from now on (3: a version the BEAM cannot read)."""
    _point_version[0] = 1 if version == 1 else 2
    _register_point(version)
    return version


def point(x, y):
    return Point(x, y)


def points(n):
    return [Point(float(i), -float(i)) for i in range(n)]


def secret(v):
    return Secret(v)


def blob(data):
    return Blob(data)


def describe(x):
    """What a custom argument became: the class and its fields, or the canon text."""
    if isinstance(x, Point):
        return ("Point", x.x, x.y)
    if isinstance(x, Blob):
        return ("Blob", x.data)
    if isinstance(x, Fragile):
        return ("Fragile", x.data)
    if isinstance(x, list):
        return [describe(e) for e in x]
    return ("other", canon(x))
