"""What the frames of the call in flight say of it (protocol/SPEC.md §5.4): who wrote
them, the call's user metadata (`meta`) and the lineage of its argument frames with one
entry for the call.

The worker starts a record per call (`CallRecord.begin`); the decoder tells it each
argument frame it reads (`CallRecord.input`); the result's writers ask for the block
(`CallRecord.block`), made once per call on the first frame written, so a call that
writes no frame pays for nothing but `begin`.

>>> record = CallRecord("python", "w1")
>>> record.begin("stats", "mean", {"round": 12})
>>> meta()
{'round': 12}
>>> from beambridge.provenance import parse_block
>>> block = parse_block(record.block())
>>> block.meta, [e.body()["handler"] for e in block.lineage]
({'round': 12}, ['stats.mean'])
>>> record.end()
>>> meta()
{}
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import xxhash

from .errors import BridgeError
from .header import FLAG_HOLDS_META
from .provenance import (
    Block,
    as_text,
    merge_chains,
    new_entry,
    next_call_id,
    parse_block,
    producer_body,
    remember,
)

__all__ = ["CallRecord", "current_block", "meta"]

_log = logging.getLogger("beambridge")
_current: CallRecord | None = None


def meta() -> dict[str, Any]:
    """The user metadata of the call in flight, as a handler sees it: the call's
    ``meta:`` option, else the metadata its first argument frame carried (SPEC §5.4).

    The dict is the one the call's result frames carry: a key a handler sets on it is
    on the result. Outside a call it is an empty dict of its own.

    >>> meta()
    {}
    """
    record = _current
    return {} if record is None else record.meta()


def current_block() -> bytes:
    """The provenance block of the call in flight's result frames, or of a frame this
    process writes outside a call (its producer alone)."""
    record = _current
    if record is None:
        return Block.build(producer=producer_body("python")).encode()
    return record.block(full=True)


class CallRecord:
    """The provenance of the frames of one call at a time, for one producer."""

    def __init__(self, side: str, worker: str | None = None) -> None:
        worker = worker if worker is not None else os.environ.get("BEAMBRIDGE_WORKER_ID")
        self.producer = producer_body(side, worker)
        self.worker = worker or ""
        self.call = 0
        self.handler = ""
        self._given: dict[str, Any] | None = None
        self._meta: dict[str, Any] | None = None
        self._inputs: list[tuple[int, int, bytes]] = []
        self._block: bytes | None = None
        self._ref_block: bytes | None = None
        self._held = False
        self._written: dict[str, Any] | None = None
        self._parsed: list[tuple[int, Block]] | None = None

    def begin(self, module: Any, function: Any, given: dict[str, Any] | None) -> None:
        """Start the record of a call of ``module.function`` with the ``meta`` option
        ``given`` (None: none); it becomes the one `meta` reads."""
        global _current
        self.call = next_call_id()
        self.handler = f"{_name(module)}.{_name(function)}"
        self._given = None if given is None else as_text(given)
        self._meta = None
        self._inputs = []
        self._block = None
        self._parsed = None
        _current = self

    def end(self) -> None:
        """The call is over: `meta` no longer reads this record."""
        global _current
        if _current is self:
            _current = None

    def input(self, header: Any, block: bytes) -> None:
        """An argument frame the call reads: its header and provenance block (a copy,
        checked against the header's ``provenance_checksum`` when it is used)."""
        if block and header.flags & FLAG_HOLDS_META:  # the frames after it name its meta
            with contextlib.suppress(BridgeError):
                if xxhash.xxh3_64_intdigest(block) == header.provenance_checksum:
                    remember(parse_block(block))
        self._inputs.append((header.frame_id, header.provenance_checksum, block))
        self._block = None
        self._parsed = None

    def meta(self) -> dict[str, Any]:
        if self._meta is None:
            if self._given is not None:
                self._meta = dict(self._given)
            else:
                self._meta = dict(self._inherited() or {})
        return self._meta

    def block(self, full: bool = False) -> bytes:
        """The provenance block of the call's next result frame: the first holds a meta
        over `beambridge.provenance.INLINE_META` bytes, the others name it (SPEC §5.4);
        ``full``: the one that holds it, whatever came before."""
        if self._block is None or (self._meta is not None and self._meta_changed()):
            blocks = self._blocks()
            chains = [b.chained(frame_id) for frame_id, b in blocks]
            inputs = [frame_id for frame_id, _, _ in self._inputs]
            lineage, summary = merge_chains(
                chains, new_entry(self.call, self.handler, self.worker, inputs)
            )
            self._written = dict(self.meta())
            try:
                built = Block.build(
                    producer=self.producer, meta=self._written, lineage=lineage, summary=summary
                )
                self._block = built.encode()
                self._ref_block = built.referring().encode() if built.stored else None
                self._held = False
            except (ValueError, TypeError) as err:  # a value ETF cannot hold
                raise BridgeError(
                    "badarg",
                    "meta",
                    None,
                    None,
                    f"badarg: the call's meta cannot go in its result frames: {err}",
                ) from None
        if self._ref_block is None or full:
            return self._block
        if self._held:
            return self._ref_block
        self._held = True
        return self._block

    def _inherited(self) -> dict[str, Any] | None:
        """The metadata of the first argument frame that has one (SPEC §5.4)."""
        for _, b in self._blocks():
            try:
                if b.meta:
                    return b.meta
            except BridgeError as err:  # an argument's provenance is not the call's
                _log.warning("an argument frame's metadata is unreadable: %s", err)
        return None

    def _meta_changed(self) -> bool:
        return self._written != self._meta

    def _blocks(self) -> list[tuple[int, Block]]:
        if self._parsed is None:
            self._parsed = []
            for frame_id, checksum, raw in self._inputs:
                if not raw:
                    continue
                if xxhash.xxh3_64_intdigest(raw) != checksum:
                    _log.warning("an argument frame's provenance does not match its checksum")
                    continue
                try:
                    self._parsed.append((frame_id, parse_block(raw)))
                except BridgeError as err:  # an argument's provenance is not the call's
                    _log.warning("an argument frame's provenance is unreadable: %s", err)
        return self._parsed


def _name(v: Any) -> str:
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return str(v)
