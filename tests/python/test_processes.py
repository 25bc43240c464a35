"""Two real processes sharing arenas (protocol/SPEC.md §1-§2): one owns an
arena and writes a frame, the other opens it read-only through ``/proc/<pid>/fd`` and
reads the frame in place; the reader cannot write through its mapping, and nothing is
left behind when the owner dies, whatever way it dies."""

from __future__ import annotations

import json
import os
import signal

import xxhash
from beambridge.arena import ArenaSet, PeerObject
from beambridge.errors import ArenaError
from beambridge.header import Format, payload_offset_for
from helpers import python_child

READER = """
    import json, sys, xxhash
    import numpy as np
    from beambridge.arena import PeerObject
    args = json.loads(sys.stdin.readline())
    peer = PeerObject.open(*args["announcement"])
    frame = peer.read_frame(*args["slice"], verify=True)
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    try:
        peer.mm[0:1] = b"x"
        wrote = True
    except TypeError:
        wrote = False
    print(json.dumps({
        "generation": frame.header.generation, "format": int(frame.header.format),
        "metadata": frame.metadata.decode(), "xxh3": xxhash.xxh3_64_intdigest(frame.payload),
        "readonly": frame.payload.readonly, "writeable": bool(arr.flags.writeable),
        "wrote": wrote,
    }))
    for line in sys.stdin:          # keep the frame; hash it again when asked
        if line.strip() == "again":
            print(json.dumps({"xxh3": xxhash.xxh3_64_intdigest(frame.payload)}))
    del arr
    frame.release()
    peer.close()
"""


def test_python_writes_another_process_reads_in_place() -> None:
    payload = bytes(range(256)) * 1000
    metadata = b"lineage: test"
    arenas = ArenaSet(limit=1 << 24, min_arena=1 << 20)
    try:
        s = arenas.put(payload, metadata=metadata, format=Format.TENSOR, checksum=True)
        child = python_child(READER)
        assert child.stdout is not None and child.stdin is not None
        announcement = list(arenas.announcement(s.object_id))
        slice_ = [s.offset, s.length, s.generation]
        child.stdin.write(json.dumps({"announcement": announcement, "slice": slice_}) + "\n")
        child.stdin.flush()
        seen = json.loads(child.stdout.readline())
        assert seen == {
            "generation": s.generation,
            "format": int(Format.TENSOR),
            "metadata": "lineage: test",
            "xxh3": xxhash.xxh3_64_intdigest(payload),
            "readonly": True,
            "writeable": False,
            "wrote": False,
        }
        # one copy of the bytes: what the owner changes, the reader's frame shows
        with arenas.area(s) as area:
            area[payload_offset_for(len(metadata))] ^= 0xFF
        child.stdin.write("again\n")
        child.stdin.flush()
        changed = bytes([payload[0] ^ 0xFF]) + payload[1:]
        assert json.loads(child.stdout.readline()) == {"xxh3": xxhash.xxh3_64_intdigest(changed)}
        child.stdin.close()
        assert child.wait(timeout=30) == 0, child.stderr.read()  # type: ignore[union-attr]
    finally:
        arenas.close()


OWNER = """
    import json, sys
    from beambridge.arena import ArenaSet
    arenas = ArenaSet(limit=1 << 24, min_arena=1 << 20)
    s = arenas.put(b"z" * (1 << 20), metadata=b"from child", checksum=True)
    print(json.dumps({"announcement": arenas.announcement(s.object_id),
                      "slice": [s.offset, s.length, s.generation]}))
    sys.stdin.readline()            # wait to be killed
"""


def test_a_killed_owner_leaves_nothing_behind_and_its_frames_stay_readable() -> None:
    # transport 1 needed a reaper for the regions of dead owners; an arena has no name
    # in any file system, and its memory lives exactly as long as a mapping of it
    child = python_child(OWNER)
    assert child.stdout is not None
    sent = json.loads(child.stdout.readline())
    _, pid, fd = sent["announcement"][:3]
    assert os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/memfd:")  # no path to leave
    peer = PeerObject.open(*sent["announcement"])
    frame = peer.read_frame(*sent["slice"], verify=True)
    assert frame.metadata == b"from child" and bytes(frame.payload[:3]) == b"zzz"
    child.send_signal(signal.SIGKILL)  # no finalizer, no close: nothing runs
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert bytes(frame.payload[-3:]) == b"zzz"  # our mapping holds the memory
    try:
        PeerObject.open(*sent["announcement"])  # the owner's descriptor is gone
        raise AssertionError("opened an object of a dead process")
    except ArenaError as err:
        assert err.reason == "peer_open_failed"
    frame.release()
    peer.close()
    for stream in (child.stdout, child.stdin, child.stderr):
        if stream is not None:
            stream.close()
