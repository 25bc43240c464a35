"""Python half of the demo: open the BEAM's arena read-only and read a frame in place."""

from __future__ import annotations

import sys
import time

import numpy as np
from beambridge.arena import PeerObject


def main(
    pid: int, fd: int, oid: int, size: int, nonce: int, off: int, length: int, gen: int
) -> None:
    t0 = time.perf_counter()
    arena = PeerObject.open("arena", pid, fd, oid, size, nonce)
    t1 = time.perf_counter()
    try:
        with arena.read_frame(off, length, gen, verify=True) as frame:
            t2 = time.perf_counter()
            view = np.frombuffer(frame.payload, dtype=np.uint8)
            n = len(frame.payload)
            print(
                f"Python: opened /proc/{pid}/fd/{fd} read-only and mapped it in "
                f"{(t1 - t0) * 1e3:.2f} ms; read {n / 2**20:.0f} MiB in place: checksum "
                f"verified in {(t2 - t1) * 1e3:.1f} ms ({n / max(t2 - t1, 1e-9) / 1e9:.1f} GB/s), "
                f"metadata {frame.metadata!r}"
            )
            print(
                f"Python: payload is a read-only view at 0x{view.ctypes.data:x} "
                f"(64-byte aligned: {view.ctypes.data % 64 == 0}), first bytes {view[:8].tolist()}"
            )
            del view
    finally:
        arena.close()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:9]))
