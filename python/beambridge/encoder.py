"""Results: Python values to data terms (protocol/SPEC.md §9, §10, §10.1).

`ResultEncoder` sends ``bytes``/``bytearray``/``memoryview`` as binaries, ``ndarray``
(`beambridge.formats.tensor.Bundle`, ``COO``) as tensors, ``pyarrow.Table``,
``RecordBatch`` and ``pandas.DataFrame`` as Arrow streams, values of a registered class
as custom payloads, and, under the call's format policy, number lists packed and record
lists / column maps as records. A payload at or above the threshold goes into a slice
(`beambridge.result_slices.ResultSlices`) and the term holds a handle
``{:"$bb_slice", kind, index}`` naming the answer's ``slices`` entry; below it, or when
no slice can be had, it goes inline, the same type either way (invariant 7).
`beambridge.stats.format_stats` counts every decision.

>>> from beambridge.etf import decode, encode_parts
>>> enc = ResultEncoder(policy="packed")
>>> decode(b"".join(encode_parts([1, 2, 300], enc)))
(Atom('$bb_packed'), b'<i2', b'\\x01\\x00\\x02\\x00,\\x01')
>>> enc.policy = "etf"
>>> decode(b"".join(encode_parts([1, 2, 300], enc)))
[1, 2, 300]
>>> decode(b"".join(encode_parts(np.arange(3, dtype=np.uint8), enc)))
(Atom('$bb_tensor'), {b'dtype': b'|u1', b'shape': [3], b'order': b'C'}, b'\\x00\\x01\\x02')
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from .encoder_formats import FormatEncoder
from .errors import FormatUnsuitableError
from .etf import encode_binary
from .formats import packed as packed_format
from .formats import records as records_format
from .formats import selection
from .header import Format
from .result_slices import ResultSlices
from .stats import RESULTS, note
from .terms import (
    DEFAULT_THRESHOLD,
    KIND_PACKED,
    KIND_RECORDS,
    LAYOUT_COLUMNS,
    LAYOUT_ROWS,
    POLICIES,
    TAG_PACKED,
    TAG_RECORDS,
)

__all__ = ["FormatUnsuitableError", "ResultEncoder"]


class ResultEncoder(FormatEncoder):
    """Encodes a handler's result: the typed values as `FormatEncoder` does (each
    payload of at least ``threshold`` bytes into a slice of ``slices``, None:
    everything inline), lists and dicts as SPEC §10.1 selects.

    ``policy`` (one of ``auto``, ``etf``, ``packed``, ``arrow``; set per call from the
    ``"format"`` call option) selects the forms of SPEC §10.1: under ``auto`` a number
    list of at least ``packed_min`` elements goes packed and a record list or column
    map of at least ``records_min`` cells goes as records; ``etf`` sends every list and
    map as ETF; ``packed`` packs every number list, ``arrow`` sends every record list
    and column map as records (and a list of maps or map of lists that does not
    qualify raises `FormatUnsuitableError`), each leaving the other kind of candidate
    to ``auto``. Values of a class with a registered serializer go as custom payloads
    whatever the policy.
    """

    def __init__(
        self,
        slices: ResultSlices | None = None,
        threshold: int = DEFAULT_THRESHOLD,
        *,
        policy: str = POLICIES[0],
        packed_min: int = selection.DEFAULT_PACKED_MIN,
        records_min: int = selection.DEFAULT_RECORDS_MIN,
    ) -> None:
        super().__init__(slices, threshold)
        self._packed_min = packed_min
        self._records_min = records_min
        self.policy = policy

    @property
    def policy(self) -> str:
        """The format policy: ``auto``, ``etf``, ``packed`` or ``arrow``."""
        return self._policy

    @policy.setter
    def policy(self, policy: str) -> None:
        if policy not in POLICIES:
            raise ValueError(f"format policy {policy!r} is not one of {', '.join(POLICIES)}")
        self._policy = policy
        self._select = policy != "etf"
        # lists shorter than this, and record lists / column maps of fewer cells (by
        # their first row / first column), are never examined: ETF whatever they hold
        self._list_min = 2 if policy == "packed" else max(2, self._packed_min)
        self._cells_min = 0 if policy == "arrow" else self._records_min

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

    # ---- the §10.1 candidates: lists and dicts -----------------------------------------

    hooks = True

    #: The value `_selected` is sending as ETF right now: the hooks pass it over once.
    _as_etf: Any = None

    def list_hook(self, v: list[Any], parts: list[Any], depth: int) -> bool:
        """Send a list packed or as records when it is a candidate the policy selects; a
        list of values of one typed schema as one SSZ list, whatever the policy."""
        if v is self._as_etf:
            self._as_etf = None
            return False
        if v and hasattr(type(v[0]), "__bb_schema__") and self.schema_list(v, parts):
            return True
        if v and self._select:
            first = type(v[0])
            decision: str | bool = False
            if first is int or first is float:
                if len(v) >= self._list_min:
                    decision = self._numbers(v, parts)
            elif first is dict and len(v) * len(v[0]) >= self._cells_min:
                plan = records_format.plan_rows(v)
                decision = self._records_or_reason(plan, "list of maps", parts)
            return decision is not False and self._selected(decision, v, parts, depth)
        return False

    def dict_hook(self, v: dict[Any, Any], parts: list[Any], depth: int) -> bool:
        """Send a dict as records when it is a column map the policy selects."""
        if v is self._as_etf:
            self._as_etf = None
            return False
        if v and self._select:
            first_value = next(iter(v.values()))
            if type(first_value) is list and len(first_value) * len(v) >= self._cells_min:
                plan = records_format.plan_columns(v)
                decision = self._records_or_reason(plan, "map of lists", parts)
                return self._selected(decision, v, parts, depth)
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
        note(RESULTS, "etf", decision, size, f"{len(v)} elements")
        return True

    def _numbers(self, v: list[Any], parts: list[Any]) -> str | bool:
        """Send a list of at least ``_list_min`` elements whose first is a number packed
        when it is a number list (True); else the reason it stays ETF."""
        numbers = packed_format.classify_numbers(v)
        if isinstance(numbers, selection.Unsuitable):
            return numbers.code
        reason = "forced" if self._policy == "packed" else "auto"
        self.packed(packed_format.pack(v, numbers.dtype), parts, reason)
        return True

    def packed(self, arr: np.ndarray[Any, Any], parts: list[Any], reason: str = "auto") -> None:
        """A 1-D array of one of the packed dtypes as ``{:"$bb_packed", dtype, data}``, or
        a slice of kind ``packed`` (a schema-0 tensor frame) at or above the threshold."""
        data = memoryview(arr.data).cast("B")
        dtype = arr.dtype.str
        in_slice = self._placed(
            KIND_PACKED,
            data,
            parts,
            what=f"a {data.nbytes}-byte packed list",
            metadata=packed_format.packed_metadata(dtype, len(arr)),
            format=Format.TENSOR,
            schema_id=packed_format.SCHEMA[0],
            schema_version=packed_format.SCHEMA[1],
        )
        if not in_slice:
            parts.append(b"h\x03")
            self.encode_into(TAG_PACKED, parts)
            encode_binary(dtype.encode(), parts)
            encode_binary(data, parts)
        where = "slice" if in_slice else "inline"
        note(RESULTS, "packed", reason, data.nbytes, f"{len(arr)} elements {dtype}, {where}")

    def _records_or_reason(
        self,
        plan: records_format.RecordsPlan | selection.Unsuitable,
        what: str,
        parts: list[Any],
    ) -> str | bool:
        forced = self._policy == "arrow"
        if isinstance(plan, records_format.RecordsPlan):
            try:
                self.records(plan, parts, "forced" if forced else "auto")
                return True
            except ValueError as exc:  # pyarrow refused a value the checks let through
                plan = selection.Unsuitable("unsupported_value", str(exc))
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
        a slice of kind ``records`` (an ``arrow_stream`` frame) at or above the
        threshold. ``ValueError`` (nothing appended) if pyarrow refuses a value."""
        import pyarrow as pa

        from .formats import arrow as arrow_format

        table = records_format.to_table(plan)
        layout = LAYOUT_ROWS if plan.layout == "rows" else LAYOUT_COLUMNS
        what = f"{plan.layout}, {plan.num_rows} x {len(plan.names)}"
        if self.slices is not None:
            counter = pa.MockOutputStream()
            arrow_format.write_stream(counter, table, table.schema)
            size = counter.size()
            metadata = records_format.records_metadata(plan.layout, plan.num_rows, len(plan.names))
            stream = arrow_format.StreamPlan(table, table.schema, size, metadata)
            if self._placed(
                KIND_RECORDS,
                lambda area: arrow_format.write_stream_into(area, stream),
                parts,
                nbytes=size,
                what=f"a {size}-byte records stream",
                metadata=metadata,
                format=Format.ARROW_STREAM,
            ):
                note(RESULTS, "records", reason, size, what + ", slice")
                return
        sink = pa.BufferOutputStream()
        arrow_format.write_stream(sink, table, table.schema)
        data = sink.getvalue()
        parts.append(b"h\x03")
        self.encode_into(TAG_RECORDS, parts)
        self.encode_into(layout, parts)
        encode_binary(memoryview(data), parts)
        note(RESULTS, "records", reason, data.size, what + ", inline")
