"""Arrow IPC stream payloads (format ``arrow_stream``, protocol/SPEC.md §5.1,
protocol/formats/arrow.md): written by pyarrow straight into shared memory, read back
in place.

One module per concept: `beambridge.formats.arrow.writer` (sizing and writing a
stream, the check that Elixir can read it), `beambridge.formats.arrow.reader`
(tables, bare streams and pandas frames read in place),
`beambridge.formats.arrow.validation` (the full check of every table read),
`beambridge.formats.arrow.messages` (the message headers, checked before pyarrow
reads them) and `beambridge.formats.arrow.descriptor` (the frame's metadata). Every
public name is importable from here.

>>> import pyarrow as pa
>>> from beambridge.arena import ArenaSet, PeerObject
>>> table = pa.table({"id": [1, 2, 3], "name": ["a", "b", None]})
>>> arenas = ArenaSet(limit=1 << 20, min_arena=1 << 16)
>>> s = write_arrow(arenas, table)
>>> peer = PeerObject.open(*arenas.announcement(s.object_id))
>>> frame = peer.read_frame(s.offset, s.length, s.generation)
>>> desc = arrow_descriptor(frame.metadata)
>>> back = read_arrow(frame)
>>> desc.num_rows, desc.fields, back.equals(table)
(3, (('id', 'int64', True), ('name', 'string', True)), True)
>>> del frame, back; peer.close(); arenas.close()
"""

from __future__ import annotations

from .descriptor import (
    DESCRIPTOR_VERSION,
    MAX_FIELDS_BYTES,
    ArrowDescriptor,
    arrow_descriptor,
    encode_descriptor,
)
from .reader import read_arrow, read_arrow_pandas, read_arrow_stream
from .writer import (
    StreamPlan,
    arrow_frame_lengths,
    arrow_stream_size,
    check_elixir_readable,
    plan_stream,
    write_arrow,
    write_stream,
    write_stream_into,
)

__all__ = [
    "DESCRIPTOR_VERSION",
    "MAX_FIELDS_BYTES",
    "ArrowDescriptor",
    "StreamPlan",
    "arrow_descriptor",
    "arrow_frame_lengths",
    "arrow_stream_size",
    "check_elixir_readable",
    "encode_descriptor",
    "plan_stream",
    "read_arrow",
    "read_arrow_pandas",
    "read_arrow_stream",
    "write_arrow",
    "write_stream",
    "write_stream_into",
]
