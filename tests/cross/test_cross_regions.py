"""Cross-language region tests: real BEAM and real Python processes, real POSIX shm.

Python writes frames that an Elixir peer reads and verifies, and the reverse, for the
payload sizes the protocol's edge cases live at (0, 1, 63, 64, 65 bytes — around the
64-byte payload alignment — then 1 MiB and 256 MiB).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from beambridge.header import Format
from beambridge.region import Region

ROOT = Path(__file__).resolve().parents[2]
SIZES = [0, 1, 63, 64, 65, 1 << 20, 256 << 20]
PEER = "tests/cross/peer.exs"


def pattern(n: int) -> np.ndarray:
    """Byte i is i % 251 — the same pattern peer.exs builds."""
    block = np.arange(251, dtype=np.uint8)
    return np.tile(block, n // 251 + 1)[:n]


def meta(n: int) -> bytes:
    return f"size={n}".encode()


def fmt(n: int) -> Format:
    return Format.TENSOR if n % 2 else Format.RAW


def mix(*args: str, stdin: int | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ, MIX_ENV="test")
    return subprocess.Popen(
        ["mix", "run", PEER, *args],
        cwd=ROOT,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def python_regions() -> Iterator[dict[int, Region]]:
    regions: dict[int, Region] = {}
    try:
        for n in SIZES:
            region = Region.create_for_frame(n, metadata_length=len(meta(n)))
            regions[n] = region
            region.write_frame(
                pattern(n), metadata=meta(n), format=fmt(n), schema_id=n, schema_version=3
            )
        yield regions
    finally:
        for region in regions.values():
            region.close()


def test_python_writes_elixir_reads(python_regions: dict[int, Region]) -> None:
    pairs = [f"{n}:{r.name}" for n, r in python_regions.items()]
    proc = mix("read", *pairs)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    lines = [line for line in out.splitlines() if line.startswith(("OK", "FAIL"))]
    assert lines == [f"OK {n}" for n in SIZES], out + err


def test_elixir_writes_python_reads() -> None:
    proc = mix("write", *map(str, SIZES), stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    names: dict[int, str] = {}
    try:
        for line in proc.stdout:
            if line.startswith("REGION "):
                _, n, name = line.split()
                names[int(n)] = name
            elif line.strip() == "READY":
                break
        assert sorted(names) == sorted(SIZES), proc.stderr.read() if proc.stderr else ""

        for n, name in names.items():
            region = Region.attach(name)
            try:
                with region.read_frame(verify=True) as frame:
                    assert frame.header.format == fmt(n)
                    assert frame.header.schema_id == n
                    assert frame.header.schema_version == 3
                    assert frame.metadata == meta(n)
                    assert frame.payload.readonly
                    assert len(frame.payload) == n
                    got = np.frombuffer(frame.payload, dtype=np.uint8)
                    assert np.array_equal(got, pattern(n)), f"payload of {n} bytes differs"
                    del got
            finally:
                region.close()
    finally:
        proc.stdin.write("done\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "CLOSED" in out
    for name in names.values():
        assert not Path("/dev/shm", name.lstrip("/")).exists(), f"{name} left behind"


def test_python_writer_cannot_rewrite_under_a_live_beam_binary() -> None:
    """Invariant 1 across processes: while the BEAM holds a zero-copy payload of a
    Python-owned region, the Python writer is refused; once the BEAM lets go, it may."""
    from beambridge.errors import LeaseError

    n = 4096
    region = Region.create_for_frame(n)
    proc = None
    try:
        region.write_frame(pattern(n))
        proc = mix("hold", region.name, stdin=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        assert line.strip() == f"HELD {n}", line + (proc.stderr.read() if proc.stderr else "")

        with pytest.raises(LeaseError) as refused:
            region.write_frame(np.zeros(n, dtype=np.uint8))
        assert refused.value.reason == "leased"

        proc.stdin.write("compare\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "RELEASED true"

        region.write_frame(np.zeros(n, dtype=np.uint8))  # the lease is gone: accepted
        with region.read_frame() as frame:
            assert bytes(frame.payload) == bytes(n)
    finally:
        if proc is not None and proc.stdin is not None:
            proc.stdin.write("exit\n")
            proc.stdin.close()
            proc.wait(timeout=60)
        region.close()
