"""Describing frames across the bridge (protocol/SPEC.md §5.4): Python writes frames
(dumps of tensors and bytes made inside a call record, one of them with a corrupted
payload, one whose provenance block is corrupt), the BEAM writes its own (a real
worker's result, passed through a second call, dumped; a fresh binary; a tensor) in ONE
`mix run tests/cross/inspect_peer.exs DIR`; then every frame's description, as
`python -m beambridge inspect` and `mix beambridge.inspect` print it, must be the same
text on both sides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from beambridge import frame
from beambridge.call_record import CallRecord
from beambridge.description import read_file, to_json

ROOT = Path(__file__).resolve().parents[2]


def _python_frames(dir: Path) -> None:
    record = CallRecord("python", "cross.1")
    record.begin("cross", "make", {b"round": 3, b"tags": [b"a", b"b"]})
    frame.dump(np.arange(500, dtype="<f8").reshape(50, 10), str(dir / "python_tensor.frame"))
    frame.dump(b"p" * 4000, str(dir / "python_bytes.frame"))
    record.end()
    data = bytearray((dir / "python_bytes.frame").read_bytes())
    d = read_file(str(dir / "python_bytes.frame"))
    data[d["payload_offset"] + 10] ^= 0xFF  # the payload is never read: same description
    (dir / "python_corrupt_payload.frame").write_bytes(bytes(data))
    data = bytearray((dir / "python_bytes.frame").read_bytes())
    data[128 + d["lengths"]["metadata"] + 3] ^= 0x01  # the block no longer matches
    (dir / "python_corrupt_block.frame").write_bytes(bytes(data))


def test_both_inspect_commands_describe_every_frame_the_same(tmp_path: Path) -> None:
    _python_frames(tmp_path)
    run = subprocess.run(
        ["mix", "run", "tests/cross/inspect_peer.exs", str(tmp_path)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and "DESCRIBED" in run.stdout, (
        run.stdout[-3000:] + run.stderr[-3000:]
    )
    frames = sorted(tmp_path.glob("*.frame"))
    assert len(frames) == 7
    for path in frames:
        ours = to_json(read_file(str(path)))
        theirs = path.with_suffix(".ex.json").read_text()
        assert theirs == ours, path.name

    described = {p.stem: json.loads(to_json(read_file(str(p)))) for p in frames}
    result = described["elixir_result"]
    assert result["meta"] == {
        "round": 12,
        "client": "c7\x7f\x01",
        "é": [1.5, "ü😀"],
        "floats": [1e-05, 1e16, 1e15, -0.0, 123.456, 5e-324, 0.1],
    }
    assert [e["handler"] for e in result["lineage"]] == [
        "bbt_provenance.blob",
        "bbt_provenance.same",
    ]
    assert result["producer"]["side"] == "python"
    assert described["elixir_fresh"]["producer"]["side"] == "elixir"
    assert described["elixir_tensor"]["descriptor"]["shape"] == [3000]
    assert described["python_tensor"]["meta"] == {"round": 3, "tags": ["a", "b"]}
    assert described["python_tensor"]["lineage"][0]["handler"] == "cross.make"
    corrupt = described["python_corrupt_payload"]
    assert corrupt["checksum"] == "not_verified"
    assert {k: v for k, v in corrupt.items()} == described["python_bytes"]
    assert described["python_corrupt_block"]["provenance_error"] == {
        "reason": "provenance_checksum_mismatch",
        "field": "provenance_checksum",
    }


def test_the_two_commands_print_the_same_text(tmp_path: Path) -> None:
    _python_frames(tmp_path)
    path = str(tmp_path / "python_tensor.frame")
    mix = subprocess.run(
        ["mix", "beambridge.inspect", path],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    py = subprocess.run(
        [sys.executable, "-m", "beambridge", "inspect", path],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert mix.returncode == 0 and py.returncode == 0, mix.stderr + py.stderr
    assert mix.stdout == py.stdout
