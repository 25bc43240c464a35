"""Handlers that attack shared memory (elixir/test/bridge_hostile_test.exs).

Each does what a buggy or hostile handler running as the BEAM's user can do: reopen
every shared object it can reach read-write (its own descriptors in /proc/self/fd,
the BEAM's through /proc/<pid>/fd, anything of its uid in /dev/shm), then try to
truncate, grow, seal, remap and scribble on it. They report what the kernel refused.
"""

import contextlib
import ctypes
import mmap
import os
import threading
import time

_libc = ctypes.CDLL(None, use_errno=True)


def _targets():
    """(path, description) of every shared object reachable from this process."""
    seen = []
    pids = ["self", str(os.getppid())]
    # the BEAM: the parent of our parent, OTP's erl_child_setup
    with contextlib.suppress(OSError), open(f"/proc/{os.getppid()}/stat") as f:
        pids.append(f.read().rsplit(")", 1)[1].split()[1])
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                path = f"/proc/{pid}/fd/{fd}"
                with contextlib.suppress(OSError):
                    if os.readlink(path).startswith(("/memfd:", "/dev/shm/")):
                        seen.append(path)
    with contextlib.suppress(OSError):
        seen += [f"/dev/shm/{n}" for n in os.listdir("/dev/shm")]
    return seen


def _attack(path, scribble):
    """Try everything on one object; return what worked."""
    done = []
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return done
    try:
        size = os.fstat(fd).st_size
        for new in (0, 4096, size + (1 << 20)):
            with contextlib.suppress(OSError):
                os.ftruncate(fd, new)
                done.append(f"truncate {new}")
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, size, 1 << 20)
            done.append("grow")
        if scribble and size:
            with contextlib.suppress(OSError, ValueError):
                m = mmap.mmap(fd, size)
                step = 4096
                for off in range(64, size, step):
                    m[off : off + 8] = b"\xffSCRIBBL"
                m.close()
                done.append("scribble")
    finally:
        os.close(fd)
    return done


def truncate_everything():
    """Resize every object it can reach; return the paths where that worked."""
    hits = []
    for path in _targets():
        if any(a.startswith(("truncate", "grow")) for a in _attack(path, scribble=False)):
            hits.append(path)
    return [h.encode() for h in hits]


def scribble_everything():
    """Overwrite bytes of every object it can write; return how many it wrote."""
    return sum("scribble" in _attack(path, scribble=True) for path in _targets())


#: The threads result_then_scribble started, for scribblers_done.
_scribblers: list[threading.Thread] = []


def result_then_scribble(n, delay):
    """Return n bytes of 0x01, then (from a thread, after `delay` s) attack every object."""

    def later():
        time.sleep(delay)
        for path in _targets():
            _attack(path, scribble=True)

    thread = threading.Thread(target=later, daemon=True)
    _scribblers.append(thread)
    thread.start()
    return b"\x01" * n


def scribblers_done():
    """Wait until every thread result_then_scribble started has finished its attack."""
    while _scribblers:
        _scribblers.pop().join()
    return True


def write_through_view(view):
    """Try to write through a read-only argument view: the array's base, ctypes, mprotect."""
    import numpy as np

    refused = []
    arr = np.frombuffer(view, dtype=np.uint8)
    try:
        arr.flags.writeable = True
    except ValueError:
        refused.append(b"writeable")
    base = view.obj
    while hasattr(base, "base") and base.base is not None:
        base = base.base
    try:
        memoryview(base)[64:65] = b"x"
    except TypeError:
        refused.append(b"base")
    try:
        ctypes.c_char.from_buffer(base)
    except TypeError:
        refused.append(b"ctypes")
    address = arr.__array_interface__["data"][0] & ~4095
    if _libc.mprotect(ctypes.c_void_p(address), 4096, 3) != 0:
        refused.append(b"mprotect")
    return refused


def _own_lane():
    """A writable mapping of this worker's lane, reopened through the BEAM's descriptor
    (the worker maps it, so its inode is in /proc/self/maps)."""
    with open("/proc/self/maps") as f:
        inodes = {int(line.split()[4]) for line in f if "memfd:beambridge-lane" in line}
    for path in _targets():
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino in inodes:
                fd = os.open(path, os.O_RDWR)
                try:
                    return mmap.mmap(fd, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
    raise RuntimeError("no lane found: the pool gave this worker none")


def forge_lane_answer(kind):
    """Publish a forged answer to the call in flight in this worker's lane and ring the
    BEAM on the worker's own channel, then wait for the BEAM to read it: ``length``
    claims more bytes than the area holds, ``garbage`` is bytes that are no frame."""
    import gc

    from beambridge import control
    from beambridge.registry import LANE

    m = _own_lane()
    words = memoryview(m)[: LANE["call_area"]].cast("Q")
    seq = words[LANE["call_seq"] // 8]
    if kind == b"length":
        words[LANE["answer_len"] // 8] = 1 << 40
    else:
        area = LANE["answer_area"]
        m[area : area + 64] = b"\x00\x00\x00\x3c" + b"\xfe" * 60
        words[LANE["answer_len"] // 8] = 64
    words[LANE["answer_seq"] // 8] = seq
    # the worker runs as __main__: its class is found by name
    found = [o for o in gc.get_objects() if type(o).__name__ == "Worker"]
    (worker,) = [o for o in found if hasattr(o, "out_fd")]
    ring = b"".join(control.join(control.lane_ring()))
    os.write(worker.out_fd, len(ring).to_bytes(4, "big") + ring)
    time.sleep(0.5)
    words.release()
    m.close()
    return "forged"
