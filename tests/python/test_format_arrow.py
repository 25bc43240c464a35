"""Arrow IPC stream payloads (beambridge.formats.arrow): written straight into arena
slices, read in place through a peer's read-only mapping (every buffer inside the
frame's payload), validated, leased for as long as the table lives, and every malformed
stream a typed error."""

from __future__ import annotations

import contextlib
import datetime
import doctest
import gc
import itertools
import struct
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from beambridge import etf
from beambridge.errors import (
    ArenaError,
    BridgeError,
    ChecksumError,
    FormatError,
    HeaderError,
    LeaseError,
)
from beambridge.formats import arrow
from beambridge.formats.arrow import (
    ArrowDescriptor,
    arrow_descriptor,
    arrow_frame_lengths,
    arrow_stream_size,
    read_arrow,
    read_arrow_pandas,
    write_arrow,
)
from beambridge.formats.arrow import writer as arrow_writer
from beambridge.formats.arrow.messages import FlatBuffer
from beambridge.frame import Frame
from beambridge.frame_writer import frame_length
from beambridge.header import Codec, Format, encode_frame, payload_offset_for
from beambridge.objects import round_up
from helpers import Slices
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextlib.contextmanager
def slices(**kwargs: Any) -> Iterator[Slices]:
    """An owner's arenas and a reader's mapping of them, closed afterwards."""
    sl = Slices(**{"min_arena": 1 << 16, **kwargs})
    try:
        yield sl
    finally:
        gc.collect()
        sl.close()


def stream_bytes(data: pa.Table | list[pa.RecordBatch], **options: Any) -> bytes:
    """The IPC stream of ``data`` the ordinary way (a private buffer)."""
    schema = data.schema if isinstance(data, pa.Table) else data[0].schema
    sink = pa.BufferOutputStream()
    with ipc.new_stream(sink, schema, options=ipc.IpcWriteOptions(**options)) as writer:
        if isinstance(data, pa.Table):
            writer.write_table(data)
        else:
            for batch in data:
                writer.write_batch(batch)
    return bytes(sink.getvalue())


def payload_range(frame: Any) -> tuple[int, int]:
    start = np.frombuffer(frame.payload, dtype=np.uint8).ctypes.data
    return start, start + frame.header.payload_length


def data_buffers(table: pa.Table) -> Iterator[pa.Buffer]:
    """Every non-empty buffer of every chunk of every column (children and
    dictionaries included)."""
    for column in table.columns:
        for chunk in column.chunks:
            arrays = [chunk]
            if pa.types.is_dictionary(chunk.type):
                arrays.append(chunk.dictionary)
            for array in arrays:
                for buf in array.buffers():
                    if buf is not None and buf.size > 0:
                        yield buf


def assert_inside(table: pa.Table, frame: Any) -> int:
    """Every buffer of ``table`` lies inside ``frame``'s payload; returns how many."""
    lo, hi = payload_range(frame)
    n = 0
    for buf in data_buffers(table):
        assert lo <= buf.address and buf.address + buf.size <= hi, (buf, lo, hi)
        n += 1
    return n


# ---- hypothesis strategies: schemas, columns, tables ----------------------------------

INT_TYPES = [
    pa.int8(),
    pa.int16(),
    pa.int32(),
    pa.int64(),
    pa.uint8(),
    pa.uint16(),
    pa.uint32(),
    pa.uint64(),
]
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
TIME_ZONES = [None, "UTC", "Europe/Paris", "+05:30"]


def scalar_types() -> st.SearchStrategy[pa.DataType]:
    return st.one_of(
        st.sampled_from(INT_TYPES),
        st.sampled_from(
            [
                pa.float16(),
                pa.float32(),
                pa.float64(),
                pa.bool_(),
                pa.string(),
                pa.large_string(),
                pa.binary(),
                pa.large_binary(),
                pa.date32(),
                pa.date64(),
                pa.null(),
            ]
        ),
        st.builds(
            pa.timestamp, st.sampled_from(["s", "ms", "us", "ns"]), st.sampled_from(TIME_ZONES)
        ),
    )


def column_types() -> st.SearchStrategy[pa.DataType]:
    return st.one_of(
        scalar_types(),
        st.builds(pa.list_, scalar_types()),
        st.builds(pa.large_list, scalar_types()),
        st.just(pa.dictionary(pa.int32(), pa.string())),
    )


def values_of(t: pa.DataType) -> st.SearchStrategy[Any]:
    """Python values of type ``t`` (None is added by the caller)."""
    if pa.types.is_integer(t):
        info = np.iinfo(t.to_pandas_dtype())
        return st.integers(int(info.min), int(info.max))
    if pa.types.is_floating(t):
        width = {16: 16, 32: 32, 64: 64}[t.bit_width]
        return st.floats(width=width, allow_nan=False)  # type: ignore[arg-type]
    if pa.types.is_boolean(t):
        return st.booleans()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        return TEXT
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return st.binary(max_size=12)
    if pa.types.is_date(t):
        return st.dates()
    if pa.types.is_timestamp(t):
        return st.integers(-(2**62), 2**62)
    if pa.types.is_null(t):
        return st.none()
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        item = values_of(t.value_type)
        return st.lists(st.one_of(st.none(), item), max_size=4)
    raise AssertionError(t)


def make_array(t: pa.DataType, values: list[Any]) -> pa.Array:
    if pa.types.is_dictionary(t):
        return pa.array(values, pa.string()).dictionary_encode()
    if t == pa.float16():
        mask = np.array([v is None for v in values], dtype=bool)
        data = np.array([0.0 if v is None else v for v in values], dtype=np.float16)
        return pa.array(data, type=t, mask=mask)
    return pa.array(values, type=t)


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 40, max_columns: int = 6) -> pa.Table:
    """A table with a random schema, nulls, unicode, and its rows cut into several
    record batches (possibly empty ones)."""
    types = draw(st.lists(column_types(), min_size=1, max_size=max_columns))
    names = draw(st.lists(TEXT, min_size=len(types), max_size=len(types), unique=True))
    n = draw(st.integers(0, max_rows))
    columns = []
    for t in types:
        values = draw(st.lists(st.one_of(st.none(), values_of(t)), min_size=n, max_size=n))
        columns.append(make_array(t, values))
    batch = pa.RecordBatch.from_arrays(columns, names=names)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=5)))
    bounds = [0, *cuts, n]
    return pa.Table.from_batches(
        [batch.slice(a, b - a) for a, b in itertools.pairwise(bounds)], schema=batch.schema
    )


# ---- round trips ----------------------------------------------------------------------------


@SETTINGS
@given(tables())
def test_round_trip_in_place(table: pa.Table) -> None:
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        frame = sl.read(s)
        assert frame.header.format == Format.ARROW_STREAM
        assert frame.header.payload_length == arrow_stream_size(table)
        back = read_arrow(frame)
        assert back.schema.equals(table.schema)
        assert back.equals(table)
        assert back.num_rows == table.num_rows
        assert_inside(back, frame)  # zero-copy: every buffer lies in the slice
        desc = arrow_descriptor(frame.metadata)
        assert desc == ArrowDescriptor(
            table.num_rows,
            table.num_columns,
            len(table.to_batches()),
            tuple((f.name, str(f.type), f.nullable) for f in table.schema),
        )
        del back, frame


def test_buffers_lie_inside_the_readers_mapping_of_the_slice() -> None:
    n = 1000
    table = pa.table(
        {
            "i": pa.array(range(n), pa.int64()),
            "f": pa.array([i / 3 if i % 7 else None for i in range(n)]),
            "b": pa.array([i % 3 == 0 for i in range(n)]),
            "s": pa.array([f"é{i}" for i in range(n)]),
            "l": pa.array([[i, None] for i in range(n)], pa.large_list(pa.int16())),
            "d": pa.array(["x", "y"] * (n // 2)).dictionary_encode(),
        }
    )
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        frame = sl.read(s)
        start, _ = sl.mapping(s.object_id)  # the reader's one mapping of the arena
        lo, hi = start + s.offset, start + s.offset + s.length
        back = read_arrow(frame)
        count = 0
        for buf in data_buffers(back):
            assert lo <= buf.address and buf.address + buf.size <= hi
            count += 1
        assert count >= 12
        assert assert_inside(back, frame) == count
        assert back.column("i").chunk(0).buffers()[1].address % 8 == 0
        del back, frame, buf


@pytest.mark.parametrize(
    "table",
    [
        pa.table({"x": pa.array([], pa.int64()), "s": pa.array([], pa.string())}),
        pa.table({}),
        pa.table({"n": pa.nulls(5)}),
        pa.table({"s": ["", "ünïcödé ✓", "日本語", "\U0001f600", None]}),
    ],
    ids=["empty", "no_columns", "null", "unicode"],
)
def test_edge_tables(table: pa.Table) -> None:
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        with sl.read(s) as frame:
            back = read_arrow(frame)
            assert back.equals(table) and back.schema.equals(table.schema)
            del back


def test_many_batches() -> None:
    schema = pa.schema([("i", pa.int64()), ("s", pa.string())])
    batches = [
        pa.record_batch({"i": [i] * (i % 5), "s": [str(i)] * (i % 5)}, schema=schema)
        for i in range(500)
    ]
    with slices() as sl:
        s = write_arrow(sl.arenas, batches)
        with sl.read(s) as frame:
            assert arrow_descriptor(frame.metadata).num_batches == 500
            back = read_arrow(frame)
            assert back.column("i").num_chunks == 500
            assert back.equals(pa.Table.from_batches(batches))
            del back


def test_dictionary_replaced_between_batches() -> None:
    schema = pa.schema([("d", pa.dictionary(pa.int32(), pa.string()))])
    batches = [
        pa.record_batch([pa.array(["a", "b", "a"]).dictionary_encode()], schema=schema),
        pa.record_batch([pa.array(["z", None]).dictionary_encode()], schema=schema),
    ]
    with slices() as sl:
        s = write_arrow(sl.arenas, batches)
        with sl.read(s) as frame:
            back = read_arrow(frame)
            assert back.column("d").to_pylist() == ["a", "b", "a", "z", None]
            assert_inside(back, frame)
            del back


def test_inputs_record_batch_and_lists() -> None:
    batch = pa.record_batch({"x": [1, 2]})
    with slices() as sl:
        s = write_arrow(sl.arenas, batch)
        with sl.read(s) as frame:
            back = read_arrow(frame)
            assert back.equals(pa.Table.from_batches([batch]))
            del back
    schema = pa.schema([("x", pa.int8())])
    with slices() as sl:
        s = write_arrow(sl.arenas, [], schema=schema)
        with sl.read(s) as frame:
            back = read_arrow(frame)
            assert back.schema.equals(schema) and back.num_rows == 0
            del back
    with pytest.raises(ValueError, match="schema="):
        arrow_stream_size([])
    with pytest.raises(ValueError, match="differs"):
        arrow_stream_size([batch, pa.record_batch({"y": [1]})])
    with pytest.raises(TypeError, match="RecordBatch"):
        arrow_stream_size([batch, 1])
    with pytest.raises(TypeError, match=r"pyarrow\.Table"):
        arrow_stream_size({"x": [1]})


def test_the_slice_is_sized_for_the_frame() -> None:
    table = pa.table({"x": [1, 2, 3]})
    payload, meta = arrow_frame_lengths(table)
    assert payload == arrow_stream_size(table)
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        assert s.length == round_up(frame_length(payload, meta), 64)
        with sl.read(s) as frame:
            assert frame.header.payload_length == payload
            assert frame.header.payload_offset + payload == frame_length(payload, meta)
            back = read_arrow(frame)
            assert back.equals(table)
            del back


def test_write_makes_no_private_copy_of_the_payload() -> None:
    table = pa.table({"x": np.arange(2_000_000, dtype=np.int64)})  # 16 MB
    with slices() as sl:
        pool = pa.total_allocated_bytes()
        tracemalloc.start()
        s = write_arrow(sl.arenas, table)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1 << 20  # no bytes object holding the 16 MB payload
        assert pa.total_allocated_bytes() - pool < 1 << 20  # nor an Arrow buffer
        assert s.length >= 16_000_000  # it is all in the slice


def test_stream_is_what_pyarrow_writes() -> None:
    table = pa.table({"x": [1, None, 3], "s": ["a", "b", "c"]})
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        with sl.read(s) as frame:
            assert bytes(frame.payload) == stream_bytes(table)


# ---- the lease follows the table ---------------------------------------------------------


def test_py_buffer_keeps_the_payload_alive() -> None:
    with slices() as sl:
        s = sl.put(b"abcdefgh", format=Format.ARROW_STREAM)
        frame = sl.read(s)
        buf = pa.py_buffer(frame.payload)
        del frame
        gc.collect()
        assert sl.leases == 1
        assert buf.to_pybytes() == b"abcdefgh"
        child = buf.slice(2, 3)
        del buf
        gc.collect()
        assert sl.leases == 1 and child.to_pybytes() == b"cde"
        del child
        gc.collect()
        assert sl.leases == 0


def test_lease_follows_table_and_everything_made_from_it() -> None:
    table = pa.table({"i": pa.array(range(100), pa.int64()), "s": [str(i) for i in range(100)]})
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        back = read_arrow(sl.read(s))  # no handle on the frame kept
        gc.collect()
        assert sl.leases == 1
        column = back.column("i")
        array = column.chunk(0)
        buffer = array.buffers()[1]
        view = array.to_numpy(zero_copy_only=True)
        batch = back.to_batches()[0]
        made = [column, array, buffer, view, batch]
        del back, column, array, buffer, view, batch
        while made:
            gc.collect()
            assert sl.leases == 1  # any one of them still holds the lease
            made.pop()
        gc.collect()
        assert sl.leases == 0  # ended once all of them are gone


def test_with_block_release_while_table_lives_is_leased() -> None:
    table = pa.table({"i": [1, 2]})
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        frame = sl.read(s)
        back = read_arrow(frame)
        with pytest.raises(LeaseError, match="leased"):
            frame.release()
        assert sl.leases == 1
        del frame, back
        gc.collect()
        assert sl.leases == 0


# ---- pandas ----------------------------------------------------------------------------------


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "i": np.arange(1000, dtype=np.int64),
            "f": np.linspace(0, 1, 1000),
            "b": np.arange(1000) % 2 == 0,
            "s": [f"s{i}" for i in range(1000)],
            "t": pd.date_range("2020-01-01", periods=1000, freq="s"),
        },
        index=pd.RangeIndex(1000),
    )


def test_pandas_round_trip_numpy_backend() -> None:
    df = sample_frame()
    with slices() as sl:
        s = write_arrow(sl.arenas, df)
        frame = sl.read(s)
        lo, hi = payload_range(frame)
        back = read_arrow_pandas(frame)
        pd.testing.assert_frame_equal(back, df)
        for name in ("i", "f", "t"):  # views into the slice
            address = np.asarray(back[name]).__array_interface__["data"][0]
            assert lo <= address < hi, name
        assert not lo <= np.asarray(back["b"]).__array_interface__["data"][0] < hi  # bits
        del frame
        gc.collect()
        assert sl.leases == 1  # the columns that are views hold the lease
        del back
        gc.collect()
        assert sl.leases == 0


def test_pandas_pyarrow_backend_copies_nothing() -> None:
    df = sample_frame()
    df.loc[3, "i"] = None  # ints with nulls: lossless with Arrow dtypes
    df = df.astype({"i": "Int64"})
    with slices() as sl:
        s = write_arrow(sl.arenas, df)
        frame = sl.read(s)
        back = read_arrow_pandas(frame, dtype_backend="pyarrow")
        assert all(isinstance(d, pd.ArrowDtype) for d in back.dtypes)
        table = pa.Table.from_pandas(back, preserve_index=False)
        assert_inside(table, frame)
        assert back["i"].isna().sum() == 1 and back["i"].iloc[999] == 999
        del frame, table
        gc.collect()
        assert sl.leases == 1
        del back
        gc.collect()
        assert sl.leases == 0
    with pytest.raises(ValueError, match="dtype_backend"):
        read_arrow_pandas(None, dtype_backend="numpy_nullable")  # type: ignore[arg-type]


def test_pandas_index_kept_only_when_asked() -> None:
    df = pd.DataFrame({"x": [1, 2, 3]}, index=pd.Index(["a", "b", "c"], name="k"))
    for preserve, columns in ((False, ["x"]), (True, ["x", "k"])):
        with slices() as sl:
            s = write_arrow(sl.arenas, df, preserve_index=preserve)
            with sl.read(s) as frame:
                table = read_arrow(frame)
                assert table.column_names == columns
                del table


# ---- refusals: wrong frames, malformed streams ---------------------------------------------


GOOD = pa.table(
    {
        "i": pa.array([1, None, 3, 4], pa.int32()),
        "s": pa.array(["a", "bé", None, "dddd"]),
        "l": pa.array([[1], None, [2, 3], []], pa.list_(pa.int64())),
        "d": pa.array(["x", "y", "x", None]).dictionary_encode(),
        "b": pa.array([True, False, None, True]),
        "ts": pa.array([1, 2, 3, None], pa.timestamp("ms", "UTC")),
        "lb": pa.array([b"a", b"", None, b"zz"], pa.large_binary()),
    }
)
GOOD_STREAM = stream_bytes(pa.Table.from_batches(GOOD.to_batches() * 3))


#: The owner and reader of the frames `read_bytes` writes and reads, for every test.
READER = Slices(min_arena=1 << 20)


def read_bytes(payload: bytes, metadata: bytes = b"") -> None:
    """Write ``payload`` as an arrow_stream frame in a slice and read it with read_arrow
    through a reader's mapping. Checks that a failure leaves no view behind (the frame
    releases), and that a table that comes out is valid and in place."""
    s = READER.put(payload, metadata=metadata, format=Format.ARROW_STREAM)
    try:
        frame = READER.read(s)
        try:
            table = read_arrow(frame)
        except BridgeError:
            frame.release()  # nothing made from the payload survived the error
            assert READER.leases == 0
            raise
        table.validate(full=True)
        assert_inside(table, frame)
        del table, frame
        gc.collect()
        assert READER.leases == 0
    finally:
        READER.arenas.free(s)


def expect_bad(payload: bytes, field: str | None = None, metadata: bytes = b"") -> FormatError:
    with pytest.raises(FormatError) as info:
        read_bytes(payload, metadata)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, BridgeError)
    assert err.reason in ("bad_arrow_stream", "bad_metadata"), err
    if field is not None:
        assert err.field == field, err
    return err


def messages(stream: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(offset of the flatbuffer, its length, the flatbuffer) of each message."""
    pos = 0
    while pos + 8 <= len(stream):
        marker, length = struct.unpack_from("<Ii", stream, pos)
        assert marker == 0xFFFFFFFF
        if length == 0:
            return
        meta = stream[pos + 8 : pos + 8 + length]
        fb = FlatBuffer(meta)
        body = fb.scalar(fb.root(), 3, "<q")
        yield pos + 8, length, meta
        pos += 8 + length + body


def first_batch(stream: bytes) -> tuple[int, FlatBuffer, int]:
    """The stream offset of the first record batch's flatbuffer, a reader of it, and
    the position of its RecordBatch table."""
    for start, _, meta in messages(stream):
        fb = FlatBuffer(meta)
        if fb.scalar(fb.root(), 1, "<B") == 3:
            batch = fb.table(fb.root(), 2)
            assert batch is not None
            return start, fb, batch
    raise AssertionError("no record batch")


def patch(stream: bytes, at: int, fmt: str, value: int) -> bytes:
    out = bytearray(stream)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def vector(fb: FlatBuffer, table: int, index: int) -> tuple[int, int]:
    """Position of the first element and the length of a vector field."""
    pos = fb.field(table, index)
    assert pos is not None
    start = pos + fb.unpack("<I", pos)
    return start + 4, fb.unpack("<I", start)


def test_good_stream_reads() -> None:
    read_bytes(GOOD_STREAM)


def test_buffer_past_the_body() -> None:
    start, fb, batch = first_batch(GOOD_STREAM)
    first, count = vector(fb, batch, 2)  # Buffer {offset: long, length: long}
    assert count > 2
    expect_bad(patch(GOOD_STREAM, start + first + 16 * 1 + 8, "<q", 1 << 20))  # length
    expect_bad(patch(GOOD_STREAM, start + first + 16 * 1, "<q", 1 << 40))  # offset
    expect_bad(patch(GOOD_STREAM, start + first + 16 * 1, "<q", -8))


def test_wrong_lengths() -> None:
    start, fb, batch = first_batch(GOOD_STREAM)
    first, _ = vector(fb, batch, 1)  # FieldNode {length: long, null_count: long}
    expect_bad(patch(GOOD_STREAM, start + first, "<q", 1000))  # a column longer than its data
    expect_bad(patch(GOOD_STREAM, start + first + 8, "<q", 3))  # a null count that lies
    length = fb.field(batch, 0)
    assert length is not None
    expect_bad(patch(GOOD_STREAM, start + length, "<q", 1 << 40))  # the batch's length


def test_bad_flatbuffer_offsets() -> None:
    start, _, _ = first_batch(GOOD_STREAM)
    for value in (0xFFFFFFF0, 7, 1 << 20):
        expect_bad(patch(GOOD_STREAM, start, "<I", value))
    expect_bad(patch(GOOD_STREAM, 8, "<I", 0xFFFF))  # the schema message's root
    expect_bad(patch(GOOD_STREAM, 4, "<i", -5))  # a negative metadata length


def test_bad_offsets_inside_string_data() -> None:
    table = pa.table({"s": ["abc", "de", "f"]})
    stream = stream_bytes(table)
    offsets = np.frombuffer(pa.array(["abc", "de", "f"]).buffers()[1], dtype=np.int32)
    needle = offsets.tobytes()
    at = stream.index(needle)
    expect_bad(patch(stream, at + 8, "<i", 1 << 30))  # an offset past the data
    expect_bad(patch(stream, at + 8, "<i", 1))  # offsets going backwards: 0, 3, 1, 6
    expect_bad(stream.replace(b"abcdef", b"ab\xffdef"))  # not UTF-8


def schema_field_type(stream: bytes, index: int) -> tuple[FlatBuffer, int, int]:
    """The schema message's reader, its stream offset and the position of field
    ``index``'s type table."""
    start, _, meta = next(messages(stream))
    fb = FlatBuffer(meta)
    schema = fb.table(fb.root(), 2)
    assert schema is not None
    first, _ = vector(fb, schema, 1)
    field = first + 4 * index + fb.unpack("<I", first + 4 * index)
    kind = fb.table(field, 3)  # Field.type
    assert kind is not None
    return fb, start, kind


def test_schema_text_must_be_utf8() -> None:
    stream = stream_bytes(pa.table({"name_q": [1], "t": pa.array([1], pa.timestamp("s", "UTC"))}))
    for good, bad in ((b"name_q", b"name\xffq"), (b"UTC", b"U\xffC")):
        assert stream.count(good) == 1
        with pytest.raises(FormatError) as info:
            read_bytes(stream.replace(good, bad))
        assert "UnicodeDecodeError" in str(info.value)


def test_types_pyarrow_cannot_wrap_are_refused() -> None:
    stream = stream_bytes(pa.table({"iv": pa.array([None], pa.month_day_nano_interval())}))
    fb, start, kind = schema_field_type(stream, 0)
    unit = fb.field(kind, 0)  # Interval.unit: 2 MONTH_DAY_NANO -> 1 DAY_TIME
    assert unit is not None and fb.unpack("<h", unit) == 2
    err = expect_bad(patch(stream, start + unit, "<h", 1), field="payload")
    assert "KeyError" in str(err)


def test_truncated_everywhere() -> None:
    meta = arrow.encode_descriptor(GOOD.schema, GOOD.num_rows * 3, 3)
    for cut in range(len(GOOD_STREAM)):
        if cut >= len(GOOD_STREAM) - 8:
            continue  # the end-of-stream marker is optional: these are still the table
        expect_bad(GOOD_STREAM[:cut], metadata=meta)


def test_trailing_bytes_and_empty_payload() -> None:
    expect_bad(GOOD_STREAM + bytes(8), field="payload_length")
    expect_bad(b"", field="payload")
    read_bytes(GOOD_STREAM[:-8])  # no end-of-stream marker: accepted


def test_compressed_bodies_and_deltas_are_refused() -> None:
    expect_bad(stream_bytes(GOOD, compression="lz4"), field="compression")
    expect_bad(stream_bytes(GOOD, compression="zstd"), field="compression")
    schema = pa.schema([("d", pa.dictionary(pa.int32(), pa.string()))])
    grow = [
        pa.record_batch([pa.DictionaryArray.from_arrays([0], ["a"])], schema=schema),
        pa.record_batch([pa.DictionaryArray.from_arrays([1], ["a", "b"])], schema=schema),
    ]
    expect_bad(stream_bytes(grow, emit_dictionary_deltas=True), field="dictionary")


def test_stream_must_start_with_a_schema() -> None:
    start, length, meta = list(messages(GOOD_STREAM))[-1]  # the last record batch
    fb = FlatBuffer(meta)
    body = fb.scalar(fb.root(), 3, "<q")
    expect_bad(GOOD_STREAM[start - 8 : start + length + body], field="message")


def test_wrong_format_and_codec() -> None:
    with slices() as sl:
        for fmt in (Format.RAW, Format.TENSOR, Format.ETF, Format.CUSTOM):
            s = sl.put(GOOD_STREAM, format=fmt)
            with sl.read(s) as frame, pytest.raises(FormatError) as info:
                read_arrow(frame)
            assert (info.value.reason, info.value.field, info.value.value) == (
                "wrong_format",
                "format",
                int(fmt),
            )
        # a compressed frame (in private memory: arenas hold uncompressed payloads)
        compressed = encode_frame(
            GOOD_STREAM, format=Format.ARROW_STREAM, codec=Codec.LZ4_FRAME, decoded_length=10
        )
        with pytest.raises(FormatError) as info:
            read_arrow(Frame.from_bytes(compressed))
        assert info.value.reason == "unsupported_codec"
        # an unknown format code never reaches the reader: the header check refuses it
        s = sl.put(GOOD_STREAM, format=Format.ARROW_STREAM)
        with sl.arenas.area(s) as area:
            area[10] = 9
        with pytest.raises(HeaderError):
            sl.read(s)


def test_metadata_descriptor() -> None:
    meta = arrow.encode_descriptor(GOOD.schema, 12, 3)
    desc = arrow_descriptor(meta)
    assert desc.num_rows == 12 and desc.num_columns == 7 and desc.num_batches == 3
    assert desc.fields is not None and desc.fields[5] == ("ts", "timestamp[ms, tz=UTC]", True)
    assert etf.decode(meta)[b"fields"][0] == (b"i", b"int32", True)
    read_bytes(GOOD_STREAM, meta)
    wrong = arrow.encode_descriptor(GOOD.schema, 11, 3)
    err = expect_bad(GOOD_STREAM, "metadata", wrong)
    assert err.reason == "bad_metadata"
    bad: list[Any] = [
        b"\x83junk",
        etf.encode([1]),
        etf.encode({b"version": 2}),
        etf.encode({b"version": 1, b"num_rows": -1, b"num_columns": 1, b"num_batches": 1}),
        etf.encode(
            {
                b"version": 1,
                b"num_rows": 1,
                b"num_columns": 1,
                b"num_batches": 1,
                b"fields": [(b"a", b"int8")],
            }
        ),
        etf.encode(
            {
                b"version": 1,
                b"num_rows": 1,
                b"num_columns": 1,
                b"num_batches": 1,
                b"fields": [(b"\xff", b"int8", True)],
            }
        ),
    ]
    for metadata in bad:
        with pytest.raises(FormatError) as info:
            arrow_descriptor(metadata)
        assert info.value.reason == "bad_metadata"


def test_wide_schema_descriptor_leaves_fields_out() -> None:
    table = pa.table({f"column_{i:05d}": pa.array([], pa.int8()) for i in range(4000)})
    _, meta_length = arrow_frame_lengths(table)
    assert meta_length < 200
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        with sl.read(s) as frame:
            desc = arrow_descriptor(frame.metadata)
            assert desc.fields is None and desc.num_columns == 4000
            back = read_arrow(frame)
            assert back.num_columns == 4000
            del back


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, len(GOOD_STREAM) - 1), st.integers(0, 255)), min_size=1, max_size=6
    ),
    st.booleans(),
)
def test_mutated_streams_are_typed_errors(edits: list[tuple[int, int]], with_meta: bool) -> None:
    data = bytearray(GOOD_STREAM)
    for pos, byte in edits:
        data[pos] = byte
    assume(bytes(data) != GOOD_STREAM)
    meta = arrow.encode_descriptor(GOOD.schema, 12, 3) if with_meta else b""
    try:
        read_bytes(bytes(data), meta)  # a table that comes out is valid and in place
    except FormatError as err:
        assert err.reason in ("bad_arrow_stream", "bad_metadata")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tables(max_rows=10, max_columns=3), st.data())
def test_truncated_random_tables(table: pa.Table, data: st.DataObject) -> None:
    stream = stream_bytes(table)
    cut = data.draw(st.integers(0, len(stream) - 9))
    meta = arrow.encode_descriptor(table.schema, table.num_rows, len(table.to_batches()))
    try:
        read_bytes(stream[:cut], meta)
    except FormatError:
        return
    # a cut at a message boundary is a shorter valid stream: only the descriptor knows
    raise AssertionError("a truncated stream was accepted")


def test_payload_changed_after_publishing() -> None:
    with slices() as sl:
        s = sl.put(GOOD_STREAM, format=Format.ARROW_STREAM)
        start, _, _ = first_batch(GOOD_STREAM)
        with sl.arenas.area(s) as area:
            area[payload_offset_for(0) + start] ^= 0xFF  # a peer scribbles over the stream
        with pytest.raises(ChecksumError):
            sl.read(s)
        with sl.read(s, verify=False) as frame, pytest.raises(FormatError):
            read_arrow(frame)


# ---- writing failures ---------------------------------------------------------------------


def test_a_frame_over_the_arena_limit_is_refused_before_anything_is_written() -> None:
    table = pa.table({"x": list(range(10_000))})  # an 80 KB stream
    with slices(limit=1 << 16) as sl:
        with pytest.raises(ArenaError) as info:
            write_arrow(sl.arenas, table)
        assert (info.value.reason, info.value.field) == ("too_large", "arena_limit")
        assert sl.arenas.arena_count() == 0 and sl.arenas.stats["allocs"] == 0
        s = sl.put(b"old", format=Format.RAW)  # the arenas are as usable as before
        with sl.read(s) as frame:
            assert bytes(frame.payload) == b"old"


def test_failed_write_leaves_no_view_and_gives_its_slice_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = pa.table({"x": list(range(100))})
    real = arrow_writer.write_stream

    def failing(sink: Any, data: Any, schema: pa.Schema) -> Any:
        if isinstance(sink, pa.FixedSizeBufferWriter):
            sink.write(b"partial")
            raise RuntimeError("boom")
        return real(sink, data, schema)

    with slices() as sl:
        first = write_arrow(sl.arenas, table)
        sl.arenas.free(first)
        monkeypatch.setattr(arrow_writer, "write_stream", failing)
        # a view of the area left over would fail its release with a BufferError instead
        with pytest.raises(RuntimeError, match="boom"):
            write_arrow(sl.arenas, table)
        monkeypatch.setattr(arrow_writer, "write_stream", real)
        again = write_arrow(sl.arenas, table)
        assert (again.object_id, again.offset) == (first.object_id, first.offset)
        with sl.read(again) as frame:
            back = read_arrow(frame)
            assert back.equals(table)
            del back


def test_timestamps_and_dates_values() -> None:
    table = pa.table(
        {
            "d32": pa.array([datetime.date(1970, 1, 2), None], pa.date32()),
            "d64": pa.array([datetime.date(2000, 2, 29), None], pa.date64()),
            "ns": pa.array([1, None], pa.timestamp("ns", "Asia/Tokyo")),
            "h": pa.array(np.array([1.5, np.inf], dtype=np.float16)),
            "nan": pa.array([float("nan"), -0.0]),
        }
    )
    with slices() as sl:
        s = write_arrow(sl.arenas, table)
        with sl.read(s) as frame:
            back = read_arrow(frame)
            assert back.schema.equals(table.schema)
            assert back.column("d64").to_pylist() == [datetime.date(2000, 2, 29), None]
            assert str(back.schema.field("ns").type) == "timestamp[ns, tz=Asia/Tokyo]"
            nan = back.column("nan").chunk(0).to_numpy()
            assert np.isnan(nan[0]) and np.signbit(nan[1])
            del back, nan


def test_doctests() -> None:
    result = doctest.testmod(arrow, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
