"""Memory that cannot be had is the typed error ``no_space`` at creation, never a SIGBUS
on first touch and never a leftover (protocol/SPEC.md §1 step 1).

An object reserves its pages with ``posix_fallocate`` before anything is mapped. memfd
pages are not counted against /dev/shm and are bounded by the cgroup's memory limit,
which a test cannot lower safely; so the failing call is simulated with the errors the
kernel gives (ENOSPC, ENOMEM), and the reservation itself is checked on a real object.
"""

from __future__ import annotations

import errno
import os

import pytest
from beambridge.arena import ArenaSet, SharedObject, fd_count
from beambridge.errors import ArenaError
from beambridge.header import HEADER_SIZE
from beambridge.objects import KIND_ARENA, OBJECT_HEADER
from beambridge.result_slices import ResultSlices, WorkerArenas
from beambridge.stats import RESULTS, format_stats, reset_format_stats

MIB = 1 << 20


def _refuse(code: int) -> object:
    def fallocate(fd: int, offset: int, length: int) -> None:
        raise OSError(code, os.strerror(code))

    return fallocate


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.ENOMEM])
def test_pages_that_cannot_be_reserved_are_no_space_at_creation(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    before = fd_count()
    monkeypatch.setattr(os, "posix_fallocate", _refuse(code))
    with pytest.raises(ArenaError) as info:
        SharedObject(8 * MIB, KIND_ARENA)
    err = info.value
    assert (err.reason, err.field, err.value, err.errno) == (
        "no_space",
        "object_size",
        8 * MIB,
        code,
    )
    assert isinstance(err, OSError)
    assert str(err).startswith("no_space: cannot reserve 8388608 bytes of shared memory")
    assert "lower the arena limit" in str(err)  # says what to do
    assert fd_count() == before  # the memfd was closed: nothing is left behind


def test_another_os_error_is_its_errno_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _refuse(errno.EIO))
    with pytest.raises(ArenaError) as info:
        SharedObject(4096, KIND_ARENA)
    assert (info.value.reason, info.value.errno) == ("eio", errno.EIO)


def test_an_arena_set_that_cannot_grow_is_no_space_and_keeps_its_arenas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    arenas = ArenaSet(limit=64 * MIB, min_arena=MIB)
    try:
        small = arenas.put(b"x" * 1000)
        monkeypatch.setattr(os, "posix_fallocate", _refuse(errno.ENOSPC))
        with pytest.raises(ArenaError) as info:
            arenas.put(b"y" * (4 * MIB))  # needs a new arena
        assert info.value.reason == "no_space"
        assert arenas.arena_count() == 1
        monkeypatch.undo()
        with arenas.area(small) as area:  # the arena it had is still whole
            assert bytes(area[HEADER_SIZE : HEADER_SIZE + 1000]) == b"x" * 1000
        assert arenas.put(b"y" * (4 * MIB)).length >= 4 * MIB
    finally:
        arenas.close()


def test_a_result_without_memory_goes_inline_and_is_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = ResultSlices(WorkerArenas(limit=64 * MIB, min_arena=MIB))
    reset_format_stats()
    try:
        monkeypatch.setattr(os, "posix_fallocate", _refuse(errno.ENOSPC))
        out.begin()
        assert out.place("binary", memoryview(b"v" * 100_000), what="a binary") is None
        assert out.fallbacks == ["no_space"]
        assert format_stats()[(RESULTS, "raw", "no_space")]["count"] == 1
    finally:
        out.close()
        reset_format_stats()


def test_pages_are_reserved_at_creation() -> None:
    # not sparse: every page is the object's before it is touched, so no write to it
    # can fault
    obj = SharedObject(4 * MIB, KIND_ARENA)
    try:
        st = os.fstat(obj.fd)
        assert st.st_size == 4 * MIB
        assert st.st_blocks * 512 >= 4 * MIB
        with obj.area(OBJECT_HEADER, 4 * MIB - OBJECT_HEADER) as area:
            area[:] = b"\xff" * (4 * MIB - OBJECT_HEADER)
            assert area[-1] == 0xFF
    finally:
        obj.close()
