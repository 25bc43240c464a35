"""The encoder of the External Term Format (protocol/SPEC.md §8.2, §10): `encode` turns
the Python values of §10 into ETF and refuses every other type with ``TypeError``;
`Encoder` is the class behind it, which `beambridge.encoder` extends.

>>> encode((Atom("ok"), 1))
b'\\x83h\\x02w\\x02oka\\x01'
>>> encode_parts([b"big"])
[b'\\x83', b'l\\x00\\x00\\x00\\x01', b'm\\x00\\x00\\x00\\x03', b'big', b'j']
"""

from __future__ import annotations

import math
import struct
from typing import Any

from .atom import Atom
from .tags import (
    ATOM_UTF8,
    BINARY,
    INTEGER,
    LARGE_BIG,
    LARGE_TUPLE,
    LIST,
    MAP,
    MAX_ATOM_CHARS,
    MAX_BIG_BYTES,
    MAX_DEPTH,
    NEW_FLOAT,
    SMALL_ATOM_UTF8,
    SMALL_BIG,
    SMALL_INTEGER,
    SMALL_TUPLE,
    STRING,
    VERSION,
)

__all__ = ["Encoder", "encode", "encode_binary", "encode_int", "encode_parts"]

_TRUE = b"w\x04true"
_FALSE = b"w\x05false"
_NIL_ATOM = b"w\x03nil"
_SMALL_INTS = [bytes((SMALL_INTEGER, i)) for i in range(256)]
_pack_i32 = struct.Struct(">bi").pack
_pack_f64 = struct.Struct(">bd").pack
_pack_u32 = struct.Struct(">BI").pack
_MAX_U32 = 2**32 - 1


def encode_int(v: int, parts: list[Any]) -> None:
    """Append the INTEGER / SMALL_BIG / LARGE_BIG of ``v`` (``ValueError`` past 8 KiB of
    digits)."""
    if 0 <= v <= 255:
        parts.append(_SMALL_INTS[v])
    elif -(2**31) <= v < 2**31:
        parts.append(_pack_i32(INTEGER, v))
    else:
        magnitude = -v if v < 0 else v
        n = (magnitude.bit_length() + 7) // 8
        digits = magnitude.to_bytes(n, "little")
        if n <= 255:
            parts.append(bytes((SMALL_BIG, n, v < 0)))
        elif n <= MAX_BIG_BYTES:
            parts.append(_pack_u32(LARGE_BIG, n) + bytes((v < 0,)))
        else:
            raise ValueError(
                f"cannot send an int of {n} bytes to Elixir: the control channel carries "
                f"at most {MAX_BIG_BYTES} bytes of digits (§8.2)"
            )
        parts.append(digits)


def _encode_atom(text: str, parts: list[Any]) -> None:
    if len(text) > MAX_ATOM_CHARS:
        raise ValueError(
            f"cannot send an Atom of {len(text)} characters to Elixir: atoms have at most "
            f"{MAX_ATOM_CHARS}"
        )
    raw = text.encode("utf-8")
    n = len(raw)
    parts.append(bytes((SMALL_ATOM_UTF8, n)) if n <= 255 else bytes((ATOM_UTF8, n >> 8, n & 255)))
    parts.append(raw)


def _encode_float(v: float, parts: list[Any]) -> None:
    if not math.isfinite(v):
        raise ValueError(f"cannot send the float {v} to Elixir: ETF has no NaN or infinity")
    parts.append(_pack_f64(NEW_FLOAT, v))


def encode_binary(data: Any, parts: list[Any]) -> None:
    """Append a BINARY of the bytes-like ``data`` (no copy: the part is ``data``)."""
    if type(data) is not bytes:
        view = memoryview(data)
        data = view.cast("B") if view.c_contiguous else view.tobytes()
    n = len(data)
    if n > _MAX_U32:
        raise ValueError(f"cannot send a binary of {n} bytes in ETF (at most 4 GiB - 1)")
    parts.append(_pack_u32(BINARY, n))
    parts.append(data)


class Encoder:
    """The encoder behind `encode`. `beambridge.encoder` subclasses it to send large
    binaries and arrays as slice handles; ``other`` is the hook for types outside §10.
    """

    def encode_into(self, v: Any, parts: list[Any], depth: int = 0) -> None:
        """Append the ETF of ``v`` (without the version byte) to ``parts``."""
        t = type(v)
        if t is int:
            encode_int(v, parts)
        elif t is Atom:
            _encode_atom(v, parts)
        elif t is bytes:
            self.binary(v, parts)
        elif t is tuple:
            n = len(v)
            parts.append(bytes((SMALL_TUPLE, n)) if n <= 255 else _pack_u32(LARGE_TUPLE, n))
            if n:
                depth = self.deeper(depth)
                for item in v:
                    self.encode_into(item, parts, depth)
        elif t is list:
            if self.hooks and self.list_hook(v, parts, depth):
                return
            if 0 < len(v) <= 0xFFFF and _all_bytes(v):
                # a list of small integers: one byte each (STRING_EXT), as Erlang's own
                # term_to_binary writes it; the BEAM reads back the same list
                parts.append(bytes((STRING,)) + len(v).to_bytes(2, "big") + bytes(v))
                return
            if v:
                depth = self.deeper(depth)
                parts.append(_pack_u32(LIST, len(v)))
                for item in v:
                    self.encode_into(item, parts, depth)
            parts.append(b"j")
        elif t is float:
            _encode_float(v, parts)
        elif v is True:
            parts.append(_TRUE)
        elif v is False:
            parts.append(_FALSE)
        elif v is None:
            parts.append(_NIL_ATOM)
        elif t is str:
            encode_binary(v.encode("utf-8"), parts)
        elif t is dict:
            if self.hooks and self.dict_hook(v, parts, depth):
                return
            depth = self.deeper(depth)
            parts.append(_pack_u32(MAP, len(v)))
            for key, value in v.items():
                self.encode_into(key, parts, depth)
                self.encode_into(value, parts, depth)
        else:
            self.other(v, parts, depth)

    #: Whether `list_hook` and `dict_hook` are called (a subclass that overrides them
    #: sets it; the plain encoder pays one attribute check per list or dict).
    hooks = False

    def list_hook(self, v: list[Any], parts: list[Any], depth: int) -> bool:
        """Encode ``v`` some other way and return True, or return False for ETF.
        (`beambridge.encoder` sends some lists packed; the hook returns before the
        items are encoded, so nesting costs one stack frame per level either way.)"""
        return False

    def dict_hook(self, v: dict[Any, Any], parts: list[Any], depth: int) -> bool:
        """As `list_hook`, for a ``dict`` (`beambridge.encoder`: records)."""
        return False

    def binary(self, v: Any, parts: list[Any]) -> None:
        """bytes, bytearray and memoryview go here."""
        encode_binary(v, parts)

    def other(self, v: Any, parts: list[Any], depth: int) -> None:
        """Values whose exact type is not one of §10's: subclasses of them, or an error."""
        if isinstance(v, bool):
            parts.append(_TRUE if v else _FALSE)
        elif isinstance(v, int):
            encode_int(int(v), parts)
        elif isinstance(v, float):
            _encode_float(float(v), parts)
        elif isinstance(v, Atom):
            _encode_atom(v, parts)
        elif isinstance(v, str):
            encode_binary(str.encode(v, "utf-8"), parts)
        elif isinstance(v, (bytes, bytearray, memoryview)):
            self.binary(v, parts)
        elif isinstance(v, tuple):
            self.encode_into(tuple(v), parts, depth)
        elif isinstance(v, list):
            self.encode_into(list(v), parts, depth)
        elif isinstance(v, dict):
            self.encode_into(dict(v), parts, depth)
        else:
            raise TypeError(f"cannot send {type(v)} to Elixir")

    def deeper(self, depth: int) -> int:
        if depth >= MAX_DEPTH:
            raise ValueError(
                f"cannot send a value nested deeper than {MAX_DEPTH} levels to Elixir "
                "(or a list, tuple or dict that contains itself)"
            )
        return depth + 1


_ENCODER = Encoder()
_VERSION_PART = bytes((VERSION,))


def _all_bytes(items: list[Any]) -> bool:
    """Every item an ``int`` (not a ``bool``) in 0..255."""
    return all(type(x) is int and 0 <= x <= 255 for x in items)


def encode_parts(value: Any, encoder: Encoder = _ENCODER) -> list[Any]:
    """The ETF of ``value`` as a list of bytes-like parts (version byte first), for
    writers that want to avoid joining big binaries into one buffer."""
    parts: list[Any] = [_VERSION_PART]
    encoder.encode_into(value, parts)
    return parts


def encode(value: Any) -> bytes:
    """Encode ``value`` (§10 types) as ETF with version byte 131.

    ``int`` of any size up to 8 KiB of digits, finite ``float``, ``bool``, ``None``
    (``nil``), `Atom`, ``str`` (a UTF-8 binary), ``bytes``/``bytearray``/``memoryview``
    (a binary), ``list``, ``tuple``, ``dict``. Other types raise ``TypeError`` naming the
    type; NaN, infinity, too-long atoms, too-big ints and nesting past 512 levels raise
    ``ValueError``.

    >>> encode(1), encode("é")
    (b'\\x83a\\x01', b'\\x83m\\x00\\x00\\x00\\x02\\xc3\\xa9')
    >>> encode({1, 2})
    Traceback (most recent call last):
    ...
    TypeError: cannot send <class 'set'> to Elixir
    """
    return b"".join(encode_parts(value))
