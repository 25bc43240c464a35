"""ETF by hand: forms the package's encoder never writes (PIDs, funs, improper lists,
other atom encodings), and control frames put together byte by byte (SPEC §8.1)."""

from __future__ import annotations

import struct
from typing import Any

from beambridge.etf import Atom, encode

NO_BODY: Any = object()


def inner(term: Any) -> bytes:
    """A term's ETF without the version byte."""
    return encode(term)[1:]


def etf(*parts: bytes) -> bytes:
    return b"\x83" + b"".join(parts)


def raw_list(items: list[bytes], tail: bytes = b"j") -> bytes:
    """LIST_EXT of already-encoded items; a ``tail`` other than NIL makes it improper."""
    return b"l" + struct.pack(">I", len(items)) + b"".join(items) + tail


def raw_tuple(*items: bytes) -> bytes:
    return bytes((104, len(items))) + b"".join(items)


#: NEW_PID_EXT of <0.42.0> on nonode@nohost (an atom every VM has).
PID = b"X" + inner(Atom("nonode@nohost")) + struct.pack(">III", 42, 0, 0)
#: EXPORT_EXT of ``fun erlang:node/0`` (a fun the BEAM's [:safe] decoding accepts).
FUN = b"q" + inner(Atom("erlang")) + inner(Atom("node")) + bytes((97, 0))


def body_etf(body: Any) -> bytes:
    return b"" if body is NO_BODY else encode(body)


def raw_frame(envelope: bytes, body: bytes = b"", size: int | None = None) -> bytes:
    """``envelope_size | envelope | body`` (§8.1), ``size`` the stated envelope_size."""
    return (len(envelope) if size is None else size).to_bytes(4, "big") + envelope + body


#: The tag of a slice handle (SPEC §9).
SLICE = Atom("$bb_slice")
