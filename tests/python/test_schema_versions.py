"""Versions of typed schemas (protocol/formats/ssz.md, "Versions"): a reader reads the
bytes of older minors of its major, filling in what later minors added; data of older
majors is migrated step by step; what cannot be read says exactly what to declare."""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import msgspec
import pytest
from beambridge import ssz
from beambridge.types import List, Optional, SchemaError, String, uint16, uint32
from beambridge.versions import read_value
from hypothesis import given
from hypothesis import strategies as st


def read(name: str, version: str, data: bytes) -> Any:
    return read_value(name.encode(), version.encode(), data)


# ---- minors ---------------------------------------------------------------------------------


@ssz.schema("t.Minor", version="2.0")
@dataclasses.dataclass
class Minor20:
    name: String
    size: uint32


@ssz.schema("t.Minor", version="2.3", since={"tags": "2.1", "note": "2.2", "more": "2.3"})
@dataclasses.dataclass
class Minor23:
    name: String
    size: uint32
    tags: List[uint16, 8] = dataclasses.field(default_factory=lambda: [7])
    note: Optional[String] = None
    more: uint32 = 5


def test_older_minors_are_read_with_the_later_fields_filled_in() -> None:
    data = ssz.to_ssz(Minor20("a", 3))
    assert read("t.Minor", "2.0", data) == Minor23("a", 3, [7], None, 5)
    a, b = read("t.Minor", "2.0", data), read("t.Minor", "2.0", data)
    assert a.tags is not b.tags  # a factory's default is made anew each time
    # what a 2.1 writer wrote: name, size and tags
    v21 = bytes.fromhex("0c000000010000000d000000" + "62" + "01000200")
    assert read("t.Minor", "2.1", v21) == Minor23("b", 1, [1, 2], None, 5)
    # the bytes of 2.3 are its own, read as they are
    assert read("t.Minor", "2.3", ssz.to_ssz(Minor23("c", 2, [], "x", 1))) == Minor23(
        "c", 2, [], "x", 1
    )
    # bytes that are no 2.1 value are bad_ssz, naming where
    with pytest.raises(SchemaError) as e:
        read("t.Minor", "2.1", v21[:-1])
    assert e.value.reason == "bad_ssz" and "Minor23.tags" in str(e.value)


@given(name=st.text(max_size=20), size=st.integers(0, 2**32 - 1))
def test_any_older_minor_value_reads_as_itself_plus_defaults(name: str, size: int) -> None:
    assert read("t.Minor", "2.0", ssz.to_ssz(Minor20(name, size))) == Minor23(name, size)


def test_a_newer_minor_is_refused_saying_what_to_declare() -> None:
    with pytest.raises(SchemaError) as e:
        read("t.Minor", "2.4", b"")
    assert e.value.reason == "unknown_schema"
    assert "newer than Minor23 here (2.3)" in str(e.value) and "declare 2.4 here" in str(e.value)


def test_bad_since_declarations_are_refused() -> None:
    def declare(since: dict[str, str], version: str = "2.1") -> None:
        @ssz.schema("t.BadSince", version=version, since=since)
        @dataclasses.dataclass
        class C:
            a: uint32
            b: uint32 = 0
            c: Optional[uint32] = None

    with pytest.raises(ValueError, match=r"is no minor of 2\.1"):
        declare({"b": "2.2"})
    with pytest.raises(ValueError, match=r"is no minor of 2\.1"):
        declare({"b": "1.1"})
    with pytest.raises(ValueError, match=r"is no minor of 2\.1"):
        declare({"zz": "2.1"})
    with pytest.raises(ValueError, match="go last, in order"):
        declare({"a": "2.1"})
    with pytest.raises(ValueError, match="go last, in order"):
        declare({"b": "2.2", "c": "2.1"}, "2.2")

    with pytest.raises(ValueError, match="needs a default"):

        @ssz.schema("t.BadSince", version="2.1", since={"b": "2.1"})
        @dataclasses.dataclass
        class NoDefault:
            a: uint32
            b: uint32


# ---- majors and migrations -------------------------------------------------------------------


class ChainV1(NamedTuple):
    title: String
    hidden: uint16


ssz.schema("t.Chain", version="1.0")(ChainV1)


def v1_to_v2(old: dict[str, Any]) -> dict[str, Any]:
    return {"name": old["title"], "hidden_size": old["hidden"] * 2}


@ssz.schema("t.Chain", version="2.0", migrations={"1.0": v1_to_v2})
class ChainV2(msgspec.Struct):
    name: String
    hidden_size: uint32


def v2_to_v3(old: dict[str, Any]) -> dict[str, Any]:
    return {**old, "layers": [old["hidden_size"] % 65536]}


@ssz.schema("t.Chain", version="3.1", since={"dtype": "3.1"}, migrations={"2.0": v2_to_v3})
@dataclasses.dataclass
class ChainV3:
    name: String
    hidden_size: uint32
    layers: List[uint16, 16]
    dtype: String = "float32"


def test_two_older_majors_are_migrated_step_by_step() -> None:
    assert read("t.Chain", "1.0", ssz.to_ssz(ChainV1("m", 300))) == ChainV3("m", 600, [600])
    assert read("t.Chain", "2.0", ssz.to_ssz(ChainV2("m", 70000))) == ChainV3(
        "m", 70000, [70000 % 65536]
    )
    # an older minor of the newest major: no migration, the default filled in
    three_oh = bytes.fromhex("0c000000010000000d000000" + "6d" + "0200")
    assert read("t.Chain", "3.0", three_oh) == ChainV3("m", 1, [2])


@given(title=st.text(max_size=10), hidden=st.integers(0, 65535))
def test_a_migrated_value_is_what_the_steps_make_of_it(title: str, hidden: int) -> None:
    expected = v2_to_v3(v1_to_v2({"title": title, "hidden": hidden}))
    assert read("t.Chain", "1.0", ssz.to_ssz(ChainV1(title, hidden))) == ChainV3(**expected)


def test_a_newer_major_is_refused() -> None:
    with pytest.raises(SchemaError) as e:
        read("t.Chain", "4.0", b"")
    assert e.value.reason == "unknown_schema"
    assert "newer than ChainV3 here (3.1)" in str(e.value)


def test_no_path_lists_every_missing_step_exactly() -> None:
    @ssz.schema("t.Gap", version="1.2")
    @dataclasses.dataclass
    class G1:
        a: uint32

    @ssz.schema("t.Gap", version="4.0", migrations={"3.0": lambda d: d})
    @dataclasses.dataclass
    class G4:
        a: uint32

    with pytest.raises(SchemaError) as e:
        read("t.Gap", "1.1", ssz.to_ssz(G1(1)))
    assert e.value.reason == "no_migration"
    message = str(e.value)
    assert message.startswith(
        "no_migration: schema 't.Gap' came in version 1.1; the newest here is G4 4.0."
    )
    assert message.endswith(
        "Declare what is missing: "
        "a migration from 1.2 to 2.0 (migrations={'1.2': f} on a class of 2.0 or later); "
        "a migration from 2.0 to 3.0 (migrations={'2.0': f} on a class of 3.0 or later)"
    )
    # a major with no class at all is named as a declaration to make
    with pytest.raises(SchemaError) as e:
        read("t.Gap", "0.5", b"")
    assert "the version 0.5 itself (@beambridge.schema('t.Gap', version='0.5'))" in str(e.value)


def test_a_migration_that_fails_names_the_step_and_leaves_nothing_behind() -> None:
    @ssz.schema("t.Fails", version="1.0")
    @dataclasses.dataclass
    class F1:
        a: uint32

    def boom(old: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("b")

    @ssz.schema("t.Fails", version="2.0", migrations={"1.0": boom})
    @dataclasses.dataclass
    class F2:
        a: uint32

    with pytest.raises(SchemaError) as e:
        read("t.Fails", "1.0", ssz.to_ssz(F1(1)))
    assert e.value.reason == "migration_failed"
    assert "the migration of schema 't.Fails' from 1.0 to 2.0 raised KeyError" in str(e.value)

    @ssz.schema("t.Fails", version="2.0", migrations={"1.0": lambda d: {"a": -d["a"]}})
    @dataclasses.dataclass
    class F2b:
        a: uint32

    with pytest.raises(SchemaError) as e:
        read("t.Fails", "1.0", ssz.to_ssz(F1(1)))
    assert e.value.reason == "migration_failed"
    assert "from 1.0 to 2.0 gave a bad value: bad_value: F2b.a is -1, expected uint32" in str(
        e.value
    )
    # unknown keys from a migration are its failure too
    migrations = {"1.0": lambda d: {"a": 1, "zz": 2}}

    @ssz.schema("t.Fails", version="2.0", migrations=migrations)
    @dataclasses.dataclass
    class F2c:
        a: uint32

    with pytest.raises(SchemaError, match="gave fields F2c takes not"):
        read("t.Fails", "1.0", ssz.to_ssz(F1(1)))

    @ssz.schema("t.Fails", version="2.0", migrations={"1.0": lambda d: [d]})
    @dataclasses.dataclass
    class F2d:
        a: uint32

    with pytest.raises(SchemaError, match=r"gave \[\{'a': 1\}\], not a dict of fields"):
        read("t.Fails", "1.0", ssz.to_ssz(F1(1)))


def test_bad_migration_declarations_are_refused() -> None:
    with pytest.raises(ValueError, match="not from an older major"):
        ssz.schema("t.BadMig", version="2.0", migrations={"2.0": lambda d: d})
    with pytest.raises(ValueError, match="not from an older major"):
        ssz.schema("t.BadMig", version="2.0", migrations={"1.0": "nope"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match=r"major\.minor"):
        ssz.schema("t.BadMig", version="2")


def test_a_bad_version_on_the_wire_is_a_typed_error() -> None:
    with pytest.raises(SchemaError) as e:
        read("t.Chain", "three", b"")
    assert e.value.reason == "bad_ssz" and "'three' is no 'major.minor'" in str(e.value)
