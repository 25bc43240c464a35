"""Handlers for tests/cross/ssz_peer.exs: the schemas the Python side drew at random,
declared in the worker from their JSON, and values of them echoed back as they came."""

from __future__ import annotations

import json
from typing import Any

from beambridge import ssz
from ssz_json import classes_from_json

#: The classes declared, by schema name.
declared: dict[str, type] = {}


def declare(cases_json: bytes) -> int:
    """Declares the schemas of every case in ``cases_json`` (tests/cross/ssz_peer.exs)."""
    for case in json.loads(cases_json):
        declared.update(classes_from_json(case["schemas"]))
    return len(declared)


def echo(value: Any, name: bytes, hex_: bytes) -> Any:
    """The value as it came, after checking it is an instance of the class declared for
    ``name`` whose bytes are ``hex_`` (Elixir's): a list of them is checked one by one."""
    cls = declared[name.decode()]
    for v in value if isinstance(value, list) else [value]:
        assert type(v) is cls, (type(v), cls)
        assert ssz.to_ssz(v).hex() == hex_.decode(), (ssz.to_ssz(v).hex(), hex_)
    return value
