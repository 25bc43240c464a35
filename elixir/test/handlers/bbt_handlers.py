"""Python handlers for the Elixir end-to-end tests (elixir/test/bridge_*_test.exs).

Plain functions; the tests put this directory on the workers' python_path.
"""

import hashlib
import os
import sys
import time

import numpy as np

try:
    from beambridge import Atom
except ImportError:  # SPEC §8 names beambridge.Atom; fall back to where it is defined
    from beambridge.etf import Atom

_kept = []


def identity(x):
    return x


def add(a, b):
    return a + b


def type_name(x):
    return type(x).__name__


def describe(x):
    """What the handler sees: type name plus the details invariant 7 cares about."""
    if isinstance(x, memoryview):
        return (type(x).__name__, x.readonly, x.nbytes)
    if isinstance(x, np.ndarray):
        return (type(x).__name__, x.dtype.str, list(x.shape), x.flags.writeable)
    if isinstance(x, bytes):
        return (type(x).__name__, len(x))
    return (type(x).__name__,)


def types(*xs):
    return [type(x).__name__ for x in xs]


def is_atom(x):
    return isinstance(x, Atom)


def digest(x):
    return hashlib.sha256(memoryview(x).cast("B") if not isinstance(x, bytes) else x).hexdigest()


def tensor_sum(x):
    return float(x.astype(np.float64).sum())


def echo_tensor_double(x):
    return np.asarray(x) * 2


def make_bytes(n, seed):
    return (bytes([seed % 256]) * 4096 * (n // 4096 + 1))[:n]


def make_counter_bytes(n, seed):
    """n bytes that differ from call to call (seed in the first 8 bytes)."""
    head = seed.to_bytes(8, "little")
    return (head + b"\xa5" * max(0, n - 8))[:n]


def make_tensor(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    return (np.arange(n) % 120).astype(np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype)).reshape(shape)


def returns(kind):
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    return {
        "str": "héllo",
        "bytes": b"\x00\x01",
        "bytearray": bytearray(b"ab"),
        "memoryview": memoryview(b"mv"),
        "none": None,
        "true": True,
        "false": False,
        "int": 42,
        "negative": -7,
        "bigint": 2**200,
        "negbig": -(2**100),
        "float": 1.5,
        "list": [1, [2, 3]],
        "tuple": (1, b"a"),
        "dict": {b"k": 1, Atom("a"): [2]},
        "atom": Atom("ok"),
        "empty_list": [],
        "empty_tuple": (),
        "ndarray": np.array([[1, 2], [3, 4]], dtype=np.int32),
        "set": {1, 2},
        "nan": float("nan"),
        "numpy_int": np.int64(5),
    }[kind]


def returns_new_atom():
    return Atom("bbt_atom_that_does_not_exist_on_the_beam_4f2a")


def fail(message):
    def inner():
        raise ValueError(message.decode())

    inner()


def sleep(seconds, tag=None):
    time.sleep(seconds)
    return tag


def exit_now(code):
    os._exit(code)


def pid():
    return os.getpid()


def chatty(text):
    text = text.decode()
    print(f"stdout says {text}")
    print(f"stderr says {text}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    return b"done"


def keep(view):
    """Store the argument view beyond the call (what a careless handler does)."""
    _kept.append(view)
    return hashlib.sha256(bytes(view)).hexdigest()


def kept_digest(i):
    return hashlib.sha256(bytes(_kept[i])).hexdigest()


def drop_kept():
    _kept.clear()
    return len(_kept)


def forge(kind):
    """Make the worker send a control frame that breaks SPEC §7 (for the BEAM's
    :bad_frame handling), then return normally."""
    import gc

    worker_class = sys.modules["__main__"].Worker  # python -m beambridge.worker
    worker = next(o for o in gc.get_objects() if isinstance(o, worker_class))
    kind = kind.decode()
    if kind == "garbage":
        body = b"\x83\xff\x00"
    elif kind == "unknown_atom":
        body = b"\x83w\x1fbbt_never_seen_atom_4f2a_9c1d_x"
    elif kind == "wrong_id":
        body = b"\x83h\x03w\x02okb\x00\x0f\x42\x3fa\x01"  # {:ok, 999999, 1}
    else:
        raise ValueError(kind)
    with worker.lock:
        os.write(worker.out_fd, len(body).to_bytes(4, "big") + body)
    return b"forged"
