"""beambridge._atomic: bounds, alignment, semantics, and atomicity across processes."""

from __future__ import annotations

import mmap

import pytest
from beambridge import _atomic
from beambridge.region import Region
from helpers import PREFIX, python_child


@pytest.fixture
def page() -> mmap.mmap:
    return mmap.mmap(-1, 4096)  # page-aligned, so offsets are absolute alignments


def test_u32_ops(page: mmap.mmap) -> None:
    assert _atomic.load_u32(page, 8) == 0
    _atomic.store_u32(page, 8, 0xFFFFFFFF)
    assert page[8:12] == b"\xff\xff\xff\xff"
    assert _atomic.fetch_add_u32(page, 8, 2) == 0xFFFFFFFF  # wraps
    assert _atomic.load_u32(page, 8) == 1
    assert _atomic.fetch_sub_u32(page, 8, 2) == 1
    assert _atomic.load_u32(page, 8) == 0xFFFFFFFF
    assert _atomic.compare_exchange_u32(page, 8, 5, 6) == (False, 0xFFFFFFFF)
    assert _atomic.compare_exchange_u32(page, 8, 0xFFFFFFFF, 6) == (True, 0xFFFFFFFF)
    assert _atomic.load_u32(page, 8) == 6
    assert page[8:12] == (6).to_bytes(4, "little")


def test_u64_ops(page: mmap.mmap) -> None:
    _atomic.store_u64(page, 16, 2**64 - 1)
    assert _atomic.load_u64(page, 16) == 2**64 - 1
    assert _atomic.fetch_add_u64(page, 16, 1) == 2**64 - 1
    assert _atomic.load_u64(page, 16) == 0
    assert _atomic.compare_exchange_u64(page, 16, 0, 2**40) == (True, 0)
    assert page[16:24] == (2**40).to_bytes(8, "little")


def test_bounds_and_alignment(page: mmap.mmap) -> None:
    with pytest.raises(IndexError):
        _atomic.load_u32(page, 4096)
    with pytest.raises(IndexError):
        _atomic.load_u64(page, 4092)
    with pytest.raises(IndexError):
        _atomic.store_u32(page, -4, 1)
    with pytest.raises(ValueError, match="aligned"):
        _atomic.load_u32(page, 2)
    with pytest.raises(ValueError, match="aligned"):
        _atomic.store_u64(page, 4, 1)
    with pytest.raises(IndexError):
        _atomic.load_u32(b"abc", 0)


def test_values_and_buffers_are_checked(page: mmap.mmap) -> None:
    with pytest.raises(OverflowError):
        _atomic.store_u32(page, 0, 2**32)
    with pytest.raises(OverflowError):
        _atomic.store_u64(page, 0, -1)
    with memoryview(page).toreadonly() as readonly:
        with pytest.raises(BufferError):
            _atomic.store_u32(readonly, 0, 1)
        assert _atomic.load_u32(readonly, 4) == 0  # loads work on read-only buffers
    with pytest.raises(TypeError):
        _atomic.store_u32(page, 0, 1.5)  # type: ignore[arg-type]


def test_fetch_add_is_atomic_across_processes() -> None:
    n = 20000
    with Region.create(4096, prefix=PREFIX) as region:
        code = f"""
            from beambridge import _atomic
            from beambridge.region import Region
            r = Region.attach({region.name!r})
            for _ in range({n}):
                _atomic.fetch_add_u64(r._mm, 128, 1)
                _atomic.fetch_add_u32(r._mm, 136, 1)
            r.close()
        """
        children = [python_child(code) for _ in range(3)]
        for child in children:
            _, err = child.communicate(timeout=120)
            assert child.returncode == 0, err
        assert _atomic.load_u64(region._mm, 128) == 3 * n
        assert _atomic.load_u32(region._mm, 136) == 3 * n
