"""Typed schemas and values described in JSON (protocol/vectorgen/ssz.py) as classes
and values of this side: for the golden vectors (tests/python/test_ssz.py) and the
schemas the cross-language tests draw (tests/python/handlers/bbtest_ssz.py)."""

from __future__ import annotations

import dataclasses
from typing import Any

from beambridge import ssz
from beambridge import types as bt


def classes_from_json(schemas: dict[str, Any], prefix: str = "") -> dict[str, type]:
    """Schema classes made from JSON (protocol/vectorgen/ssz.py), the nested ones first,
    each declared as ``prefix + name``."""
    made: dict[str, type] = {}

    def field_type(j: Any) -> Any:
        if isinstance(j, str):
            return {"bytes": bt.Bytes, "string": bt.String}.get(j) or getattr(bt, j)
        ((kind, arg),) = j.items()
        if kind == "schema":
            return make(arg)
        if kind == "list":
            return bt.List[field_type(arg[0]), arg[1]]
        if kind == "vector":
            return bt.Vector[field_type(arg[0]), arg[1]]
        if kind == "optional":
            return bt.Optional[field_type(arg)]
        return bt.Union[tuple(None if o is None else field_type(o) for o in arg)]

    def make(name: str) -> type:
        if name not in made:
            spec = schemas[name]
            fields = [(n, field_type(t)) for n, t in spec["fields"]]
            cls = dataclasses.make_dataclass(name.rsplit(".", 1)[-1], fields)
            made[name] = ssz.schema(prefix + name, version=spec["version"])(cls)
        return made[name]

    for name in schemas:
        make(name)
    return made


def value_from_json(t: Any, j: Any) -> Any:
    """A value of type ``t`` from its JSON."""
    if isinstance(t, ssz.ContainerType):
        return t.cls(*[value_from_json(ft, j[n]) for n, ft, _ in t.fields])
    if isinstance(t, (bt.ListType, bt.VectorType)):
        return [value_from_json(t.elem, x) for x in j]
    if isinstance(t, bt.UnionType):
        if t.name.startswith("Optional["):
            return None if j is None else value_from_json(t.options[1], j)
        option = t.options[j[0]]
        return (j[0], None if option is None else value_from_json(option, j[1]))
    if isinstance(t, bt.BytesType):
        return bytes.fromhex(j["hex"])
    return j
