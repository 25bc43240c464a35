"""The worker's side of cancellation (protocol/SPEC.md §8.7), with real signals sent to
this process: `beambridge.cancel.Canceller` raises `CallCancelled` in handler code only,
defers it out of shielded worker code, ignores it between calls, and cancels an async
handler's task through asyncio."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest
from beambridge.cancel import CANCEL_SIGNAL, CallCancelled, Canceller, block_in_this_thread
from beambridge.registry import SIGNALS
from beambridge.streams import producer
from hypothesis import given, settings
from hypothesis import strategies as st


@pytest.fixture
def canceller() -> Iterator[Canceller]:
    import signal

    c = Canceller()
    previous = signal.signal(CANCEL_SIGNAL, c.on_signal)
    try:
        yield c
    finally:
        signal.signal(CANCEL_SIGNAL, previous)


def signal_after(seconds: float) -> threading.Thread:
    """Sends this process the cancel signal from another thread (which blocks it, as
    the worker's threads do, so the kernel gives it to the main thread)."""

    def later() -> None:
        block_in_this_thread()
        time.sleep(seconds)
        os.kill(os.getpid(), CANCEL_SIGNAL)

    thread = threading.Thread(target=later)
    thread.start()
    return thread


def test_the_signal_is_the_registry_one() -> None:
    assert SIGNALS["cancel"] == "SIGUSR1"
    assert CANCEL_SIGNAL.name == "SIGUSR1"


def test_a_sleeping_handler_is_interrupted_and_its_finally_runs(canceller: Canceller) -> None:
    cleaned = []

    def handler(seconds: float) -> str:
        try:
            time.sleep(seconds)
            return "slept"
        finally:
            cleaned.append(seconds)

    canceller.begin(1)
    thread = signal_after(0.05)
    start = time.monotonic()
    with pytest.raises(CallCancelled, match="call 1 was cancelled"):
        canceller.run(handler, [30])
    thread.join()
    assert time.monotonic() - start < 5
    assert cleaned == [30]
    assert not canceller.armed
    canceller.end()
    assert canceller.run(handler, [0]) == "slept"  # the next call runs normally


def test_a_signal_between_calls_is_ignored(canceller: Canceller) -> None:
    os.kill(os.getpid(), CANCEL_SIGNAL)
    time.sleep(0.01)  # the handler runs at the next bytecode
    assert not canceller.requested
    canceller.begin(2)
    assert canceller.run(lambda: "fine", []) == "fine"


def test_a_signal_while_the_arguments_are_read_stops_the_handler_before_it_runs(
    canceller: Canceller,
) -> None:
    ran = []
    canceller.begin(3)
    os.kill(os.getpid(), CANCEL_SIGNAL)
    time.sleep(0.01)
    assert canceller.requested
    with pytest.raises(CallCancelled):
        canceller.run(ran.append, [1])
    assert ran == []


def test_shielded_worker_code_finishes_and_the_cancel_comes_after(canceller: Canceller) -> None:
    steps = []

    def handler() -> None:
        with canceller.shielded():  # the worker reading a frame for the handler
            os.kill(os.getpid(), CANCEL_SIGNAL)
            time.sleep(0.05)  # interrupted by the signal, retried: not raised here
            steps.append("frame read")
        steps.append("never")

    canceller.begin(4)
    with pytest.raises(CallCancelled):
        canceller.run(handler, [])
    assert steps == ["frame read"]


def test_an_async_handler_is_cancelled_through_asyncio(canceller: Canceller) -> None:
    seen = []

    async def handler(seconds: float) -> str:
        try:
            await asyncio.sleep(seconds)
            return "done"
        except asyncio.CancelledError:
            seen.append("cancelled at await")
            raise

    canceller.begin(5)
    thread = signal_after(0.05)
    with pytest.raises(CallCancelled):
        canceller.run(handler, [30])
    thread.join()
    assert seen == ["cancelled at await"]
    assert canceller.task is None
    canceller.end()
    canceller.begin(6)
    assert canceller.run(handler, [0]) == "done"
    loop = canceller.loop()
    assert not loop.is_closed()  # kept for the next async handler


def test_an_async_handler_that_raises_keeps_its_exception(canceller: Canceller) -> None:
    async def handler() -> None:
        raise ValueError("mine")

    canceller.begin(7)
    with pytest.raises(ValueError, match="mine"):
        canceller.run(handler, [])


def test_a_stream_element_is_interrupted_and_the_generator_closed(canceller: Canceller) -> None:
    closed = []

    def gen() -> Iterator[int]:
        try:
            yield 1
            time.sleep(30)
            yield 2
        finally:
            closed.append(True)

    canceller.begin(8)
    source = producer(gen(), canceller)
    assert source.next() == 1
    thread = signal_after(0.05)
    with pytest.raises(CallCancelled):
        source.next()
    thread.join()
    source.close()
    assert closed == [True]


def test_an_async_generator_element_is_cancelled(canceller: Canceller) -> None:
    async def agen():  # type: ignore[no-untyped-def]
        yield "a"
        await asyncio.sleep(30)
        yield "b"

    canceller.begin(9)
    source = producer(agen(), canceller)
    assert source.next() == "a"
    thread = signal_after(0.05)
    with pytest.raises(CallCancelled):
        source.next()
    thread.join()
    source.close()


@settings(max_examples=25, deadline=None)
@given(
    work=st.floats(min_value=0.0, max_value=0.03),
    delay=st.floats(min_value=0.0, max_value=0.03),
    shielded=st.booleans(),
)
def test_a_cancel_at_any_moment_gives_the_value_or_call_cancelled(
    work: float, delay: float, shielded: bool
) -> None:
    """Whatever the race between the handler's end and the signal: the handler's own
    value, or CallCancelled; shielded work is never cut short; after `end` the state is
    clean and a late signal is ignored."""
    import signal

    c = Canceller()
    previous = signal.signal(CANCEL_SIGNAL, c.on_signal)
    done = []
    try:

        def handler() -> str:
            if shielded:
                with c.shielded():
                    time.sleep(work)
                    done.append("shielded")
            else:
                time.sleep(work)
            return "value"

        c.begin(10)
        thread = signal_after(delay)
        try:
            outcome = c.run(handler, [])
        except CallCancelled:
            outcome = "cancelled"
        c.end()
        thread.join()
        time.sleep(0.002)  # a signal that came after end: handled now, ignored
        assert outcome in ("value", "cancelled")
        if shielded:
            assert done == ["shielded"]
        if outcome == "value":
            assert done == (["shielded"] if shielded else [])
        assert (c.call_id, c.armed, c.requested, c.task) == (None, False, False, None)
    finally:
        signal.signal(CANCEL_SIGNAL, previous)
