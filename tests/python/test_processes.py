"""Two real processes sharing regions: one writes, the other reads (SPEC.md §1-§2)."""

from __future__ import annotations

import json

import xxhash
from beambridge.errors import LeaseError
from beambridge.header import Format
from beambridge.region import Region
from helpers import PREFIX, exists, python_child

READER = """
    import json, sys, xxhash
    import numpy as np
    from beambridge.region import Region
    peer = Region.attach(sys.argv[1] if len(sys.argv) > 1 else {name!r})
    frame = peer.read_frame()
    arr = np.frombuffer(frame.payload, dtype=np.uint8)
    print(json.dumps({{
        "generation": frame.header.generation, "format": int(frame.header.format),
        "metadata": frame.metadata.decode(), "xxh3": xxhash.xxh3_64_intdigest(frame.payload),
        "readonly": frame.payload.readonly, "writeable": bool(arr.flags.writeable),
        "leases": peer.control_block().reader_leases,
    }}))
    del arr
    for line in sys.stdin:          # hold the lease until told to release
        if line.strip() == "release":
            frame.release()
            print(json.dumps({{"leases": peer.control_block().reader_leases}}))
    peer.close()
"""


def test_python_writes_another_process_reads_and_holds_a_lease() -> None:
    payload = bytes(range(256)) * 1000
    with Region.create_for_frame(len(payload), 20, prefix=PREFIX) as region:
        region.write_frame(payload, metadata=b"lineage: test", format=Format.TENSOR)
        child = python_child(READER.format(name=region.name))
        assert child.stdout is not None and child.stdin is not None
        seen = json.loads(child.stdout.readline())
        assert seen == {
            "generation": 1, "format": 1, "metadata": "lineage: test",
            "xxh3": xxhash.xxh3_64_intdigest(payload), "readonly": True, "writeable": False,
            "leases": 1,
        }  # fmt: skip
        # the other process holds a lease: the writer must refuse, and change nothing
        try:
            region.write_frame(b"overwrite")
            raise AssertionError("write succeeded under a lease")
        except LeaseError as err:
            assert err.reason == "leased"
        child.stdin.write("release\n")
        child.stdin.flush()
        assert json.loads(child.stdout.readline()) == {"leases": 0}
        assert region.write_frame(b"overwrite").generation == 2
        child.stdin.close()
        assert child.wait(timeout=30) == 0, child.stderr.read()  # type: ignore[union-attr]


WRITER = f"""
    import sys
    from beambridge.region import Region
    region = Region.create_for_frame(1 << 20, 10, prefix={PREFIX!r})
    region.write_frame(b"z" * (1 << 20), metadata=b"from child")
    print(region.name)
    for line in sys.stdin:
        if line.strip() == "write":
            try:
                print(region.write_frame(b"w" * 100).generation)
            except Exception as err:
                print(type(err).__name__, err.reason)
    region.close()
"""


def test_another_process_writes_python_reads() -> None:
    child = python_child(WRITER)
    assert child.stdout is not None and child.stdin is not None
    name = child.stdout.readline().strip()
    peer = Region.attach(name)
    assert not peer.owner and peer.size == 64 + 192 + (1 << 20)
    frame = peer.read_frame()
    assert frame.metadata == b"from child" and bytes(frame.payload[:3]) == b"zzz"
    child.stdin.write("write\n")
    child.stdin.flush()
    assert child.stdout.readline().split() == ["LeaseError", "leased"]
    frame.release()
    child.stdin.write("write\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "2"
    with peer.read_frame() as frame:
        assert bytes(frame.payload) == b"w" * 100
    child.stdin.close()
    assert child.wait(timeout=30) == 0, child.stderr.read()  # type: ignore[union-attr]
    assert not exists(name)  # the owner unlinked on close; our mapping is still fine
    peer.close()
