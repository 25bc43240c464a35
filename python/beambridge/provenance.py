"""Provenance of frames (protocol/SPEC.md §5.4): the ids writers give frames and calls,
the provenance block that follows a frame's metadata, reading it (checks P2-P4) and
building the one a writer puts in its frames.

A block is a sequence of sections (``tag u8, length u32, body``): who wrote the frame
(``producer``), the call's user metadata (``meta``), the chain of calls the value came
through (``lineage``, oldest first, at most `LINEAGE_MAX` entries) and what was dropped
from the front of that chain (``summary``). Lineage entries are kept as their bytes:
passing a chain on copies them, only the newest entry is encoded again.

>>> block = Block.build(producer=producer_body("python"), meta={"round": 12}).encode()
>>> parse_block(block).meta
{'round': 12}
"""

from __future__ import annotations

import os
import random
import struct
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import xxhash

from .errors import BridgeError, EtfError, HeaderError
from .etf import decode as etf_decode
from .etf import encode as etf_encode

__all__ = [
    "INLINE_META",
    "INPUTS_MAX",
    "LINEAGE_MAX",
    "MAX_META",
    "MAX_PROVENANCE",
    "Block",
    "Entry",
    "Summary",
    "as_text",
    "holds_meta",
    "merge_chains",
    "new_entry",
    "next_call_id",
    "next_frame_id",
    "now_ns",
    "parse_block",
    "producer_body",
    "read_block",
    "remember",
]

MAX_PROVENANCE = 65536
#: The largest ``meta`` body a writer puts in a frame (SPEC §5.4).
MAX_META = 49152
LINEAGE_MAX = 32
INPUTS_MAX = 8
TAG_PRODUCER, TAG_META, TAG_LINEAGE, TAG_SUMMARY, TAG_META_REF = 1, 2, 3, 4, 5
#: A meta body larger than this is stored once per call or stream (SPEC §5.4).
INLINE_META = 1024
#: How many stored meta bodies a reader keeps, by digest.
STORED_MAX = 64
_SECTIONS = {
    TAG_PRODUCER: "producer",
    TAG_META: "meta",
    TAG_LINEAGE: "lineage",
    TAG_SUMMARY: "summary",
    TAG_META_REF: "meta_ref",
}
_TOP = 1 << 63
_U64_MAX = (1 << 64) - 1
_LOW63 = _TOP - 1
_section = struct.Struct("<BI")
_entry_head = struct.Struct("<HQQ")  # length, call, at
_summary = struct.Struct("<QQQ")  # count, first_at, digest
_u64 = struct.Struct("<Q")
_FLAG_HOLDS_META = 1 << 16  # beambridge.header.FLAG_HOLDS_META (the header imports this module)
_meta_ref = struct.Struct("<QI")  # digest, length
#: Stored meta bodies a reader has read (from frames with HOLDS_META), by (digest, length).
_stored: OrderedDict[tuple[int, int], bytes] = OrderedDict()


class _Ids:
    """A random base and a counter: ids unique to this process, the top bit set (§5.4:
    every id is 8 bytes in any encoding, so a chain's size does not drift)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.next_id = random.getrandbits(63)

    def __call__(self) -> int:
        self.next_id = (self.next_id + 1) & _LOW63
        return self.next_id | _TOP


#: A new frame id (§5.4 ``frame_id``).
next_frame_id = _Ids()
#: A new call id (the ``call`` of a lineage entry).
next_call_id = _Ids()


def _after_fork() -> None:  # a forked child must not repeat its parent's ids
    next_frame_id.reset()
    next_call_id.reset()


os.register_at_fork(after_in_child=_after_fork)


def now_ns() -> int:
    """``created_at`` for a frame written now: nanoseconds since the Unix epoch."""
    return time.time_ns()


def _bad(field: str, message: str, value: Any = None) -> HeaderError:
    return HeaderError("bad_provenance", field, value, None, f"bad_provenance: {message}")


@dataclass(frozen=True)
class Entry:
    """One call of a lineage: its id, when its frame was written, and the rest of the
    entry as it came (``raw``: the whole entry, length prefix included)."""

    call: int
    at: int
    raw: bytes

    @classmethod
    def make(cls, call: int, at: int, body: dict[str, Any]) -> Entry:
        encoded = etf_encode(body)
        size = _entry_head.size + len(encoded)
        return cls(call, at, _entry_head.pack(size, call, at) + encoded)

    def body(self) -> dict[str, Any]:
        """The entry's map: ``handler``, ``worker``, ``inputs`` and (but for the newest
        entry of a frame's own chain) ``frame``."""
        try:
            body = etf_decode(self.raw[_entry_head.size :])
        except EtfError as err:
            raise _bad("lineage", f"an entry's body does not decode: {err}") from None
        if type(body) is not dict:
            raise _bad("lineage", f"an entry's body is not a map: {body!r:.80}")
        return {_text(k): as_text(v) for k, v in body.items()}

    def stamped(self, frame_id: int) -> Entry:
        """This entry with ``frame`` set, unless it has one: the newest entry of a chain
        that leaves its frame for a new one (§5.4)."""
        try:
            body = etf_decode(self.raw[_entry_head.size :])
        except EtfError:  # passed on as it came: describing it says what is wrong
            return self
        if type(body) is not dict or b"frame" in body:
            return self
        body[b"frame"] = frame_id
        return Entry.make(self.call, self.at, body)

    def describe(self) -> dict[str, Any]:
        return {**self.body(), "call": self.call, "at": self.at}


def new_entry(call: int, handler: str, worker: str, inputs: Iterable[int]) -> Entry:
    """The entry a result frame's writer adds for its own call."""
    ids = [i for i in inputs if i][:INPUTS_MAX]
    return Entry.make(call, now_ns(), {"handler": handler, "worker": worker, "inputs": ids})


@dataclass(frozen=True)
class Summary:
    """What was dropped from the front of a lineage (§5.4 ``summary``)."""

    count: int
    first_at: int
    digest: int

    def dropping(self, entries: list[Entry]) -> Summary:
        digest = xxhash.xxh3_64_intdigest(_u64.pack(self.digest) + b"".join(e.raw for e in entries))
        return Summary(min(self.count + len(entries), _U64_MAX), self.first_at, digest)

    def describe(self) -> dict[str, int]:
        return {"count": self.count, "first_at": self.first_at, "digest": self.digest}

    def joined(self, other: Summary) -> Summary:
        """The summary of two inputs' histories (SPEC §5.4): one history usually holds
        the other (a value and what was made from it), so the larger count stands (a
        lower bound when they are apart); the digest does not depend on the order."""
        if other.digest == self.digest:
            return self
        low, high = sorted((self.digest, other.digest))
        digest = xxhash.xxh3_64_intdigest(_u64.pack(low) + _u64.pack(high))
        return Summary(max(self.count, other.count), min(self.first_at, other.first_at), digest)


@dataclass(frozen=True)
class Block:
    """A provenance block: each section as bytes ready to write (``producer``,
    ``meta_bytes``: ETF bodies) or as entries (``lineage``)."""

    producer: bytes = b""
    meta_bytes: bytes = b""
    lineage: tuple[Entry, ...] = ()
    summary: Summary | None = None
    _meta: Any = field(default=None, compare=False, repr=False)
    #: ``(digest, length)`` of a meta stored in another frame (section ``meta_ref``).
    meta_ref: tuple[int, int] | None = None

    @classmethod
    def build(
        cls,
        *,
        producer: bytes = b"",
        meta: dict[str, Any] | None = None,
        lineage: Iterable[Entry] = (),
        summary: Summary | None = None,
    ) -> Block:
        meta_bytes = b"" if not meta else etf_encode(meta)
        if len(meta_bytes) > MAX_META:
            raise BridgeError(
                "too_large",
                "meta",
                len(meta_bytes),
                MAX_META,
                f"too_large: meta is {len(meta_bytes)} bytes encoded, over {MAX_META}: every "
                "frame of the call carries it; keep it to ids and small values",
            )
        return cls(producer, meta_bytes, tuple(lineage), summary, meta or None)

    def referring(self) -> Block:
        """This block with its meta named by ``meta_ref`` instead: what the frames of a
        call after the first carry when the meta is over `INLINE_META` (SPEC §5.4)."""
        ref = (xxhash.xxh3_64_intdigest(self.meta_bytes), len(self.meta_bytes))
        return Block(self.producer, b"", self.lineage, self.summary, None, ref)

    @property
    def stored(self) -> bool:
        """Whether the meta is over `INLINE_META`: stored once, named by the others."""
        return len(self.meta_bytes) > INLINE_META

    @property
    def meta(self) -> dict[str, Any] | None:
        """The user metadata (binary keys and values read as ``str`` when UTF-8)."""
        if self._meta is None and self.meta_bytes:
            object.__setattr__(self, "_meta", _map_section("meta", self.meta_bytes))
        elif self._meta is None and self.meta_ref is not None:
            body = _stored.get(self.meta_ref)
            if body is not None:
                object.__setattr__(self, "_meta", _map_section("meta", body))
        meta: dict[str, Any] | None = self._meta
        return meta

    def encode(self) -> bytes:
        """The block's bytes; its meta section first (a stored one must be, §5.4)."""
        parts = []
        if self.meta_bytes:
            parts += [_section.pack(TAG_META, len(self.meta_bytes)), self.meta_bytes]
        if self.producer:
            parts += [_section.pack(TAG_PRODUCER, len(self.producer)), self.producer]
        if self.lineage:
            entries = b"".join(e.raw for e in self.lineage)
            parts += [_section.pack(TAG_LINEAGE, len(entries)), entries]
        if self.summary is not None:
            s = self.summary
            parts += [
                _section.pack(TAG_SUMMARY, _summary.size),
                _summary.pack(s.count, s.first_at, s.digest),
            ]
        if self.meta_ref is not None:
            parts += [_section.pack(TAG_META_REF, _meta_ref.size), _meta_ref.pack(*self.meta_ref)]
        block = b"".join(parts)
        if len(block) > MAX_PROVENANCE:
            raise BridgeError(
                "too_large",
                "meta",
                len(block),
                MAX_PROVENANCE,
                f"too_large: a provenance block of {len(block)} bytes is over "
                f"{MAX_PROVENANCE}: the call's meta is too large",
            )
        return block

    def producer_map(self) -> dict[str, Any] | None:
        return _map_section("producer", self.producer) if self.producer else None

    def chained(self, frame_id: int) -> tuple[tuple[Entry, ...], Summary | None]:
        """This block's chain as it passes to a frame derived from the frame
        ``frame_id`` that carries it: its newest entry stamped with that id."""
        if not self.lineage:
            return (), self.summary
        return (*self.lineage[:-1], self.lineage[-1].stamped(frame_id)), self.summary

    def describe(self) -> dict[str, Any]:
        return {
            "producer": self.producer_map(),
            "meta": self.meta or {},
            "lineage": [e.describe() for e in self.lineage],
            "summary": None if self.summary is None else self.summary.describe(),
            "meta_ref": None
            if self.meta_ref is None
            else {
                "digest": self.meta_ref[0],
                "length": self.meta_ref[1],
                "found": self.meta_ref in _stored,
            },
        }


def merge_chains(
    chains: Iterable[tuple[tuple[Entry, ...], Summary | None]], newest: Entry | None = None
) -> tuple[tuple[Entry, ...], Summary | None]:
    """The chains of a frame's inputs joined in order (an entry whose call came already
    is dropped, and one older than the oldest entry of a chain with a summary: that
    summary may count it), ``newest`` appended, the oldest past `LINEAGE_MAX`
    summarised (§5.4)."""
    chains = list(chains)
    seen: set[int] = set()
    entries: list[Entry] = []
    summary: Summary | None = None
    cutoff = max((lineage[0].at for lineage, s in chains if s is not None and lineage), default=0)
    for lineage, s in chains:
        if s is not None:
            summary = s if summary is None else summary.joined(s)
        for e in lineage:
            if e.call not in seen and e.at >= cutoff:
                seen.add(e.call)
                entries.append(e)
    if newest is not None:
        entries.append(newest)
    if len(entries) > LINEAGE_MAX:
        dropped, entries = entries[:-LINEAGE_MAX], entries[-LINEAGE_MAX:]
        start = summary if summary is not None else Summary(0, dropped[0].at, 0)
        summary = start.dropping(dropped)
    return tuple(entries), summary


def producer_body(side: str, worker: str | None = None) -> bytes:
    """The ETF body of a ``producer`` section for this process."""
    from . import __version__  # the package imports this module

    body: dict[str, Any] = {
        "side": side,
        "node": os.environ.get("BEAMBRIDGE_NODE", ""),
        "os_pid": os.getpid(),
        "version": __version__,
    }
    if worker is not None:
        body["worker"] = worker
    return etf_encode(body)


def _sections(block: bytes) -> Iterator[tuple[int, bytes]]:
    pos, seen = 0, set()
    while pos < len(block):
        if pos + _section.size > len(block):
            raise _bad("section", f"a section header at offset {pos} runs past the block")
        tag, length = _section.unpack_from(block, pos)
        pos += _section.size
        if length > len(block) - pos:
            name = _SECTIONS.get(tag, "section")
            raise _bad(name, f"section {name} ({length} bytes) runs past the block", length)
        if tag in seen:
            raise _bad(_SECTIONS.get(tag, "section"), f"section tag {tag} comes twice", tag)
        seen.add(tag)
        yield tag, block[pos : pos + length]
        pos += length


def parse_block(block: bytes) -> Block:
    """The sections of a provenance block (check P4): their framing now, their ETF bodies
    when described (a chain passed on is never decoded); unknown tags are skipped."""
    producer = meta = b""
    lineage: tuple[Entry, ...] = ()
    summary = ref = None
    for tag, body in _sections(block):
        if tag == TAG_PRODUCER:
            producer = body  # bodies are read when described
        elif tag == TAG_META:
            meta = body
        elif tag == TAG_LINEAGE:
            lineage = tuple(_entries(body))
        elif tag == TAG_SUMMARY:
            if len(body) != _summary.size:
                raise _bad("summary", f"a summary of {len(body)} bytes, not 24", len(body))
            summary = Summary(*_summary.unpack(body))
        elif tag == TAG_META_REF:
            if len(body) != _meta_ref.size:
                raise _bad("meta_ref", f"a meta_ref of {len(body)} bytes, not 12", len(body))
            ref = _meta_ref.unpack(body)
    if ref is not None and meta:
        raise _bad("meta_ref", "a block with both meta and meta_ref")
    return Block(producer, meta, lineage, summary, None, ref)


def holds_meta(block: bytes) -> bool:
    """Whether a block starts with a meta section over `INLINE_META` bytes: its frame
    sets flag ``HOLDS_META`` (SPEC §5.2, §5.4)."""
    return (
        len(block) >= _section.size
        and block[0] == TAG_META
        and _section.unpack_from(block)[1] > INLINE_META
    )


def remember(block: Block) -> None:
    """Keep the stored meta of a frame with ``HOLDS_META`` (its block read and checked),
    for the frames that name it by ``meta_ref``; the oldest go past `STORED_MAX`."""
    if not block.stored:
        return
    key = (xxhash.xxh3_64_intdigest(block.meta_bytes), len(block.meta_bytes))
    _stored[key] = block.meta_bytes
    _stored.move_to_end(key)
    while len(_stored) > STORED_MAX:
        _stored.popitem(last=False)


def _entries(body: bytes) -> Iterator[Entry]:
    pos = 0
    while pos < len(body):
        if pos + _entry_head.size > len(body):
            raise _bad("lineage", f"an entry at offset {pos} runs past the section")
        size, call, at = _entry_head.unpack_from(body, pos)
        if size < _entry_head.size or size > len(body) - pos:
            raise _bad("lineage", f"an entry of {size} bytes at offset {pos}", size)
        yield Entry(call, at, body[pos : pos + size])  # its body is read when described
        pos += size


def read_block(header: Any, frame: Any) -> Block | None:
    """The provenance block of a frame whose ``header`` passed header validation, read
    from ``frame`` (bytes-like, the frame from offset 0), or None when it has none
    (checks P1-P4 of §5.4). The stored meta of a frame with ``HOLDS_META`` is kept
    (`remember`)."""
    length = getattr(header, "provenance_length", 0)
    if header.version_minor == 0 or length == 0:
        return None
    start = 128 + header.metadata_length
    if length > MAX_PROVENANCE or start + length > header.payload_offset:
        raise HeaderError(
            "provenance_out_of_bounds",
            "provenance_length",
            length,
            min(MAX_PROVENANCE, max(header.payload_offset - start, 0)),
        )
    with memoryview(frame).cast("B") as view:
        if start + length > view.nbytes:
            raise HeaderError(
                "provenance_out_of_bounds", "provenance_length", length, max(view.nbytes - start, 0)
            )
        block = bytes(view[start : start + length])
    computed = xxhash.xxh3_64_intdigest(block)
    if computed != header.provenance_checksum:
        raise HeaderError(
            "provenance_checksum_mismatch",
            "provenance_checksum",
            header.provenance_checksum,
            computed,
        )
    read = parse_block(block)
    if header.flags & _FLAG_HOLDS_META:  # the frames after it name its meta (§5.4)
        remember(read)
    return read


def _map_section(name: str, body: bytes) -> dict[str, Any]:
    try:
        value = etf_decode(body)
    except EtfError as err:
        raise _bad(name, f"section {name} does not decode: {err}") from None
    if type(value) is not dict:
        raise _bad(name, f"section {name} is not a map: {value!r:.80}")
    return {_text(k): as_text(v) for k, v in value.items()}


def _text(v: Any) -> Any:
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return v
    return v


def as_text(v: Any) -> Any:
    """``v`` with binaries that are UTF-8 read as ``str``, in lists, tuples and maps
    too (ETF binaries decode to ``bytes``)."""
    if isinstance(v, bytes):
        return _text(v)
    if isinstance(v, list):
        return [as_text(x) for x in v]
    if isinstance(v, tuple):
        return tuple(as_text(x) for x in v)
    if isinstance(v, dict):
        return {_text(k): as_text(x) for k, x in v.items()}
    return v
