"""The 64-byte control block at the start of every region (protocol/SPEC.md §2), region
names (§1.1) and the owner's process start time.

>>> cb = pack_control_block(owner_pid=42, owner_start_time=7, region_size=256)
>>> parse_control_block(cb, 256).owner_pid
42
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from enum import IntEnum

from .errors import RegionError

__all__ = [
    "CB_MAGIC",
    "CB_SIZE",
    "LAYOUT_VERSION",
    "MAX_REGION_SIZE",
    "MIN_REGION_SIZE",
    "NAME_PATTERN",
    "OFF_READER_LEASES",
    "OFF_WRITER_GENERATION",
    "OFF_WRITER_STATE",
    "ControlBlock",
    "WriterState",
    "make_name",
    "pack_control_block",
    "parse_control_block",
    "parse_name",
    "process_start_time",
]

CB_MAGIC = b"BBCB"
LAYOUT_VERSION = 1
CB_SIZE = 64
MIN_REGION_SIZE = CB_SIZE + 128
MAX_REGION_SIZE = 2**48
OFF_WRITER_STATE = 32
OFF_READER_LEASES = 36
OFF_WRITER_GENERATION = 40

PREFIX_PATTERN = re.compile(r"[a-z0-9]{1,16}")
NAME_PATTERN = re.compile(r"/([a-z0-9]{1,16})-([0-9]{1,10})-([0-9a-f]{16})")

# cb_magic, layout_version, cb_size, owner_pid, reserved, owner_start_time, region_size,
# writer_state, reader_leases, writer_generation, reserved
_LAYOUT = struct.Struct("<4sHHIIQQIIQ16s")
assert _LAYOUT.size == CB_SIZE


class WriterState(IntEnum):
    """Values of the ``writer_state`` word."""

    EMPTY = 0
    WRITING = 1
    PUBLISHED = 2


@dataclass(frozen=True)
class ControlBlock:
    """A snapshot of a control block (the mutable words may change right after)."""

    owner_pid: int
    owner_start_time: int
    region_size: int
    writer_state: int
    reader_leases: int
    writer_generation: int


def pack_control_block(*, owner_pid: int, owner_start_time: int, region_size: int) -> bytes:
    """The control block a fresh region starts with (state EMPTY, no leases, gen 0)."""
    return _LAYOUT.pack(
        CB_MAGIC, LAYOUT_VERSION, CB_SIZE, owner_pid, 0, owner_start_time, region_size,
        WriterState.EMPTY, 0, 0, bytes(16),
    )  # fmt: skip


def parse_control_block(raw: bytes, real_size: int) -> ControlBlock:
    """Check §2.1 on ``raw`` (64 bytes) against the object's real size.

    Raises `RegionError` ``bad_control_block`` naming the first bad field.
    """
    if len(raw) < CB_SIZE:
        raise RegionError("bad_control_block", "cb_size", len(raw), CB_SIZE)
    magic, layout, cb_size, pid, _, start, size, state, leases, gen, _ = _LAYOUT.unpack(
        raw[:CB_SIZE]
    )
    for field, value, expected in (
        ("cb_magic", magic, CB_MAGIC),
        ("layout_version", layout, LAYOUT_VERSION),
        ("cb_size", cb_size, CB_SIZE),
        ("region_size", size, real_size),
    ):
        if value != expected:
            raise RegionError(
                "bad_control_block",
                field,
                value,
                expected,
                f"bad_control_block: field {field} is {value!r}, expected {expected!r} "
                "(not a beambridge region, another layout version, or torn)",
            )
    return ControlBlock(pid, start, size, state, leases, gen)


def make_name(prefix: str, pid: int | None = None) -> str:
    """A fresh region name ``/<prefix>-<pid>-<16 hex digits from os.urandom>``.

    >>> bool(NAME_PATTERN.fullmatch(make_name("bb")))
    True
    """
    check_prefix(prefix)
    return f"/{prefix}-{os.getpid() if pid is None else pid}-{os.urandom(8).hex()}"


def check_prefix(prefix: str) -> None:
    """Raise ValueError unless ``prefix`` matches ``[a-z0-9]{1,16}``."""
    if not PREFIX_PATTERN.fullmatch(prefix):
        raise ValueError(f"prefix {prefix!r} must match [a-z0-9]{{1,16}}")


def parse_name(name: str) -> tuple[str, int] | None:
    """``(prefix, pid)`` of a valid region name, else None.

    >>> parse_name("/bb-12-0123456789abcdef"), parse_name("/bb-12-xyz")
    (('bb', 12), None)
    """
    m = NAME_PATTERN.fullmatch(name)
    return None if m is None else (m.group(1), int(m.group(2)))


def process_start_time(pid: int | str = "self") -> int:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks since boot); 0 if
    unknown. Raises nothing."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # field 2 (comm) may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rindex(b")") + 2 :].split()
        return int(fields[22 - 3])
    except (OSError, ValueError, IndexError):
        return 0
