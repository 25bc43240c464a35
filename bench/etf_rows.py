"""The baseline for tables: the same rows as an ETF list of maps over a Port.

Reads {packet,4} frames on fd 3, each an ETF integer n (erlang-py), and answers with
n rows of the benchmark table (id int64, x float64, flag bool, name utf8) as a list of
maps with binary keys, encoded by erlang-py — what an ErlPort-style bridge sends. The
rows are built once per n, so the round trip measures the transfer, not Python.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import erlang  # erlang-py

IN, OUT = 3, 4
KEYS = [erlang.OtpErlangBinary(k) for k in (b"id", b"x", b"flag", b"name")]


def read_exact(n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(IN, min(n, 1 << 24))
        if not chunk:
            raise SystemExit(0)
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def rows(n: int) -> list[dict[Any, Any]]:
    k_id, k_x, k_flag, k_name = KEYS
    return [
        {
            k_id: i,
            k_x: i * 0.5,
            k_flag: i % 3 == 0,
            k_name: erlang.OtpErlangBinary(f"name-{i}".encode()),
        }
        for i in range(n)
    ]


def main() -> None:
    cache: dict[int, list[dict[Any, Any]]] = {}
    while True:
        (length,) = struct.unpack(">I", read_exact(4))
        n = erlang.binary_to_term(read_exact(length))
        if n not in cache:
            cache[n] = rows(n)
        reply = erlang.term_to_binary(cache[n])
        view = memoryview(struct.pack(">I", len(reply)) + reply)
        while view:
            view = view[os.write(OUT, view) :]


if __name__ == "__main__":
    main()
