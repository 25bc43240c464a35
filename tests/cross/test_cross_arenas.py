"""Transport v2 objects across the two runtimes (protocol/SPEC.md): a real BEAM
and this Python process each map the other's arenas read-only through /proc, read the
frames the other wrote, and end leases through the BEAM's lease table; a Python process
trying to resize or write the BEAM's memory is refused by the kernel."""

from __future__ import annotations

import errno
import fcntl
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from beambridge.arena import ArenaSet, PeerObject

ROOT = Path(__file__).resolve().parents[2]
SIZES = [0, 1, 63, 64, 65, 100_000, 1 << 20, 32 << 20]


def pattern(n: int) -> bytes:
    return (bytes(range(251)) * (n // 251 + 1))[:n]


def test_each_side_reads_the_other_and_neither_can_resize_or_write_it() -> None:
    arenas = ArenaSet(limit=256 << 20, min_arena=1 << 20)
    slices = [(n, arenas.put(pattern(n), checksum=True)) for n in SIZES]
    ids = {s.object_id for _, s in slices}
    assert len(ids) >= 1
    # one announcement per arena; the peer script takes the first, so keep to one arena
    first = next(iter(ids))
    slices = [(n, s) for n, s in slices if s.object_id == first]
    kind, pid, fd, oid, size, nonce = arenas.announcement(first)

    tickets = {}
    proc = subprocess.Popen(
        ["mix", "run", "tests/cross/arena_peer.exs", f"{kind}:{pid}:{fd}:{oid}:{size}:{nonce}"]
        + [f"{n}:{s.offset}:{s.length}:{s.generation}:{i}" for i, (n, s) in enumerate(slices)],
        cwd=ROOT,
        env=dict(os.environ, MIX_ENV="test"),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    beam_arenas: dict[int, PeerObject] = {}
    table = None
    own: list[tuple[int, int, int, int, int]] = []
    try:
        for line in proc.stdout:
            word, *rest = line.split()
            if word == "TABLE":
                tpid, tfd, tid, tsize, tnonce = map(int, rest)
                table = PeerObject.open("lease_table", tpid, tfd, tid, tsize, tnonce)
            elif word == "ARENA":
                apid, afd, aid, asize, anonce = map(int, rest)
                beam_arenas[aid] = PeerObject.open("arena", apid, afd, aid, asize, anonce)
                beam = (apid, afd)
            elif word == "SLICE":
                own.append(tuple(map(int, rest)))  # type: ignore[arg-type]
            elif word == "READY":
                break
        assert table is not None and beam_arenas, proc.stderr.read() if proc.stderr else ""

        # the BEAM's frames, read in place
        for n, aid, off, length, gen in own:
            with beam_arenas[aid].read_frame(off, length, gen, verify=True) as frame:
                assert frame.metadata == f"size={n}".encode()
                assert bytes(frame.payload) == pattern(n)

        # hostile moves against the BEAM's arena: resize through a writable /proc open
        # (refused by the seals), write through our mapping (refused: read-only)
        rw = os.open(f"/proc/{beam[0]}/fd/{beam[1]}", os.O_RDWR)
        try:
            for new_size in (4096, 0, 1 << 30):
                with pytest.raises(OSError) as info:
                    os.ftruncate(rw, new_size)
                assert info.value.errno == errno.EPERM
            with pytest.raises(OSError):
                fcntl.fcntl(rw, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        finally:
            os.close(rw)
        with pytest.raises(TypeError):
            next(iter(beam_arenas.values())).mm[100:101] = b"x"
        # and against our own arena while the BEAM holds binaries over it
        with pytest.raises(OSError):
            os.ftruncate(arenas._arenas[first].obj.fd, 4096)

        # leases end through the BEAM's lease table, and only then
        arenas.set_lease_table(table, 64)
        for i, (_n, s) in enumerate(slices):
            tickets[i] = arenas.lend(s)
        assert list(tickets.values()) == list(range(len(slices)))  # the tickets the BEAM used
        # only the empty payload's lease has ended (no binary was made from it)
        assert arenas.reclaim() == 1
        proc.stdin.write("check\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "KEPT true"
        assert proc.stdout.readline().strip() == "RELEASED"
        assert arenas.reclaim() == len(slices) - 1
        words = np.frombuffer(table.mm, dtype="<u8", count=len(slices), offset=64)
        assert [int(w) for w in words] == [s.generation for _, s in slices]
        del words
    finally:
        proc.stdin.write("exit\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=120)
        for peer in beam_arenas.values():
            peer.close()
        arenas.close()
    assert proc.returncode == 0, out + err
