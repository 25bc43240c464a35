"""protocol/registry.json against the Python side.

The package takes its tables from the registry (`beambridge.registry`): the worker's
known reasons (`beambridge.control`), the handle kinds, tags, policies and copied kinds
(`beambridge.terms`), the frame format and codec codes (`beambridge.header`), the
packed dtypes and tensor schemas (`beambridge.formats`), the object kinds
(`beambridge.objects`), the directions of the format statistics (`beambridge.stats`).
These tests check that the tables are the registry's, and read the package's source for
what it uses by name: every reason it raises, every policy it compares with, every key
of the format statistics it counts under, every unsuitable code. One the registry lacks
fails a test.
"""

from __future__ import annotations

import ast
import doctest
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from beambridge import (
    callback_control,
    control,
    objects,
    registry,
    result_slices,
    stats,
    stream_control,
    terms,
)
from beambridge.encoder import ResultEncoder
from beambridge.errors import BridgeError
from beambridge.etf import Atom, encode
from beambridge.formats import packed as packed_format
from beambridge.formats import tensor as tensor_format
from beambridge.frame import Frame
from beambridge.header import Codec, Format, encode_frame

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "python" / "beambridge"
CANONICAL = ROOT / "protocol" / "registry.json"
DATA = registry.load()


def _python_side(table: dict[str, Any]) -> set[str]:
    return {name for name, entry in table.items() if "python" in entry["sides"]}


# ---- the file -------------------------------------------------------------------------


def test_package_reads_the_canonical_file() -> None:
    shipped = PACKAGE / registry.FILE
    assert shipped.read_bytes() == CANONICAL.read_bytes()
    # In a source tree the package's copy is a link to protocol/, never a second file.
    assert shipped.is_symlink() and shipped.resolve() == CANONICAL
    assert json.loads(CANONICAL.read_text("utf-8")) == DATA


def test_pyproject_ships_the_file() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    line = re.search(r"^beambridge = \[(.*)\]$", section, re.MULTILINE)
    assert line is not None and f'"{registry.FILE}"' in line.group(1)


def test_load_refuses_a_repeated_key_and_bad_shapes() -> None:
    with pytest.raises(registry.RegistryError, match="'a' appears twice"):
        registry.load('{"a": 1, "a": 2}')
    with pytest.raises(registry.RegistryError, match=r"registry\.json"):
        registry.load("[1,")
    with pytest.raises(registry.RegistryError, match="the top level must be an object"):
        registry.load("[]")


def test_every_entry_is_well_formed() -> None:
    kinds = set(DATA["reason_kinds"])
    for name, entry in DATA["reasons"].items():
        assert name.isidentifier() and name == name.lower(), name
        assert {entry["kind"], *entry.get("also", [])} <= kinds, name
        assert set(entry["sides"]) <= {"elixir", "python"} and entry["sides"], name
        assert entry["meaning"] and "\n" not in entry["meaning"], name
    assert set(DATA) == {
        "$comment",
        "version",
        "reason_kinds",
        "reasons",
        "messages",
        "tags",
        "handle_kinds",
        "tensor_schemas",
        "object_kinds",
        "lane",
        "signals",
        "slice_sources",
        "formats",
        "codecs",
        "policies",
        "packed_dtypes",
        "records_layouts",
        "unsuitable",
        "stats",
    }


def test_doctests() -> None:
    result = doctest.testmod(registry, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# ---- reasons ---------------------------------------------------------------------------


def test_a_bad_call_carries_only_wire_reasons() -> None:
    # the BEAM is sure to know a wire reason's atom; anything else goes as badarg
    assert control.KNOWN_REASONS == registry.WIRE_REASONS
    for reason in sorted(registry.REASONS | {"eacces", "no_such_reason"}):
        sent = control.bad_call(reason, b"")[1]
        assert sent == (reason if reason in registry.WIRE_REASONS else "badarg"), reason


def test_unsupported_dtype_is_a_wire_reason() -> None:
    # A worker result holding an array of an unsupported dtype fails the call with this
    # reason; before the control channel's rewrite it reached the BEAM as bad_term.
    assert "unsupported_dtype" in registry.WIRE_REASONS
    assert registry.reason_kind("unsupported_dtype") == "format"


def _trees() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text("utf-8"))


def _base_names(node: ast.ClassDef) -> set[str]:
    return {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}


def _first_parameter(node: ast.FunctionDef, method: bool) -> str | None:
    params = node.args.posonlyargs + node.args.args
    params = params[1:] if method else params
    return params[0].arg if params else None


def _takes_reason(node: ast.AST, method: bool) -> bool:
    return (
        isinstance(node, ast.FunctionDef)
        and (node.name == "__init__") == method
        and _first_parameter(node, method) == "reason"
    )


def _fallbacks() -> Iterator[tuple[Path, ast.IfExp]]:
    """``reason if ... else "badarg"`` in what takes a reason: the reason put in place
    of one the peer would not know."""
    for path, tree in _trees():
        for f in ast.walk(tree):
            if _takes_reason(f, method=False) or _takes_reason(f, method=True):
                for node in ast.walk(f):
                    body = node.body if isinstance(node, ast.IfExp) else None
                    if isinstance(body, ast.Name) and body.id == "reason":
                        yield path, node


def _reason_constructors() -> set[str]:
    """Names of what takes a reason first, found in the source: `BridgeError` and every
    class derived from it (to a fixed point), classes whose ``__init__`` and functions
    whose first parameter is named ``reason``."""
    nodes = [n for _, tree in _trees() for n in ast.walk(tree)]
    classes = [n for n in nodes if isinstance(n, ast.ClassDef)]
    names = {BridgeError.__name__}
    for c in classes:
        if any(_takes_reason(f, method=True) for f in c.body):
            names.add(c.name)
    names |= {f.name for f in nodes if _takes_reason(f, method=False)}
    while True:
        more = {c.name for c in classes if _base_names(c) & names} - names
        if not more:
            return names
        names |= more


def _chosen_reasons() -> Iterator[tuple[Path, ast.Assign]]:
    """``reason = <literal or conditional>`` in a function that then builds an error
    with ``reason`` first: a reason chosen before the error is built."""
    constructors = _reason_constructors()
    for path, tree in _trees():
        for f in ast.walk(tree):
            if not isinstance(f, ast.FunctionDef):
                continue
            builds = any(
                isinstance(n, ast.Call)
                and _called(n) in constructors
                and n.args
                and isinstance(n.args[0], ast.Name)
                and n.args[0].id == "reason"
                for n in ast.walk(f)
            )
            for node in ast.walk(f):
                if (
                    builds
                    and isinstance(node, ast.Assign)
                    and any(isinstance(t, ast.Name) and t.id == "reason" for t in node.targets)
                ):
                    yield path, node


def _literals(node: ast.expr | None) -> Iterator[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _literals(node.body)
        yield from _literals(node.orelse)


def _called(node: ast.Call) -> str | None:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    return func.attr if isinstance(func, ast.Attribute) else None


def _calls(name: str | set[str]) -> Iterator[tuple[Path, ast.Call]]:
    names = {name} if isinstance(name, str) else name
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _called(node) in names:
                yield path, node


def raised_reasons() -> dict[str, str]:
    """Every reason the package's code builds an error with, as a literal (or the
    literal branches of a conditional): reason -> where. Reasons computed at run time
    (errno names, a caught error's reason passed on) are not literals."""
    found: dict[str, str] = {}
    for path, call in _calls(_reason_constructors()):
        first = call.args[0] if call.args else None
        keyword = next((k.value for k in call.keywords if k.arg == "reason"), None)
        for reason in _literals(first or keyword):
            if reason.islower() and reason[:1].isalpha() and reason.replace("_", "").isalnum():
                found.setdefault(reason, f"{path.relative_to(ROOT)}:{call.lineno}")
    for path, node in _fallbacks():
        for reason in _literals(node.orelse):
            found.setdefault(reason, f"{path.relative_to(ROOT)}:{node.lineno}")
    for path, assign in _chosen_reasons():
        for reason in _literals(assign.value):
            found.setdefault(reason, f"{path.relative_to(ROOT)}:{assign.lineno}")
    return found


def test_every_reason_the_python_code_raises_is_registered() -> None:
    raised = raised_reasons()
    # the three ways a reason is written: as the error's first argument, as the
    # fallback of one the peer would not know, chosen before the error is built
    assert {"unsupported_dtype", "bad_magic", "peer_open_failed", "no_space"} <= raised.keys()
    missing = {r: where for r, where in raised.items() if r not in registry.REASONS}
    assert missing == {}, "reasons raised in the package but not in protocol/registry.json"


def test_the_source_scan_sees_a_reason_the_registry_lacks() -> None:
    tree = ast.parse('raise ArenaError("no_such_reason", "field")')
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call))
    assert _called(call) in _reason_constructors()
    assert list(_literals(call.args[0])) == ["no_such_reason"]
    assert "no_such_reason" not in registry.REASONS


def test_python_sides_are_what_python_raises() -> None:
    raised = set(raised_reasons())
    listed = _python_side(DATA["reasons"])
    assert raised <= listed, "reasons raised in the package whose sides lack python"
    assert listed - raised == set(), "reasons listed for python that it never raises"


# ---- handle kinds, tags, messages ----------------------------------------------------------


def test_handle_kinds() -> None:
    kinds = {str(k): f.name.lower() for k, f in terms.KIND_FORMATS.items()}
    assert kinds == dict(registry.HANDLE_KINDS)
    names = {str(v) for n, v in vars(terms).items() if n.startswith("KIND_") and type(v) is Atom}
    assert names == set(registry.HANDLE_KINDS)
    schemas = {str(k): tuple(v) for k, v in terms.KIND_SCHEMAS.items()}
    assert schemas == {k: v for k, v in registry.HANDLE_KIND_SCHEMAS.items() if k != "packed"}
    assert {str(k) for k in terms.COPIED_KINDS} == registry.COPIED_KINDS


def _frame(schema_id: int, version: int, metadata: bytes, payload: bytes) -> Frame:
    data = encode_frame(
        payload,
        metadata=metadata,
        format=Format.TENSOR,
        schema_id=schema_id,
        schema_version=version,
    )
    return Frame.from_bytes(data)


def test_packed_frames_are_of_their_schemas_only() -> None:
    packed = registry.HANDLE_KIND_SCHEMAS["packed"]
    for schema in DATA["tensor_schemas"]:
        frame = _frame(schema["id"], schema["version"], encode((b"<i2", [2])), b"\x01\x00\x02\x00")
        if schema["id"] in packed:
            assert packed_format.read_packed(frame) == [1, 2]
        else:
            with pytest.raises(BridgeError) as info:
                packed_format.read_packed(frame)
            assert info.value.field == "format"


def test_tensor_schemas() -> None:
    by_name = {s["name"]: (s["id"], s["version"]) for s in DATA["tensor_schemas"]}
    assert by_name == dict(registry.TENSOR_SCHEMAS)
    assert registry.TENSOR_SCHEMAS["packed"] == packed_format.SCHEMA
    assert by_name == {
        "packed": (tensor_format.SCHEMA_PACKED, 0),
        "tensor": (tensor_format.SCHEMA_TENSOR, tensor_format.SCHEMA_VERSION),
        "bundle": (tensor_format.SCHEMA_BUNDLE, tensor_format.SCHEMA_VERSION),
        "coo": (tensor_format.SCHEMA_COO, tensor_format.SCHEMA_VERSION),
    }
    known = {s["id"] for s in DATA["tensor_schemas"]}
    assert all(set(ids) <= known for ids in registry.HANDLE_KIND_SCHEMAS.values())
    assert all(registry.HANDLE_KINDS[k] == "tensor" for k in registry.HANDLE_KIND_SCHEMAS)


def test_tags_layouts_and_messages() -> None:
    tags = {str(v) for n, v in vars(terms).items() if n.startswith("TAG_")}
    assert tags == set(DATA["tags"])
    assert (str(terms.LAYOUT_ROWS), str(terms.LAYOUT_COLUMNS)) == registry.RECORDS_LAYOUTS
    atoms = {
        str(v)
        for module in (control, stream_control, callback_control)
        for n, v in vars(module).items()
        if n.startswith("A_")
    }
    names = set(registry.OBJECT_KINDS) | set(DATA["slice_sources"])
    assert atoms == set(DATA["messages"]) | names
    assert set(DATA["tags"]) == registry.TAGS and set(DATA["messages"]) == registry.MESSAGES


def test_object_kinds() -> None:
    assert dict(registry.OBJECT_KINDS) == objects.KINDS
    codes = (objects.KIND_ARENA, objects.KIND_SEALED, objects.KIND_LEASE_TABLE, objects.KIND_LANE)
    names = ("arena", "sealed", "lease_table", "lane")
    assert codes == tuple(registry.OBJECT_KINDS[k] for k in names)


def test_lane_layout() -> None:
    """Each word on a cache line of its own past the object header, the two areas
    apart, page-aligned and inside the object (SPEC §8.5)."""
    lane = registry.LANE
    words = ["call_seq", "call_len", "answer_seq", "answer_len", "awake", "parked"]
    offsets = [lane[w] for w in words]
    assert all(o % 64 == 0 and o >= objects.OBJECT_HEADER for o in offsets)
    assert len(set(offsets)) == len(offsets)
    assert max(offsets) + 8 <= lane["call_area"]
    assert lane["call_area"] % objects.PAGE == 0 == lane["answer_area"] % objects.PAGE
    assert lane["call_area"] + lane["area_size"] <= lane["answer_area"]
    assert lane["answer_area"] + lane["area_size"] <= lane["size"]
    assert lane["size"] % objects.PAGE == 0


# ---- codes, policies, dtypes ---------------------------------------------------------------


def test_formats_and_codecs() -> None:
    # every code of the registry is a member (a member the registry lacks fails import)
    assert {f.name.lower(): int(f) for f in Format} == dict(registry.FORMATS)
    assert {c.name.lower(): int(c) for c in Codec} == dict(registry.CODECS)


def _compared_with(word: str) -> set[str]:
    """String literals the package compares with a name holding ``word``
    (``self._policy == "packed"``)."""

    def named(node: ast.expr) -> bool:
        name = node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")
        return word in name

    found: set[str] = set()
    for _, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(named(side) for side in sides):
                    found |= {c.value for c in sides if isinstance(c, ast.Constant)}
    return found


def test_policies() -> None:
    assert terms.POLICIES == registry.POLICIES
    used = _compared_with("policy")
    assert {"etf", "packed", "arrow"} <= used  # the scan sees the encoder's choices
    assert used <= set(registry.POLICIES), "policies the package names but the registry lacks"
    assert ResultEncoder().policy == registry.POLICIES[0]  # the default comes first
    for policy in registry.POLICIES:
        assert ResultEncoder(policy=policy).policy == policy
    with pytest.raises(ValueError, match="format policy"):
        ResultEncoder(policy="no_such_policy")


def test_packed_dtypes() -> None:
    assert packed_format.PACKED_DTYPES == registry.PACKED_DTYPES
    ints = [d.encode() for d, _, _ in packed_format.INT_DTYPES]
    assert (*ints, packed_format.FLOAT_DTYPE.encode()) == registry.PACKED_DTYPES
    # each integer dtype is the one chosen for its own range: narrowest, signed first
    for dtype, lo, hi in packed_format.INT_DTYPES:
        info = np.iinfo(dtype)
        assert (lo, hi) == (int(info.min), int(info.max))
        numbers = packed_format.classify_numbers([lo, hi])
        assert isinstance(numbers, packed_format.Numbers) and numbers.dtype == dtype
    assert packed_format.classify_numbers([0.5, 1.5]) == packed_format.Numbers("<f8")


# ---- format statistics ---------------------------------------------------------------------


def test_unsuitable_codes() -> None:
    codes = {r for _, call in _calls("Unsuitable") for r in _literals(call.args[0])}
    assert codes == _python_side(DATA["unsuitable"]) == registry.UNSUITABLE


def test_stats_keys() -> None:
    table = DATA["stats"]
    directions = {d["name"]: d["python"] for d in table["directions"]}
    assert (directions["arguments"], directions["results"]) == (stats.ARGUMENTS, stats.RESULTS)
    assert _python_side(table["forms"]) == stats.FORMS
    assert _python_side(table["reasons"]) | _python_side(DATA["unsuitable"]) == stats.REASONS
    seen: dict[str, set[str]] = {"direction": set(), "form": set(), "reason": set()}
    for _, call in _calls("note"):
        for what, arg in zip(("direction", "form", "reason"), call.args, strict=False):
            if isinstance(arg, ast.Name):
                seen[what].add(arg.id)
            seen[what] |= set(_literals(arg))
    assert seen["direction"] == {"ARGUMENTS", "RESULTS"}  # the registry's, never a literal
    assert {"packed", "records", "etf"} <= seen["form"]  # the scan sees the literals
    assert seen["form"] - {"kind"} <= stats.FORMS | {"form"}, "forms the registry lacks"
    literal_reasons = seen["reason"] - {"reason", "decision"}
    assert literal_reasons <= stats.REASONS, "reasons the registry lacks"


#: The reasons a result at or above the threshold goes inline for
#: (`beambridge.result_slices.ResultSlices.place`): the arenas' limits, the lease table,
#: the memory.
INLINE_REASONS = {"too_large", "arena_full", "no_tickets", "no_space"}


def test_results_sent_inline_are_counted_under_known_keys() -> None:
    assert set(result_slices.INLINE_FORMS) <= set(registry.HANDLE_KINDS)
    assert set(raised_reasons()) & registry.REASONS >= INLINE_REASONS
    forms = set(result_slices.INLINE_FORMS.values())
    unlisted = {("form", f) for f in forms - stats.FORMS}
    unlisted |= {("reason", r) for r in INLINE_REASONS - stats.REASONS}
    assert unlisted == set(), "statistics keys the registry lacks for the Python side"


def test_signals_name_posix_signals() -> None:
    import signal

    assert dict(registry.SIGNALS) == {"cancel": "SIGUSR1"}
    for name in registry.SIGNALS.values():
        assert isinstance(signal.Signals[name], signal.Signals)
