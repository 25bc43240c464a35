"""Streams (protocol/SPEC.md §8.6) against a real worker process, the BEAM's side
played from Python: result streams within their window, checkpoints and resumes,
cancellation that closes the generator, async generators, argument streams fed while
the handler runs, transforms, integrity chains, and frames that break the rules."""

from __future__ import annotations

from typing import Any

import pytest
from beambridge import control
from beambridge import stream_control as sc
from beambridge.etf import Atom, encode_parts
from beambridge.header.layout import FLAG_PAYLOAD_CHECKSUM
from beambridge.header.validator import validate_header
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_harness import WorkerProcess, running

MOD = Atom("bbtest_streams")
STREAM_TAG = Atom("$bb_stream")


class Consumer:
    """The BEAM's end of one result stream: elements read, acknowledged when told, the
    chain kept."""

    def __init__(self, worker: WorkerProcess, call_id: int, seq: int = 0, chain: int = 0):
        self.worker, self.call_id = worker, call_id
        self.seq, self.chain = seq, chain
        self.values: list[Any] = []
        self.tokens: list[bytes | None] = []
        self.end: Any = None

    def next(self, timeout: float = 10.0) -> Any:
        """The next message of the stream that is an element or the end."""
        while True:
            message = self.worker.recv_any(timeout)
            if isinstance(message, sc.Element):
                assert message.call_id == self.call_id and message.sid == 0
                assert message.seq == self.seq + 1, (message.seq, self.seq)
                self.seq = message.seq
                self.chain = sc.chain(self.chain, message.seq, sc.body_digest(self.worker.raw_body))
                self.values.append(self.worker.read_element(self.worker.body, message.slices))
                self.tokens.append(message.checkpoint)
                return message
            if isinstance(message, (sc.Done, control.Answer)):
                self.end = message
                return message

    def ack(self) -> None:
        self.worker.send(sc.ack(self.call_id, 0, self.seq))

    def drain(self) -> Any:
        """Every element to the end, acknowledging each."""
        while True:
            message = self.next()
            if not isinstance(message, sc.Element):
                return message
            self.ack()


def start(worker: WorkerProcess, function: str, *args: Any, window: int = 4, **spec: Any) -> int:
    worker.flush()
    call_id = worker.next_id
    worker.next_id += 1
    opts = {b"stream": {b"window": window, **{k.encode(): v for k, v in spec.items()}}}
    worker.send(control.call(call_id, MOD, Atom(function), opts, []), list(args))
    return call_id


def _read_element(self: WorkerProcess, term: Any, slices: list[Any]) -> Any:
    return self.beam.read(term, slices)


WorkerProcess.read_element = _read_element  # type: ignore[attr-defined]


def test_a_stream_keeps_to_its_window_and_ends_with_the_chain() -> None:
    with running() as w:
        call_id = start(w, "count", 10, window=3)
        c = Consumer(w, call_id)
        for _ in range(3):
            assert isinstance(c.next(), sc.Element)
        with pytest.raises(TimeoutError):  # a fourth waits for an acknowledgement
            w.recv_any(0.3)
        c.ack()
        while not isinstance(c.next(), sc.Done):
            c.ack()
        assert c.values == list(range(10))
        assert c.tokens == [str(i + 1).encode() for i in range(10)]
        assert (c.end.call_id, c.end.sid, c.end.count, c.end.checksum) == (
            call_id,
            0,
            10,
            c.chain,
        )
        assert w.value("was_closed", module=MOD) == [b"count 0"]  # type: ignore[arg-type]


def test_resume_from_a_checkpoint_continues_the_numbering_and_the_chain() -> None:
    with running() as w:
        clean = Consumer(w, start(w, "count", 6))
        clean.drain()
        first = Consumer(w, start(w, "count", 6))
        for _ in range(4):
            first.next()
            first.ack()
        w.send(sc.cancel(first.call_id, 0))
        while not isinstance(first.next(), sc.Done):
            pass
        # resume after the last checkpoint taken: token "3", nothing to skip
        point = first.tokens[2]
        resumed = Consumer(w, 0, seq=3, chain=_chain_of(first, 3))
        resumed.call_id = start(w, "count", 6, seq=3, checksum=resumed.chain, checkpoint=point)
        end = resumed.drain()
        assert first.values[:3] + resumed.values == clean.values
        assert (end.count, end.checksum) == (clean.end.count, clean.end.checksum)


def _chain_of(consumer: Consumer, n: int) -> int:
    """The chain over the first ``n`` elements a consumer took (recomputed)."""
    chain = 0
    for seq, value in enumerate(consumer.values[:n], 1):
        chain = sc.chain(chain, seq, sc.body_digest(b"".join(encode_parts(value))))
    return chain


def test_a_stream_without_checkpoints_resumes_by_skipping() -> None:
    with running() as w:
        clean = Consumer(w, start(w, "plain", 5))
        clean.drain()
        resumed = Consumer(w, 0, seq=2, chain=_chain_of(clean, 2))
        resumed.call_id = start(w, "plain", 5, seq=2, checksum=resumed.chain, skip=2)
        end = resumed.drain()
        assert resumed.values == [2, 3, 4]
        assert (end.count, end.checksum) == (5, clean.end.checksum)


def test_cancel_closes_the_generator_and_the_worker_serves_the_next_call() -> None:
    with running() as w:
        c = Consumer(w, start(w, "count", 1_000_000, window=2))
        c.next()
        w.send(sc.cancel(c.call_id, 0))
        while not isinstance(c.next(), sc.Done):
            pass
        assert c.end.count == c.seq <= 2
        assert w.value("was_closed", module=MOD) == [b"count 0"]  # type: ignore[arg-type]


def test_async_generators_stream_and_close() -> None:
    with running() as w:
        c = Consumer(w, start(w, "ticks", 5))
        assert isinstance(c.drain(), sc.Done)
        assert c.values == [0, 1, 2, 3, 4]
        c = Consumer(w, start(w, "ticks", 100, window=1))
        c.next()
        w.send(sc.cancel(c.call_id, 0))
        while not isinstance(c.next(), sc.Done):
            pass
        assert w.value("was_closed", module=MOD) == [b"ticks", b"ticks"]  # type: ignore[arg-type]


def test_lists_and_arrow_tables_stream_their_elements() -> None:
    pa = pytest.importorskip("pyarrow")
    with running() as w:
        c = Consumer(w, start(w, "as_list", [1, b"two", 3.0]))
        c.drain()
        assert c.values == [1, b"two", 3.0]
        c = Consumer(w, start(w, "arrow_table", 10_000, 3_000))
        c.drain()
        assert [t.num_rows for t in c.values] == [3000, 3000, 3000, 1000]
        assert pa.concat_tables(c.values).column("x").to_pylist() == list(range(10_000))


def test_an_exception_ends_the_stream_after_its_elements() -> None:
    with running() as w:
        c = Consumer(w, start(w, "fails_after", 3))
        end = c.drain()
        assert c.values == [0, 1, 2]
        assert isinstance(end, control.Answer) and not end.ok
        assert end.error[0] == Atom("python_exception") and end.error[1] == b"ValueError"


def test_a_handler_that_returns_no_stream_is_a_bad_call() -> None:
    with running() as w:
        c = Consumer(w, start(w, "not_a_stream"))
        end = c.next()
        assert isinstance(end, control.Answer) and not end.ok
        assert end.error[:2] == (Atom("bad_call"), Atom("not_a_stream"))
        assert b"bytes" in end.error[2]


def test_large_elements_travel_in_checksummed_slices() -> None:
    with running() as w:
        c = Consumer(w, start(w, "blobs", 5, 300_000, window=2))
        slices = []
        while True:
            message = c.next()
            if not isinstance(message, sc.Element):
                break
            slices.extend(message.slices)
            c.ack()
        assert [bytes(v) for v in c.values] == [bytes([i]) * 300_000 for i in range(5)]
        assert slices and all(e[0] == Atom("worker") for e in slices)
        for _, object_id, offset, length, _, _ in slices[-1:]:
            frame = w.beam.peers.get(object_id).mm[offset : offset + length]
            header, _ = validate_header(frame, length)
            assert header.flags & FLAG_PAYLOAD_CHECKSUM  # the payload's checksum is there


def feed(w: WorkerProcess, call_id: int, sid: int, values: list[Any], window: int = 2) -> None:
    """Feed argument stream ``sid`` within ``window``, then end it."""
    acked = sent = chain = 0
    while sent < len(values) or acked < sent:
        while sent < len(values) and sent - acked < window:
            sent += 1
            parts = encode_parts(values[sent - 1])
            chain = sc.chain(chain, sent, sc.body_digest(b"".join(parts)))
            w.send_frame(control.join(sc.element(call_id, sid, sent, None, []), parts))
        message = w.recv_any(10)
        if isinstance(message, sc.Ack):
            assert message.seq <= sent
            acked = message.seq
        assert not isinstance(message, control.Answer), message
    w.send(sc.done(call_id, sid, sent, chain))


def test_an_argument_stream_is_an_iterator_fed_within_the_window() -> None:
    with running() as w:
        w.flush()
        w.send(control.call(7, MOD, Atom("total"), {}, []), [(STREAM_TAG, 1)])
        feed(w, 7, 1, list(range(100)))
        answer = w.recv()
        assert answer.ok and w.body == sum(range(100))


def test_a_transform_reads_one_stream_and_writes_another() -> None:
    with running() as w:
        w.flush()
        opts = {b"stream": {b"window": 2}}
        w.send(control.call(9, MOD, Atom("double"), opts, []), [(STREAM_TAG, 1)])
        out = Consumer(w, 9)
        for seq, value in enumerate(range(20), 1):
            parts = encode_parts(value)
            w.send_frame(control.join(sc.element(9, 1, seq, None, []), parts))
            message = out.next()
            while isinstance(message, sc.Ack) or not isinstance(message, sc.Element):
                message = out.next()
            out.ack()
        w.send(sc.done(9, 1, 20, _feed_chain(list(range(20)))))
        assert isinstance(out.drain(), sc.Done)
        assert out.values == [2 * v for v in range(20)]


def _feed_chain(values: list[Any]) -> int:
    chain = 0
    for seq, value in enumerate(values, 1):
        chain = sc.chain(chain, seq, sc.body_digest(b"".join(encode_parts(value))))
    return chain


def test_an_aborted_argument_stream_raises_in_the_handler() -> None:
    with running() as w:
        w.flush()
        w.send(control.call(3, MOD, Atom("swallow"), {}, []), [(STREAM_TAG, 1)])
        w.send_frame(control.join(sc.element(3, 1, 1, None, []), encode_parts(1)))
        w.send(sc.abort(3, 1, b"File.Error: enoent"))
        answer = w.recv()
        assert answer.ok and w.body.startswith(b"stream_aborted: ")
        assert b"enoent" in w.body


def test_a_wrong_end_count_is_stream_broken() -> None:
    with running() as w:
        w.flush()
        w.send(control.call(3, MOD, Atom("swallow"), {}, []), [(STREAM_TAG, 1)])
        w.send_frame(control.join(sc.element(3, 1, 1, None, []), encode_parts(1)))
        w.send(sc.done(3, 1, 2, 0))
        answer = w.recv()
        assert answer.ok and w.body.startswith(b"stream_broken: ")


def test_elements_of_a_finished_call_are_dropped() -> None:
    with running() as w:
        w.flush()
        w.send(control.call(3, MOD, Atom("first"), {}, []), [(STREAM_TAG, 1)])
        for seq in (1, 2, 3):
            w.send_frame(control.join(sc.element(3, 1, seq, None, []), encode_parts(seq)))
        answer = w.recv()
        assert answer.ok and w.body == 1
        w.send(sc.done(3, 1, 3, 0))  # late: ignored, and their slices let go
        assert w.ok("total", [4, 5], module=MOD) == 9


def test_an_element_out_of_order_ends_the_worker() -> None:
    w = WorkerProcess().start()
    try:
        w.flush()
        w.send(control.call(3, MOD, Atom("total"), {}, []), [(STREAM_TAG, 1)])
        w.send_frame(control.join(sc.element(3, 1, 2, None, []), encode_parts(1)))
        with pytest.raises(EOFError):
            while True:
                w.recv_any(10)
        assert w.wait() == 3
        assert b"element 2 of argument stream 1; 1 was due" in w.log_text("stderr")
    finally:
        w.cleanup()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    values=st.lists(st.one_of(st.integers(), st.binary(max_size=200), st.text(max_size=20))),
    window=st.integers(1, 5),
)
def test_any_list_streams_whole_and_in_order(values: list[Any], window: int) -> None:
    with running() as w:
        c = Consumer(w, start(w, "as_list", values, window=window))
        end = c.drain()
        expected = [v.encode() if isinstance(v, str) else v for v in values]
        assert c.values == expected
        assert (end.count, end.checksum) == (len(values), c.chain)


def test_the_window_is_checked() -> None:
    with running() as w:
        c = Consumer(w, start(w, "count", 3, window=0))
        end = c.next()
        assert isinstance(end, control.Answer) and end.error[1] == Atom("bad_term")
        assert b"window is 1 to 1024" in end.error[2]


def test_cancelling_a_transform_that_waits_for_input_unwinds_it() -> None:
    with running() as w:
        w.flush()
        opts = {b"stream": {b"window": 2}}
        w.send(control.call(9, MOD, Atom("double"), opts, []), [(STREAM_TAG, 1)])
        w.send_frame(control.join(sc.element(9, 1, 1, None, []), encode_parts(5)))
        out = Consumer(w, 9)
        message = out.next()
        assert isinstance(message, sc.Element) and out.values == [10]
        w.send(sc.cancel(9, 0))  # the handler now waits for element 2 of its input
        end = out.next()
        assert isinstance(end, sc.Done) and end.count == 1
        assert w.ok("total", [1, 2], module=MOD) == 3


CHUNKED = Atom("$bb_chunked")


@pytest.mark.parametrize(
    ("kind", "chunks", "expected"),
    [
        ("binary", [b"abc", b"de", b""], [b"bytes", 5, b"abc"]),
        ("buffer", [b"xy", b"z"], [b"memoryview", 3, b"xyz"]),
        ("binary", [], [b"bytes", 0, b""]),
    ],
)
def test_a_chunked_value_is_read_whole_before_the_handler_runs(
    kind: str, chunks: list[bytes], expected: list[Any]
) -> None:
    size = sum(map(len, chunks))
    with running() as w:
        w.flush()
        w.send(
            control.call(4, MOD, Atom("kind_and_size"), {}, []), [(CHUNKED, Atom(kind), 1, size)]
        )
        feed(w, 4, 1, chunks)
        answer = w.recv()
        assert answer.ok and w.body == expected


@pytest.mark.parametrize(
    ("size", "chunks", "said"),
    [(5, [b"abc"], b"add up to 3 bytes"), (2, [b"abc"], b"chunk of 3 bytes at byte 0")],
)
def test_chunks_that_do_not_add_up_are_a_bad_call(
    size: int, chunks: list[bytes], said: bytes
) -> None:
    with running() as w:
        w.flush()
        term = (CHUNKED, Atom("binary"), 1, size)
        w.send(control.call(4, MOD, Atom("kind_and_size"), {}, []), [term])
        for seq, chunk in enumerate(chunks, 1):
            w.send_frame(control.join(sc.element(4, 1, seq, None, []), encode_parts(chunk)))
        w.send(sc.done(4, 1, len(chunks), _feed_chain(chunks)))
        answer = w.recv()
        assert not answer.ok and answer.error[:2] == (Atom("bad_call"), Atom("bad_term"))
        assert said in answer.error[2]
        assert w.ok("total", [1], module=MOD) == 1


def test_a_result_binary_too_big_for_slices_and_a_frame_comes_in_chunks() -> None:
    """With 1 MiB of arenas, a 70 MiB result binary goes as the chunks of stream 1
    (4 MiB each, at most 4 unacknowledged), then the answer names it."""
    size = 70 << 20
    with running(BEAMBRIDGE_ARENA_LIMIT=str(1 << 20), BEAMBRIDGE_MIN_ARENA=str(1 << 20)) as w:
        w.ack_chunks = False
        w.flush()
        w.send(control.call(5, MOD, Atom("big"), {}, []), [size])
        chunks: list[bytes] = []
        chain = acked = 0
        while True:
            message = w.recv_any(30)
            if isinstance(message, sc.Element):
                assert (message.call_id, message.sid, message.seq) == (5, 1, len(chunks) + 1)
                assert message.seq - acked <= 4
                chain = sc.chain(chain, message.seq, sc.body_digest(w.raw_body))
                chunks.append(bytes(w.beam.read(w.body, message.slices)))
                if len(chunks) % 3 == 0:  # acknowledge in bursts
                    acked = len(chunks)
                    w.send(sc.ack(5, 1, acked))
            elif isinstance(message, sc.Done):
                assert (message.sid, message.count, message.checksum) == (1, len(chunks), chain)
                w.send(sc.ack(5, 1, len(chunks)))
            elif isinstance(message, control.Answer):
                break
        assert message.ok and w.body == [b"head", (CHUNKED, Atom("binary"), 1, size)]
        joined = b"".join(chunks)
        assert len(joined) == size and joined[:251] == bytes(range(251))
        assert max(map(len, chunks)) == 4 << 20


def test_a_tensor_payload_may_come_in_chunks_both_ways() -> None:
    import numpy as np
    from beambridge.formats import tensor as tensor_format

    arr = np.arange(1000, dtype="<i4").reshape(10, 100)
    desc = tensor_format.descriptor(arr)
    data = arr.tobytes()
    chunks = [data[:1500], data[1500:]]
    term = (Atom("$bb_tensor"), desc, (CHUNKED, Atom("binary"), 1, len(data)))
    with running(BEAMBRIDGE_ARENA_LIMIT=str(1 << 20), BEAMBRIDGE_MIN_ARENA=str(1 << 20)) as w:
        w.flush()
        w.send(control.call(6, MOD, Atom("tensor_info"), {}, []), [term])
        feed(w, 6, 1, chunks)
        answer = w.recv()
        assert answer.ok and w.body == [[10, 100], b"int32", int(arr.sum())]
        # a 64 MiB array back: its payload goes as stream 1
        n = 16 << 20
        result = w.ok("big_tensor", n, module=MOD)
        assert result[0] == Atom("$bb_tensor") and result[2] == (CHUNKED, "binary", 1, 4 * n)
        back = np.frombuffer(b"".join(w.chunks.pop(1)), dtype="<i4")
        assert np.array_equal(back, np.arange(n, dtype="<i4"))
