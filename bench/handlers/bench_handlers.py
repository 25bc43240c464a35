"""Handlers the benchmark calls through Bridge.call/2."""

from __future__ import annotations


def echo(data: bytes) -> bytes:
    """Return the argument: the round trip measures the bridge, not the handler."""
    return data


def add(a: int, b: int) -> int:
    return a + b


def spin(n: int) -> int:
    """CPU-bound pure-Python work (holds the GIL): n iterations of integer arithmetic."""
    acc = 0
    for i in range(n):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc
