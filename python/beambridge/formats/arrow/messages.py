"""The message headers of an Arrow IPC stream, checked before pyarrow decodes anything
(protocol/formats/arrow.md): what would make pyarrow transform data *before* it can be
validated, and would not be zero-copy, is refused. That is a big-endian schema (byte
swapping), body compression (decompression into private memory, of a size the stream
declares) and dictionary deltas (concatenation); the Python writer produces none of
these.

`FlatBuffer` is just enough of a bounds-checked flatbuffer reader to look at a
message's header (the Python side's counterpart of ``Bridge.Arrow.FlatBuffer.Reader``).

>>> fb = FlatBuffer(b"\\x08\\x00\\x00\\x00")
>>> fb.root()
8
>>> fb.unpack("<I", 2)
Traceback (most recent call last):
...
beambridge.errors.FormatError: bad_arrow_stream: message metadata offset 2 out of range
"""

from __future__ import annotations

import struct
from typing import Any

from ...errors import FormatError

__all__ = ["FlatBuffer", "bad_stream", "check_message"]

# Message header types of Message.fbs (the `MessageHeader` union).
_SCHEMA, _DICTIONARY_BATCH, _RECORD_BATCH = 1, 2, 3
_BIG_ENDIAN = 1


def bad_stream(field: str, value: Any, message: str) -> FormatError:
    """The `beambridge.errors.FormatError` ``bad_arrow_stream`` of a malformed stream;
    ``field`` names the part."""
    return FormatError("bad_arrow_stream", field, value, None, f"bad_arrow_stream: {message}")


class FlatBuffer:
    """A bounds-checked reader of one flatbuffer (a message's metadata): every read
    outside it is `bad_stream` ``metadata``."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def unpack(self, fmt: str, pos: int) -> int:
        """The scalar of ``struct`` format ``fmt`` at ``pos``."""
        size = struct.calcsize(fmt)
        if pos < 0 or pos + size > len(self.data):
            raise bad_stream("metadata", pos, f"message metadata offset {pos} out of range")
        value: int = struct.unpack_from(fmt, self.data, pos)[0]
        return value

    def root(self) -> int:
        """The position of the root table."""
        return self.unpack("<I", 0)

    def field(self, table: int, index: int) -> int | None:
        """Position of field ``index`` of the table at ``table``, None when absent."""
        vtable = table - self.unpack("<i", table)
        slot = 4 + 2 * index
        if slot + 2 > self.unpack("<H", vtable):
            return None
        offset = self.unpack("<H", vtable + slot)
        return table + offset if offset else None

    def table(self, table: int, index: int) -> int | None:
        """The table an offset field points to, None when absent."""
        pos = self.field(table, index)
        return None if pos is None else pos + self.unpack("<I", pos)

    def scalar(self, table: int, index: int, fmt: str, default: int = 0) -> int:
        """Field ``index`` of the table at ``table`` as a scalar, ``default`` when
        absent."""
        pos = self.field(table, index)
        return default if pos is None else self.unpack(fmt, pos)


def check_message(metadata: bytes, index: int) -> None:
    """Refuse what pyarrow would transform before it can be validated (see the module
    docstring) in message ``index`` of a stream, whose flatbuffer is ``metadata``:
    big-endian schemas, body compression, dictionary deltas; and a stream that does not
    start with a schema."""
    fb = FlatBuffer(metadata)
    message = fb.root()
    kind = fb.scalar(message, 1, "<B")
    header = fb.table(message, 2)
    if index == 0 and kind != _SCHEMA:
        raise bad_stream("message", kind, "the stream does not start with a schema message")
    if header is None:
        return  # pyarrow refuses a message without a header
    if kind == _SCHEMA:
        if fb.scalar(header, 0, "<h") == _BIG_ENDIAN:
            raise bad_stream(
                "endianness", "big", "a big-endian stream would be byte-swapped (a copy)"
            )
    elif kind in (_RECORD_BATCH, _DICTIONARY_BATCH):
        batch: int | None = header
        if kind == _DICTIONARY_BATCH:
            if fb.scalar(header, 2, "<B"):
                raise bad_stream("dictionary", "delta", "dictionary deltas are not read")
            batch = fb.table(header, 1)
        if batch is not None and fb.field(batch, 3) is not None:
            raise bad_stream(
                "compression",
                "body",
                f"message {index} has a compressed body; Arrow body compression is not "
                "read in place (compress the frame, or write the stream uncompressed)",
            )
