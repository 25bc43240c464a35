"""Typed schemas' SSZ bytes (protocol/formats/ssz.md) against remerkleable, an SSZ
implementation from PyPI: hypothesis draws schemas (every field type, containers
nested three deep) and values; our bytes must equal remerkleable's and read back to
the same value. Values that do not fit their types, and bytes that are no value, are
typed errors naming the field."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from beambridge import ssz, ssz_batch
from beambridge import types as bt
from beambridge.types import SchemaError
from beambridge.versions import read_value
from hypothesis import HealthCheck, given, settings
from remerkleable import basic as rb
from remerkleable import byte_arrays as rba
from remerkleable import complex as rc
from remerkleable import union as ru
from ssz_json import classes_from_json, value_from_json
from ssz_strategies import schema_and_value

# ---- the same type and value in remerkleable ------------------------------------------------


def rtype(t: bt.SszType) -> Any:
    widths = {8: rb.uint8, 16: rb.uint16, 32: rb.uint32, 64: rb.uint64}
    if isinstance(t, (bt.UInt, bt.Int, bt.Float)):
        return widths[t.bits]  # signed and float: the same bytes as an unsigned of their width
    if isinstance(t, bt.Boolean):
        return rb.boolean
    if isinstance(t, (bt.BytesType, bt.StringType)):
        return rba.ByteList[1 << 32]
    if isinstance(t, bt.ListType):
        return rc.List[rtype(t.elem), max(t.limit, 1)]
    if isinstance(t, bt.VectorType):
        return rc.Vector[rtype(t.elem), t.length]
    if isinstance(t, bt.UnionType):
        return ru.Union[tuple(None if o is None else rtype(o) for o in t.options)]
    assert isinstance(t, ssz.ContainerType)
    fields = {name: rtype(ft) for name, ft, _ in t.fields}
    return type(f"R{t.name}", (rc.Container,), {"__annotations__": fields})


def rvalue(t: bt.SszType, v: Any) -> Any:
    r = rtype(t)
    if isinstance(t, bt.Int):
        return r(v % (1 << t.bits))
    if isinstance(t, bt.Float):
        code = "<f" if t.bits == 32 else "<d"
        return r(int.from_bytes(struct.pack(code, v), "little"))
    if isinstance(t, bt.StringType):
        return r(v.encode("utf-8"))
    if isinstance(t, (bt.ListType, bt.VectorType)):
        return r(*[rvalue(t.elem, x) for x in v])
    if isinstance(t, bt.UnionType):
        selector, value = ((0, None) if v is None else (1, v)) if t.name[0] == "O" else v
        option = t.options[selector]
        return r(selector=selector, value=None if option is None else rvalue(option, value))
    if isinstance(t, ssz.ContainerType):
        return r(**{name: rvalue(ft, getattr(v, name)) for name, ft, _ in t.fields})
    return r(v)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema_and_value())
def test_our_bytes_are_remerkleables_and_read_back(case: tuple[ssz.ContainerType, Any]) -> None:
    t, value = case
    data = ssz.to_ssz(value)
    assert data == rvalue(t, value).encode_bytes()
    back = ssz.from_ssz(t.cls, data)
    assert ssz.to_ssz(back) == data
    if not _has_float(t):  # a float32 reads back rounded; its bytes are the same
        assert back == value


def _has_float(t: Any) -> bool:
    if isinstance(t, bt.Float):
        return True
    inner = getattr(t, "elem", None) or getattr(t, "options", None) or getattr(t, "fields", None)
    if inner is None:
        return False
    items = inner if isinstance(inner, (list, tuple)) else [inner]
    return any(_has_float(i[1] if isinstance(i, tuple) else i) for i in items if i is not None)


# ---- shapes of class, errors -----------------------------------------------------------------


@ssz.schema("test.Point", version="1.0")
class Point(NamedTuple):
    x: bt.int32
    y: bt.int32
    label: bt.Optional[bt.String] = None


def test_named_tuples_with_defaults_are_schemas() -> None:
    data = ssz.to_ssz(Point(-1, 2))
    assert data == struct.pack("<iiI", -1, 2, 12) + b"\x00"
    assert ssz.from_ssz(Point, data) == Point(-1, 2, None)
    assert ssz.from_ssz(Point, ssz.to_ssz(Point(3, 4, "p"))) == Point(3, 4, "p")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (Point(2**31, 0), "Point.x is 2147483648, expected int32"),
        (Point(0, 0, 5), "Point.label is 5, expected a str"),
        (Point("0", 0), "Point.x is '0', expected int32"),
    ],
)
def test_a_value_that_does_not_fit_names_the_field(value: Point, said: str) -> None:
    with pytest.raises(SchemaError) as info:
        ssz.to_ssz(value)
    assert info.value.reason == "bad_value" and said in str(info.value)


def test_nested_paths_are_named() -> None:
    @ssz.schema("test.Outer", version="1.0")
    @dataclasses.dataclass
    class Outer:
        points: bt.List[Point, 4]

    with pytest.raises(SchemaError, match=r"Outer.points\[1\].y is -2147483649"):
        ssz.to_ssz(Outer([Point(0, 0), Point(0, -(2**31) - 1)]))
    with pytest.raises(SchemaError, match=r"Outer.points has 5 elements, expected List"):
        ssz.to_ssz(Outer([Point(0, 0)] * 5))


@pytest.mark.parametrize(
    ("data", "said"),
    [
        (b"\x01\x00\x00\x00", "fewer than the fixed part of 12"),
        (struct.pack("<iiI", 1, 2, 13) + b"\x00", "the first offset is 13, not 12"),
        (struct.pack("<iiI", 1, 2, 12) + b"\x02", "a union selector of 2"),
        (struct.pack("<iiI", 1, 2, 12) + b"\x01\xff", "not UTF-8"),
    ],
)
def test_bytes_that_are_no_value_are_bad_ssz(data: bytes, said: str) -> None:
    with pytest.raises(SchemaError) as info:
        ssz.from_ssz(Point, data)
    assert info.value.reason == "bad_ssz" and said in str(info.value)


def test_a_boolean_byte_over_one_is_refused() -> None:
    @ssz.schema("test.Flag", version="1.0")
    @dataclasses.dataclass
    class Flag:
        on: bt.boolean
        bits: bt.Vector[bt.boolean, 2]

    assert ssz.from_ssz(Flag, b"\x01\x00\x01") == Flag(True, [False, True])
    for data in (b"\x02\x00\x01", b"\x01\x00\x02"):
        with pytest.raises(SchemaError, match="boolean byte"):
            ssz.from_ssz(Flag, data)


def test_unions_do_not_nest() -> None:
    with pytest.raises(TypeError, match="does not nest"):
        bt.Optional[bt.Optional[bt.uint8]]
    with pytest.raises(TypeError, match="does not nest"):
        bt.Union[None, bt.Optional[bt.uint8]]


def test_versions_are_major_dot_minor() -> None:
    with pytest.raises(ValueError, match=r"major\.minor"):
        ssz.schema("test.Bad", version="2")


# ---- golden vectors (protocol/vectors/ssz), read from their JSON alone -------------------------

VECTORS = Path(__file__).resolve().parents[2] / "protocol" / "vectors" / "ssz"
VECTOR_NAMES = sorted(p.stem for p in VECTORS.glob("*.json"))


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_ssz_vector(name: str) -> None:
    doc = json.loads((VECTORS / f"{name}.json").read_text(encoding="utf-8"))
    data = (VECTORS / f"{name}.ssz").read_bytes()
    assert doc["name"] == name and doc["size"] == len(data)
    cls = classes_from_json(doc["schemas"], "vector.")[doc["schema"]]
    t = ssz.schema_type(cls)
    if doc["batch"]:
        batch_vector(t, doc, data)
        return
    if not doc["valid"]:
        with pytest.raises(SchemaError) as info:
            ssz.from_ssz(cls, data)
        assert info.value.reason == doc["error"]["reason"]
        return
    value = value_from_json(t, doc["value"])
    assert ssz.to_ssz(value) == data
    assert rvalue(t, value).encode_bytes() == data  # remerkleable writes the same bytes
    assert ssz.to_ssz(ssz.from_ssz(cls, data)) == data


def batch_vector(t: ssz.ContainerType, doc: dict[str, Any], data: bytes) -> None:
    """A batch (formats/ssz.md, "Batches"): the SSZ list of its values."""
    if not doc["valid"]:
        with pytest.raises(SchemaError) as info:
            ssz_batch.decode_list(t, data)
        assert info.value.reason == doc["error"]["reason"]
        return
    values = [value_from_json(t, v) for v in doc["value"]]
    assert ssz_batch.encode_list(t, values) == data
    r = rc.List[rtype(t), len(values)](*[rvalue(t, v) for v in values])
    assert r.encode_bytes() == data  # remerkleable writes the same list
    assert ssz_batch.decode_list(t, data) == values


def test_the_vectors_hold_the_seeds_four_containers() -> None:
    schemas = {
        json.loads((VECTORS / f"{n}.json").read_text())["schema"]
        for n in VECTOR_NAMES
        if n.startswith("good_")
    }
    expected = {"ModelConfig", "OptimizationConfig", "PerformanceMetrics", "ModelInfo"}
    assert schemas == {f"truthgpt.{n}" for n in expected}


def test_a_schema_term_reads_as_the_declared_class_not_as_a_newer_version() -> None:
    data = ssz.to_ssz(Point(1, 2))
    assert read_value(b"test.Point", b"1.0", data) == Point(1, 2)
    for newer in [b"1.9", b"2.0"]:  # versions.py: older versions are read, never newer
        with pytest.raises(SchemaError) as info:
            read_value(b"test.Point", newer, data)
        assert info.value.reason == "unknown_schema" and "newer than Point here" in str(info.value)
    with pytest.raises(SchemaError) as info:
        read_value(b"test.Nobody", b"1.0", data)
    assert info.value.reason == "unknown_schema" and "@beambridge.schema('test.Nobody'" in str(
        info.value
    )


def test_a_float32_list_past_the_range_is_a_bad_value_naming_the_index() -> None:
    """struct raises OverflowError, not struct.error, for a float past float32's range:
    it is the value's bad_value all the same (found by hypothesis)."""
    from beambridge.ssz import codec
    from beambridge.types import List, SchemaError, float32

    with pytest.raises(SchemaError) as info:
        codec(List[float32, 4])[0]([0.5, 1e39], "f0")
    assert info.value.reason == "bad_value" and "f0[1] is 1e+39" in info.value.message
