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
except ImportError:  # SPEC §10 names beambridge.Atom; fall back to where it is defined
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
    return (
        (np.arange(n) % 120)
        .astype(np.dtype(dtype.decode() if isinstance(dtype, bytes) else dtype))
        .reshape(shape)
    )


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
    """Make the worker send a control frame that breaks the protocol
    (protocol/SPEC.md §8; for the BEAM's :bad_frame handling), then return
    normally."""
    import gc

    worker_class = sys.modules["__main__"].Worker  # python -m beambridge.worker
    worker = next(o for o in gc.get_objects() if isinstance(o, worker_class))
    kind = kind.decode()
    if kind == "garbage":
        envelope, body = b"\x83\xff\x00", b""
    elif kind == "unknown_atom":
        envelope, body = b"\x83w\x1fbbt_never_seen_atom_4f2a_9c1d_x", b""
    elif kind == "wrong_id":
        envelope = b"\x83h\x04w\x02okb\x00\x0f\x42\x3fjj"  # {:ok, 999999, [], []}
        body = b"\x83a\x01"
    else:
        raise ValueError(kind)
    frame = len(envelope).to_bytes(4, "big") + envelope + body
    with worker.lock:
        os.write(worker.out_fd, len(frame).to_bytes(4, "big") + frame)
    return b"forged"


# ---- tensor format (elixir/test/bridge_tensor_test.exs) -------------------------------------


def _order(x):
    return "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"


def tensor_info(x):
    """What the handler sees of a tensor-like argument: its Python type, dtype descriptor,
    shape, order, writeable flag and a digest of its bytes in storage order."""
    from beambridge.formats import tensor as tf

    if isinstance(x, tf.Bundle):
        return ("Bundle", {k.encode(): tensor_info(v) for k, v in x.items()})
    if isinstance(x, tf.COO):
        dense = x.todense()
        return (
            "COO",
            list(x.shape),
            tensor_info(x.indices),
            tensor_info(x.values),
            hashlib.sha256(dense.tobytes()).hexdigest(),
        )
    if isinstance(x, np.ndarray):
        # storage order: what Bridge.Tensor's data holds
        raw = x.view(np.dtype((np.void, x.dtype.itemsize))).tobytes(order="A")
        return (
            "ndarray",
            tf.dtype_to_descr(x.dtype),
            list(x.shape),
            _order(x),
            bool(x.flags.writeable),
            hashlib.sha256(raw).hexdigest(),
        )
    return (type(x).__name__,)


_RECORD = np.dtype([("x", "<f8"), ("n", ">i2", (2,)), ("s", "S3")], align=True)


def make_numpy(case, n=6):
    """Arrays of every kind the tensor format carries, n elements each (bytes 0, 1...)."""
    case = case.decode() if isinstance(case, bytes) else str(case)
    specs = {
        "bool": "|b1",
        "big_i4": ">i4",
        "big_f8": ">f8",
        "datetime": "<M8[ns]",
        "timedelta": ">m8[10ms]",
        "bytes": "|S5",
        "unicode": "<U3",
        "void": "|V4",
        "record": _RECORD,
        "f4": "<f4",
        "u2": "<u2",
        "c16": "<c16",
    }
    dt = np.dtype(specs[case.removesuffix("_F").removesuffix("_0d").removesuffix("_empty")])
    raw = (np.arange(n * dt.itemsize) % 251).astype(np.uint8)
    if dt.kind == "b":
        raw = raw % 2
    if dt.kind == "U":
        raw = np.zeros(n * dt.itemsize, np.uint8)
        raw[::4] = 97 + np.arange(n * dt.itemsize // 4) % 26
    arr = raw.view(dt)
    if case.endswith("_0d"):
        return arr[:1].reshape(())
    if case.endswith("_empty"):
        return arr[:0].reshape(0, 3)
    arr = arr.reshape(2, n // 2)
    return np.asfortranarray(arr) if case.endswith("_F") else arr


def make_big_fortran(rows, cols):
    return np.asfortranarray(np.arange(rows * cols, dtype=">f8").reshape(rows, cols))


def make_bundle(n):
    from beambridge.formats import tensor as tf

    return tf.Bundle(
        {
            "layer.weight": (np.arange(n * 4) % 7).astype("<f4").reshape(n, 4),
            "layer.bias": np.arange(4, dtype="<f4"),
            "mask": np.arange(n) % 2 == 0,
            "when": np.arange(3).astype("<M8[s]"),
        }
    )


def make_plain_dict_of_arrays():
    return {"a": np.arange(3, dtype="<i4")}


def make_coo(n):
    from beambridge.formats import tensor as tf

    dense = np.zeros((n, 5), dtype=">f4")
    dense[np.arange(n), np.arange(n) % 5] = np.arange(n) + 1
    return tf.COO.from_dense(dense)


def coo_dense(coo):
    return coo.todense()


def make_object_array():
    return np.array([object(), 1], dtype=object)


def bundle_names(b):
    return sorted(b.keys())


def churn(n: int) -> int:
    """Makes n small objects and frees them before answering: memory for the worker's
    heap to keep (`beambridge._pyheap`)."""
    made = [(i, str(i), [i]) for i in range(n)]
    count = len(made)
    del made
    return count


def heap_kept() -> int:
    """Bytes of freed small-object memory the worker keeps (-1: not installed)."""
    from beambridge import _pyheap

    stats = _pyheap.stats()
    return int(stats["kept"]) if stats["installed"] else -1


def nested_digest(x):
    """The digest of the bytes at x[b"w"][0][0] (a value deep in its argument)."""
    return digest(x[b"w"][0][0])
