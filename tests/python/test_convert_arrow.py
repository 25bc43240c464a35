"""Arrow tables on the call path (protocol/formats/arrow.md "On the call path"):
`Arguments` turns ``{:"$bb_arrow", stream}`` and ``arrow`` region handles into a
``pyarrow.Table``; `ResultEncoder` sends Tables, RecordBatches and DataFrames back as
Arrow streams, inline below the threshold and through a `ResultRegions` region above."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from beambridge import Atom, EtfError, Format, Region
from beambridge.convert import (
    TAG_ARROW,
    TAG_REGION,
    Arguments,
    Attachments,
    ResultEncoder,
    ResultRegions,
)
from beambridge.etf import decode, encode_parts
from beambridge.formats.arrow import read_arrow, write_arrow_into_new_region

PREFIX = "bbcva"
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
def regions() -> Iterator[ResultRegions]:
    pool = ResultRegions(prefix=PREFIX)
    yield pool
    pool.close_all()


def test_inline_argument_is_a_validated_table() -> None:
    table = sample()
    [got] = Arguments(Attachments()).convert([(TAG_ARROW, stream_of(table))])
    assert isinstance(got, pa.Table) and got.equals(table)


@pytest.mark.parametrize("data", [b"", b"junk", b"\xff\xff\xff\xff" + b"\x00" * 4])
def test_malformed_inline_argument_is_bad_term(data: bytes) -> None:
    with pytest.raises(EtfError) as info:
        Arguments(Attachments()).convert((TAG_ARROW, data))
    assert info.value.reason == "bad_term"
    assert "bad_arrow_stream" in str(info.value)


def test_corrupted_offsets_are_refused_inline() -> None:
    raw = bytearray(stream_of(pa.table({"s": ["ab", "cd"]})))
    # the last offset (4) of the utf8 column, made to point far past the data
    at = raw.rfind((4).to_bytes(4, "little"))
    raw[at : at + 4] = (4000).to_bytes(4, "little")
    with pytest.raises(EtfError, match="bad_arrow_stream"):
        Arguments(Attachments()).convert((TAG_ARROW, bytes(raw)))


def test_region_argument_is_read_in_place_and_keeps_the_lease() -> None:
    table = sample(1000)
    region, header = write_arrow_into_new_region(table, prefix=PREFIX)
    try:
        args = Arguments(Attachments())
        got = args.convert((TAG_REGION, KIND_ARROW, region.name.encode(), header.generation))
        assert isinstance(got, pa.Table) and got.equals(table)
        assert region.control_block().reader_leases == 1
        del got
        assert region.control_block().reader_leases == 0
    finally:
        region.close()


def test_region_argument_of_another_format_or_malformed_is_bad_term() -> None:
    region = Region.create_for_frame(4096, 0, prefix=PREFIX)
    try:
        args = Arguments(Attachments())
        gen = region.write_frame(stream_of(sample()), format=Format.RAW).generation
        with pytest.raises(EtfError, match="needs a frame of format ARROW_STREAM"):
            args.convert((TAG_REGION, KIND_ARROW, region.name.encode(), gen))
        gen = region.write_frame(b"junk" * 20, format=Format.ARROW_STREAM).generation
        with pytest.raises(EtfError, match="bad_arrow_stream") as info:
            args.convert((TAG_REGION, KIND_ARROW, region.name.encode(), gen))
        assert info.value.reason == "bad_term"
        assert region.control_block().reader_leases == 0
    finally:
        region.close()


def frames(value: Any, encoder: ResultEncoder) -> Any:
    return decode(b"".join(encode_parts(value, encoder)))


@pytest.mark.parametrize("make", ["table", "batch", "dataframe"])
def test_results_inline_below_threshold_region_at_or_above(
    regions: ResultRegions, make: str
) -> None:
    for n, threshold in ((4, 1 << 30), (4, 1)):
        table = sample(n)
        value: Any = {
            "table": table,
            "batch": table.to_batches()[0] if n else table,
            "dataframe": table.to_pandas(),
        }[make]
        term = frames(value, ResultEncoder(regions, threshold))
        if threshold > 1:
            assert term[0] == TAG_ARROW and type(term[1]) is bytes
            back = pa.ipc.open_stream(term[1]).read_all()
        else:
            assert term[:2] == (TAG_REGION, KIND_ARROW)
            region = Region.attach(term[2].decode())
            try:
                frame = region.read_frame()
                assert frame.header.format == Format.ARROW_STREAM
                assert frame.header.generation == term[3]
                back = read_arrow(frame)
                got = back.select(table.column_names)
                assert got.to_pydict() == table.to_pydict()
                del back, got, frame
            finally:
                region.close()
            continue
        assert back.select(table.column_names).to_pydict() == table.to_pydict()


def test_a_dataframe_result_drops_its_index() -> None:
    df = pd.DataFrame({"x": [1, 2]}, index=[10, 20])
    term = frames(df, ResultEncoder())
    assert pa.ipc.open_stream(term[1]).read_all().column_names == ["x"]


@pytest.mark.parametrize(
    ("column", "advice"),
    [
        (pa.array([1], type=pa.decimal128(5, 2)), "pa.float64()"),
        (pa.array([1], type=pa.time32("s")), "pa.int64()"),
        (pa.array([{"a": 1}]), "cast or flatten"),
        (pa.array([[1]], type=pa.list_(pa.decimal128(5, 2))), "cast or flatten"),
    ],
)
def test_a_result_column_elixir_cannot_read_is_refused_with_the_cast(
    column: pa.Array, advice: str
) -> None:
    table = pa.table({"c": column, "ok": pa.array([1])})
    with pytest.raises(TypeError, match=rf"column 'c' of type .* to Elixir: .*{advice}"):
        encode_parts(table, ResultEncoder())
    # every type Bridge.Arrow reads passes
    readable = pa.table({"d": pa.array([[1]], type=pa.large_list(pa.int8())),
                         "e": pa.array(["x"]).dictionary_encode()})  # fmt: skip
    assert decode(b"".join(encode_parts(readable, ResultEncoder())))[0] == TAG_ARROW
