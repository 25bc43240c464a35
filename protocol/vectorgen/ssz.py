"""SSZ vectors (protocol/formats/ssz.md): the seed's four containers, written by
`beambridge.ssz`, with each schema and value described in JSON for any reader.

Types in JSON: ``"uint8"`` … ``"uint64"``, ``"int8"`` … ``"int64"``, ``"float32"``,
``"float64"``, ``"boolean"``, ``"bytes"``, ``"string"``, ``{"list": [T, max]}``,
``{"vector": [T, n]}``, ``{"optional": T}``, ``{"union": [T or null, ...]}``,
``{"schema": name}``. Values: numbers, strings, ``{"hex": "..."}`` for bytes, lists,
``null``, ``[selector, value]`` for a union, an object of fields for a container.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from beambridge import ssz
from beambridge import types as bt
from beambridge.types import (
    Bytes,
    List,
    Optional,
    String,
    Vector,
    boolean,
    float32,
    float64,
    int64,
    uint8,
    uint16,
    uint32,
    uint64,
)


@ssz.schema("truthgpt.ModelConfig", version="2.0")
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


@ssz.schema("truthgpt.OptimizationConfig", version="1.0")
@dataclasses.dataclass
class OptimizationConfig:
    learning_rate: float64
    weight_decay: float64
    betas: Vector[float64, 2]
    warmup_steps: uint32
    max_steps: uint64
    gradient_clipping: Optional[float64]
    scheduler: String


@ssz.schema("truthgpt.PerformanceMetrics", version="1.0")
@dataclasses.dataclass
class PerformanceMetrics:
    step: uint64
    loss: float32
    accuracy: float32
    tokens_per_second: float64
    latency_ms: Vector[float32, 3]
    memory_bytes: uint64
    gpu_utilization: uint8
    delta: int64


@ssz.schema("truthgpt.ModelInfo", version="1.0")
@dataclasses.dataclass
class ModelInfo:
    config: ModelConfig
    optimizer: OptimizationConfig
    metrics: List[PerformanceMetrics, 64]
    checkpoint: Optional[Bytes]
    tags: List[String, 16]
    status: bt.Union[None, uint32, String]


CONFIG = ModelConfig("truthgpt-mini", 768, 12, [3072] * 4 + [1024, 0, 65535], 50257, 0.125, True)
OPTIMIZER = OptimizationConfig(3e-4, 0.01, [0.9, 0.999], 2000, 10**12, None, "cosine")
METRICS = [
    PerformanceMetrics(1, 2.5, 0.25, 12345.5, [1.5, 2.25, 40.0], 2**33, 97, -7),
    PerformanceMetrics(2**64 - 1, 0.0, 1.0, -0.5, [0.0, -1.0, 3.0e38], 0, 0, -(2**63)),
]
INFO = ModelInfo(CONFIG, OPTIMIZER, METRICS, b"\x00\xffckpt", ["ssz", "ünïcode", ""], (2, "ok"))


@dataclasses.dataclass(frozen=True)
class SszVector:
    name: str
    description: str
    cls: type
    value: Any = None
    data: bytes = b""
    error: dict[str, str] | None = None
    #: A batch: the SSZ list of ``value``, a list of values (formats/ssz.md, "Batches").
    batch: bool = False


def ssz_vectors() -> list[SszVector]:
    good = [
        SszVector("good_model_config", "the seed's ModelConfig", ModelConfig, CONFIG),
        SszVector(
            "good_optimization_config", "the seed's OptimizationConfig", OptimizationConfig,
            OPTIMIZER,
        ),
        SszVector(
            "good_performance_metrics", "the seed's PerformanceMetrics, bounds of each type",
            PerformanceMetrics, METRICS[1],
        ),
        SszVector("good_model_info", "the seed's ModelInfo: the three nested", ModelInfo, INFO),
    ]  # fmt: skip
    good = [dataclasses.replace(v, data=ssz.to_ssz(v.value)) for v in good]
    configs = [CONFIG, ModelConfig("", 0, 0, [], 0, -0.5, False, "ünï"), CONFIG]
    batches = [
        SszVector("good_performance_metrics_list", "a batch: two PerformanceMetrics, one SSZ "
                  "list of fixed-size values", PerformanceMetrics, METRICS, batch=True),
        SszVector("good_model_config_list", "a batch: three ModelConfigs, one SSZ list of "
                  "variable-size values (offsets first)", ModelConfig, configs, batch=True),
    ]  # fmt: skip
    batches = [dataclasses.replace(v, data=_batch(v.cls, v.value)) for v in batches]
    listed = batches[1].data
    config = good[0].data
    bad = [
        SszVector("bad_truncated_fixed_part", "ModelConfig cut inside its fixed part",
                  ModelConfig, data=config[:10], error={"reason": "bad_ssz"}),
        SszVector("bad_first_offset", "ModelConfig whose first offset is one past the fixed "
                  "part", ModelConfig, data=_bump_first_offset(config),
                  error={"reason": "bad_ssz"}),
        SszVector("bad_boolean_byte", "ModelConfig whose boolean byte is 2", ModelConfig,
                  data=_bad_boolean(config), error={"reason": "bad_ssz"}),
        SszVector("bad_union_selector", "ModelInfo whose status selector is 3", ModelInfo,
                  data=good[3].data[:-4] + b"\x03ok", error={"reason": "bad_ssz"}),
        SszVector("bad_model_config_list_offset", "a batch of three ModelConfigs whose second "
                  "offset is past the end", ModelConfig, batch=True,
                  data=listed[:4] + (len(listed) + 1).to_bytes(4, "little") + listed[8:],
                  error={"reason": "bad_ssz"}),
    ]  # fmt: skip
    return good + batches + bad


def _batch(cls: type, values: list[Any]) -> bytes:
    from beambridge.ssz_batch import encode_list

    return encode_list(ssz.schema_type(cls), values)


def _bump_first_offset(data: bytes) -> bytes:
    first = int.from_bytes(data[:4], "little")
    return (first + 1).to_bytes(4, "little") + data[4:]


def _bad_boolean(data: bytes) -> bytes:
    at = 4 + 4 + 2 + 4 + 4 + 4  # name offset, hidden_size, num_heads, layers offset, vocab, dropout
    return data[:at] + b"\x02" + data[at + 1 :]


def check_ssz(v: SszVector) -> dict[str, Any]:
    """The vector's JSON, after checking it with the package: a good one reads back to
    its value and writes the same bytes, a bad one fails with its error."""
    from beambridge.ssz_batch import decode_list

    t = ssz.schema_type(v.cls)

    def read(data: bytes) -> Any:
        return decode_list(t, data) if v.batch else ssz.from_ssz(v.cls, data)

    doc: dict[str, Any] = {
        "name": v.name,
        "description": v.description,
        "batch": v.batch,
        "valid": v.error is None,
        "schema": ssz.schema_type(v.cls).schema_name,
        "schemas": schemas_json(v.cls),
        "size": len(v.data),
    }
    if v.error is None:
        if v.batch:
            assert _batch(v.cls, read(v.data)) == v.data, v.name
            doc["value"] = [value_json(t, x) for x in v.value]
        else:
            assert ssz.to_ssz(read(v.data)) == v.data, v.name
            doc["value"] = value_json(t, v.value)
    else:
        try:
            read(v.data)
        except bt.SchemaError as err:
            assert err.reason == v.error["reason"], (v.name, err)
        else:
            raise AssertionError(f"{v.name} reads")
        doc["error"] = v.error
    return doc


def schemas_json(cls: type) -> dict[str, Any]:
    """Every container ``cls`` needs, by name: version and fields."""
    found: dict[str, Any] = {}

    def visit(t: Any) -> None:
        if isinstance(t, ssz.ContainerType):
            if t.schema_name in found:
                return
            found[t.schema_name] = {
                "version": t.cls.__bb_schema__.version,
                "fields": [[n, type_json(ft)] for n, ft, _ in t.fields],
            }
            for _, ft, _ in t.fields:
                visit(ft)
        for inner in (getattr(t, "elem", None), *getattr(t, "options", ())):
            if inner is not None:
                visit(inner)

    visit(ssz.schema_type(cls))
    return found


def type_json(t: Any) -> Any:
    if isinstance(t, ssz.ContainerType):
        return {"schema": t.schema_name}
    if isinstance(t, bt.ListType):
        return {"list": [type_json(t.elem), t.limit]}
    if isinstance(t, bt.VectorType):
        return {"vector": [type_json(t.elem), t.length]}
    if isinstance(t, bt.UnionType):
        if t.name.startswith("Optional["):
            return {"optional": type_json(t.options[1])}
        return {"union": [None if o is None else type_json(o) for o in t.options]}
    return {"Bytes": "bytes", "String": "string"}.get(t.name, t.name)


def value_json(t: Any, v: Any) -> Any:
    if isinstance(t, ssz.ContainerType):
        return {n: value_json(ft, getattr(v, n)) for n, ft, _ in t.fields}
    if isinstance(t, (bt.ListType, bt.VectorType)):
        return [value_json(t.elem, x) for x in v]
    if isinstance(t, bt.UnionType):
        if t.name.startswith("Optional["):
            return None if v is None else value_json(t.options[1], v)
        option = t.options[v[0]]
        return [v[0], None if option is None else value_json(option, v[1])]
    if isinstance(t, bt.BytesType):
        return {"hex": bytes(v).hex()}
    if isinstance(t, bt.Float) and t.bits == 32:
        import struct

        return struct.unpack("<f", struct.pack("<f", v))[0]  # the value as it reads back
    return v
