"""Typed-schema values as Arrow tables (protocol/formats/ssz.md, "Tables"): the name and
version in the schema metadata, the rules of versions when read back, and what no
column can hold refused with advice."""

from __future__ import annotations

import dataclasses
from typing import Any

import pyarrow as pa
import pytest
from beambridge import ssz
from beambridge import types as bt
from beambridge.schema_tables import NAME_KEY, VERSION_KEY, from_table, to_table
from beambridge.types import SchemaError
from hypothesis import given, settings
from hypothesis import strategies as st
from ssz_strategies import _container, values

FLAT = [
    bt.uint8, bt.uint16, bt.uint32, bt.uint64, bt.int8, bt.int16, bt.int32, bt.int64,
    bt.float32, bt.float64, bt.boolean, bt.String, bt.Bytes,
]  # fmt: skip

#: Containers of the field types a column holds.
columnar = st.lists(
    st.one_of(
        st.sampled_from(FLAT),
        st.builds(lambda t: bt.Optional[t], st.sampled_from(FLAT)),
        st.builds(lambda t, n: bt.List[t, n], st.sampled_from(FLAT), st.integers(0, 4)),
        st.builds(lambda t, n: bt.Vector[t, n], st.sampled_from(FLAT), st.integers(1, 3)),
    ),
    min_size=1,
    max_size=6,
).map(_container)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_columnar_schema_goes_to_a_table_and_back(data: st.DataObject) -> None:
    t = data.draw(columnar)
    vs = data.draw(st.lists(values(t), min_size=1, max_size=20))
    table = to_table(vs)
    assert table.schema.metadata == {
        NAME_KEY: t.schema_name.encode(),
        VERSION_KEY: t.cls.__bb_schema__.version.encode(),
    }
    assert from_table(table) == vs


@ssz.schema("t.tables.Run", version="1.0")
@dataclasses.dataclass
class RunV1:
    step: bt.uint32
    loss: bt.float32


def v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
    return {"step": old["step"], "losses": [old["loss"]]}


@ssz.schema("t.tables.Run", version="2.1", since={"note": "2.1"}, migrations={"1.0": v1_to_v2})
@dataclasses.dataclass
class Run:
    step: bt.uint32
    losses: bt.List[bt.float32, 8]
    note: bt.Optional[bt.String] = None


def test_older_versions_of_a_table_are_read_as_the_newest() -> None:
    assert from_table(to_table([RunV1(1, 0.5), RunV1(2, 0.25)])) == [
        Run(1, [0.5]),
        Run(2, [0.25]),
    ]
    # a 2.0 table lacks the note column: its default fills in
    md = {NAME_KEY: b"t.tables.Run", VERSION_KEY: b"2.0"}
    older = pa.table(
        {"step": pa.array([3], pa.uint32()), "losses": [[1.5]]}
    ).replace_schema_metadata(md)
    assert from_table(older) == [Run(3, [1.5])]


def test_what_is_wrong_is_named() -> None:
    with pytest.raises(SchemaError) as e:
        from_table(pa.table({"x": [1]}))
    assert e.value.reason == "bad_metadata" and "names no typed schema" in str(e.value)
    md = {NAME_KEY: b"t.tables.Run", VERSION_KEY: b"2.1"}
    with pytest.raises(SchemaError) as e:
        from_table(pa.table({"step": [1]}).replace_schema_metadata(md))
    assert (
        str(e.value) == 'bad_value: the table of "t.tables.Run" 2.1 lacks the columns losses, note'
    )
    with pytest.raises(SchemaError, match=r"Run\[1\]\.step is -1"):
        to_table([Run(1, []), Run(-1, [])])
    # a value read from a table is checked as a writer would check it
    bad = pa.table({"step": pa.array([1, 300], pa.uint32()), "loss": [0.5, float("nan")]})
    with pytest.raises(SchemaError, match=r"RunV1\[1\]\.loss is nan"):
        from_table(bad.replace_schema_metadata({NAME_KEY: b"t.tables.Run", VERSION_KEY: b"1.0"}))


def test_fields_no_column_holds_are_refused_with_advice() -> None:
    @ssz.schema("t.tables.Nested", version="1.0")
    @dataclasses.dataclass
    class Nested:
        run: RunV1
        pick: bt.Union[None, bt.uint8, bt.String]

    with pytest.raises(SchemaError) as e:
        to_table([Nested(RunV1(1, 0.5), (1, 2))])
    assert e.value.reason == "bad_value" and "send the list itself" in str(e.value)
    with pytest.raises(SchemaError, match="one schema class"):
        to_table([RunV1(1, 0.5), Run(1, [])])
