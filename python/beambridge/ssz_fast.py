"""The fast paths of compiled container codecs (`beambridge.ssz`).

A container's exact codec checks each field through its type and names the field
path of what is wrong; it pays for that on every value (a call per field, a path
string per field). The fast codec generated here does the common case in one
function: numbers, booleans, strings, bytes and lists of integers inline, with no
path at all, and anything else through the field's own codec. Whenever it meets
something it does not take as it is (a value to check or convert, bad bytes), it
gives up and the exact codec does the whole value again, so the result, and every
error, is the exact codec's.

>>> from dataclasses import dataclass
>>> from beambridge.ssz import schema, to_ssz, from_ssz
>>> from beambridge.types import String, List, uint16, float32
>>> @schema("example.Fast", version="1.0")
... @dataclass
... class Fast:
...     name: String
...     loss: float32
...     layers: List[uint16, 4]
>>> from_ssz(Fast, to_ssz(Fast("a", 1, [2])))
Fast(name='a', loss=1.0, layers=[2])
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from typing import Any

from .types import FLOAT32_MAX, Boolean, BytesType, Float, Int, ListType, StringType, UInt

__all__ = ["fast_container"]

Enc = Callable[[Any, str], bytes]
Dec = Callable[[memoryview, str], Any]

#: Lists of integers are read as a cast of the bytes on a little-endian host.
_LITTLE = sys.byteorder == "little"


class _Slow(Exception):
    """The fast path leaves this value to the exact codec."""


def fast_container(t: Any, exact_enc: Enc, exact_dec: Dec) -> tuple[Enc, Dec]:
    """The (encode, decode) pair of container ``t``: the fast path, falling back on
    ``exact_enc`` / ``exact_dec`` for the whole value."""
    from .ssz import codec

    env: dict[str, Any] = {"Slow": _Slow, "cls": t.cls, "pack": struct.pack, "INT": {int}}
    fmt, pos = ["<"], 0
    enc: list[str] = []
    dec: list[str] = []
    slots: list[str] = []
    var_fields: list[int] = []
    for i, (name, ft, _default) in enumerate(t.fields):
        env[f"e{i}"], env[f"d{i}"] = codec(ft)
        enc.append(f"    x{i} = v.{name}")
        code = getattr(ft, "code", None)
        if code is not None:
            fmt.append(code)
            slots.append(f"f{i}")
            enc.append(f"    if {_unfit(ft, f'x{i}', env, i)}:")
            enc.append("        raise Slow")
            if isinstance(ft, Boolean):
                dec.append(f"    if b[{pos}] > 1:")
                dec.append("        raise Slow")
            elif isinstance(ft, Float):
                dec.append(f"    if f{i} - f{i} != 0.0:")  # NaN or an infinity
                dec.append("        raise Slow")
            pos += ft.fixed_size
        elif ft.fixed_size is not None:  # fixed-size composite: its own codec
            fmt.append(f"{ft.fixed_size}s")
            slots.append(f"r{i}")
            enc.append(f"    x{i} = e{i}(x{i}, '')")
            dec.append(f"    f{i} = d{i}(memoryview(r{i}), '')")
            pos += ft.fixed_size
        else:
            fmt.append("I")
            slots.append(f"o{i}")
            var_fields.append(i)
            enc.extend(_var_enc(ft, i, env))
            pos += 4
    s = struct.Struct("".join(fmt))
    env["S"], env["FIXED"] = s, s.size
    for k, i in enumerate(var_fields):  # x: the offset now, v: the bytes
        before = var_fields[k - 1] if k else None
        at = "FIXED" if before is None else f"x{before} + len(v{before})"
        enc.append(f"    x{i}, v{i} = {at}, x{i}")
    args = ", ".join(f"x{i}" for i in range(len(t.fields)))
    tail = " + ".join([f"S.pack({args})"] + [f"v{i}" for i in var_fields])
    enc_src = ["def fast_enc(v):", *enc, f"    return {tail}"]

    dec_src = ["def fast_dec(b):"]
    if slots:
        dec_src.append(f"    {', '.join(slots)}, = S.unpack_from(b)")
    dec_src.extend(dec)
    if var_fields:
        first = var_fields[0]
        dec_src.append(f"    if o{first} != FIXED:")
        dec_src.append("        raise Slow")
        for k, i in enumerate(var_fields):
            end = f"o{var_fields[k + 1]}" if k + 1 < len(var_fields) else "len(b)"
            dec_src.append(f"    if not o{i} <= {end} <= len(b):")
            dec_src.append("        raise Slow")
            dec_src.extend(_var_dec(t.fields[i][1], i, f"b[o{i}:{end}]", env))
    else:
        dec_src.append("    if len(b) != FIXED:")
        dec_src.append("        raise Slow")
    dec_src.append(f"    return cls({', '.join(f'f{i}' for i in range(len(t.fields)))})")

    namespace: dict[str, Any] = {}
    exec("\n".join(enc_src) + "\n", env, namespace)
    exec("\n".join(dec_src) + "\n", env, namespace)
    fast_enc, fast_dec = namespace["fast_enc"], namespace["fast_dec"]

    def encode(v: Any, p: str) -> bytes:
        try:
            return fast_enc(v)  # type: ignore[no-any-return]
        except Exception:  # anything unusual: the exact codec checks and names it
            return exact_enc(v, p)

    def decode(b: memoryview, p: str) -> Any:
        try:
            return fast_dec(b)
        except Exception:
            return exact_dec(b, p)

    return encode, decode


def _unfit(ft: Any, x: str, env: dict[str, Any], i: int) -> str:
    """A test that is true when ``x`` is not a value of number type ``ft`` as it is."""
    if isinstance(ft, Boolean):
        return f"{x}.__class__ is not bool"
    if isinstance(ft, Float):
        limit = FLOAT32_MAX if ft.bits == 32 else sys.float_info.max
        env[f"M{i}"] = limit
        return f"{x}.__class__ is not float or not -M{i} <= {x} <= M{i}"
    assert isinstance(ft, (UInt, Int))
    env[f"L{i}"], env[f"H{i}"] = (0, ft.high) if isinstance(ft, UInt) else (ft.low, ft.high)
    return f"{x}.__class__ is not int or not L{i} <= {x} <= H{i}"


def _int_list(ft: Any) -> bool:
    return isinstance(ft, ListType) and isinstance(ft.elem, (UInt, Int))


def _var_enc(ft: Any, i: int, env: dict[str, Any]) -> list[str]:
    """Lines that leave the bytes of variable-size field ``i`` in ``x{i}``."""
    if isinstance(ft, StringType):
        return [
            f"    if x{i}.__class__ is not str:",
            "        raise Slow",
            f"    x{i} = x{i}.encode()",
        ]
    if isinstance(ft, BytesType):
        return [f"    if x{i}.__class__ is not bytes:", "        raise Slow"]
    if _int_list(ft):
        env[f"N{i}"], env[f"C{i}"] = ft.limit, ft.elem.code
        # struct refuses what does not fit the width, but takes booleans: not here
        return [
            f"    if x{i}.__class__ is not list or len(x{i}) > N{i}:",
            "        raise Slow",
            f"    if x{i} and set(map(type, x{i})) != INT:",
            "        raise Slow",
            f"    x{i} = pack('<%d' % len(x{i}) + C{i}, *x{i})",
        ]
    return [f"    x{i} = e{i}(x{i}, '')"]


def _var_dec(ft: Any, i: int, part: str, env: dict[str, Any]) -> list[str]:
    """Lines that read variable-size field ``i`` from ``part`` into ``f{i}``."""
    if isinstance(ft, StringType):
        return [f"    f{i} = str({part}, 'utf-8')"]
    if isinstance(ft, BytesType):
        return [f"    f{i} = bytes({part})"]
    if _int_list(ft) and _LITTLE:
        env[f"N{i}"], env[f"C{i}"], env[f"Z{i}"] = ft.limit, ft.elem.code, ft.elem.fixed_size
        return [
            f"    y{i} = {part}",
            f"    if len(y{i}) % Z{i} or len(y{i}) // Z{i} > N{i}:",
            "        raise Slow",
            f"    f{i} = y{i}.cast(C{i}).tolist()",
        ]
    return [f"    f{i} = d{i}({part}, '')"]
