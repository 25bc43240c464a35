"""Opening a tensor in place costs the same at 1 GiB as at 1 KiB (zero-copy).

    python bench/tensor_open.py [GIB]   -> "<bytes> <median seconds>" per size

An arena slice holding one tensor is opened and read the way a worker reads an argument
(open the owner's arena through /proc, read_frame, read_tensor: a read-only ndarray view
over the mapping) and the view is dropped again; the median over repeats is printed for
a 1 KiB and a 1 GiB float32 tensor. Opening maps the arena; nothing touches the payload,
so the time must not grow with its size.
"""

from __future__ import annotations

import statistics
import sys
import time

import numpy as np
from beambridge.arena import ArenaSet, PeerObject
from beambridge.formats.tensor import read_tensor, write_tensor


def open_time(nbytes: int, repeats: int = 200) -> float:
    array = np.ones(nbytes // 4, dtype=np.float32)
    owner = ArenaSet(limit=nbytes + (64 << 20), min_arena=1 << 20)
    try:
        s = write_tensor(owner, array, checksum=False)
        del array
        announcement = owner.announcement(s.object_id)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            peer = PeerObject.open(*announcement)
            frame = peer.read_frame(s.offset, s.length, s.generation, verify=False)
            view = read_tensor(frame)
            assert view.shape[0] == nbytes // 4 and not view.flags.writeable
            t1 = time.perf_counter()
            del view
            frame.release()
            peer.close()
            times.append(t1 - t0)
        return statistics.median(times)
    finally:
        owner.close()


if __name__ == "__main__":
    gib = int(sys.argv[1]) if len(sys.argv) > 1 else 1
    for size in (1024, gib << 30):
        print(size, f"{open_time(size):.9f}")
