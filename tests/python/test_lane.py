"""The lane (protocol/SPEC.md §8.5) from the BEAM's side, against a real worker process:
calls published there while the worker polls are answered there, a sleeping worker is
rung through the pipe, a parked BEAM is rung back, answers too big for the area go on
the pipe, and a batch that breaks the protocol ends the worker."""

from __future__ import annotations

import contextlib
import select
import time
from typing import Any

from beambridge import control
from beambridge.etf import Atom, decode, encode_parts
from beambridge.lane import frames
from beambridge.objects import KIND_LANE, SharedObject
from beambridge.registry import LANE
from hypothesis import given
from hypothesis import strategies as st
from worker_harness import MOD, WorkerProcess


class BeamLane:
    """The BEAM's half of a lane, played from Python."""

    def __init__(self, worker: WorkerProcess) -> None:
        self.obj = SharedObject(LANE["size"], KIND_LANE)
        self.words = memoryview(self.obj.mm)[: LANE["call_area"]].cast("Q")
        self.worker = worker
        self.seq = 0
        worker.send(control.object_announcement(*self.obj.announcement()))

    def word(self, name: str) -> int:
        return int(self.words[LANE[name] // 8])

    def set_word(self, name: str, value: int) -> None:
        self.words[LANE[name] // 8] = value

    def publish(self, batch: bytes) -> int:
        area = LANE["call_area"]
        self.obj.mm[area : area + len(batch)] = batch
        self.seq += 1
        self.set_word("parked", 0)
        self.set_word("call_len", len(batch))
        self.set_word("call_seq", self.seq)
        return self.seq

    def call(self, function: str, *args: Any, call_id: int = 1) -> int:
        envelope = control.call(call_id, MOD, Atom(function), {}, [])
        parts = control.join(envelope, encode_parts(list(args)))
        frame = b"".join(bytes(p) for p in parts)
        return self.publish(len(frame).to_bytes(4, "big") + frame)

    def answer(self, seq: int, timeout: float = 5.0) -> list[Any]:
        """The messages of the answer to ``seq`` once it is there (results decoded)."""
        deadline = time.monotonic() + timeout
        while self.word("answer_seq") != seq:
            assert time.monotonic() < deadline, "no answer in the lane"
            time.sleep(0.0005)
        size = self.word("answer_len")
        area = LANE["answer_area"]
        batch = bytes(self.obj.mm[area : area + size])
        out = []
        for frame in frames(batch):
            envelope, body = control.split(frame)
            message = control.from_worker(envelope, body is not None)
            out.append((message, None if body is None else decode(body)))
        return out

    def wait_awake(self, awake: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while bool(self.word("awake")) != awake:
            assert time.monotonic() < deadline, f"the worker never became awake={awake}"
            time.sleep(0.001)

    def close(self) -> None:
        self.words.release()
        self.obj.close()


def _pipe_is_quiet(w: WorkerProcess, seconds: float) -> bool:
    return not w.buffer and not select.select([w.from_worker], [], [], seconds)[0]


def _ok(messages: list[Any]) -> Any:
    (answer, body), *_ = [m for m in messages if isinstance(m[0], control.Answer)]
    assert answer.ok, answer
    return body


def test_a_call_in_the_lane_is_answered_in_the_lane() -> None:
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="500000").start()
    lane = BeamLane(w)
    try:
        assert w.ready.version >= (2, 2)
        assert w.call("add", 1, 2) == ("ok", 3)  # the worker now polls for 0.5 s
        lane.wait_awake(True)
        for i in range(50):
            seq = lane.call("add", i, 1, call_id=100 + i)
            assert _ok(lane.answer(seq)) == i + 1
        assert _pipe_is_quiet(w, 0.05), "an answer in the lane came on the pipe as well"
    finally:
        assert w.stop() == 0
        lane.close()


def test_a_sleeping_worker_is_rung_through_the_pipe() -> None:
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="0").start()
    lane = BeamLane(w)
    try:
        assert w.call("add", 1, 1) == ("ok", 2)
        lane.wait_awake(False)
        seq = lane.call("echo", b"rung")
        w.send(control.lane_ring())
        assert _ok(lane.answer(seq)) == b"rung"
        # a ring with nothing new in the lane is ignored
        w.send(control.lane_ring())
        assert w.call("add", 2, 2) == ("ok", 4)
    finally:
        assert w.stop() == 0
        lane.close()


def test_a_call_left_in_the_lane_without_a_ring_is_found_when_the_worker_next_looks() -> None:
    """The BEAM rings whenever it may have missed the worker going to sleep; should a
    call still wait unrung, the worker finds it at its next idle turn."""
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="0").start()
    lane = BeamLane(w)
    try:
        assert w.call("add", 1, 1) == ("ok", 2)
        lane.wait_awake(False)
        seq = lane.call("add", 20, 22)
        assert _ok(lane.answer(seq, timeout=3.0)) == 42
    finally:
        assert w.stop() == 0
        lane.close()


def test_a_parked_beam_is_rung_when_the_answer_is_in_the_lane() -> None:
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="500000").start()
    lane = BeamLane(w)
    try:
        assert w.call("add", 1, 1) == ("ok", 2)
        lane.wait_awake(True)
        seq = lane.call("nap", 0.2, b"late")
        lane.set_word("parked", seq)  # the BEAM stopped polling
        envelope, body = w.recv_frame(timeout=5.0)
        assert envelope == control.A_LANE and body is None
        assert _ok(lane.answer(seq, timeout=0.1)) == b"late"
    finally:
        assert w.stop() == 0
        lane.close()


def test_an_answer_too_big_for_the_area_goes_on_the_pipe() -> None:
    n = LANE["area_size"] + 1000
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="500000", BEAMBRIDGE_THRESHOLD=str(4 * n)).start()
    lane = BeamLane(w)
    try:
        assert w.call("add", 1, 1) == ("ok", 2)
        lane.wait_awake(True)
        seq = lane.call("make_bytes", n, call_id=7)
        answer = w.recv()
        assert answer.ok and answer.call_id == 7 and w.body == b"a" * n
        assert lane.answer(seq) == []  # published empty: the answer is on the pipe
    finally:
        assert w.stop() == 0
        lane.close()


def test_a_batch_whose_lengths_run_past_it_ends_the_worker() -> None:
    w = WorkerProcess(BEAMBRIDGE_SPIN_US="500000").start()
    lane = BeamLane(w)
    try:
        assert w.call("add", 1, 1) == ("ok", 2)
        lane.wait_awake(True)
        lane.publish((1000).to_bytes(4, "big") + b"short")
        with contextlib.suppress(EOFError):
            while True:
                w.recv_any(timeout=5.0)
        assert w.wait() == 3
        assert b"a lane batch frame of 1000 bytes" in w.log_text("stderr")
    finally:
        w.cleanup()
        lane.close()


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_frames_reads_back_a_batch(parts: list[bytes]) -> None:
    batch = b"".join(len(p).to_bytes(4, "big") + p for p in parts)
    assert [bytes(f) for f in frames(batch)] == parts
