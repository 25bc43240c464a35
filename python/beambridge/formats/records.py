"""Records (protocol/SPEC.md §10.1): record lists and column maps as Arrow streams.

A **record list** (a list of dicts with one key set) or a **column map** (a dict of
lists of one length), keys all ``str``, all `Atom` or all UTF-8 ``bytes``, each column
of one kind (int64, float64, bool, binary, utf8, or only ``None``) goes as
**records**: ``{:"$bb_records", layout, stream}`` with an Arrow IPC stream whose schema
metadata ``beambridge.keys`` says how keys are rebuilt, or a slice of kind ``records``
(an ``arrow_stream`` frame with the metadata of `records_metadata`). The receiver
rebuilds exactly the value ETF would give.

This module holds the checks (`plan_rows`, `plan_columns`), the writer (`to_table`) and
the readers (`records_from_stream`, `rebuild`). pyarrow is imported only when records
are built or read.

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
from .selection import Unsuitable

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "KEYS_METADATA",
    "KEY_KINDS",
    "RecordsPlan",
    "parse_records_metadata",
    "plan_columns",
    "plan_rows",
    "rebuild",
    "records_from_stream",
    "records_metadata",
    "to_table",
]

#: Schema metadata key of a records stream: how keys are rebuilt.
KEYS_METADATA = b"beambridge.keys"
#: The values of `KEYS_METADATA`.
KEY_KINDS = ("atom", "binary", "string")

_INT64 = (-(2**63), 2**63 - 1)
_NONE = type(None)


def _bad(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


def _short(value: Any, n: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= n else text[:n] + "..."


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
        return Unsuitable(
            "bad_keys",
            f"its keys mix {', '.join(mixed)} (they must be all str, all Atom or all bytes)",
        )
    kind = types.pop()
    names: list[str] = []
    if kind is str or kind is Atom:
        for key in keys:
            if kind is Atom and (
                key in ("nil", "true", "false")
                or key.startswith("$bb_")
                or len(key) > etf.MAX_ATOM_CHARS
            ):
                return Unsuitable(
                    "bad_keys",
                    f"the atom key {key!r} cannot name a column "
                    "(nil/true/false, $bb_-reserved or too long)",
                )
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
            return Unsuitable(
                "integer_range", f"column {name!r:.80} holds the integer {bad}, beyond int64"
            )
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
        return Unsuitable(
            "nested_value", f"column {name!r:.80} holds a {kind.__name__} (a nested value)"
        )
    return Unsuitable(
        "unsupported_value",
        f"column {name!r:.80} holds a {kind.__name__}, not int, float, bool, bytes, str or None",
    )


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
    """Whether ``rows`` is a record list (§10.1): at least one exact ``dict``, all with
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
    return Unsuitable(
        "different_keys",
        f"element {i} has the keys {_short(sorted(map(repr, row)))}"
        f", element 0 has {_short(sorted(map(repr, first)))}",
    )


def plan_columns(mapping: dict[Any, Any]) -> RecordsPlan | Unsuitable:
    """Whether ``mapping`` is a column map (§10.1): at least one key, every value an exact
    ``list``, all of one length, keys of one kind, each column of one kind."""
    if not mapping:
        return Unsuitable("empty", "an empty map is not a column map")
    keys = list(mapping)
    columns = list(mapping.values())
    if set(map(type, columns)) != {list}:
        key = next(k for k, c in mapping.items() if type(c) is not list)
        return Unsuitable(
            "not_lists",
            f"the value of key {key!r:.80} is a {type(mapping[key]).__name__}, not a list",
        )
    key_kind = _key_kind(keys)
    if isinstance(key_kind, Unsuitable):
        return key_kind
    lengths = set(map(len, columns))
    if len(lengths) != 1:
        n = len(columns[0])
        key = next(k for k, c in mapping.items() if len(c) != n)
        return Unsuitable(
            "ragged_columns",
            f"column {key!r:.80} has {len(mapping[key])} values, column {keys[0]!r:.80} has {n}",
        )
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

    return {
        "int": pa.int64(),
        "float": pa.float64(),
        "bool": pa.bool_(),
        "binary": pa.binary(),
        "string": pa.string(),
        "null": pa.null(),
    }


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
    return etf.encode(
        {b"layout": layout.encode(), b"num_rows": num_rows, b"num_columns": num_columns}
    )


# ---- records: reading ----------------------------------------------------------------------


def parse_records_metadata(metadata: bytes) -> tuple[str, int, int]:
    """``(layout, num_rows, num_columns)`` of a ``records`` frame's metadata, or
    `EtfError` ``bad_term`` (empty, not ETF, not such a map)."""
    if not metadata:
        raise _bad(
            "metadata",
            None,
            "a records slice's frame needs its metadata "
            '%{"layout", "num_rows", "num_columns"}; this one has none',
        )
    try:
        term = etf.decode(metadata, max_depth=4)
    except EtfError as exc:
        raise _bad("metadata", None, f"records slice metadata: {exc}") from None
    if type(term) is not dict:
        raise _bad("metadata", _short(term), "records slice metadata is a map")
    layout = term.get(b"layout")
    counts = [term.get(b"num_rows"), term.get(b"num_columns")]
    if layout not in (b"rows", b"columns") or any(type(c) is not int or c < 0 for c in counts):
        raise _bad(
            "metadata",
            _short(term),
            'records slice metadata is %{"layout" => '
            '"rows" | "columns", "num_rows" => n, "num_columns" => c}, got '
            f"{_short(term, 200)}",
        )
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


def _records_field(field: pa.Field, allowed: set[pa.DataType]) -> bool:
    """Whether ``field`` is a records column (§10.1): a scalar one, a struct whose field
    metadata says how its keys are rebuilt (of records fields, names unique), or a list
    of such structs (or of nulls)."""
    import pyarrow as pa

    t = field.type
    if t in allowed:
        return True
    if pa.types.is_struct(t):
        kind = (field.metadata or {}).get(KEYS_METADATA)
        names = [t.field(i).name for i in range(t.num_fields)]
        return (
            kind in (b"atom", b"binary", b"string")
            and len(set(names)) == len(names)
            and all(_records_field(t.field(i), allowed) for i in range(t.num_fields))
        )
    if pa.types.is_list(t):
        item = t.value_field
        return item.type == pa.null() or (
            pa.types.is_struct(item.type) and _records_field(item, allowed)
        )
    return False


def _not_finite(column: Any, t: pa.DataType) -> bool:
    """Whether a float64 anywhere in ``column`` (of type ``t``) is NaN or infinite."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if t == pa.float64():
        return pc.all(pc.is_finite(column)).as_py() is False
    if pa.types.is_struct(t):
        return any(
            _not_finite(pc.struct_field(column, [i]), t.field(i).type) for i in range(t.num_fields)
        )
    if pa.types.is_list(t):
        return _not_finite(pc.list_flatten(column), t.value_type)
    return False


def _rekeyed(values: list[Any], field: pa.Field) -> list[Any]:
    """The values of a struct or list-of-struct column with each struct's keys rebuilt
    as its field's ``beambridge.keys`` says (pyarrow gives ``str`` keys)."""
    import pyarrow as pa

    t = field.type
    if pa.types.is_list(t):
        item = t.value_field
        return [None if v is None else _rekeyed(v, item) for v in values]
    if not pa.types.is_struct(t):
        return values
    kind = (field.metadata or {})[KEYS_METADATA]
    subfields = [t.field(i) for i in range(t.num_fields)]
    keys = [(f.name, _key(kind, f.name), f) for f in subfields]
    out: list[Any] = []
    for value in values:
        if value is None:
            out.append(None)
            continue
        out.append({key: _rekeyed([value[name]], f)[0] for name, key, f in keys})
    return out


def rebuild(table: pa.Table, layout: str) -> list[Any] | dict[Any, Any]:
    """The value ETF would give for the records ``table``: a list of dicts (``rows``)
    or a dict of lists (``columns``). `EtfError` ``bad_term`` for a missing or unknown
    ``beambridge.keys``, duplicate names, or a column type outside the six."""

    if layout not in ("rows", "columns"):
        raise _bad("layout", layout, f"records layout {layout!r} is not rows or columns")
    schema = table.schema
    kind = (schema.metadata or {}).get(KEYS_METADATA)
    if kind not in (b"atom", b"binary", b"string"):
        raise _bad(
            "metadata",
            kind,
            "a records stream's schema metadata needs "
            f'"beambridge.keys" => "atom" | "binary" | "string", got {kind!r}',
        )
    names = schema.names
    if len(set(names)) != len(names):
        raise _bad("names", names, f"a records stream has duplicate column names: {names!r:.200}")
    allowed = set(_arrow_types().values())
    for field in schema:
        if not _records_field(field, allowed):
            raise _bad(
                "type",
                str(field.type),
                f"records column {field.name!r} has the "
                f"Arrow type {field.type}, not int64, double, bool, binary, string "
                "or null, a struct of those (with beambridge.keys) or a list of such structs",
            )
    keys = [_key(kind, name) for name in names]
    columns: list[list[Any]] = []
    for i, field in enumerate(schema):
        column = table.column(i)
        if _not_finite(column, field.type):
            raise _bad(
                "data",
                field.name,
                f"records column {field.name!r} holds NaN or an "
                "infinity, which Erlang floats (and ETF) cannot be",
            )
        values = column.to_pylist()
        if field.type not in allowed:
            values = _rekeyed(values, field)
        columns.append(values)
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
            raise _bad(
                "metadata",
                expect,
                f"the records metadata says {expect[0]} rows x "
                f"{expect[1]} columns, the stream holds {table.num_rows} x "
                f"{table.num_columns}",
            )
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
