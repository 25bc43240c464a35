"""The ErlPort-style baseline: every payload travels as ETF inside a Port frame.

Reads {packet,4} frames on fd 3, decodes them with erlang-py (a pure-Python ETF codec,
the way ErlPort-style bridges do it), and answers each with its payload re-encoded.
"""

from __future__ import annotations

import os
import struct

import erlang  # erlang-py

IN, OUT = 3, 4


def read_exact(n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(IN, min(n, 1 << 24))
        if not chunk:
            raise SystemExit(0)
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def write_all(data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(OUT, view) :]


def main() -> None:
    while True:
        (length,) = struct.unpack(">I", read_exact(4))
        term = erlang.binary_to_term(read_exact(length))
        # {echo, Payload} -> {ok, Payload}
        reply = erlang.term_to_binary((erlang.OtpErlangAtom(b"ok"), term[1]))
        write_all(struct.pack(">I", len(reply)) + reply)


if __name__ == "__main__":
    main()
