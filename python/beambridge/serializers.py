"""Custom-type serializers: the worker's registry (protocol/formats/custom.md).

A handler module registers, for one of its own classes, a **type name** shared with the
BEAM (``"geo.Point"``), the **version** it writes, the versions it can read, and two
functions: ``encode(value) -> bytes`` and ``decode(data, version) -> value``. A result
value whose class (or a base class, in MRO order) has a serializer then travels as
``{:"$bb_custom", name, version, data}`` (or a ``custom`` frame in a slice), and an
argument of that form becomes the serializer's value again.

>>> import struct
>>> from dataclasses import dataclass
>>> @dataclass
... class Point:
...     x: float
...     y: float
>>> serializer = register(Point, "doc.Point", version=2, reads=(1, 2),
...                  encode=lambda p: struct.pack("<dd", p.x, p.y),
...                  decode=lambda data, version: Point(*struct.unpack("<dd", data)))
>>> serializer.name, serializer.version, sorted(serializer.reads)
('doc.Point', 2, [1, 2])
>>> lookup(Point) is serializer, lookup_name("doc.Point") is serializer
(True, True)
>>> data = encode_value(serializer, Point(1.0, 2.0))
>>> decode_payload(b"doc.Point", 1, data)
Point(x=1.0, y=2.0)
>>> decode_payload(b"doc.Point", 3, data)
Traceback (most recent call last):
...
beambridge.serializers.UnsupportedVersionError: unsupported_version: custom type 'doc.Point' ...
>>> unregister(Point) is serializer, lookup(Point)
(True, None)

Registries are process-wide. The worker imports a call's module before it converts the
call's arguments, so serializers registered when that module is imported apply to the
arguments and the result of its calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import xxhash

from .errors import BridgeError
from .etf import Atom

__all__ = [
    "MAX_NAME_BYTES",
    "MAX_VERSION",
    "Serializer",
    "SerializerError",
    "SerializerFailedError",
    "UnknownTypeError",
    "UnsupportedVersionError",
    "decode_payload",
    "encode_value",
    "has_serializers",
    "lookup",
    "lookup_name",
    "register",
    "registered",
    "schema_id",
    "unregister",
]

#: Longest type name, in UTF-8 bytes.
MAX_NAME_BYTES = 255
#: Largest version (a frame's ``schema_version`` is a u32; 0 means "none").
MAX_VERSION = 2**32 - 1

#: Types that already have a meaning on the wire (SPEC §10): a serializer for one of them
#: would make the type a receiver gets depend on the registry, so they are refused.
_BUILTIN = (object, int, float, bool, str, bytes, bytearray, memoryview, list, tuple, dict,
            type(None), Atom)  # fmt: skip


class SerializerError(BridgeError):
    """A custom-type payload could not be turned back into a value (custom.md
    "Reading"). ``reason`` is ``unknown_type``, ``unsupported_version`` or
    ``serializer_failed``; ``field`` names what failed and ``value`` holds it."""


class UnknownTypeError(SerializerError):
    """No serializer is registered for the payload's type name (reason ``unknown_type``)."""


class UnsupportedVersionError(SerializerError):
    """The serializer for the name does not read the payload's version
    (reason ``unsupported_version``)."""


class SerializerFailedError(SerializerError):
    """The serializer's ``decode`` raised (reason ``serializer_failed``)."""


def schema_id(name: str | bytes) -> int:
    """The frame ``schema_id`` of a type name: ``xxh3_64`` of its UTF-8 bytes.

    >>> schema_id("geo.Point") == schema_id(b"geo.Point")
    True
    """
    raw = name.encode("utf-8") if isinstance(name, str) else name
    return xxhash.xxh3_64_intdigest(raw)


@dataclass(frozen=True)
class Serializer:
    """One registration: ``cls`` travels as type ``name`` (``name_bytes`` in UTF-8,
    ``schema_id`` its hash), written in ``version``; payloads of any version in
    ``reads`` (which holds ``version``) are decoded."""

    cls: type
    name: str
    version: int
    reads: frozenset[int]
    encode: Callable[[Any], Any]
    decode: Callable[[bytes, int], Any]
    name_bytes: bytes
    schema_id: int

    def __repr__(self) -> str:
        return (
            f"Serializer({self.cls.__module__}.{self.cls.__qualname__} as {self.name!r}, "
            f"version={self.version}, reads={sorted(self.reads)})"
        )


_lock = threading.Lock()
_by_type: dict[type, Serializer] = {}
_by_name: dict[str, Serializer] = {}
#: type -> serializer found by the MRO walk (None: none); cleared on every change.
_resolved: dict[type, Serializer | None] = {}


def _check_version(value: Any, what: str) -> int:
    if type(value) is not int or not 1 <= value <= MAX_VERSION:
        raise ValueError(f"{what} must be an int in 1..{MAX_VERSION}, got {value!r}")
    return value


def register(
    cls: type,
    name: str,
    *,
    version: int = 1,
    reads: Iterable[int] | None = None,
    encode: Callable[[Any], Any],
    decode: Callable[[bytes, int], Any],
) -> Serializer:
    """Register a serializer for ``cls`` under the type ``name``; return the registration.

    ``name``: a ``str`` of 1 to 255 UTF-8 bytes, the same on both sides. ``version``:
    the version written (1..2**32-1). ``reads``: the versions ``decode`` accepts
    besides ``version`` (default: ``version`` only). ``encode(value)`` returns a
    bytes-like object; ``decode(data, version)`` gets ``bytes`` and the version the
    payload was written in.

    Registering ``cls`` again replaces its serializer (and frees its old name). A name
    held by another class is a ``ValueError`` unless that class has the same module and
    qualified name (a reloaded module): unregister it first. The types of SPEC §10
    (``int``, ``str``, ``list``, ``dict``, ``Atom``, ``object``...) cannot be registered:
    their wire form is fixed. A serializer of a class applies to its subclasses too.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register needs a class, got {cls!r:.100}")
    if cls in _BUILTIN:
        raise ValueError(f"{cls.__name__} already has a fixed form on the wire (SPEC §10); "
                         "register a class of your own")  # fmt: skip
    if not isinstance(name, str):
        raise TypeError(f"a type name is a str, got {type(name).__name__}")
    try:
        name_bytes = name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"type name {name!r:.100} is not valid UTF-8") from None
    if not 1 <= len(name_bytes) <= MAX_NAME_BYTES:
        raise ValueError(f"a type name has 1 to {MAX_NAME_BYTES} UTF-8 bytes, "
                         f"{name!r:.100} has {len(name_bytes)}")  # fmt: skip
    _check_version(version, "version")
    readable = {version, *(_check_version(v, "each of reads") for v in (reads or ()))}
    if not callable(encode) or not callable(decode):
        raise TypeError("encode and decode must be callables")
    serializer = Serializer(
        cls, name, version, frozenset(readable), encode, decode, name_bytes, schema_id(name_bytes)
    )
    with _lock:
        holder = _by_name.get(name)
        if holder is not None and holder.cls is not cls:
            same = (holder.cls.__module__, holder.cls.__qualname__) == (
                cls.__module__, cls.__qualname__)  # fmt: skip
            if not same:
                raise ValueError(f"type name {name!r} is already registered for "
                                 f"{holder.cls.__module__}.{holder.cls.__qualname__}; "
                                 "unregister it first")  # fmt: skip
            del _by_type[holder.cls]
        old = _by_type.get(cls)
        if old is not None:
            del _by_name[old.name]
        _by_type[cls] = serializer
        _by_name[name] = serializer
        _resolved.clear()
    return serializer


def unregister(key: type | str) -> Serializer | None:
    """Remove the serializer of a class or of a type name; return it (``None`` if none).

    >>> unregister("no.such.Type") is None
    True
    """
    with _lock:
        serializer = _by_name.get(key) if isinstance(key, str) else _by_type.get(key)
        if serializer is None:
            return None
        del _by_type[serializer.cls]
        del _by_name[serializer.name]
        _resolved.clear()
        return serializer


def lookup(cls: type) -> Serializer | None:
    """The serializer that applies to values of class ``cls``: its own, else that of the
    first base class in MRO order that has one; ``None`` when none does."""
    try:
        return _resolved[cls]
    except KeyError:
        pass
    with _lock:
        found = next((_by_type[c] for c in cls.__mro__ if c in _by_type), None)
        _resolved[cls] = found
    return found


def lookup_name(name: str | bytes) -> Serializer | None:
    """The serializer registered under a type name (``str`` or UTF-8 ``bytes``), or ``None``."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return _by_name.get(name)


def registered() -> dict[str, Serializer]:
    """Every registration, by type name (a copy).

    >>> isinstance(registered(), dict)
    True
    """
    with _lock:
        return dict(_by_name)


def has_serializers() -> bool:
    """Whether any serializer is registered (the encoder's fast path when there is none)."""
    return bool(_by_type)


def encode_value(serializer: Serializer, value: Any) -> memoryview:
    """``serializer.encode(value)`` as a flat byte view. Whatever the serializer raises
    is raised; a result that is not bytes-like is a ``TypeError`` (the caller falls back
    to the value's standard form)."""
    data = serializer.encode(value)
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"the encoder of custom type {serializer.name!r} returned a "
            f"{type(data).__name__}, not a bytes-like object"
        ) from None
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def decode_payload(name: Any, version: Any, data: bytes) -> Any:
    """The value of a custom payload (custom.md "Reading"), or a `SerializerError`:
    `UnknownTypeError`, `UnsupportedVersionError`, `SerializerFailedError`.

    >>> decode_payload(b"no.such.Type", 1, b"")
    Traceback (most recent call last):
    ...
    beambridge.serializers.UnknownTypeError: unknown_type: no serializer is registered ...
    """
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    serializer = lookup_name(name)
    if serializer is None:
        raise UnknownTypeError(
            "unknown_type",
            "name",
            text,
            None,
            f"unknown_type: no serializer is registered for custom type {text!r} (version "
            f"{version}) in this worker; register one with "
            f"beambridge.serializers.register(cls, {text!r}, version=..., reads=..., "
            "encode=..., decode=...) in the handler's module (or a module it imports)",
        )
    if version not in serializer.reads:
        raise UnsupportedVersionError(
            "unsupported_version",
            "version",
            version,
            sorted(serializer.reads),
            f"unsupported_version: custom type {text!r} was written in version {version}; "
            f"the registered serializer (version {serializer.version}) reads versions "
            f"{sorted(serializer.reads)}; register a serializer whose reads include {version}",
        )
    try:
        return serializer.decode(data, version)
    except Exception as exc:
        raise SerializerFailedError(
            "serializer_failed",
            "data",
            text,
            None,
            f"serializer_failed: the decoder of custom type {text!r} (version {version}) "
            f"raised {_type_name(exc)}: {exc}",
        ) from exc


def _type_name(exc: BaseException) -> str:
    kind = type(exc)
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"
