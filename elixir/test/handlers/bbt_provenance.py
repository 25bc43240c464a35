"""Handlers for elixir/test/bridge_provenance_test.exs: results that travel in slices,
and what a handler sees of its call's provenance (protocol/SPEC.md §5.4)."""

from __future__ import annotations

from typing import Any

import beambridge
import beambridge.frame
import numpy as np
import pyarrow as pa


def blob(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def same(data: bytes) -> bytes:
    """A new frame holding the argument's bytes: the next link of a chain."""
    return bytes(data)


def tensor(n: int) -> Any:
    return np.arange(n, dtype=np.float32)


def table(n: int) -> Any:
    return pa.table({"x": pa.array(range(n), type=pa.int64())})


def meta() -> dict[str, Any]:
    return beambridge.meta()


def annotate(key: str, value: Any, n: int) -> bytes:
    """Adds a key to the call's meta: the result frame carries it."""
    beambridge.meta()[key] = value
    return blob(n)


def describe_arg(data: Any) -> dict[str, Any]:
    """What the frame of an argument the BEAM wrote says (`beambridge.frame.describe`)."""
    d = beambridge.frame.describe(data)
    return {k: d[k] for k in ("format", "producer", "meta", "lineage", "frame_id")}


def blobs(count: int, n: int) -> list[bytes]:
    """``count`` results, each in a frame of its own."""
    return [blob(n) for _ in range(count)]


def describe_args(*args: Any) -> list[dict[str, Any]]:
    """The meta and the provenance length each argument's frame says it has."""
    out = []
    for a in args:
        d = beambridge.frame.describe(a)
        out.append({"meta": d["meta"], "provenance": d["lengths"]["provenance"],
                    "meta_ref": d["meta_ref"]})  # fmt: skip
    return out


def chunks(n: int, count: int) -> Any:
    """A result stream of ``count`` frames (run with stream: true)."""
    for _ in range(count):
        yield blob(n)
