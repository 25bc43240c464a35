"""Streams for handler authors (protocol/SPEC.md §8.6).

A handler called with ``Bridge.stream/3`` returns what it wants to stream: a
generator, an async generator, any iterator or iterable (a ``list``, a ``range``), a
``pyarrow.Table`` (sent as its record batches) or a ``pyarrow.RecordBatchReader``.
Each element crosses as a call result would. `checkpoint` marks an element as a point
the stream can resume from::

    def batches(path, checkpoint=None):   # checkpoint: None, or the token to resume after
        start = 0 if checkpoint is None else int(checkpoint)
        for i in range(start, n_chunks(path)):
            yield beambridge.checkpoint(read_chunk(path, i), str(i + 1))

An argument the BEAM passed as ``Bridge.Stream.from(enumerable)`` arrives as a `Stream`:
an iterator whose elements arrive while the handler runs, at most a window of them
ahead of it.

>>> point = checkpoint(b"chunk", "3")
>>> point.value, point.token
(b'chunk', b'3')
>>> checkpoint(b"chunk", 3)
Traceback (most recent call last):
...
TypeError: a checkpoint token is a str or bytes, got int
>>> producer(iter([1, 2])).next(), producer(range(3)).next()
(1, 0)
>>> producer(b"bytes")
Traceback (most recent call last):
...
beambridge.streams.StreamError: not_a_stream: a stream handler returned bytes; return a \
generator, an iterator, a list or a pyarrow Table
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .cancel import Canceller
from .errors import BridgeError

__all__ = ["Cancelled", "Checkpoint", "Producer", "Stream", "StreamError", "checkpoint", "producer"]


class StreamError(BridgeError, RuntimeError):
    """A stream failed: ``not_a_stream`` (a stream handler returned something that is
    not one), ``stream_aborted`` (the Elixir enumerable feeding a `Stream` raised),
    ``stream_broken`` (elements out of order, or an end whose count or checksum
    disagrees)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, "stream", None, None, f"{reason}: {message}")


class Cancelled(BaseException):
    """Raised inside a stream handler that waits for an argument stream's element
    when the consumer of its result stream stops: it unwinds the handler (its
    ``finally`` blocks run). Not an `Exception`, so ``except Exception`` lets it
    through."""


class Checkpoint:
    """An element and the token a resumed stream starts after (`checkpoint`)."""

    __slots__ = ("token", "value")

    def __init__(self, value: Any, token: bytes) -> None:
        self.value = value
        self.token = token


def checkpoint(value: Any, token: str | bytes) -> Checkpoint:
    """Yield this instead of ``value`` to mark a resumable point: if the stream is
    resumed after this element, the handler is called again with ``checkpoint=token``
    (as ``bytes``, or ``str`` under ``strings: :str``) and must yield what comes after
    it."""
    if isinstance(token, str):
        return Checkpoint(value, token.encode("utf-8"))
    if isinstance(token, (bytes, bytearray, memoryview)):
        return Checkpoint(value, bytes(token))
    raise TypeError(f"a checkpoint token is a str or bytes, got {type(token).__name__}")


class Stream:
    """An argument stream of the call in flight: iterate it for its elements. It ends
    when the Elixir enumerable does, and raises `StreamError` ``stream_aborted`` when
    that raised. ``sid`` names it in the protocol."""

    def __init__(self, sid: int, take: Callable[[int], Any]) -> None:
        self.sid = sid
        self._take = take

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Any:
        return self._take(self.sid)

    def __repr__(self) -> str:
        return f"<beambridge.Stream {self.sid}>"


class Producer:
    """What a stream handler returned, as ``next()`` (StopIteration at the end; each
    element made as handler code the cancel signal interrupts, `beambridge.cancel`) and
    ``close()`` (a generator's ``finally`` runs)."""

    def __init__(self, iterator: Iterator[Any], cancel: Canceller | None = None) -> None:
        self._iterator = iterator
        step = iterator.__next__
        self.next: Callable[[], Any] = step if cancel is None else (lambda: cancel.step(step))

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None:
            close()


class _AsyncProducer(Producer):
    """An async generator, driven one element at a time on the worker's event loop (a
    cancel cancels the element's task)."""

    def __init__(self, iterator: AsyncIterator[Any], cancel: Canceller) -> None:
        self._agen = iterator
        self._cancel = cancel
        self.next = self._next

    def _next(self) -> Any:
        try:
            return self._cancel.run_coroutine(self._agen.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        aclose = getattr(self._agen, "aclose", None)
        if aclose is not None:
            self._cancel.loop().run_until_complete(aclose())


_NOT_STREAMS = (bytes, bytearray, memoryview, str, dict)


def producer(result: Any, cancel: Canceller | None = None) -> Producer:
    """The `Producer` of a stream handler's result (`StreamError` ``not_a_stream``),
    its elements made under ``cancel`` (a new `Canceller` when None)."""
    cancel = Canceller() if cancel is None else cancel
    if inspect.isasyncgen(result) or (
        hasattr(result, "__anext__") and hasattr(result, "__aiter__")
    ):
        return _AsyncProducer(result, cancel)
    module = type(result).__module__ or ""
    if module.startswith("pyarrow") and hasattr(result, "to_batches"):
        return Producer(iter(result.to_batches()), cancel)  # a Table: its record batches
    if module.startswith("numpy") or isinstance(result, _NOT_STREAMS):
        raise StreamError(
            "not_a_stream",
            f"a stream handler returned {type(result).__name__}; return a generator, an "
            "iterator, a list or a pyarrow Table",
        )
    try:
        iterator = iter(result)
    except TypeError:
        raise StreamError(
            "not_a_stream",
            f"a stream handler returned {type(result).__name__}, which is not iterable; return "
            "a generator, an iterator, a list or a pyarrow Table",
        ) from None
    if iterator is result:
        return Producer(result, cancel)
    return Producer(iterator, cancel)
