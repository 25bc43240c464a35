"""Typed schemas across the bridge (protocol/formats/ssz.md): hypothesis draws schemas
(every field type, containers nested three deep) and values; ONE `mix run
tests/cross/ssz_peer.exs FILE` compiles each schema as a `Bridge.Schema` module and
writes the value. Elixir's bytes, Python's bytes and remerkleable's (an SSZ
implementation from PyPI) must be equal, and each side reads the other's bytes back
to the value.

Set BB_HYPOTHESIS_SEED to replay a run; the seed is printed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

from beambridge import ssz
from hypothesis import HealthCheck, given, seed, settings
from ssz_strategies import nested_schema_and_value, schema_and_value
from test_ssz import _has_float, rvalue

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "protocol"))

from vectorgen.ssz import schemas_json, value_json  # noqa: E402

SEED = int(os.environ.get("BB_HYPOTHESIS_SEED", random.randrange(2**32)))
CASES = int(os.environ.get("BB_SSZ_CASES", "60"))


def test_elixir_python_and_remerkleable_write_the_same_bytes(tmp_path: Path) -> None:
    print(f"test_ssz_cross seed: {SEED} (replay with BB_HYPOTHESIS_SEED={SEED})")
    drawn: list[tuple[ssz.ContainerType, Any]] = []

    # hypothesis explores across examples (the first ones are the simplest): each
    # example is kept, and the BEAM is started once for all of them; a tenth of them
    # are drawn nesting a container for sure
    for strategy, count in [
        (schema_and_value(), CASES - CASES // 10),
        (nested_schema_and_value(), CASES // 10),
    ]:

        @seed(SEED)
        @settings(max_examples=count, deadline=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def draw(case: tuple[ssz.ContainerType, Any]) -> None:
            drawn.append(case)

        draw()
    nested = sum(any(isinstance(ft, ssz.ContainerType) for _, ft, _ in t.fields) for t, _ in drawn)
    assert nested >= CASES // 10, f"only {nested} of {len(drawn)} schemas nest a container"
    cases = []
    for t, value in drawn:
        data = ssz.to_ssz(value)
        assert data == rvalue(t, value).encode_bytes()
        cases.append(
            {
                "schema": t.schema_name,
                "schemas": schemas_json(t.cls),
                "value": value_json(t, value),
                "hex": data.hex(),
                "floats": _has_float(t),
            }
        )
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(cases))
    run = subprocess.run(
        ["mix", "run", "tests/cross/ssz_peer.exs", str(path)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    lines = [line.split() for line in run.stdout.splitlines() if line.startswith("CASE ")]
    assert len(lines) == len(cases)
    # through Bridge.call to a worker that declared the same schemas, and back: each
    # value, and a list of three of it (one SSZ list), arrive as the class and return
    calls = [line for line in run.stdout.splitlines() if line.startswith("CALL ")]
    assert calls == [f"CALL {i} true " for i in range(len(cases))], calls[:5]
    for (_, i, hex_, same), case, (t, _value) in zip(lines, cases, drawn, strict=True):
        assert hex_ == case["hex"], (i, case["schemas"], case["value"])
        assert same == "true", (i, case)
        assert ssz.to_ssz(ssz.from_ssz(t.cls, bytes.fromhex(hex_))) == bytes.fromhex(hex_)
