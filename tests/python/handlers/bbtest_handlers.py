"""Handler functions the worker tests call (tests/python/test_worker*.py)."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import xxhash

kept: list[Any] = []


def add(a: Any, b: Any) -> Any:
    return a + b


def echo(*args: Any) -> Any:
    return args[0] if len(args) == 1 else args


def describe(value: Any) -> Any:
    """The type of an argument as the handler sees it, and a digest of its content."""
    if isinstance(value, np.ndarray):
        return (
            "ndarray",
            value.dtype.str,
            list(value.shape),
            bool(value.flags.writeable),
            bool(value.flags.c_contiguous),
            xxhash.xxh3_64_intdigest(value.tobytes()),
        )
    if isinstance(value, memoryview):
        return (
            "memoryview",
            value.readonly,
            value.format,
            value.ndim,
            value.nbytes,
            xxhash.xxh3_64_intdigest(value),
        )
    if isinstance(value, bytes):
        return ("bytes", len(value), xxhash.xxh3_64_intdigest(value))
    return (type(value).__name__, value)


def fail(message: str) -> None:
    raise ValueError(message)


class CustomError(Exception):
    pass


def fail_custom() -> None:
    raise CustomError("custom")


def chatty(n: int) -> int:
    print("to stdout", n)
    print("to stderr", n, file=sys.stderr)
    os.write(1, b"raw fd 1\n")
    sys.stdout.write("no newline")
    return n


def big_print(n: int) -> int:
    sys.stdout.write("x" * n)
    return n


def make_bytes(n: int, fill: int = 0x61) -> bytes:
    return bytes([fill]) * n


def make_bytearray(n: int) -> bytearray:
    return bytearray(b"b" * n)


def make_memoryview(n: int) -> memoryview:
    return memoryview(b"m" * n)


def make_array(dtype: bytes, shape: list[int]) -> Any:
    count = int(np.prod(shape))
    return (np.arange(count) % 100).astype(dtype.decode()).reshape(shape)


def make_fortran(n: int) -> Any:
    return np.asfortranarray(np.arange(n * 3, dtype="<i4").reshape(n, 3))


def make_big_endian(n: int) -> Any:
    return np.arange(n, dtype=">f8")


def keep(view: Any) -> int:
    kept.append(view)
    return len(kept)


def drop() -> int:
    n = len(kept)
    kept.clear()
    return n


def fail_with(view: Any) -> None:
    raise RuntimeError(f"failed with a {type(view).__name__} argument")


def sum_array(arr: Any) -> Any:
    return float(arr.sum())


def unsupported() -> Any:
    return {1, 2}


def nan() -> float:
    return float("nan")


def bool_array() -> Any:
    return np.array([True, False])


def numpy_scalars() -> Any:
    return [np.int64(7), np.float32(1.5), np.bool_(True), np.uint8(3)]


def two_big(n: int) -> Any:
    return (b"1" * n, b"2" * n)


def exit_now(code: int) -> None:
    os._exit(code)


def sys_exit(code: int) -> None:
    sys.exit(code)


def pid() -> int:
    return os.getpid()


not_callable = 42


_cache: dict[int, bytes] = {}


def cached_bytes(n: int) -> bytes:
    """The same n-byte object every time (measures the bridge, not the allocation)."""
    if n not in _cache:
        _cache[n] = os.urandom(n)
    return _cache[n]


def nbytes(value: Any) -> int:
    return memoryview(value).nbytes
