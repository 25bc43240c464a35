"""Data terms and region handles through the real worker (protocol/SPEC.md §7.4, §7.5):
the BEAM's argument regions, the worker's result regions, leases, and who unlinks what."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import xxhash
from beambridge import Atom, Format, LeaseError, Region
from beambridge.etf import decode, encode
from worker_harness import (
    PREFIX,
    TAG_BUFFER,
    TAG_REGION,
    TAG_TENSOR,
    WorkerProcess,
    control_pipes,
    gone,
    mapped_names,
    read_result,
    regions_of,
    worker_env,
)

THRESHOLD = 4096
BAD_CALL = Atom("bad_call")


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD=str(THRESHOLD)).start()
    yield w
    assert w.stop() == 0
    assert regions_of(w.pid) == []


@contextlib.contextmanager
def beam_region(
    payload: bytes, *, metadata: bytes = b"", fmt: Format = Format.RAW
) -> Iterator[Region]:
    """A region the test (playing the BEAM) owns, holding one frame."""
    region = Region.create_for_frame(max(len(payload), 64), len(metadata), prefix=PREFIX)
    try:
        region.write_frame(payload, metadata=metadata, format=fmt)
        yield region
    finally:
        region.close()


def handle(kind: str, region: Region) -> tuple[Any, ...]:
    generation = region.control_block().writer_generation
    return (TAG_REGION, Atom(kind), region.name.encode(), generation)


def tensor_metadata(dtype: str, shape: list[int]) -> bytes:
    return encode((dtype.encode(), shape))


# ---- arguments: inline and region forms give the same Python type (invariant 7) ---------


@pytest.mark.parametrize("size", [0, 1, THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 1 << 20])
def test_binary_argument_is_bytes_either_way(worker: WorkerProcess, size: int) -> None:
    payload = os.urandom(size)
    expected = (b"bytes", size, xxhash.xxh3_64_intdigest(payload))
    assert worker.ok("describe", payload) == expected
    with beam_region(payload) as region:
        assert worker.ok("describe", handle("binary", region)) == expected
        # bytes are a copy: the lease ended with the call, the BEAM may rewrite at once
        assert region.control_block().reader_leases == 0
        region.write_frame(b"rewritten")


@pytest.mark.parametrize("size", [0, 1, THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 1 << 20])
def test_buffer_argument_is_a_read_only_memoryview_either_way(
    worker: WorkerProcess, size: int
) -> None:
    payload = os.urandom(size)
    expected = (b"memoryview", True, b"B", 1, size, xxhash.xxh3_64_intdigest(payload))
    assert worker.ok("describe", (TAG_BUFFER, payload)) == expected
    with beam_region(payload) as region:
        assert worker.ok("describe", handle("buffer", region)) == expected
        assert region.control_block().reader_leases == 0  # the handler dropped its view


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [("<f4", [2, 3]), ("|u1", [THRESHOLD]), ("<i8", [THRESHOLD // 8 + 1]), ("<f8", [0]),
     ("<c16", [4, 4, 4]), ("<i2", []), ("|i1", [THRESHOLD - 1]), ("<u8", [512, 3])],
)  # fmt: skip
def test_tensor_argument_is_a_read_only_ndarray_either_way(
    worker: WorkerProcess, dtype: str, shape: list[int]
) -> None:
    arr = (np.arange(int(np.prod(shape))) % 97).astype(dtype).reshape(shape)
    data = arr.tobytes()
    expected = (b"ndarray", dtype.encode(), shape, False, True, xxhash.xxh3_64_intdigest(data))
    inline = (TAG_TENSOR, dtype.encode(), shape, data)
    assert worker.ok("describe", inline) == expected
    meta = tensor_metadata(dtype, shape)
    with beam_region(data, metadata=meta, fmt=Format.TENSOR) as region:
        assert worker.ok("describe", handle("tensor", region)) == expected
        assert region.control_block().reader_leases == 0
    assert worker.ok("sum_array", inline) == float(arr.sum().real)


def test_handles_inside_containers(worker: WorkerProcess) -> None:
    with beam_region(b"abc") as one, beam_region(b"defg") as two:
        value = worker.ok("echo", {b"k": [handle("binary", one), (1, handle("buffer", two))]})
        assert value == {b"k": [b"abc", (1, b"defg")]}


# ---- leases held by handlers ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["buffer", "tensor"])
def test_a_kept_view_keeps_the_lease(worker: WorkerProcess, kind: str) -> None:
    data = bytes(range(256)) * 64
    meta = tensor_metadata("|u1", [len(data)]) if kind == "tensor" else b""
    fmt = Format.TENSOR if kind == "tensor" else Format.RAW
    with beam_region(data, metadata=meta, fmt=fmt) as region:
        assert worker.ok("keep", handle(kind, region)) == 1
        assert region.control_block().reader_leases == 1
        with pytest.raises(LeaseError) as info:
            region.write_frame(data)
        assert info.value.reason == "leased"
        # unrelated calls do not end it
        assert worker.ok("add", 1, 2) == 3
        with pytest.raises(LeaseError):
            region.write_frame(data)
        assert worker.ok("drop") == 1
        assert region.control_block().reader_leases == 0
        region.write_frame(b"now it may change")


def test_a_handler_that_raises_does_not_keep_its_argument(worker: WorkerProcess) -> None:
    with beam_region(b"x" * 10000) as region:
        status, error = worker.call("fail_with", handle("buffer", region))
        assert status == "error" and error[1] == b"RuntimeError"
        assert region.control_block().reader_leases == 0
        region.write_frame(b"free")


# ---- bad handles -------------------------------------------------------------------------


def test_bad_handles_are_bad_calls(worker: WorkerProcess) -> None:
    with beam_region(b"payload") as region:
        good = handle("binary", region)
        stale = (*good[:3], good[3] + 1)
        assert worker.call("describe", stale)[1][:2] == (BAD_CALL, "stale_generation")
        wrong_kind = (TAG_REGION, Atom("tensor"), good[2], good[3])
        assert worker.call("describe", wrong_kind)[1][:2] == (BAD_CALL, "bad_term")
        assert region.control_block().reader_leases == 0
    missing = (TAG_REGION, Atom("binary"), b"/bbwk-1-0123456789abcdef", 1)
    assert worker.call("describe", missing)[1][:2] == (BAD_CALL, "not_found")
    bad_name = (TAG_REGION, Atom("binary"), b"/etc/passwd", 1)
    assert worker.call("describe", bad_name)[1][:2] == (BAD_CALL, "bad_name")
    assert worker.call("describe", (TAG_REGION, Atom("nope"), b"x", 1))[1][1] == "bad_term"
    assert worker.call("describe", (Atom("$bb_other"), 1))[1][1] == "bad_term"


@pytest.mark.parametrize(
    ("dtype", "shape", "data"),
    [(b"|O", [1], b"\x00" * 8), (b"<U1", [1], b"\x00" * 4), (b"|b1", [1], b"\x00"),
     (b">f4", [1], b"\x00" * 4), (b"<f4", [2], b"\x00" * 4), (b"<f4", [-1], b""),
     (b"<f4", [2**62, 2**62], b""), (b"<V8", [1], b"\x00" * 8), (b"<f4", (1,), b"\x00" * 4),
     (b"<M8[s]", [1], b"\x00" * 8)],
)  # fmt: skip
def test_bad_tensors_are_refused(
    worker: WorkerProcess, dtype: bytes, shape: Any, data: bytes
) -> None:
    status, error = worker.call("describe", (TAG_TENSOR, dtype, shape, data))
    assert status == "error" and error[:2] == (BAD_CALL, "bad_term"), error


def test_detach_drops_the_cached_attachment(worker: WorkerProcess) -> None:
    with beam_region(b"attached") as region:
        assert worker.ok("echo", handle("binary", region)) == b"attached"
        assert region.name[1:] in mapped_names(worker.pid)
        worker.send((Atom("detach"), [region.name.encode(), b"/bbwk-1-0000000000000000"]))
        assert worker.ok("add", 0, 0) == 0  # the detach has been handled
        assert region.name[1:] not in mapped_names(worker.pid)


# ---- results -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [THRESHOLD - 1, THRESHOLD, THRESHOLD + 1, 1 << 20])
@pytest.mark.parametrize("maker", ["make_bytes", "make_bytearray", "make_memoryview"])
def test_bytes_like_results_inline_below_threshold_region_at_or_above(
    worker: WorkerProcess, size: int, maker: str
) -> None:
    result = worker.ok(maker, size)
    expected = {"make_bytes": b"a", "make_bytearray": b"b", "make_memoryview": b"m"}[maker] * size
    if size < THRESHOLD:
        assert result == expected
        return
    assert result[:2] == (TAG_REGION, Atom("binary"))
    assert result[2].decode().startswith(f"/{PREFIX}-{worker.pid}-")
    region, frame = read_result(result)
    with region, frame:
        assert frame.header.format == Format.RAW and bytes(frame.payload) == expected


@pytest.mark.parametrize("order", ["c", "fortran", "big_endian"])
@pytest.mark.parametrize("n", [4, 100_000])
def test_tensor_results_keep_their_order_and_byte_order(
    worker: WorkerProcess, order: str, n: int
) -> None:
    """C-order little-endian arrays of the original dtypes keep SPEC §7.4's original form
    (4-tuple, ``{dtype, shape}`` metadata); Fortran order and big-endian arrays travel as
    they are, with a version-1 descriptor (protocol/formats/tensor.md)."""
    function = {"c": "make_array", "fortran": "make_fortran", "big_endian": "make_big_endian"}
    args: list[Any] = [b"<f4", [n, 3]] if order == "c" else [n]
    expected = {
        "c": (np.arange(n * 3) % 100).astype("<f4").reshape(n, 3),
        "fortran": np.asfortranarray(np.arange(n * 3, dtype="<i4").reshape(n, 3)),
        "big_endian": np.arange(n, dtype=">f8"),
    }[order]
    result = worker.ok(function[order], *args)
    if expected.nbytes < THRESHOLD:
        assert result[0] == TAG_TENSOR
        if order == "c":
            _, dtype, shape, data = result
            desc = {b"dtype": dtype, b"shape": shape, b"order": b"C"}
        else:
            _, desc, data = result
    else:
        assert result[:2] == (TAG_REGION, Atom("tensor"))
        region, frame = read_result(result)
        with region, frame:
            assert frame.header.format == Format.TENSOR
            meta = decode(frame.metadata)
            assert frame.header.schema_id == (0 if order == "c" else 1)
            desc = {b"dtype": meta[0], b"shape": meta[1], b"order": b"C"} if order == "c" else meta
            data = bytes(frame.payload)
    assert desc == {
        b"dtype": expected.dtype.str.encode(),
        b"shape": list(expected.shape),
        b"order": b"F" if order == "fortran" else b"C",
    }
    assert data == expected.tobytes(order="A")


def test_result_regions_are_reused_only_without_leases(worker: WorkerProcess) -> None:
    size = 100_000
    first = worker.ok("make_bytes", size, ord("1"))
    region1, frame1 = read_result(first)  # the BEAM holds a binary over it
    second = worker.ok("make_bytes", size, ord("2"))
    assert second[2] != first[2]  # leased: written elsewhere
    region2, frame2 = read_result(second)
    assert bytes(frame1.payload) == b"1" * size  # unchanged under the lease (invariant 1)
    frame1.release()
    third = worker.ok("make_bytes", size, ord("3"))
    assert third[2] == first[2] and third[3] == first[3] + 1  # warm reuse, next generation
    region3, frame3 = read_result(third)
    assert bytes(frame3.payload) == b"3" * size and bytes(frame2.payload) == b"2" * size
    for frame in (frame2, frame3):
        frame.release()
    for region in (region1, region2, region3):
        region.close()


def test_two_big_values_in_one_result_go_to_two_regions(worker: WorkerProcess) -> None:
    first, second = worker.ok("two_big", 50_000)
    assert first[2] != second[2]
    for h, fill in ((first, b"1"), (second, b"2")):
        region, frame = read_result(h)
        with region, frame:
            assert bytes(frame.payload) == fill * 50_000


def test_the_region_limit_sends_values_inline() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024", BEAMBRIDGE_REGION_LIMIT=str(300_000)).start()
    try:
        held = []
        for fill in b"12":
            h = w.ok("make_bytes", 100_000, fill)
            assert h[0] == TAG_REGION
            held.append(read_result(h))
        # two 128 KiB regions leased: a third does not fit the limit -> inline, same type
        assert w.ok("make_bytes", 100_000, ord("3")) == b"3" * 100_000
        assert b"region limit" in w.log_text("stderr")
        assert len(regions_of(w.pid)) == 2
        for region, frame in held:
            frame.release()
            region.close()
        assert w.ok("make_bytes", 100_000, ord("4"))[0] == TAG_REGION
        # a bigger size class: idle regions of the other class are closed to make room
        assert w.ok("make_bytes", 200_000, ord("5"))[0] == TAG_REGION
        assert len(regions_of(w.pid)) == 1
    finally:
        assert w.stop() == 0
    assert regions_of(w.pid) == []


def test_an_inline_result_over_the_frame_limit_is_a_bad_call() -> None:
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1024", BEAMBRIDGE_REGION_LIMIT="0").start()
    try:
        status, error = w.call("make_bytes", 64 * 1024 * 1024 + 1)
        assert status == "error" and error[:2] == (BAD_CALL, "bad_term")
        assert b"control frame limit" in error[2]
        assert w.call("add", 1, 2) == ("ok", 3)
    finally:
        assert w.stop() == 0


# ---- the BEAM dies ------------------------------------------------------------------------

PARENT = """
    import subprocess, sys, time
    from beambridge import Region
    region = Region.create_for_frame(10, prefix={prefix!r})  # the "BEAM"'s argument region
    region.write_frame(b"0123456789")
    worker = subprocess.Popen([sys.executable, "-m", "beambridge.worker"], close_fds=False)
    print(region.name, worker.pid, flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_parent_death_ends_the_worker_and_leaves_no_region(signum: int) -> None:
    to_worker, from_worker, (place, r3, w4) = control_pipes()
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT.format(prefix=PREFIX))],
        preexec_fn=place,
        close_fds=False,
        env=worker_env(BEAMBRIDGE_THRESHOLD="1024"),
        stdout=subprocess.PIPE,
        text=True,
    )
    os.close(r3)
    os.close(w4)
    w = WorkerProcess.__new__(WorkerProcess)
    w.to_worker, w.from_worker, w.buffer, w.logs, w.next_id = to_worker, from_worker, b"", [], 1
    try:
        assert parent.stdout is not None
        beam_name, worker_pid = parent.stdout.readline().split()
        pid = int(worker_pid)
        w.ready = w.recv()
        assert w.ready[1] == pid
        assert w.ok("make_bytes", 5000)[0] == TAG_REGION
        assert regions_of(pid) and os.path.exists("/dev/shm" + beam_name)
        start = time.monotonic()
        parent.send_signal(signum)
        # not waited for yet: the parent stays a zombie while the worker cleans up
        while not gone(pid) and time.monotonic() - start < 5:
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        assert gone(pid) and elapsed < 2.0, elapsed
        assert regions_of(pid) == []
        assert not os.path.exists("/dev/shm" + beam_name)  # the dead parent's, reaped
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for fd in (to_worker, from_worker):
            os.close(fd)


def test_echo_of_a_big_buffer_comes_back_through_a_result_region(worker: WorkerProcess) -> None:
    payload = os.urandom(1 << 20)
    with beam_region(payload) as region:
        result = worker.ok("echo", handle("buffer", region))
        assert region.control_block().reader_leases == 0  # the argument's lease ended
        assert result[:2] == (TAG_REGION, Atom("binary")) and result[2] != region.name.encode()
        result_region, frame = read_result(result)
        with result_region, frame:
            assert bytes(frame.payload) == payload


@pytest.mark.parametrize("maker", ["make_bytes", "make_array"])
def test_threshold_one_sends_every_payload_through_a_region(maker: str) -> None:
    """With threshold 1 even a 2-byte result travels in a region, and the handle's own
    fields (the region name is a binary too) stay inline: no region for the handle."""
    w = WorkerProcess(BEAMBRIDGE_THRESHOLD="1").start()
    try:
        args: list[Any] = [2] if maker == "make_bytes" else [b"|u1", [2]]
        result = w.ok(maker, *args)
        kind = Atom("binary" if maker == "make_bytes" else "tensor")
        assert result[:2] == (TAG_REGION, kind) and type(result[2]) is bytes
        region, frame = read_result(result)
        with region, frame:
            assert len(frame.payload) == 2
    finally:
        assert w.stop() == 0
    assert regions_of(w.pid) == []


def test_leased_result_regions_are_skipped_without_a_write_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A caller that keeps many results leases many regions; the pool skips each with
    one atomic load instead of a write the lease protocol refuses (an exception)."""
    from beambridge import _atomic
    from beambridge.control import OFF_READER_LEASES
    from beambridge.convert import ResultRegions

    pool = ResultRegions(PREFIX, 1 << 30, checksum=False)
    try:
        data = memoryview(b"r" * 4096)
        for _ in range(5):  # five results the "BEAM" keeps
            pool.begin_result()
            name, _gen = pool.write(4096, data)
            region = next(r for r in pool.regions() if r.name == name)
            _atomic.fetch_add_u32(region._mm, OFF_READER_LEASES, 1)
        attempts = []
        original = Region.write_frame

        def counting(self: Region, *args: Any, **kwargs: Any) -> Any:
            attempts.append(self.name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(Region, "write_frame", counting)
        pool.begin_result()
        name, _gen = pool.write(4096, data)
        assert attempts == [name]  # straight to a free (new) region
        assert len(pool.regions()) == 6
    finally:
        for region in pool.regions():
            _atomic.store_u32(region._mm, OFF_READER_LEASES, 0)
        pool.close_all()
