"""Format selection (protocol/SPEC.md §10.1): number lists packed, record lists and column
maps as records, under the policies auto / etf / packed / arrow, inline and through
slices, both ways; the receiver always gets the value plain ETF gives."""

from __future__ import annotations

import doctest
import logging
import math
import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from beambridge import Atom, EtfError, FormatUnsuitableError, format_stats, reset_format_stats
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.etf import decode, encode, encode_parts
from beambridge.formats import packed as packed_format
from beambridge.formats import records as records_format
from beambridge.formats import selection
from beambridge.header import Format
from beambridge.terms import TAG_PACKED, TAG_RECORDS, TAG_SLICE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import INT64, number_lists, records
from test_etf import canon
from worker_harness import BAD_CALL, Loopback, WorkerProcess, running

ROWS, COLUMNS = Atom("rows"), Atom("columns")
KIND_PACKED, KIND_RECORDS = Atom("packed"), Atom("records")
FORMATS = Atom("bbtest_formats")
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(autouse=True)
def fresh_stats() -> None:
    reset_format_stats()


def wire(value: Any, encoder: ResultEncoder | None = None, **kw: Any) -> Any:
    """The term a result becomes on the wire (decoded, as the BEAM's binary_to_term)."""
    return decode(b"".join(encode_parts(value, encoder or ResultEncoder(**kw))))


def received(term: Any) -> Any:
    """What a handler gets for that term as an argument."""
    return Decoder().decode(term)


def etf_value(value: Any) -> Any:
    """What plain ETF gives for ``value`` (the reference every form must match)."""
    return decode(encode(value))


def same_as_etf(value: Any, policy: str) -> Any:
    """Encode ``value`` under ``policy``, read it back, and check it is what ETF gives
    (str and bytes are both binaries: compared with `canon`). Returns the term."""
    term = wire(value, policy=policy)
    assert canon(received(term)) == canon(etf_value(value)), term
    return term


def stream_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def test_doctests() -> None:
    import beambridge.decoder
    import beambridge.encoder

    for module in (records_format, beambridge.decoder, beambridge.encoder):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0 and result.attempted > 0


# ---- number lists: the dtype, the policies -----------------------------------------------


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([0, 127], "|i1"), ([-128, 0], "|i1"), ([0, 128], "|u1"), ([0, 255], "|u1"),
        ([-1, 128], "<i2"), ([0, 2**15], "<u2"), ([0, 2**16 - 1], "<u2"), ([-1, 2**15], "<i4"),
        ([0, 2**31], "<u4"), ([-1, 2**31], "<i8"), ([0, 2**32], "<i8"), (list(INT64), "<i8"),
        ([0, 2**63], "<u8"), ([0, 2**64 - 1], "<u8"), ([0.5, -0.0], "<f8"),
        ([1e308, 5e-324], "<f8"),
    ],
)  # fmt: skip
def test_the_narrowest_dtype_signed_first(values: list[Any], dtype: str) -> None:
    term = wire(values, policy="packed")
    assert term[:2] == (TAG_PACKED, dtype.encode())
    assert term[2] == np.array(values, dtype=dtype).tobytes()
    assert received(term) == values


@pytest.mark.parametrize(
    ("values", "code"),
    [
        ([1, 2.0], "mixed_numbers"), ([1.0, 2], "mixed_numbers"), ([True, False], "not_numbers"),
        ([1, True], "not_numbers"), ([-1, 2**63], "integer_range"), ([0, 2**64], "integer_range"),
        ([-(2**63) - 1, 0], "integer_range"), ([1.0, math.inf], "not_finite"),
        ([math.nan, 1.0], "not_finite"), ([1], "too_short"), ([], "too_short"),
    ],
)  # fmt: skip
def test_not_number_lists(values: list[Any], code: str) -> None:
    result = packed_format.classify_numbers(values)
    assert isinstance(result, selection.Unsuitable) and result.code == code


def test_lists_that_are_not_number_lists_stay_lists_even_when_forced() -> None:
    for values in ([1, 2.0, 3] * 100, [True, False] * 200, [0, 2**64] * 200, [1, "a"] * 200):
        assert wire(values, policy="packed") == etf_value(values)
    counted = {reason for (_, form, reason) in format_stats() if form == "etf"}
    assert counted == {"mixed_numbers", "integer_range", "not_numbers"}  # bools: first not int


def test_auto_packs_from_packed_min() -> None:
    assert wire(list(range(-1, 254))) == list(range(-1, 254))  # 255 elements: ETF
    assert wire(list(range(-1, 255)))[0] == TAG_PACKED  # 256: packed
    assert wire([0.5] * 255) == [0.5] * 255
    assert wire([0.5] * 256)[:2] == (TAG_PACKED, b"<f8")
    enc = ResultEncoder(packed_min=10)
    assert wire(list(range(-1, 9)), enc)[0] == TAG_PACKED
    enc.packed_min = 11
    assert wire(list(range(-1, 9)), enc) == list(range(-1, 9))


def test_byte_lists_go_packed_like_any_number_list() -> None:
    # STRING_EXT is one byte per element too, but measured slower end to end than packed
    # from packed_min on (bench/formats.exs, "bytes"); below it they stay STRING_EXT
    small = [i % 256 for i in range(65535)]
    assert wire(small)[:2] == (TAG_PACKED, b"|u1")
    assert format_stats()[("to_elixir", "packed", "auto")]["bytes"] == 65535
    assert b"".join(encode_parts(small[:255], ResultEncoder()))[1:2] == b"k"  # STRING_EXT
    assert wire(small, policy="packed")[:2] == (TAG_PACKED, b"|u1")  # forced: packed anyway
    assert wire([0, 1], policy="packed") == (TAG_PACKED, b"|i1", b"\x00\x01")


def test_etf_policy_never_packs() -> None:
    values = list(range(-1000, 1000))
    assert wire(values, policy="etf") == values
    assert wire({"l": [[1.5] * 300]}, policy="etf") == {b"l": [[1.5] * 300]}
    assert format_stats() == {}


def test_nested_number_lists_are_packed() -> None:
    value = {Atom("a"): [list(range(300)), (list(range(300)),)], b"k": [1, 2]}
    term = wire(value, policy="auto")
    assert term[Atom("a")][0][0] == TAG_PACKED and term[Atom("a")][1][0][0] == TAG_PACKED
    assert term[b"k"] == [1, 2]
    assert canon(received(term)) == canon(etf_value(value))


def test_nan_is_still_refused() -> None:
    for policy in ("auto", "packed"):
        with pytest.raises(ValueError, match="NaN"):
            wire([1.0, math.nan] * 200, policy=policy)


@given(number_lists(), st.sampled_from(["auto", "packed"]))
@SETTINGS
def test_packed_gives_what_etf_gives(values: list[Any], policy: str) -> None:
    term = same_as_etf(values, policy)
    if policy == "packed":
        assert term[0] == TAG_PACKED
        dtype = np.dtype(term[1].decode())
        assert len(term[2]) == dtype.itemsize * len(values)


# ---- record lists and column maps --------------------------------------------------------------


@given(records())
@SETTINGS
def test_records_give_what_etf_gives(value: Any) -> None:
    term = same_as_etf(value, "arrow")
    assert term[:2] == (TAG_RECORDS, ROWS if type(value) is list else COLUMNS)


@given(records(max_rows=3), st.integers(2, 5))
@SETTINGS
def test_records_in_several_batches(value: Any, batches: int) -> None:
    """A stream of several batches (the BEAM may write them) rebuilds the same value."""
    term = wire(value, policy="arrow")
    table = pa.ipc.open_stream(term[2]).read_all()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        for _ in range(batches):
            writer.write_table(table)
    got = received((TAG_RECORDS, term[1], sink.getvalue().to_pybytes()))
    if type(value) is list:
        assert canon(got) == canon(etf_value(value * batches))
    else:
        assert canon(got) == canon(etf_value({k: v * batches for k, v in value.items()}))


def test_the_stream_has_explicit_types_and_key_metadata() -> None:
    value = [{"i": 1, "f": 1.5, "b": True, "y": b"x", "s": "é", "n": None},
             {"i": None, "f": None, "b": None, "y": None, "s": None, "n": None}]  # fmt: skip
    term = wire(value, policy="arrow")
    schema = pa.ipc.open_stream(term[2]).schema
    assert [str(f.type) for f in schema] == ["int64", "double", "bool", "binary", "string", "null"]
    assert schema.names == ["i", "f", "b", "y", "s", "n"]
    assert schema.metadata == {b"beambridge.keys": b"string"}
    assert wire({Atom("a"): [1]}, policy="arrow")[1] == COLUMNS
    atoms = pa.ipc.open_stream(wire({Atom("a"): [1]}, policy="arrow")[2]).schema.metadata
    assert atoms == {b"beambridge.keys": b"atom"}
    binary = pa.ipc.open_stream(wire([{b"k": 1}], policy="arrow")[2]).schema.metadata
    assert binary == {b"beambridge.keys": b"binary"}


def test_edge_shapes() -> None:
    for value in ({"a": [], "b": []}, [{"x": None}, {"x": None}], [{}, {}],
                  {Atom("ok"): [1, None], Atom("error"): [b"\x00\xff", None]}):  # fmt: skip
        term = same_as_etf(value, "arrow")
        assert term[0] == TAG_RECORDS


def test_auto_sends_records_from_records_min() -> None:
    assert ResultEncoder().records_min == 1024
    rows = [{"a": i, "b": float(i)} for i in range(512)]  # 1024 cells
    assert wire(rows)[:2] == (TAG_RECORDS, ROWS)
    assert type(wire(rows[:-1])) is list  # 1022 cells: ETF
    cols = {"a": list(range(1024)), "b": [1.5] * 1024, "c": ["x"] * 1024, "d": [None] * 1024}
    assert wire(cols)[:2] == (TAG_RECORDS, COLUMNS)
    as_etf = wire(cols, records_min=4097)
    assert type(as_etf) is dict and as_etf[b"a"][0] == TAG_PACKED  # the columns still can be
    assert canon(received(as_etf)) == canon(etf_value(cols))
    assert wire(rows, policy="etf") == etf_value(rows)
    assert wire(rows, policy="packed")[0] == TAG_RECORDS  # records stay auto under packed


@pytest.mark.parametrize(
    ("value", "code", "text"),
    [
        ([{"a": 1}, {"a": 2, "b": 3}], "different_keys", "element 1"),
        ([{"a": 1}, {"b": 2}], "different_keys", "element 1"),
        ([{"a": 1}, {"a": 2.5}], "mixed_kinds", "float, int"),
        ([{"a": 1}, {"a": "x"}], "mixed_kinds", "int, str"),
        ([{"a": 2**63}], "integer_range", "beyond int64"),
        ([{"a": 1}, {"a": -(2**63) - 1}], "integer_range", "beyond int64"),
        ([{"a": 1.0}, {"a": math.nan}], "not_finite", "nan"),
        ([{"a": [1, 2]}], "nested_value", "list"),
        ([{"a": 1}, {"a": {"x": 1}}], "nested_value", "dict"),
        ([{"a": Atom("x")}], "unsupported_value", "Atom"),
        ([{"a": bytearray(b"x")}], "unsupported_value", "bytearray"),
        ([{"a": 1, b"b": 2}], "bad_keys", "bytes, str"),
        ([{1: 1}], "bad_keys", "int"),
        ([{Atom("$bb_x"): 1}], "bad_keys", "$bb_x"),
        ([{b"\xff": 1}], "bad_keys", "UTF-8"),
        ([{"\udc80": 1}], "bad_keys", "Unicode"),
        ({"a": [1, 2], "b": [1]}, "ragged_columns", "column 'b'"),
        ({"a": [1, 2.0]}, "mixed_kinds", "column 'a'"),
        ({"a": [(1,)]}, "nested_value", "tuple"),
    ],
)
def test_forced_arrow_names_the_first_reason(value: Any, code: str, text: str) -> None:
    with pytest.raises(FormatUnsuitableError) as info:
        wire(value, policy="arrow")
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.reason, err.field, err.value, err.limit) == ("format_unsuitable", "format",
                                                             "arrow", code)  # fmt: skip
    assert text in str(err) and "format: :auto" in str(err) and code in str(err)
    # under auto the same value goes as ETF (or fails as ETF does), counted with the reason
    try:
        expected = canon(etf_value(value))
    except ValueError:
        with pytest.raises(ValueError):
            wire(value, records_min=1)
    else:
        if text.startswith("$bb_"):
            # a reserved atom is no user data (SPEC §9): the receiver refuses it
            with pytest.raises(EtfError):
                received(wire(value, records_min=1))
            return
        assert canon(received(wire(value, records_min=1))) == expected
        assert format_stats().get(("to_elixir", "etf", code), {}).get("count") == 1


def test_forced_arrow_leaves_what_is_not_a_list_of_maps_alone() -> None:
    for value in ([{"a": 1}, 2], [1, {"a": 1}], {"a": [1], "b": 2}, {"a": 1, "b": [2]}, [], {}):
        assert wire(value, policy="arrow") == etf_value(value)


def test_dict_subclasses_are_not_candidates() -> None:
    class D(dict):  # type: ignore[type-arg]
        pass

    assert wire([D(a=1)] * 3000) == [{b"a": 1}] * 3000
    as_map = wire(D(a=[1000] * 300), records_min=4097)  # not a column map: 300 cells < 4097
    assert as_map[b"a"][0] == TAG_PACKED  # the inner list still can be


# ---- arguments from the BEAM ----------------------------------------------------------------


def beam_stream(columns: dict[str, pa.Array], keys: str = "binary") -> bytes:
    table = pa.table(columns).replace_schema_metadata({b"beambridge.keys": keys.encode()})
    return stream_of(table)


def test_beam_records_are_what_etf_gives() -> None:
    stream = beam_stream({"id": pa.array([1, None], pa.int64()),
                          "name": pa.array([b"a", b"\xff"], pa.binary()),
                          "ok": pa.array([True, None]), "x": pa.array([None, 0.5]),
                          "nil": pa.nulls(2)})  # fmt: skip
    rows = received((TAG_RECORDS, ROWS, stream))
    assert rows == [
        {b"id": 1, b"name": b"a", b"ok": True, b"x": None, b"nil": None},
        {b"id": None, b"name": b"\xff", b"ok": None, b"x": 0.5, b"nil": None},
    ]
    assert all(type(k) is bytes for k in rows[0])
    cols = received((TAG_RECORDS, COLUMNS, stream))
    assert cols[b"id"] == [1, None] and list(cols) == [b"id", b"name", b"ok", b"x", b"nil"]
    assert format_stats()[("from_elixir", "records", "inline")]["count"] == 2


def test_key_kinds() -> None:
    stream = beam_stream({"a": pa.array([1]), "nil": pa.array([2]), "s": pa.array(["é"])}, "atom")
    [row] = received((TAG_RECORDS, ROWS, stream))
    assert row == {Atom("a"): 1, None: 2, Atom("s"): "é"}
    assert type(next(iter(row))) is Atom and type(row[Atom("s")]) is str
    [row] = received((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([1])}, "string")))
    assert type(next(iter(row))) is str


def test_zero_columns_and_rows() -> None:
    schema = pa.schema([pa.field("_", pa.null())], metadata={b"beambridge.keys": b"atom"})
    stream = stream_of(pa.Table.from_arrays([pa.nulls(3)], schema=schema).drop_columns(["_"]))
    assert received((TAG_RECORDS, ROWS, stream)) == [{}, {}, {}]
    assert received((TAG_RECORDS, COLUMNS, stream)) == {}
    empty = beam_stream({"a": pa.array([], pa.int64())})
    assert received((TAG_RECORDS, ROWS, empty)) == []
    assert received((TAG_RECORDS, COLUMNS, empty)) == {b"a": []}


@pytest.mark.parametrize(
    ("term", "text"),
    [
        ((TAG_RECORDS, ROWS, b"junk"), "bad_arrow_stream"),
        ((TAG_RECORDS, ROWS, b""), "bad_arrow_stream"),
        ((TAG_RECORDS, Atom("cells"), b""), "layout"),
        ((TAG_RECORDS, b"rows", b""), "layout"),
        ((TAG_RECORDS, ROWS, "text"), "binary"),
        ((TAG_RECORDS, ROWS, stream_of(pa.table({"a": [1]}))), "beambridge.keys"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([1])}, "latin1")), "beambridge.keys"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([1], pa.int32())})), "int32"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array(["x"], pa.large_string())})),
         "large_string"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([[1]])})), "list"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([1.0], pa.float32())})), "float"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array(["x"]).dictionary_encode()})),
         "dictionary"),
        ((TAG_RECORDS, ROWS, beam_stream({"a": pa.array([math.nan])})), "NaN"),
        ((TAG_RECORDS, COLUMNS, beam_stream({"a": pa.array([math.inf])})), "NaN"),
        ((TAG_RECORDS, ROWS, beam_stream({"a" * 256: pa.array([1])}, "atom")), "too long"),
    ],
)  # fmt: skip
def test_bad_records_are_bad_term(term: Any, text: str) -> None:
    with pytest.raises(EtfError) as info:
        received(term)
    assert info.value.reason == "bad_term" and text in str(info.value)


def test_duplicate_names_are_bad_term() -> None:
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2])], names=["a", "a"])
    stream = stream_of(table.replace_schema_metadata({b"beambridge.keys": b"binary"}))
    with pytest.raises(EtfError, match="duplicate"):
        received((TAG_RECORDS, ROWS, stream))


@pytest.mark.parametrize(
    ("term", "text"),
    [
        ((TAG_PACKED, b"<f4", b"\x00" * 8), "<f4"),
        ((TAG_PACKED, b">i2", b"\x00" * 8), ">i2"),
        ((TAG_PACKED, b"<i1", b"\x00" * 8), "<i1"),
        ((TAG_PACKED, "<i2", b"\x00" * 8), "<i2"),
        ((TAG_PACKED, b"<c16", b"\x00" * 16), "<c16"),
        ((TAG_PACKED, b"<i2", b"\x00" * 3), "multiple"),
        ((TAG_PACKED, b"<f8", b"\x00" * 9), "multiple"),
        ((TAG_PACKED, b"<i4", [1, 2]), "binary"),
        ((TAG_PACKED, b"<f8", struct.pack("<2d", 1.0, math.nan)), "NaN"),
        ((TAG_PACKED, b"<f8", struct.pack("<d", -math.inf)), "NaN"),
        ((TAG_PACKED, b"<f8"), "malformed"),
    ],
)
def test_bad_packed_terms_are_bad_term(term: Any, text: str) -> None:
    with pytest.raises(EtfError) as info:
        received(term)
    assert info.value.reason == "bad_term" and text in str(info.value)


@given(st.sampled_from([d.decode() for d in packed_format.PACKED_DTYPES]), st.binary(max_size=64))
@SETTINGS
def test_any_packed_bytes_give_what_the_list_would(dtype: str, raw: bytes) -> None:
    dt = np.dtype(dtype)
    raw = raw[: len(raw) - len(raw) % dt.itemsize]
    arr = np.frombuffer(raw, dtype=dt)
    if dt.kind == "f" and not np.isfinite(arr).all():
        with pytest.raises(EtfError):
            received((TAG_PACKED, dtype.encode(), raw))
        return
    got = received((TAG_PACKED, dtype.encode(), raw))
    assert got == arr.tolist() and all(type(x) is (float if dt.kind == "f" else int) for x in got)
    assert canon(got) == canon(etf_value(arr.tolist()))


def test_packed_arguments_of_any_length() -> None:
    assert received((TAG_PACKED, b"<i8", b"")) == []
    assert received((TAG_PACKED, b"|u1", b"\x07")) == [7]


# ---- slices ---------------------------------------------------------------------------------


@pytest.fixture
def loop() -> Iterator[Loopback]:
    lb = Loopback(threshold=4096)
    yield lb
    lb.close()
    assert lb.beam.lent == {}


def result_frame(loop: Loopback, term: Any) -> Any:
    """The frame of a result handle, read as the BEAM reads it (release it after)."""
    _, object_id, offset, length, generation, _ = loop.entries[term[2]]
    return loop.beam.peers.get(object_id).read_frame(offset, length, generation)


def test_packed_in_a_slice(loop: Loopback) -> None:
    values = list(range(-5000, 5000))
    term = loop.result(values)
    assert term[:2] == (TAG_SLICE, KIND_PACKED)
    frame = result_frame(loop, term)
    h = frame.header
    assert (h.format, h.schema_id, h.schema_version) == (Format.TENSOR, 0, 0)
    assert decode(frame.metadata) == (b"<i2", [10000])
    assert bytes(frame.payload) == np.array(values, "<i2").tobytes()
    frame.release()
    assert loop.back(term) == values  # a decoder reads the same slice back
    stats = format_stats()
    assert stats[("to_elixir", "packed", "auto")] == {"count": 1, "bytes": 20000}
    assert stats[("from_elixir", "packed", "slice")] == {"count": 1, "bytes": 20000}


def test_records_in_a_slice(loop: Loopback) -> None:
    rows = [{"id": i, "name": f"n{i}", "v": None if i % 3 else i / 3} for i in range(3000)]
    term = loop.result(rows)
    assert term[:2] == (TAG_SLICE, KIND_RECORDS)
    frame = result_frame(loop, term)
    assert frame.header.format == Format.ARROW_STREAM
    assert decode(frame.metadata) == {b"layout": b"rows", b"num_rows": 3000, b"num_columns": 3}
    frame.release()
    assert canon(loop.back(term)) == canon(etf_value(rows))
    assert ("to_elixir", "records", "auto") in format_stats()


def test_below_the_threshold_stays_inline() -> None:
    lb = Loopback(threshold=1 << 20)
    assert lb.result(list(range(300)))[0] == TAG_PACKED
    assert lb.result([{"a": i} for i in range(5000)])[0] == TAG_RECORDS
    assert lb.slices.arenas is not None and lb.slices.arenas.total == 0
    lb.close()


def records_meta(layout: str = "rows", rows: int = 2, columns: int = 1) -> bytes:
    return encode({b"layout": layout.encode(), b"num_rows": rows, b"num_columns": columns})


def test_beam_slice_arguments(loop: Loopback) -> None:
    data = np.array([1, -2, 3], "<i4").tobytes()
    arg = loop.beam.slice("packed", data, metadata=encode((b"<i4", [3])))
    assert loop.argument(arg) == [1, -2, 3]
    assert loop.beam.lent == {}  # copied out: released at once
    stream = beam_stream({"a": pa.array([1, 2])})
    arg = loop.beam.slice("records", stream, metadata=records_meta())
    assert loop.argument(arg) == [{b"a": 1}, {b"a": 2}]
    arg = loop.beam.slice("records", stream, metadata=records_meta("columns"))
    assert loop.argument(arg) == {b"a": [1, 2]}
    assert loop.beam.lent == {}


@pytest.mark.parametrize(
    ("payload", "metadata", "fmt", "header", "text"),
    [
        (b"\x00" * 8, encode((b"<i4", [2])), Format.RAW, {}, "format"),
        (b"\x00" * 8, encode((b"<i4", [1, 2])), Format.TENSOR, {}, "1-D"),
        (b"\x00" * 8, encode((b"<i4", [])), Format.TENSOR, {}, "1-D"),
        (b"\x00" * 8, encode((b"<f4", [2])), Format.TENSOR, {}, "<f4"),
        (b"\x00" * 8, encode((b"<i4", [3])), Format.TENSOR, {}, "need 12 bytes"),
        (
            b"\x00" * 8,
            encode({b"dtype": b"<i4", b"shape": [2]}),
            Format.TENSOR,
            {"schema_id": 1, "schema_version": 1},
            "schema",
        ),
        (b"\x00" * 8, b"junk", Format.TENSOR, {}, "metadata"),
    ],
)
def test_bad_packed_slices(
    loop: Loopback, payload: bytes, metadata: bytes, fmt: Format, header: dict[str, Any], text: str
) -> None:
    arg = loop.beam.slice("packed", payload, metadata=metadata, format=fmt, **header)
    with pytest.raises(EtfError) as info:
        loop.argument(arg)
    assert info.value.reason == "bad_term" and text in str(info.value)
    assert loop.beam.lent == {}  # refused: released all the same


@pytest.mark.parametrize(
    ("metadata", "text"),
    [
        (b"", "none"),
        (b"junk", "metadata"),
        (encode([1]), "map"),
        (encode({b"layout": b"cells", b"num_rows": 2, b"num_columns": 1}), "layout"),
        (encode({b"layout": b"rows", b"num_columns": 1}), "num_rows"),
        (records_meta(rows=3), "3 rows"),
        (records_meta(columns=2), "2 columns"),
    ],
)
def test_bad_records_slice_metadata(loop: Loopback, metadata: bytes, text: str) -> None:
    stream = beam_stream({"a": pa.array([1, 2])})
    arg = loop.beam.slice("records", stream, metadata=metadata)
    with pytest.raises(EtfError) as info:
        loop.argument(arg)
    assert info.value.reason == "bad_term" and text in str(info.value)
    assert loop.beam.lent == {}


def test_bad_records_slice_streams_end_the_lease(loop: Loopback) -> None:
    for stream, text in ((b"x" * 100, "bad_arrow_stream"),
                         (beam_stream({"a": pa.array([1, 2], pa.int8())}), "int8")):  # fmt: skip
        arg = loop.beam.slice("records", stream, metadata=records_meta())
        with pytest.raises(EtfError, match=text):
            loop.argument(arg)
        assert loop.beam.lent == {}
    arg = loop.beam.slice("records", b"\x00" * 16, metadata=records_meta(), format=Format.RAW)
    with pytest.raises(EtfError, match="format"):
        loop.argument(arg)
    assert loop.beam.lent == {}


# ---- counting and logging ----------------------------------------------------------------------


def test_format_stats_and_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="beambridge.formats"):
        term = wire([list(range(300)), [{"a": i} for i in range(5000)], [1.0, 2] * 200])
        received(term)
    stats = format_stats()
    assert stats[("to_elixir", "packed", "auto")] == {"count": 1, "bytes": 600}
    assert stats[("to_elixir", "records", "auto")]["count"] == 1
    assert stats[("to_elixir", "etf", "mixed_numbers")]["count"] == 1
    assert stats[("to_elixir", "etf", "mixed_numbers")]["bytes"] == len(encode([1.0, 2] * 200)) - 1
    assert stats[("from_elixir", "packed", "inline")] == {"count": 1, "bytes": 600}
    assert stats[("from_elixir", "records", "inline")]["count"] == 1
    text = caplog.text
    assert "to_elixir: packed (auto), 600 bytes: 300 elements <i2, inline" in text
    assert "to_elixir: records (auto)" in text and "rows, 5000 x 1" in text
    assert "to_elixir: etf (mixed_numbers)" in text
    reset_format_stats()
    assert format_stats() == {}


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="json"):
        ResultEncoder(policy="json")


# ---- through the real worker --------------------------------------------------------------------


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running(BEAMBRIDGE_THRESHOLD="8192") as w:
        yield w


def call(w: WorkerProcess, function: str, *args: Any, opts: Any = None) -> tuple[str, Any]:
    return w.call(function, *args, module=FORMATS, opts=opts)


def fmt(policy: str) -> dict[bytes, bytes]:
    return {b"format": policy.encode()}


def test_worker_policies(worker: WorkerProcess) -> None:
    packed = (TAG_PACKED, b"<i2", np.arange(300, dtype="<i2").tobytes())
    assert call(worker, "ints", 300) == ("ok", packed)
    assert call(worker, "ints", 300, opts=fmt("auto"))[1][0] == TAG_PACKED
    assert call(worker, "ints", 300, opts=fmt("etf")) == ("ok", list(range(300)))
    packed = (TAG_PACKED, b"|i1", b"\xff\x00\x01")
    assert call(worker, "ints", 3, -1, opts=fmt("packed")) == ("ok", packed)
    assert call(worker, "ints", 3, opts={b"other": 1}) == ("ok", [0, 1, 2])  # unknown keys
    status, term = call(worker, "rows", 10, opts=fmt("arrow"))
    assert status == "ok" and term[:2] == (TAG_RECORDS, ROWS)
    assert canon(received(term)) == canon(etf_value(worker_rows(10)))
    status, term = call(worker, "columns", 3, opts=fmt("arrow"))
    assert received(term) == {Atom("id"): [0, 1, 2], Atom("name"): ["n0", "n1", "n2"]}
    assert call(worker, "rows", 2, opts=fmt("etf")) == ("ok", etf_value(worker_rows(2)))


def worker_rows(n: int) -> list[dict[str, Any]]:
    return [{"id": i, "x": i * 0.5, "flag": i % 3 == 0, "name": f"n{i}",
             "raw": bytes([i % 256]) if i % 2 else None} for i in range(n)]  # fmt: skip


def test_worker_slices(worker: WorkerProcess) -> None:
    status, term = call(worker, "floats", 5000)
    assert status == "ok" and term[:2] == (TAG_SLICE, KIND_PACKED)
    _, object_id, offset, length, generation, _ = worker.entry(term)
    frame = worker.beam.peers.get(object_id).read_frame(offset, length, generation)
    assert decode(frame.metadata) == (b"<f8", [5000])
    frame.release()
    assert worker.read(term) == [i * 0.25 - 3.0 for i in range(5000)]
    status, term = call(worker, "rows", 2000)
    assert status == "ok" and term[:2] == (TAG_SLICE, KIND_RECORDS)
    _, object_id, offset, length, generation, _ = worker.entry(term)
    frame = worker.beam.peers.get(object_id).read_frame(offset, length, generation)
    assert records_format.parse_records_metadata(frame.metadata) == ("rows", 2000, 5)
    frame.release()
    assert canon(worker.read(term)) == canon(etf_value(worker_rows(2000)))


def test_worker_forced_format_error(worker: WorkerProcess) -> None:
    status, (kind, reason, message) = call(worker, "ragged", opts=fmt("arrow"))
    assert (status, kind, reason) == ("error", BAD_CALL, "format_unsuitable")
    assert b"different_keys" in message and b"format: :auto" in message
    assert call(worker, "ragged", opts=fmt("auto")) == ("ok", [{b"a": 1}, {b"a": 2, b"b": 3}])


@pytest.mark.parametrize("opts", [fmt("json"), {b"format": 1}, [1], b"auto"])
def test_worker_bad_options(worker: WorkerProcess, opts: Any) -> None:
    status, (kind, reason, _) = call(worker, "ints", 3, opts=opts)
    assert (status, kind, reason) == ("error", BAD_CALL, "bad_term")
    assert call(worker, "ints", 3) == ("ok", [0, 1, 2])


def test_worker_arguments_in_every_form(worker: WorkerProcess) -> None:
    values = [2**63, 0, 5]
    packed = wire(values, policy="packed")
    assert call(worker, "canon", packed) == ("ok", b"[i9223372036854775808,i0,i5]")
    stream = beam_stream({"a": pa.array([1, None]), "b": pa.array([b"x", b"y"])})
    assert call(worker, "canon", (TAG_RECORDS, ROWS, stream)) == (
        "ok", b"[{bb'a':i1,bb'b':bb'x'},{bb'a':None,bb'b':bb'y'}]")  # fmt: skip
    data = np.array(values, "<u8").tobytes()
    arg = worker.beam.slice("packed", data, metadata=encode((b"<u8", [3])))
    assert call(worker, "canon", arg) == ("ok", b"[i9223372036854775808,i0,i5]")
    arg = worker.beam.slice("records", stream, metadata=records_meta("columns", 2, 2))
    assert call(worker, "canon", arg) == ("ok", b"{bb'a':[i1,None],bb'b':[bb'x',bb'y']}")
    assert worker.beam.lent == {}  # both copied out: released by their answers
    _, counts = call(worker, "stats")
    forms = {(d.decode(), f.decode(), r.decode()) for d, f, r, _, _ in counts}
    assert {
        ("from_elixir", "packed", "inline"),
        ("from_elixir", "records", "inline"),
        ("from_elixir", "packed", "slice"),
        ("from_elixir", "records", "slice"),
        ("to_elixir", "packed", "auto"),
        ("to_elixir", "records", "forced"),
    } <= forms


@pytest.mark.parametrize(
    ("term", "text"),
    [
        ((TAG_PACKED, b"<f4", b"\x00" * 4), b"<f4"),
        ((TAG_PACKED, b"<i2", b"\x00" * 3), b"multiple"),
        ((TAG_RECORDS, ROWS, b"junk"), b"bad_arrow_stream"),
        ((TAG_RECORDS, ROWS, stream_of(pa.table({"a": [1]}))), b"beambridge.keys"),
    ],
)
def test_worker_bad_arguments(worker: WorkerProcess, term: Any, text: bytes) -> None:
    status, (kind, reason, message) = call(worker, "canon", term)
    assert (status, kind, reason) == ("error", BAD_CALL, "bad_term") and text in message
    assert call(worker, "ints", 2) == ("ok", [0, 1])


def test_worker_answers_a_call_whose_body_does_not_decode(worker: WorkerProcess) -> None:
    from beambridge import control

    body = b"\x83l\x00\x00\x00\x01q" + b"\x00" * 8 + b"j"  # [EXPORT]: refused
    worker.send(control.call(777, FORMATS, Atom("ints"), fmt("etf"), []), raw_body=body)
    answer = worker.recv()
    assert answer.call_id == 777 and answer.error[:2] == (BAD_CALL, "bad_term")
    assert call(worker, "ints", 2) == ("ok", [0, 1])
