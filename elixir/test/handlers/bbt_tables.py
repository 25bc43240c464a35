"""Handlers for elixir/test/bridge_table_test.exs: Arrow tables on the call path
(protocol/formats/arrow.md "On the call path")."""

import gc

import pandas as pd
import pyarrow as pa


def summary(table):
    """What the handler sees: type, schema (name, type string, nullable) and values."""
    if not isinstance(table, pa.Table):
        return (type(table).__name__, None, None, None)
    fields = [(f.name, str(f.type), f.nullable) for f in table.schema]
    return (type(table).__name__, table.num_rows, fields, table.to_pydict())


def stats(table):
    """A large table's type, shape and column sums (no per-row data back)."""
    sums = {}
    for name in table.column_names:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            sums[name] = pa.compute.sum(column).as_py()
        elif pa.types.is_boolean(column.type):
            sums[name] = pa.compute.sum(column.cast(pa.int64())).as_py()
        else:
            sums[name] = sum(len(s) for s in column.to_pylist() if s is not None)
    fields = [(f.name, str(f.type)) for f in table.schema]
    return (type(table).__name__, table.num_rows, fields, sums)


def identity(table):
    return table


def _columns(n):
    return {
        "i": pa.array(range(n), pa.int64()),
        "f": pa.array([i * 0.5 for i in range(n)], pa.float64()),
        "b": pa.array([i % 3 == 0 for i in range(n)], pa.bool_()),
        "s": pa.array([f"row{i}" if i % 7 else None for i in range(n)], pa.string()),
    }


def make_table(n):
    return pa.table(_columns(n))


def make_batch(n):
    return pa.RecordBatch.from_pydict(_columns(n))


def make_dataframe(n):
    return pd.DataFrame(
        {
            "i": list(range(n)),
            "f": [i * 0.5 for i in range(n)],
            "b": [i % 3 == 0 for i in range(n)],
            "s": [f"row{i}" for i in range(n)],
        }
    )


def forged_arrow(data):
    """A result claiming to be an Arrow stream that is not one."""
    from beambridge.etf import Atom

    return (Atom("$bb_arrow"), data)


def decimal_table():
    """A table with a decimal column: Elixir gets exact decimals."""
    import decimal

    return pa.table({"d": pa.array([decimal.Decimal("1.50")], type=pa.decimal128(5, 2))})


def nested_dictionary_table():
    """A dictionary whose values are a dictionary: the one shape Bridge.Arrow refuses."""
    inner = pa.array(["a", "b"]).dictionary_encode()
    return pa.table({"d": pa.DictionaryArray.from_arrays(pa.array([0, 1, 0]), inner)})


def collect():
    gc.collect()
    return True


_cache = {}


def cached_table(n):
    """make_table(n), built once per worker (for timing the transfer alone)."""
    if n not in _cache:
        _cache[n] = make_table(n)
    return _cache[n]
