"""Format selection (protocol/SPEC.md §8.1): packed number lists and records.

Two forms let plain lists and maps travel as columns instead of one ETF term per value;
the receiver rebuilds exactly the value ETF would give (invariant 7: neither size nor
form changes a type).

* A **number list** (at least 2 elements, all ``int`` in one of the int64/uint64
  ranges, or all finite ``float``) goes **packed**: ``{:"$bb_packed", dtype, data}``
  with the narrowest of the nine dtypes of `PACKED_DTYPES`, or a slice of kind
  ``packed`` holding a schema-0 tensor frame ``{dtype, [length]}``.
* A **record list** (a list of dicts with one key set) or a **column map** (a dict of
  lists of one length), keys all ``str``, all `Atom` or all UTF-8 ``bytes``, each column
  of one kind (int64, float64, bool, binary, utf8, or only ``None``) goes as
  **records**: ``{:"$bb_records", layout, stream}`` with an Arrow IPC stream whose
  schema metadata ``beambridge.keys`` says how keys are rebuilt, or a slice of kind
  ``records`` (an ``arrow_stream`` frame with the metadata of `records_metadata`).

This module holds the checks (`classify_numbers`, `plan_rows`, `plan_columns`), the
writers (`pack`, `to_table`) and the readers (`unpack`, `read_packed`,
`records_from_stream`), and the counters behind `format_stats`. pyarrow is imported
only when records are built or read.

>>> c = classify_numbers([1, 2, 300])
>>> c.dtype
'<i2'
>>> unpack(b"<i2", pack([1, 2, 300], c.dtype).tobytes())
[1, 2, 300]
>>> classify_numbers([1, 2.5]).code
'mixed_numbers'
>>> plan = plan_rows([{"a": 1, "b": "x"}, {"a": None, "b": "y"}])
>>> plan.layout, plan.keys, plan.kinds, plan.cells
('rows', 'string', ['int', 'string'], 4)
>>> plan_rows([{"a": 1}, {"b": 2}]).code
'different_keys'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import etf
from ..errors import BridgeError, EtfError, FormatError
from ..etf import Atom
from ..frame import Frame
from ..header import Format
from ..stats import format_stats, note, reset_format_stats

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DEFAULT_PACKED_MIN",
    "DEFAULT_RECORDS_MIN",
    "KEYS_METADATA",
    "PACKED_DTYPES",
    "Numbers",
    "RecordsPlan",
    "Unsuitable",
    "classify_numbers",
    "format_stats",
    "note",
    "pack",
    "packed_metadata",
    "parse_records_metadata",
    "plan_columns",
    "plan_rows",
    "read_packed",
    "rebuild",
    "records_from_stream",
    "records_metadata",
    "reset_format_stats",
    "to_table",
    "unpack",
]

#: Auto policy: a number list of at least this many elements goes packed. Results only:
#: where bench/formats.exs measured packing faster than ETF from Python to Elixir (the
#: BEAM, sending arguments, packs from 128).
DEFAULT_PACKED_MIN = 256
#: Auto policy: a record list or column map of at least this many cells goes as records
#: (measured like DEFAULT_PACKED_MIN; the BEAM sends records from 256 cells).
DEFAULT_RECORDS_MIN = 1024
#: The nine dtypes of the packed form.
PACKED_DTYPES = (b"|i1", b"|u1", b"<i2", b"<u2", b"<i4", b"<u4", b"<i8", b"<u8", b"<f8")
#: Schema metadata key of a records stream: how keys are rebuilt.
KEYS_METADATA = b"beambridge.keys"
KEY_KINDS = ("atom", "binary", "string")

_INT64 = (-(2**63), 2**63 - 1)
#: (dtype, min, max), narrowest first, signed first at equal size.
_INT_DTYPES = [
    (f"{'|' if size == 1 else '<'}{kind}{size}", lo, hi)
    for size in (1, 2, 4, 8)
    for kind, lo, hi in (("i", -(2 ** (8 * size - 1)), 2 ** (8 * size - 1) - 1),
                         ("u", 0, 2 ** (8 * size) - 1))
]  # fmt: skip
_NONE = type(None)


def _bad(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


# ---- number lists ------------------------------------------------------------------------


@dataclass(frozen=True)
class Unsuitable:
    """Why a value is not a number list / record list / column map: ``code`` (a short
    reason, counted) and ``message`` (for the error a forced format gives)."""

    code: str
    message: str


@dataclass(frozen=True)
class Numbers:
    """A number list: its packed ``dtype``."""

    dtype: str


def classify_numbers(values: list[Any]) -> Numbers | Unsuitable:
    """Whether ``values`` is a number list (§8.1), and its dtype.

    >>> classify_numbers([0, 127]).dtype, classify_numbers([0, 200]).dtype
    ('|i1', '|u1')
    >>> classify_numbers([-1, 2**63]).code, classify_numbers([1.0, math.nan]).code
    ('integer_range', 'not_finite')
    """
    if len(values) < 2:
        return Unsuitable("too_short", "a number list has at least 2 elements")
    kinds = set(map(type, values))
    if len(kinds) != 1:
        names = ", ".join(sorted(t.__name__ for t in kinds))
        if kinds == {int, float}:  # packing would turn 1 into 1.0
            return Unsuitable("mixed_numbers", f"the list mixes {names}")
        return Unsuitable("not_numbers", f"the list holds {names}, not only numbers")
    kind = kinds.pop()
    if kind is int:
        lo, hi = min(values), max(values)
        for dtype, dlo, dhi in _INT_DTYPES:
            if dlo <= lo and hi <= dhi:
                return Numbers(dtype)
        return Unsuitable("integer_range", f"its integers {lo}..{hi} fit neither int64 nor uint64")
    if kind is float:
        if not np.isfinite(np.array(values, dtype="<f8")).all():
            bad = next(v for v in values if not math.isfinite(v))
            return Unsuitable("not_finite", f"it holds the float {bad}")
        return Numbers("<f8")
    return Unsuitable("not_numbers", f"its elements are {kind.__name__}, not int or float")


def pack(values: list[Any], dtype: str) -> np.ndarray[Any, Any]:
    """The 1-D array of a number list in its packed dtype (one C-level pass)."""
    return np.array(values, dtype=np.dtype(dtype))


def packed_metadata(dtype: str, length: int) -> bytes:
    """The schema-0 tensor metadata ``{dtype, [length]}`` of a ``packed`` slice."""
    return etf.encode((dtype.encode(), [length]))


def _packed_dtype(dtype: Any) -> np.dtype[Any]:
    if type(dtype) is not bytes or dtype not in PACKED_DTYPES:
        raise _bad("dtype", dtype, f"packed dtype {_short(dtype)} is not one of "
                   f"{', '.join(d.decode() for d in PACKED_DTYPES)}")  # fmt: skip
    return np.dtype(dtype.decode())


def _to_list(data: Any, dt: np.dtype[Any]) -> list[Any]:
    arr = np.frombuffer(data, dtype=dt)
    if dt.kind == "f" and not np.isfinite(arr).all():
        raise _bad("data", None, "packed floats hold NaN or an infinity, which Erlang "
                   "floats (and ETF) cannot be")  # fmt: skip
    values: list[Any] = arr.tolist()
    return values


def unpack(dtype: Any, data: Any) -> list[Any]:
    """The list of ``{:"$bb_packed", dtype, data}``, or `EtfError` ``bad_term`` (a dtype
    outside the nine, a length that is not a multiple of the item size, non-finite
    floats)."""
    dt = _packed_dtype(dtype)
    if type(data) is not bytes:
        raise _bad("data", _short(data), "packed data is a binary")
    if len(data) % dt.itemsize:
        raise EtfError("bad_term", "data", len(data), None,
                       f"bad_term: {len(data)} bytes of packed {dt.str} data are not a "
                       f"multiple of its item size {dt.itemsize}")  # fmt: skip
    return _to_list(data, dt)


def read_packed(frame: Frame) -> list[Any]:
    """The list of a ``packed`` slice's frame: a tensor frame of schema 0,
    ``{dtype, [length]}``, dtype one of the nine. The payload is copied into the list
    (the caller may release the frame at once). `EtfError` ``bad_term`` otherwise."""
    h = frame.header
    if h.format != Format.TENSOR or h.schema_id != 0 or h.schema_version != 0:
        raise _bad("format", (int(h.format), h.schema_id, h.schema_version),
                   "a packed slice holds a tensor frame of schema 0 (format 1, schema_id 0, "
                   f"schema_version 0), not format {int(h.format)} schema {h.schema_id} "
                   f"version {h.schema_version}")  # fmt: skip
    try:
        meta = etf.decode(frame.metadata, max_depth=4)
    except EtfError as exc:
        raise _bad("metadata", None, f"packed slice metadata: {exc}") from None
    if (
        type(meta) is not tuple
        or len(meta) != 2
        or type(meta[1]) is not list
        or len(meta[1]) != 1
        or type(meta[1][0]) is not int
        or meta[1][0] < 0
    ):
        raise _bad("metadata", _short(meta), "packed slice metadata is {dtype, [length]} "
                   "(a 1-D tensor)")  # fmt: skip
    dt = _packed_dtype(meta[0])
    expected = dt.itemsize * meta[1][0]
    if h.payload_length != expected:
        raise EtfError("bad_term", "payload_length", h.payload_length, expected,
                       f"bad_term: {meta[1][0]} packed {dt.str} elements need {expected} "
                       f"bytes, the frame holds {h.payload_length}")  # fmt: skip
    return _to_list(frame.payload, dt)


# ---- records: checks ---------------------------------------------------------------------


@dataclass(frozen=True)
class RecordsPlan:
    """A record list (``layout`` ``"rows"``) or column map (``"columns"``) ready to be
    written: ``keys`` how keys are rebuilt (``"atom"``, ``"binary"``, ``"string"``),
    ``names`` the column names, ``kinds`` each column's kind (``"int"``, ``"float"``,
    ``"bool"``, ``"binary"``, ``"string"``, ``"null"``), ``columns`` the values."""

    layout: str
    keys: str
    names: list[str]
    kinds: list[str]
    columns: list[list[Any]]
    num_rows: int

    @property
    def cells(self) -> int:
        return self.num_rows * len(self.names)


_SIMPLE_KINDS: dict[type, str] = {float: "float", bool: "bool", bytes: "binary", str: "string"}
_NESTED = (list, tuple, dict, set, frozenset)


def _key_kind(keys: list[Any]) -> tuple[str, list[str]] | Unsuitable:
    """How keys are rebuilt, and the column names."""
    if not keys:
        return "binary", []
    types = set(map(type, keys))
    if len(types) != 1:
        mixed = sorted(t.__name__ for t in types)
        return Unsuitable("bad_keys", f"its keys mix {', '.join(mixed)} (they must be all "
                          "str, all Atom or all bytes)")  # fmt: skip
    kind = types.pop()
    names: list[str] = []
    if kind is str or kind is Atom:
        for key in keys:
            if kind is Atom and (key in ("nil", "true", "false") or key.startswith("$bb_")
                                 or len(key) > etf.MAX_ATOM_CHARS):  # fmt: skip
                return Unsuitable("bad_keys", f"the atom key {key!r} cannot name a column "
                                  "(nil/true/false, $bb_-reserved or too long)")  # fmt: skip
            try:
                key.encode("utf-8")
            except UnicodeEncodeError:
                return Unsuitable("bad_keys", f"the key {key!r:.80} is not valid Unicode")
            names.append(str(key))
        return ("atom" if kind is Atom else "string"), names
    if kind is bytes:
        for key in keys:
            try:
                names.append(key.decode("utf-8"))
            except UnicodeDecodeError:
                return Unsuitable("bad_keys", f"the bytes key {key!r:.80} is not UTF-8")
        return "binary", names
    return Unsuitable("bad_keys", f"its keys are {kind.__name__}, not str, Atom or bytes")


def _column_kind(name: Any, values: list[Any]) -> str | Unsuitable:
    types = set(map(type, values))
    nulls = _NONE in types
    types.discard(_NONE)
    if not types:
        return "null"
    for kind in types:  # a value of no column kind is the reason, before any mix
        if kind not in _SCALARS:
            return _not_a_kind(name, kind)
    if len(types) > 1:
        names = sorted(t.__name__ for t in types)
        return Unsuitable("mixed_kinds", f"column {name!r:.80} mixes {', '.join(names)}")
    kind = types.pop()
    if kind is int:
        present = [v for v in values if v is not None] if nulls else values
        lo, hi = min(present), max(present)
        if lo < _INT64[0] or hi > _INT64[1]:
            bad = lo if lo < _INT64[0] else hi
            return Unsuitable("integer_range", f"column {name!r:.80} holds the integer "
                              f"{bad}, beyond int64")  # fmt: skip
        return "int"
    simple = _SIMPLE_KINDS.get(kind)
    if simple == "float":
        present = [v for v in values if v is not None] if nulls else values
        if not np.isfinite(np.array(present, dtype="<f8")).all():
            bad = next(v for v in present if not math.isfinite(v))
            return Unsuitable("not_finite", f"column {name!r:.80} holds the float {bad}")
    assert simple is not None
    return simple


def _not_a_kind(name: Any, kind: type) -> Unsuitable:
    if issubclass(kind, _NESTED):
        return Unsuitable("nested_value", f"column {name!r:.80} holds a {kind.__name__} "
                          "(a nested value)")  # fmt: skip
    return Unsuitable("unsupported_value", f"column {name!r:.80} holds a {kind.__name__}, "
                      "not int, float, bool, bytes, str or None")  # fmt: skip


_SCALARS = frozenset((int, float, bool, bytes, str, _NONE))


def _quick(pairs: Any) -> Unsuitable | None:
    """The first values of each column (the first row, or each column's first element)
    checked before any full scan: a nested or unsupported value fails at once."""
    for key, value in pairs:
        if type(value) not in _SCALARS:
            return _not_a_kind(key, type(value))
    return None


def _kinds(keys: list[Any], columns: list[list[Any]]) -> list[str] | Unsuitable:
    kinds: list[str] = []
    for key, column in zip(keys, columns, strict=True):
        kind = _column_kind(key, column)
        if isinstance(kind, Unsuitable):
            return kind
        kinds.append(kind)
    return kinds


def plan_rows(rows: list[Any]) -> RecordsPlan | Unsuitable:
    """Whether ``rows`` is a record list (§8.1): at least one exact ``dict``, all with
    the first one's key set, keys of one kind, each column of one kind. Cheap checks
    first (the row types, the keys, the first row's values), then one column at a
    time, so that most lists that do not qualify fail early."""
    if not rows:
        return Unsuitable("empty", "an empty list is not a record list")
    if set(map(type, rows)) != {dict}:
        i, bad = next((i, r) for i, r in enumerate(rows) if type(r) is not dict)
        return Unsuitable("not_maps", f"element {i} is a {type(bad).__name__}, not a dict")
    keys = list(rows[0])
    key_kind = _key_kind(keys)
    if isinstance(key_kind, Unsuitable):
        return key_kind
    quick = _quick(rows[0].items())
    if quick is not None:
        return quick
    if set(map(len, rows)) != {len(keys)}:
        return _different_keys(rows, keys)
    columns: list[list[Any]] = []
    kinds: list[str] = []
    for key in keys:
        try:
            column = list(map(itemgetter(key), rows))
        except KeyError:
            return _different_keys(rows, keys)
        kind = _column_kind(key, column)
        if isinstance(kind, Unsuitable):
            return kind
        columns.append(column)
        kinds.append(kind)
    return RecordsPlan("rows", key_kind[0], key_kind[1], kinds, columns, len(rows))


def _different_keys(rows: list[dict[Any, Any]], keys: list[Any]) -> Unsuitable:
    first = set(keys)
    i, row = next((i, r) for i, r in enumerate(rows) if r.keys() != first)
    return Unsuitable("different_keys", f"element {i} has the keys {_short(sorted(map(repr, row)))}"
                      f", element 0 has {_short(sorted(map(repr, first)))}")  # fmt: skip


def plan_columns(mapping: dict[Any, Any]) -> RecordsPlan | Unsuitable:
    """Whether ``mapping`` is a column map (§8.1): at least one key, every value an exact
    ``list``, all of one length, keys of one kind, each column of one kind."""
    if not mapping:
        return Unsuitable("empty", "an empty map is not a column map")
    keys = list(mapping)
    columns = list(mapping.values())
    if set(map(type, columns)) != {list}:
        key = next(k for k, c in mapping.items() if type(c) is not list)
        return Unsuitable("not_lists", f"the value of key {key!r:.80} is a "
                          f"{type(mapping[key]).__name__}, not a list")  # fmt: skip
    key_kind = _key_kind(keys)
    if isinstance(key_kind, Unsuitable):
        return key_kind
    lengths = set(map(len, columns))
    if len(lengths) != 1:
        n = len(columns[0])
        key = next(k for k, c in mapping.items() if len(c) != n)
        return Unsuitable("ragged_columns", f"column {key!r:.80} has {len(mapping[key])} "
                          f"values, column {keys[0]!r:.80} has {n}")  # fmt: skip
    num_rows = lengths.pop()
    quick = _quick((k, c[0]) for k, c in mapping.items()) if num_rows else None
    if quick is not None:
        return quick
    kinds = _kinds(keys, columns)
    if isinstance(kinds, Unsuitable):
        return kinds
    return RecordsPlan("columns", key_kind[0], key_kind[1], kinds, columns, num_rows)


# ---- records: writing --------------------------------------------------------------------


def _arrow_types() -> dict[str, pa.DataType]:
    import pyarrow as pa

    return {"int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
            "binary": pa.binary(), "string": pa.string(), "null": pa.null()}  # fmt: skip


def to_table(plan: RecordsPlan) -> pa.Table:
    """The Arrow table of a plan: explicit types, every field nullable, schema metadata
    ``beambridge.keys``. ``ValueError`` when pyarrow refuses a value (it should not
    after the checks)."""
    import pyarrow as pa

    types = _arrow_types()
    pairs = zip(plan.names, plan.kinds, strict=True)
    fields = [pa.field(name, types[kind]) for name, kind in pairs]
    schema = pa.schema(fields, metadata={KEYS_METADATA: plan.keys.encode()})
    try:
        if not fields:  # no columns, but rows (replace_schema_metadata would lose them)
            one = pa.schema([pa.field("_", pa.null())], metadata=schema.metadata)
            return pa.Table.from_arrays([pa.nulls(plan.num_rows)], schema=one).drop_columns(["_"])
        arrays = [
            pa.nulls(plan.num_rows) if kind == "null" else pa.array(col, type=types[kind])
            for kind, col in zip(plan.kinds, plan.columns, strict=True)
        ]
        return pa.Table.from_arrays(arrays, schema=schema)
    except (pa.ArrowException, UnicodeError, TypeError, OverflowError) as exc:
        raise ValueError(f"cannot build the records table: {type(exc).__name__}: {exc}") from None


def records_metadata(layout: str, num_rows: int, num_columns: int) -> bytes:
    """The metadata of a ``records`` slice's frame: ETF of ``%{"layout" => layout,
    "num_rows" => n, "num_columns" => c}``.

    >>> etf.decode(records_metadata("rows", 3, 2))[b"layout"]
    b'rows'
    """
    return etf.encode({b"layout": layout.encode(), b"num_rows": num_rows,
                       b"num_columns": num_columns})  # fmt: skip


# ---- records: reading ----------------------------------------------------------------------


def parse_records_metadata(metadata: bytes) -> tuple[str, int, int]:
    """``(layout, num_rows, num_columns)`` of a ``records`` frame's metadata, or
    `EtfError` ``bad_term`` (empty, not ETF, not such a map)."""
    if not metadata:
        raise _bad("metadata", None, "a records slice's frame needs its metadata "
                   '%{"layout", "num_rows", "num_columns"}; this one has none')  # fmt: skip
    try:
        term = etf.decode(metadata, max_depth=4)
    except EtfError as exc:
        raise _bad("metadata", None, f"records slice metadata: {exc}") from None
    if type(term) is not dict:
        raise _bad("metadata", _short(term), "records slice metadata is a map")
    layout = term.get(b"layout")
    counts = [term.get(b"num_rows"), term.get(b"num_columns")]
    if layout not in (b"rows", b"columns") or any(type(c) is not int or c < 0 for c in counts):
        raise _bad("metadata", _short(term), 'records slice metadata is %{"layout" => '
                   '"rows" | "columns", "num_rows" => n, "num_columns" => c}, got '
                   f"{_short(term, 200)}")  # fmt: skip
    rows, columns = counts
    assert isinstance(layout, bytes) and isinstance(rows, int) and isinstance(columns, int)
    return layout.decode(), rows, columns


def _key(kind: bytes, name: str) -> Any:
    if kind == b"string":
        return name
    if kind == b"binary":
        return name.encode("utf-8")
    if len(name) > etf.MAX_ATOM_CHARS:
        raise _bad("names", name, f"column name {name[:40]!r}... is too long for an atom")
    if name in ("nil", "true", "false"):
        return {"nil": None, "true": True, "false": False}[name]
    return Atom(name)


def rebuild(table: pa.Table, layout: str) -> list[Any] | dict[Any, Any]:
    """The value ETF would give for the records ``table``: a list of dicts (``rows``)
    or a dict of lists (``columns``). `EtfError` ``bad_term`` for a missing or unknown
    ``beambridge.keys``, duplicate names, or a column type outside the six."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if layout not in ("rows", "columns"):
        raise _bad("layout", layout, f"records layout {layout!r} is not rows or columns")
    schema = table.schema
    kind = (schema.metadata or {}).get(KEYS_METADATA)
    if kind not in (b"atom", b"binary", b"string"):
        raise _bad("metadata", kind, "a records stream's schema metadata needs "
                   f'"beambridge.keys" => "atom" | "binary" | "string", got {kind!r}')  # fmt: skip
    names = schema.names
    if len(set(names)) != len(names):
        raise _bad("names", names, f"a records stream has duplicate column names: {names!r:.200}")
    allowed = set(_arrow_types().values())
    for field in schema:
        if field.type not in allowed:
            raise _bad("type", str(field.type), f"records column {field.name!r} has the "
                       f"Arrow type {field.type}, not int64, double, bool, binary, string "
                       "or null")  # fmt: skip
    keys = [_key(kind, name) for name in names]
    columns: list[list[Any]] = []
    for i, field in enumerate(schema):
        column = table.column(i)
        if field.type == pa.float64() and pc.all(pc.is_finite(column)).as_py() is False:
            raise _bad("data", field.name, f"records column {field.name!r} holds NaN or an "
                       "infinity, which Erlang floats (and ETF) cannot be")  # fmt: skip
        columns.append(column.to_pylist())
    if layout == "columns":
        return dict(zip(keys, columns, strict=True))
    if not columns:
        return [{} for _ in range(table.num_rows)]
    return [dict(zip(keys, row, strict=True)) for row in zip(*columns, strict=True)]


def records_from_stream(
    data: Any, layout: str, expect: tuple[int, int] | None = None
) -> list[Any] | dict[Any, Any]:
    """Read the Arrow stream ``data`` (bytes, or a slice payload read in place),
    rebuild its value (`rebuild`) and return it; ``expect`` ``(num_rows,
    num_columns)`` from a slice's metadata must match the stream. Nothing made from
    ``data`` outlives the call, on success or error (so a slice frame can be released
    at once). `EtfError` ``bad_term`` for anything malformed."""
    from .arrow import read_arrow_stream

    table = None
    error: BridgeError | None = None
    try:
        table = read_arrow_stream(data)
        if expect is not None and (table.num_rows, table.num_columns) != expect:
            raise _bad("metadata", expect, f"the records metadata says {expect[0]} rows x "
                       f"{expect[1]} columns, the stream holds {table.num_rows} x "
                       f"{table.num_columns}")  # fmt: skip
        value = rebuild(table, layout)
    except FormatError as exc:
        error = _bad("stream", None, f"records stream: {exc}")
    except EtfError as exc:
        error = exc
    table = None
    if error is not None:
        # no frame of this call (holding the table) may stay alive in a traceback
        error.__traceback__ = error.__context__ = error.__cause__ = None
        raise error
    return value
