#!/usr/bin/env python3
"""Write the golden vectors of protocol/SPEC.md §14, all three kinds.

* frames: ``protocol/vectors/NAME.bin`` + ``NAME.json``;
* control frames: ``protocol/vectors/control/NAME.bin`` + ``NAME.json``;
* data terms: ``protocol/vectors/terms/NAME.etf`` + ``NAME.json``;
* typed schemas' SSZ bytes: ``protocol/vectors/ssz/NAME.ssz`` + ``NAME.json``.

This script is the only way the vectors are made (``make vectors``); the vectors
themselves are in ``protocol/vectorgen/``, one module per kind. Output is
deterministic: no randomness, JSON with sorted keys. Before anything is written, every
vector is checked with the package: a good frame is read back and a bad one fails at
exactly its intended check (so every earlier check in the §6 order passes); a good
control frame splits into the stated envelope and body and is a message of §8.3 for its
receiver, a bad one is refused with the stated error; a good data term decodes (as the
worker decodes arguments) to the stated value, a bad one fails with the stated error.
Files in the three directories that this script no longer makes are removed.

Usage: python protocol/gen_vectors.py [--root DIR]   all three kinds under DIR
                                                     (default protocol/vectors)
       python protocol/gen_vectors.py FRAMES_DIR     the frame vectors only
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))
sys.path.insert(0, str(HERE))  # for vectorgen: runpy.run_path does not add it

from vectorgen import provenance  # noqa: E402
from vectorgen.control import check_control, control_vectors  # noqa: E402
from vectorgen.frames import (  # noqa: E402
    bad_vectors,
    compressed_bad_vectors,
    describe_bad,
    describe_compressed_bad,
    describe_good,
    good_vectors,
)
from vectorgen.ssz import check_ssz, ssz_vectors  # noqa: E402
from vectorgen.terms import check_term, term_vectors  # noqa: E402


def _json(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def frame_files() -> dict[str, bytes]:
    made: dict[str, tuple[bytes, dict[str, Any]]] = {}
    for name, description, frame in good_vectors():
        made[name] = (frame, describe_good(name, description, frame))
    for name, description, frame, reason, field in bad_vectors():
        made[name] = (frame, describe_bad(name, description, frame, reason, field))
    for name, description, frame, reason, field in compressed_bad_vectors():
        made[name] = (frame, describe_compressed_bad(name, description, frame, reason, field))
    for name, description, frame in provenance.good_vectors():
        made[name] = (frame, provenance.describe_good_provenance(name, description, frame))
    for name, description, frame, reason, field in provenance.bad_vectors():
        doc = provenance.describe_bad_provenance(name, description, frame, reason, field)
        made[name] = (frame, doc)
    files: dict[str, bytes] = {}
    for name, (frame, doc) in made.items():
        files[f"{name}.bin"] = frame
        files[f"{name}.json"] = (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()
    return files


def control_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in control_vectors():
        assert v.name.startswith("good_" if v.valid else "bad_"), v.name
        assert f"{v.name}.bin" not in files, v.name
        files[f"{v.name}.json"] = _json(check_control(v))
        files[f"{v.name}.bin"] = v.frame
    return files


def term_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in term_vectors():
        assert v.name.startswith("good_" if v.valid else "bad_"), v.name
        assert f"{v.name}.etf" not in files, v.name
        files[f"{v.name}.json"] = _json(check_term(v))
        files[f"{v.name}.etf"] = v.etf
    return files


def ssz_files() -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for v in ssz_vectors():
        assert v.name.startswith("good_" if v.error is None else "bad_"), v.name
        assert f"{v.name}.ssz" not in files, v.name
        files[f"{v.name}.json"] = _json(check_ssz(v))
        files[f"{v.name}.ssz"] = v.data
    return files


def write(out_dir: Path, files: dict[str, bytes], suffixes: tuple[str, ...]) -> None:
    """Write ``files`` into ``out_dir`` and remove the files of ``suffixes`` it does not
    name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in out_dir.iterdir():
        if path.is_file() and path.suffix in suffixes and path.name not in files:
            path.unlink()
    for filename, data in sorted(files.items()):
        (out_dir / filename).write_bytes(data)


def main(argv: list[str]) -> int:
    args = argv[1:]
    if args[:1] == ["--root"] and len(args) == 2:
        root, frames_only = Path(args[1]), False
    elif len(args) == 1 and not args[0].startswith("-"):
        root, frames_only = Path(args[0]), True
    elif not args:
        root, frames_only = HERE / "vectors", False
    else:
        print(__doc__, file=sys.stderr)
        return 2
    kinds = [("frame", root, frame_files(), (".bin", ".json"))]
    if not frames_only:  # every check runs before anything is written
        kinds.append(("control", root / "control", control_files(), (".bin", ".json")))
        kinds.append(("term", root / "terms", term_files(), (".etf", ".json")))
        kinds.append(("ssz", root / "ssz", ssz_files(), (".ssz", ".json")))
    for kind, out_dir, files, suffixes in kinds:
        write(out_dir, files, suffixes)
        names = {f.rsplit(".", 1)[0] for f in files}
        good = sum(1 for n in names if n.startswith("good_"))
        print(f"wrote {good} good and {len(names) - good} bad {kind} vectors to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
