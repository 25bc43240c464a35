"""An Elixir pid in Python (protocol/SPEC.md §9, ``{:"$bb_pid", etf, mac}``).

A pid that reaches a handler (an argument, a callback's result) arrives as a `Pid`: the
pid's own ETF and a MAC the BEAM made over it with a secret of its node. Python can
hold it, compare it, return it (Elixir gets the pid back) and send to it
(`beambridge.elixir.send`); it cannot make one: the BEAM refuses a pid whose MAC is not
its own.

>>> p = Pid(bytes.fromhex("835864000d6e6f6e6f6465406e6f686f7374000000530000000000000000"), b"m")
>>> p
Pid('nonode@nohost', 83, 0)
>>> p == Pid(p.etf, b"m"), len({p, Pid(p.etf, b"m")})
(True, 1)
"""

from __future__ import annotations

from typing import Any

__all__ = ["Pid"]

_NEW_PID, _PID, _ATOM_UTF8, _SMALL_ATOM_UTF8, _ATOM = 88, 103, 118, 119, 100


class Pid:
    """An Elixir process, as the BEAM gave it: opaque, hashable, sendable back."""

    __slots__ = ("etf", "mac")

    def __init__(self, etf: bytes, mac: bytes) -> None:
        self.etf = bytes(etf)
        self.mac = bytes(mac)

    def __eq__(self, other: object) -> bool:
        return type(other) is Pid and other.etf == self.etf and other.mac == self.mac

    def __hash__(self) -> int:
        return hash((self.etf, self.mac))

    def __repr__(self) -> str:
        parts = _parts(self.etf)
        return f"Pid{parts!r}" if parts is not None else f"Pid({self.etf.hex()!r})"


def _parts(etf: bytes) -> tuple[Any, ...] | None:
    """(node, id, serial) of a pid's ETF, or None when it is not one this reads."""
    view = memoryview(etf)
    if len(view) < 4 or view[0] != 131 or view[1] not in (_NEW_PID, _PID):
        return None
    at = 2
    tag = view[at]
    if tag == _SMALL_ATOM_UTF8:
        size, at = view[at + 1], at + 2
    elif tag in (_ATOM_UTF8, _ATOM):
        size, at = int.from_bytes(view[at + 1 : at + 3], "big"), at + 3
    else:
        return None
    node = bytes(view[at : at + size]).decode("utf-8", "replace")
    at += size
    if len(view) < at + 8:
        return None
    return (
        node,
        int.from_bytes(view[at : at + 4], "big"),
        int.from_bytes(view[at + 4 : at + 8], "big"),
    )
