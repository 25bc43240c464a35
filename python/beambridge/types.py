"""Field types of typed schemas (protocol/formats/ssz.md), for annotations::

    from beambridge.types import String, uint16, uint32, List

    @beambridge.schema("truthgpt.ModelConfig", version="2.0")
    @dataclass
    class ModelConfig:
        name: String
        hidden_size: uint32
        layers: List[uint16, 1024]
        dtype: String = "float32"

Each type is a value of `SszType`: it knows its fixed size (None when variable), and
checks a Python value, naming what it expected. ``List[T, n]``, ``Vector[T, n]``,
``Optional[T]`` and ``Union[T, ...]`` build composite types; a class decorated with
`beambridge.schema` is a type too (a nested container).

>>> uint16.fixed_size, String.fixed_size, List[uint16, 4].fixed_size
(2, None, None)
>>> Vector[uint8, 3].fixed_size
3
>>> List[uint16, 4]
List[uint16, 4]
>>> uint8.check(300, "x")
Traceback (most recent call last):
...
beambridge.types.SchemaError: bad_value: x is 300, expected uint8 (0 to 255)
"""

from __future__ import annotations

import math
from typing import Any

from .errors import BridgeError

__all__ = [
    "Bytes",
    "List",
    "Optional",
    "SchemaError",
    "SszType",
    "String",
    "Union",
    "Vector",
    "boolean",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
]


class SchemaError(BridgeError, ValueError):
    """A value that does not fit its schema (``bad_value``), or bytes that are not a
    value of it (``bad_ssz``); the message names the field path, the value and the
    expected type."""

    def __init__(self, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(reason, field, None, None, f"{reason}: {message}")


def bad_value(path: str, value: Any, expected: str) -> SchemaError:
    return SchemaError("bad_value", f"{path} is {value!r:.80}, expected {expected}", path)


class SszType:
    """A field type: ``name`` as written, ``fixed_size`` in bytes (None: variable)."""

    name: str = "?"
    fixed_size: int | None = None

    def check(self, value: Any, path: str) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def __call__(self, value: Any) -> Any:
        """The value checked (annotations must be callable for `typing`)."""
        return self.check(value, "value")

    def __repr__(self) -> str:
        return self.name


class UInt(SszType):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.fixed_size = bits // 8
        self.name = f"uint{bits}"
        self.high = (1 << bits) - 1
        self.code = {8: "B", 16: "H", 32: "I", 64: "Q"}[bits]

    def check(self, value: Any, path: str) -> int:
        if type(value) is not int or not 0 <= value <= self.high:
            raise bad_value(path, value, f"{self.name} (0 to {self.high})")
        return value


class Int(SszType):
    """Signed integers: two's complement, little-endian (an extension of SSZ)."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.fixed_size = bits // 8
        self.name = f"int{bits}"
        self.low, self.high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        self.code = {8: "b", 16: "h", 32: "i", 64: "q"}[bits]

    def check(self, value: Any, path: str) -> int:
        if type(value) is not int or not self.low <= value <= self.high:
            raise bad_value(path, value, f"{self.name} ({self.low} to {self.high})")
        return value


#: The largest finite float32.
FLOAT32_MAX = 3.4028234663852886e38


class Float(SszType):
    """IEEE 754, little-endian (an extension of SSZ); NaN and infinities are refused, as
    the BEAM has none."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.fixed_size = bits // 8
        self.name = f"float{bits}"
        self.code = {32: "f", 64: "d"}[bits]

    def check(self, value: Any, path: str) -> float:
        if type(value) is int and abs(value) < 2**53:
            value = float(value)
        if type(value) is not float or not math.isfinite(value):
            raise bad_value(path, value, f"a finite {self.name}")
        if self.bits == 32 and abs(value) > FLOAT32_MAX:
            raise bad_value(path, value, "a float32 (at most 3.4e38 in magnitude)")
        return value


class Boolean(SszType):
    name, fixed_size, code = "boolean", 1, "?"

    def check(self, value: Any, path: str) -> bool:
        if type(value) is not bool:
            raise bad_value(path, value, "a boolean")
        return value


class BytesType(SszType):
    """Bytes of any length (SSZ ``ByteList``; the length is not bounded here)."""

    name = "Bytes"

    def check(self, value: Any, path: str) -> bytes:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        raise bad_value(path, value, "bytes")


class StringType(SszType):
    """UTF-8 text, on the wire as `Bytes` (an extension of SSZ)."""

    name = "String"

    def check(self, value: Any, path: str) -> str:
        if type(value) is not str:
            raise bad_value(path, value, "a str")
        return value


class ListType(SszType):
    def __init__(self, elem: SszType, limit: int) -> None:
        self.elem, self.limit = elem, limit
        self.name = f"List[{elem!r}, {limit}]"

    def check(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, (list, tuple)):
            raise bad_value(path, value, self.name)
        if len(value) > self.limit:
            message = (
                f"{path} has {len(value)} elements, expected {self.name} (at most {self.limit})"
            )
            raise SchemaError("bad_value", message, path)
        return list(value)


class VectorType(SszType):
    def __init__(self, elem: SszType, length: int) -> None:
        self.elem, self.length = elem, length
        self.name = f"Vector[{elem!r}, {length}]"
        self.fixed_size = None if elem.fixed_size is None else elem.fixed_size * length

    def check(self, value: Any, path: str) -> list[Any]:
        if not isinstance(value, (list, tuple)) or len(value) != self.length:
            raise bad_value(path, value, f"{self.name} ({self.length} elements)")
        return list(value)


class UnionType(SszType):
    """A one-byte selector, then the value of that option (SSZ ``Union``); an option
    of None is the empty one (selector 0 only)."""

    def __init__(self, options: tuple[SszType | None, ...], name: str | None = None) -> None:
        self.options = options
        shown = ", ".join("None" if o is None else repr(o) for o in options)
        self.name = name or f"Union[{shown}]"


class _Alias:
    """``List[T, n]``, ``Vector[T, n]``, ``Optional[T]``, ``Union[...]``."""

    def __init__(self, make: Any, name: str) -> None:
        self.make, self.name = make, name

    def __getitem__(self, params: Any) -> SszType:
        params = params if isinstance(params, tuple) else (params,)
        return self.make(*params)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        return self.name


def _type(t: Any) -> SszType:
    from .ssz import schema_type

    return t if isinstance(t, SszType) else schema_type(t)


def _list(elem: Any, limit: int) -> SszType:
    if type(limit) is not int or limit < 0:
        raise TypeError(f"List[T, n]: n is a non-negative int, got {limit!r}")
    return ListType(_type(elem), limit)


def _vector(elem: Any, length: int) -> SszType:
    if type(length) is not int or length <= 0:
        raise TypeError(f"Vector[T, n]: n is a positive int, got {length!r}")
    return VectorType(_type(elem), length)


def _union(*options: Any) -> SszType:
    if not options or len(options) > 128:
        raise TypeError("Union[...] takes 1 to 128 options")
    if any(o is None for o in options[1:]):
        raise TypeError("Union[...]: only the first option may be None")
    types = tuple(None if o is None else _type(o) for o in options)
    if any(isinstance(o, UnionType) for o in types):
        raise TypeError("Union[...]: an option is no union (nor Optional): SSZ does not nest them")
    return UnionType(types)


def _optional(t: Any) -> SszType:
    inner = _type(t)
    if isinstance(inner, UnionType):
        raise TypeError(f"Optional[{inner!r}]: SSZ does not nest unions")
    return UnionType((None, inner), f"Optional[{inner!r}]")


uint8, uint16, uint32, uint64 = UInt(8), UInt(16), UInt(32), UInt(64)
int8, int16, int32, int64 = Int(8), Int(16), Int(32), Int(64)
float32, float64 = Float(32), Float(64)
boolean = Boolean()
Bytes = BytesType()
String = StringType()
List = _Alias(_list, "List")
Vector = _Alias(_vector, "Vector")
Union = _Alias(_union, "Union")
Optional = _Alias(_optional, "Optional")
