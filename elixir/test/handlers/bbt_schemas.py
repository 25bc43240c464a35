"""Typed-schema handlers for elixir/test/bridge_schema_test.exs (formats/ssz.md)."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import beambridge
from beambridge.types import List, Optional, String, boolean, float32, int32, uint16, uint32


@beambridge.schema("calls.ModelConfig", version="2.0")
@dataclasses.dataclass
class ModelConfig:
    name: String
    hidden_size: uint32
    num_heads: uint16
    layers: List[uint16, 1024]
    vocab_size: uint32
    dropout: float32
    tie_embeddings: boolean
    dtype: String = "float32"


@beambridge.schema("calls.Point", version="1.0")
class PointV10(NamedTuple):
    x: int32
    y: int32


@beambridge.schema("calls.Point", version="1.1", since={"label": "1.1"})
class Point(NamedTuple):
    x: int32
    y: int32
    label: Optional[String] = None


# calls.Model in three majors, each migrated from the one before (formats/ssz.md,
# "Versions"); the Elixir side declares the same three with the same migrations.


@beambridge.schema("calls.Model", version="1.0")
@dataclasses.dataclass
class ModelV1:
    title: String
    hidden: uint16


def model_from_v1(old: dict[str, object]) -> dict[str, object]:
    return {"name": old["title"], "hidden_size": 2 * old["hidden"]}  # type: ignore[operator]


@beambridge.schema("calls.Model", version="2.0", migrations={"1.0": model_from_v1})
@dataclasses.dataclass
class ModelV2:
    name: String
    hidden_size: uint32


def model_from_v2(old: dict[str, object]) -> dict[str, object]:
    return {**old, "layers": [old["hidden_size"] % 65536]}  # type: ignore[operator]


@beambridge.schema("calls.Model", version="3.0", migrations={"2.0": model_from_v2})
@dataclasses.dataclass
class ModelV3:
    name: String
    hidden_size: uint32
    layers: List[uint16, 16]


def old_models(n: int) -> list[ModelV1]:
    """Values written at 1.0: the BEAM reads them at its newest, 3.0."""
    return [ModelV1(f"m{i}", 100 * i) for i in range(n)]


def model_fields(model: ModelV3) -> list[object]:
    """What arrived: always the newest class, whatever version was sent."""
    assert type(model) is ModelV3
    return [model.name, model.hidden_size, model.layers]


def grow(config: ModelConfig) -> ModelConfig:
    """Doubles the hidden size: a schema value in, one out."""
    assert type(config) is ModelConfig
    return dataclasses.replace(config, hidden_size=config.hidden_size * 2)


def points(n: int) -> list[Point]:
    return [Point(i, -i, f"p{i}" if i % 2 else None) for i in range(n)]


def old_points(n: int) -> list[PointV10]:
    """Points written at 1.0: a reader at 1.1 fills in their label."""
    return [PointV10(i, i) for i in range(n)]


def labels(points: list[Point]) -> list[str | None]:
    assert all(type(p) is Point for p in points)
    return [p.label for p in points]


def norm(points: list[Point]) -> int:
    assert all(type(p) is Point for p in points)
    return sum(abs(p.x) + abs(p.y) for p in points)


def not_declared() -> object:
    @beambridge.schema("test.Nowhere", version="1.0")
    @dataclasses.dataclass
    class Nowhere:
        x: uint16

    return Nowhere(1)


def echo(value: object) -> object:
    """The value as it came: a list of schema values goes back as one SSZ list."""
    return value


def make_configs(n: int) -> list[ModelConfig]:
    return [
        ModelConfig(f"m{i}", i, i % 65536, [i % 65536] * (i % 5), 50257, 0.5, i % 2 == 0)
        for i in range(n)
    ]


def bad_configs(n: int, at: int) -> list[ModelConfig]:
    """make_configs(n) with the value at ``at`` out of its range (num_heads: uint16)."""
    configs = make_configs(n)
    configs[at].num_heads = 70_000
    return configs


def beside_bytes(n: int, size: int, bad_at: int = -1) -> list[object]:
    """make_configs(n), or bad_configs(n, bad_at), beside ``size`` zero bytes (a slice
    of the answer's own)."""
    return [make_configs(n) if bad_at < 0 else bad_configs(n, bad_at), bytes(size)]


def configs_after(stream: object, n: int) -> list[ModelConfig]:
    """made_configs(n), half a second after the argument stream is read to its end."""
    import time

    for _ in stream:  # type: ignore[attr-defined]
        pass
    time.sleep(0.5)
    return made_configs(n)


_made: dict[int, list[ModelConfig]] = {}


def made_configs(n: int) -> list[ModelConfig]:
    """make_configs(n), made once: the answer starts at once after the first call."""
    if n not in _made:
        _made[n] = make_configs(n)
    return _made[n]


_sums = [0]


def sum_configs(configs: list[ModelConfig]) -> list[int]:
    """How many came, and the sum of their hidden sizes: all of one class."""
    _sums[0] += 1
    assert all(type(c) is ModelConfig for c in configs)
    return [len(configs), sum(c.hidden_size for c in configs)]


def sums_made() -> int:
    """How many times sum_configs ran."""
    return _sums[0]


def table_of(kind: bytes, n: int) -> object:
    """A pyarrow.Table of n values of a schema, its name and version in the schema's
    metadata (beambridge.schema_tables): 1.0 points, or 1.0 models."""
    from beambridge.schema_tables import to_table

    if kind == b"points":
        return to_table([PointV10(i, -i) for i in range(n)])
    return to_table([ModelV1(f"m{i}", i) for i in range(n)])


def from_table(table: object) -> list[object]:
    """The values a table of a schema holds, read at the newest version declared here."""
    from beambridge.schema_tables import from_table as read

    return read(table)
