"""beambridge._pyheap: with it installed, the small-object memory a call freed is kept
for the next call (no page faults to make the same objects again), up to its limit,
and all of it is given back by trim(). Each case runs in an interpreter of its own:
the allocator is process-wide."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from beambridge import _pyheap

#: Makes and frees about 60 MB of small objects twice, reporting page faults and
#: what _pyheap keeps at each step, as JSON on stdout.
SCRIPT = """
import json, resource, sys
from beambridge import _pyheap

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn():
    before = faults()
    made = [(i, str(i), [i]) for i in range(300_000)]
    n = len(made)
    del made
    return faults() - before, n

if sys.argv[1] != "none":
    _pyheap.install(int(sys.argv[1]))
first, _ = churn()
kept = _pyheap.stats()["kept"]
second, _ = churn()
again = _pyheap.stats()["kept"]
trimmed = _pyheap.trim()
print(json.dumps({"first": first, "second": second, "kept": kept, "again": again,
                  "trimmed": trimmed, "after": _pyheap.stats()}))
"""


def run(limit: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT), limit],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_freed_memory_is_kept_for_the_next_objects_and_trim_gives_it_back() -> None:
    got = run(str(1 << 30))
    assert got["kept"] >= 40 << 20, got  # most of the ~60 MB made and freed
    # the second round takes the kept arenas: a small part of the first's faults
    assert got["second"] * 4 < got["first"], got
    assert got["trimmed"] == got["again"] > 0
    assert got["after"] == {"installed": True, "kept": 0, "limit": 1 << 30}


def test_nothing_is_kept_past_the_limit() -> None:
    got = run(str(8 << 20))
    assert 0 < got["kept"] <= 8 << 20, got
    got = run("0")
    assert got["kept"] == got["trimmed"] == 0, got
    # given back at once, as CPython does: the second round faults as much as the first
    assert got["second"] * 2 > got["first"], got


def test_without_install_nothing_changes() -> None:
    got = run("none")
    assert got["kept"] == 0 and got["after"]["installed"] is False  # type: ignore[index]


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="limit is bytes"):
        _pyheap.install(-1)
