"""Data terms and slices through the real worker (protocol/SPEC.md §3-§6,
§8-§11): the BEAM's argument slices and the leases on them, the worker's result
slices and their tickets, fallbacks, echo without a copy, sealed results, idle trim, and
every bad handle."""

from __future__ import annotations

import dataclasses
import gc
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import xxhash
from beambridge import Atom, control, ssz, ssz_batch
from beambridge import types as bt
from beambridge.arena import MAX_ARENAS
from beambridge.etf import encode
from beambridge.formats import arrow as arrow_format
from beambridge.formats import packed as packed_format
from beambridge.formats import records as records_format
from beambridge.formats import ssz as ssz_frame
from beambridge.formats import tensor as tf
from beambridge.formats.tensor import COO, Bundle
from beambridge.header import Format
from beambridge.terms import KIND_FORMATS, TAG_SLICE
from beambridge.terms import TAG_CHUNKED as CHUNKED
from worker_harness import (
    BAD_CALL,
    MOD,
    TAG_BUFFER,
    TAG_TENSOR,
    BeamArg,
    BeamSide,
    WorkerProcess,
    control_pipes,
    running,
    worker_env,
)

THRESHOLD = 4096
FORMATS = Atom("bbtest_formats")


@pytest.fixture(scope="module")
def worker() -> Iterator[WorkerProcess]:
    with running(BEAMBRIDGE_THRESHOLD=str(THRESHOLD)) as w:
        yield w
        assert w.ok("add", 0, 0) == 0
        assert w.beam.lent == {}  # every slice lent was released


def stream_of(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    arrow_format.write_stream(sink, table, table.schema)
    return bytes(sink.getvalue().to_pybytes())


# ---- arguments: inline and slice forms give the same Python value (invariant 7) -------

KINDS = [str(kind) for kind in KIND_FORMATS]  # every handle kind


def sample(kind: str, n: int) -> Any:
    """A value of ``kind`` with about ``n`` bytes of payload."""
    if kind in ("binary", "buffer"):
        return os.urandom(n)
    if kind == "tensor":
        return np.asfortranarray((np.arange(max(n // 8, 1) * 2) % 97).astype(">i4").reshape(-1, 2))
    if kind == "tensor_bundle":
        return Bundle({"w": np.ones(max(n // 16, 1)), "b": np.arange(max(n // 16, 1), dtype="<u2")})
    if kind == "sparse_coo":
        return COO.from_dense(np.arange(max(n // 32, 2) * 2, dtype="<f8").reshape(-1, 2))
    if kind == "arrow":
        return pa.table(
            {"x": np.arange(max(n // 8, 1)), "s": [f"r{i}" for i in range(max(n // 8, 1))]}
        )
    if kind == "packed":
        return list(range(-(n // 8), n // 8))
    if kind == "records":
        return [{"id": i, "name": f"n{i}"} for i in range(max(n // 16, 1))]
    if kind == "schema_list":
        return [Sample(i, f"n{i}") for i in range(max(n // 16, 1))]
    return bytes(range(256)) * (n // 256) + bytes(n % 256)  # a bbtest.Blob's payload


def inline_form(kind: str, value: Any) -> Any:
    if kind == "binary":
        return value
    if kind == "buffer":
        return (TAG_BUFFER, value)
    if kind == "tensor":
        desc = tf.descriptor(value)
        return (TAG_TENSOR, desc, tf.raw_bytes(value, desc[b"order"].decode()).tobytes())
    if kind == "tensor_bundle":
        return (
            Atom("$bb_tensor_bundle"),
            [(n, d, bytes(b)) for n, d, b in tf.inline_entries(value.items())],
        )
    if kind == "sparse_coo":
        entries = tf.inline_entries([("indices", value.indices), ("values", value.values)])
        return (
            Atom("$bb_sparse_coo"),
            list(value.shape),
            [(n, d, bytes(b)) for n, d, b in entries],
        )
    if kind == "arrow":
        return (Atom("$bb_arrow"), stream_of(value))
    if kind == "packed":
        numbers = packed_format.classify_numbers(value)
        assert isinstance(numbers, packed_format.Numbers)
        data = packed_format.pack(value, numbers.dtype).tobytes()
        return (Atom("$bb_packed"), numbers.dtype.encode(), data)
    if kind == "records":
        return (
            Atom("$bb_records"),
            Atom("rows"),
            stream_of(records_format.to_table(records_format.plan_rows(value))),
        )
    if kind == "schema_list":
        return (Atom("$bb_schema_list"), b"bbtest.Sample", b"1.0", _samples(value))
    return (Atom("$bb_custom"), b"bbtest.Blob", 1, value)


@dataclasses.dataclass
class Sample:
    """bbtest.Sample of tests/python/handlers/bbtest_formats.py, declared here too."""

    step: bt.uint32
    note: bt.String


ssz.schema("bbtest.Sample", version="1.0")(Sample)


def _samples(values: list[Sample]) -> bytes:
    return ssz_batch.encode_list(ssz.schema_type(Sample), values)


def slice_form(beam: BeamSide, kind: str, value: Any) -> BeamArg:
    if kind in ("binary", "buffer"):
        return beam.slice(kind, value)
    if kind in ("tensor", "tensor_bundle", "sparse_coo"):
        plan = tf.plan(value)
        data = bytearray(plan.nbytes)
        plan.fill(memoryview(data))
        return beam.slice(
            kind,
            data,
            metadata=plan.metadata,
            schema_id=plan.schema_id,
            schema_version=plan.schema_version,
        )
    if kind == "arrow":
        stream = arrow_format.plan_stream(value, None, False)
        return beam.slice(kind, stream_of(value), metadata=stream.metadata)
    if kind == "packed":
        term = inline_form(kind, value)
        n = len(term[2]) // np.dtype(term[1].decode()).itemsize
        return beam.slice(
            kind, term[2], metadata=packed_format.packed_metadata(term[1].decode(), n)
        )
    if kind == "records":
        stream = inline_form(kind, value)[2]
        metadata = records_format.records_metadata("rows", len(value), len(value[0]))
        return beam.slice(kind, stream, metadata=metadata)
    if kind == "schema_list":
        metadata, schema_id, version = ssz_frame.frame_fields(b"bbtest.Sample", b"1.0")
        return beam.slice(
            kind, _samples(value), metadata=metadata, schema_id=schema_id, schema_version=version
        )
    return beam.slice(
        kind,
        value,
        metadata=encode((b"bbtest.Blob", 1)),
        schema_id=xxhash.xxh3_64_intdigest(b"bbtest.Blob"),
        schema_version=1,
    )


@pytest.mark.parametrize("size", [16, THRESHOLD - 1, THRESHOLD, 1 << 18])
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_argument_arrives_as_the_same_value_either_way(
    worker: WorkerProcess, kind: str, size: int
) -> None:
    value = sample(kind, size)
    function, module = ("canon", FORMATS) if kind == "custom" else ("describe", MOD)
    if kind in ("packed", "records", "schema_list"):
        function, module = "canon", FORMATS
    inline = worker.ok(function, inline_form(kind, value), module=module)
    arg = slice_form(worker.beam, kind, value)
    assert worker.ok(function, arg, module=module) == inline
    if kind == "buffer":
        assert inline[:4] == (b"memoryview", True, b"B", 1)
    if kind == "binary":
        assert inline[0] == b"bytes"
    # every slice is released by the answer: copied out, or its view gone with the call
    assert arg.key in worker.beam.released and worker.beam.lent == {}


def test_handles_inside_containers(worker: WorkerProcess) -> None:
    one, two = worker.beam.slice("binary", b"abc"), worker.beam.slice("buffer", b"defg")
    value = worker.ok("echo", {b"k": [one, (1, two)]})
    assert value == {b"k": [b"abc", (1, b"defg")]}


def test_a_slice_no_handle_names_is_released_at_once(worker: WorkerProcess) -> None:
    unnamed = worker.beam.slice("buffer", b"x" * 10_000)
    assert worker.ok("add", 1, 2, extra=[unnamed]) == 3
    assert worker.answer is not None and worker.answer.released == [unnamed.key]


# ---- leases held by handlers -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["buffer", "tensor", "arrow"])
def test_a_view_kept_in_a_global_is_released_once_when_dropped(
    worker: WorkerProcess, kind: str
) -> None:
    arg = slice_form(worker.beam, kind, sample(kind, 20_000))
    assert worker.ok("keep", arg) == 1
    assert arg.key in worker.beam.lent  # the handler holds it
    assert worker.ok("add", 1, 2) == 3  # unrelated calls do not end it
    assert arg.key in worker.beam.lent
    assert worker.ok("drop") == 1
    worker.wait_for(lambda: arg.key not in worker.beam.lent)
    assert worker.beam.released.count(arg.key) == 1


def test_a_slice_named_by_two_handles_is_released_when_both_are_gone(
    worker: WorkerProcess,
) -> None:
    arg = worker.beam.slice("buffer", b"y" * 20_000)
    assert worker.ok("keep_first", (arg, arg)) == 1  # one view kept, the other dropped
    assert arg.key in worker.beam.lent
    assert worker.ok("drop") == 1
    worker.wait_for(lambda: arg.key not in worker.beam.lent)
    assert worker.beam.released.count(arg.key) == 1


def test_a_slice_kept_by_one_call_and_named_again_is_released_once(
    worker: WorkerProcess,
) -> None:
    arg = worker.beam.slice("buffer", b"z" * 20_000)
    assert worker.ok("keep", arg) == 1
    assert worker.ok("nbytes", arg) == 20_000  # the worker holds it still: not released
    assert arg.key in worker.beam.lent
    assert worker.ok("drop") == 1
    worker.wait_for(lambda: arg.key not in worker.beam.lent)
    assert worker.beam.released.count(arg.key) == 1


def test_a_handler_that_raises_does_not_keep_its_argument(worker: WorkerProcess) -> None:
    arg = worker.beam.slice("buffer", b"x" * 10_000)
    status, error = worker.call("fail_with", arg)
    assert status == "error" and error[1] == b"RuntimeError"
    assert worker.answer is not None and arg.key in worker.answer.released


# ---- results -------------------------------------------------------------------------------


RESULT_KINDS = {
    "bytes": "binary",
    "bytearray": "binary",
    "memoryview": "binary",
    "tensor": "tensor",
    "fortran": "tensor",
    "bundle": "tensor_bundle",
    "coo": "sparse_coo",
    "table": "arrow",
    "packed": "packed",
    "records": "records",
}


@pytest.mark.parametrize("made", sorted(RESULT_KINDS))
def test_every_kind_of_result_comes_back_in_a_slice_above_the_threshold(
    worker: WorkerProcess, made: str
) -> None:
    big = worker.ok("make_kind", made.encode(), 1 << 18)
    assert big[:2] == (TAG_SLICE, Atom(RESULT_KINDS[made])), big
    entry = worker.entry(big)
    assert entry[0] == Atom("worker") and len(entry) == 6
    _, object_id, offset, length, _generation, _ticket = entry
    assert object_id in worker.beam.peers and offset % 64 == 0 and length % 64 == 0
    value = worker.read(big)
    small = worker.ok("make_kind", made.encode(), 64)
    assert type(small) is not tuple or small[0] != TAG_SLICE
    small_value = worker.read(small)
    assert type(value) is type(small_value)  # invariant 7, back on the BEAM's side
    expected = {"bytes": b"\x00", "bytearray": b"b", "memoryview": b"m"}
    if made in expected:
        assert value[:1] == expected[made] and len(value) == 1 << 18
    del value
    gc.collect()
    worker.beam.end_leases()


def test_custom_results_come_back_in_a_slice(worker: WorkerProcess) -> None:
    term = worker.ok("blob", 10_000, module=FORMATS)
    assert term[:2] == (TAG_SLICE, Atom("custom"))
    entry = worker.entry(term)
    frame = worker.beam.peers.get(entry[1]).read_frame(entry[2], entry[3], entry[4])
    assert frame.header.format == Format.CUSTOM and frame.payload.nbytes == 10_000
    frame.release()
    worker.beam.end_lease(entry[5], entry[4])


def test_two_big_values_in_one_result_go_to_two_slices(worker: WorkerProcess) -> None:
    first, second = worker.ok("two_big", 50_000)
    assert (first[2], second[2]) == (0, 1)
    assert worker.read([first, second]) == [b"1" * 50_000, b"2" * 50_000]


def test_slices_are_reused_after_the_beam_ends_its_leases() -> None:
    """200 calls whose results nothing holds: the tickets come back, the slices are
    reused, the worker's arenas do not grow."""
    with running(beam={"tickets": 4}, BEAMBRIDGE_THRESHOLD="1024") as w:
        offsets, tickets = set(), set()
        for i in range(200):
            term = w.ok("make_bytes", 100_000, i % 256)
            entry = w.entry(term)  # a slice every time: never short of tickets
            offsets.add((entry[1], entry[2]))
            tickets.add(entry[5])
            assert w.read(term) == bytes([i % 256]) * 100_000
        assert tickets <= {0, 1, 2, 3}
        arenas = [o for o in w.beam.objects if o.kind == "arena"]
        assert len(arenas) == 1, arenas  # one arena (of BEAMBRIDGE_MIN_ARENA, 1 MiB)
        assert len(offsets) <= 10  # ten 100 KB slices fit it: reused round and round


def test_a_held_result_is_never_rewritten() -> None:
    with running(BEAMBRIDGE_THRESHOLD="1024") as w:
        first = w.ok("make_bytes", 100_000, ord("1"))
        entry = w.entry(first)
        peer = w.beam.peers.get(entry[1])
        frame = peer.read_frame(entry[2], entry[3], entry[4])  # the BEAM holds a binary
        for fill in b"23456789":
            w.value("make_bytes", 100_000, fill)
        assert bytes(frame.payload) == b"1" * 100_000  # unchanged under the lease
        frame.release()


def test_two_thousand_binaries_with_256_open_files() -> None:
    """protocol/SPEC.md §3: a value of 2,000 parts costs 2,000 slices, not 2,000 objects; the
    worker's descriptors stay within a small constant under a 256-file limit."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    parts = [os.urandom(64) * 1600 for _ in range(2000)]  # 100 KB each
    with running(preexec=limit, BEAMBRIDGE_THRESHOLD="65536") as w:
        before = w.fds()
        args = [w.beam.slice("binary", p) for p in parts]
        term = w.ok("echo", args)
        assert len(term) == 2000 and all(t[0] == TAG_SLICE for t in term)
        assert w.read(term) == parts
        # at most 16 arenas of each side (CPython < 3.13 keeps a descriptor per mapping:
        # the worker's own arenas cost two, the BEAM's one), and the lease table
        assert w.fds() - before <= 3 * MAX_ARENAS + 1, (before, w.fds())
        assert w.beam.lent == {} and len(w.beam.released) == 2000
        assert w.ok("add", 1, 1) == 2


# ---- fallbacks --------------------------------------------------------------------------


def stats(w: WorkerProcess) -> dict[tuple[str, str, str], int]:
    return {
        (d.decode(), f.decode(), r.decode()): n for d, f, r, n, _ in w.ok("stats", module=FORMATS)
    }


def test_fallbacks_go_inline_and_are_counted_and_logged() -> None:
    """A value at or above the threshold that gets no slice goes inline (same type),
    counted under its cause and logged, each cause at least once and at most once a
    second; one too big for the control frame too goes as a stream of chunks."""
    with running(
        beam={"tickets": 3},
        BEAMBRIDGE_THRESHOLD="1024",
        BEAMBRIDGE_ARENA_LIMIT=str(1 << 20),
        BEAMBRIDGE_MIN_ARENA=str(1 << 20),
    ) as w:
        assert w.ok("make_bytes", 2 << 20) == b"a" * (2 << 20)  # too_large
        held = []
        for fill in b"12":  # 2 x 400 KB held: the 1 MiB arena has no room for a third
            term = w.ok("make_bytes", 400_000, fill)
            held.append(w.entry(term))
        for fill in b"34":
            assert w.ok("make_bytes", 400_000, fill) == bytes([fill]) * 400_000  # arena_full
        for entry in held:
            w.beam.end_lease(entry[5], entry[4])
        for fill in b"567":  # three results the BEAM keeps: every ticket in use
            assert w.ok("make_bytes", 100_000, fill)[0] == TAG_SLICE
        assert w.ok("make_bytes", 100_000, ord("8")) == b"8" * 100_000  # no_tickets
        # too big for a frame too: a stream of chunks (§8.6)
        assert w.ok("make_bytes", 65 << 20) == (CHUNKED, "binary", 1, 65 << 20)
        assert b"".join(w.chunks.pop(1)) == b"a" * (65 << 20)
        # each fits a frame, both do not: the second goes in chunks
        first, second = w.ok("two_big", 40 << 20)
        assert first == b"1" * (40 << 20) and second == (CHUNKED, "binary", 1, 40 << 20)
        assert b"".join(w.chunks.pop(1)) == b"2" * (40 << 20)
        assert w.ok("add", 1, 2) == 3
        counts = stats(w)
        # 2 MiB, the chunks of 65 MiB (17) and of 40 MiB (10), and the first 40 MiB
        assert counts[("to_elixir", "raw", "too_large")] == 1 + 17 + 10 + 1
        assert counts[("to_elixir", "raw", "chunked")] == 2
        assert counts[("to_elixir", "raw", "no_tickets")] == 1
        assert counts[("to_elixir", "raw", "arena_full")] == 2
        # the BEAM was told of each, before the answer (or chunk) that carried it
        told: dict[tuple[bytes, bytes], list[int]] = {}
        for form, reason, count, nbytes in w.fallbacks:
            entry = told.setdefault((form, reason), [0, 0])
            entry[0] += count
            entry[1] += nbytes
        assert told == {
            (b"raw", b"too_large"): [29, (2 + 65 + 40 + 40) << 20],
            (b"raw", b"arena_full"): [2, 800_000],
            (b"raw", b"no_tickets"): [1, 100_000],
        }
        lines = w.log_text("stderr").decode().splitlines()
        for cause in ("too_large", "no_tickets", "arena_full"):
            logged = [line for line in lines if f"no slice ({cause}" in line]
            assert logged, (cause, lines)  # each cause at least once
        # the second arena_full came within a second of the first: not logged again
        assert len([line for line in lines if "no slice (arena_full" in line]) == 1


def test_a_beam_of_protocol_2_0_is_not_told_of_fallbacks() -> None:
    """{:fallbacks, ...} came with 2.1: a BEAM that does not announce 2.1 (or says
    nothing) would take it for a protocol violation, so it is not sent."""
    for announced in ("2.0", ""):
        with running(
            BEAMBRIDGE_PROTOCOL=announced,
            BEAMBRIDGE_THRESHOLD="1024",
            BEAMBRIDGE_ARENA_LIMIT=str(1 << 20),
            BEAMBRIDGE_MIN_ARENA=str(1 << 20),
        ) as w:
            assert w.ready.version == control.PROTOCOL_VERSION
            assert w.ok("make_bytes", 2 << 20) == b"a" * (2 << 20)  # too_large: inline
            assert w.fallbacks == []
            assert stats(w)[("to_elixir", "raw", "too_large")] == 1


# ---- echo without a copy -------------------------------------------------------------------


def test_a_memoryview_argument_echoed_comes_back_as_a_beam_entry(worker: WorkerProcess) -> None:
    payload = os.urandom(1 << 20)
    arg = worker.beam.slice("buffer", payload)
    term = worker.ok("echo", arg)
    entry = worker.entry(term)
    assert term[:2] == (TAG_SLICE, Atom("binary"))
    assert entry[:4] == (Atom("beam"), *arg.key) and entry[5] == len(payload)
    assert worker.answer is not None and arg.key not in worker.answer.released
    assert worker.read(term) == payload
    # released right after the answer, in a released message of its own
    worker.wait_for(lambda: arg.key not in worker.beam.lent)
    assert worker.beam.released.count(arg.key) == 1


def test_part_of_a_memoryview_argument_comes_back_as_a_beam_entry(worker: WorkerProcess) -> None:
    payload = os.urandom(100_000)
    arg = worker.beam.slice("buffer", payload)
    term = worker.ok("echo_part", arg, 1000, 90_000)
    entry = worker.entry(term)
    assert entry[0] == Atom("beam") and entry[5] == 89_000
    assert entry[4] == 128 + 1000  # the payload starts after the 128-byte header
    assert worker.read(term) == payload[1000:90_000]
    small = worker.ok("echo_part", worker.beam.slice("buffer", payload), 0, 100)
    assert small == payload[:100]  # below the threshold: inline


# ---- sealed results and what a handler can do ---------------------------------------------


def result_frame(w: WorkerProcess, entry: tuple[Any, ...]) -> bytes:
    peer = w.beam.peers.get(entry[1])
    offset, length, generation = (entry[2], entry[3], entry[4])
    frame = peer.read_frame(offset, length, generation, verify=True)
    data = bytes(frame.payload)
    frame.release()
    return data


def test_an_untrusted_worker_cannot_change_a_sealed_result() -> None:
    with running(
        confirm_sealed=False,
        BEAMBRIDGE_THRESHOLD="1024",
        BEAMBRIDGE_UNTRUSTED="1",
        BEAMBRIDGE_VERIFY="1",
    ) as w:
        term = w.ok("make_bytes", 100_000, ord("s"))
        entry = w.entry(term)
        assert entry[0] == Atom("sealed") and entry[2] == 64
        assert [o.kind for o in w.beam.objects] == ["sealed"]
        before = result_frame(w, entry)
        arg = w.beam.slice("buffer", b"a" * 10_000)
        report = w.ok("attack", arg)  # the sealed object's descriptor is still open in it
        assert report.pop(b"argument") == b"ValueError"
        sealed = f"/proc/{w.pid}/fd/{w.beam.objects[0].fd}".encode()
        # the descriptor is still open in the worker, but the object is write-sealed
        assert report.pop(sealed) == [b"ftruncate:EPERM", b"pwrite:EPERM", b"mmap:EPERM"]
        # every other object within reach (the BEAM's, through /proc) cannot be resized
        assert report and all(v[0] == b"ftruncate:EPERM" for v in report.values()), report
        assert result_frame(w, entry) == before == b"s" * 100_000
        w.beam.unconfirmed, confirmed = [], list(w.beam.unconfirmed)
        w.send(control.sealed_mapped(confirmed))
        size = w.beam.objects[0].size
        assert size not in [n for _, n in w.ok("memfds")]  # closed once the BEAM confirmed it
        assert result_frame(w, entry) == before


def test_no_arena_can_be_resized_by_a_handler() -> None:
    with running(BEAMBRIDGE_THRESHOLD="1024") as w:
        w.ok("make_bytes", 100_000)  # the worker now has an arena
        report = w.ok("attack", w.beam.slice("buffer", b"b" * 10_000))
        del report[b"argument"]
        own = [k for k in report if k.startswith(f"/proc/{w.pid}/".encode())]
        assert own and len(report) > len(own)  # its own arena; the BEAM's objects
        for path, attempts in report.items():
            assert attempts[0] == b"ftruncate:EPERM", path


# ---- idle work ----------------------------------------------------------------------------


def test_idle_trim_drops_empty_arenas_and_keeps_one_warm() -> None:
    with running(BEAMBRIDGE_THRESHOLD="1024", BEAMBRIDGE_MIN_ARENA=str(1 << 20)) as w:
        w.value("make_bytes", 2000)  # the first arena, of BEAMBRIDGE_MIN_ARENA
        assert w.value("make_bytes", 1 << 20) == b"a" * (1 << 20)  # a bigger one
        small, big = (o.object_id for o in w.beam.objects)
        assert w.beam.dropped == []
        start = time.monotonic()
        w.wait_for(lambda: big in w.beam.dropped, timeout=10)
        assert time.monotonic() - start >= 2.0  # empty for TRIM_AFTER first
        assert small not in w.beam.dropped and big not in w.beam.peers
        assert w.value("make_bytes", 2000) == b"a" * 2000  # the warm one serves


# ---- bad handles --------------------------------------------------------------------------


def raw_call(w: WorkerProcess, args: Any, refs: list[Any], *lent: BeamArg) -> Any:
    """A call with ``slices`` as given (each, well formed, is released by the answer:
    for ``lent`` slices the BEAM's arena slice is freed then)."""
    slices = {arg.key: arg.slice for arg in lent}
    for ref in refs:
        key = (ref[0], ref[1], ref[3])
        w.beam.lent[key] = slices.get(key)
    w.flush()
    call_id = w.next_id
    w.next_id += 1
    w.send(control.call(call_id, MOD, Atom("describe"), {}, refs), args)
    answer = w.recv()
    assert answer.call_id == call_id and not answer.ok, answer
    for ref in refs:
        assert (ref[0], ref[1], ref[3]) not in w.beam.lent  # released all the same
    return answer.error


def handle(kind: str, index: int) -> tuple[Any, ...]:
    return (TAG_SLICE, Atom(kind), index)


def test_an_index_out_of_range_is_bad_term(worker: WorkerProcess) -> None:
    arg = worker.beam.slice("binary", b"x" * 100)
    error = raw_call(worker, [handle("binary", 1)], [arg.ref()], arg)
    assert error[:2] == (BAD_CALL, "bad_term") and b"index" in error[2]
    assert worker.ok("add", 1, 2) == 3


def test_an_unknown_object_is_slice_out_of_bounds(worker: WorkerProcess) -> None:
    error = raw_call(worker, [handle("binary", 0)], [(999_999, 64, 128, 1)])
    assert error[:2] == (BAD_CALL, "slice_out_of_bounds") and b"999999" in error[2]
    assert worker.ok("add", 1, 2) == 3


@pytest.mark.parametrize("where", ["past_the_end", "misaligned", "in_the_header", "too_short"])
def test_a_slice_outside_its_object_is_slice_out_of_bounds(
    worker: WorkerProcess, where: str
) -> None:
    arg = worker.beam.slice("binary", b"x" * 100)
    object_id, offset, length, generation = arg.ref()
    size = worker.beam.arenas.announcement(object_id)[4]
    ref = {
        "past_the_end": (object_id, size - 64, 128, generation),
        "misaligned": (object_id, offset + 8, length, generation),
        "in_the_header": (object_id, 0, length, generation),
        "too_short": (object_id, offset, 64, generation),
    }[where]
    error = raw_call(worker, [handle("binary", 0)], [ref], arg)
    assert error[:2] == (BAD_CALL, "slice_out_of_bounds"), error
    assert worker.ok("add", 1, 2) == 3


def test_a_stale_generation_is_refused(worker: WorkerProcess) -> None:
    arg = worker.beam.slice("binary", b"x" * 100)
    object_id, offset, length, generation = arg.ref()
    error = raw_call(
        worker, [handle("binary", 0)], [(object_id, offset, length, generation + 1)], arg
    )
    assert error[:2] == (BAD_CALL, "stale_generation")
    assert worker.ok("add", 1, 2) == 3


def test_a_handle_kind_the_frame_does_not_hold_is_bad_term(worker: WorkerProcess) -> None:
    arg = worker.beam.slice("binary", b"x" * 100)
    for kind, field in (("tensor", b"format"), ("nope", b"kind")):
        error = raw_call(worker, [handle(kind, 0)], [arg.ref()], arg)
        assert error[:2] == (BAD_CALL, "bad_term") and field in error[2], error
        arg = worker.beam.slice("binary", b"x" * 100)
    assert worker.ok("add", 1, 2) == 3


def test_an_object_that_cannot_be_opened_is_the_error_of_the_calls_that_name_it(
    worker: WorkerProcess,
) -> None:
    arg = worker.beam.slice("binary", b"x" * 100)
    kind, pid, fd, object_id, size, nonce = worker.beam.arenas.announcement(arg.slice.object_id)
    bad_id = object_id + 10_000
    worker.send(control.object_announcement(kind, pid, fd, bad_id, size, nonce ^ 1))
    error = raw_call(worker, [handle("binary", 0)], [(bad_id, *arg.ref()[1:])])
    assert error[:2] == (BAD_CALL, "bad_object") and b"object_id" in error[2]
    assert b"cannot map" in worker.log_text("stderr")
    assert worker.ok("describe", arg)[0] == b"bytes"  # the real one still works


def test_the_legacy_tensor_term_is_refused(worker: WorkerProcess) -> None:
    status, error = worker.call("describe", (TAG_TENSOR, b"<f4", [1], b"\x00" * 4))
    assert status == "error" and error[:2] == (BAD_CALL, "bad_term")


# ---- the BEAM dies -------------------------------------------------------------------------

PARENT = """
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-m", "beambridge.worker"], close_fds=False)
    print(worker.pid, flush=True)
    time.sleep(3600)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_parent_death_ends_the_worker_promptly(signum: int) -> None:
    to_worker, from_worker, (place, r3, w4) = control_pipes()
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENT)],
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
    w.beam, w.confirm_sealed, w.answer = BeamSide(), True, None
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        w.ready = w.recv()
        assert w.ready.os_pid == pid
        assert w.ok("make_bytes", 5000)[0] == TAG_SLICE
        start = time.monotonic()
        parent.send_signal(signum)
        # not waited for yet: the parent stays a zombie while the worker exits
        while not gone(pid) and time.monotonic() - start < 5:
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        assert gone(pid) and elapsed < 2.0, elapsed
    finally:
        parent.kill()
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
        for fd in (to_worker, from_worker):
            os.close(fd)
        w.beam.close()


def gone(pid: int) -> bool:
    """The process does not exist any more, or is a zombie nobody has waited for yet."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            line = f.read()
    except FileNotFoundError:
        return True
    return line[line.rindex(b")") + 2 : line.rindex(b")") + 3] in (b"Z", b"X")


@pytest.mark.parametrize("maker", ["make_bytes", "make_array"])
def test_threshold_one_sends_every_payload_through_a_slice(maker: str) -> None:
    with running(BEAMBRIDGE_THRESHOLD="1") as w:
        args: list[Any] = [2] if maker == "make_bytes" else [b"|u1", [2]]
        term = w.ok(maker, *args)
        assert term[:2] == (TAG_SLICE, Atom("binary" if maker == "make_bytes" else "tensor"))
        assert w.answer is not None and len(w.answer.slices) == 1
        value = w.read(term)
        assert len(value) == 2
