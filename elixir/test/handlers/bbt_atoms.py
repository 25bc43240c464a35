"""Handlers for the unknown-atom tests (Bridge.ETF)."""

from beambridge import Atom


def make_atom(name: bytes) -> dict[str, Atom]:
    return {"status": Atom(name.decode())}


def pid() -> int:
    import os

    return os.getpid()
