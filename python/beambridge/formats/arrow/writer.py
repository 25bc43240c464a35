"""Arrow IPC streams written by pyarrow straight into shared memory
(protocol/formats/arrow.md).

`plan_stream` sizes the IPC *stream* first with a counting sink
(``pyarrow.MockOutputStream``: nothing is materialised) and makes its metadata
descriptor (`beambridge.formats.arrow.descriptor`); `write_stream_into` then lets
pyarrow write it through a ``pyarrow.FixedSizeBufferWriter`` over a slice's payload
area. The payload is never held in a private ``bytes``: the column data is copied once,
from the table into shared memory. `write_arrow` does both into a new slice of an
`beambridge.arena.ArenaSet`; the worker's results go the same way through
`beambridge.result_slices`. `check_elixir_readable` refuses, before anything is
written, a column the Elixir side cannot read.

>>> import pyarrow as pa
>>> p = plan_stream(pa.table({"x": [1, 2, 3]}), None, False)
>>> p.size, p.schema.names
(304, ['x'])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.ipc as ipc

from ...header import Format
from .descriptor import encode_descriptor

if TYPE_CHECKING:
    from ...arena import ArenaSet, Slice

__all__ = [
    "StreamPlan",
    "arrow_frame_lengths",
    "arrow_stream_size",
    "check_elixir_readable",
    "plan_stream",
    "write_arrow",
    "write_stream",
    "write_stream_into",
]


@dataclass(frozen=True)
class StreamPlan:
    """What a write needs, from one sizing pass: the data, its schema, the exact
    stream size and the descriptor."""

    data: pa.Table | list[pa.RecordBatch]
    schema: pa.Schema
    size: int
    metadata: bytes


def _as_arrow(
    data: object, schema: pa.Schema | None, preserve_index: bool
) -> tuple[pa.Table | list[pa.RecordBatch], pa.Schema]:
    if isinstance(data, pa.Table):
        return data, data.schema
    if isinstance(data, pa.RecordBatch):
        return [data], data.schema
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        batches = list(data)
        if not all(isinstance(b, pa.RecordBatch) for b in batches):
            raise TypeError("write_arrow: a list given to it must hold only pyarrow.RecordBatch")
        if schema is None:
            if not batches:
                raise ValueError("write_arrow: an empty list of batches needs schema=")
            schema = batches[0].schema
        for b in batches:
            if not b.schema.equals(schema):
                raise ValueError(
                    f"write_arrow: batch schema {b.schema} differs from the stream's {schema}"
                )
        return batches, schema
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is optional
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        table = pa.Table.from_pandas(data, preserve_index=preserve_index)
        return table, table.schema
    raise TypeError(
        "write_arrow takes a pyarrow.Table, a pyarrow.RecordBatch, a list of RecordBatches "
        f"or a pandas.DataFrame, not {type(data)}"
    )


def write_stream(sink: Any, data: pa.Table | list[pa.RecordBatch], schema: pa.Schema) -> Any:
    """Write the stream of ``data`` to ``sink``; return the writer's statistics."""
    with ipc.new_stream(sink, schema) as writer:
        if isinstance(data, pa.Table):
            writer.write_table(data)
        else:
            for batch in data:
                writer.write_batch(batch)
    return writer.stats


def plan_stream(data: object, schema: pa.Schema | None, preserve_index: bool) -> StreamPlan:
    """One sizing pass over ``data`` (what `write_arrow` takes): its exact stream size
    and descriptor, counted without materialising the stream."""
    arrow, schema = _as_arrow(data, schema, preserve_index)
    counter = pa.MockOutputStream()
    stats = write_stream(counter, arrow, schema)
    num_rows = arrow.num_rows if isinstance(arrow, pa.Table) else sum(b.num_rows for b in arrow)
    metadata = encode_descriptor(schema, num_rows, stats.num_record_batches)
    return StreamPlan(arrow, schema, counter.size(), metadata)


def arrow_stream_size(
    data: object, *, schema: pa.Schema | None = None, preserve_index: bool = False
) -> int:
    """The exact size in bytes of ``data``'s Arrow IPC stream (the frame's payload),
    computed with a counting sink: nothing is materialised.

    >>> arrow_stream_size(pa.table({"x": [1, 2, 3]}))
    304
    """
    return plan_stream(data, schema, preserve_index).size


def arrow_frame_lengths(
    data: object, *, schema: pa.Schema | None = None, preserve_index: bool = False
) -> tuple[int, int]:
    """``(payload_length, metadata_length)`` of the frame `write_arrow` writes
    (`beambridge.frame_writer.frame_length` of them is the frame's size).

    >>> arrow_frame_lengths(pa.table({"x": [1.5]}))
    (280, 113)
    """
    plan = plan_stream(data, schema, preserve_index)
    return plan.size, len(plan.metadata)


def write_stream_into(area: memoryview, plan: StreamPlan) -> None:
    """pyarrow writes the stream into ``area``. Every pyarrow object holding the area's
    buffer is dropped before this returns, on success and on failure, so that no view
    of the area is left over."""
    buffer = sink = None
    try:
        buffer = pa.py_buffer(area)
        sink = pa.FixedSizeBufferWriter(buffer)
        write_stream(sink, plan.data, plan.schema)
        written = sink.tell()
        sink.close()
    finally:
        sink = buffer = None  # drop the references to the area
    if written != plan.size:  # the sizing pass and the write disagree: never publish
        raise RuntimeError(
            f"write_arrow: pyarrow wrote {written} bytes, the sizing pass counted {plan.size}"
        )


def write_arrow(
    arenas: ArenaSet,
    data: object,
    *,
    schema: pa.Schema | None = None,
    preserve_index: bool = False,
    checksum: bool = True,
    schema_id: int = 0,
    schema_version: int = 0,
) -> Slice:
    """Write ``data`` as one ``arrow_stream`` frame into a new slice of ``arenas``; return
    the slice.

    ``data`` is a ``pyarrow.Table``, a ``pyarrow.RecordBatch``, a list of RecordBatches
    of one schema (``schema=`` is needed when the list is empty) or a
    ``pandas.DataFrame`` (converted with ``pyarrow.Table.from_pandas``, its index kept
    only with ``preserve_index=True``). The stream is written by pyarrow straight into
    the slice's payload area; the frame metadata is the descriptor of
    `beambridge.formats.arrow.descriptor`.

    Raises what `beambridge.arena.ArenaSet.put_into` raises, before anything is
    written (`beambridge.errors.ArenaError` ``too_large``, ``arena_full``), and
    ``TypeError`` / ``ValueError`` for data it cannot write; a slice whose write failed
    is freed.
    """
    plan = plan_stream(data, schema, preserve_index)
    into = arenas.put_into(
        plan.size,
        metadata=plan.metadata,
        format=Format.ARROW_STREAM,
        checksum=checksum,
        schema_id=schema_id,
        schema_version=schema_version,
    )
    with into as (s, area):
        write_stream_into(area, plan)
    return s


def _children(kind: pa.DataType) -> list[pa.DataType]:
    """The types nested directly in ``kind`` (a dictionary's value type included)."""
    if pa.types.is_dictionary(kind):
        return [kind.value_type]
    if isinstance(kind, pa.ExtensionType):
        return [kind.storage_type]
    return [kind.field(i).type for i in range(kind.num_fields)]


def _holds_dictionary(kind: pa.DataType) -> bool:
    return pa.types.is_dictionary(kind) or any(_holds_dictionary(c) for c in _children(kind))


def _elixir_unreadable(kind: pa.DataType) -> pa.DataType | None:
    """The part of ``kind`` ``Bridge.Arrow`` does not read, or None: it reads every
    Arrow type at any depth except a dictionary whose values hold a dictionary
    (protocol/formats/arrow.md "Types")."""
    if pa.types.is_dictionary(kind) and _holds_dictionary(kind.value_type):
        return kind
    return next((bad for c in _children(kind) if (bad := _elixir_unreadable(c))), None)


def check_elixir_readable(schema: pa.Schema) -> None:
    """Raise ``TypeError`` naming the first column whose type the Elixir side cannot
    read: ``Bridge.Arrow`` reads every Arrow type, nested at any depth, except a
    dictionary whose values are themselves dictionary-encoded. A result is checked
    before it is written, so the call fails with that advice instead of the BEAM
    refusing the stream.

    >>> inner = pa.dictionary(pa.int8(), pa.string())
    >>> check_elixir_readable(pa.schema([("d", pa.dictionary(pa.int32(), inner))]))
    Traceback (most recent call last):
    ...
    TypeError: cannot send column 'd' of type dictionary<...> to Elixir: ...
    """
    for field in schema:
        bad = _elixir_unreadable(field.type)
        if bad is not None:
            raise TypeError(
                f"cannot send column {field.name!r} of type {field.type} to Elixir: "
                f"Bridge.Arrow does not read a dictionary whose values are dictionaries "
                f"({bad}); decode the inner dictionary first, e.g. with "
                "pc.cast(column, <the outer dictionary over the plain value type>)"
            )
