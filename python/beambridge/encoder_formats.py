"""Typed values of a result (protocol/SPEC.md §9, §10): binaries, tensors, tables and
custom types, each inline or in a slice.

`FormatEncoder` is the part of `beambridge.encoder.ResultEncoder` that knows the forms
of SPEC §10's typed values: ``bytes``/``bytearray``/``memoryview`` as binaries (a view of
an argument echoed as its BEAM slice), ``ndarray``, `Bundle` and `COO` as tensors,
``pyarrow.Table``/``RecordBatch``/``pandas.DataFrame`` as Arrow streams, values of a
registered class as custom payloads. Each payload of at least ``threshold`` bytes goes
into a slice of ``slices`` (`beambridge.result_slices.ResultSlices`) and the term holds
``{:"$bb_slice", kind, index}``; else, or when no slice can be had, it goes inline.

>>> from beambridge.etf import decode, encode_parts
>>> decode(b"".join(encode_parts(memoryview(b"ab"), FormatEncoder())))
b'ab'
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import serializers
from .errors import ArenaError, BridgeError
from .etf import Atom, Encoder, encode_binary, encode_int
from .etf import encode as etf_encode
from .formats import tensor as tensor_format
from .header import Format
from .kept import Kept
from .pid import Pid
from .result_slices import Fill, ResultSlices
from .stats import RESULTS, note
from .terms import (
    DEFAULT_THRESHOLD,
    KIND_ARROW,
    KIND_BINARY,
    KIND_CUSTOM,
    KIND_SCHEMA_LIST,
    KIND_SPARSE_COO,
    KIND_TENSOR,
    KIND_TENSOR_BUNDLE,
    TAG_ARROW,
    TAG_CHUNKED,
    TAG_CUSTOM,
    TAG_PID,
    TAG_PIECES,
    TAG_SCHEMA,
    TAG_SCHEMA_LIST,
    TAG_SLICE,
    TAG_SPARSE_COO,
    TAG_TENSOR,
    TAG_TENSOR_BUNDLE,
)

__all__ = ["PIECES_MIN", "FormatEncoder", "Pieces"]

#: Encodes descriptors and names: plain ETF, never a slice handle.
_PLAIN = Encoder()
#: Warnings about failing serializers: at most one per type name per second.
_serializer_warned: dict[str, float] = {}
_serializer_log = logging.getLogger("beambridge.serializers")


#: The ETF of ``{:"$bb_slice", kind,`` by kind (a handle is that, then its index).
_HANDLE_HEADS: dict[Atom, bytes] = {}


#: A result list of this many typed-schema values or more goes as a stream of pieces
#: when the caller takes them (SPEC §8.6 "Pieces"), as the BEAM sends such lists.
PIECES_MIN = 131_072


@dataclasses.dataclass(frozen=True)
class Pieces:
    """A long list of typed-schema values of a result, to go as pieces (SPEC §8.6)."""

    values: list[Any]


class FormatEncoder(Encoder):
    """Encodes SPEC §10's typed values, each payload of at least ``threshold`` bytes into a
    slice of ``slices`` (None: everything inline)."""

    def __init__(
        self, slices: ResultSlices | None = None, threshold: int = DEFAULT_THRESHOLD
    ) -> None:
        self.slices = slices
        self.threshold = threshold
        #: Takes a binary that no slice and no control frame can carry, to be sent as
        #: a stream of chunks (SPEC §8.6); returns its stream id. None: such a
        #: binary is an `ArenaError`.
        self.chunked: Callable[[memoryview], int] | None = None
        #: Takes a list of `PIECES_MIN` typed-schema values or more, to be sent as a
        #: stream of pieces (SPEC §8.6); returns its stream id. None: such a list goes
        #: as one SSZ list.
        self.pieces: Callable[[Pieces], int] | None = None
        #: The index in the whole list of the first value of the piece being written.
        self.list_first = 0
        #: The size of the last SSZ list written (a piece's, to size the next).
        self.list_bytes = 0
        #: Keeps an object for the call's session and returns its ref term (SPEC
        #: §8.9); None outside a session (`beambridge.keep` is then refused).
        self.keep: Callable[[Any], Any] | None = None

    # ---- slices ------------------------------------------------------------------------

    def _placed(
        self,
        kind: Atom,
        fill: Fill,
        parts: list[Any],
        *,
        nbytes: int | None = None,
        what: str,
        **frame: Any,
    ) -> bool:
        """Write a payload (``fill``, of ``nbytes``) into a slice and append its handle
        (True), or leave it to be sent inline (False): below the threshold, no slices,
        or no slice to be had (counted and logged by `ResultSlices.place`)."""
        size = fill.nbytes if isinstance(fill, memoryview) else nbytes
        slices = self.slices
        if slices is None or size is None or size < self.threshold:
            return False
        index = slices.place(kind, fill, nbytes=size, what=what, **frame)
        if index is None:
            return False
        self._handle(kind, index, parts)
        return True

    def _handle(self, kind: Atom, index: int, parts: list[Any]) -> None:
        """``{:"$bb_slice", kind, index}``."""
        head = _HANDLE_HEADS.get(kind)
        if head is None:
            pieces: list[Any] = [b"h\x03"]
            self.encode_into(TAG_SLICE, pieces)
            self.encode_into(kind, pieces)
            head = _HANDLE_HEADS[kind] = b"".join(pieces)
        parts.append(head)
        encode_int(index, parts)

    # ---- typed schemas -----------------------------------------------------------------

    def schema_list(self, values: list[Any], parts: list[Any]) -> bool:
        """A list whose values are all of one schema class as one SSZ list (True), in a
        slice of kind ``schema_list`` or ``{:"$bb_schema_list", name, version, data}``;
        False when they are not all of one class."""
        cls = type(values[0])
        if any(type(v) is not cls for v in values):
            return False
        if self.pieces is not None and len(values) >= PIECES_MIN:
            parts.append(b"h\x03")
            for term in (TAG_PIECES, self.pieces(Pieces(values)), len(values)):
                self.encode_into(term, parts)
            return True
        from .formats.ssz import frame_fields
        from .ssz_batch import encode_list

        declared = cls.__bb_schema__
        name, version = declared.name.encode(), declared.version.encode()
        data = encode_list(declared.type, values, self.list_first)
        self.list_bytes = len(data)
        what = f"{len(values)} {declared.name}"
        metadata, schema_id, version_code = frame_fields(name, version)
        placed = self._overflows(
            lambda: self._placed(
                KIND_SCHEMA_LIST,
                memoryview(data),
                parts,
                what=f"a {len(data)}-byte list of {what}",
                metadata=metadata,
                format=Format.SSZ,
                schema_id=schema_id,
                schema_version=version_code,
            )
        )
        if placed:
            note(RESULTS, "schema", "slice", len(data), what)
            return True
        parts.append(b"h\x04")
        self.encode_into(TAG_SCHEMA_LIST, parts)
        encode_binary(name, parts)
        encode_binary(version, parts)
        if placed is None:
            self._chunked_payload(memoryview(data), "schema", parts)
        else:
            encode_binary(data, parts)
            note(RESULTS, "schema", "inline", len(data), what)
        return True

    # ---- custom types ------------------------------------------------------------------

    def custom(
        self, v: Any, serializer: serializers.Serializer, parts: list[Any], depth: int
    ) -> None:
        """A value of a registered class: ``{:"$bb_custom", name, version, data}``, or a
        ``custom`` slice at or above the threshold (custom.md). A serializer that raises or
        returns no bytes-like object: the value's standard form, and a warning."""
        try:
            data = serializers.encode_value(serializer, v)
        except Exception as exc:
            self._standard_form(v, serializer, exc, parts, depth)
            return
        in_slice = self._placed(
            KIND_CUSTOM,
            data,
            parts,
            what=f"a {data.nbytes}-byte {serializer.name}",
            metadata=etf_encode((serializer.name_bytes, serializer.version)),
            format=Format.CUSTOM,
            schema_id=serializer.schema_id,
            schema_version=serializer.version,
        )
        if not in_slice:
            parts.append(b"h\x04")
            self.encode_into(TAG_CUSTOM, parts)
            encode_binary(serializer.name_bytes, parts)
            encode_int(serializer.version, parts)
            encode_binary(data, parts)
        where = "slice" if in_slice else "inline"
        what = f"{serializer.name} v{serializer.version}, {where}"
        note(RESULTS, "custom", "registered", data.nbytes, what)

    def _standard_form(
        self,
        v: Any,
        serializer: serializers.Serializer,
        error: Exception,
        parts: list[Any],
        depth: int,
    ) -> None:
        """custom.md "Writing": the dict of a dataclass's fields, the plain value of a
        subclass of a §10 type, or ``vars(obj)``; else the usual ``TypeError``."""
        kind = type(v)
        described = f"{kind.__module__}.{kind.__qualname__}"
        standard: Any
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            standard = {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}
        elif isinstance(v, (int, float, str, bytes, bytearray, memoryview, list, tuple, dict)):
            standard = None  # Encoder.other turns it into the plain value
        else:
            try:
                standard = dict(vars(v))
            except TypeError:
                raise TypeError(
                    f"cannot send {kind} to Elixir: its serializer {serializer.name!r} failed "
                    f"({type(error).__name__}: {error}) and it has neither dataclass fields "
                    "nor a __dict__ to send instead"
                ) from error
        now = time.monotonic()
        if now - _serializer_warned.get(serializer.name, -2.0) >= 1.0:  # at most one a second
            _serializer_warned[serializer.name] = now
            _serializer_log.warning(
                "serializer %r for %s failed (%s: %s); sending the value in its standard "
                "form (%s) instead",
                serializer.name,
                described,
                type(error).__name__,
                error,
                "a dict" if standard is not None else "a plain value",
            )
        note(RESULTS, "standard", "encode_failed", 0, described)
        if standard is None:
            super().other(v, parts, depth)
        else:
            self.encode_into(standard, parts, self.deeper(depth))

    # ---- binaries, tensors, tables -----------------------------------------------------

    def binary(self, v: Any, parts: list[Any]) -> None:
        if type(v) is bytes and (len(v) < self.threshold or self.slices is None):
            encode_binary(v, parts)
            return
        view = memoryview(v)
        if view.nbytes < self.threshold or self.slices is None:
            encode_binary(view, parts)
            return
        if type(v) is not bytes:
            index = self.slices.echo(view)  # a view of an argument: no copy
            if index is not None:
                self._handle(KIND_BINARY, index, parts)
                return
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        try:
            placed = self._placed(KIND_BINARY, flat, parts, what=f"{flat.nbytes} bytes")
        except ArenaError:
            if self.chunked is None:
                raise
            self._chunked_payload(flat, "raw", parts)
            return
        if not placed:
            encode_binary(flat, parts)

    def _chunked_payload(self, data: memoryview, form: str, parts: list[Any]) -> None:
        """``{:"$bb_chunked", :binary, sid, size}`` for bytes that go as a stream of
        chunks (SPEC §8.6), counted under ``form``."""
        assert self.chunked is not None
        flat = data.cast("B") if data.format != "B" or data.ndim != 1 else data
        sid = self.chunked(flat)
        note(RESULTS, form, "chunked", flat.nbytes, f"{flat.nbytes} bytes")
        parts.append(b"h\x04")
        for term in (TAG_CHUNKED, KIND_BINARY, sid, flat.nbytes):
            self.encode_into(term, parts)

    def _overflows(self, place: Callable[[], bool]) -> bool | None:
        """Runs ``place`` (a slice for a value): True when it took one, False when the
        value goes inline, None when it can go neither way and will go in chunks."""
        try:
            return place()
        except ArenaError:
            if self.chunked is None:
                raise
            return None

    def other(self, v: Any, parts: list[Any], depth: int) -> None:
        if type(v) is Pid:  # a pid the BEAM gave: back as it came (SPEC §9)
            self.encode_into((TAG_PID, v.etf, v.mac), parts, depth)
            return
        if type(v) is Kept:  # beambridge.keep: a ref of the call's session (SPEC §8.9)
            if self.keep is None:
                raise BridgeError(
                    "no_session",
                    message="no_session: beambridge.keep works in a call of a session "
                    "(Bridge.session/3): outside one nothing could give the object back",
                )
            self.encode_into(self.keep(v.obj), parts, depth)
            return
        declared = getattr(type(v), "__bb_schema__", None)
        if declared is not None:  # a typed schema: {:"$bb_schema", name, version, ssz}
            from .ssz import to_ssz

            data = to_ssz(v)
            parts.append(b"h\x04")
            self.encode_into(TAG_SCHEMA, parts)
            encode_binary(declared.name.encode(), parts)
            encode_binary(declared.version.encode(), parts)
            encode_binary(data, parts)
            return
        if serializers.has_serializers():
            serializer = serializers.lookup(type(v))
            if serializer is not None:
                self.custom(v, serializer, parts, depth)
                return
        if isinstance(v, np.ndarray):
            self.tensor(v, parts)
        elif _is_table(v):
            self.arrow(v, parts)
        elif isinstance(v, tensor_format.Bundle):
            self.tensor_bundle(v, parts)
        elif isinstance(v, tensor_format.COO):
            self.sparse_coo(v, parts)
        elif isinstance(v, np.generic) and v.dtype.kind in "biuf":
            # NumPy scalars (arr.sum(), arr[0]) are the same number as a Python one
            self.encode_into(v.item(), parts, depth)
        else:
            super().other(v, parts, depth)

    def _in_slice(self, value: Any, kind: Atom, parts: list[Any]) -> bool:
        """Write ``value`` (ndarray, Bundle, COO) as one tensor frame and append its
        handle when its payload reaches the threshold and a slice can be had."""
        if self.slices is None:
            return False
        plan = tensor_format.plan(value)
        if plan.nbytes < self.threshold or plan.nbytes == 0:
            return False
        fill: Callable[[memoryview], None] | memoryview = plan.fill
        first = plan.parts[0]
        if len(plan.parts) == 1 and first[0].flags.c_contiguous and first[1] == "C":
            # already the bytes to send: copied in (and hashed) in one pass
            fill = tensor_format.raw_bytes(first[0], "C").data
        return self._placed(
            kind,
            fill,
            parts,
            nbytes=plan.nbytes,
            what=f"a {plan.nbytes}-byte {kind}",
            metadata=plan.metadata,
            format=Format.TENSOR,
            schema_id=plan.schema_id,
            schema_version=plan.schema_version,
        )

    def tensor(self, arr: np.ndarray[Any, Any], parts: list[Any]) -> None:
        """An ndarray: dtype, byte order and C/Fortran order as they are
        (protocol/formats/tensor.md), ``{:"$bb_tensor", descriptor, data}`` or a slice."""
        desc = tensor_format.descriptor(arr)  # refuses what cannot go, either way
        placed = self._overflows(lambda: self._in_slice(arr, KIND_TENSOR, parts))
        if placed:
            return
        parts.append(b"h\x03")
        self.encode_into(TAG_TENSOR, parts)
        _PLAIN.encode_into(desc, parts)  # never slice handles inside a descriptor
        data = tensor_format.raw_bytes(arr, desc[b"order"].decode()).data
        if placed is None:
            self._chunked_payload(data, "tensor", parts)
        else:
            encode_binary(data, parts)

    @staticmethod
    def _entries(items: list[tuple[str, np.ndarray[Any, Any]]], parts: list[Any]) -> None:
        """``[{name, descriptor, data}]``, every part inline."""
        entries = tensor_format.inline_entries(items)
        if entries:
            parts.append(b"l" + len(entries).to_bytes(4, "big"))
            for name, desc, data in entries:
                parts.append(b"h\x03")
                encode_binary(name, parts)
                _PLAIN.encode_into(desc, parts)
                encode_binary(data, parts)
        parts.append(b"j")

    def tensor_bundle(self, bundle: tensor_format.Bundle, parts: list[Any]) -> None:
        """A `Bundle`: ``{:"$bb_tensor_bundle", [{name, descriptor, data}]}`` or one
        slice of schema 2."""
        if self._in_slice(bundle, KIND_TENSOR_BUNDLE, parts):
            return
        parts.append(b"h\x02")
        self.encode_into(TAG_TENSOR_BUNDLE, parts)
        self._entries(list(bundle.items()), parts)

    def sparse_coo(self, coo: tensor_format.COO, parts: list[Any]) -> None:
        """A `COO`: ``{:"$bb_sparse_coo", shape, [indices, values]}`` or one slice of
        schema 3."""
        if self._in_slice(coo, KIND_SPARSE_COO, parts):
            return
        parts.append(b"h\x03")
        self.encode_into(TAG_SPARSE_COO, parts)
        _PLAIN.encode_into([int(d) for d in coo.shape], parts)
        self._entries([("indices", coo.indices), ("values", coo.values)], parts)

    def arrow(self, data: Any, parts: list[Any]) -> None:
        """A ``pyarrow.Table``, ``RecordBatch`` or ``pandas.DataFrame`` (index dropped):
        one Arrow IPC stream, in a slice of kind ``arrow`` when it reaches the threshold
        and a slice can be had, else ``{:"$bb_arrow", stream}``."""
        import pyarrow as pa

        from .formats import arrow as arrow_format

        plan = arrow_format.plan_stream(data, None, False)
        arrow_format.check_elixir_readable(plan.schema)
        placed = self._overflows(
            lambda: self._placed(
                KIND_ARROW,
                lambda area: arrow_format.write_stream_into(area, plan),
                parts,
                nbytes=plan.size,
                what=f"a {plan.size}-byte Arrow stream",
                metadata=plan.metadata,
                format=Format.ARROW_STREAM,
            )
        )
        if placed:
            return
        sink = pa.BufferOutputStream()
        arrow_format.write_stream(sink, plan.data, plan.schema)
        parts.append(b"h\x02")
        self.encode_into(TAG_ARROW, parts)
        stream = memoryview(sink.getvalue())
        if placed is None:
            self._chunked_payload(stream, "arrow", parts)
        else:
            encode_binary(stream, parts)


def _is_table(v: Any) -> bool:
    """A ``pyarrow.Table``/``RecordBatch`` or ``pandas.DataFrame``, without importing
    either library: a value of theirs means they are imported already."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(v, (pa.Table, pa.RecordBatch)):
        return True
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(v, pd.DataFrame)
