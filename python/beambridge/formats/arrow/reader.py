"""Arrow IPC streams read back in place (protocol/formats/arrow.md).

`read_arrow` opens the stream of an ``arrow_stream`` frame over the frame's read-only
payload view, so every column buffer of the returned ``pyarrow.Table`` lies inside the
shared memory the frame was read from (zero-copy), and validates it fully
(`beambridge.formats.arrow.validation`) before handing it out. The lease follows the
table: pyarrow's buffers keep the payload view alive (``py_buffer`` holds it as its
base), so while the table, or any array, buffer, NumPy view or pandas column made from
it, is alive, the frame's lease holds; once they are all gone it ends.

Because of that, a table that outlives its frame is read without a ``with`` block
(ending the block while the table lives raises ``leased``, by design)::

    table = read_arrow(peer.read_frame(offset, length, generation))

`read_arrow_stream` reads a bare stream (the inline form ``{:"$bb_arrow", stream}``) the
same way.

>>> read_arrow_stream(b"junk")
Traceback (most recent call last):
...
beambridge.errors.FormatError: bad_arrow_stream: ...
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from ...errors import FormatError
from ...frame import Frame
from ...header import Codec, Format
from .descriptor import arrow_descriptor, bad_metadata
from .validation import validated_table

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["read_arrow", "read_arrow_pandas", "read_arrow_stream"]


def read_arrow(frame: Frame) -> pa.Table:
    """The ``pyarrow.Table`` of an ``arrow_stream`` frame, read in place: its buffers lie
    inside the frame's payload, and the frame's lease lasts as long as the table or
    anything made from it (see the module docstring). Fully validated first.

    Raises `beambridge.FormatError`: ``wrong_format`` (the frame is another format),
    ``unsupported_codec`` (a compressed frame), ``bad_metadata`` (a descriptor that does
    not decode, or whose counts disagree with the stream), ``bad_arrow_stream`` (any
    malformation of the stream: truncated, bad flatbuffers, a buffer past the body,
    wrong lengths, invalid data; ``field`` says which part). Never another exception.
    A frame with empty metadata is accepted (a peer may write none).
    """
    header = frame.header
    if header.format != Format.ARROW_STREAM:
        name = Format(header.format).name.lower() if header.format in set(Format) else "?"
        raise FormatError(
            "wrong_format",
            "format",
            int(header.format),
            int(Format.ARROW_STREAM),
            f"wrong_format: the frame's format is {header.format} ({name}), not "
            f"{int(Format.ARROW_STREAM)} (arrow_stream); read it with its own format's reader",
        )
    if header.codec != Codec.NONE:
        raise FormatError(
            "unsupported_codec",
            "codec",
            int(header.codec),
            int(Codec.NONE),
            f"unsupported_codec: the Arrow reader reads uncompressed frames in place; this "
            f"one has codec {header.codec}",
        )
    descriptor = arrow_descriptor(frame.metadata) if frame.metadata else None
    table, error = validated_table(frame.payload)
    if error is not None:
        raise error
    assert table is not None
    if descriptor is not None and (
        descriptor.num_rows != table.num_rows or descriptor.num_columns != table.num_columns
    ):
        shape = (table.num_rows, table.num_columns)
        del table
        raise bad_metadata(
            (descriptor.num_rows, descriptor.num_columns),
            f"the descriptor says {descriptor.num_rows} rows x {descriptor.num_columns} "
            f"columns, the stream holds {shape[0]} x {shape[1]}",
        )
    return table


def read_arrow_stream(data: bytes | memoryview) -> pa.Table:
    """The ``pyarrow.Table`` of a bare Arrow IPC stream (no frame): the inline form
    ``{:"$bb_arrow", stream}`` of the call path. The same checks as `read_arrow`
    (message headers, no bytes after the stream, ``validate(full=True)``, fields);
    the table's buffers lie inside ``data``, which it keeps alive.

    Raises `beambridge.FormatError` ``bad_arrow_stream``, never another exception.
    """
    table, error = validated_table(memoryview(data))
    if error is not None:
        raise error
    assert table is not None
    return table


def read_arrow_pandas(frame: Frame, *, dtype_backend: str = "numpy") -> pd.DataFrame:
    """A ``pandas.DataFrame`` of an ``arrow_stream`` frame, copying only what pandas
    cannot take as a view; the lease follows every column that is a view.

    ``dtype_backend="numpy"`` (``Table.to_pandas(split_blocks=True)``): columns of
    ints, floats, dates and timestamps without nulls and in one chunk (one record
    batch) are NumPy views into shared memory; copies are unavoidable for bool (Arrow
    packs bits), strings and binaries (Python objects), columns with nulls (ints with
    nulls become float64, NaN for null: lossy past 2**53), lists, dictionaries
    (categoricals) and columns in several chunks (concatenated).

    ``dtype_backend="pyarrow"`` (``types_mapper=pandas.ArrowDtype``): every column is
    a pandas ``ArrowExtensionArray`` over the table's own arrays, no copy and no change
    of value for any type.

    Raises what `read_arrow` raises; ``ValueError`` for another ``dtype_backend``.
    """
    if dtype_backend not in ("numpy", "pyarrow"):
        raise ValueError(f"dtype_backend must be 'numpy' or 'pyarrow', not {dtype_backend!r}")
    table = read_arrow(frame)
    if dtype_backend == "pyarrow":
        import pandas as pd

        return table.to_pandas(types_mapper=pd.ArrowDtype, split_blocks=True)
    return table.to_pandas(split_blocks=True, self_destruct=False)
