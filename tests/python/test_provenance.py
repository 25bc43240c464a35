"""Provenance blocks (protocol/SPEC.md §5.4), the call record a worker keeps, and
describing frames without their payload (`beambridge.frame.describe`, `dump`,
`python -m beambridge inspect`)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xxhash
from beambridge import call_record, frame, provenance
from beambridge.call_record import CallRecord, meta
from beambridge.description import describe_bytes, read_file, to_json
from beambridge.errors import BridgeError, HeaderError
from beambridge.etf import encode as etf_encode
from beambridge.frame import Frame
from beambridge.header import FLAG_HOLDS_META, decode_frame, encode_frame
from beambridge.provenance import (
    LINEAGE_MAX,
    MAX_META,
    STORED_MAX,
    Block,
    Entry,
    Summary,
    holds_meta,
    merge_chains,
    new_entry,
    next_frame_id,
    parse_block,
    producer_body,
    read_block,
    remember,
)
from helpers import Slices
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]

TEXT = st.text(max_size=12)
PLAIN = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)
METAS = st.dictionaries(TEXT, PLAIN, max_size=6)
ENTRIES = st.builds(
    lambda call, at, handler, inputs: Entry.make(
        call, at, {"handler": handler, "worker": "w", "inputs": inputs}
    ),
    st.integers(1, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    TEXT,
    st.lists(st.integers(1, 2**64 - 1), max_size=8),
)


@given(
    METAS, st.lists(ENTRIES, max_size=40), st.none() | st.tuples(*[st.integers(0, 2**64 - 1)] * 3)
)
def test_a_block_reads_back_as_it_was_built(
    m: dict[str, Any], entries: list[Entry], summary: tuple[int, int, int] | None
) -> None:
    built = Block.build(
        producer=producer_body("python", "w1"),
        meta=m,
        lineage=entries,
        summary=None if summary is None else Summary(*summary),
    )
    read = parse_block(built.encode())
    assert read.meta == (m or None)
    assert [e.raw for e in read.lineage] == [e.raw for e in entries]
    assert read.summary == built.summary
    assert read.producer_map() == {
        "side": "python",
        "node": os.environ.get("BEAMBRIDGE_NODE", ""),
        "os_pid": os.getpid(),
        "version": "0.1.0",
        "worker": "w1",
    }
    assert read.describe()["lineage"] == [e.describe() for e in entries]


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_any_bytes_are_a_block_or_a_typed_error(data: bytes) -> None:
    try:
        parse_block(data).describe()
    except HeaderError as err:
        assert err.reason == "bad_provenance"
        assert err.field in ("section", "producer", "meta", "lineage", "summary", "meta_ref")


def test_a_chain_stops_growing_and_summarises_what_it_drops() -> None:
    chain: tuple[tuple[Entry, ...], Summary | None] = ((), None)
    sizes = []
    previous_frame = next_frame_id()
    for i in range(200):
        lineage, summary = merge_chains(
            [Block(lineage=chain[0], summary=chain[1]).chained(previous_frame)],
            new_entry(1000 + i, "m.f", "w1", [next_frame_id()]),
        )
        chain = (lineage, summary)
        previous_frame = next_frame_id()
        sizes.append(len(Block(lineage=lineage, summary=summary).encode()))
    assert len(chain[0]) == LINEAGE_MAX
    assert chain[1] is not None and chain[1].count == 200 - LINEAGE_MAX
    # every entry past the first 32 calls has the same size: the block no longer grows
    assert len(set(sizes[LINEAGE_MAX + 1 :])) == 1
    # the newest entry names no frame (it is the frame's own call); the others do
    described = [e.describe() for e in chain[0]]
    assert "frame" not in described[-1] and all("frame" in d for d in described[:-1])
    assert [d["call"] for d in described] == list(range(1200 - LINEAGE_MAX, 1200))


def test_merging_drops_a_call_seen_twice_and_joins_summaries() -> None:
    a = new_entry(1, "m.a", "w", [])
    b = new_entry(2, "m.b", "w", [])
    s1, s2 = Summary(3, 100, 7), Summary(4, 50, 9)
    lineage, summary = merge_chains([((a, b), s1), ((a,), s2)], new_entry(3, "m.c", "w", []))
    assert [e.call for e in lineage] == [1, 2, 3]
    assert summary is not None and (summary.count, summary.first_at) == (4, 50)
    assert summary.digest == xxhash.xxh3_64_intdigest(struct.pack("<QQ", 7, 9))


def test_a_history_two_arguments_share_is_summarised_once() -> None:
    """state -> grads, then update(state, grads): the two arguments share their history;
    its summary must not double at each step (it would overflow a u64 in 64 steps)."""
    state: tuple[tuple[Entry, ...], Summary | None] = ((), None)
    for step in range(200):
        grads = merge_chains([state], new_entry(10_000 + 2 * step, "m.grad", "w", []))
        state = merge_chains([state, grads], new_entry(10_001 + 2 * step, "m.update", "w", []))
    lineage, summary = state
    assert len(lineage) == LINEAGE_MAX
    assert summary is not None and summary.count == 400 - LINEAGE_MAX  # every call once
    Block(lineage=lineage, summary=summary).encode()  # and it still encodes


def test_summary_counts_saturate_and_joins_do_not_depend_on_order() -> None:
    big = Summary(2**64 - 2, 1, 5)
    assert big.dropping([new_entry(1, "m.f", "w", [])] * 3).count == 2**64 - 1
    other = Summary(10, 0, 6)
    assert big.joined(other) == other.joined(big)
    assert big.joined(other).count == 2**64 - 2 and big.joined(other).first_at == 0


@given(st.binary(max_size=60))
def test_any_entry_body_is_described_or_a_typed_error(body: bytes) -> None:
    raw = struct.pack("<HQQ", 18 + len(body), 5, 6) + body
    block = Block(lineage=(Entry(5, 6, raw),))
    read = parse_block(block.encode())
    try:
        read.describe()
    except HeaderError as err:
        assert (err.reason, err.field) == ("bad_provenance", "lineage")
    # passed on, it is kept as it came
    assert read.chained(7)[0][0].raw in (raw, read.lineage[0].stamped(7).raw)


def test_reading_a_block_checks_its_bounds_and_checksum() -> None:
    block = Block.build(producer=producer_body("python"), meta={"round": 1}).encode()
    f = encode_frame(b"payload", provenance=block, frame_id=5, created_at=9)
    header, _, _ = decode_frame(f)
    read = read_block(header, f)
    assert read is not None and read.meta == {"round": 1}
    # a minor-0 frame has no block, whatever bytes 72-119 hold
    old = bytearray(f)
    struct.pack_into("<H", old, 6, 0)
    struct.pack_into("<Q", old, 120, xxhash.xxh3_64_intdigest(bytes(old[:120])))
    h0, _, _ = decode_frame(bytes(old))
    assert (h0.created_at, h0.frame_id, h0.provenance_length) == (0, 0, 0)
    assert read_block(h0, bytes(old)) is None
    # a changed byte of the block
    bad = bytearray(f)
    bad[130] ^= 1
    with pytest.raises(HeaderError) as info:
        read_block(header, bytes(bad))
    assert (info.value.reason, info.value.field) == (
        "provenance_checksum_mismatch",
        "provenance_checksum",
    )
    # a length past the payload offset
    with pytest.raises(HeaderError) as info:
        read_block(header.__class__(**{**header.__dict__, "provenance_length": 10_000}), f)
    assert info.value.reason == "provenance_out_of_bounds"


def test_a_meta_over_the_bound_is_refused() -> None:
    with pytest.raises(BridgeError, match=f"over {MAX_META}") as info:
        Block.build(meta={"x": "y" * MAX_META})
    assert (info.value.reason, info.value.field) == ("too_large", "meta")


def test_the_call_record_inherits_meta_and_extends_its_arguments_chain() -> None:
    upstream = CallRecord("python", "w0")
    upstream.begin(b"fl", b"train", {b"round": 12, b"client": b"c7"})
    block = upstream.block()
    upstream.end()
    f = encode_frame(b"w" * 10, provenance=block, frame_id=next_frame_id(), created_at=1)
    header, _, _ = decode_frame(f)

    record = CallRecord("python", "w1")
    record.begin("fl", "aggregate", None)
    record.input(header, block)
    assert meta() == {"round": 12, "client": "c7"}
    meta()["loss"] = 0.5  # a handler annotates its result
    out = parse_block(record.block())
    assert out.meta == {"round": 12, "client": "c7", "loss": 0.5}
    entries = [e.describe() for e in out.lineage]
    assert [e["handler"] for e in entries] == ["fl.train", "fl.aggregate"]
    assert entries[0]["frame"] == header.frame_id
    assert entries[1]["inputs"] == [header.frame_id]
    record.end()
    assert meta() == {}


def test_an_argument_whose_block_does_not_match_its_checksum_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    block = Block.build(meta={"round": 1}).encode()
    f = encode_frame(b"x", provenance=block, frame_id=next_frame_id())
    header, _, _ = decode_frame(f)
    record = CallRecord("python", "w1")
    record.begin("m", "f", None)
    record.input(header, block[:-1] + bytes([block[-1] ^ 1]))
    assert meta() == {}
    assert len(parse_block(record.block()).lineage) == 1
    assert "checksum" in caplog.text
    record.end()


def test_describe_reads_a_frame_in_a_slice_without_its_payload() -> None:
    s = Slices()
    try:
        block = Block.build(producer=producer_body("elixir"), meta={"round": 4}).encode()
        sl = s.put(np.arange(100, dtype=np.float64).tobytes(), provenance=block)
        with s.read(sl) as f:
            arr = np.frombuffer(f.payload, dtype=np.float64)
            d = frame.describe(arr[10:20])  # a view of a view of the payload
            assert d["meta"] == {"round": 4} and d["producer"]["side"] == "elixir"
            assert d["lengths"]["payload"] == 800 and d["checksum"] == "not_verified"
            assert d["frame_id"] == f.header.frame_id > 0
            assert frame.describe(f) == d
            del arr
        with pytest.raises(BridgeError) as info:
            frame.describe(np.zeros(3))
        assert info.value.reason == "not_a_frame"
    finally:
        s.close()


def test_a_dump_describes_as_its_frame_and_a_corrupted_payload_is_never_read(
    tmp_path: Path,
) -> None:
    record = CallRecord("python", "w1")
    record.begin("m", "f", {b"round": 7})
    path = tmp_path / "t.frame"
    frame.dump(np.arange(1000, dtype=np.int32), str(path))
    record.end()
    clean = frame.describe_file(str(path))
    assert clean["format"] == "tensor" and clean["meta"] == {"round": 7}
    assert clean["descriptor"] == {"dtype": "<i4", "shape": [1000], "order": "C"}
    assert clean["checksum"] == "not_verified"
    assert clean == describe_bytes(path.read_bytes())

    data = bytearray(path.read_bytes())
    data[clean["payload_offset"] + 100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert frame.describe_file(str(path)) == clean
    with pytest.raises(HeaderError) as info:
        decode_frame(bytes(data))  # reading the payload with verification finds it
    assert info.value.reason == "checksum_mismatch"


def test_dump_of_a_frame_read_from_a_slice_is_that_frame(tmp_path: Path) -> None:
    s = Slices()
    try:
        block = Block.build(producer=producer_body("elixir")).encode()
        sl = s.put(b"abc" * 1000, provenance=block)
        with s.read(sl) as f:
            view = f.payload[3:9]
            frame.dump(view, str(tmp_path / "f"))
            del view
            written = (tmp_path / "f").read_bytes()
            with s.arenas.area(sl) as area:
                assert written == bytes(area[: f.header.payload_offset + 3000])
        got = Frame.from_bytes(written)
        assert bytes(got.payload) == b"abc" * 1000
    finally:
        s.close()


def test_a_live_slice_is_described_by_its_handle() -> None:
    s = Slices()
    try:
        block = Block.build(meta={"live": True}).encode()
        sl = s.put(b"x" * 5000, provenance=block)
        fd = s.arenas.announcement(sl.object_id)[2]
        handle = f"/proc/{os.getpid()}/fd/{fd}@{sl.offset}"
        d = read_file(handle)
        assert d["meta"] == {"live": True} and d["handle"] == handle
        assert d["lengths"]["payload"] == 5000
    finally:
        s.close()


def test_python_m_beambridge_inspect(tmp_path: Path) -> None:
    block = Block.build(producer=producer_body("python"), meta={"é": "ü"}).encode()
    path = tmp_path / "x.frame"
    path.write_bytes(encode_frame(b"abc", provenance=block, frame_id=3, created_at=10**18))
    run = subprocess.run(
        [sys.executable, "-m", "beambridge", "inspect", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == to_json(read_file(str(path))) + "\n"
    out = json.loads(run.stdout)
    assert out["meta"] == {"é": "ü"} and out["created_at_utc"] == "2001-09-09T01:46:40.000000000Z"

    (tmp_path / "bad").write_bytes(b"BBFX" + bytes(200))
    run = subprocess.run(
        [sys.executable, "-m", "beambridge", "inspect", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1 and "bad_magic" in run.stderr
    run = subprocess.run(
        [sys.executable, "-m", "beambridge", "inspect"], capture_output=True, check=False
    )
    assert run.returncode == 2


def test_meta_outside_a_call_is_an_empty_dict_of_its_own() -> None:
    assert call_record.meta() == {}
    m = call_record.meta()
    m["x"] = 1
    assert call_record.meta() == {}


def test_a_meta_over_1_kib_is_held_by_the_first_frame_and_named_by_the_others() -> None:
    big = {b"config": b"x" * 3000, b"round": 1}
    record = CallRecord("python", "w1")
    record.begin("m", "f", big)
    holder, second, third = record.block(), record.block(), record.block()
    assert record.block(full=True) == holder
    record.end()
    assert holds_meta(holder) and not holds_meta(second) and second == third
    assert len(second) < 300 < 3000 < len(holder)

    held = encode_frame(b"a", provenance=holder, frame_id=next_frame_id())
    named = encode_frame(b"b", provenance=second, frame_id=next_frame_id())
    assert decode_frame(held)[0].flags & FLAG_HOLDS_META
    assert not decode_frame(named)[0].flags & FLAG_HOLDS_META

    provenance._stored.clear()  # a reader that has not read the holder: not found
    d = describe_bytes(named)
    assert d["meta"] == {} and d["meta_ref"]["found"] is False
    describe_bytes(held)  # reading the holder keeps its meta
    d = describe_bytes(named)
    assert d["meta"] == {"config": "x" * 3000, "round": 1}
    body = etf_encode({"config": "x" * 3000, "round": 1})
    assert d["meta_ref"] == {
        "digest": xxhash.xxh3_64_intdigest(body),
        "length": len(body),
        "found": True,
    }


def test_the_stored_metas_a_reader_keeps_are_bounded() -> None:
    provenance._stored.clear()
    for i in range(STORED_MAX + 10):
        remember(Block.build(meta={"i": i, "pad": "p" * 2000}))
    assert len(provenance._stored) == STORED_MAX
