"""The records form's struct and list<struct> columns, as the Python side rebuilds them
(protocol/SPEC.md §10.1): each struct's field says how its keys are rebuilt."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
from beambridge import Atom, EtfError
from beambridge.formats.records import rebuild

KEYS = b"beambridge.keys"


def table(fields: list[pa.Field], rows: list[dict[str, Any]], keys: bytes = b"atom") -> pa.Table:
    schema = pa.schema(fields, metadata={KEYS: keys})
    return pa.Table.from_pylist(rows, schema=schema)


def user_field(keys: bytes | None) -> pa.Field:
    t = pa.struct([("name", pa.string()), ("w", pa.float64())])
    return pa.field("user", t, metadata=None if keys is None else {KEYS: keys})


@pytest.mark.parametrize(
    ("keys", "name", "w"),
    [(b"atom", Atom("name"), Atom("w")), (b"binary", b"name", b"w"), (b"string", "name", "w")],
)
def test_struct_keys_are_rebuilt_as_their_field_says(keys: bytes, name: Any, w: Any) -> None:
    t = table([user_field(keys)], [{"user": {"name": "ada", "w": 0.5}}, {"user": None}])
    assert rebuild(t, "rows") == [{Atom("user"): {name: "ada", w: 0.5}}, {Atom("user"): None}]


def test_lists_of_structs_and_nested_structs() -> None:
    inner = pa.field("at", pa.struct([("x", pa.int64())]), metadata={KEYS: b"binary"})
    item = pa.field("item", pa.struct([inner, ("sku", pa.binary())]), metadata={KEYS: b"atom"})
    t = table(
        [pa.field("items", pa.list_(item)), pa.field("none", pa.list_(pa.null()))],
        [
            {"items": [{"at": {"x": 1}, "sku": b"s"}, None], "none": []},
            {"items": None, "none": None},
        ],
        keys=b"binary",
    )
    assert rebuild(t, "columns") == {
        b"items": [[{Atom("at"): {b"x": 1}, Atom("sku"): b"s"}, None], None],
        b"none": [[], None],
    }


def test_a_struct_that_does_not_say_how_to_rebuild_its_keys_is_bad_term() -> None:
    t = table([user_field(None)], [{"user": {"name": "a", "w": 1.0}}])
    with pytest.raises(EtfError, match="struct of those") as e:
        rebuild(t, "rows")
    assert e.value.reason == "bad_term"


def test_nan_inside_a_struct_or_list_is_bad_term() -> None:
    t = table([user_field(b"atom")], [{"user": {"name": "a", "w": float("nan")}}])
    with pytest.raises(EtfError, match="NaN"):
        rebuild(t, "rows")
    item = pa.field("item", pa.struct([("w", pa.float64())]), metadata={KEYS: b"atom"})
    t = table([pa.field("l", pa.list_(item))], [{"l": [{"w": float("inf")}]}])
    with pytest.raises(EtfError, match="NaN"):
        rebuild(t, "rows")


def test_other_nested_types_and_repeated_struct_names_are_bad_term() -> None:
    for field in [
        pa.field("l", pa.list_(pa.int64())),
        pa.field("m", pa.map_(pa.string(), pa.int64())),
        pa.field("s", pa.struct([("a", pa.int8())]), metadata={KEYS: b"atom"}),
        pa.field("d", pa.struct([("a", pa.int64()), ("a", pa.int64())]), metadata={KEYS: b"atom"}),
    ]:
        t = pa.Table.from_arrays(
            [pa.nulls(1, field.type)], schema=pa.schema([field], metadata={KEYS: b"atom"})
        )
        with pytest.raises(EtfError) as e:
            rebuild(t, "rows")
        assert e.value.reason == "bad_term", field
