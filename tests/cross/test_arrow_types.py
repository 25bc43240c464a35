"""Every type of the Arrow columnar format through the Elixir reader and writer
(Bridge.Arrow), checked against pyarrow.

Hypothesis draws schemas from every type (tests/python/arrow_strategies.py: decimals of
each width, times, durations, intervals, fixed-size binaries and lists, structs, maps,
sparse and dense unions, run-end encoded, views, list views, dictionaries with nested
values) nested up to depth 4, with random nulls, slices (non-zero offsets), empty and
several batches, replaced and delta dictionaries (nested ones too) and compression.
pyarrow writes each as an IPC stream and, where the file format allows, an IPC file.
ONE run of tests/cross/arrow_peer.exs decodes every stream in Elixir and writes it back
twice: as decoded (buffers) and rebuilt from the Elixir values (`to_columns` then
`from_columns` with the decoded schema). pyarrow must read the first back equal to the
original, buffers and schema, and the second equal in value and schema. Files go both
ways too: pyarrow's files decoded and written back as files, and every stream written
by Elixir as a file.

Set BB_HYPOTHESIS_SEED to replay a run; the seed is printed.
"""

from __future__ import annotations

import decimal
import os
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.ipc as ipc
import pytest
from arrow_strategies import arrays, arrow_types, leaf_types
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from test_arrow_codec import read_stream, run_peer, write_stream

ROOT = Path(__file__).resolve().parents[2]
PEER = "tests/cross/arrow_peer.exs"
EXAMPLES = int(os.environ.get("BB_ARROW_TYPE_EXAMPLES", "120"))

Stream = tuple[pa.Schema, list[pa.RecordBatch], dict[str, Any]]


@st.composite
def column_types(draw: st.DrawFn) -> pa.DataType:
    return draw(st.one_of(leaf_types(), arrow_types(depth=4)))


@st.composite
def streams(draw: st.DrawFn) -> Stream:
    """A schema, its batches and the IpcWriteOptions: batches are slices of one table
    (offsets), independently drawn (dictionaries replaced), or, for dictionary columns,
    drawn over a growing dictionary (deltas when the writer emits them)."""
    options = {
        "emit_dictionary_deltas": draw(st.booleans()),
        "compression": draw(st.sampled_from([None, None, "lz4", "zstd"])),
    }
    ncols = draw(st.integers(1, 4))
    names = draw(st.lists(st.text(max_size=5), min_size=ncols, max_size=ncols, unique=True))
    types = [draw(column_types()) for _ in names]
    nullables = [t == pa.null() or draw(st.booleans()) for t in types]
    metadata = draw(st.none() | st.dictionaries(st.text(max_size=4), st.text(max_size=4)))
    fields = [
        pa.field(n, t, nullable=nl, metadata=draw(st.none() | st.just({"k": n})))
        for n, t, nl in zip(names, types, nullables, strict=True)
    ]
    schema = pa.schema(fields, metadata=metadata or None)
    mode = draw(st.sampled_from(["sliced", "independent", "growing"]))
    if mode == "sliced":
        nrows = draw(st.integers(0, 14))
        columns = [draw(arrays(f.type, nrows, f.nullable)) for f in fields]
        table = pa.Table.from_arrays(columns, schema=schema)
        start = draw(st.integers(0, nrows))
        table = table.slice(start, draw(st.integers(0, nrows - start)))
        return schema, table.to_batches(max_chunksize=draw(st.integers(1, 6))), options
    sizes = draw(st.lists(st.integers(0, 6), min_size=1, max_size=3))
    batches = []
    grown: dict[int, pa.Array] = {}
    for n in sizes:
        columns = []
        for i, f in enumerate(fields):
            column = draw(arrays(f.type, n, f.nullable))
            if mode == "growing" and pa.types.is_dictionary(f.type):
                column = _grow(draw, grown, i, column, f)
            columns.append(column)
        batches.append(pa.RecordBatch.from_arrays(columns, schema=schema))
    return schema, batches, options


def _grow(
    draw: st.DrawFn, grown: dict[int, pa.Array], i: int, column: pa.Array, f: pa.Field
) -> pa.Array:
    """The column over its previous batch's dictionary with this batch's appended."""
    old = grown.get(i)
    dictionary = column.dictionary if old is None else pa.concat_arrays([old, column.dictionary])
    grown[i] = dictionary
    size = len(dictionary)
    picks = draw(st.lists(st.integers(0, size - 1), min_size=len(column), max_size=len(column)))
    valid = column.is_valid().to_pylist()
    indices = pa.array(
        [p if ok else None for p, ok in zip(picks, valid, strict=True)], f.type.index_type
    )
    return pa.DictionaryArray.from_arrays(indices, dictionary)


def nested_delta(path: Path) -> None:
    """A dictionary inside a struct inside a list whose dictionary grows batch by batch:
    pyarrow writes delta dictionary batches for it."""
    inner = pa.dictionary(pa.int16(), pa.string())
    t = pa.list_(pa.struct([pa.field("tag", inner), pa.field("n", pa.int32())]))
    schema = pa.schema([pa.field("x", t)])
    words = ["a", "b", "c", "d", "e", "f"]
    batches = []
    for k in range(1, 4):
        dictionary = pa.array(words[: 2 * k])
        tags = pa.DictionaryArray.from_arrays(
            pa.array([2 * k - 1, 0, None], pa.int16()), dictionary
        )
        struct = pa.StructArray.from_arrays(
            [tags, pa.array([k, None, 3], pa.int32())], fields=list(t.value_type)
        )
        lists = pa.ListArray.from_arrays(pa.array([0, 2, 2, 3], pa.int32()), struct, type=t)
        batches.append(pa.RecordBatch.from_arrays([lists], schema=schema))
    write_stream(path, schema, batches, emit_dictionary_deltas=True)


def extension(path: Path) -> None:
    """Extension types: pyarrow's canonical UUID and a JSON extension over utf8; Elixir
    sees their storage types and keeps their names and metadata."""
    uuids = pa.ExtensionArray.from_storage(
        pa.uuid(), pa.array([b"0123456789abcdef", None], pa.binary(16))
    )
    json = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": 1}', None]))
    table = pa.table({"id": uuids, "doc": json})
    write_stream(path, table.schema, table.to_batches())


def write_file(path: Path, schema: pa.Schema, batches: list[pa.RecordBatch]) -> int:
    """The batches as an IPC file (1), or nothing (0) when their dictionaries change
    between batches: the file format has one dictionary per field."""
    try:
        with ipc.new_file(path, schema) as writer:
            for batch in batches:
                writer.write_batch(batch)
    except pa.ArrowInvalid as e:
        assert "replacement" in str(e), e
        path.unlink()
        return 0
    return 1


def read_file(path: Path) -> pa.Table:
    table = ipc.open_file(path.read_bytes()).read_all()
    table.validate(full=True)
    return table


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arrow_types")
    (root / "in").mkdir()
    run_seed = int(os.environ.get("BB_HYPOTHESIS_SEED", random.randrange(1 << 32)))
    print(f"\narrow types hypothesis seed: {run_seed} (replay with BB_HYPOTHESIS_SEED={run_seed})")
    drawn: list[Stream] = []

    @seed(run_seed)
    @settings(
        max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(streams())
    def collect(stream: Stream) -> None:
        drawn.append(stream)

    collect()
    files = 0
    for i, (schema, batches, options) in enumerate(drawn):
        write_stream(root / "in" / f"gen_{i:04d}.arrows", schema, batches, **options)
        files += write_file(root / "in" / f"gen_{i:04d}.arrow", schema, batches)
    nested_delta(root / "in" / "gen_nested_delta.arrows")
    extension(root / "in" / "gen_extension.arrows")
    run_peer(root, len(drawn) + 2 + files)
    return root


def inputs(root: Path) -> list[Path]:
    paths = sorted((root / "in").glob("gen_*.arrows"))
    assert len(paths) == EXAMPLES + 2
    return paths


def test_every_type_round_trips_through_elixir_buffers(peer_run: Path) -> None:
    for path in inputs(peer_run):
        error = peer_run / "out" / f"{path.stem}.error"
        assert not error.exists(), f"{path.name}: {error.read_text() if error.exists() else ''}"
        original = read_stream(path)
        back = read_stream(peer_run / "out" / path.name)
        assert back.schema.equals(original.schema, check_metadata=True), (
            path.name,
            original.schema,
            back.schema,
        )
        assert back.equals(original, check_metadata=True), (path.name, original, back)


def test_every_type_round_trips_through_elixir_values(peer_run: Path) -> None:
    for path in inputs(peer_run):
        original = read_stream(path)
        back = read_stream(peer_run / "out" / f"{path.stem}.terms.arrows")
        assert back.schema.equals(original.schema, check_metadata=True), (
            path.name,
            original.schema,
            back.schema,
        )
        assert values(back) == values(original), (path.name, original, back)


def test_every_type_round_trips_through_elixir_ipc_files(peer_run: Path) -> None:
    """Files pyarrow wrote, decoded in Elixir and written back as files; and every
    stream written by Elixir as a file, unless its dictionaries change between batches
    (then the typed refusal)."""
    written = sorted((peer_run / "in").glob("gen_*.arrow"))
    assert written, "no stream could be written as a file"
    for path in written:
        original = read_file(path)
        back = read_file(peer_run / "out" / path.name)
        assert back.schema.equals(original.schema, check_metadata=True), path.name
        assert back.equals(original, check_metadata=True), (path.name, original, back)
    refused = 0
    for path in inputs(peer_run):
        out = peer_run / "out" / f"{path.stem}.file.arrow"
        if not out.exists():
            reason = (peer_run / "out" / f"{path.stem}.file.error").read_text().split("\n")[0]
            assert reason == "dictionary_replacement", (path.name, reason)
            refused += 1
            continue
        as_file, original = read_file(out), read_stream(path)
        if deltas(path):
            # a file's batches all see the whole dictionary (deltas included),
            # a stream's batch only what came before it: the values agree
            assert as_file.schema.equals(original.schema, check_metadata=True), path.name
            assert values(as_file) == values(original), path.name
        else:
            assert as_file.equals(original, check_metadata=True), path.name
    assert refused < len(inputs(peer_run)), "every file was refused"


def test_the_nested_delta_stream_holds_delta_batches(peer_run: Path) -> None:
    """The fixed case really exercises deltas (else its round trip proves little)."""
    data = (peer_run / "in" / "gen_nested_delta.arrows").read_bytes()
    reader = ipc.open_stream(data)
    reader.read_all()
    assert reader.stats.num_dictionary_deltas >= 1, reader.stats
    back = read_stream(peer_run / "out" / "gen_nested_delta.arrows")
    assert back.column("x").to_pylist()[0][0]["tag"] == "b"
    # Elixir writes the deltas back as deltas, in a stream and in a file
    again = ipc.open_stream((peer_run / "out" / "gen_nested_delta.arrows").read_bytes())
    again.read_all()
    assert again.stats.num_dictionary_deltas >= 1, again.stats
    assert (peer_run / "out" / "gen_nested_delta.file.arrow").exists()


def deltas(path: Path) -> int:
    """How many delta dictionary batches the stream at ``path`` holds."""
    reader = ipc.open_stream(path.read_bytes())
    reader.read_all()
    return int(reader.stats.num_dictionary_deltas)


def test_extension_types_come_back_as_extension_types(peer_run: Path) -> None:
    back = read_stream(peer_run / "out" / "gen_extension.arrows")
    assert back.schema.field("id").type == pa.uuid()
    assert back.schema.field("doc").type == pa.json_()
    assert back.equals(read_stream(peer_run / "in" / "gen_extension.arrows"))


def values(table: pa.Table) -> list[Any]:
    """The table's values, exact where Python's are (decimals, ns timestamps)."""
    return [_canonical(v) for v in table.to_pylist()]


def _canonical(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _canonical(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_canonical(x) for x in v]
    if isinstance(v, decimal.Decimal):
        return v.as_tuple()
    return v
