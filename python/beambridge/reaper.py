"""Reaping regions whose owner died (protocol/SPEC.md §1.5).

>>> reap_stale(prefix="bbdoc")
[]
"""

from __future__ import annotations

import contextlib
import os
import stat

import posix_ipc

from .control_block import (
    CB_SIZE,
    check_prefix,
    parse_control_block,
    parse_name,
    process_start_time,
)
from .errors import RegionError

__all__ = ["reap_stale"]

_MAX_PID = 2**31 - 1


def reap_stale(prefix: str = "bb", *, shm_dir: str = "/dev/shm") -> list[str]:
    """Unlink every region of ``prefix`` whose owner process is dead; return their names.

    A region is reaped when its owner pid (from the name) does not exist (``ESRCH``), is a
    zombie (exited, not yet waited for by its parent), or exists but started at another
    time than the control block's ``owner_start_time`` says (the pid was reused). Regions
    of this process, of live owners, with an invalid control block, objects owned by
    another uid, and names that do not match the region pattern are left alone.
    """
    check_prefix(prefix)
    me = os.getpid()
    reaped = []
    for entry in sorted(os.listdir(shm_dir)):
        parsed = parse_name("/" + entry)
        if parsed is None or parsed[0] != prefix:
            continue
        pid = parsed[1]
        if pid == me or not 0 < pid <= _MAX_PID:
            continue
        if _owner_dead(os.path.join(shm_dir, entry), pid):
            with contextlib.suppress(posix_ipc.ExistentialError):
                posix_ipc.unlink_shared_memory("/" + entry)
                reaped.append("/" + entry)
    return reaped


def _is_zombie(pid: int) -> bool:
    """True when ``/proc/<pid>/stat`` shows state ``Z`` (dead, not yet reaped by its
    parent: ``kill(pid, 0)`` still succeeds)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        return stat_line[stat_line.rindex(b")") + 2 : stat_line.rindex(b")") + 3] == b"Z"
    except (OSError, ValueError):
        return False


def _owner_dead(path: str, pid: int) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return False  # not ours to judge (as root: another user's region)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # it exists, owned by someone else
        if _is_zombie(pid):
            return True  # exited, not yet waited for: it will never use a region again
        raw = os.pread(fd, CB_SIZE, 0)
    except OSError:
        return False
    finally:
        os.close(fd)
    try:
        cb = parse_control_block(raw, st.st_size)
    except RegionError:
        return False
    if cb.owner_start_time == 0:
        return False
    actual = process_start_time(pid)
    # 0: /proc says nothing (gone this instant, or no procfs): judge again next start
    return actual != 0 and actual != cb.owner_start_time
