"""Cancelling the call in flight (protocol/SPEC.md §8.7).

When a call's deadline passes the BEAM answers its caller ``:timeout`` and sends the
worker the cancel signal (``SIGUSR1``, ``signals.cancel`` in protocol/registry.json).
The worker's `Canceller` turns it into `CallCancelled` raised in the handler, which
runs on the worker's main thread: between two bytecodes, and out of a blocking call
such as ``time.sleep`` or a socket read (the signal interrupts it). An ``async def``
handler's task is cancelled through asyncio instead (``asyncio.CancelledError`` at its
``await``). The handler unwinds (its ``finally`` blocks and context managers run), the
worker answers the call as it answers any exception, the BEAM drops that answer and the
worker takes the next call with its modules as they were.

The exception is raised only while handler code runs (`armed`): never in the middle of
the worker reading or writing a frame, or of its bookkeeping of slices and leases. A
signal that comes meanwhile is kept (`requested`) and raised as soon as handler code
runs again; one that comes when no call is in flight (the answer crossed it) is ignored.
A handler stuck in C code that holds the GIL cannot be interrupted: the BEAM kills the
worker when it has not answered within the pool's ``cancel_grace``.

>>> c = Canceller()
>>> c.begin(7); c.on_signal(0, None); c.requested  # not in handler code: kept
True
>>> try:
...     c.run(print, ["never printed"])
... except CallCancelled as cancelled:
...     print(cancelled)
call 7 was cancelled: its timeout passed
>>> c.end(); c.on_signal(0, None); c.requested  # no call in flight: ignored
False
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import CoroutineType, FrameType
from typing import Any

from .registry import SIGNALS

__all__ = ["CANCEL_SIGNAL", "CallCancelled", "Canceller", "block_in_this_thread"]

#: The signal that cancels the call in flight.
CANCEL_SIGNAL = signal.Signals[SIGNALS["cancel"]]


class CallCancelled(KeyboardInterrupt):
    """Raised in a handler whose call was cancelled (its timeout passed).

    A `KeyboardInterrupt`, so ``except Exception`` does not swallow it and code written
    for Ctrl-C cleans up as it would there. Let it propagate: a handler that catches it
    and carries on is killed with its worker when ``cancel_grace`` runs out."""


def block_in_this_thread() -> None:
    """Keeps the cancel signal off the calling thread (the worker's own threads), so
    the kernel delivers it to the main thread, whose blocking calls it interrupts."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {CANCEL_SIGNAL})


class Canceller:
    """The cancel state of one worker: the call in flight, whether handler code runs
    now (`armed`), whether a cancel came (`requested`), the asyncio task of an async
    handler."""

    def __init__(self) -> None:
        self.call_id: int | None = None
        self.armed = False
        self.requested = False
        self.task: Any = None  # the asyncio.Task of the async handler in flight
        self._loop: Any = None

    def install(self) -> None:
        """Handle the cancel signal (the worker's main thread, at start)."""
        signal.signal(CANCEL_SIGNAL, self.on_signal)

    def begin(self, call_id: int) -> None:
        self.call_id = call_id
        self.requested = False

    def end(self) -> None:
        self.call_id = None
        self.armed = False
        self.requested = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler (main thread, between bytecodes)."""
        if self.call_id is None:
            return  # the call was answered before the signal came
        self.requested = True
        task = self.task
        if task is not None:
            task.get_loop().call_soon_threadsafe(task.cancel)
        elif self.armed:
            self.check()

    def check(self) -> None:
        """Raise `CallCancelled` when a cancel came (handler code runs again)."""
        if self.requested and self.armed:
            self.armed = False  # once: the handler's own clean-up runs undisturbed
            raise self.cancelled()

    def cancelled(self) -> CallCancelled:
        """The exception a cancelled handler gets."""
        return CallCancelled(f"call {self.call_id} was cancelled: its timeout passed")

    def run(self, fn: Callable[..., Any], args: list[Any]) -> Any:
        """``fn(*args)`` as handler code: interruptible by the cancel signal; an
        ``async def`` handler's coroutine runs to its end on the worker's event loop."""
        self.armed = True
        try:
            self.check()  # a cancel that came while the arguments were read
            result = fn(*args)
        finally:
            self.armed = False
        if type(result) is CoroutineType:
            return self.run_coroutine(result)
        return result

    def step(self, next_element: Callable[[], Any]) -> Any:
        """One element of a stream handler's iterator, as handler code."""
        self.armed = True
        try:
            self.check()
            return next_element()
        finally:
            self.armed = False

    def run_coroutine(self, coro: Awaitable[Any]) -> Any:
        """Run ``coro`` (a coroutine or another awaitable) on the worker's event loop,
        kept from call to call so what a handler made on it stays usable; a cancel
        cancels its task."""
        import asyncio  # not at module level: most workers never need it

        if self.requested:
            close = getattr(coro, "close", None)
            if close is not None:
                close()
            raise self.cancelled()
        loop = self.loop()
        task = asyncio.ensure_future(coro, loop=loop)
        self.task = task
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if self.requested:
                raise self.cancelled() from None
            raise
        finally:
            self.task = None

    def loop(self) -> Any:
        """The worker's event loop (made on first use, the thread's current loop)."""
        if self._loop is None or self._loop.is_closed():
            import asyncio

            self._loop = asyncio.new_event_loop()
            asyncio.set_event_loop(self._loop)
        return self._loop

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Worker code run from handler code (reading or writing a frame for a stream):
        a cancel that comes meanwhile waits until it is done, then is raised."""
        was = self.armed
        self.armed = False
        try:
            yield
        finally:
            self.armed = was
        self.check()
