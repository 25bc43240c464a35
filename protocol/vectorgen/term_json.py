"""SPEC §14's term JSON: how a vector's JSON states a value, and the ``error`` of a bad
control or term vector.

A bad control or term vector's ``error`` is ``{"reason", "field"}`` when one side's code
alone refuses it, or ``{"beam": {"kind", "reason", "field"}, "worker": {"reason",
"field"}}`` when both sides' code refuses it in its own words: ``beam`` is what
elixir/lib answers (``Bridge.Control.split/1`` and ``Bridge.Worker`` for control frames,
``Bridge.Decoder.decode_result/3`` for terms), ``worker`` what python/beambridge answers
(``beambridge.control.split`` with ``from_beam`` or ``from_worker``; ``etf.decode`` and
``beambridge.decoder.Decoder``). Only the ``worker`` half is checked by the generator; the
Elixir suite checks the ``beam`` half. A vector whose two sides disagree with SPEC carries
``"xfail": why``; it is written as SPEC says and both suites skip it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from beambridge.etf import Atom


@dataclass(frozen=True)
class MapOf:
    """A map given by its pairs, for keys a Python ``dict`` cannot hold apart (a list;
    ``1`` and ``1.0``)."""

    pairs: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class TensorOf:
    """The tensor a receiver makes: dtype, shape, order and the bytes in that order."""

    dtype: str
    shape: tuple[int, ...]
    order: str
    data: bytes


def term_json(value: Any) -> Any:
    """SPEC §14's term JSON of a value as the Python side holds it. A map's pairs are
    sorted by the compact JSON text of the key's rendering."""
    if value is True or value is False or value is None:
        return {"atom": {True: "true", False: "false", None: "nil"}[value]}
    kind = type(value)
    if kind is int:
        return {"int": value}
    if kind is float:
        return {"float": value}
    if kind is Atom:
        return {"atom": str(value)}
    if kind in (bytes, bytearray, memoryview):
        return {"bin": bytes(value).hex()}
    if kind is list:
        return {"list": [term_json(v) for v in value]}
    if kind is tuple:
        return {"tuple": [term_json(v) for v in value]}
    if kind is dict:
        return _map_json(value.items())
    if kind is MapOf:
        return _map_json(value.pairs)
    if kind is TensorOf:
        return _tensor_json(value.dtype, value.shape, value.order, value.data)
    if isinstance(value, np.ndarray):
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        return _tensor_json(value.dtype.str, value.shape, order, value.tobytes(order=order))
    raise TypeError(f"no term JSON for {type(value)}")


def _map_json(pairs: Any) -> dict[str, Any]:
    rendered = [[term_json(k), term_json(v)] for k, v in pairs]
    rendered.sort(key=lambda pair: json.dumps(pair[0], sort_keys=True, separators=(",", ":")))
    return {"map": rendered}


def _tensor_json(dtype: str, shape: Any, order: str, data: bytes) -> dict[str, Any]:
    dims = [int(d) for d in shape]
    return {"tensor": {"dtype": dtype, "shape": dims, "order": order, "bin": data.hex()}}


def error_json(beam: dict[str, str] | None, worker: dict[str, str] | None) -> dict[str, Any]:
    """A bad vector's ``error`` (see above): one side's, or both sides'."""
    if beam is None or worker is None:
        return dict(beam or worker or {})
    return {"beam": dict(beam), "worker": dict(worker)}
