"""Cross-language tests of the Elixir Arrow IPC stream reader and writer (Bridge.Arrow)
against pyarrow.

Hypothesis draws tables over the types Bridge.Arrow supports (random schemas, nulls,
empty tables, unicode, many batches, sliced inputs, replaced and delta dictionaries);
pyarrow writes each as an IPC stream. ONE `mix run tests/cross/arrow_peer.exs DIR`
decodes every stream in Elixir and writes it back twice: re-encoded as decoded, and
rebuilt from Elixir terms. pyarrow must read both back equal to the original, schema
included. The peer also writes tables built in Elixir (from_rows/from_columns), which
pyarrow reads and compares with the values written here.

Set BB_HYPOTHESIS_SEED to replay a run; the seed is printed.
"""

from __future__ import annotations

import decimal
import math
import os
import random
import subprocess
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
PEER = "tests/cross/arrow_peer.exs"
EXAMPLES = int(os.environ.get("BB_ARROW_EXAMPLES", "150"))

INTS = {
    pa.int8(): (-(2**7), 2**7 - 1),
    pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
    pa.uint8(): (0, 2**8 - 1),
    pa.uint16(): (0, 2**16 - 1),
    pa.uint32(): (0, 2**32 - 1),
    pa.uint64(): (0, 2**64 - 1),
}
FLOATS = {pa.float16(): 16, pa.float32(): 32, pa.float64(): 64}
TIMESTAMPS = [
    pa.timestamp(unit, tz)
    for unit in ("s", "ms", "us", "ns")
    for tz in (None, "UTC", "Europe/Paris", "+05:30")
]
PRIMITIVES = [
    *INTS,
    *FLOATS,
    pa.bool_(),
    pa.string(),
    pa.large_string(),
    pa.binary(),
    pa.large_binary(),
    pa.date32(),
    pa.date64(),
    *TIMESTAMPS,
    pa.null(),
]
DICTIONARY = pa.dictionary(pa.int32(), pa.string())
WORDS = ["", "a", "red", "grün", "青", "🎉🎉"]


def arrow_types() -> st.SearchStrategy[pa.DataType]:
    """Primitives, lists and large lists of them (two levels deep), dictionaries."""
    item = st.sampled_from(PRIMITIVES)

    def wrap(inner: st.SearchStrategy[pa.DataType]) -> st.SearchStrategy[pa.DataType]:
        return st.builds(
            lambda t, large, nullable: (pa.large_list if large else pa.list_)(
                pa.field("item", t, nullable=nullable or t == pa.null())
            ),
            inner,
            st.booleans(),
            st.booleans(),
        )

    return st.one_of(item, wrap(item), wrap(wrap(item)), st.just(DICTIONARY))


def values_of(t: pa.DataType) -> st.SearchStrategy[Any]:
    """Non-null Python values pyarrow accepts for type t."""
    if t in INTS:
        lo, hi = INTS[t]
        return st.integers(lo, hi)
    if t in FLOATS:
        return st.floats(allow_nan=False, width=FLOATS[t])
    if t == pa.bool_():
        return st.booleans()
    if t in (pa.string(), pa.large_string()):
        return st.text(max_size=12)
    if t in (pa.binary(), pa.large_binary()):
        return st.binary(max_size=12)
    if t == pa.date32():
        return st.integers(-(2**31), 2**31 - 1)
    if t == pa.date64():
        # Arrow requires whole days.
        return st.integers(-(2**31), 2**31 - 1).map(lambda days: days * 86_400_000)
    if pa.types.is_timestamp(t):
        return st.integers(-(2**63), 2**63 - 1)
    if t == pa.null():
        return st.none()
    if t == DICTIONARY:
        return st.sampled_from(WORDS)
    assert pa.types.is_list(t) or pa.types.is_large_list(t), t
    item = t.value_field
    return st.lists(cell(item.type, item.nullable), max_size=4)


def cell(t: pa.DataType, nullable: bool) -> st.SearchStrategy[Any]:
    if nullable:
        return st.one_of(st.none(), values_of(t))
    return values_of(t)


def make_array(values: list[Any], t: pa.DataType) -> pa.Array:
    if t == DICTIONARY:
        return pa.array(values, pa.string()).dictionary_encode()
    if t == pa.date32():
        return pa.array(values, pa.int32()).view(t)
    if t == pa.date64() or pa.types.is_timestamp(t):
        return pa.array(values, pa.int64()).view(t)
    return pa.array(values, t)


@st.composite
def streams(draw: st.DrawFn) -> tuple[pa.Schema, list[pa.RecordBatch], dict[str, Any]]:
    """A schema, the record batches to write and the IpcWriteOptions to write them with."""
    options = {
        "emit_dictionary_deltas": draw(st.booleans()),
        "compression": draw(st.sampled_from([None, None, "lz4", "zstd"])),
    }
    ncols = draw(st.integers(0, 5))
    nrows = draw(st.integers(0, 25))
    names = draw(st.lists(st.text(max_size=6), min_size=ncols, max_size=ncols, unique=True))
    fields, arrays = [], []
    for name in names:
        t = draw(arrow_types())
        nullable = t == pa.null() or draw(st.booleans())
        values = draw(st.lists(cell(t, nullable), min_size=nrows, max_size=nrows))
        metadata = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4)))
        fields.append(pa.field(name, t, nullable=nullable, metadata=metadata or None))
        arrays.append(make_array(values, t))
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4)))
    schema = pa.schema(fields, metadata=metadata or None)
    if ncols == 0:
        batches = [pa.RecordBatch.from_pydict({}) for _ in range(draw(st.integers(0, 2)))]
        return schema, batches, options
    table = pa.Table.from_arrays(arrays, schema=schema)
    # Sliced inputs: buffers and offsets that do not start at zero.
    start = draw(st.integers(0, nrows))
    table = table.slice(start, draw(st.integers(0, nrows - start)))
    batches = table.to_batches(max_chunksize=draw(st.integers(1, 8)))
    if draw(st.booleans()):
        # A dictionary per batch: replacement (or delta) dictionary batches.
        batches = [
            pa.RecordBatch.from_arrays(
                [
                    c.dictionary_decode().dictionary_encode() if c.type == DICTIONARY else c
                    for c in b.columns
                ],
                schema=schema,
            )
            for b in batches
        ]
    return schema, batches, options


def write_stream(
    path: Path,
    schema: pa.Schema,
    batches: list[pa.RecordBatch],
    **options: Any,
) -> None:
    with ipc.new_stream(path, schema, options=ipc.IpcWriteOptions(**options)) as writer:
        for batch in batches:
            writer.write_batch(batch)


def read_stream(path: Path) -> pa.Table:
    table = ipc.open_stream(path.read_bytes()).read_all()
    table.validate(full=True)
    return table


def decode_dictionaries(table: pa.Table) -> pa.Table:
    """Dictionary columns as their values (a rebuilt dictionary may order them differently)."""
    fields = [
        f.with_type(f.type.value_type) if pa.types.is_dictionary(f.type) else f
        for f in table.schema
    ]
    schema = pa.schema(fields, metadata=table.schema.metadata)
    columns = [
        c.cast(f.type) if pa.types.is_dictionary(c.type) else c
        for c, f in zip(table.columns, fields, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def bad_stream(path: Path) -> None:
    """A string column holding bytes that are not UTF-8."""
    column = pa.array([b"ok", b"\xff\xfe"], pa.binary()).view(pa.string())
    write_stream(path, pa.schema([("s", pa.string())]), [pa.record_batch([column], names=["s"])])


def compressed(codec: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        table = pa.table({"x": pa.array(range(1000), pa.int64()), "s": ["abc"] * 1000})
        write_stream(path, table.schema, table.to_batches(), compression=codec)

    return write


def big_compressed(codec: str) -> Callable[[Path], None]:
    """Large, compressible columns in several compressed batches (long LZ4 matches,
    zstd buffers above the NIF's 64 KiB dirty-scheduler threshold)."""

    def write(path: Path) -> None:
        big(path, codec)

    return write


def big(path: Path, codec: str) -> None:
    n = 100_000
    table = pa.table(
        {
            "rep": pa.array([i // 1000 for i in range(n)], pa.int64()),
            "mod": pa.array([i % 7 for i in range(n)], pa.int8()),
            "s": pa.array([None if i % 11 == 0 else f"row {i % 100} ünï" for i in range(n)]),
            "b": pa.array([i % 3 == 0 for i in range(n)]),
        }
    )
    write_stream(path, table.schema, table.to_batches(max_chunksize=30_000), compression=codec)


def bad_zstd_length(path: Path) -> None:
    """A zstd stream whose first buffer records one byte more than its frame holds."""
    compressed("zstd")(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"\x28\xb5\x2f\xfd")  # the first zstd frame's magic number
    length = int.from_bytes(data[at - 8 : at], "little", signed=True)
    data[at - 8 : at] = (length + 1).to_bytes(8, "little", signed=True)
    path.write_bytes(bytes(data))


def truncated(path: Path) -> None:
    table = pa.table({"x": pa.array(range(10), pa.int64())})
    write_stream(path, table.schema, table.to_batches())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 30])


# Large compressed streams the peer must round-trip, besides the hypothesis ones.
BIG_STREAMS: dict[str, Callable[[Path], None]] = {
    "lz4": big_compressed("lz4"),
    "zstd": big_compressed("zstd"),
}

# Streams the peer must refuse, and the reason it must give.
BAD_STREAMS: dict[str, tuple[Callable[[Path], None], str]] = {
    "bad_utf8": (bad_stream, "bad_utf8"),
    "bad_zstd_length": (bad_zstd_length, "bad_compressed_data"),
    "bad_truncated": (truncated, "truncated"),
}


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Writes the hypothesis streams and the bad streams, runs the peer once."""
    root = tmp_path_factory.mktemp("arrow")
    (root / "in").mkdir()
    run_seed = int(os.environ.get("BB_HYPOTHESIS_SEED", random.randrange(1 << 32)))
    print(f"\narrow hypothesis seed: {run_seed} (replay with BB_HYPOTHESIS_SEED={run_seed})")
    drawn: list[tuple[pa.Schema, list[pa.RecordBatch], dict[str, Any]]] = []

    @seed(run_seed)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(streams())
    def collect(stream: tuple[pa.Schema, list[pa.RecordBatch], dict[str, Any]]) -> None:
        drawn.append(stream)

    collect()
    for i, (schema, batches, options) in enumerate(drawn):
        write_stream(root / "in" / f"gen_{i:04d}.arrows", schema, batches, **options)
    for codec, write in BIG_STREAMS.items():
        write(root / "in" / f"gen_{codec}_big.arrows")
    for name, (write, _reason) in BAD_STREAMS.items():
        write(root / "in" / f"{name}.arrows")

    run_peer(root, len(drawn) + len(BIG_STREAMS) + len(BAD_STREAMS))
    return root


def run_peer(root: Path, inputs: int) -> None:
    """One run of the Elixir peer over root/in; it must have handled ``inputs`` files."""
    proc = subprocess.run(
        ["mix", "run", PEER, str(root)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"DONE {inputs}" in proc.stdout, proc.stdout + proc.stderr


def generated(root: Path) -> list[Path]:
    return sorted((root / "in").glob("gen_*.arrows"))


def test_python_streams_round_trip_through_elixir(peer_run: Path) -> None:
    inputs = generated(peer_run)
    assert len(inputs) == EXAMPLES + len(BIG_STREAMS)
    for path in inputs:
        out = peer_run / "out" / path.name
        error = out.with_suffix(".error")
        assert not error.exists(), f"{path.name}: {error.read_text() if error.exists() else ''}"
        original = read_stream(path)
        back = read_stream(out)
        assert back.schema.equals(original.schema, check_metadata=True), path.name
        assert back.equals(original, check_metadata=True), (path.name, original, back)


def test_python_streams_round_trip_through_elixir_terms(peer_run: Path) -> None:
    for path in generated(peer_run):
        original = decode_dictionaries(read_stream(path))
        back = decode_dictionaries(read_stream(peer_run / "out" / f"{path.stem}.terms.arrows"))
        assert back.equals(original, check_metadata=True), (path.name, original, back)


@pytest.mark.parametrize("name", sorted(BAD_STREAMS))
def test_bad_streams_give_typed_errors(peer_run: Path, name: str) -> None:
    error = peer_run / "out" / f"{name}.error"
    assert error.exists(), f"{name} decoded without error"
    reason, message = error.read_text().split("\n", 1)
    assert reason == BAD_STREAMS[name][1], message


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


# The tables ArrowPeer.cases/0 builds in Elixir, as pyarrow should read them.
ELIXIR_CASES: dict[str, pa.Table] = {
    "rows": pa.table(
        {
            "id": pa.array([1, 2, -(2**63)], pa.int64()),
            "name": pa.array(["ada", None, "ünï 🎉"], pa.string()),
            "ok": pa.array([True, False, None], pa.bool_()),
            "score": pa.array([1.5, -0.0, None], pa.float64()),
        }
    ),
    "columns": pa.table(
        {
            "bytes": pa.array([b"\x00\xff", b"text", None], pa.binary()),
            "day": pa.array([date(1970, 1, 1), date(2024, 2, 29), None], pa.date32()),
            "naive": pa.array(
                [datetime(2024, 1, 1, 12, 0, 0, 1), None, datetime(1900, 1, 1)],
                pa.timestamp("us"),
            ),
            "utc": pa.array(
                [utc(2024, 1, 1), None, utc(1969, 12, 31, 23, 59, 59, 999999)],
                pa.timestamp("us", "UTC"),
            ),
            "lists": pa.array([[1, 2, 3], [], None], pa.list_(pa.int64())),
            "nested": pa.array(
                [[["a"], []], None, [None, ["b", None]]], pa.list_(pa.list_(pa.string()))
            ),
            "nothing": pa.array([None, None, None], pa.null()),
        }
    ),
    "declared": pa.Table.from_arrays(
        [
            pa.array([-128, 127, None], pa.int8()),
            pa.array([0, 2**64 - 1, None], pa.uint64()),
            pa.array([0.5, math.inf, None], pa.float16()),
            pa.array([math.nan, -1.25, None], pa.float32()),
            pa.array([date(2000, 1, 1), None, date(1960, 6, 30)], pa.date64()),
            pa.array([946684801, None, 0], pa.int64()).view(pa.timestamp("s")),
            pa.array([946684800000001000, None, 1], pa.int64()).view(
                pa.timestamp("ns", "Europe/Paris")
            ),
            pa.array(["x", "yy", None], pa.large_string()),
            pa.array(["red", "green", "red"]).dictionary_encode(),
        ],
        schema=pa.schema(
            [
                ("i8", pa.int8()),
                ("u64", pa.uint64()),
                ("f16", pa.float16()),
                ("f32", pa.float32()),
                ("d64", pa.date64()),
                ("ts_s", pa.timestamp("s")),
                ("ts_ns", pa.timestamp("ns", "Europe/Paris")),
                ("big", pa.large_string()),
                pa.field("dict", DICTIONARY, nullable=False),
            ]
        ),
    ),
    "nested": pa.table(
        {
            "price": pa.array([decimal.Decimal("19.99"), None], pa.decimal128(10, 2)),
            "emb": pa.array([[0.5, -1.0], None], pa.list_(pa.float32(), 2)),
            "attrs": pa.array([[("a", 1), ("a", 2)], []], pa.map_(pa.string(), pa.int64())),
            "id": pa.array([1, 2], pa.int64()),
            "items": pa.array(
                [[{"qty": 2, "sku": "a-1"}], []],
                pa.list_(pa.struct([("qty", pa.int64()), ("sku", pa.string())])),
            ),
            "user": pa.array(
                [{"name": "ada", "tags": ["x"]}, None],
                pa.struct([("name", pa.string()), ("tags", pa.list_(pa.string()))]),
            ),
        }
    ),
    "empty": pa.table({"a": pa.array([], pa.int32()), "b": pa.array([], pa.string())}),
    "no_columns": pa.table({}),
}


def nan_safe(values: list[Any]) -> list[Any]:
    return ["NaN" if isinstance(v, float) and math.isnan(v) else v for v in values]


@pytest.mark.parametrize("name", sorted(ELIXIR_CASES))
def test_elixir_tables_read_by_pyarrow(peer_run: Path, name: str) -> None:
    expected = ELIXIR_CASES[name]
    table = read_stream(peer_run / "elixir" / f"{name}.arrows")
    assert table.schema.equals(expected.schema, check_metadata=True), (table.schema, expected)
    assert table.num_rows == expected.num_rows
    for got, want in zip(table.columns, expected.columns, strict=True):
        assert nan_safe(got.to_pylist()) == nan_safe(want.to_pylist())


def test_elixir_buffers_are_64_byte_aligned(peer_run: Path) -> None:
    """Read in place from 64-byte-aligned memory, every buffer of an Elixir stream is aligned."""
    outputs = sorted((peer_run / "elixir").glob("*.arrows")) + sorted(
        (peer_run / "out").glob("gen_*.arrows")
    )
    for path in outputs:
        data = path.read_bytes()
        aligned = pa.allocate_buffer(len(data))  # the default pool aligns to 64 bytes
        assert aligned.address % 64 == 0
        memoryview(aligned).cast("B")[:] = data
        table = ipc.open_stream(aligned).read_all()
        for column in table.columns:
            for chunk in column.chunks:
                for buf in chunk.buffers():
                    if buf is not None and buf.size > 0:
                        assert buf.address % 64 == 0, (path.name, column.type)
