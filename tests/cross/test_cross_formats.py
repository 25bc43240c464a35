"""Cross-language tests of format selection (protocol/SPEC.md §10.1) through a real bridge.

Hypothesis draws record lists, column maps and number lists of every column kind, key
kind and integer range (plus values that are not candidates). ONE `mix run
tests/cross/formats_peer.exs DIR COUNT THRESHOLD` per threshold starts a Bridge whose
worker serves them (handler module bbx_formats.py in DIR) and, for each, compares:

* Python -> Elixir: the value received with ``format: :etf`` and with the forced form
  (``:packed`` / ``:arrow``) must be exactly equal on the BEAM (``=:=``);
* Elixir -> Python: what the handler receives when the BEAM sends that value back
  with either format, as canonical text (types included: ``1`` is not ``1.0``,
  ``b"a"`` is not ``"a"``), must be equal and equal to the value as the type mapping
  (§10) predicts it.

With threshold 1 every form travels in a slice; with the default, small examples go
inline. The peer also reports how often each form was used, so a run where the forms
silently fell back to ETF fails.

Set BB_HYPOTHESIS_SEED to replay a run; the seed is printed.
"""

from __future__ import annotations

import os
import pickle
import random
import subprocess
from pathlib import Path
from typing import Any

import pytest
from beambridge.etf import Atom
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from strategies import WORDS, number_lists, records

ROOT = Path(__file__).resolve().parents[2]
PEER = "tests/cross/formats_peer.exs"
EXAMPLES = int(os.environ.get("BB_FORMAT_EXAMPLES", "60"))
SEED = int(os.environ.get("BB_HYPOTHESIS_SEED", random.randrange(2**32)))

#: The handler module the peer's worker imports (DIR/bbx_formats.py): it serves the
#: examples; what a value received is, as canonical text, comes from
#: tests/python/handlers/bbtest_formats.py (also on the worker's path), the handler the
#: Python tests of format selection use.
HANDLER = """
import pickle
from pathlib import Path

from bbtest_formats import canon

ATOMS = %r
_EXAMPLES = pickle.loads((Path(__file__).parent / "examples.pkl").read_bytes())


def atoms():
    return ATOMS


def forced(i):
    return _EXAMPLES[i][1]


def load(i):
    return _EXAMPLES[i][0]


def expected(i):
    \"\"\"canon of example i as the type mapping predicts the handler receives it when
    the BEAM sends the value back (SPEC §10: str arrives as a binary, then bytes).\"\"\"
    return canon(_to_elixir_and_back(_EXAMPLES[i][0]))


def _to_elixir_and_back(v):
    if type(v) is str:
        return v.encode()
    if type(v) is list:
        return [_to_elixir_and_back(x) for x in v]
    if type(v) is dict:
        return {_to_elixir_and_back(k): _to_elixir_and_back(x) for k, x in v.items()}
    return v
"""


#: Not candidates (the forced form must leave them alone), and edge cases written out.
FIXED: list[tuple[Any, str]] = [
    ([1, 2.0, 3], "packed"),  # mixed: stays a list of an int, a float, an int
    ([True, False, True], "packed"),  # booleans are not numbers
    ([{"a": 1}, {"a": 2, "b": 3}], "etf"),  # different keys: ETF
    ([{"a": [1, 2]}], "etf"),  # nested value
    (list(range(256)) * 300, "packed"),  # 76,800 bytes: past STRING_EXT's 65,535
    ([2**63, 0], "packed"),  # uint64
    ([-(2**63), 2**63 - 1], "packed"),  # int64 edges
    ([0.0, -0.0, 1e308, 5e-324], "packed"),
    ({"a": [], "b": []}, "arrow"),  # a column map of zero rows
    ([{"x": None}, {"x": None}], "arrow"),  # a null column
    ({Atom("ok"): [1, None], Atom("error"): [b"\x00\xff", None]}, "arrow"),
]


def generate() -> list[tuple[Any, str]]:
    drawn: list[tuple[Any, str]] = []

    @seed(SEED)
    @settings(max_examples=EXAMPLES, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(st.one_of(records().map(lambda v: (v, "arrow")),
                     number_lists().map(lambda v: (v, "packed"))))  # fmt: skip
    def collect(example: tuple[Any, str]) -> None:
        drawn.append(example)

    collect()
    return FIXED + drawn


@pytest.fixture(scope="module")
def examples(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[Any, str]]]:
    print(f"BB_HYPOTHESIS_SEED={SEED}")
    found = generate()
    d = tmp_path_factory.mktemp("formats")
    (d / "examples.pkl").write_bytes(pickle.dumps(found))
    (d / "bbx_formats.py").write_text(HANDLER % [w.encode() for w in WORDS])
    return d, found


@pytest.mark.parametrize("threshold", [1, 65536])
def test_forms_give_the_values_etf_gives(
    examples: tuple[Path, list[tuple[Any, str]]], threshold: int
) -> None:
    d, found = examples
    proc = subprocess.run(
        ["mix", "run", PEER, str(d), str(len(found)), str(threshold)],
        cwd=ROOT, env=dict(os.environ, MIX_ENV="test"), capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[-1] == "DONE", proc.stdout[-2000:]

    results = [line.split(" ") for line in lines if line.startswith("EX ")]
    assert len(results) == len(found)
    for (value, form), parts in zip(found, results, strict=True):
        assert parts[2] != "ERROR", f"{value!r:.300} ({form}): {' '.join(parts[3:])}"
        _, _, same, etf_hex, forced_hex, expected = parts
        assert same == "SAME", f"Python -> Elixir differs between etf and {form}: {value!r:.300}"
        assert etf_hex == forced_hex, f"Elixir -> Python: etf vs {form} differ: {value!r:.300}"
        assert etf_hex == expected, f"{value!r:.300}: {bytes.fromhex(etf_hex)!r:.300}"

    stats: dict[str, int] = {}
    for p in (line.split(" ") for line in lines):
        if p[0] == "STATS":  # "packed" inline, "packed_slice" in shared memory
            form = p[1].removesuffix("_slice")
            stats[form] = stats.get(form, 0) + int(p[2])
    assert stats.get("packed", 0) > 0 and stats.get("records", 0) > 0, stats
