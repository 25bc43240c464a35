"""Arrow tables on the call path (protocol/formats/arrow.md "On the call path"):
`Decoder` turns ``{:"$bb_arrow", stream}`` and ``arrow`` slice handles into a
``pyarrow.Table``; `ResultEncoder` sends Tables, RecordBatches and DataFrames back as
Arrow streams, inline below the threshold and through a slice above."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from beambridge import Atom, EtfError
from beambridge.decoder import Decoder
from beambridge.encoder import ResultEncoder
from beambridge.etf import decode, encode_parts
from beambridge.formats.arrow import plan_stream
from beambridge.header import Format
from beambridge.terms import TAG_ARROW, TAG_SLICE
from worker_harness import Loopback

KIND_ARROW = Atom("arrow")


def stream_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def sample(n: int = 5) -> pa.Table:
    return pa.table(
        {
            "i": pa.array(range(n), pa.int64()),
            "s": pa.array([f"r{i}" if i % 2 else None for i in range(n)]),
            "b": pa.array([i % 3 == 0 for i in range(n)]),
        }
    )


@pytest.fixture
def loop() -> Iterator[Loopback]:
    lb = Loopback(threshold=1)
    yield lb
    lb.close()
    assert lb.beam.lent == {}


def test_inline_argument_is_a_validated_table() -> None:
    table = sample()
    [got] = Decoder().decode([(TAG_ARROW, stream_of(table))])
    assert isinstance(got, pa.Table) and got.equals(table)


@pytest.mark.parametrize("data", [b"", b"junk", b"\xff\xff\xff\xff" + b"\x00" * 4])
def test_malformed_inline_argument_is_bad_term(data: bytes) -> None:
    with pytest.raises(EtfError) as info:
        Decoder().decode((TAG_ARROW, data))
    assert info.value.reason == "bad_term"
    assert "bad_arrow_stream" in str(info.value)


def test_corrupted_offsets_are_refused_inline() -> None:
    raw = bytearray(stream_of(pa.table({"s": ["ab", "cd"]})))
    # the last offset (4) of the utf8 column, made to point far past the data
    at = raw.rfind((4).to_bytes(4, "little"))
    raw[at : at + 4] = (4000).to_bytes(4, "little")
    with pytest.raises(EtfError, match="bad_arrow_stream"):
        Decoder().decode((TAG_ARROW, bytes(raw)))


def test_slice_argument_is_read_in_place_and_keeps_the_lease(loop: Loopback) -> None:
    table = sample(1000)
    plan = plan_stream(table, None, False)
    arg = loop.beam.slice("arrow", stream_of(table), metadata=plan.metadata)
    got = loop.argument(arg)
    assert isinstance(got, pa.Table) and got.equals(table)
    assert arg.key in loop.beam.lent  # the table's buffers lie in the slice
    del got
    loop.settle()
    assert loop.beam.lent == {}


def test_slice_argument_of_another_format_or_malformed_is_bad_term(loop: Loopback) -> None:
    arg = loop.beam.slice("arrow", stream_of(sample()), format=Format.RAW)
    with pytest.raises(EtfError, match="needs a frame of format ARROW_STREAM"):
        loop.argument(arg)
    arg = loop.beam.slice("arrow", b"junk" * 20)
    with pytest.raises(EtfError, match="bad_arrow_stream") as info:
        loop.argument(arg)
    assert info.value.reason == "bad_term"
    del info
    loop.settle()
    assert loop.beam.lent == {}


def frames(value: Any, encoder: ResultEncoder) -> Any:
    return decode(b"".join(encode_parts(value, encoder)))


@pytest.mark.parametrize("make", ["table", "batch", "dataframe"])
def test_results_inline_below_threshold_slice_at_or_above(loop: Loopback, make: str) -> None:
    for n, threshold in ((4, 1 << 30), (4, 1)):
        table = sample(n)
        value: Any = {
            "table": table,
            "batch": table.to_batches()[0] if n else table,
            "dataframe": table.to_pandas(),
        }[make]
        term = loop.result(value, threshold=threshold)
        if threshold > 1:
            assert term[0] == TAG_ARROW and type(term[1]) is bytes
            back = pa.ipc.open_stream(term[1]).read_all()
        else:
            assert term[:2] == (TAG_SLICE, KIND_ARROW)
            assert loop.entries[0][0] == Atom("worker")
            back = loop.back(term)
        assert back.select(table.column_names).to_pydict() == table.to_pydict()
        del back


def test_a_dataframe_result_drops_its_index() -> None:
    df = pd.DataFrame({"x": [1, 2]}, index=[10, 20])
    term = frames(df, ResultEncoder())
    assert pa.ipc.open_stream(term[1]).read_all().column_names == ["x"]


def _dictionary_of_dictionaries() -> pa.Array:
    inner = pa.array(["a", "b"]).dictionary_encode()
    return pa.DictionaryArray.from_arrays(pa.array([0, 1]), inner)


def _nested_dictionary_of_dictionaries() -> pa.Array:
    struct = pa.StructArray.from_arrays([_dictionary_of_dictionaries()], names=["d"])
    return pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), struct)


@pytest.mark.parametrize(
    "column", [_dictionary_of_dictionaries, _nested_dictionary_of_dictionaries]
)
def test_a_result_column_elixir_cannot_read_is_refused_with_what_to_do(column: Any) -> None:
    table = pa.table({"c": column()[:1], "ok": pa.array([1])})
    with pytest.raises(TypeError, match=r"column 'c' of type .* to Elixir: .*inner dictionary"):
        encode_parts(table, ResultEncoder())


@pytest.mark.parametrize(
    "column",
    [
        pa.array([1], type=pa.decimal128(5, 2)),
        pa.array([1], type=pa.time32("s")),
        pa.array([{"a": 1}]),
        pa.array([[1]], type=pa.list_(pa.decimal128(5, 2))),
        pa.array([[1, 2]], type=pa.list_(pa.float32(), 2)),
        pa.array([[("k", 1)]], type=pa.map_(pa.string(), pa.int64())),
        pa.array(["x"], type=pa.string_view()),
        pa.array([[1]], type=pa.list_(pa.int8())).cast(pa.large_list(pa.int8())),
        pa.DictionaryArray.from_arrays(pa.array([0]), pa.array([[1, 2]])),
    ],
)
def test_every_other_result_column_goes_to_elixir_as_arrow(column: pa.Array) -> None:
    table = pa.table({"c": column})
    assert decode(b"".join(encode_parts(table, ResultEncoder())))[0] == TAG_ARROW
