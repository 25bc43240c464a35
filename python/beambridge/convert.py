"""Data terms (protocol/SPEC.md §7.4, §8) to Python values and back.

Arguments: the tagged terms ``{:"$bb_buffer", b}``, ``{:"$bb_tensor", dtype, shape, b}``
and ``{:"$bb_region", kind, name, generation}`` become a read-only ``memoryview``, a
read-only ``numpy.ndarray``, or the same types read in place from a region (`Arguments`).
A region payload read as ``bytes`` is copied and its lease ends at once; a ``memoryview``
or ``ndarray`` keeps the lease for exactly as long as it (or anything made from it)
lives, so the type a handler gets never depends on the size (invariant 7).

Tensors, bundles and COO arrays follow protocol/formats/tensor.md (module
`beambridge.formats.tensor`): any fixed-size dtype, C or Fortran order, byte order kept;
``{:"$bb_tensor", descriptor, data}``, ``{:"$bb_tensor_bundle", entries}`` and
``{:"$bb_sparse_coo", shape, entries}`` besides SPEC §7.4's original 4-tuple.

Tables follow protocol/formats/arrow.md ("On the call path"): ``{:"$bb_arrow", stream}``
inline or a region of kind ``arrow`` (format ``arrow_stream``) both become a fully
validated ``pyarrow.Table`` (in place: its buffers lie in the bytes or the region, and a
region's lease follows the table); a result that is a ``pyarrow.Table``,
``pyarrow.RecordBatch`` or ``pandas.DataFrame`` goes back as an Arrow stream, the same
two ways. pyarrow is imported only when a table is seen.

Results: `ResultEncoder` sends ``bytes``/``bytearray``/``memoryview`` as binaries and
``ndarray`` (``Bundle``, ``COO``) as tensors; at or above the threshold it writes them
into a region of the worker's `ResultRegions` pool and sends a
``{:"$bb_region", kind, name, generation}`` handle instead.

Format selection (SPEC §8.1, `beambridge.formats.records`): under the call's policy
(``auto`` by default, ``etf``, ``packed``, ``arrow``) a result's number lists go packed
and its record lists and column maps as records (Arrow), inline or in a region by size;
arguments in those forms (``{:"$bb_packed", dtype, data}``, ``{:"$bb_records", layout,
stream}``, region kinds ``packed`` and ``records``) become the plain ``list``/``dict``
ETF would give. Values of a class with a registered codec (`beambridge.codecs`) travel
as ``{:"$bb_custom", name, version, data}`` or a ``custom`` region, both ways.
`format_stats` counts every decision.

>>> import numpy as np
>>> args = Arguments(Attachments())
>>> tensor = (TAG_TENSOR, b"<i2", [2], b"\\x01\\x00\\x02\\x00")
>>> view, arr = args.convert([(TAG_BUFFER, b"ab"), tensor])
>>> bytes(view), view.readonly, arr.tolist(), arr.flags.writeable
(b'ab', True, [1, 2], False)
>>> from beambridge.etf import decode, encode_parts
>>> decode(b"".join(encode_parts(np.arange(3, dtype=np.uint8), ResultEncoder())))
(Atom('$bb_tensor'), b'|u1', [3], b'\\x00\\x01\\x02')
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _atomic
from . import codecs as codec_registry
from .control import CB_SIZE, OFF_READER_LEASES
from .errors import BridgeError, EtfError, FormatError, HeaderError, LeaseError, RegionError
from .etf import (
    Atom,
    Encoder,
    _encode_int,
    encode_binary,
)
from .etf import encode as etf_encode
from .formats import records as records_format
from .formats import tensor as tensor_format
from .formats.records import format_stats, reset_format_stats
from .header import Codec, Format, payload_offset_for
from .region import Region

__all__ = [
    "DEFAULT_REGION_LIMIT",
    "DEFAULT_THRESHOLD",
    "POLICIES",
    "TAG_ARROW",
    "TAG_BUFFER",
    "TAG_CUSTOM",
    "TAG_PACKED",
    "TAG_RECORDS",
    "TAG_REGION",
    "TAG_SPARSE_COO",
    "TAG_TENSOR",
    "TAG_TENSOR_BUNDLE",
    "Arguments",
    "Attachments",
    "FormatUnsuitableError",
    "ResultEncoder",
    "ResultRegions",
    "check_dtype",
    "format_stats",
    "make_tensor",
    "reset_format_stats",
]

#: Payloads of at least this many bytes travel in regions (§8; env BEAMBRIDGE_THRESHOLD).
DEFAULT_THRESHOLD = 65536
#: Bytes of result regions a worker keeps (env BEAMBRIDGE_REGION_LIMIT).
DEFAULT_REGION_LIMIT = 1 << 30

TAG_BUFFER = Atom("$bb_buffer")
TAG_TENSOR = Atom("$bb_tensor")
TAG_REGION = Atom("$bb_region")
TAG_TENSOR_BUNDLE = Atom("$bb_tensor_bundle")
TAG_SPARSE_COO = Atom("$bb_sparse_coo")
TAG_ARROW = Atom("$bb_arrow")
TAG_PACKED = Atom("$bb_packed")
TAG_RECORDS = Atom("$bb_records")
TAG_CUSTOM = Atom("$bb_custom")
KIND_BINARY = Atom("binary")
KIND_BUFFER = Atom("buffer")
KIND_TENSOR = Atom("tensor")
KIND_TENSOR_BUNDLE = Atom("tensor_bundle")
KIND_SPARSE_COO = Atom("sparse_coo")
KIND_ARROW = Atom("arrow")
KIND_PACKED = Atom("packed")
KIND_RECORDS = Atom("records")
KIND_CUSTOM = Atom("custom")
LAYOUT_ROWS, LAYOUT_COLUMNS = Atom("rows"), Atom("columns")
#: The frame format each region handle kind reads (§7.4, §8.1, custom.md).
_KIND_FORMATS = {
    KIND_BINARY: Format.RAW,
    KIND_BUFFER: Format.RAW,
    KIND_TENSOR: Format.TENSOR,
    KIND_TENSOR_BUNDLE: Format.TENSOR,
    KIND_SPARSE_COO: Format.TENSOR,
    KIND_ARROW: Format.ARROW_STREAM,
    KIND_PACKED: Format.TENSOR,
    KIND_RECORDS: Format.ARROW_STREAM,
    KIND_CUSTOM: Format.CUSTOM,
}
_KINDS = tuple(_KIND_FORMATS)
#: Kinds whose value is copied out of the region: the lease ends with the conversion.
_COPIED_KINDS = (KIND_BINARY, KIND_PACKED, KIND_RECORDS, KIND_CUSTOM)
#: Result format policies (the ``"format"`` call option, SPEC §7.3, §8.1).
POLICIES = ("auto", "etf", "packed", "arrow")
#: Tensor frame schema (protocol/formats/tensor.md) each tensor-like handle kind reads.
_KIND_SCHEMAS = {
    KIND_TENSOR: (tensor_format.SCHEMA_LEGACY, tensor_format.SCHEMA_TENSOR),
    KIND_TENSOR_BUNDLE: (tensor_format.SCHEMA_BUNDLE,),
    KIND_SPARSE_COO: (tensor_format.SCHEMA_COO,),
}

#: Fixed-size numeric dtypes that cross the bridge: kind letter -> allowed item sizes.
_DTYPE_SIZES = {"i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
_DTYPE_PATTERN = re.compile(r"([<|])([iufc])([0-9]{1,2})")
#: Most dimensions a tensor may have (NumPy 1.x's limit).
MAX_NDIM = 32


def _bad(field: str, value: Any, message: str) -> EtfError:
    return EtfError("bad_term", field, value, None, f"bad_term: {message}")


# ---- tensors ---------------------------------------------------------------------------


def check_dtype(text: Any) -> np.dtype[Any]:
    """The NumPy dtype for a tensor dtype string of §7.4, or `EtfError` ``bad_term``.

    Only fixed-size numeric types: ``<i1`` ... ``<i8``, ``<u1`` ... ``<u8``, ``<f2``,
    ``<f4``, ``<f8``, ``<c8``, ``<c16``, little-endian (``|`` for one-byte types).
    Object, void, string, datetime and big-endian dtypes are refused.

    >>> check_dtype(b"<f4"), check_dtype(b"|u1")
    (dtype('float32'), dtype('uint8'))
    >>> check_dtype(b"|O")
    Traceback (most recent call last):
    ...
    beambridge.errors.EtfError: bad_term: tensor dtype b'|O' is not one of ...
    """
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    m = _DTYPE_PATTERN.fullmatch(raw.decode("ascii", "replace")) if type(raw) is bytes else None
    if m is not None:
        order, kind, size = m.group(1), m.group(2), int(m.group(3))
        if size in _DTYPE_SIZES[kind] and (order == "<" or size == 1):
            return np.dtype(f"{'<' if size > 1 else '|'}{kind}{size}")
    raise _bad(
        "dtype",
        text,
        f"tensor dtype {text!r} is not one of the fixed-size little-endian numeric dtypes "
        "(<i1..<i8, <u1..<u8, <f2, <f4, <f8, <c8, <c16; '|' for one byte)",
    )


def _check_shape(shape: Any) -> list[int]:
    if type(shape) is not list or len(shape) > MAX_NDIM:
        raise _bad("shape", shape, f"tensor shape must be a list of at most {MAX_NDIM} "
                   f"non-negative integers, got {shape!r}")  # fmt: skip
    for dim in shape:
        if type(dim) is not int or dim < 0:
            raise _bad("shape", shape, f"tensor shape {shape!r} holds {dim!r}, "
                       "not a non-negative integer")  # fmt: skip
    return shape


def make_tensor(dtype: Any, shape: Any, data: Any) -> np.ndarray[Any, Any]:
    """A read-only C-order ndarray over ``data`` (no copy), after checking ``dtype``,
    ``shape`` and that ``data`` holds exactly ``itemsize * prod(shape)`` bytes.

    >>> make_tensor(b"<u2", [2, 1], b"\\x01\\x00\\x02\\x00").tolist()
    [[1], [2]]
    """
    dt = check_dtype(dtype)
    dims = _check_shape(shape)
    expected = dt.itemsize * math.prod(dims)  # Python ints: no overflow
    nbytes = memoryview(data).nbytes
    if nbytes != expected:
        raise EtfError(
            "bad_term",
            "data",
            nbytes,
            expected,
            f"bad_term: a {dt.str} tensor of shape {dims} needs {expected} bytes of data, "
            f"got {nbytes}",
        )
    arr = np.frombuffer(data, dtype=dt).reshape(dims)
    arr.flags.writeable = False
    return arr


# ---- arguments ---------------------------------------------------------------------------


class Attachments:
    """The worker's cache of attached BEAM-owned regions, name -> `Region`, at most
    ``capacity`` of them (least recently used dropped first)."""

    def __init__(self, capacity: int = 64) -> None:
        self._regions: collections.OrderedDict[str, Region] = collections.OrderedDict()
        self._capacity = capacity

    def get(self, name: str) -> Region:
        region = self._regions.get(name)
        if region is None:
            region = Region.attach(name)
            self._regions[name] = region
            while len(self._regions) > self._capacity:
                _close_attachment(self._regions.popitem(last=False)[1])
        else:
            self._regions.move_to_end(name)
        return region

    def detach(self, names: list[Any]) -> None:
        """Drop the attachments of ``names`` (str or bytes); unknown names are ignored.

        A region with a live argument view stays mapped until that view is gone (its
        lease is ended then); only the cache entry goes now.
        """
        for raw in names:
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            region = self._regions.pop(name, None)
            if region is not None:
                _close_attachment(region)

    def __len__(self) -> int:
        return len(self._regions)

    def __contains__(self, name: object) -> bool:
        return name in self._regions


def _close_attachment(region: Region) -> None:
    # LeaseError: a handler still holds a view; the mapping stays alive with it and the
    # lease ends when it is collected
    with contextlib.suppress(LeaseError):
        region.close()


class Arguments:
    """Turns the data terms of a call's arguments into Python values (§7.4).

    Errors are `BridgeError` subclasses whose ``reason`` the worker sends back in a
    ``{:bad_call, reason, message}``: ``bad_term`` for a malformed tagged term (packed
    data or a records stream included), a region reason (``not_found``,
    ``bad_name``...), a lease reason (``not_published``), a §4 reason
    (``stale_generation``, ``checksum_mismatch``...), ``bad_metadata`` for a custom
    frame whose metadata disagrees with its header, or a `beambridge.codecs.CodecError`
    (``unknown_type``, ``unsupported_version``, ``codec_failed``).
    """

    def __init__(self, attachments: Attachments, *, verify: bool = True) -> None:
        self.attachments = attachments
        self.verify = verify

    def convert(self, value: Any) -> Any:
        """``value`` with every tagged term replaced (containers rebuilt only if needed)."""
        t = type(value)
        if t is tuple:
            if value and type(value[0]) is Atom and value[0].startswith("$bb_"):
                return self.tagged(value)
            items = [self.convert(v) for v in value]
            return tuple(items)
        if t is list:
            return [self.convert(v) for v in value]
        if t is dict:
            return {self.convert(k): self.convert(v) for k, v in value.items()}
        return value

    def tagged(self, term: tuple[Any, ...]) -> Any:
        tag = term[0]
        if tag == TAG_BUFFER and len(term) == 2 and type(term[1]) is bytes:
            return memoryview(term[1])
        if tag == TAG_TENSOR and len(term) == 4 and type(term[3]) is bytes:
            return make_tensor(term[1], term[2], term[3])
        if tag == TAG_TENSOR and len(term) == 3 and type(term[2]) is bytes:
            # {:"$bb_tensor", descriptor, data} (protocol/formats/tensor.md)
            return tensor_format.from_inline(term[1], term[2])
        if tag == TAG_TENSOR_BUNDLE and len(term) == 2:
            return tensor_format.Bundle(tensor_format.from_inline_entries(term[1]))
        if tag == TAG_SPARSE_COO and len(term) == 3:
            shape = tuple(tensor_format._check_dims(term[1], "shape"))
            parts = tensor_format.from_inline_entries(term[2], ("indices", "values"))
            return tensor_format.coo_from_parts(parts["indices"], parts["values"], shape)
        if tag == TAG_ARROW and len(term) == 2 and type(term[1]) is bytes:
            from .formats.arrow import read_arrow_stream

            try:
                return read_arrow_stream(term[1])
            except FormatError as err:
                raise _bad("arrow", None, f'{{:"$bb_arrow", stream}}: {err}') from None
        if tag == TAG_PACKED and len(term) == 3:
            values = records_format.unpack(term[1], term[2])
            records_format.note("from_elixir", "packed", "inline", len(term[2]),
                                f"{len(values)} elements {term[1].decode()}")  # fmt: skip
            return values
        if tag == TAG_RECORDS and len(term) == 3:
            layout = term[1]
            if type(layout) is not Atom or layout not in (LAYOUT_ROWS, LAYOUT_COLUMNS):
                raise _bad("layout", layout, f"records layout {_short(layout)} is not the "
                           "atom rows or columns")  # fmt: skip
            if type(term[2]) is not bytes:
                raise _bad("stream", _short(term[2]), "a records stream is a binary")
            value = records_format.records_from_stream(term[2], str(layout))
            records_format.note("from_elixir", "records", "inline", len(term[2]), str(layout))
            return value
        if tag == TAG_CUSTOM and len(term) == 4:
            name, version = _custom_parts(term[1], term[2])
            data = term[3]
            if type(data) is not bytes:
                raise _bad("data", _short(data), "custom data is a binary")
            value = codec_registry.decode_payload(name, version, data)
            records_format.note("from_elixir", "custom", "inline", len(data), name.decode())
            return value
        if tag == TAG_REGION and len(term) == 4:
            return self.region(term[1], term[2], term[3])
        raise _bad("tag", tag, f"malformed or unknown tagged term {_short(term)} (§7.4)")

    def region(self, kind: Any, name: Any, generation: Any) -> Any:
        if kind not in _KINDS or type(kind) is not Atom:
            raise _bad("kind", kind, f"region handle kind {kind!r} is not one of "
                       f"{', '.join(_KINDS)}")  # fmt: skip
        if type(name) is not bytes or type(generation) is not int or generation < 0:
            raise _bad("handle", (name, generation), "a region handle is {:\"$bb_region\", "
                       "kind, name :: binary, generation :: non-negative integer}")  # fmt: skip
        region = self.attachments.get(name.decode("utf-8", "replace"))
        frame = region.read_frame(verify=self.verify)
        done = False
        try:
            header = frame.header
            if header.generation != generation:
                raise HeaderError(
                    "stale_generation",
                    "generation",
                    header.generation,
                    generation,
                    f"stale_generation: the handle names generation {generation} of region "
                    f"{region.name} but its frame is generation {header.generation}",
                )
            if header.codec != Codec.NONE:
                raise HeaderError(
                    "unknown_codec",
                    "codec",
                    int(header.codec),
                    int(Codec.NONE),
                    f"unknown_codec: region {region.name} holds a {Codec(header.codec).name} "
                    "payload; this worker reads uncompressed argument regions only",
                )
            want = _KIND_FORMATS[kind]
            if header.format != want:
                raise _bad("format", int(header.format), f"a {kind} handle needs a frame of "
                           f"format {want.name}, region {region.name} holds format "
                           f"{header.format}")  # fmt: skip
            value: Any
            if kind == KIND_BINARY:
                value = bytes(frame.payload)
            elif kind == KIND_BUFFER:
                value = frame.payload
            elif kind == KIND_ARROW:
                from .formats.arrow import read_arrow

                try:
                    value = read_arrow(frame)  # in place: the lease follows the table
                except FormatError as err:
                    raise _bad("arrow", None, f"region {region.name}: {err}") from None
            elif kind == KIND_PACKED:
                value = records_format.read_packed(frame)  # copied out
                records_format.note("from_elixir", "packed", "region", header.payload_length,
                                    f"{len(value)} elements")  # fmt: skip
            elif kind == KIND_RECORDS:
                layout, rows, columns = records_format.parse_records_metadata(frame.metadata)
                value = records_format.records_from_stream(frame.payload, layout, (rows, columns))
                records_format.note("from_elixir", "records", "region", header.payload_length,
                                    f"{layout}, {rows} x {columns}")  # fmt: skip
            elif kind == KIND_CUSTOM:
                name, version = _custom_metadata(frame.metadata, header.schema_id,
                                                 header.schema_version, region.name)  # fmt: skip
                data = bytes(frame.payload)
                frame.release()  # the codec gets a private copy: the lease ends now
                value = codec_registry.decode_payload(name, version, data)
                records_format.note("from_elixir", "custom", "region", len(data), name.decode())
            else:
                if header.schema_id not in _KIND_SCHEMAS[kind]:
                    raise _bad("schema_id", header.schema_id, f"a {kind} handle needs a tensor "
                               f"frame of schema {list(_KIND_SCHEMAS[kind])}, region "
                               f"{region.name} holds schema {header.schema_id}")  # fmt: skip
                value = tensor_format.read(frame)
            done = True
            return value
        finally:
            if kind in _COPIED_KINDS or not done:
                with contextlib.suppress(LeaseError):
                    frame.release()
            # else the Frame object goes with this function: the payload view (and what
            # is made from it) alone keeps the payload's array alive, and with it the lease


def _short(term: Any) -> str:
    text = repr(term)
    return text if len(text) <= 200 else text[:200] + "..."


def _custom_parts(name: Any, version: Any) -> tuple[bytes, int]:
    """Check a custom payload's type name (1..255 UTF-8 bytes) and version
    (1..2**32-1), as the peer sent them; `EtfError` ``bad_term`` otherwise."""
    ok = type(name) is bytes and 1 <= len(name) <= codec_registry.MAX_NAME_BYTES
    if ok:
        try:
            name.decode("utf-8")
        except UnicodeDecodeError:
            ok = False
    if not ok:
        raise _bad("name", _short(name), "a custom type name is a binary of 1 to "
                   f"{codec_registry.MAX_NAME_BYTES} UTF-8 bytes")  # fmt: skip
    if type(version) is not int or not 1 <= version <= codec_registry.MAX_VERSION:
        raise _bad("version", _short(version), "a custom type version is an integer in "
                   f"1..{codec_registry.MAX_VERSION}")  # fmt: skip
    return name, version


def _custom_metadata(metadata: bytes, schema_id: int, schema_version: int,
                     region: str) -> tuple[bytes, int]:  # fmt: skip
    """The ``{type_name, version}`` of a custom frame's metadata, checked against the
    header's ``schema_id`` (``xxh3_64(type_name)``) and ``schema_version``
    (custom.md "Forms"); `FormatError` ``bad_metadata`` otherwise."""
    from .etf import decode

    try:
        term = decode(metadata, max_depth=2)
    except EtfError:
        term = None
    if type(term) is not tuple or len(term) != 2:
        raise FormatError("bad_metadata", "metadata", _short(term), None,
                          f"bad_metadata: the custom frame of region {region} has metadata "
                          f"{_short(term)}, not {{type_name, version}}")  # fmt: skip
    try:
        name, version = _custom_parts(term[0], term[1])
    except EtfError as err:
        raise FormatError("bad_metadata", "metadata", _short(term), None,
                          f"bad_metadata: region {region}: {err}") from None  # fmt: skip
    if schema_id != codec_registry.schema_id(name) or schema_version != version:
        raise FormatError("bad_metadata", "schema_id", (schema_id, schema_version),
                          (codec_registry.schema_id(name), version),
                          f"bad_metadata: the custom frame of region {region} names type "
                          f"{name.decode()!r} version {version} in its metadata, but its "
                          f"header has schema_id {schema_id} and schema_version "
                          f"{schema_version}")  # fmt: skip
    return name, version


# ---- results -----------------------------------------------------------------------------


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class ResultRegions:
    """The worker's own result regions, pooled by size class and reused warm.

    A region is rewritten only when its ``reader_leases`` is 0 (`Region.write_frame`
    refuses otherwise, and the next region of the class is tried); the total size of the
    pool stays at or below ``limit`` bytes (idle regions of other classes are closed to
    make room). ``write`` returns ``None`` when no region can take the payload: the
    caller then sends the value inline.
    """

    #: Smallest payload capacity of a region.
    MIN_CAPACITY = 64 * 1024
    #: Metadata room every region leaves before its payload.
    METADATA_ROOM = 960  # payload_offset_for(960) == 1088

    def __init__(
        self, prefix: str = "bb", limit: int = DEFAULT_REGION_LIMIT, *, checksum: bool = True
    ) -> None:
        self.prefix = prefix
        self.limit = limit
        # Hash result payloads only when the BEAM will verify them (BEAMBRIDGE_VERIFY).
        self.checksum = checksum
        self._classes: dict[int, list[Region]] = {}
        self._total = 0
        self._busy: set[int] = set()

    @property
    def total(self) -> int:
        """Bytes of regions the pool holds."""
        return self._total

    def regions(self) -> list[Region]:
        """Every region of the pool (a snapshot: safe while another thread adds one)."""
        return [r for rs in list(self._classes.values()) for r in list(rs)]

    def begin_result(self) -> None:
        """Start a new result: regions written for the previous one may be reused."""
        self._busy.clear()

    def size_for(self, nbytes: int, metadata_length: int) -> int:
        capacity = _pow2_at_least(max(nbytes, self.MIN_CAPACITY))
        return CB_SIZE + payload_offset_for(max(metadata_length, self.METADATA_ROOM)) + capacity

    def write(
        self,
        nbytes: int,
        fill: Callable[[memoryview], None] | memoryview,
        *,
        metadata: bytes = b"",
        format: Format = Format.RAW,
        schema_id: int = 0,
        schema_version: int = 0,
    ) -> tuple[str, int] | None:
        """Publish a frame of ``nbytes`` payload bytes in a free region; return ``(name,
        generation)`` or ``None`` (no room). ``fill`` is either the payload itself (a
        C-contiguous byte view: copied in by `Region.write_frame`) or a function that
        writes the payload into the area it is given (`Region.write_frame_into`)."""
        size = self.size_for(nbytes, len(metadata))
        for region in self._classes.get(size, ()):
            if id(region) in self._busy:
                continue
            # A region the BEAM still holds binaries over is skipped with one atomic
            # load instead of a refused write (an exception each): a caller that keeps
            # many results leases many regions. A stale 0 read is harmless: the write
            # itself runs the real check of the lease protocol (§2.2).
            if _atomic.load_u32(region._mm, OFF_READER_LEASES) != 0:
                continue
            try:
                return self._publish(region, nbytes, fill, metadata, format,
                                     (schema_id, schema_version))  # fmt: skip
            except LeaseError:
                continue  # the BEAM still holds binaries over it: try the next one
        if self._total + size > self.limit:
            self._evict(self._total + size - self.limit)
            if self._total + size > self.limit:
                return None
        try:
            region = Region.create(size, prefix=self.prefix)
        except RegionError as err:
            _warn(f"cannot create a result region of {size} bytes: {err}")
            return None
        self._classes.setdefault(size, []).append(region)
        self._total += size
        return self._publish(region, nbytes, fill, metadata, format, (schema_id, schema_version))

    def write_arrow(self, data: Any, plan: Any = None) -> tuple[str, int] | None:
        """Publish ``data`` (a ``pyarrow.Table``, ``RecordBatch`` or ``pandas.DataFrame``)
        as one ``arrow_stream`` frame with its descriptor (protocol/formats/arrow.md),
        written by pyarrow straight into a free region sized by the stream's exact size;
        ``plan`` is the sizing pass's result when the caller already made it. Returns
        ``(name, generation)`` or ``None`` (no room), as `write` does."""
        from .formats import arrow as arrow_format

        if plan is None:
            plan = arrow_format._plan(data, None, False)
        return self.write(
            plan.size,
            lambda area: arrow_format._write_into(area, plan),
            metadata=plan.metadata,
            format=Format.ARROW_STREAM,
        )

    def _publish(
        self,
        region: Region,
        nbytes: int,
        fill: Callable[[memoryview], None] | memoryview,
        metadata: bytes,
        format: Format,
        schema: tuple[int, int] = (0, 0),
    ) -> tuple[str, int]:
        if isinstance(fill, memoryview):
            generation = region.write_frame(
                fill, metadata=metadata, format=format, checksum=self.checksum,
                schema_id=schema[0], schema_version=schema[1],
            ).generation  # fmt: skip
        else:
            with region.write_frame_into(
                nbytes, metadata=metadata, format=format, checksum=self.checksum,
                schema_id=schema[0], schema_version=schema[1],
            ) as area:  # fmt: skip
                fill(area)
            generation = region._last_header.generation
        self._busy.add(id(region))
        return region.name, generation

    def _evict(self, wanted: int) -> None:
        """Close idle regions (no lease, not used by the result being built), biggest
        first, until ``wanted`` bytes are freed or none is left."""
        idle = [
            r
            for r in sorted(self.regions(), key=lambda r: -r.size)
            if id(r) not in self._busy and r.control_block().reader_leases == 0
        ]
        for region in idle:
            if wanted <= 0:
                break
            self._classes[region.size].remove(region)
            self._total -= region.size
            wanted -= region.size
            region.close()

    def unlink_all(self) -> None:
        """Remove every region's name (safe from any thread or a signal handler)."""
        for region in self.regions():
            with contextlib.suppress(BridgeError, OSError):
                region.unlink()

    def close_all(self) -> None:
        """Unmap and unlink every region."""
        for region in self.regions():
            with contextlib.suppress(BridgeError, OSError):
                region.close()
        self._classes.clear()
        self._total = 0


_last_warning = 0.0


def _warn(text: str) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= 1.0:  # at most one a second
        _last_warning = now
        who = os.environ.get("BEAMBRIDGE_WORKER_ID", str(os.getpid()))
        print(f"beambridge worker {who}: warning: {text}", file=sys.stderr, flush=True)


#: Encodes descriptors and names: plain ETF, never a region handle.
_PLAIN = Encoder()


class FormatUnsuitableError(BridgeError, ValueError):
    """A forced format (``format: arrow``) met a list of maps or a map of lists that is
    not a record list / column map (§8.1): reason ``format_unsuitable``, ``field``
    ``format``, ``limit`` the code of the first reason (``different_keys``...);
    the message names the first reason and says to use ``format: auto`` or convert the
    value. The worker answers the call with a ``bad_call``."""


#: Warnings about failing custom codecs: at most one per codec name per second.
_codec_warned: dict[str, float] = {}
_codec_log = logging.getLogger("beambridge.codecs")


class ResultEncoder(Encoder):
    """Encodes a handler's result: bytes-likes as binaries, ndarrays as tensors, each of
    them as a region handle when its payload is at least ``threshold`` bytes and the
    ``regions`` pool has room (else inline, same type, and a warning on stderr).

    ``policy`` (one of `POLICIES`, set per call by the worker from the ``"format"`` call
    option) selects the forms of §8.1: under ``auto`` a number list of at least
    ``packed_min`` elements goes packed and a record list or column map of at least
    ``records_min`` cells goes as records; ``etf`` sends every list and map as ETF;
    ``packed`` packs every number list, ``arrow`` sends every record list and column map
    as records (and a list of maps or map of lists that does not qualify raises
    `FormatUnsuitableError`), each leaving the other kind of candidate to ``auto``.
    Values of a class with a registered codec go as custom payloads whatever the policy.

    >>> from beambridge.etf import decode, encode_parts
    >>> enc = ResultEncoder(policy="packed")
    >>> decode(b"".join(encode_parts([1, 2, 300], enc)))
    (Atom('$bb_packed'), b'<i2', b'\\x01\\x00\\x02\\x00,\\x01')
    >>> enc.policy = "etf"
    >>> decode(b"".join(encode_parts([1, 2, 300], enc)))
    [1, 2, 300]
    """

    def __init__(
        self,
        regions: ResultRegions | None = None,
        threshold: int = DEFAULT_THRESHOLD,
        *,
        policy: str = "auto",
        packed_min: int = records_format.DEFAULT_PACKED_MIN,
        records_min: int = records_format.DEFAULT_RECORDS_MIN,
    ) -> None:
        self.regions = regions
        self.threshold = threshold
        self._packed_min = packed_min
        self._records_min = records_min
        self.policy = policy

    @property
    def policy(self) -> str:
        """The format policy: ``auto``, ``etf``, ``packed`` or ``arrow``."""
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        if value not in POLICIES:
            raise ValueError(f"format policy {value!r} is not one of {', '.join(POLICIES)}")
        self._policy = value
        self._select = value != "etf"
        # lists shorter than this, and record lists / column maps of fewer cells (by
        # their first row / first column), are never examined: ETF whatever they hold
        self._list_min = 2 if value == "packed" else max(2, self._packed_min)
        self._cells_min = 0 if value == "arrow" else self._records_min

    @property
    def records_min(self) -> int:
        """Auto policy: the fewest cells (rows x columns) of a record list or column map
        that goes as records."""
        return self._records_min

    @records_min.setter
    def records_min(self, value: int) -> None:
        self._records_min = value
        self.policy = self._policy

    @property
    def packed_min(self) -> int:
        """Auto policy: the fewest elements of a number list that goes packed."""
        return self._packed_min

    @packed_min.setter
    def packed_min(self, value: int) -> None:
        self._packed_min = value
        self.policy = self._policy

    # ---- the §8.1 candidates: lists and dicts ------------------------------------------

    hooks = True

    #: The value `_selected` is sending as ETF right now: the hooks pass it over once.
    _as_etf: Any = None

    def list_hook(self, v: list[Any], parts: list[Any], depth: int) -> bool:
        """Send a list packed or as records when it is a candidate the policy selects."""
        if v is self._as_etf:
            self._as_etf = None
            return False
        if v and self._select:
            first = type(v[0])
            decision: str | bool = False
            if first is int or first is float:
                if len(v) >= self._list_min:
                    decision = self._numbers(v, parts)
            elif first is dict and len(v) * len(v[0]) >= self._cells_min:
                decision = self._rows(v, parts)
            return decision is not False and self._selected(decision, v, parts, depth)
        return False

    def dict_hook(self, v: dict[Any, Any], parts: list[Any], depth: int) -> bool:
        """Send a dict as records when it is a column map the policy selects."""
        if v is self._as_etf:
            self._as_etf = None
            return False
        if v and self._select:
            first_value = next(iter(v.values()))
            return (
                type(first_value) is list
                and len(first_value) * len(v) >= self._cells_min
                and self._selected(self._columns(v, parts), v, parts, depth)
            )
        return False

    def _selected(self, decision: str | bool, v: Any, parts: list[Any], depth: int) -> bool:
        """After a candidate's check: True when it was sent in its form, or when it was
        sent here as ETF and counted (``decision`` names why); False: not a candidate,
        the caller encodes it."""
        if decision is True or decision is False:
            return decision
        start = len(parts)
        self._as_etf = v  # this very value as ETF (its items may still be candidates)
        self.encode_into(v, parts, depth)
        # every part is bytes or a 1-D byte view (encode_binary casts to "B"): len is size
        size = sum(map(len, itertools.islice(parts, start, None)))
        records_format.note("to_elixir", "etf", decision, size, f"{len(v)} elements")
        return True

    # ---- number lists ------------------------------------------------------------------

    def _numbers(self, v: list[Any], parts: list[Any]) -> str | bool:
        """Send a list of at least ``_list_min`` elements whose first is a number packed
        when it is a number list (True); else the reason it stays ETF."""
        numbers = records_format.classify_numbers(v)
        if isinstance(numbers, records_format.Unsuitable):
            return numbers.code
        forced = self._policy == "packed"
        self.packed(records_format.pack(v, numbers.dtype), parts, "forced" if forced else "auto")
        return True

    def packed(self, arr: np.ndarray[Any, Any], parts: list[Any], reason: str = "auto") -> None:
        """A 1-D array of one of the packed dtypes as ``{:"$bb_packed", dtype, data}``, or
        a region of kind ``packed`` (a schema-0 tensor frame) at or above the threshold."""
        data = memoryview(arr.data).cast("B")
        dtype = arr.dtype.str
        in_region = self._placed(
            KIND_PACKED, data.nbytes, f"a {data.nbytes}-byte packed list",
            lambda regions: regions.write(
                data.nbytes, data, metadata=records_format.packed_metadata(dtype, len(arr)),
                format=Format.TENSOR, schema_id=tensor_format.SCHEMA_LEGACY, schema_version=0,
            ),
            parts,
        )  # fmt: skip
        where = "region" if in_region else "inline"
        if not in_region:
            parts.append(b"h\x03")
            self.encode_into(TAG_PACKED, parts)
            encode_binary(dtype.encode(), parts)
            encode_binary(data, parts)
        records_format.note("to_elixir", "packed", reason, data.nbytes,
                            f"{len(arr)} elements {dtype}, {where}")  # fmt: skip

    # ---- record lists and column maps ----------------------------------------------------

    def _rows(self, v: list[Any], parts: list[Any]) -> str | bool:
        """A list whose first element is a dict: records when it is a record list big
        enough (or the policy is ``arrow``)."""
        forced = self._policy == "arrow"
        plan = records_format.plan_rows(v)
        return self._records_or_reason(plan, "list of maps", forced, parts)

    def _columns(self, v: dict[Any, Any], parts: list[Any]) -> str | bool:
        """A dict whose first value is a list: records when it is a column map big
        enough (or the policy is ``arrow``)."""
        forced = self._policy == "arrow"
        plan = records_format.plan_columns(v)
        return self._records_or_reason(plan, "map of lists", forced, parts)

    def _records_or_reason(
        self,
        plan: records_format.RecordsPlan | records_format.Unsuitable,
        what: str,
        forced: bool,
        parts: list[Any],
    ) -> str | bool:
        if isinstance(plan, records_format.RecordsPlan):
            try:
                self.records(plan, parts, "forced" if forced else "auto")
                return True
            except ValueError as exc:  # pyarrow refused a value the checks let through
                plan = records_format.Unsuitable("unsupported_value", str(exc))
        if plan.code in ("not_maps", "not_lists", "empty"):
            return False  # not a list of maps / map of lists at all: not a candidate
        if forced:
            raise FormatUnsuitableError(
                "format_unsuitable",
                "format",
                self._policy,
                plan.code,
                f"format_unsuitable: format: {self._policy} cannot send this {what} as records "
                f"({plan.code}): {plan.message}; pass format: :auto (or :etf) to send it "
                "as it is, or convert the value into a record list / column map",
            )
        return plan.code

    def records(self, plan: records_format.RecordsPlan, parts: list[Any], reason: str) -> None:
        """A checked record list / column map as ``{:"$bb_records", layout, stream}``, or
        a region of kind ``records`` (an ``arrow_stream`` frame) at or above the
        threshold. ``ValueError`` (nothing appended) if pyarrow refuses a value."""
        import pyarrow as pa

        from .formats import arrow as arrow_format

        table = records_format.to_table(plan)
        layout = LAYOUT_ROWS if plan.layout == "rows" else LAYOUT_COLUMNS
        what = f"{plan.layout}, {plan.num_rows} x {len(plan.names)}"
        if self.regions is not None:
            counter = pa.MockOutputStream()
            arrow_format._write_stream(counter, table, table.schema)
            size = counter.size()

            def write(regions: ResultRegions) -> tuple[str, int] | None:
                metadata = records_format.records_metadata(plan.layout, plan.num_rows,
                                                           len(plan.names))  # fmt: skip
                stream_plan = arrow_format._Plan(table, table.schema, size, metadata)
                return regions.write(
                    size, lambda area: arrow_format._write_into(area, stream_plan),
                    metadata=metadata, format=Format.ARROW_STREAM,
                )  # fmt: skip

            if self._placed(KIND_RECORDS, size, f"a {size}-byte records stream", write, parts):
                records_format.note("to_elixir", "records", reason, size, what + ", region")
                return
        sink = pa.BufferOutputStream()
        arrow_format._write_stream(sink, table, table.schema)
        stream = sink.getvalue()
        parts.append(b"h\x03")
        self.encode_into(TAG_RECORDS, parts)
        self.encode_into(layout, parts)
        encode_binary(memoryview(stream), parts)
        records_format.note("to_elixir", "records", reason, stream.size, what + ", inline")

    # ---- custom types ----------------------------------------------------------------------

    def custom(self, v: Any, codec: codec_registry.TypeCodec, parts: list[Any], depth: int) -> None:
        """A value of a registered class: ``{:"$bb_custom", name, version, data}``, or a
        ``custom`` region at or above the threshold (custom.md). A codec that raises or
        returns no bytes-like object: the value's standard form, and a warning."""
        try:
            data = codec_registry.encode_value(codec, v)
        except Exception as exc:
            self._standard_form(v, codec, exc, parts, depth)
            return
        nbytes = data.nbytes
        in_region = self._placed(
            KIND_CUSTOM, nbytes, f"a {nbytes}-byte {codec.name}",
            lambda regions: regions.write(
                nbytes, data, metadata=etf_encode((codec.name_bytes, codec.version)),
                format=Format.CUSTOM, schema_id=codec.schema_id, schema_version=codec.version,
            ),
            parts,
        )  # fmt: skip
        where = "region" if in_region else "inline"
        if not in_region:
            parts.append(b"h\x04")
            self.encode_into(TAG_CUSTOM, parts)
            encode_binary(codec.name_bytes, parts)
            _encode_int(codec.version, parts)
            encode_binary(data, parts)
        records_format.note("to_elixir", "custom", "registered", nbytes,
                            f"{codec.name} v{codec.version}, {where}")  # fmt: skip

    def _standard_form(
        self,
        v: Any,
        codec: codec_registry.TypeCodec,
        error: Exception,
        parts: list[Any],
        depth: int,
    ) -> None:
        """custom.md "Writing": the dict of a dataclass's fields, the plain value of a
        subclass of a §8 type, or ``vars(obj)``; else the usual ``TypeError``."""
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
                    f"cannot send {kind} to Elixir: its codec {codec.name!r} failed "
                    f"({type(error).__name__}: {error}) and it has neither dataclass fields "
                    "nor a __dict__ to send instead"
                ) from error
        now = time.monotonic()
        if now - _codec_warned.get(codec.name, -2.0) >= 1.0:  # at most one a second
            _codec_warned[codec.name] = now
            _codec_log.warning(
                "custom codec %r for %s failed (%s: %s); sending the value in its standard "
                "form (%s) instead", codec.name, described, type(error).__name__, error,
                "a dict" if standard is not None else "a plain value",
            )  # fmt: skip
        records_format.note("to_elixir", "standard", "codec_failed", 0, described)
        if standard is None:
            super().other(v, parts, depth)
        else:
            self.encode_into(standard, parts, self.deeper(depth))

    def binary(self, v: Any, parts: list[Any]) -> None:
        if type(v) is bytes:
            if len(v) < self.threshold or self.regions is None:
                encode_binary(v, parts)
                return
            view = memoryview(v)
        else:
            view = memoryview(v)
            if view.nbytes < self.threshold or self.regions is None:
                encode_binary(view, parts)
                return
        if not view.c_contiguous:
            view = memoryview(view.tobytes())
        flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
        if not self._placed(
            KIND_BINARY, flat.nbytes, f"{flat.nbytes} bytes",
            lambda regions: regions.write(flat.nbytes, flat, format=Format.RAW), parts,
        ):  # fmt: skip
            encode_binary(flat, parts)

    def _placed(
        self,
        kind: Atom,
        nbytes: int,
        what: str,
        write: Callable[[ResultRegions], tuple[str, int] | None],
        parts: list[Any],
    ) -> bool:
        """Write a payload of ``nbytes`` into a result region with ``write`` and append its
        handle (True), or leave it to be sent inline (False): below the threshold, no
        pool, or no room in the pool (then with a warning naming ``what``)."""
        regions = self.regions
        if regions is None or nbytes < self.threshold:
            return False
        placed = write(regions)
        if placed is None:
            _warn(f"result region limit {regions.limit} reached; sending {what} inline")
            return False
        self.handle(kind, placed, parts)
        return True

    def handle(self, kind: Atom, placed: tuple[str, int], parts: list[Any]) -> None:
        """``{:"$bb_region", kind, name, generation}``. The name goes out as a plain
        binary: it is never itself a candidate for a region, whatever the threshold."""
        parts.append(b"h\x04")
        self.encode_into(TAG_REGION, parts)
        self.encode_into(kind, parts)
        encode_binary(placed[0].encode(), parts)
        self.encode_into(placed[1], parts)

    def other(self, v: Any, parts: list[Any], depth: int) -> None:
        if codec_registry.has_codecs():
            codec = codec_registry.lookup(type(v))
            if codec is not None:
                self.custom(v, codec, parts, depth)
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

    def _in_region(self, value: Any, kind: Atom, parts: list[Any]) -> bool:
        """Write ``value`` (ndarray, Bundle, COO) as one tensor frame and append its
        handle when its payload reaches the threshold and a region has room."""
        if self.regions is None:
            return False
        plan = tensor_format.plan(value)
        if plan.nbytes < self.threshold or plan.nbytes == 0:
            return False
        fill: Callable[[memoryview], None] | memoryview = plan.fill
        if (
            len(plan.parts) == 1
            and plan.parts[0][0].flags.c_contiguous
            and (plan.parts[0][1] == "C")
        ):
            # already the bytes to send: copied in (and hashed) in one pass
            fill = tensor_format._raw(plan.parts[0][0], "C").data
        return self._placed(
            kind, plan.nbytes, f"a {plan.nbytes}-byte {kind}",
            lambda regions: regions.write(plan.nbytes, fill, metadata=plan.metadata,
                                          format=Format.TENSOR, schema_id=plan.schema_id,
                                          schema_version=plan.schema_version),
            parts,
        )  # fmt: skip

    def tensor(self, arr: np.ndarray[Any, Any], parts: list[Any]) -> None:
        """An ndarray: dtype, byte order and C/Fortran order as they are
        (protocol/formats/tensor.md); SPEC §7.4's original 4-tuple when it fits."""
        tensor_format.dtype_to_descr(arr.dtype)  # refuse what cannot go, either way
        if self._in_region(arr, KIND_TENSOR, parts):
            return
        if tensor_format.is_legacy(arr):
            parts.append(b"h\x04")  # {:"$bb_tensor", dtype, shape, data}
            self.encode_into(TAG_TENSOR, parts)
            encode_binary(arr.dtype.str.encode(), parts)
            self.encode_into([int(d) for d in arr.shape], parts)
            encode_binary(tensor_format._raw(arr, "C").data, parts)
            return
        desc = tensor_format.descriptor(arr)
        parts.append(b"h\x03")  # {:"$bb_tensor", descriptor, data}
        self.encode_into(TAG_TENSOR, parts)
        _PLAIN.encode_into(desc, parts)  # never region handles inside a descriptor
        encode_binary(tensor_format._raw(arr, desc[b"order"].decode()).data, parts)

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
        region of schema 2."""
        if self._in_region(bundle, KIND_TENSOR_BUNDLE, parts):
            return
        parts.append(b"h\x02")
        self.encode_into(TAG_TENSOR_BUNDLE, parts)
        self._entries(list(bundle.items()), parts)

    def sparse_coo(self, coo: tensor_format.COO, parts: list[Any]) -> None:
        """A `COO`: ``{:"$bb_sparse_coo", shape, [indices, values]}`` or one region of
        schema 3."""
        if self._in_region(coo, KIND_SPARSE_COO, parts):
            return
        parts.append(b"h\x03")
        self.encode_into(TAG_SPARSE_COO, parts)
        _PLAIN.encode_into([int(d) for d in coo.shape], parts)
        self._entries([("indices", coo.indices), ("values", coo.values)], parts)

    def arrow(self, data: Any, parts: list[Any]) -> None:
        """A ``pyarrow.Table``, ``RecordBatch`` or ``pandas.DataFrame`` (index dropped):
        one Arrow IPC stream, in a region of kind ``arrow`` when it reaches the threshold
        and a region has room, else ``{:"$bb_arrow", stream}``."""
        import pyarrow as pa

        from .formats import arrow as arrow_format

        plan = arrow_format._plan(data, None, False)
        arrow_format.check_elixir_readable(plan.schema)
        if self._placed(
            KIND_ARROW, plan.size, f"a {plan.size}-byte Arrow stream",
            lambda regions: regions.write_arrow(data, plan), parts,
        ):  # fmt: skip
            return
        sink = pa.BufferOutputStream()
        arrow_format._write_stream(sink, plan.data, plan.schema)
        parts.append(b"h\x02")
        self.encode_into(TAG_ARROW, parts)
        encode_binary(memoryview(sink.getvalue()), parts)


def _is_table(v: Any) -> bool:
    """A ``pyarrow.Table``/``RecordBatch`` or ``pandas.DataFrame``, without importing
    either library: a value of theirs means they are imported already."""
    pa = sys.modules.get("pyarrow")
    if pa is not None and isinstance(v, (pa.Table, pa.RecordBatch)):
        return True
    pd = sys.modules.get("pandas")
    return pd is not None and isinstance(v, pd.DataFrame)
