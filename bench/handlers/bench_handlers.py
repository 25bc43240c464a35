"""Handlers the benchmark calls through Bridge.call/2."""

from __future__ import annotations

from typing import Any


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


_tables: dict[int, object] = {}


def table(n: int) -> object:
    """n rows x 4 columns (int64, float64, bool, utf8) as a pyarrow.Table, built once per
    n so that the round trip measures the bridge, not the table's construction."""
    if n not in _tables:
        import pyarrow as pa

        _tables[n] = pa.table(
            {
                "id": pa.array(range(n), type=pa.int64()),
                "x": pa.array([i * 0.5 for i in range(n)], type=pa.float64()),
                "flag": pa.array([i % 3 == 0 for i in range(n)], type=pa.bool_()),
                "name": pa.array([f"name-{i}" for i in range(n)], type=pa.string()),
            }
        )
    return _tables[n]


def size_of(value: object) -> int:
    """How many elements/rows arrived: the argument's transfer is what is measured."""
    return len(value)  # type: ignore[arg-type]


_values: dict[tuple[str, int], object] = {}


def make(kind: bytes, n: int) -> object:
    """A cached value of ``kind`` (the same shapes bench/formats.exs sends): built once
    per (kind, n) so that the call measures the transfer, not the construction."""
    key = (kind.decode(), n)
    if key not in _values:
        _values[key] = _build(key[0], n)
    return _values[key]


def _build(kind: str, n: int) -> object:
    if kind == "ints":
        return [(i * 7919) % (1 << 31) - (1 << 30) for i in range(n)]
    if kind == "bytes":
        return [i % 256 for i in range(n)]
    if kind == "floats":
        return [i * 0.25 for i in range(n)]
    if kind == "rows":
        return [{"id": i, "x": i * 0.5, "flag": i % 3 == 0, "name": f"name-{i}"} for i in range(n)]
    raise ValueError(f"unknown kind {kind!r}")


def generate(total: int, chunk: int) -> object:
    """``total`` bytes as elements of ``chunk`` bytes, generated as they go: each is a
    buffer of its own whose first 8 bytes count, so nothing is a cached copy."""
    import numpy as np

    buffers = [np.full(chunk, i, dtype=np.uint8) for i in range(2)]
    sent = 0
    n = 0
    while sent < total:
        size = min(chunk, total - sent)
        buf = buffers[n % 2]
        buf[:8] = np.frombuffer(n.to_bytes(8, "little"), dtype=np.uint8)
        yield memoryview(buf)[:size]
        sent += size
        n += 1


def consume(stream: object) -> int:
    """Bytes of the elements of an argument stream, each read as it arrives."""
    total = 0
    for element in stream:  # type: ignore[attr-defined]
        total += len(element)
    return total


def rss() -> int:
    """This worker's resident set now (bytes)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# ---- typed schemas (bench/schemas.exs) -----------------------------------------------


def _metrics(i: int) -> dict[str, object]:
    return {
        "step": i,
        "loss": (i % 1000) / 8,
        "accuracy": (i % 100) / 128,
        "tokens_per_second": i * 0.5,
        "latency_ms": [1.5, 2.25, (i % 50) / 4],
        "memory_bytes": i * 4096,
        "gpu_utilization": i % 101,
        "delta": -i,
    }


def _config(i: int) -> dict[str, object]:
    return {
        "name": f"model-{i}",
        "hidden_size": 64 * (i % 64),
        "num_heads": i % 32,
        "layers": [i % 65536, 1024, 4096, 7],
        "vocab_size": 50257,
        "dropout": (i % 10) / 16,
        "tie_embeddings": i % 2 == 0,
        "dtype": "bfloat16" if i % 3 else "float32",
    }


def _schemas() -> dict[str, Any]:
    """The seed's schema classes (protocol/vectorgen/ssz.py: the bench puts protocol/
    on the worker's path), and how to make the i-th value of each."""
    from vectorgen.ssz import ModelConfig, PerformanceMetrics

    return {"metrics": (PerformanceMetrics, _metrics), "config": (ModelConfig, _config)}


def seed_schemas() -> list[str]:
    """Declares the seed's schemas in this worker, before any value of them comes."""
    return sorted(_schemas())


_schema_rows: dict[tuple[str, int, bool], list[object]] = {}


def schema_rows(kind: bytes, n: int, typed: bool, start: int = 0, count: int = -1) -> object:
    """Values ``start`` to ``start + count`` (all: -1) of n values of a seed schema, as
    instances (``typed``) or dicts, built once: the round trip measures the bridge,
    not their construction. The same values as bench/schemas.exs builds."""
    key = (kind.decode(), n, typed)
    if key not in _schema_rows:
        cls, make = _schemas()[key[0]]
        _schema_rows[key] = [cls(**make(i)) if typed else make(i) for i in range(n)]
    rows = _schema_rows[key]
    return rows if count < 0 else rows[start : start + count]


def schema_count(values: list[object]) -> int:
    """How many values came, after checking they are of one type (instances of the
    schema class when typed, dicts when not)."""
    first = type(values[0])
    assert first is dict or hasattr(first, "__bb_schema__"), first
    assert type(values[-1]) is first
    return len(values)


def schema_codec_seconds(kind: bytes, n: int) -> list[float]:
    """Medians of 3: seconds to write n values of a seed schema as one SSZ list, and
    to read them back into instances, in this process alone (no bridge)."""
    import time

    from beambridge.ssz_batch import decode_list, encode_list

    values: Any = schema_rows(kind, n, True)
    t = type(values[0]).__bb_schema__.type
    data = encode_list(t, values)
    out = []
    for step in (lambda: encode_list(t, values), lambda: decode_list(t, data)):
        samples = []
        for _ in range(3):
            t0 = time.perf_counter()
            made = step()
            samples.append(time.perf_counter() - t0)
            del made  # freed after the timing, as the worker frees arguments after answering
        out.append(sorted(samples)[1])
    return out


def callback_add(a: int, b: int) -> int:
    """One callback into Elixir (BenchCallbacks.add/2): a small call's round trip
    plus one callback's."""
    from beambridge import elixir

    result: int = elixir.call("BenchCallbacks", "add", [a, b])
    return result


def callback_loop(n: int) -> int:
    """n callbacks in one call: the cost of a callback without the call around it."""
    from beambridge import elixir

    total = 0
    for i in range(n):
        total += elixir.call("BenchCallbacks", "add", [i, 1])
    return total


def callback_bytes(data: bytes) -> int:
    """`data` to Elixir in a callback and `len(data)` bytes back: both ways through
    shared memory, as echo(data) is for a call."""
    from beambridge import elixir

    back = elixir.call("BenchCallbacks", "same_size", [data])
    return len(back)
