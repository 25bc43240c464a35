"""Helpers shared by the Python tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

import posix_ipc

PREFIX = "bbpy"
SHM_DIR = "/dev/shm"


def shm_path(name: str) -> str:
    return SHM_DIR + name


def exists(name: str) -> bool:
    return os.path.exists(shm_path(name))


def make_raw_object(name: str, content: bytes, mode: int = 0o600) -> None:
    """A shm object with arbitrary content (not made by Region.create)."""
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=0)
    try:
        os.ftruncate(shm.fd, len(content))
        os.pwrite(shm.fd, content, 0)
    finally:
        shm.close_fd()


def unlink(name: str) -> None:
    with contextlib.suppress(posix_ipc.ExistentialError):
        posix_ipc.unlink_shared_memory(name)


def python_child(code: str, **kwargs: object) -> subprocess.Popen[str]:
    """Start `python -c code` with line-buffered text pipes."""
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-u", "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
