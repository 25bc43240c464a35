"""Typed-schema values as Arrow tables (protocol/formats/ssz.md, "Tables"): one column
per field, and the schema's name and version in the table's schema metadata
(``beambridge.schema``, ``beambridge.schema_version``), so that a table read back, here
or on the BEAM (``Bridge.Schema.Tables``), follows the rules of versions: an older
minor's table lacks the later columns (their defaults fill in), an older major's rows
are migrated.

Columns: numbers, booleans, strings and bytes as their Arrow types, ``Optional[T]`` as
a nullable column, ``List`` and ``Vector`` of those as list columns. Unions and nested
schemas have no column here (`SchemaError` ``bad_value``); a list of such values
crosses as one SSZ list instead (`beambridge.ssz_batch`).

>>> from dataclasses import dataclass
>>> from beambridge.ssz import schema
>>> from beambridge.types import List, String, float32, uint32
>>> @schema("example.Run", version="1.2")
... @dataclass
... class Run:
...     step: uint32
...     loss: float32
...     tags: List[String, 4]
>>> table = to_table([Run(1, 0.5, ["a"]), Run(2, 0.25, [])])
>>> table.schema.metadata
{b'beambridge.schema': b'example.Run', b'beambridge.schema_version': b'1.2'}
>>> from_table(table)
[Run(step=1, loss=0.5, tags=['a']), Run(step=2, loss=0.25, tags=[])]
"""

from __future__ import annotations

from typing import Any

from . import versions
from .ssz_batch import encode_list
from .types import (
    Boolean,
    BytesType,
    Float,
    Int,
    ListType,
    SchemaError,
    StringType,
    UInt,
    UnionType,
    VectorType,
)

__all__ = ["NAME_KEY", "VERSION_KEY", "from_table", "to_table"]

NAME_KEY = b"beambridge.schema"
VERSION_KEY = b"beambridge.schema_version"


def to_table(values: list[Any]) -> Any:
    """A ``pyarrow.Table`` of ``values``, instances of one schema class (checked as a
    writer checks them: ``bad_value`` naming the index and the field)."""
    import pyarrow as pa

    cls = type(values[0]) if values else None
    declared = getattr(cls, "__bb_schema__", None)
    if declared is None or any(type(v) is not cls for v in values):
        raise SchemaError("bad_value", "to_table takes a non-empty list of one schema class")
    encode_list(declared.type, values)
    fields, columns = [], []
    for name, ft, _ in declared.type.fields:
        arrow, nullable = _column_type(name, ft)
        fields.append(pa.field(name, arrow, nullable=nullable))
        columns.append(pa.array([getattr(v, name) for v in values], type=arrow))
    metadata = {NAME_KEY: declared.name.encode(), VERSION_KEY: declared.version.encode()}
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=metadata))


def _column_type(name: str, ft: Any) -> tuple[Any, bool]:
    import pyarrow as pa

    basic = {
        **{f"uint{b}": getattr(pa, f"uint{b}")() for b in (8, 16, 32, 64)},
        **{f"int{b}": getattr(pa, f"int{b}")() for b in (8, 16, 32, 64)},
        "float32": pa.float32(),
        "float64": pa.float64(),
    }

    def arrow(t: Any) -> Any:
        if isinstance(t, (UInt, Int, Float)):
            return basic[t.name]
        if isinstance(t, Boolean):
            return pa.bool_()
        if isinstance(t, StringType):
            return pa.string()
        if isinstance(t, BytesType):
            return pa.binary()
        return None

    if isinstance(ft, UnionType) and len(ft.options) == 2 and ft.options[0] is None:
        inner = arrow(ft.options[1])
        if inner is not None:
            return inner, True
    elif isinstance(ft, (ListType, VectorType)):
        inner = arrow(ft.elem)
        if inner is not None:
            return pa.list_(pa.field("item", inner, nullable=False)), False
    elif arrow(ft) is not None:
        return arrow(ft), False
    raise SchemaError(
        "bad_value",
        f"{name} is {ft!r}, expected a field a column can hold: a number, boolean, string "
        "or bytes, an Optional one, or a List or Vector of them (send the list itself: it "
        "goes as one SSZ list)",
        name,
    )


def from_table(table: Any) -> list[Any]:
    """The instances of the newest class declared for the schema a table names in its
    metadata, read as `beambridge.versions` reads the values of its version."""
    metadata = table.schema.metadata or {}
    name, version = metadata.get(NAME_KEY), metadata.get(VERSION_KEY)
    if name is None or version is None:
        raise SchemaError(
            "bad_metadata",
            "the table's schema metadata names no typed schema (beambridge.schema and "
            "beambridge.schema_version); make it with beambridge.schema_tables.to_table",
        )
    t, finish = versions.reader(name, version)
    names = [f for f, _, _ in t.fields]
    missing = [f for f in names if f not in table.column_names]
    if missing:
        raise SchemaError(
            "bad_value",
            f'the table of "{name.decode()}" {version.decode()} lacks the columns '
            f"{', '.join(missing)}",
        )
    columns = [table.column(f).to_pylist() for f in names]
    values = list(map(t.cls, *columns)) if names else [t.cls() for _ in range(table.num_rows)]
    if values:
        encode_list(type(values[0]).__bb_schema__.type, values)  # checked as a writer would
    return values if finish is None else [finish(v) for v in values]
