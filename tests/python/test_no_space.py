"""A full /dev/shm is RegionError no_space at creation, never SIGBUS, never a leftover
(SPEC.md §1.2). Each case runs a child Python in a private mount namespace whose
/dev/shm is a 4 MiB tmpfs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest


def _namespace_works() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare(1) is not installed"
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", "mount -t tmpfs -o size=4m tmpfs /dev/shm"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return f"cannot mount a private tmpfs on /dev/shm: {probe.stderr.strip()}"
    return None


SKIP = _namespace_works()
pytestmark = pytest.mark.skipif(SKIP is not None, reason=str(SKIP))


def in_small_shm(code: str) -> dict[str, object]:
    script = textwrap.dedent(PRELUDE) + textwrap.dedent(code)
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs -o size=4m tmpfs /dev/shm && exec "$0" -c "$1"', sys.executable, script],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, f"child ended with {done.returncode}: {done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


PRELUDE = """
    import json, os
    import beambridge.region
    from beambridge.errors import RegionError
    from beambridge.region import Region
    def attempt(size):
        try:
            Region.create(size)
        except RegionError as err:
            return {"reason": err.reason, "errno": err.errno, "message": str(err),
                    "left": os.listdir("/dev/shm")}
        return {"reason": None}
"""


def test_precheck_refuses_8mib_in_a_4mib_shm() -> None:
    out = in_small_shm("print(json.dumps(attempt(8 << 20)))")
    assert out["reason"] == "no_space" and out["errno"] == 28
    assert out["left"] == []
    assert "asked for 8388608" in out["message"]  # type: ignore[operator]
    assert "raise the tmpfs size" in out["message"]  # type: ignore[operator]


def test_fallocate_failure_is_no_space_without_sigbus() -> None:
    # the statvfs precheck is switched off: posix_fallocate itself must catch it
    out = in_small_shm(
        """
    beambridge.region._free_bytes = lambda: 1 << 40
    print(json.dumps(attempt(8 << 20)))
    """
    )
    assert out["reason"] == "no_space" and out["errno"] == 28
    assert out["left"] == []


def test_space_reserved_at_creation_stays_usable() -> None:
    # a 3 MiB region is created and reserved; then a second one cannot get its pages
    # (precheck off), and the first one is still fully writable: no SIGBUS.
    out = in_small_shm(
        """
    beambridge.region._free_bytes = lambda: 1 << 40
    first = Region.create(3 << 20)
    second = attempt(2 << 20)
    first.write_frame(b"\\xff" * ((3 << 20) - 256))
    with first.read_frame() as frame:
        ok = bytes(frame.payload[-3:]) == b"\\xff\\xff\\xff"
    first.close()
    print(json.dumps({"second": second["reason"], "ok": ok, "left": os.listdir("/dev/shm")}))
    """
    )
    assert out == {"second": "no_space", "ok": True, "left": []}
