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


@beambridge.schema("calls.Point", version="1.3")
class Point(NamedTuple):
    x: int32
    y: int32
    label: Optional[String] = None


def grow(config: ModelConfig) -> ModelConfig:
    """Doubles the hidden size: a schema value in, one out."""
    assert type(config) is ModelConfig
    return dataclasses.replace(config, hidden_size=config.hidden_size * 2)


def points(n: int) -> list[Point]:
    return [Point(i, -i, f"p{i}" if i % 2 else None) for i in range(n)]


def norm(points: list[Point]) -> int:
    assert all(type(p) is Point for p in points)
    return sum(abs(p.x) + abs(p.y) for p in points)


def not_declared() -> object:
    @beambridge.schema("test.Nowhere", version="1.0")
    @dataclasses.dataclass
    class Nowhere:
        x: uint16

    return Nowhere(1)
