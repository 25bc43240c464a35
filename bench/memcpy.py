"""memcpy reference: median time NumPy takes to copy N bytes between two warm buffers.

python bench/memcpy.py SIZE...   -> one line per size: "<size> <seconds>"
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np


def measure(n: int) -> float:
    src = np.ones(n, dtype=np.uint8)
    dst = np.empty(n, dtype=np.uint8)
    np.copyto(dst, src)  # warm both
    reps = max(3, min(200, (256 << 20) // max(n, 1)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(arg, f"{measure(int(arg)):.9f}")
