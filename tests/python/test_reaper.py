"""reap_stale: regions of dead owners go, everything else stays (SPEC.md §1.5)."""

from __future__ import annotations

import os
import signal
import subprocess

from beambridge.control_block import pack_control_block, process_start_time
from beambridge.reaper import reap_stale
from beambridge.region import Region
from helpers import exists, make_raw_object, python_child, shm_path, unlink

REAP = "bbreap"

OWNER = f"""
    import sys
    from beambridge.region import Region
    region = Region.create(4096, prefix={REAP!r})
    print(region.name)
    sys.stdin.readline()
    region.close()
"""


def test_reaps_a_region_whose_owner_was_killed() -> None:
    child = python_child(OWNER)
    name = child.stdout.readline().strip()  # type: ignore[union-attr]
    assert exists(name)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    assert exists(name)  # SIGKILL: no finalizer ran
    assert reap_stale(prefix="bbother") == []
    assert exists(name)  # another prefix is not ours
    assert reap_stale(prefix=REAP) == [name]
    assert not exists(name)


def test_leaves_a_live_owner_alone() -> None:
    child = python_child(OWNER)
    name = child.stdout.readline().strip()  # type: ignore[union-attr]
    try:
        assert reap_stale(prefix=REAP) == []
        assert exists(name)
    finally:
        child.communicate("bye\n", timeout=30)
    assert child.returncode == 0
    assert not exists(name)


def test_skips_own_pid_even_with_a_forged_start_time() -> None:
    with Region.create(4096, prefix=REAP) as region:
        region._mm[16:24] = (process_start_time() + 1).to_bytes(8, "little")
        assert reap_stale(prefix=REAP) == []
        assert exists(region.name)


def test_detects_pid_reuse_from_the_start_time() -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pid = sleeper.pid
        real = process_start_time(pid)
        assert real != 0
        names = {
            "reused": (f"/{REAP}-{pid}-{'1' * 16}", real + 1),
            "same": (f"/{REAP}-{pid}-{'2' * 16}", real),
            "unknown": (f"/{REAP}-{pid}-{'3' * 16}", 0),
        }
        for name, start in names.values():
            make_raw_object(name, pack_control_block(owner_pid=pid, owner_start_time=start,
                                                     region_size=4096) + bytes(4032))  # fmt: skip
        garbage = f"/{REAP}-{pid}-{'4' * 16}"
        make_raw_object(garbage, bytes(4096))  # invalid control block: not judged
        try:
            assert reap_stale(prefix=REAP) == [names["reused"][0]]
            assert exists(names["same"][0]) and exists(names["unknown"][0]) and exists(garbage)
        finally:
            for name, _ in names.values():
                unlink(name)
            unlink(garbage)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_never_touches_names_outside_the_pattern() -> None:
    done = subprocess.run(["true"], check=True)
    del done
    dead = subprocess.Popen(["true"])
    dead.wait()
    others = [f"{REAP}-{dead.pid}-XYZ", f"{REAP}-{dead.pid}", f"{REAP}-{dead.pid}-{'a' * 15}",
              f"x{REAP}-{dead.pid}-{'a' * 16}"]  # fmt: skip
    for other in others:
        with open(shm_path("/" + other), "wb") as f:
            f.write(bytes(4096))
    good = f"/{REAP}-{dead.pid}-{'a' * 16}"
    make_raw_object(good, bytes(4096))
    try:
        assert reap_stale(prefix=REAP) == [good]
        for other in others:
            assert os.path.exists(shm_path("/" + other))
    finally:
        for other in others:
            os.unlink(shm_path("/" + other))
        unlink(good)


def test_leaves_another_users_region_alone() -> None:
    """As root the reaper sees every user's objects; a dead pid in another uid's
    region name does not make it ours to remove."""
    if os.geteuid() != 0:
        import pytest

        pytest.skip("needs root to give a region to another uid")
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    name = f"/{REAP}-{pid}-{'5' * 16}"
    make_raw_object(name, pack_control_block(owner_pid=pid, owner_start_time=1,
                                             region_size=4096) + bytes(4032))  # fmt: skip
    try:
        os.chown(shm_path(name), 65534, 65534)
        assert reap_stale(prefix=REAP) == []
        assert exists(name)
        os.chown(shm_path(name), 0, 0)
        assert reap_stale(prefix=REAP) == [name]  # the same region, now ours: reaped
    finally:
        unlink(name)
