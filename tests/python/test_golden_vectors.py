"""Every control-frame and data-term vector in protocol/vectors/ is a test, by name
(SPEC.md §14; protocol/gen_vectors.py writes them).

A control frame the BEAM sends goes through the worker's reader: `control.split`, then
`control.from_beam`. A frame a worker sends goes through the package's reader of
worker frames, `control.split` and `control.from_worker` (what
tests/python/worker_harness.py reads a worker with), and must be the bytes
`control.join` writes for its envelope. A data term is decoded as the worker decodes a
call's arguments: `beambridge.etf.decode`, then `beambridge.decoder.Decoder`. Values
are compared as term JSON; a vector with ``xfail`` (the two sides disagree; see the
vector) is skipped.
"""

from __future__ import annotations

import json
import runpy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from beambridge import Atom, control, control_shortcuts, stream_control
from beambridge.decoder import Decoder
from beambridge.errors import BridgeError
from beambridge.etf import decode
from beambridge.formats.packed import PACKED_DTYPES

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"
CONTROL = VECTORS / "control"
TERMS = VECTORS / "terms"
CONTROL_NAMES = sorted(p.stem for p in CONTROL.glob("*.json"))
TERM_NAMES = sorted(p.stem for p in TERMS.glob("*.json"))
#: The message a reader returns for each envelope tag.
MESSAGES = {
    "object": control.ObjectAnnouncement,
    "object_dropped": control.ObjectDropped,
    "call": control.Call,
    "sealed_mapped": control.SealedMapped,
    "shutdown": control.Shutdown,
    "ready": control.Ready,
    "ok": control.Answer,
    "error": control.Answer,
    "released": control.Released,
    "fallbacks": control.Fallbacks,
    "log": control.Log,
    "lane": control.LaneRing,
    "element": stream_control.Element,
    "ack": stream_control.Ack,
    "done": stream_control.Done,
    "cancel": stream_control.Cancel,
    "abort": stream_control.Abort,
}


def term_json(value: Any) -> Any:
    """SPEC §14's term JSON of a value as the worker holds it."""
    if value is True or value is False or value is None:
        return {"atom": {True: "true", False: "false", None: "nil"}[value]}
    kind = type(value)
    if kind is int:
        return {"int": value}
    if kind is float:
        return {"float": value}
    if kind is Atom:
        return {"atom": str(value)}
    if kind in (bytes, memoryview):
        return {"bin": bytes(value).hex()}
    if kind in (list, tuple):
        return {kind.__name__: [term_json(v) for v in value]}
    if kind is dict:
        pairs = [[term_json(k), term_json(v)] for k, v in value.items()]
        return {"map": sorted(pairs, key=lambda pair: canonical(pair[0]))}
    if kind is np.ndarray:
        order = "F" if value.flags.f_contiguous and not value.flags.c_contiguous else "C"
        shape = list(value.shape)
        data = value.tobytes(order=order).hex()
        return {"tensor": {"dtype": value.dtype.str, "shape": shape, "order": order, "bin": data}}
    raise TypeError(f"no term JSON for {kind}")


def canonical(doc: Any) -> str:
    """Compact JSON text: equal exactly when the values are (1 is not 1.0, -0.0 is not
    0.0), the order of a map's pairs included."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def from_term_json(doc: dict[str, Any]) -> Any:
    """The Python value of a term JSON rendering (not tensors)."""
    ((kind, x),) = doc.items()
    if kind == "atom":
        return {"true": True, "false": False, "nil": None}.get(x, Atom(x))
    if kind in ("int", "float"):
        return x
    if kind == "bin":
        return bytes.fromhex(x)
    if kind == "list":
        return [from_term_json(v) for v in x]
    if kind == "tuple":
        return tuple(from_term_json(v) for v in x)
    if kind == "map":
        return {from_term_json(k): from_term_json(v) for k, v in x}
    raise ValueError(f"no value for {doc!r:.80}")


def load(directory: Path, name: str, ext: str) -> tuple[dict[str, Any], bytes]:
    doc = json.loads((directory / f"{name}.json").read_text(encoding="utf-8"))
    assert doc["name"] == name
    assert name.startswith("good_" if doc["valid"] else "bad_")
    if "xfail" in doc:
        pytest.skip(doc["xfail"])
    return doc, (directory / f"{name}{ext}").read_bytes()


def worker_error(error: dict[str, Any]) -> dict[str, Any]:
    """The error python/beambridge must give (the vector's ``worker`` half, when the two
    sides word it differently)."""
    return error.get("worker", error)


def check_error(exc: BridgeError, expected: dict[str, Any]) -> None:
    assert exc.reason == expected["reason"], str(exc)
    if "field" in expected:
        assert exc.field == expected["field"], str(exc)


# ---- control frames --------------------------------------------------------------------------


def read(doc: dict[str, Any], frame: bytes) -> tuple[Any, memoryview | None, Any]:
    reader = control.from_beam if doc["from"] == "beam" else control.from_worker
    envelope, body = control.split(frame)
    message = reader(envelope, body is not None)
    if doc["from"] == "beam":
        # the worker's own reader, twice: the second time its atoms are known and a
        # plain call takes the shortcut, which must read the same message
        for _ in range(2):
            quick, quick_body = control_shortcuts.read_beam(frame)
            assert quick == message
            assert (None if quick_body is None else bytes(quick_body)) == (
                None if body is None else bytes(body)
            )
    return envelope, body, message


@pytest.mark.parametrize("name", CONTROL_NAMES)
def test_control_vector(name: str) -> None:
    doc, frame = load(CONTROL, name, ".bin")
    assert doc["frame_size"] == len(frame)
    assert doc["from"] in ("beam", "worker")
    if not doc["valid"]:
        with pytest.raises(control.ProtocolError) as info:
            read(doc, frame)
        check_error(info.value, worker_error(doc["error"]))
        return
    envelope, body, message = read(doc, frame)
    assert canonical(term_json(envelope)) == canonical(doc["envelope"])
    if doc["body"] is None:
        assert body is None
    else:
        assert body is not None
        assert canonical(term_json(decode(body))) == canonical(doc["body"])
    tag = envelope if type(envelope) is Atom else envelope[0]
    assert type(message) is MESSAGES[tag]
    if doc["from"] == "worker":  # the worker writes these bytes
        parts = control.join(from_term_json(doc["envelope"]), None if body is None else [body])
        assert b"".join(bytes(p) for p in parts) == frame


def test_control_vectors_hold_every_message() -> None:
    """Every message of SPEC §8.3 in its direction, and refused frames of each side."""
    seen: dict[str, set[Any]] = {"beam": set(), "worker": set()}
    bad = {"beam": 0, "worker": 0}
    for name in CONTROL_NAMES:
        doc = json.loads((CONTROL / f"{name}.json").read_text(encoding="utf-8"))
        if not doc["valid"]:
            bad[doc["from"]] += 1
            continue
        envelope = from_term_json(doc["envelope"])
        if type(envelope) is Atom:
            seen[doc["from"]].add(str(envelope))
            continue
        tag = str(envelope[0])
        kinds = {
            "object": lambda e: str(e[1]),
            "ok": lambda e: tuple(str(s[0]) for s in e[2]),
            "error": lambda e: str(e[2][0]),
            "call": lambda e: (bool(e[4]), bool(e[5])),
            "log": lambda e: str(e[1]),
        }
        seen[doc["from"]].add((tag, kinds[tag](envelope)) if tag in kinds else tag)
    assert seen["beam"] >= {
        ("object", "arena"),
        ("object", "lease_table"),
        "object_dropped",
        ("call", (False, False)),
        ("call", (True, False)),
        ("call", (False, True)),
        ("call", (True, True)),
        "sealed_mapped",
        "shutdown",
        ("object", "lane"),
        "lane",
        "element",
        "ack",
        "done",
        "cancel",
        "abort",
    }
    assert seen["worker"] >= {
        "ready",
        ("object", "arena"),
        ("object", "sealed"),
        "object_dropped",
        ("ok", ()),
        ("ok", ("worker",)),
        ("ok", ("sealed",)),
        ("ok", ("beam",)),
        ("error", "python_exception"),
        ("error", "bad_call"),
        "released",
        ("log", "stdout"),
        ("log", "stderr"),
        "lane",
        "element",
        "ack",
        "done",
    }
    assert bad["beam"] >= 8 and bad["worker"] >= 8


# ---- data terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TERM_NAMES)
def test_term_vector(name: str) -> None:
    doc, data = load(TERMS, name, ".etf")
    refused = doc.get("refused_by", {}).get("worker")
    if not doc["valid"] or refused is not None:
        with pytest.raises(BridgeError) as info:
            Decoder().decode(decode(data))
        check_error(info.value, refused or worker_error(doc["error"]))
        return
    value = Decoder().decode(decode(data))
    assert canonical(term_json(value)) == canonical(doc["value"])
    if type(value) is memoryview:
        assert value.readonly
    if type(value) is np.ndarray:
        assert not value.flags.writeable


def test_term_vectors_hold_every_packed_dtype_and_form() -> None:
    tags: set[str] = set()
    dtypes: set[bytes] = set()
    for name in TERM_NAMES:
        doc = json.loads((TERMS / f"{name}.json").read_text(encoding="utf-8"))
        if not doc["valid"] or "xfail" in doc or "refused_by" in doc:
            continue
        term = decode((TERMS / f"{name}.etf").read_bytes())
        if type(term) is tuple and term and type(term[0]) is Atom:
            tags.add(str(term[0]))
            if term[0] == "$bb_packed":
                dtypes.add(term[1])
            if term[0] == "$bb_records":
                tags.add(f"$bb_records {term[1]}")
    assert dtypes == set(PACKED_DTYPES)
    assert tags >= {"$bb_packed", "$bb_records rows", "$bb_records columns", "$bb_tensor"}
    assert "$bb_buffer" in tags


# ---- the files -------------------------------------------------------------------------------


def test_vector_files_come_in_pairs() -> None:
    for directory, ext in ((CONTROL, ".bin"), (TERMS, ".etf")):
        data = sorted(p.stem for p in directory.glob(f"*{ext}"))
        descriptions = sorted(p.stem for p in directory.glob("*.json"))
        assert data == descriptions and data
        assert {p.suffix for p in directory.iterdir()} == {ext, ".json"}


def test_golden_vectors_are_up_to_date(tmp_path: Path) -> None:
    """gen_vectors.py is deterministic and the checked-in control and term vectors are
    its output (the frame vectors: tests/python/test_vectors.py)."""
    gen = runpy.run_path(str(ROOT / "protocol" / "gen_vectors.py"))
    assert gen["main"](["gen_vectors.py", "--root", str(tmp_path)]) == 0
    for sub in ("control", "terms"):
        made = sorted(p.name for p in (tmp_path / sub).iterdir())
        assert made == sorted(p.name for p in (VECTORS / sub).iterdir())
        for filename in made:
            new, old = (tmp_path / sub / filename).read_bytes(), (VECTORS / sub / filename)
            assert new == old.read_bytes(), f"{sub}/{filename}"
