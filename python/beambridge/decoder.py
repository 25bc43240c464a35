"""Arguments: data terms (protocol/SPEC.md §9, §10) to Python values.

`Decoder` turns a call's argument list into the values a handler gets. The tagged terms
``{:"$bb_buffer", b}``, ``{:"$bb_tensor", descriptor, data}``, ``{:"$bb_tensor_bundle",
entries}``, ``{:"$bb_sparse_coo", shape, entries}``, ``{:"$bb_arrow", stream}``,
``{:"$bb_packed", dtype, data}``, ``{:"$bb_records", layout, stream}`` and
``{:"$bb_custom", name, version, data}`` become a read-only ``memoryview``, a read-only
``numpy.ndarray``, a `beambridge.formats.tensor.Bundle` or ``COO``, a validated
``pyarrow.Table``, the plain ``list``/``dict`` ETF would give, or a registered custom
type. A handle ``{:"$bb_slice", kind, index}`` (protocol/SPEC.md §9) stands for the
same value read from entry ``index`` of the call's ``slices``, a slice of one of the
BEAM's arenas mapped read-only: the type never depends on the size (invariant 7).

Leases (protocol/SPEC.md §4) are kept in a `beambridge.leases.LeaseBook`: a value copied
out of its slice (kinds ``binary``, ``packed``, ``records``, ``custom``) ends its lease
at once, a ``memoryview``, array or table read in place keeps it for exactly as long as
it (or anything made from it) lives, and a slice no handle names is let go when the
arguments are decoded.

>>> import numpy as np
>>> view, arr = Decoder().decode([(TAG_BUFFER, b"ab"),
...     (TAG_TENSOR, {b"dtype": b"<i2", b"shape": [2], b"order": b"C"}, b"\\x01\\x00\\x02\\x00")])
>>> bytes(view), view.readonly, arr.tolist(), arr.flags.writeable
(b'ab', True, [1, 2], False)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from . import registry, serializers
from .codecs import decompress
from .control import slice_refs
from .errors import BridgeError, EtfError, FormatError, HeaderError, LeaseError
from .etf import Atom, decode
from .formats import packed as packed_format
from .formats import records as records_format
from .formats import tensor as tensor_format
from .frame import Frame
from .header import FLAG_PAYLOAD_CHECKSUM, Codec, Header, with_fields
from .leases import Key, LeaseBook, PeerObjects
from .pid import Pid
from .stats import ARGUMENTS, note
from .terms import (
    COPIED_KINDS,
    KIND_ARROW,
    KIND_BINARY,
    KIND_BUFFER,
    KIND_CUSTOM,
    KIND_FORMATS,
    KIND_PACKED,
    KIND_RECORDS,
    KIND_SCHEMA_LIST,
    KIND_SCHEMAS,
    KINDS,
    LAYOUT_COLUMNS,
    LAYOUT_ROWS,
    TAG_ARROW,
    TAG_BUFFER,
    TAG_CHUNKED,
    TAG_CUSTOM,
    TAG_PACKED,
    TAG_PID,
    TAG_PIECES,
    TAG_RECORDS,
    TAG_REF,
    TAG_SCHEMA,
    TAG_SCHEMA_LIST,
    TAG_SLICE,
    TAG_SPARSE_COO,
    TAG_STREAM,
    TAG_TENSOR,
    TAG_TENSOR_BUNDLE,
)

__all__ = ["MAX_CHUNKED", "Decoder", "custom_parts"]

#: The largest value that may come in chunks (§8.6): 1 TiB, the largest object size.
MAX_CHUNKED = 1 << 40
#: Inline terms whose payload (their last element) may come in chunks (§8.6).
_CHUNKABLE = frozenset(Atom(tag) for tag in registry.CHUNKABLE_TAGS)

_Ref = tuple[int, int, int, int]


def _bad(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


def _short(term: Any) -> str:
    text = repr(term)
    return text if len(text) <= 200 else text[:200] + "..."


class Decoder:
    """Turns the data terms of a call's arguments into Python values (SPEC §9).

    ``peers`` are the BEAM's arenas this process has mapped and ``leases`` the book of
    the leases held on their slices (both fresh when not given: inline terms only).
    ``verify`` checks each slice payload against its checksum.

    Errors are `beambridge.errors.BridgeError` subclasses whose ``reason`` the worker
    sends back in a ``{:bad_call, reason, message}``: ``bad_term`` for a malformed term
    or handle (an index out of range included), a slice's reason
    (``slice_out_of_bounds``, ``stale_generation``, a frame reason of SPEC §6), the
    reason an object named by a slice could not be opened with (``peer_open_failed``...),
    ``bad_metadata`` for a custom frame whose metadata disagrees with its header, or a
    `beambridge.serializers.SerializerError` (``unknown_type``, ``unsupported_version``,
    ``serializer_failed``).
    """

    def __init__(
        self,
        peers: PeerObjects | None = None,
        leases: LeaseBook | None = None,
        *,
        verify: bool = True,
    ) -> None:
        self.peers = peers if peers is not None else PeerObjects()
        self.leases = leases if leases is not None else LeaseBook()
        self.verify = verify
        #: Makes the iterator of an argument stream ``{:"$bb_stream", sid}`` (§8.6); None:
        #: such a term is refused.
        self.streams: Callable[[int], Any] | None = None
        #: ``{:"$bb_ref", session, ref}`` -> the kept object (`CallPath`, §8.9).
        self.refs: Callable[[Any, Any], Any] | None = None
        #: Told the header and the provenance block of every slice frame read
        #: (SPEC §5.4); None: not told.
        self.on_frame: Callable[[Header, bytes], None] | None = None

    def decode(self, value: Any, slices: Any = None) -> Any:
        """``value`` with every tagged term replaced (containers rebuilt only if
        needed), handles read from ``slices`` (a call's list of ``{object_id, offset,
        length, generation}``). Every well-formed entry of ``slices`` is held until the
        values read from it are gone, so one that no handle names is let go here."""
        refs, problem = slice_refs([] if slices is None else slices)
        keys: set[Key] = {(o, off, g) for o, off, _, g in refs}
        for key in keys:
            self.leases.hold(key)
        try:
            if problem is not None:
                raise problem
            return self._convert(value, refs)
        finally:
            for key in keys:
                self.leases.let_go(key)

    def _convert(self, value: Any, refs: list[_Ref]) -> Any:
        t = type(value)
        if t is tuple:
            if value and type(value[0]) is Atom and value[0].startswith("$bb_"):
                return self._tagged(value, refs)
            return tuple([self._convert(v, refs) for v in value])
        if t is list:
            return [self._convert(v, refs) for v in value]
        if t is dict:
            return {self._convert(k, refs): self._convert(v, refs) for k, v in value.items()}
        if t is Atom and value.startswith("$bb_"):
            # reserved for the tagged terms (SPEC §9): never user data
            raise _bad("atom", value, f"the atom {value!r} is reserved for tagged terms")
        return value

    def _tagged(self, term: tuple[Any, ...], refs: list[_Ref]) -> Any:
        tag, n = term[0], len(term)
        last = term[-1]
        if (
            tag in _CHUNKABLE
            and type(last) is tuple
            and len(last) == 4
            and last[0] == TAG_CHUNKED
            and last[1] == KIND_BINARY
            and self.streams is not None
        ):
            # the payload came as a stream of chunks (§8.6): the term as if it had not
            term = (*term[:-1], self._chunked(*last[1:]))
        if tag == TAG_SLICE and n == 3:
            return self._slice(term[1], term[2], refs)
        if tag == TAG_BUFFER and n == 2 and type(term[1]) is bytes:
            return memoryview(term[1])
        if tag == TAG_TENSOR and n == 3 and type(term[2]) is bytes:
            return tensor_format.from_inline(term[1], term[2])
        if tag == TAG_TENSOR_BUNDLE and n == 2:
            return tensor_format.Bundle(tensor_format.from_inline_entries(term[1]))
        if tag == TAG_SPARSE_COO and n == 3:
            shape = tuple(tensor_format.check_dims(term[1], "shape"))
            parts = tensor_format.from_inline_entries(term[2], ("indices", "values"))
            return tensor_format.coo_from_parts(parts["indices"], parts["values"], shape)
        if tag == TAG_ARROW and n == 2 and type(term[1]) is bytes:
            from .formats.arrow import read_arrow_stream

            try:
                return read_arrow_stream(term[1])
            except FormatError as err:
                raise _bad("arrow", None, f'{{:"$bb_arrow", stream}}: {err}') from None
        if tag == TAG_PACKED and n == 3:
            values = packed_format.unpack(term[1], term[2])
            what = f"{len(values)} elements {term[1].decode()}"
            note(ARGUMENTS, "packed", "inline", len(term[2]), what)
            return values
        if tag == TAG_RECORDS and n == 3:
            layout = _layout(term[1])
            if type(term[2]) is not bytes:
                raise _bad("stream", _short(term[2]), "a records stream is a binary")
            value = records_format.records_from_stream(term[2], layout)
            note(ARGUMENTS, "records", "inline", len(term[2]), layout)
            return value
        if tag == TAG_CUSTOM and n == 4:
            name, version = custom_parts(term[1], term[2])
            data = term[3]
            if type(data) is not bytes:
                raise _bad("data", _short(data), "custom data is a binary")
            value = serializers.decode_payload(name, version, data)
            note(ARGUMENTS, "custom", "inline", len(data), name.decode())
            return value
        if tag == TAG_SCHEMA and n == 4:
            from .versions import read_value

            return read_value(term[1], term[2], term[3])
        if tag == TAG_SCHEMA_LIST and n == 4:
            from .versions import read_list

            values = read_list(term[1], term[2], term[3])
            what = f"{len(values)} {term[1].decode('utf-8', 'replace')}"
            note(ARGUMENTS, "schema", "inline", len(term[3]), what)
            return values
        if tag == TAG_STREAM and n == 2 and type(term[1]) is int and self.streams is not None:
            return self.streams(term[1])
        if tag == TAG_CHUNKED and n == 4 and self.streams is not None:
            return self._chunked(term[1], term[2], term[3])
        if tag == TAG_PIECES and n == 3 and self.streams is not None:
            return self._pieces(term[1], term[2])
        if tag == TAG_PID and n == 3 and type(term[1]) is bytes and type(term[2]) is bytes:
            return Pid(term[1], term[2])
        if tag == TAG_REF and n == 3:
            if self.refs is None:
                raise BridgeError(
                    "no_session", message="no_session: a kept object's ref in a call of no session"
                )
            return self.refs(term[1], term[2])
        raise _bad("tag", tag, f"malformed or unknown tagged term {_short(term)} (§9)")

    def _chunked(self, kind: Any, sid: Any, size: Any) -> Any:
        """A binary that came as the chunks of argument stream ``sid`` (§8.6), read
        whole now: ``bytes``, or a read-only ``memoryview`` for kind ``buffer``."""
        if kind not in (KIND_BINARY, KIND_BUFFER) or type(sid) is not int:
            raise _bad("chunked", kind, f"a chunked value of kind binary or buffer, got {kind!r}")
        if type(size) is not int or not 0 <= size <= MAX_CHUNKED:
            raise _bad("size", size, f"a chunked value is 0 to {MAX_CHUNKED} bytes")
        assert self.streams is not None
        whole = bytearray(size)
        at = 0
        for chunk in self.streams(sid):
            if type(chunk) is not bytes or at + len(chunk) > size:
                what = f"{len(chunk)} bytes" if type(chunk) is bytes else type(chunk).__name__
                raise _bad("chunk", None, f"chunk of {what} at byte {at} of a {size}-byte value")
            whole[at : at + len(chunk)] = chunk
            at += len(chunk)
        if at != size:
            raise _bad("size", at, f"the chunks of a {size}-byte value add up to {at} bytes")
        return memoryview(whole).toreadonly() if kind == KIND_BUFFER else bytes(whole)

    def _pieces(self, sid: Any, count: Any) -> list[Any]:
        """A list that came as the lists that are the elements of argument stream
        ``sid`` (§8.6, pieces), read whole now: each piece is decoded as it arrives,
        while the BEAM writes the next."""
        if type(sid) is not int or type(count) is not int or count < 0:
            raise _bad("pieces", (sid, count), 'pieces are {:"$bb_pieces", sid, count}')
        assert self.streams is not None
        values: list[Any] = []
        for piece in self.streams(sid):
            if type(piece) is not list or len(values) + len(piece) > count:
                what = f"{len(piece)} values" if type(piece) is list else type(piece).__name__
                raise _bad("piece", None, f"a piece of {what} after {len(values)} of {count}")
            values.extend(piece)
        if len(values) != count:
            raise _bad("count", len(values), f"the pieces of {count} values hold {len(values)}")
        return values

    def _slice(self, kind: Any, index: Any, refs: list[_Ref]) -> Any:
        if type(kind) is not Atom or kind not in KIND_FORMATS:
            raise _bad("kind", kind, f"slice handle kind {kind!r} is not one of {', '.join(KINDS)}")
        if type(index) is not int or not 0 <= index < len(refs):
            raise _bad(
                "index",
                index,
                f"slice handle index {index!r} is outside the call's {len(refs)} slices",
            )
        object_id, offset, length, generation = refs[index]
        if kind == KIND_BINARY:  # copied out at once: no view, no lease beyond the call's
            header, data = self.leases.copy_frame(
                self.peers, object_id, offset, length, generation, verify=self.verify
            )
            if header.codec != Codec.NONE:
                data = decompress(header.codec, data, header.decoded_length)
                header = _as_decoded(header)
            _check(kind, header, f"slice {index}")
            self._tell(object_id, offset, length, header)
            return data
        frame = self.leases.read_frame(
            self.peers, object_id, offset, length, generation, verify=self.verify
        )
        self._tell(object_id, offset, length, frame.header)
        if frame.header.codec != Codec.NONE:
            frame = _decoded(frame)
        done = False
        try:
            value = _read(kind, frame, f"slice {index}")
            done = True
            return value
        finally:
            if kind in COPIED_KINDS or not done:
                with contextlib.suppress(LeaseError):
                    frame.release()
            # else the Frame goes with this function: the payload view (and what is
            # made from it) alone keeps the payload's array alive, and with it the lease

    def _tell(self, object_id: int, offset: int, length: int, header: Header) -> None:
        if self.on_frame is not None:
            block = self.peers.get(object_id).provenance_block(offset, length, header)
            self.on_frame(header, block)


def _as_decoded(header: Header) -> Header:
    """``header`` as it reads once its payload is decompressed."""
    return with_fields(
        header,
        codec=Codec.NONE,
        payload_length=header.decoded_length,
        flags=header.flags & ~FLAG_PAYLOAD_CHECKSUM,  # the stored payload's, checked
    )


def _decoded(frame: Frame) -> Frame:
    """A compressed frame's payload, decompressed into private memory (SPEC §5.1
    ``codec``): the shared slice is let go at once, the frame read is that copy."""
    header = frame.header
    try:
        data = decompress(header.codec, frame.payload, header.decoded_length)
    finally:
        with contextlib.suppress(LeaseError):
            frame.release()
    return Frame.from_decoded(_as_decoded(header), frame.metadata, data)


def _layout(layout: Any) -> str:
    if type(layout) is not Atom or layout not in (LAYOUT_ROWS, LAYOUT_COLUMNS):
        raise _bad("layout", layout, f"records layout {_short(layout)} is not rows or columns")
    return str(layout)


def _check(kind: Atom, header: Header, where: str) -> None:
    """A ``kind`` handle's frame holds what the kind reads: uncompressed, its format."""
    if header.codec != Codec.NONE:
        raise HeaderError(
            "unknown_codec",
            "codec",
            int(header.codec),
            int(Codec.NONE),
            f"unknown_codec: {where} holds a {Codec(header.codec).name} payload; this "
            "worker reads uncompressed argument slices only",
        )
    want = KIND_FORMATS[kind]
    if header.format != want:
        raise _bad(
            "format",
            int(header.format),
            f"a {kind} handle needs a frame of format {want.name}, {where} holds format "
            f"{header.format}",
        )


def _read(kind: Atom, frame: Frame, where: str) -> Any:
    """The value of a ``kind`` handle's frame (checked against the kind first)."""
    header = frame.header
    _check(kind, header, where)
    if kind == KIND_BINARY:
        return bytes(frame.payload)
    if kind == KIND_BUFFER:
        return frame.payload
    if kind == KIND_ARROW:
        from .formats.arrow import read_arrow

        try:
            return read_arrow(frame)  # in place: the lease follows the table
        except FormatError as err:
            raise _bad("arrow", None, f"{where}: {err}") from None
    if kind == KIND_PACKED:
        values = packed_format.read_packed(frame)  # copied out
        note(ARGUMENTS, "packed", "slice", header.payload_length, f"{len(values)} elements")
        return values
    if kind == KIND_RECORDS:
        layout, rows, columns = records_format.parse_records_metadata(frame.metadata)
        value = records_format.records_from_stream(frame.payload, layout, (rows, columns))
        what = f"{layout}, {rows} x {columns}"
        note(ARGUMENTS, "records", "slice", header.payload_length, what)
        return value
    if kind == KIND_CUSTOM:
        name, version = _custom_metadata(frame, where)
        data = bytes(frame.payload)
        frame.release()  # the serializer gets a private copy: the lease ends now
        value = serializers.decode_payload(name, version, data)
        note(ARGUMENTS, "custom", "slice", len(data), name.decode())
        return value
    if kind == KIND_SCHEMA_LIST:
        from .formats.ssz import parse_metadata
        from .versions import read_list

        schema, at = parse_metadata(frame.metadata, header.schema_id, header.schema_version, where)
        values = read_list(schema, at, frame.payload)  # copied out into the values
        what = f"{len(values)} {schema.decode()}"
        note(ARGUMENTS, "schema", "slice", header.payload_length, what)
        return values
    if header.schema_id not in KIND_SCHEMAS[kind]:
        raise _bad(
            "schema_id",
            header.schema_id,
            f"a {kind} handle needs a tensor frame of schema {list(KIND_SCHEMAS[kind])}, "
            f"{where} holds schema {header.schema_id}",
        )
    return tensor_format.read(frame)


def custom_parts(name: Any, version: Any) -> tuple[bytes, int]:
    """A custom payload's type name (1..255 UTF-8 bytes) and version (1..2**32-1), as
    the peer sent them, checked; `EtfError` ``bad_term`` otherwise."""
    ok = type(name) is bytes and 1 <= len(name) <= serializers.MAX_NAME_BYTES
    if ok:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
    if not ok:
        raise _bad(
            "name",
            _short(name),
            f"a custom type name is a binary of 1 to {serializers.MAX_NAME_BYTES} UTF-8 bytes",
        )
    if type(version) is not int or not 1 <= version <= serializers.MAX_VERSION:
        raise _bad(
            "version",
            _short(version),
            f"a custom type version is an integer in 1..{serializers.MAX_VERSION}",
        )
    return name, version


def _custom_metadata(frame: Frame, where: str) -> tuple[bytes, int]:
    """The ``{type_name, version}`` of a custom frame's metadata, checked against the
    header's ``schema_id`` (``xxh3_64(type_name)``) and ``schema_version``
    (custom.md "Forms"); `FormatError` ``bad_metadata`` otherwise."""
    schema_id, schema_version = frame.header.schema_id, frame.header.schema_version
    try:
        term = decode(frame.metadata, max_depth=2)
    except EtfError:
        term = None
    if type(term) is not tuple or len(term) != 2:
        raise FormatError(
            "bad_metadata",
            "metadata",
            _short(term),
            None,
            f"bad_metadata: the custom frame of {where} has metadata {_short(term)}, "
            "not {type_name, version}",
        )
    try:
        name, version = custom_parts(term[0], term[1])
    except EtfError as err:
        raise FormatError(
            "bad_metadata", "metadata", _short(term), None, f"bad_metadata: {where}: {err}"
        ) from None
    if schema_id != serializers.schema_id(name) or schema_version != version:
        raise FormatError(
            "bad_metadata",
            "schema_id",
            (schema_id, schema_version),
            (serializers.schema_id(name), version),
            f"bad_metadata: the custom frame of {where} names type {name.decode()!r} "
            f"version {version} in its metadata, but its header has schema_id {schema_id} "
            f"and schema_version {schema_version}",
        )
    return name, version
