"""The protocol registry: the tables the Elixir and the Python side must agree on.

One file, ``protocol/registry.json``, holds them: error reasons, handle kinds, frame
format and codec codes, shared-object kinds, format policies, the packed dtypes, the
control-message and tag atoms, and the keys of the format statistics. This module reads
it once, at import, through ``beambridge/registry.json`` (a symbolic link to the
canonical file in a source tree, a plain copy inside an installed wheel), checks its
shape and exposes the tables as immutable values. ``Bridge.Registry`` does the same on
the BEAM at compile time. The rest of the package takes its tables from here
(`beambridge.control`, `beambridge.terms`, `beambridge.header`, `beambridge.objects`,
`beambridge.stats`, `beambridge.formats.packed`, `beambridge.formats.tensor`);
``tests/python/test_registry.py`` checks that the code uses nothing the registry lacks.

>>> "unsupported_dtype" in REASONS, "no_such_reason" in REASONS
(True, False)
>>> HANDLE_KINDS["records"], FORMATS["arrow_stream"], CODECS["zstd"]
('arrow_stream', 2, 2)
>>> sorted(COPIED_KINDS)
['binary', 'custom', 'packed', 'records', 'schema_list']
>>> POLICIES, PACKED_DTYPES[:3]
(('auto', 'etf', 'packed', 'arrow'), (b'|i1', b'|u1', b'<i2'))
>>> STATS_DIRECTIONS["results"], "mixed_numbers" in STATS_REASONS
('to_elixir', True)
>>> reason_meaning("bad_magic")
'the header does not start with "BBFH" (SPEC §6 check 2)'
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from types import MappingProxyType
from typing import Any

__all__ = [
    "CHUNKABLE_TAGS",
    "CODECS",
    "COPIED_KINDS",
    "FORMATS",
    "HANDLE_KINDS",
    "HANDLE_KIND_SCHEMAS",
    "LANE",
    "MESSAGES",
    "OBJECT_KINDS",
    "PACKED_DTYPES",
    "POLICIES",
    "REASONS",
    "RECORDS_LAYOUTS",
    "STATS_DIRECTIONS",
    "STATS_FORMS",
    "STATS_REASONS",
    "TAGS",
    "TENSOR_SCHEMAS",
    "UNSUITABLE",
    "WIRE_REASONS",
    "RegistryError",
    "load",
    "reason_kind",
    "reason_meaning",
]

#: The file's name inside the package.
FILE = "registry.json"
_SIDES = frozenset({"elixir", "python"})


class RegistryError(ValueError):
    """``registry.json`` is not valid JSON or does not have the registry's shape; the
    message names the path of the offending entry (``reasons.bad_magic.kind``)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise RegistryError(f"{FILE}: the key {key!r} appears twice in one object")
        result[key] = value
    return result


def load(text: str | None = None) -> dict[str, Any]:
    """The registry as parsed JSON, a fresh copy on each call: the package's
    ``registry.json``, or ``text`` when given. Objects are ``dict`` with ``str`` keys; a
    key repeated in one object, or text that is not JSON, is a `RegistryError`.

    >>> load('{"a": 1, "a": 2}')
    Traceback (most recent call last):
    ...
    beambridge.registry.RegistryError: registry.json: the key 'a' appears twice in one object
    """
    if text is None:
        package = resources.files(__package__ or "beambridge")
        text = package.joinpath(FILE).read_text(encoding="utf-8")
    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{FILE}: {exc}") from None
    return _obj(data, "")


# ---- shape checks ------------------------------------------------------------------------


def _obj(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise RegistryError(f"{FILE}: {where or 'the top level'} must be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        raise RegistryError(f"{FILE}: {where} must be an array")
    return value


def _str(value: Any, where: str) -> str:
    if type(value) is not str or not value:
        raise RegistryError(f"{FILE}: {where} must be a non-empty string")
    return value


def _int(value: Any, where: str) -> int:
    if type(value) is not int or value < 0:
        raise RegistryError(f"{FILE}: {where} must be a non-negative integer")
    return value


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise RegistryError(f"{FILE}: {where} must be true or false")
    return value


def _meaning(entry: dict[str, Any], where: str) -> str:
    text = _str(entry.get("meaning"), f"{where}.meaning")
    if "\n" in text:
        raise RegistryError(f"{FILE}: {where}.meaning must be one line")
    return text


def _sides(entry: dict[str, Any], where: str) -> frozenset[str]:
    sides = frozenset(_str(s, f"{where}.sides") for s in _list(entry.get("sides"), where))
    if not sides or not sides <= _SIDES:
        raise RegistryError(f"{FILE}: {where}.sides must name elixir and/or python")
    return sides


def _coded(data: dict[str, Any], table: str) -> Mapping[str, int]:
    """A list of ``{"name", "code", "meaning"}``: name -> code, both unique."""
    result: dict[str, int] = {}
    for i, item in enumerate(_list(data.get(table), table)):
        entry = _obj(item, f"{table}[{i}]")
        name = _str(entry.get("name"), f"{table}[{i}].name")
        code = _int(entry.get("code"), f"{table}.{name}.code")
        _meaning(entry, f"{table}.{name}")
        if name in result or code in result.values():
            raise RegistryError(f"{FILE}: {table}.{name}: the name or code {code} is used twice")
        result[name] = code
    return MappingProxyType(result)


# ---- the tables --------------------------------------------------------------------------


def _reasons(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    kinds = _obj(data.get("reason_kinds"), "reason_kinds")
    reasons: dict[str, dict[str, Any]] = {}
    for name, item in _obj(data.get("reasons"), "reasons").items():
        where = f"reasons.{name}"
        entry = _obj(item, where)
        for kind in [entry.get("kind"), *_list(entry.get("also", []), f"{where}.also")]:
            if kind not in kinds:
                raise RegistryError(f"{FILE}: {where}: kind {kind!r} is not one of reason_kinds")
        _sides(entry, where)
        _bool(entry.get("wire"), f"{where}.wire")
        _meaning(entry, where)
        reasons[name] = entry
    return reasons


def _handle_kinds(data: dict[str, Any], formats: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    kinds: dict[str, dict[str, Any]] = {}
    for name, item in _obj(data.get("handle_kinds"), "handle_kinds").items():
        where = f"handle_kinds.{name}"
        entry = _obj(item, where)
        if entry.get("format") not in formats:
            raise RegistryError(f"{FILE}: {where}.format is not one of formats")
        for i, schema in enumerate(_list(entry.get("schemas", []), f"{where}.schemas")):
            _int(schema, f"{where}.schemas[{i}]")
        copied = _obj(entry.get("copied"), f"{where}.copied")
        for side in sorted(_SIDES):
            _bool(copied.get(side), f"{where}.copied.{side}")
        _meaning(entry, where)
        kinds[name] = entry
    return kinds


def _tensor_schemas(data: dict[str, Any]) -> Mapping[str, tuple[int, int]]:
    """``tensor_schemas``: name -> ``(schema_id, schema_version)``, ids unique."""
    result: dict[str, tuple[int, int]] = {}
    for i, item in enumerate(_list(data.get("tensor_schemas"), "tensor_schemas")):
        entry = _obj(item, f"tensor_schemas[{i}]")
        name = _str(entry.get("name"), f"tensor_schemas[{i}].name")
        schema_id = _int(entry.get("id"), f"tensor_schemas.{name}.id")
        version = _int(entry.get("version"), f"tensor_schemas.{name}.version")
        _meaning(entry, f"tensor_schemas.{name}")
        if name in result or schema_id in {known for known, _ in result.values()}:
            raise RegistryError(f"{FILE}: tensor_schemas.{name}: the name or id is used twice")
        result[name] = (schema_id, version)
    return MappingProxyType(result)


def _python_side(table: dict[str, Any], where: str) -> frozenset[str]:
    """The names of a ``{name: {"sides", "meaning"}}`` table the Python side uses."""
    names = []
    for name, item in table.items():
        entry = _obj(item, f"{where}.{name}")
        _meaning(entry, f"{where}.{name}")
        if "python" in _sides(entry, f"{where}.{name}"):
            names.append(name)
    return frozenset(names)


def _directions(stats: dict[str, Any]) -> Mapping[str, str]:
    """``stats.directions``: the registry's name of a direction -> the Python side's."""
    result: dict[str, str] = {}
    for i, item in enumerate(_list(stats.get("directions"), "stats.directions")):
        entry = _obj(item, f"stats.directions[{i}]")
        name = _str(entry.get("name"), f"stats.directions[{i}].name")
        result[name] = _str(entry.get("python"), f"stats.directions.{name}.python")
        _str(entry.get("elixir"), f"stats.directions.{name}.elixir")
        _meaning(entry, f"stats.directions.{name}")
    if len(set(result.values())) != len(result):
        raise RegistryError(f"{FILE}: stats.directions names a Python direction twice")
    return MappingProxyType(result)


def _names(data: dict[str, Any], table: str) -> tuple[str, ...]:
    """The ``name`` of each entry of a list of ``{"name", "meaning"}``, in order."""
    names = []
    for i, item in enumerate(_list(data.get(table), table)):
        entry = _obj(item, f"{table}[{i}]")
        names.append(_str(entry.get("name"), f"{table}[{i}].name"))
        _meaning(entry, f"{table}.{names[-1]}")
    if len(set(names)) != len(names):
        raise RegistryError(f"{FILE}: {table} names an entry twice")
    return tuple(names)


_DATA = load()
_REASONS = _reasons(_DATA)
FORMATS: Mapping[str, int] = _coded(_DATA, "formats")
"""Frame ``format`` codes (SPEC §5.1): name -> code."""
CODECS: Mapping[str, int] = _coded(_DATA, "codecs")
"""Frame ``codec`` codes (SPEC §5.1): name -> code."""
OBJECT_KINDS: Mapping[str, int] = _coded(_DATA, "object_kinds")
"""Shared-object ``kind`` codes (protocol/SPEC.md §1.1): name -> code."""
_HANDLE = _handle_kinds(_DATA, FORMATS)
LANE: Mapping[str, int] = MappingProxyType(
    {
        k: v
        for k, v in _obj(_DATA.get("lane"), "lane").items()
        if k != "meaning" and type(v) is int and v >= 0
    }
)
"""Byte offsets and sizes of a lane object (SPEC §8.5): name -> bytes."""

SIGNALS: Mapping[str, str] = MappingProxyType(
    {
        k: _str(v, f"signals.{k}")
        for k, v in _obj(_DATA.get("signals"), "signals").items()
        if k != "meaning"
    }
)
"""The signals the BEAM sends a worker (SPEC §8.7): name -> POSIX name (``SIGUSR1``)."""

REASONS: frozenset[str] = frozenset(_REASONS)
"""Every error reason either side may produce or send."""
WIRE_REASONS: frozenset[str] = frozenset(n for n, e in _REASONS.items() if e["wire"])
"""The reasons a worker may send in a ``{:bad_call, reason, message}``: the worker's list
of known reasons and the BEAM's atoms must hold each of them."""
HANDLE_KINDS: Mapping[str, str] = MappingProxyType({n: e["format"] for n, e in _HANDLE.items()})
"""Handle kind -> the frame format it reads (protocol/SPEC.md §9)."""
HANDLE_KIND_SCHEMAS: Mapping[str, tuple[int, ...]] = MappingProxyType(
    {n: tuple(e["schemas"]) for n, e in _HANDLE.items() if "schemas" in e}
)
"""Handle kinds of tensor frames -> the tensor schema ids each reads (formats/tensor.md)."""
TENSOR_SCHEMAS: Mapping[str, tuple[int, int]] = _tensor_schemas(_DATA)
"""Tensor frame schemas (formats/tensor.md): name -> ``(schema_id, schema_version)``;
``packed`` is the layout of packed frames (SPEC §10.1), not a tensor schema."""
COPIED_KINDS: frozenset[str] = frozenset(n for n, e in _HANDLE.items() if e["copied"]["python"])
"""Handle kinds whose value the Python receiver copies out of the frame: the lease ends
with the conversion."""
POLICIES: tuple[str, ...] = _names(_DATA, "policies")
"""Format policies, the ``format`` call option (SPEC §10.1), the default first."""
PACKED_DTYPES: tuple[bytes, ...] = tuple(
    _str(d, "packed_dtypes[]").encode("ascii")
    for d in _list(_DATA.get("packed_dtypes"), "packed_dtypes")
)
"""The nine dtypes of the packed form (SPEC §10.1), narrowest first."""
MESSAGES: frozenset[str] = frozenset(_obj(_DATA.get("messages"), "messages"))
"""Atoms of the control messages (protocol/SPEC.md §8.3)."""
TAGS: frozenset[str] = frozenset(_obj(_DATA.get("tags"), "tags"))
"""The reserved ``$bb_`` atoms that tag data terms (protocol/SPEC.md §9)."""
CHUNKABLE_TAGS: frozenset[str] = frozenset(
    name for name, entry in _obj(_DATA.get("tags"), "tags").items() if entry.get("chunkable")
)
"""The tags of inline terms whose payload may come as a stream of chunks (§8.6)."""
RECORDS_LAYOUTS: tuple[str, ...] = tuple(_obj(_DATA.get("records_layouts"), "records_layouts"))
"""The layouts of the records form (SPEC §10.1)."""
_STATS = _obj(_DATA.get("stats"), "stats")
STATS_DIRECTIONS: Mapping[str, str] = _directions(_STATS)
"""The directions of the format statistics (SPEC §10.1), ``arguments`` and ``results``,
by the names the Python side counts them under (``from_elixir``, ``to_elixir``)."""
STATS_FORMS: frozenset[str] = _python_side(_obj(_STATS.get("forms"), "stats.forms"), "stats.forms")
"""The forms the Python side's format statistics count."""
UNSUITABLE: frozenset[str] = _python_side(_obj(_DATA.get("unsuitable"), "unsuitable"), "unsuitable")
"""The codes of what makes a value no number list, record list or column map (SPEC
§10.1) that the Python side tells apart."""
STATS_REASONS: frozenset[str] = (
    _python_side(_obj(_STATS.get("reasons"), "stats.reasons"), "stats.reasons") | UNSUITABLE
)
"""The reasons the Python side's format statistics count a decision under: those of
``stats.reasons`` and, for a value that stayed ETF, the `UNSUITABLE` code that made it
stay."""


def reason_meaning(name: str) -> str:
    """The one-line meaning of reason ``name``; `KeyError` for a name not registered.

    >>> reason_meaning("no_tickets")
    'the worker has no free lease-table ticket, so the value goes inline (SPEC §4)'
    """
    return str(_REASONS[name]["meaning"])


def reason_kind(name: str) -> str:
    """The group reason ``name`` is listed under (``header``, ``nif``, ``lease``,
    ``arena``, ``call``, ``format``, ``arrow``, ``table``, ``worker``); `KeyError` for a
    name not registered.

    >>> reason_kind("no_module")
    'call'
    """
    return str(_REASONS[name]["kind"])
