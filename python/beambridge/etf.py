"""The External Term Format codec of the control channel (protocol/SPEC.md §7.2, §8).

`decode` accepts only the tags §7.2 allows and refuses everything else with `EtfError`
(never another exception, never an allocation the frame cannot justify); `encode` turns
the Python values of §8 into ETF and refuses every other type with ``TypeError``.

>>> encode((Atom("ok"), 1))
b'\\x83h\\x02w\\x02oka\\x01'
>>> decode(encode({Atom("a"): [1, -2**70], b"k": (True, 3.0)}))
{Atom('a'): [1, -1180591620717411303424], b'k': (True, 3.0)}
>>> decode(b"\\x83l\\xff\\xff\\xff\\xffj")
Traceback (most recent call last):
...
beambridge.errors.EtfError: bad_term: LIST at offset 1 claims 4294967295 elements but only ...
"""

from __future__ import annotations

import math
import struct
from typing import Any

from .errors import EtfError

__all__ = [
    "MAX_ATOM_CHARS",
    "MAX_BIG_BYTES",
    "MAX_DEPTH",
    "VERSION",
    "Atom",
    "Encoder",
    "decode",
    "encode",
    "encode_binary",
    "encode_int",
    "encode_parts",
]

VERSION = 131
#: Deepest nesting of lists, tuples and maps either side accepts (§7.2).
MAX_DEPTH = 512
#: Most digit bytes of a LARGE_BIG either side accepts (§7.2: 8 KiB).
MAX_BIG_BYTES = 8192
#: The BEAM's limit on an atom's length, in characters.
MAX_ATOM_CHARS = 255

SMALL_INTEGER = 97
INTEGER = 98
NEW_FLOAT = 70
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119
ATOM = 100
SMALL_ATOM = 115
SMALL_TUPLE = 104
LARGE_TUPLE = 105
MAP = 116
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
LARGE_BIG = 111

_TAG_NAMES = {
    SMALL_INTEGER: "SMALL_INTEGER", INTEGER: "INTEGER", NEW_FLOAT: "NEW_FLOAT",
    ATOM_UTF8: "ATOM_UTF8", SMALL_ATOM_UTF8: "SMALL_ATOM_UTF8", ATOM: "ATOM",
    SMALL_ATOM: "SMALL_ATOM", SMALL_TUPLE: "SMALL_TUPLE", LARGE_TUPLE: "LARGE_TUPLE",
    MAP: "MAP", NIL: "NIL", STRING: "STRING", LIST: "LIST", BINARY: "BINARY",
    SMALL_BIG: "SMALL_BIG", LARGE_BIG: "LARGE_BIG",
    # refused, named for the message
    77: "BIT_BINARY", 99: "FLOAT", 80: "COMPRESSED", 88: "NEW_PID", 103: "PID",
    89: "NEW_PORT", 102: "PORT", 120: "V4_PORT", 90: "NEWER_REFERENCE", 114: "NEW_REFERENCE",
    101: "REFERENCE", 112: "NEW_FUN", 113: "EXPORT", 117: "FUN", 82: "ATOM_CACHE_REF",
    68: "DIST_HEADER", 121: "LOCAL",
}  # fmt: skip

_u16 = struct.Struct(">H")
_u32 = struct.Struct(">I")
_i32 = struct.Struct(">i")
_f64 = struct.Struct(">d")


class Atom(str):
    """An Erlang atom other than ``true``, ``false`` and ``nil`` (which are Python's
    ``True``, ``False`` and ``None``). A ``str`` subclass: ``Atom("ok") == "ok"``.

    A Python ``str`` travels as a binary; wrap it in `Atom` to send an atom, which the
    BEAM accepts only when it already exists there.

    >>> Atom("ok"), Atom("ok") == "ok", isinstance(Atom("ok"), str)
    (Atom('ok'), True, True)
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"


_SPECIAL_ATOMS: dict[str, Any] = {"true": True, "false": False, "nil": None}
_atom_cache: dict[bytes, Any] = {}  # UTF-8 bytes -> value
_latin1_cache: dict[bytes, Any] = {}  # Latin-1 bytes -> value
_MISSING = object()
_ATOM_CACHE_MAX = 4096


def _fail(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


def _name(tag: int) -> str:
    return _TAG_NAMES.get(tag, f"tag {tag}")


# ---- decoding ----------------------------------------------------------------------------


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
                f"{_name(tag)} at offset {at} needs {n} more bytes but only "
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
            self.count(n, 1, pos, _name(tag), at)
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
                    f"{_name(buf[pos]) if pos < self.end else 'missing'}, not NIL); only "
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
                raise _fail("float", value, f"NEW_FLOAT at offset {at} is {value}, "
                            "which Erlang floats cannot be")  # fmt: skip
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
                raise _fail("sign", sign, f"{_name(tag)} at offset {at} has sign byte {sign}")
            self.need(pos, n, tag, at)
            magnitude = int.from_bytes(buf[pos : pos + n], "little")
            return (-magnitude if sign else magnitude), pos + n
        raise _fail(
            "tag",
            tag,
            f"{_name(tag)} ({tag}) at offset {at} is not allowed on the control channel "
            "(§7.2: no funs, pids, ports, references, bit-strings, compressed terms)",
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
            raise _fail("atom", raw, f"{_name(tag)} at offset {at} is not valid UTF-8") from None
        if len(text) > MAX_ATOM_CHARS:
            raise _fail("atom", len(text), f"{_name(tag)} at offset {at} has {len(text)} "
                        f"characters, more than an atom's {MAX_ATOM_CHARS}")  # fmt: skip
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
    ``list``/``tuple``/``dict``. Anything outside §7.2, any length running past the
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


# ---- encoding ----------------------------------------------------------------------------

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
                f"at most {MAX_BIG_BYTES} bytes of digits (§7.2)"
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
    binaries and arrays as slice handles; ``other`` is the hook for types outside §8.
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
        """Values whose exact type is not one of §8's: subclasses of them, or an error."""
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
    """Encode ``value`` (§8 types) as ETF with version byte 131.

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
