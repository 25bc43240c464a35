"""Suite-wide fixtures: the Python suite must leave /dev/shm exactly as it found it."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

SHM_DIR = "/dev/shm"

# tests/python holds helpers the cross-language tests share (strategies.py); the Python
# tests find it as their own directory, tests/cross needs it on the path.
sys.path.insert(0, str(Path(__file__).parent / "python"))


@pytest.fixture(scope="session", autouse=True)
def shm_left_clean() -> Iterator[None]:
    """Snapshot /dev/shm at session start; fail the session if it differs at the end."""
    before = set(os.listdir(SHM_DIR))
    yield
    gc.collect()  # run the finalizers of objects a test dropped without closing
    after = set(os.listdir(SHM_DIR))
    added, removed = sorted(after - before), sorted(before - after)
    if added or removed:
        pytest.fail(
            f"the test session changed {SHM_DIR}: left behind {added}, removed {removed}",
            pytrace=False,
        )
