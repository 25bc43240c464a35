"""Typed schemas and their SSZ bytes (protocol/formats/ssz.md).

`schema` declares a class (a dataclass, a ``NamedTuple`` or a ``msgspec.Struct``)
whose annotations are `beambridge.types`; `to_ssz` and `from_ssz` give and read its
bytes. Each type's codec is compiled once: a container's fixed part is one
``struct.Struct`` packed by generated code, lists of numbers are packed whole.

>>> from dataclasses import dataclass
>>> from beambridge.types import String, uint16, uint32, List
>>> @schema("example.Config", version="1.0")
... @dataclass
... class Config:
...     name: String
...     hidden_size: uint32
...     layers: List[uint16, 1024]
>>> data = to_ssz(Config("tiny", 64, [1, 2]))
>>> data.hex()
'0c000000400000001000000074696e7901000200'
>>> from_ssz(Config, data)
Config(name='tiny', hidden_size=64, layers=[1, 2])
>>> to_ssz(Config("tiny", -1, []))
Traceback (most recent call last):
...
beambridge.types.SchemaError: bad_value: Config.hidden_size is -1, expected uint32 (0 to 4294967295)
"""

from __future__ import annotations

import dataclasses
import struct
import sys
import typing
from collections.abc import Callable
from typing import Any

from . import versions
from .types import (
    Boolean,
    BytesType,
    Float,
    Int,
    ListType,
    SchemaError,
    SszType,
    StringType,
    UInt,
    UnionType,
    VectorType,
    bad_value,
)
from .versions import parse

__all__ = [
    "ContainerType",
    "Schema",
    "from_ssz",
    "schema",
    "schema_type",
    "to_ssz",
]

Enc = Callable[[Any, str], bytes]
Dec = Callable[[memoryview, str], Any]

_OFFSET = struct.Struct("<I")


def _bad_ssz(path: str, what: str) -> SchemaError:
    return SchemaError("bad_ssz", f"{path}: {what}", path)


class ContainerType(SszType):
    """A schema class as an SSZ container: its fields in order."""

    def __init__(self, cls: type, fields: list[tuple[str, SszType, Any]], name: str) -> None:
        self.cls = cls
        self.fields = fields
        self.name = cls.__name__
        self.schema_name = name
        sizes = [t.fixed_size for _, t, _ in fields]
        self.fixed_size = None if None in sizes else sum(s for s in sizes if s is not None)


@dataclasses.dataclass(frozen=True)
class Schema:
    """What `schema` attaches to a class: its name, version and container type, the
    minor each later field came in (``since``), and its migrations from older majors
    (major -> function)."""

    name: str
    version: str
    type: ContainerType
    since: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    migrations: dict[int, Callable[[dict[str, Any]], Any]] = dataclasses.field(default_factory=dict)


def schema(
    name: str,
    *,
    version: str = "1.0",
    since: dict[str, str] | None = None,
    migrations: dict[str, Callable[[dict[str, Any]], Any]] | None = None,
) -> Callable[[type], type]:
    """Declares ``cls`` a typed schema named ``name`` (``"package.Type"``) at
    ``version`` (``"major.minor"``). ``since`` names the fields a later minor added
    (``{"dtype": "2.1"}``: the last fields, each with a default or ``Optional``), so
    the bytes of older minors are read; ``migrations`` maps an older version to a
    function from its fields (a dict) to this version's (a dict or an instance)
    (`beambridge.versions`)."""
    major, _ = parse(version)
    steps = {}
    for old, fn in (migrations or {}).items():
        if parse(old)[0] >= major or not callable(fn):
            raise ValueError(f"migrations: {old!r} -> {fn!r} is not from an older major")
        steps[parse(old)[0]] = fn

    def declare(cls: type) -> type:
        hints = typing.get_type_hints(cls, globalns=_namespace(cls))
        fields = [(f, _field_type(cls, f, hints[f]), default) for f, default in _fields(cls)]
        added = _since(cls, version, fields, since or {})
        t = ContainerType(cls, fields, name)
        cls.__bb_schema__ = Schema(name, version, t, added, steps)  # type: ignore[attr-defined]
        versions.declare(cls)
        return cls

    return declare


def _since(
    cls: type, version: str, fields: list[tuple[str, SszType, Any]], since: dict[str, str]
) -> dict[str, tuple[int, int]]:
    """``since`` checked: fields of ``cls`` added by minors of its major up to
    ``version``, the last ones, in order, each with something to fill in."""
    names = [f for f, _, _ in fields]
    out = {}
    for f, v in since.items():
        at = parse(v)
        if f not in names or not (at[0], 0) <= at <= parse(version) or at[0] != parse(version)[0]:
            raise ValueError(f"{cls.__name__}: since {f!r}: {v!r} is no minor of {version}")
        out[f] = at
    later = [out.get(f, (0, 0)) for f in names]
    if later != sorted(later):
        raise ValueError(f"{cls.__name__}: fields added by later minors go last, in order")
    for f, t, default in fields:
        nullable = isinstance(t, UnionType) and t.options[0] is None
        if f in out and default is _MISSING and not nullable:
            raise ValueError(f"{cls.__name__}.{f}: a field added in {since[f]} needs a default")
    return out


def _namespace(cls: type) -> dict[str, Any]:
    """Where string annotations are looked up: the class's module, and the names of
    `beambridge.types` for a module that did not import them all."""
    from . import types

    module = sys.modules.get(cls.__module__)
    found = {n: getattr(types, n) for n in types.__all__}
    found.update(vars(module) if module is not None else {})
    return found


_MISSING = object()


class Factory:
    """A dataclass field's ``default_factory``, as its default."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def _fields(cls: type) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(cls):
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else _MISSING
            if f.default_factory is not dataclasses.MISSING:
                default = Factory(f.default_factory)
            out.append((f.name, default))
        return out
    if issubclass(cls, tuple) and hasattr(cls, "_fields"):  # NamedTuple
        defaults = getattr(cls, "_field_defaults", {})
        return [(f, defaults.get(f, _MISSING)) for f in cls._fields]
    struct_fields = getattr(cls, "__struct_fields__", None)  # msgspec.Struct
    if struct_fields is not None:
        defaults = getattr(cls, "__struct_defaults__", ())
        first = len(struct_fields) - len(defaults)
        return [
            (f, defaults[i - first] if i >= first else _MISSING)
            for i, f in enumerate(struct_fields)
        ]
    raise TypeError(f"{cls.__name__}: a schema is a dataclass, a NamedTuple or a msgspec.Struct")


def _field_type(cls: type, name: str, hint: Any) -> SszType:
    if isinstance(hint, SszType):
        return hint
    if isinstance(hint, type) and hasattr(hint, "__bb_schema__"):
        return hint.__bb_schema__.type  # type: ignore[no-any-return]
    raise TypeError(
        f"{cls.__name__}.{name}: {hint!r} is no field type (use beambridge.types, or a schema)"
    )


def schema_type(cls: Any) -> SszType:
    """The container type of a schema class (`TypeError` for anything else)."""
    declared = getattr(cls, "__bb_schema__", None)
    if declared is None:
        raise TypeError(f"{cls!r} is no field type: declare it with @beambridge.schema")
    return declared.type  # type: ignore[no-any-return]


def to_ssz(value: Any) -> bytes:
    """The SSZ bytes of a value of a schema class (checked as it is written)."""
    t = schema_type(type(value))
    return codec(t)[0](value, t.name)


def from_ssz(cls: type, data: bytes | bytearray | memoryview) -> Any:
    """The value of schema class ``cls`` that ``data`` holds (`SchemaError` ``bad_ssz``
    when it holds none)."""
    t = schema_type(cls)
    return codec(t)[1](memoryview(data).cast("B"), t.name)


# ---- compiled codecs ------------------------------------------------------------------


def codec(t: SszType) -> tuple[Enc, Dec]:
    """The compiled (encode, decode) pair of ``t``; built once per type, and kept on it
    (never by its id: a type made again may be given a dead one's)."""
    found: tuple[Enc, Dec] | None = t.__dict__.get("_codec")
    if found is None:
        found = _compile(t)
        t.__dict__["_codec"] = found
    return found


def _compile(t: SszType) -> tuple[Enc, Dec]:
    if isinstance(t, (UInt, Int, Float, Boolean)):
        return _basic(t)
    if isinstance(t, BytesType):
        return (lambda v, p: t.check(v, p)), (lambda b, p: bytes(b))
    if isinstance(t, StringType):
        return _to_utf8(t), _utf8
    if isinstance(t, (ListType, VectorType)):
        return _sequence(t)
    if isinstance(t, UnionType):
        return _union(t)
    if isinstance(t, ContainerType):
        return _container(t)
    raise TypeError(f"no codec for {t!r}")


def _to_utf8(t: StringType) -> Enc:
    def enc(v: Any, p: str) -> bytes:
        try:
            return t.check(v, p).encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no UTF-8 says it
            raise bad_value(p, v, "a str of Unicode characters (no lone surrogates)") from None

    return enc


def _utf8(b: memoryview, path: str) -> str:
    try:
        return str(b, "utf-8")
    except UnicodeDecodeError as err:
        raise _bad_ssz(path, f"not UTF-8 ({err.reason} at byte {err.start})") from None


def _basic(t: Any) -> tuple[Enc, Dec]:
    s = struct.Struct("<" + t.code)
    pack, unpack, size, check = s.pack, s.unpack, s.size, t.check

    def enc(v: Any, p: str) -> bytes:
        return pack(check(v, p))

    def dec(b: memoryview, p: str) -> Any:
        if len(b) != size:
            raise _bad_ssz(p, f"{len(b)} bytes for a {t.name} of {size}")
        (v,) = unpack(b)
        if t.code == "?" and b[0] > 1:
            raise _bad_ssz(p, f"a boolean byte of {b[0]}")
        return v

    return enc, dec


def _sequence(t: ListType | VectorType) -> tuple[Enc, Dec]:
    elem = t.elem
    fixed = isinstance(t, VectorType)
    n_fixed = t.length if isinstance(t, VectorType) else None
    enc_e, dec_e = codec(elem)
    code = getattr(elem, "code", None)

    def count_ok(n: int, p: str) -> None:
        if n_fixed is not None and n != n_fixed:
            raise _bad_ssz(p, f"{n} elements for a {t.name}")
        if not fixed and n > t.limit:  # type: ignore[union-attr]
            raise _bad_ssz(p, f"{n} elements, over the limit of {t.name}")

    if code is not None:  # numbers and booleans: packed whole
        size = elem.fixed_size or 1

        def enc(v: Any, p: str) -> bytes:
            items = t.check(v, p)
            try:
                return struct.pack(f"<{len(items)}{code}", *items)
            except (struct.error, TypeError, OverflowError):
                for i, x in enumerate(items):  # name the first that is wrong
                    elem.check(x, f"{p}[{i}]")
                raise

        def dec(b: memoryview, p: str) -> Any:
            if len(b) % size:
                raise _bad_ssz(p, f"{len(b)} bytes are no whole number of {elem!r}")
            n = len(b) // size
            count_ok(n, p)
            values = list(struct.unpack(f"<{n}{code}", b))
            if code == "?" and any(x > 1 for x in b):
                raise _bad_ssz(p, "a boolean byte over 1")
            if code in "fd":
                for i, x in enumerate(values):
                    elem.check(x, f"{p}[{i}]")
            return values

        return enc, dec

    if elem.fixed_size is not None:
        size = elem.fixed_size

        def enc_f(v: Any, p: str) -> bytes:
            return b"".join([enc_e(x, f"{p}[{i}]") for i, x in enumerate(t.check(v, p))])

        def dec_f(b: memoryview, p: str) -> Any:
            if size == 0 or len(b) % size:
                raise _bad_ssz(p, f"{len(b)} bytes are no whole number of {elem!r}")
            n = len(b) // size
            count_ok(n, p)
            return [dec_e(b[i * size : (i + 1) * size], f"{p}[{i}]") for i in range(n)]

        return enc_f, dec_f

    def enc_v(v: Any, p: str) -> bytes:
        parts = [enc_e(x, f"{p}[{i}]") for i, x in enumerate(t.check(v, p))]
        return _with_offsets(parts, 4 * len(parts))

    def dec_v(b: memoryview, p: str) -> Any:
        if not b:
            count_ok(0, p)
            return []
        if len(b) < 4:
            raise _bad_ssz(p, f"{len(b)} bytes, fewer than the 4 of an offset")
        first = _OFFSET.unpack_from(b)[0]
        if first % 4 or first == 0 or first > len(b):
            raise _bad_ssz(p, f"a first offset of {first} in {len(b)} bytes")
        n = first // 4
        count_ok(n, p)
        offsets = [_OFFSET.unpack_from(b, 4 * i)[0] for i in range(n)] + [len(b)]
        return [dec_e(_part(b, offsets, i, f"{p}[{i}]"), f"{p}[{i}]") for i in range(n)]

    return enc_v, dec_v


def _with_offsets(parts: list[bytes], start: int) -> bytes:
    heads = []
    at = start
    for part in parts:
        heads.append(_OFFSET.pack(at))
        at += len(part)
    return b"".join(heads + parts)


def _part(b: memoryview, offsets: list[int], i: int, p: str) -> memoryview:
    lo, hi = offsets[i], offsets[i + 1]
    if not lo <= hi <= len(b):
        raise _bad_ssz(p, f"offsets {lo} and {hi} out of order or past {len(b)} bytes")
    return b[lo:hi]


def _union(t: UnionType) -> tuple[Enc, Dec]:
    codecs = [None if o is None else codec(o) for o in t.options]
    optional = t.name.startswith("Optional[")

    def enc(v: Any, p: str) -> bytes:
        if optional:
            selector, value = (0, None) if v is None else (1, v)
        elif type(v) is tuple and len(v) == 2 and type(v[0]) is int:
            selector, value = v
        else:
            raise bad_value(p, v, f"{t.name} as (option index, value)")
        if not 0 <= selector < len(codecs):
            raise bad_value(p, v, f"an option index of {t.name}")
        c = codecs[selector]
        if c is None:
            if value is not None:
                raise bad_value(p, value, "None (option 0 of the union)")
            return b"\x00"
        return bytes([selector]) + c[0](value, p)

    def dec(b: memoryview, p: str) -> Any:
        if not b or b[0] >= len(codecs):
            raise _bad_ssz(p, f"a union selector of {b[0] if b else 'nothing'}")
        c = codecs[b[0]]
        if c is None:
            if len(b) != 1:
                raise _bad_ssz(p, "bytes after the None option")
            return None if optional else (0, None)
        value = c[1](b[1:], p)
        return value if optional else (b[0], value)

    return enc, dec


def _container(t: ContainerType) -> tuple[Enc, Dec]:
    """Generated code: one struct.Struct for the fixed part (the offsets of variable
    fields in their places), the variable parts after it."""
    env: dict[str, Any] = {"bad": _bad_ssz, "cls": t.cls, "get": getattr}
    fmt, pos = ["<"], 0
    enc_lines: list[str] = []
    dec_lines: list[str] = []
    slots: list[str] = []  # what S.unpack_from gives, in order
    var_fields: list[int] = []
    for i, (name, ftype, _default) in enumerate(t.fields):
        e, d = codec(ftype)
        env[f"e{i}"], env[f"d{i}"], env[f"t{i}"] = e, d, ftype
        path = f"p + '.{name}'"
        code = getattr(ftype, "code", None)
        if code is not None:  # a number or a boolean: in the struct itself
            fmt.append(code)
            enc_lines.append(f"    f{i} = t{i}.check(get(v, {name!r}), {path})")
            slots.append(f"f{i}")
            if code == "?":
                dec_lines.append(f"    if b[{pos}] > 1:")
                dec_lines.append(f"        raise bad({path}, f'a boolean byte of {{b[{pos}]}}')")
            elif code in "fd":
                dec_lines.append(f"    t{i}.check(f{i}, {path})")
            pos += ftype.fixed_size or 0
        elif ftype.fixed_size is not None:  # fixed-size composite: its bytes
            fmt.append(f"{ftype.fixed_size}s")
            enc_lines.append(f"    f{i} = e{i}(get(v, {name!r}), {path})")
            slots.append(f"r{i}")
            dec_lines.append(f"    f{i} = d{i}(memoryview(r{i}), {path})")
            pos += ftype.fixed_size
        else:  # variable size: an offset here, its bytes after the fixed part
            fmt.append("I")
            enc_lines.append(f"    v{i} = e{i}(get(v, {name!r}), {path})")
            slots.append(f"o{i}")
            var_fields.append(i)
            pos += 4
    s = struct.Struct("".join(fmt))
    env["S"], env["FIXED"] = s, s.size
    for k, i in enumerate(var_fields):
        before = var_fields[k - 1] if k else None
        start = "FIXED" if before is None else f"f{before} + len(v{before})"
        enc_lines.append(f"    f{i} = {start}")
    fields = ", ".join(f"f{i}" for i in range(len(t.fields)))
    tail = " + ".join([f"S.pack({fields})"] + [f"v{i}" for i in var_fields])
    enc_src = "def enc(v, p):\n" + "\n".join(enc_lines) + f"\n    return {tail}\n"

    dec_src = [
        "def dec(b, p):",
        "    if len(b) < FIXED:",
        "        raise bad(p, f'{len(b)} bytes, fewer than the fixed part of {FIXED}')",
    ]
    if slots:
        dec_src.append(f"    {', '.join(slots)}, = S.unpack_from(b)")
    dec_src.extend(dec_lines)
    if var_fields:
        first = var_fields[0]
        dec_src.append(f"    if o{first} != FIXED:")
        dec_src.append(f"        raise bad(p, f'the first offset is {{o{first}}}, not {{FIXED}}')")
        for k, i in enumerate(var_fields):
            end = f"o{var_fields[k + 1]}" if k + 1 < len(var_fields) else "len(b)"
            name = t.fields[i][0]
            dec_src.append(f"    if not o{i} <= {end} <= len(b):")
            dec_src.append(f"        raise bad(p, f'offsets {{o{i}}} and {{{end}}} out of order')")
            dec_src.append(f"    f{i} = d{i}(b[o{i}:{end}], p + '.{name}')")
    else:
        dec_src.append("    if len(b) != FIXED:")
        dec_src.append("        raise bad(p, f'{len(b)} bytes for a container of {FIXED}')")
    dec_src.append(f"    return cls({fields})")
    namespace: dict[str, Any] = {}
    exec(enc_src, env, namespace)
    exec("\n".join(dec_src) + "\n", env, namespace)
    from .ssz_fast import fast_container

    return fast_container(t, namespace["enc"], namespace["dec"])
