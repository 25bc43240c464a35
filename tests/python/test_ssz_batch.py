"""Batches of typed-schema values (protocol/formats/ssz.md, "Batches"): a list of values
of one schema is the SSZ list remerkleable writes for them, read back to the same
values, through the column plans and the compiled codecs alike; what does not fit, or
bytes that are no list, are typed errors naming the index and the field."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from beambridge import ssz, ssz_batch, ssz_columns
from beambridge import types as bt
from beambridge.types import SchemaError
from beambridge.versions import read_list
from hypothesis import given, settings
from hypothesis import strategies as st
from remerkleable import complex as rc
from ssz_strategies import _container, containers, values
from test_ssz import rtype, rvalue

NUMBERS = [
    bt.uint8, bt.uint16, bt.uint32, bt.uint64, bt.int8, bt.int16, bt.int32, bt.int64,
    bt.float32, bt.float64, bt.boolean,
]  # fmt: skip

#: Containers of numbers, booleans, strings, bytes, lists and vectors of numbers: the
#: column plans' (beambridge.ssz_columns).
plain = st.lists(
    st.one_of(
        st.sampled_from([*NUMBERS, bt.String, bt.Bytes]),
        st.builds(lambda t, n: bt.Vector[t, n], st.sampled_from(NUMBERS[:-1]), st.integers(1, 3)),
        st.builds(lambda t, n: bt.List[t, n], st.sampled_from(NUMBERS[:-1]), st.integers(0, 5)),
    ),
    min_size=1,
    max_size=6,
).map(_container)


def same_as_remerkleable(t: ssz.ContainerType, vs: list[Any]) -> bytes:
    data = ssz_batch.encode_list(t, vs)
    r = rc.List[rtype(t), max(len(vs), 1)](*[rvalue(t, v) for v in vs])
    assert data == r.encode_bytes()
    assert ssz_batch.decode_list(t, data) == vs
    return data


#: The plans in C (beambridge/_sszc.c) and with NumPy and Arrow, each tested.
IMPLS = ["c", "numpy"]


@contextlib.contextmanager
def plans_in(impl: str) -> Iterator[None]:
    before = ssz_columns.native
    ssz_columns.native = before if impl == "c" else None
    try:
        yield
    finally:
        ssz_columns.native = before


def test_the_c_plans_are_built() -> None:
    # `make build` builds beambridge._sszc; without it every batch takes the slower way
    assert ssz_columns.native is not None, "run .ci/build-ext (make build)"


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_plain_batches_go_by_plans_and_equal_remerkleable(impl: str, data: st.DataObject) -> None:
    with plans_in(impl):
        plain_batch_equals_remerkleable(data)


def plain_batch_equals_remerkleable(data: st.DataObject) -> None:
    t = data.draw(plain)
    p = ssz_columns.plan(t)
    assert p is not None
    vs = data.draw(st.lists(values(t), min_size=1, max_size=40))
    encoded = same_as_remerkleable(t, vs)
    # the plan itself (not a fallback) wrote and read them
    assert p.encode(vs) == encoded
    assert p.decode(memoryview(encoded)) == vs
    # the compiled codecs, value after value, give the same bytes
    enc = ssz.codec(t)[0]
    parts = [enc(v, t.name) for v in vs]
    assert encoded == (b"".join(parts) if t.fixed_size else ssz._with_offsets(parts, 4 * len(vs)))


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_any_batch_equals_remerkleable(data: st.DataObject) -> None:
    t = data.draw(containers(2))
    vs = data.draw(st.lists(values(t), max_size=8))
    same_as_remerkleable(t, vs)


@dataclasses.dataclass
class Metric:
    step: bt.uint64
    loss: bt.float32
    ok: bt.boolean
    latency: bt.Vector[bt.float32, 2]


ssz.schema("t.batch.Metric", version="1.0")(Metric)


@dataclasses.dataclass
class Config:
    name: bt.String
    hidden: bt.uint32
    layers: bt.List[bt.uint16, 8]


ssz.schema("t.batch.Config", version="1.0")(Config)

METRIC = ssz.schema_type(Metric)
CONFIG = ssz.schema_type(Config)


def metrics(n: int) -> list[Metric]:
    return [Metric(i, i / 4, i % 2 == 0, [0.5, float(i % 7)]) for i in range(n)]


def configs(n: int) -> list[Config]:
    return [Config(f"c{i}", i, [i % 65536] * (i % 9)) for i in range(n)]


@pytest.mark.parametrize(
    ("t", "make", "field", "bad"),
    [
        (METRIC, metrics, "step", -1),
        (METRIC, metrics, "loss", float("nan")),
        (METRIC, metrics, "ok", 1),
        (METRIC, metrics, "latency", [0.5]),
        (CONFIG, configs, "hidden", 2**32),
        (CONFIG, configs, "name", b"bytes"),
        (CONFIG, configs, "layers", [1] * 9),
    ],
)
def test_a_bad_value_in_a_batch_of_10k_names_its_index_and_field(
    t: ssz.ContainerType, make: Any, field: str, bad: Any
) -> None:
    vs = make(10_000)
    setattr(vs[7_321], field, bad)
    with pytest.raises(SchemaError) as e:
        ssz_batch.encode_list(t, vs)
    assert e.value.reason == "bad_value"
    assert f"{t.name}[7321].{field}" in str(e.value)


def test_bad_bytes_in_a_batch_name_the_index() -> None:
    data = bytearray(ssz_batch.encode_list(METRIC, metrics(10_000)))
    size = METRIC.fixed_size
    assert size is not None
    data[9_999 * size + 12] = 2  # the boolean of the last value
    with pytest.raises(SchemaError) as e:
        ssz_batch.decode_list(METRIC, bytes(data))
    assert e.value.reason == "bad_ssz" and "Metric[9999].ok" in str(e.value)
    with pytest.raises(SchemaError, match="no whole number"):
        ssz_batch.decode_list(METRIC, bytes(data[:-1]))

    data = bytearray(ssz_batch.encode_list(CONFIG, configs(10_000)))
    data[4 * 5_000 : 4 * 5_000 + 4] = (10**9).to_bytes(4, "little")  # offset 5000 past the end
    with pytest.raises(SchemaError) as e:
        ssz_batch.decode_list(CONFIG, bytes(data))
    # element 4999 ends at that offset, past the end
    assert e.value.reason == "bad_ssz" and "Config[4999]: offsets" in str(e.value)
    with pytest.raises(SchemaError) as e:
        ssz_batch.decode_list(CONFIG, b"\x03\x00\x00\x00")
    assert e.value.reason == "bad_ssz"
    for short in (b"\x04", b"\x04\x00\x00"):  # fewer bytes than one offset
        with pytest.raises(SchemaError, match="fewer than the 4 of an offset") as e:
            ssz_batch.decode_list(CONFIG, short)


def test_empty_and_large_batches() -> None:
    assert ssz_batch.encode_list(CONFIG, []) == b""
    assert ssz_batch.decode_list(CONFIG, b"") == []
    vs = configs(200_000)
    assert ssz_batch.decode_list(CONFIG, ssz_batch.encode_list(CONFIG, vs)) == vs
    ms = metrics(200_000)
    assert ssz_batch.decode_list(METRIC, ssz_batch.encode_list(METRIC, ms)) == ms


def test_what_the_codec_accepts_the_numpy_plan_writes_the_same() -> None:
    ms = metrics(4)
    ms[1].loss = 3  # an int where a float32 goes: written as 3.0
    ms[2].latency = (1.5, 2)  # a tuple, an int
    ms[3].step = 2**64 - 1
    data = ssz_batch.encode_list(METRIC, ms)
    enc = ssz.codec(METRIC)[0]
    assert data == b"".join(enc(m, "m") for m in ms)
    back = ssz_batch.decode_list(METRIC, data)
    assert back[1].loss == 3.0 and back[2].latency == [1.5, 2.0] and back[3].step == 2**64 - 1
    # an int too big for a float64's exact range goes value by value: refused the same
    ms[0].loss = 2**60
    with pytest.raises(SchemaError, match=r"Metric\[0\]\.loss is 1152921504606846976"):
        ssz_batch.encode_list(METRIC, ms)


@ssz.schema("t.batch.Point", version="1.0")
@dataclasses.dataclass
class PointV1:
    x: bt.int32


@ssz.schema(
    "t.batch.Point",
    version="2.1",
    since={"label": "2.1"},
    migrations={"1.0": lambda d: {"x": d["x"], "y": -d["x"]}},
)
@dataclasses.dataclass
class Point:
    x: bt.int32
    y: bt.int32
    label: bt.Optional[bt.String] = None


def test_batches_of_older_versions_are_read_as_the_newest() -> None:
    v1 = ssz_batch.encode_list(ssz.schema_type(PointV1), [PointV1(i) for i in range(5)])
    assert read_list(b"t.batch.Point", b"1.0", v1) == [Point(i, -i) for i in range(5)]
    # 2.0: x and y, no label
    v20 = b"".join(i.to_bytes(4, "little", signed=True) * 2 for i in range(3))
    assert read_list(b"t.batch.Point", b"2.0", v20) == [Point(i, i) for i in range(3)]
    with pytest.raises(SchemaError) as e:
        read_list(b"t.batch.Point", b"2.0", v20[:-1])
    assert e.value.reason == "bad_ssz"


def exact_list(t: ssz.ContainerType) -> Any:
    """The plain list codec: value after value, naming what is wrong."""
    return ssz.codec(bt.ListType(t, 1 << 32))


ODD = [
    -1, 2**64, 2**70, 3, 1.5, 2**60, True, False, float("nan"), float("inf"), 1e39,
    "text", "\ud800", "é", b"raw", bytearray(b"ba"), None, (1, 2), [1, 2.5], [True],
    [-1], [2**16], [1] * 9, [0.5, 1e39], (),
]  # fmt: skip


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_plan_never_differs_from_the_exact_codec(impl: str, data: st.DataObject) -> None:
    # Values that may not fit: the plan writes what the exact codec writes, or gives up
    # (None) and lets it name what is wrong; bytes that are bad: the same for reading.
    with plans_in(impl):
        plan_is_exact(data)


def plan_is_exact(data: st.DataObject) -> None:
    t = data.draw(plain)
    p = ssz_columns.plan(t)
    assert p is not None
    vs = data.draw(st.lists(values(t), min_size=1, max_size=12))
    enc, dec = exact_list(t)
    for _ in range(data.draw(st.integers(0, 3))):
        v = vs[data.draw(st.integers(0, len(vs) - 1))]
        name = t.fields[data.draw(st.integers(0, len(t.fields) - 1))][0]
        setattr(v, name, data.draw(st.sampled_from(ODD)))
    try:
        expected: bytes | None = enc(vs, t.name)
    except SchemaError:
        expected = None
    got = p.encode(vs)
    assert got is None or got == expected
    if expected is None:
        return
    corrupt = bytearray(expected)
    for _ in range(data.draw(st.integers(0, 3))):
        corrupt[data.draw(st.integers(0, len(corrupt) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        corrupt = corrupt[: data.draw(st.integers(0, len(corrupt)))]
    try:
        want = dec(memoryview(bytes(corrupt)), t.name)
    except SchemaError:
        want = None
    # what the exact codec reads, the plan reads the same; what it refuses, the plan too
    read = p.decode(memoryview(bytes(corrupt))) if corrupt else []
    assert read == want, (read, want)


@pytest.mark.parametrize("impl", IMPLS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_plan_reads_random_bytes_as_the_exact_codec(impl: str, data: st.DataObject) -> None:
    t = data.draw(plain)
    p = ssz_columns.plan(t)
    assert p is not None
    raw = data.draw(st.binary(min_size=1, max_size=200))
    try:
        want = exact_list(t)[1](memoryview(raw), t.name)
    except SchemaError:
        want = None
    with plans_in(impl):
        assert p.decode(memoryview(raw)) == want


@pytest.mark.parametrize("impl", IMPLS)
def test_strings_that_are_not_ascii_and_bytes_that_are_no_utf8(impl: str) -> None:
    with plans_in(impl):
        strings_as_the_exact_codec()


def strings_as_the_exact_codec() -> None:
    p = ssz_columns.plan(CONFIG)
    assert p is not None
    vs = [Config("ü" * i + "€", i, [i]) for i in range(300)]
    data = p.encode(vs)
    assert data is not None and p.decode(memoryview(data)) == vs
    assert ssz_batch.decode_list(CONFIG, data) == vs
    # a string that is UTF-8 only joined with the next one is refused, each alone
    two = ssz_batch.encode_list(CONFIG, [Config("ab", 1, []), Config("cd", 2, [])])
    bad = two.replace(b"ab", b"a\xc3").replace(b"cd", b"\xa9d")
    assert p.decode(memoryview(bad)) is None
    with pytest.raises(SchemaError) as e:
        ssz_batch.decode_list(CONFIG, bad)
    assert e.value.reason == "bad_ssz" and "Config[0].name" in str(e.value)
    # a surrogate cannot be written as UTF-8: the exact codec names it
    with pytest.raises(SchemaError) as e:
        ssz_batch.encode_list(CONFIG, [Config("ok", 1, []), Config("\ud800", 2, [])])
    assert "Config[1].name" in str(e.value)


_refs: list[Any] = []


def keep_a_ref(values: list[Any]) -> int:
    """A handler: notes a weak reference to its first value."""
    _refs.append(weakref.ref(values[0]))
    return len(values)


def test_a_batch_argument_is_freed_after_the_answer_is_written() -> None:
    # a large batch takes a while to free, and the collector would walk it over and
    # over: the caller has its answer first, and the collector stays off it until then
    from beambridge import Atom, control
    from beambridge.calls import CallPath
    from beambridge.etf import decode, encode

    gc.collect()
    data = ssz_batch.encode_list(CONFIG, configs(60_000))
    term = (Atom("$bb_schema_list"), b"t.batch.Config", b"1.0", data)
    path = CallPath(threshold=1 << 20)
    try:
        call = control.Call(1, b"test_ssz_batch", b"keep_a_ref", {}, [], True)
        reply = path.run(call, memoryview(encode([term])))
        assert reply.envelope[0] == Atom("ok"), reply.envelope
        assert decode(b"".join(reply.body)) == 60_000
        assert _refs[-1]() is not None  # still alive: the answer is not written yet
        assert gc.get_freeze_count() > 120_000  # instances and their lists
        path.after_answer()
        assert _refs[-1]() is None
        assert gc.get_freeze_count() == 0
        # a small call sets nothing aside
        small = ssz_batch.encode_list(CONFIG, configs(10))
        reply = path.run(call, memoryview(encode([(*term[:3], small)])))
        assert gc.get_freeze_count() == 0
        path.after_answer()
    finally:
        path.close()
