"""Handler functions the worker tests call (tests/python/test_worker*.py)."""

from __future__ import annotations

import os
import sys
import time
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
    from beambridge.formats.tensor import COO, Bundle

    if isinstance(value, Bundle):
        return ("Bundle", [(name, describe(arr)) for name, arr in value.items()])
    if isinstance(value, COO):
        return ("COO", list(value.shape), describe(value.indices), describe(value.values))
    if type(value).__name__ == "Table":
        return ("Table", value.num_rows, value.column_names, str(value.to_pydict()))
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


def nap(seconds: float, value: Any) -> Any:
    """``value``, after sleeping ``seconds``."""
    time.sleep(seconds)
    return value


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


def keep_first(pair: Any) -> int:
    """Keep the first of two argument views, drop the second."""
    kept.append(pair[0])
    return len(kept)


def echo_part(view: Any, start: int, end: int) -> Any:
    return view[start:end]


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


def make_kind(kind: bytes, n: int) -> Any:
    """A result of each kind a slice can hold, of about ``n`` bytes."""
    from beambridge.formats.tensor import COO, Bundle

    k = kind.decode()
    if k == "bytes":
        return bytes(range(256)) * (n // 256)
    if k == "bytearray":
        return bytearray(b"b" * n)
    if k == "memoryview":
        return memoryview(b"m" * n)
    if k == "tensor":
        return np.arange(n // 8, dtype="<f8")
    if k == "fortran":
        return np.asfortranarray(np.arange(n // 4, dtype=">i4").reshape(-1, 2))
    if k == "bundle":
        return Bundle({"w": np.ones(n // 16), "b": np.zeros(n // 16, dtype="<i4")})
    if k == "coo":
        return COO.from_dense(np.arange(n // 8, dtype="<f8").reshape(-1, 4))
    if k == "table":
        import pyarrow as pa

        return pa.table({"x": np.arange(n // 8, dtype=np.int64)})
    if k == "packed":
        return list(range(n // 2))
    if k == "records":
        return [{"id": i, "name": f"n{i}"} for i in range(n // 16)]
    raise ValueError(kind)


def memfds(pid: int = 0) -> list[tuple[str, int]]:
    """(path, size) of every memfd a process has open (default: this one)."""
    base = f"/proc/{pid or os.getpid()}/fd"
    found = []
    for name in os.listdir(base):
        path = f"{base}/{name}"
        try:
            target = os.readlink(path)
        except OSError:
            continue
        if target.startswith("/memfd:"):
            found.append((path, os.stat(path).st_size))
    return found


def attack(view: Any) -> Any:
    """Try to change or resize every shared object within reach: the argument's own
    memory, and every memfd of this process (opened read-write through /proc) and of
    its parent (resizing only). Returns what each attempt did."""
    import errno
    import mmap

    out: dict[str, Any] = {}
    base = view.obj if isinstance(view, memoryview) else None
    try:
        base.flags.writeable = True  # type: ignore[union-attr]
        out["argument"] = "writeable"
    except (ValueError, AttributeError) as exc:
        out["argument"] = type(exc).__name__
    for path, size in memfds():
        result = []
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            out[path] = [f"open:{errno.errorcode[exc.errno or 0]}"]
            continue
        try:
            for attempt in ("ftruncate", "pwrite", "mmap"):
                try:
                    if attempt == "ftruncate":
                        os.ftruncate(fd, 0)
                    elif attempt == "pwrite":
                        os.pwrite(fd, b"X" * 64, 64 + 128)
                    else:
                        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_WRITE) as mm:
                            mm[64 + 128 : 64 + 192] = b"Y" * 64
                    result.append(f"{attempt}:ok")
                except OSError as exc:
                    result.append(f"{attempt}:{errno.errorcode[exc.errno or 0]}")
        finally:
            os.close(fd)
        out[path] = result
    for path, _ in memfds(os.getppid()):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            os.ftruncate(fd, 0)
            out[path] = ["ftruncate:ok"]
        except OSError as exc:
            out[path] = [f"ftruncate:{errno.errorcode[exc.errno or 0]}"]
        finally:
            os.close(fd)
    return out


def loaded(prefix: bytes) -> list[str]:
    """The modules of this process whose name starts with ``prefix``."""
    return sorted(m for m in sys.modules if m.startswith(prefix.decode()))


def keep_it(value: Any) -> Any:
    """A kept object (a session's, SPEC §8.9) next to a plain value."""
    import beambridge

    return [beambridge.keep({"held": value}), value]


def kept_value(obj: Any) -> Any:
    return obj["held"]
