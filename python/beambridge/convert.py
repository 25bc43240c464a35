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
import math
import os
import re
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _atomic
from .control import CB_SIZE, OFF_READER_LEASES
from .errors import BridgeError, EtfError, FormatError, HeaderError, LeaseError, RegionError
from .etf import Atom, Encoder, encode_binary
from .formats import tensor as tensor_format
from .header import Codec, Format, payload_offset_for
from .region import Region

__all__ = [
    "DEFAULT_REGION_LIMIT",
    "DEFAULT_THRESHOLD",
    "TAG_ARROW",
    "TAG_BUFFER",
    "TAG_REGION",
    "TAG_SPARSE_COO",
    "TAG_TENSOR",
    "TAG_TENSOR_BUNDLE",
    "Arguments",
    "Attachments",
    "ResultEncoder",
    "ResultRegions",
    "check_dtype",
    "make_tensor",
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
KIND_BINARY = Atom("binary")
KIND_BUFFER = Atom("buffer")
KIND_TENSOR = Atom("tensor")
KIND_TENSOR_BUNDLE = Atom("tensor_bundle")
KIND_SPARSE_COO = Atom("sparse_coo")
KIND_ARROW = Atom("arrow")
_KINDS = (KIND_BINARY, KIND_BUFFER, KIND_TENSOR, KIND_TENSOR_BUNDLE, KIND_SPARSE_COO, KIND_ARROW)
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
    ``{:bad_call, reason, message}``: ``bad_term`` for a malformed tagged term, a
    region reason (``not_found``, ``bad_name``...), a lease reason (``not_published``)
    or a §4 reason (``stale_generation``, ``checksum_mismatch``...).
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
        if tag == TAG_REGION and len(term) == 4:
            return self.region(term[1], term[2], term[3])
        raise _bad("tag", tag, f"malformed or unknown tagged term {_short(term)} (§7.4)")

    def region(self, kind: Any, name: Any, generation: Any) -> Any:
        if kind not in _KINDS or type(kind) is not Atom:
            raise _bad("kind", kind, f"region handle kind {kind!r} is not binary, buffer, "
                       "tensor, tensor_bundle, sparse_coo or arrow")  # fmt: skip
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
            want = (
                Format.TENSOR
                if kind in _KIND_SCHEMAS
                else Format.ARROW_STREAM
                if kind == KIND_ARROW
                else Format.RAW
            )
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
            else:
                if header.schema_id not in _KIND_SCHEMAS[kind]:
                    raise _bad("schema_id", header.schema_id, f"a {kind} handle needs a tensor "
                               f"frame of schema {list(_KIND_SCHEMAS[kind])}, region "
                               f"{region.name} holds schema {header.schema_id}")  # fmt: skip
                value = tensor_format.read(frame)
            done = True
            return value
        finally:
            if kind == KIND_BINARY or not done:
                with contextlib.suppress(LeaseError):
                    frame.release()
            # else the Frame object goes with this function: the payload view (and what
            # is made from it) alone keeps the payload's array alive, and with it the lease


def _short(term: Any) -> str:
    text = repr(term)
    return text if len(text) <= 200 else text[:200] + "..."


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


class ResultEncoder(Encoder):
    """Encodes a handler's result: bytes-likes as binaries, ndarrays as tensors, each of
    them as a region handle when its payload is at least ``threshold`` bytes and the
    ``regions`` pool has room (else inline, same type, and a warning on stderr)."""

    def __init__(
        self, regions: ResultRegions | None = None, threshold: int = DEFAULT_THRESHOLD
    ) -> None:
        self.regions = regions
        self.threshold = threshold

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
        placed = self.regions.write(flat.nbytes, flat, format=Format.RAW)
        if placed is None:
            _warn(f"result region limit {self.regions.limit} reached; sending "
                  f"{flat.nbytes} bytes inline")  # fmt: skip
            encode_binary(flat, parts)
        else:
            self.handle(KIND_BINARY, placed, parts)

    def handle(self, kind: Atom, placed: tuple[str, int], parts: list[Any]) -> None:
        """``{:"$bb_region", kind, name, generation}``. The name goes out as a plain
        binary: it is never itself a candidate for a region, whatever the threshold."""
        parts.append(b"h\x04")
        self.encode_into(TAG_REGION, parts)
        self.encode_into(kind, parts)
        encode_binary(placed[0].encode(), parts)
        self.encode_into(placed[1], parts)

    def other(self, v: Any, parts: list[Any], depth: int) -> None:
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
        placed = self.regions.write(plan.nbytes, fill, metadata=plan.metadata,
                                    format=Format.TENSOR, schema_id=plan.schema_id,
                                    schema_version=plan.schema_version)  # fmt: skip
        if placed is None:
            _warn(f"result region limit {self.regions.limit} reached; sending a "
                  f"{plan.nbytes}-byte {kind} inline")  # fmt: skip
            return False
        self.handle(kind, placed, parts)
        return True

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
        if self.regions is not None and plan.size >= self.threshold:
            placed = self.regions.write_arrow(data, plan)
            if placed is not None:
                self.handle(KIND_ARROW, placed, parts)
                return
            _warn(f"result region limit {self.regions.limit} reached; sending a "
                  f"{plan.size}-byte Arrow stream inline")  # fmt: skip
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
