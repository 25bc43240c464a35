"""Writes the nested-table benchmark's Arrow IPC stream (bench/nested.exs):

    python bench/nested_table.py N PATH

N rows of two columns, in one record batch: ``items``, a list<struct<sku: string,
qty: int32, price: float64>> of 0..3 items a row (1.5 on average), and ``emb``, a
fixed_size_list<float32, 768> embedding. Deterministic: the same N gives the same bytes.
"""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

DIM = 768


def table(n: int) -> pa.Table:
    counts = np.arange(n, dtype=np.int64) % 4
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    total = int(offsets[-1])
    j = np.arange(total)
    skus = pa.array([f"sku-{k}" for k in (j % 1000).tolist()], pa.string())
    items = pa.StructArray.from_arrays(
        [skus, pa.array((j % 10).astype(np.int32)), pa.array(j * 0.25)],
        names=["sku", "qty", "price"],
    )
    emb = np.random.default_rng(7).standard_normal((n, DIM), dtype=np.float32)
    return pa.table(
        {
            "items": pa.ListArray.from_arrays(pa.array(offsets), items),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), DIM),
        }
    )


def main() -> None:
    n, path = int(sys.argv[1]), sys.argv[2]
    t = table(n)
    with ipc.new_stream(path, t.schema) as writer:
        writer.write_table(t, max_chunksize=n)


if __name__ == "__main__":
    main()
