"""The decoder of the External Term Format (protocol/SPEC.md §8.2): `decode` accepts
only the tags §8.2 allows and refuses everything else with `beambridge.errors.EtfError`
(never another exception, never an allocation the frame cannot justify).

>>> decode(b"\\x83h\\x02w\\x02oka\\x01")
(Atom('ok'), 1)
>>> decode(b"\\x83l\\xff\\xff\\xff\\xffj")
Traceback (most recent call last):
...
beambridge.errors.EtfError: bad_term: LIST at offset 1 claims 4294967295 elements but only ...
"""

from __future__ import annotations

import math
import struct
from typing import Any

from ..errors import EtfError
from .atom import Atom
from .tags import (
    ATOM,
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
    NIL,
    SMALL_ATOM,
    SMALL_ATOM_UTF8,
    SMALL_BIG,
    SMALL_INTEGER,
    SMALL_TUPLE,
    STRING,
    VERSION,
    tag_name,
)

__all__ = ["NOT_CACHED", "cached_atom", "decode"]

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_i32 = struct.Struct(">i")
_f64 = struct.Struct(">d")

_SPECIAL_ATOMS: dict[str, Any] = {"true": True, "false": False, "nil": None}
_atom_cache: dict[bytes, Any] = {}  # UTF-8 bytes -> value
_latin1_cache: dict[bytes, Any] = {}  # Latin-1 bytes -> value
_MISSING = object()
_ATOM_CACHE_MAX = 4096
#: What `cached_atom` returns for an atom no decode has met yet.
NOT_CACHED = _MISSING


def cached_atom(raw: bytes, utf8: bool) -> Any:
    """The value of an atom whose text is ``raw`` (UTF-8, or Latin-1 when not ``utf8``)
    if `decode` has met it before (so it is known valid), else `NOT_CACHED`. Readers
    of fixed-shape frames use it to skip the decoder for atoms they see on every
    frame."""
    return (_atom_cache if utf8 else _latin1_cache).get(raw, _MISSING)


def _fail(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


class _Decoder:
    __slots__ = ("buf", "end", "max_depth")

    def __init__(self, buf: bytes, max_depth: int) -> None:
        self.buf = buf
        self.end = len(buf)
        self.max_depth = max_depth

    def need(self, pos: int, n: int, tag: int, at: int) -> None:
        if pos + n > self.end:
            raise _fail(
                "length",
                at,
                f"{tag_name(tag)} at offset {at} needs {n} more bytes but only "
                f"{self.end - pos} follow (truncated frame)",
            )

    def term(self, pos: int, depth: int) -> tuple[Any, int]:
        buf = self.buf
        if pos >= self.end:
            raise _fail("length", pos, f"frame ends at offset {pos} where a term should start")
        tag = buf[pos]
        at = pos
        pos += 1
        if tag == SMALL_INTEGER:
            if pos >= self.end:
                self.need(pos, 1, SMALL_INTEGER, at)
            return buf[pos], pos + 1
        if tag in (SMALL_TUPLE, LARGE_TUPLE):
            if tag == SMALL_TUPLE:
                self.need(pos, 1, SMALL_TUPLE, at)
                n = buf[pos]
                pos += 1
            else:
                self.need(pos, 4, LARGE_TUPLE, at)
                n = _u32.unpack_from(buf, pos)[0]
                pos += 4
            self.count(n, 1, pos, tag_name(tag), at)
            depth = self.deeper(depth, at)
            items = []
            for _ in range(n):
                item, pos = self.term(pos, depth)
                items.append(item)
            return tuple(items), pos
        if tag == SMALL_ATOM_UTF8 or tag == ATOM or tag == ATOM_UTF8 or tag == SMALL_ATOM:  # noqa: SIM109
            return self.atom(tag, pos, at)
        if tag == BINARY:
            self.need(pos, 4, BINARY, at)
            n = _u32.unpack_from(buf, pos)[0]
            pos += 4
            self.need(pos, n, BINARY, at)
            return buf[pos : pos + n], pos + n
        if tag == NIL:
            return [], pos
        if tag == LIST:
            self.need(pos, 4, LIST, at)
            n = _u32.unpack_from(buf, pos)[0]
            pos += 4
            # every element takes at least one byte, and the tail (NIL) one more
            self.count(n, 1, pos, "LIST", at, extra=1)
            depth = self.deeper(depth, at)
            items = []
            for _ in range(n):
                item, pos = self.term(pos, depth)
                items.append(item)
            if pos >= self.end or buf[pos] != NIL:
                raise _fail(
                    "tail",
                    pos,
                    f"LIST at offset {at} is improper (its tail at offset {pos} is "
                    f"{tag_name(buf[pos]) if pos < self.end else 'missing'}, not NIL); only "
                    "proper lists are accepted",
                )
            return items, pos + 1
        if tag == INTEGER:
            self.need(pos, 4, INTEGER, at)
            return _i32.unpack_from(buf, pos)[0], pos + 4
        if tag == NEW_FLOAT:
            self.need(pos, 8, NEW_FLOAT, at)
            value = _f64.unpack_from(buf, pos)[0]
            if not math.isfinite(value):
                raise _fail(
                    "float",
                    value,
                    f"NEW_FLOAT at offset {at} is {value}, which Erlang floats cannot be",
                )
            return value, pos + 8
        if tag == MAP:
            self.need(pos, 4, MAP, at)
            n = _u32.unpack_from(buf, pos)[0]
            pos += 4
            self.count(n, 2, pos, "MAP", at)
            depth = self.deeper(depth, at)
            result: dict[Any, Any] = {}
            for _ in range(n):
                key_at = pos
                key, pos = self.term(pos, depth)
                value, pos = self.term(pos, depth)
                try:
                    result[key] = value
                except TypeError:
                    raise _fail(
                        "map_key",
                        key_at,
                        f"MAP at offset {at} has a key at offset {key_at} of type "
                        f"{type(key).__name__}, which cannot be a Python dict key",
                    ) from None
            if len(result) != n:
                raise _fail(
                    "map_key",
                    at,
                    f"MAP at offset {at} has {n} keys but only {len(result)} are distinct "
                    "in Python (1, 1.0 and true are equal keys in Python, not in Erlang)",
                )
            return result, pos
        if tag == STRING:
            self.need(pos, 2, STRING, at)
            n = _u16.unpack_from(buf, pos)[0]
            pos += 2
            self.need(pos, n, STRING, at)
            return list(buf[pos : pos + n]), pos + n
        if tag in (SMALL_BIG, LARGE_BIG):
            if tag == SMALL_BIG:
                self.need(pos, 2, SMALL_BIG, at)
                n = buf[pos]
                pos += 1
            else:
                self.need(pos, 5, LARGE_BIG, at)
                n = _u32.unpack_from(buf, pos)[0]
                pos += 4
                if n > MAX_BIG_BYTES:
                    raise EtfError(
                        "bad_term",
                        "big_length",
                        n,
                        MAX_BIG_BYTES,
                        f"bad_term: LARGE_BIG at offset {at} has {n} bytes of digits, more "
                        f"than the {MAX_BIG_BYTES} allowed",
                    )
            sign = buf[pos]
            pos += 1
            if sign > 1:
                raise _fail("sign", sign, f"{tag_name(tag)} at offset {at} has sign byte {sign}")
            self.need(pos, n, tag, at)
            magnitude = int.from_bytes(buf[pos : pos + n], "little")
            return (-magnitude if sign else magnitude), pos + n
        raise _fail(
            "tag",
            tag,
            f"{tag_name(tag)} ({tag}) at offset {at} is not allowed on the control channel "
            "(§8.2: no funs, pids, ports, references, bit-strings, compressed terms)",
        )

    def atom(self, tag: int, pos: int, at: int) -> tuple[Any, int]:
        buf = self.buf
        if tag == SMALL_ATOM_UTF8 or tag == SMALL_ATOM:  # noqa: SIM109 (no tuple per call)
            if pos >= self.end:
                self.need(pos, 1, tag, at)
            n = buf[pos]
            pos += 1
        else:
            self.need(pos, 2, tag, at)
            n = _u16.unpack_from(buf, pos)[0]
            pos += 2
        end = pos + n
        if end > self.end:
            self.need(pos, n, tag, at)
        utf8 = tag in (SMALL_ATOM_UTF8, ATOM_UTF8)
        cache = _atom_cache if utf8 else _latin1_cache
        raw = buf[pos:end]
        value = cache.get(raw, _MISSING)
        if value is not _MISSING:
            return value, end
        try:
            text = raw.decode("utf-8") if utf8 else raw.decode("latin-1")
        except UnicodeDecodeError:
            raise _fail("atom", raw, f"{tag_name(tag)} at offset {at} is not valid UTF-8") from None
        if len(text) > MAX_ATOM_CHARS:
            raise _fail(
                "atom",
                len(text),
                f"{tag_name(tag)} at offset {at} has {len(text)} characters, more than an "
                f"atom's {MAX_ATOM_CHARS}",
            )
        value = _SPECIAL_ATOMS[text] if text in _SPECIAL_ATOMS else Atom(text)
        if len(cache) >= _ATOM_CACHE_MAX:
            cache.clear()
        cache[raw] = value
        return value, end

    def count(self, n: int, each: int, pos: int, what: str, at: int, extra: int = 0) -> None:
        # checked before anything is allocated: a header cannot claim more elements than
        # the bytes left could hold
        left = self.end - pos
        if n * each + extra > left:
            raise EtfError(
                "bad_term",
                "length",
                n,
                max(0, (left - extra) // each),
                f"bad_term: {what} at offset {at} claims {n} elements but only {left} bytes follow",
            )

    def deeper(self, depth: int, at: int) -> int:
        if depth >= self.max_depth:
            raise EtfError(
                "bad_term",
                "depth",
                depth + 1,
                self.max_depth,
                f"bad_term: the term at offset {at} nests deeper than {self.max_depth} levels",
            )
        return depth + 1


def decode(data: bytes | bytearray | memoryview, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one ETF term (version byte 131 first) that fills ``data`` exactly.

    Atoms become `Atom` (``true``/``false``/``nil``: ``True``/``False``/``None``),
    binaries ``bytes`` (copies), STRING a list of ints, lists/tuples/maps
    ``list``/``tuple``/``dict``. Anything outside §8.2, any length running past the
    frame, nesting deeper than ``max_depth``, trailing bytes, and map keys Python cannot
    hold apart raise `EtfError` (reason ``bad_term``) and nothing else.

    >>> decode(b"\\x83h\\x02w\\x02okk\\x00\\x02\\x01\\x02")
    (Atom('ok'), [1, 2])
    """
    buf = data if type(data) is bytes else bytes(data)
    if not buf or buf[0] != VERSION:
        raise EtfError(
            "bad_term",
            "version",
            buf[0] if buf else None,
            VERSION,
            "bad_term: an ETF term starts with version byte 131"
            + (f", this one with {buf[0]}" if buf else ", this frame is empty"),
        )
    decoder = _Decoder(buf, max_depth)
    try:
        value, pos = decoder.term(1, 0)
    except EtfError:
        raise
    except IndexError:
        raise _fail("length", len(buf), "the frame ends inside a term (truncated)") from None
    except RecursionError:
        raise _fail("depth", None, "the term nests deeper than Python's stack allows") from None
    except (ValueError, TypeError, OverflowError, MemoryError, struct.error) as exc:
        raise _fail("term", None, f"cannot decode: {exc}") from None
    if pos != len(buf):
        raise _fail("length", pos, f"{len(buf) - pos} bytes follow the term at offset {pos}")
    return value
