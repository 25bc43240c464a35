"""Versions of typed schemas (protocol/formats/ssz.md, "Versions").

A schema's version is ``"major.minor"``. Within a major, a minor adds fields at the
end, each with a default (or ``Optional``), and says so with ``since``: a reader reads
the bytes of any older minor of its major and fills in the fields those lacked.
Across majors, a class declares ``migrations``: functions from the fields (a dict) of
an older major's value to its own. Data of an older major is read with that major's
class (declared too) and migrated step by step to the newest class of the name:

>>> from dataclasses import dataclass
>>> from beambridge.ssz import schema, to_ssz
>>> from beambridge.types import String, uint32
>>> @schema("example.Model", version="1.0")
... @dataclass
... class ModelV1:
...     name: String
...     hidden: uint32
>>> def from_v1(old):
...     return {"name": old["name"], "hidden_size": old["hidden"]}
>>> @schema("example.Model", version="2.1", since={"dtype": "2.1"}, migrations={"1.0": from_v1})
... @dataclass
... class Model:
...     name: String
...     hidden_size: uint32
...     dtype: String = "float32"
>>> read_value(b"example.Model", b"1.0", to_ssz(ModelV1("tiny", 64)))
Model(name='tiny', hidden_size=64, dtype='float32')
>>> read_value(b"example.Model", b"0.3", b"")
Traceback (most recent call last):
...
beambridge.types.SchemaError: no_migration: schema 'example.Model' came in version 0.3; \
the newest here is Model 2.1. Declare what is missing: the version 0.3 itself \
(@beambridge.schema('example.Model', version='0.3')); a migration from 0.3 to 1.0 \
(migrations={'0.3': f} on a class of 1.0 or later)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .types import SchemaError

__all__ = ["declare", "newest", "parse", "read_list", "read_value", "reader"]

#: name -> major -> the class declared for it (the last declared wins).
_by_name: dict[str, dict[int, type]] = {}

#: (class, minor) -> the container type of that older minor's fields.
_older: dict[tuple[type, int], Any] = {}


def parse(version: str) -> tuple[int, int]:
    """``"major.minor"`` (each 0 to 65535) as two integers (`ValueError` otherwise)."""
    major, _, minor = version.partition(".")
    ok = major.isascii() and major.isdigit() and minor.isascii() and minor.isdigit()
    if not ok or int(major) > 65535 or int(minor) > 65535:
        raise ValueError(f"a schema version is 'major.minor' (each 0 to 65535), got {version!r}")
    return int(major), int(minor)


def _schema(cls: Any) -> Any:
    """What `beambridge.ssz.schema` attached to ``cls``."""
    return cls.__bb_schema__


def declare(cls: type) -> None:
    """Makes schema class ``cls`` the reader of its name's major version."""
    declared = _schema(cls)
    majors = _by_name.setdefault(declared.name, {})
    majors[parse(declared.version)[0]] = cls
    for key in [k for k in _older if _schema(k[0]).name == declared.name]:
        del _older[key]


def newest(name: str) -> type | None:
    """The class of the highest major declared for ``name``."""
    majors = _by_name.get(name)
    return majors[max(majors)] if majors else None


def read_value(name: Any, version: Any, data: Any) -> Any:
    """The value a ``{:"$bb_schema", name, version, data}`` term stands for: an instance
    of the newest class declared for ``name``, migrated from an older version when it
    came in one (`SchemaError` ``unknown_schema`` or ``no_migration`` saying what to
    declare, ``migration_failed`` naming the step)."""
    from .ssz import codec

    t, finish = reader(name, version, data)
    value = codec(t)[1](memoryview(data).cast("B"), t.name)
    return value if finish is None else finish(value)


def read_list(name: Any, version: Any, data: Any) -> list[Any]:
    """The values a ``{:"$bb_schema_list", name, version, data}`` term stands for (the
    SSZ list of `beambridge.ssz_batch`), each read as `read_value` reads one."""
    from .ssz_batch import decode_list

    t, finish = reader(name, version, data)
    values = decode_list(t, data)
    return values if finish is None else [finish(v) for v in values]


def reader(name: Any, version: Any, data: Any = b"") -> tuple[Any, Callable[[Any], Any] | None]:
    """The container type to read data of ``version`` with, and what makes each value
    it reads one of the newest class (None: nothing to do)."""
    if (
        type(name) is not bytes
        or type(version) is not bytes
        or not isinstance(data, (bytes, memoryview))
    ):
        raise SchemaError("bad_ssz", "a schema value is {name, version, data}, binaries")
    text, wanted = name.decode("utf-8", "replace"), version.decode("utf-8", "replace")
    try:
        major, minor = parse(wanted)
    except ValueError:
        raise SchemaError("bad_ssz", f"schema {text!r}: {wanted!r} is no 'major.minor'") from None
    target = newest(text)
    if target is None:
        raise SchemaError(
            "unknown_schema",
            f"no class is declared for schema {text!r} here: declare it with "
            f"@beambridge.schema({text!r}, version={wanted!r}) in a module the handler imports",
        )
    have = _schema(target).version
    if major > parse(have)[0]:
        raise SchemaError(
            "unknown_schema",
            f"schema {text!r} came in version {wanted}, newer than {target.__name__} here "
            f"({have}): a reader migrates older majors, never newer ones; declare {wanted} here",
        )
    steps = _path(text, major, minor, target)
    t = _reader(_by_name[text][major], minor, wanted)
    if not steps:
        return t, None
    where = f"the migrations of schema {text!r} from {wanted} to {have}"

    def finish(value: Any) -> Any:
        fields = _fields_of(value)
        for old, new, migrate in steps:
            fields = _step(f"the migration of schema {text!r} from {old} to {new}", migrate, fields)
        return _make(target, fields, where)

    return t, finish


def _reader(cls: type, minor: int, wanted: str) -> Any:
    """The container type of ``cls`` as it was at ``minor``."""
    declared = _schema(cls)
    have = parse(declared.version)[1]
    if minor == have:
        return declared.type
    if minor > have:
        raise SchemaError(
            "unknown_schema",
            f"schema {declared.name!r} came in version {wanted}, newer than {cls.__name__} "
            f"here ({declared.version}): a reader reads older minors only; declare {wanted} here",
        )
    t = _older.get((cls, minor))
    if t is None:
        t = _older[(cls, minor)] = _older_type(cls, minor)
    return t


def _older_type(cls: type, minor: int) -> Any:
    """The container of the fields ``cls`` had at ``minor``: its values are made into
    ``cls`` with the later fields' defaults."""
    from .ssz import _MISSING, ContainerType, Factory

    declared = _schema(cls)
    t, since = declared.type, declared.since
    major = parse(declared.version)[0]
    kept = [f for f in t.fields if since.get(f[0], (major, 0)) <= (major, minor)]
    fill = [d for _, _, d in t.fields[len(kept) :]]

    def make(*values: Any) -> Any:
        later = (d.make() if isinstance(d, Factory) else None if d is _MISSING else d for d in fill)
        return cls(*values, *later)

    make.__name__ = cls.__name__
    return ContainerType(make, kept, declared.name)  # type: ignore[arg-type]


def _path(name: str, major: int, minor: int, target: type) -> list[tuple[str, str, Any]]:
    """The migrations from ``major`` to ``target``'s, or `SchemaError` ``no_migration``
    listing every declaration and migration that is missing."""
    majors = _by_name[name]
    goal = parse(_schema(target).version)[0]
    missing: list[str] = []
    if major not in majors:
        wanted = f"{major}.{minor}"
        declare = f"@beambridge.schema({name!r}, version={wanted!r})"
        missing.append(f"the version {wanted} itself ({declare})")
    steps, at = [], major
    while at < goal:
        edges = [
            (m, _schema(majors[m]).migrations[at])
            for m in sorted(majors, reverse=True)
            if at < m <= goal and at in _schema(majors[m]).migrations
        ]
        old = _version(majors, at, minor if at == major else 0)
        if edges:
            to, migrate = edges[0]
            steps.append((old, _version(majors, to, 0), migrate))
            at = to
        else:
            new = _version(majors, at + 1, 0)
            missing.append(
                f"a migration from {old} to {new} "
                f"(migrations={{{old!r}: f}} on a class of {new} or later)"
            )
            at += 1
    if missing:
        have = _schema(target).version
        raise SchemaError(
            "no_migration",
            f"schema {name!r} came in version {major}.{minor}; the newest here is "
            f"{target.__name__} {have}. Declare what is missing: " + "; ".join(missing),
        )
    return steps


def _version(majors: dict[int, type], major: int, minor: int) -> str:
    cls = majors.get(major)
    return str(_schema(cls).version) if cls is not None else f"{major}.{minor}"


def _fields_of(value: Any) -> dict[str, Any]:
    return {f: getattr(value, f) for f, _, _ in _schema(type(value)).type.fields}


def _step(where: str, migrate: Callable[..., Any], fields: dict[str, Any]) -> dict[str, Any]:
    """One step: ``migrate`` takes the fields of a value of the older version (a dict)
    and gives those of the newer (a dict, or a value of a schema class)."""
    try:
        out = migrate(dict(fields))
    except Exception as e:
        raise SchemaError("migration_failed", f"{where} raised {type(e).__name__}: {e}") from e
    if isinstance(out, dict):
        return out
    if hasattr(type(out), "__bb_schema__"):
        return _fields_of(out)
    raise SchemaError("migration_failed", f"{where} gave {out!r:.80}, not a dict of fields")


def _make(cls: type, fields: dict[str, Any], where: str) -> Any:
    """The value of ``cls`` the last step's fields make, checked by writing it."""
    from .ssz import to_ssz

    try:
        value = cls(**fields)
    except TypeError as e:
        what = f"{where} gave fields {cls.__name__} takes not: {e}"
        raise SchemaError("migration_failed", what) from e
    try:
        to_ssz(value)
    except SchemaError as e:
        raise SchemaError("migration_failed", f"{where} gave a bad value: {e}", e.field) from e
    return value
