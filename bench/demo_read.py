"""Python half of the demo: attach to a region by name and read its frame in place."""

from __future__ import annotations

import sys
import time

import numpy as np
from beambridge import Region


def main(name: str) -> None:
    region = Region.attach(name)
    try:
        t0 = time.perf_counter()
        with region.read_frame(verify=True) as frame:
            t1 = time.perf_counter()
            view = np.frombuffer(frame.payload, dtype=np.uint8)
            n = len(frame.payload)
            print(
                f"Python: read {n / 2**20:.0f} MiB in place from {name}: "
                f"checksum verified in {(t1 - t0) * 1e3:.1f} ms "
                f"({n / max(t1 - t0, 1e-9) / 1e9:.1f} GB/s), metadata {frame.metadata!r}"
            )
            print(
                f"Python: payload is a read-only view at 0x{view.ctypes.data:x} "
                f"(64-byte aligned: {view.ctypes.data % 64 == 0}), first bytes {view[:8].tolist()}"
            )
            del view
    finally:
        region.close()


if __name__ == "__main__":
    main(sys.argv[1])
