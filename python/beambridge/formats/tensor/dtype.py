"""Element types of tensors and their descriptors (protocol/formats/tensor.md, "dtype
grammar"), the Python side of ``Bridge.Tensor.Dtype``.

A descriptor is a dtype string in NumPy's canonical spelling (``b"<f4"``, ``b"|b1"``,
``b"<M8[ns]"``, ``b"|S5"``, ``b"<U3"``, ``b"|V8"``), or a record
``(b"struct", itemsize, [(name, descr, offset), ...])`` whose field descriptor may be
``(b"subarray", descr, shape)`` and whose field may carry a fourth element, its title.
Descriptors from the peer are checked against the grammar before NumPy sees them; what
would need pickle (object dtypes) is refused on the way out with
`beambridge.errors.UnsupportedDtypeError`, which says what to do instead.

>>> dtype_to_descr(np.dtype(">f8")), dtype_from_descr(b"<U3")
(b'>f8', dtype('<U3'))
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from ...errors import TensorError, UnsupportedDtypeError

__all__ = [
    "MAX_DTYPE_DEPTH",
    "MAX_FIELDS",
    "MAX_ITEMSIZE",
    "MAX_NAME_BYTES",
    "MAX_NDIM",
    "Descr",
    "check_dims",
    "dtype_from_descr",
    "dtype_to_descr",
    "short",
]

#: Most dimensions a tensor (or a field's subarray) may have.
MAX_NDIM = 32
#: Deepest nesting of structured dtypes (a struct field that is a struct...).
MAX_DTYPE_DEPTH = 8
#: Most fields of one structured dtype.
MAX_FIELDS = 4096
#: Longest tensor name or field name, in UTF-8 bytes.
MAX_NAME_BYTES = 1024
#: Largest item size (NumPy's own limit is a C int).
MAX_ITEMSIZE = 2**31 - 1

#: A dtype descriptor: a dtype string (``b"<f4"``), or
#: ``(b"struct", itemsize, [(name, descr | (b"subarray", descr, shape), offset), ...])``.
Descr = bytes | tuple[Any, ...]

_SIMPLE = re.compile(
    r"([<>|])([biufcmMSUV])([1-9][0-9]{0,9})"
    r"(?:\[([1-9][0-9]{0,9})?(Y|M|W|D|h|m|s|ms|us|ns|ps|fs|as)\])?"
)
#: The item sizes of the kinds that have fixed ones.
_SIZES = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8),
    "c": (8, 16),
    "m": (8,),
    "M": (8,),
}
_STRUCT, _SUBARRAY = b"struct", b"subarray"


def short(term: Any) -> str:
    """``repr(term)``, cut to 120 characters, for messages."""
    text = repr(term)
    return text if len(text) <= 120 else text[:120] + "..."


def _bad(field: str, value: Any, message: str) -> TensorError:
    return TensorError("bad_term", field, value, None, f"bad_term: {message}")


def _unsupported(dt: np.dtype[Any], why: str, advice: str) -> UnsupportedDtypeError:
    return UnsupportedDtypeError(
        "unsupported_dtype",
        "dtype",
        str(dt),
        None,
        f"unsupported_dtype: cannot send an array of dtype {dt} ({dt.str}): {why}; {advice}",
    )


# ---- NumPy to descriptor -------------------------------------------------------------------


def dtype_to_descr(dtype: Any) -> Descr:
    """The descriptor of a NumPy dtype, or `UnsupportedDtypeError` saying what to do.

    >>> dtype_to_descr(np.dtype(">f8")), dtype_to_descr(np.dtype("M8[ns]"))
    (b'>f8', b'<M8[ns]')
    >>> dtype_to_descr(np.dtype([("x", "<f4"), ("n", "S3", (2,))]))
    (b'struct', 10, [(b'x', b'<f4', 0), (b'n', (b'subarray', b'|S3', [2]), 4)])
    >>> dtype_to_descr(np.dtype(object))
    Traceback (most recent call last):
    ...
    beambridge.errors.UnsupportedDtypeError: unsupported_dtype: cannot send ...
    """
    return _to_descr(np.dtype(dtype), 0)


def _to_descr(dt: np.dtype[Any], depth: int) -> Descr:
    if dt.hasobject:
        raise _unsupported(
            dt,
            "it holds Python objects, which only pickle could carry",
            "convert it to a fixed-size dtype (.astype('U'), .astype('S'), a numeric type) "
            "or send .tolist()",
        )
    if depth > MAX_DTYPE_DEPTH:
        raise _unsupported(
            dt,
            f"structured dtypes nest deeper than {MAX_DTYPE_DEPTH} levels",
            "flatten the record type",
        )
    if dt.fields is not None:
        return _record_descr(dt, depth)
    if dt.subdtype is not None:
        raise _unsupported(
            dt,
            "a subarray dtype stands only inside a record",
            "use an array with the extra dimensions",
        )
    text = dt.str
    m = _SIMPLE.fullmatch(text)
    kind = dt.kind
    if m is None or (kind in _SIZES and dt.itemsize not in _SIZES[kind]):
        advice = {
            "f": "cast it with .astype(np.float64)",
            "c": "cast it with .astype(np.complex128)",
            "T": "variable-width strings: cast to fixed width with .astype('U') or encode "
            "them and send .astype('S')",
        }.get(kind, "cast it to a fixed-size dtype")
        raise _unsupported(
            dt,
            "it is not one of the fixed-size dtypes the tensor format carries (bool, "
            "int8-64, uint8-64, float16/32/64, complex64/128, datetime64/timedelta64, S, U, "
            "V, records)",
            advice,
        )
    return text.encode("ascii")


def _record_descr(dt: np.dtype[Any], depth: int) -> Descr:
    names = dt.names or ()
    if not names or dt.itemsize == 0 or len(names) > MAX_FIELDS:
        raise _unsupported(
            dt,
            f"a record type needs 1 to {MAX_FIELDS} fields and a non-zero size",
            "send the fields as separate arrays",
        )
    assert dt.fields is not None
    fields = []
    for name in names:
        info = dt.fields[name]
        encoded = name.encode("utf-8")
        title = info[2] if len(info) > 2 else None
        if len(encoded) > MAX_NAME_BYTES or not (
            title is None or (type(title) is str and 0 < len(title.encode()) <= MAX_NAME_BYTES)
        ):
            raise _unsupported(
                dt,
                f"field {name!r} has a name or title that is not a str of 1 to "
                f"{MAX_NAME_BYTES} bytes",
                "rename the field",
            )
        field: tuple[Any, ...] = (encoded, _field_descr(info[0], depth + 1), int(info[1]))
        fields.append(field if title is None else (*field, title.encode("utf-8")))
    return (_STRUCT, dt.itemsize, fields)


def _field_descr(dt: np.dtype[Any], depth: int) -> Descr:
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        if len(shape) > MAX_NDIM:
            raise _unsupported(
                dt, f"a field subarray has more than {MAX_NDIM} dimensions", "reshape the field"
            )
        return (_SUBARRAY, _to_descr(base, depth), [int(d) for d in shape])
    return _to_descr(dt, depth)


# ---- descriptor to NumPy -------------------------------------------------------------------


def dtype_from_descr(descr: Any) -> np.dtype[Any]:
    """The NumPy dtype of a descriptor from the peer, or `beambridge.errors.TensorError`.

    Only the grammar of protocol/formats/tensor.md, spelled as NumPy spells it.

    >>> dtype_from_descr(b"<U3"), dtype_from_descr(b">m8[10ms]")
    (dtype('<U3'), dtype('>m8[10ms]'))
    >>> dtype_from_descr(b"|O8")
    Traceback (most recent call last):
    ...
    beambridge.errors.TensorError: bad_term: tensor dtype b'|O8' is not ...
    """
    dt = _from_descr(descr, 0)
    # canonical: re-describing the dtype gives back exactly what was received
    if _to_descr_or_none(dt) != _canonical_term(descr):
        raise _bad(
            "dtype",
            descr,
            f"tensor dtype {short(descr)} is not in NumPy's canonical spelling (e.g. '<i4', "
            "not '|i4' or '=i4')",
        )
    return dt


def _to_descr_or_none(dt: np.dtype[Any]) -> Descr | None:
    try:
        return _to_descr(dt, 0)
    except UnsupportedDtypeError:
        return None


def _canonical_term(descr: Any) -> Any:
    # the ETF decoder gives lists and tuples exactly as sent: compare like with like
    if type(descr) is tuple:
        return tuple(_canonical_term(x) for x in descr)
    if type(descr) is list:
        return [_canonical_term(x) for x in descr]
    return descr


def _from_descr(descr: Any, depth: int) -> np.dtype[Any]:
    if depth > MAX_DTYPE_DEPTH:
        raise _bad("dtype", None, f"structured dtype nested deeper than {MAX_DTYPE_DEPTH}")
    if type(descr) is bytes:
        return _simple(descr)
    if type(descr) is tuple and len(descr) == 3 and descr[0] == _STRUCT:
        return _record(descr, depth)
    raise _bad(
        "dtype",
        short(descr),
        f'tensor dtype {short(descr)} is not a dtype string or {{"struct", itemsize, fields}}',
    )


def _record(descr: tuple[Any, ...], depth: int) -> np.dtype[Any]:
    _, itemsize, fields = descr
    if type(itemsize) is not int or not 1 <= itemsize <= MAX_ITEMSIZE:
        raise _bad("dtype", itemsize, f"record itemsize {itemsize!r} is not in 1..{MAX_ITEMSIZE}")
    if type(fields) is not list or not 1 <= len(fields) <= MAX_FIELDS:
        raise _bad("dtype", short(fields), f"a record needs a list of 1 to {MAX_FIELDS} fields")
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    titles: list[str | None] = []
    for field in fields:
        if type(field) is not tuple or len(field) not in (3, 4):
            raise _bad(
                "dtype",
                short(field),
                "a record field is {name, dtype, offset} or {name, dtype, offset, title}",
            )
        name, fdescr, offset = field[:3]
        titles.append(_title(field[3]) if len(field) == 4 else None)
        text = _field_name(name, names)
        fdt = _field_from_descr(fdescr, depth + 1)
        if type(offset) is not int or offset < 0 or offset + fdt.itemsize > itemsize:
            raise _bad(
                "dtype",
                offset,
                f"field {text!r} at offset {offset!r} with {fdt.itemsize} bytes does not fit "
                f"a {itemsize}-byte record",
            )
        names.append(text)
        formats.append(fdt)
        offsets.append(offset)
    spec: dict[str, Any] = {
        "names": names,
        "formats": formats,
        "offsets": offsets,
        "itemsize": itemsize,
    }
    if any(t is not None for t in titles):
        spec["titles"] = titles
    try:
        return np.dtype(spec)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError) as exc:
        raise _bad("dtype", short(descr), f"record dtype refused by NumPy: {exc}") from None


def _field_name(name: Any, seen: list[str]) -> str:
    if type(name) is not bytes or not 0 < len(name) <= MAX_NAME_BYTES:
        raise _bad(
            "dtype",
            name,
            f"field name {short(name)} is not a binary of 1 to {MAX_NAME_BYTES} bytes",
        )
    try:
        text = name.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("dtype", name, f"field name {name!r} is not UTF-8") from None
    if text in seen:
        raise _bad("dtype", name, f"field name {text!r} appears twice")
    return text


def _title(raw: Any) -> str:
    if type(raw) is not bytes or not 0 < len(raw) <= MAX_NAME_BYTES:
        raise _bad("dtype", short(raw), f"a field title is a binary of 1 to {MAX_NAME_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("dtype", raw, f"field title {raw!r} is not UTF-8") from None


def _field_from_descr(descr: Any, depth: int) -> np.dtype[Any]:
    if type(descr) is tuple and len(descr) == 3 and descr[0] == _SUBARRAY:
        _, base, shape = descr
        dims = check_dims(shape, "dtype")
        if type(base) is tuple and base and base[0] == _SUBARRAY:
            raise _bad("dtype", short(descr), "a subarray of a subarray (give one shape)")
        bdt = _from_descr(base, depth)
        if bdt.itemsize * math.prod(dims) > MAX_ITEMSIZE:
            raise _bad("dtype", short(descr), f"subarray of more than {MAX_ITEMSIZE} bytes")
        return np.dtype((bdt, tuple(dims)))
    return _from_descr(descr, depth)


def _simple(text: bytes) -> np.dtype[Any]:
    m = _SIMPLE.fullmatch(text.decode("ascii", "replace"))
    ok = m is not None
    if m is not None:
        kind, size, unit = m.group(2), int(m.group(3)), m.group(5)
        if kind in _SIZES:
            ok = size in _SIZES[kind]
        else:  # S, V: bytes; U: characters of 4 bytes
            ok = size * (4 if kind == "U" else 1) <= MAX_ITEMSIZE
        ok = ok and (unit is None or kind in "mM")
    if not ok:
        raise _bad(
            "dtype",
            text,
            f"tensor dtype {text!r} is not one of the fixed-size dtypes (|b1, [<>]i/u 1-8, "
            "[<>]f 2/4/8, [<>]c 8/16, [<>]M8[unit], [<>]m8[unit], |S<n>, [<>]U<n>, |V<n>, "
            "or a record)",
        )
    try:
        return np.dtype(text.decode("ascii"))
    except TypeError as exc:
        raise _bad("dtype", text, f"tensor dtype {text!r} refused by NumPy: {exc}") from None


def check_dims(shape: Any, field: str) -> list[int]:
    """``shape`` from the peer, checked: a list of at most `MAX_NDIM` non-negative ints;
    `beambridge.errors.TensorError` (``field`` as given) otherwise.

    >>> check_dims([2, 0, 3], "shape")
    [2, 0, 3]
    """
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise _bad(
            field,
            short(shape),
            f"a shape is a list of at most {MAX_NDIM} non-negative integers, got {short(shape)}",
        )
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise _bad(
                field,
                short(shape),
                f"shape {short(shape)} holds {dim!r}, not a non-negative integer",
            )
    return shape
