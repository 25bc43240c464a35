"""The streams of the call in flight, on the worker's side (protocol/SPEC.md §8.6).

`CallStreams` holds the argument streams the BEAM feeds (each a `beambridge.Stream` in
the handler's arguments: elements are queued as they arrive, decoded and acknowledged
as the handler takes them) and runs the result stream of a stream call (`produce`:
the handler's generator driven one element at a time, at most ``window`` elements
ahead of the BEAM's acknowledgements, closed when it ends, fails or is cancelled).

It talks to the worker through a `Link`: ``send`` writes one frame, ``send_pending``
the released slices and object notices waiting, ``pump`` reads one frame from the BEAM
and handles it (stream messages come back here through `on_message`).

>>> spec_of({b"stream": {b"window": 4, b"seq": 2, b"checkpoint": b"2"}}, bytes)
StreamSpec(window=4, seq=2, checksum=0, skip=0, resume=True, checkpoint=b'2')
>>> spec_of({}, bytes) is None
True
>>> spec_of({b"stream": {b"window": 0}}, bytes)
Traceback (most recent call last):
...
beambridge.errors.BridgeError: call option stream is {b'window': 0}: window is 1 to 1024
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from . import stream_control as sc
from .errors import BridgeError
from .etf import decode
from .streams import Cancelled, Checkpoint, Producer, Stream, StreamError

__all__ = ["CallStreams", "Link", "StreamSpec", "spec_of"]


class Link(Protocol):
    """What `CallStreams` needs of the worker."""

    def send(self, envelope: Any, body: list[Any] | None = None) -> None: ...

    def send_frames(self, messages: list[tuple[Any, list[Any] | None]]) -> None: ...

    def send_pending(self) -> None: ...

    def pump(self, block: bool) -> bool: ...


@dataclass(frozen=True)
class StreamSpec:
    """The call option ``"stream"`` (§8.6): the window, and where a resumed stream
    starts (``seq`` elements delivered, their ``checksum`` chain, ``skip`` elements to
    drop, the ``checkpoint`` keyword argument when ``resume``)."""

    window: int
    seq: int = 0
    checksum: int = 0
    skip: int = 0
    resume: bool = False
    checkpoint: Any = None  # bytes, or str under strings: :str


class _Feed:
    """An argument stream: elements received and not yet taken, and how it ended."""

    def __init__(self) -> None:
        self.queue: deque[tuple[sc.Element, memoryview]] = deque()
        self.taken = 0
        self.chain = 0
        self.end: sc.Done | None = None
        self.aborted: bytes | None = None
        self.opened = False  # a handle in the arguments names it (its elements may come first)


#: Bytes in each chunk of a chunked value, and chunks on their way at once (§8.6).
CHUNK = 4 << 20
CHUNK_WINDOW = 4

#: Pieces of a long result list (§8.6 "Pieces"): values in the first, bytes the others
#: aim at, values in any.
PIECE_FIRST = 1_024
PIECE_BYTES = 4 << 20
PIECE_MAX = 65_536

#: Encodes one element: (notices, the element's slices entries, the body's parts).
Encode = Callable[[Any], tuple[list[Any], list[Any], list[Any]]]
#: Encodes one piece (its values, the index of the first in the whole list, the whole
#: list's length): the same, and the piece's size in bytes.
EncodePiece = Callable[[list[Any], int, int], tuple[list[Any], list[Any], list[Any], int]]


class CallStreams:
    """The streams of call ``call_id``. ``decode_value(term, slices)`` turns an argument
    stream's element into its Python value (as an argument's is)."""

    def __init__(self, call_id: int, link: Link, decode_value: Callable[[Any, Any], Any]) -> None:
        self.call_id = call_id
        self.link = link
        self.decode_value = decode_value
        self.feeds: dict[int, _Feed] = {}
        #: The slices entries of the argument elements taken (their values' leases).
        self.taken_slices: list[Any] = []
        #: Streams of a chunked result value's bytes: the last seq acknowledged.
        self.chunked: dict[int, int] = {}
        self.sent = 0
        self.acked = 0
        self.window = 0
        self.cancelled = False

    # ---- argument streams ------------------------------------------------------------

    def feed(self, sid: int) -> Stream:
        """The iterator of argument stream ``sid`` (one per handle)."""
        feed = self.feeds.setdefault(sid, _Feed())
        if sid == 0 or feed.opened:
            raise StreamError("stream_broken", f"argument stream {sid} is named twice or is 0")
        feed.opened = True
        return Stream(sid, self.take)

    def take(self, sid: int) -> Any:
        """The next element of argument stream ``sid`` (StopIteration at its end)."""
        feed = self.feeds[sid]
        while True:
            if self.cancelled:
                raise Cancelled
            if feed.queue:
                return self._taken(sid, feed, *feed.queue.popleft())
            if feed.aborted is not None:
                text = feed.aborted.decode("utf-8", "replace")
                raise StreamError("stream_aborted", f"the Elixir side of stream {sid}: {text}")
            if feed.end is not None:
                end = feed.end
                if (end.count, end.checksum) != (feed.taken, feed.chain):
                    raise StreamError(
                        "stream_broken",
                        f"stream {sid} ended after {end.count} elements (checksum "
                        f"{end.checksum:#x}); {feed.taken} arrived (checksum {feed.chain:#x})",
                    )
                raise StopIteration
            self.link.pump(True)

    def _taken(self, sid: int, feed: _Feed, element: sc.Element, body: memoryview) -> Any:
        seq = feed.taken + 1
        feed.chain = sc.chain(feed.chain, seq, sc.body_digest(body))
        feed.taken = seq
        self.taken_slices.extend(element.slices or [])
        try:
            value = self.decode_value(decode(body), element.slices)
        finally:
            del body
            self.link.send(sc.ack(self.call_id, sid, seq))
            self.link.send_pending()
        return value

    def drop_queued(self, let_go: Callable[[Any], None]) -> None:
        """The call is over: the slices of elements that came and were never taken (a
        handler that stopped early, or was cancelled) are let go."""
        for feed in self.feeds.values():
            while feed.queue:
                element, _ = feed.queue.popleft()
                let_go(element.slices)

    # ---- messages from the BEAM --------------------------------------------------------

    def on_message(self, message: sc.StreamMessage, body: memoryview | None) -> str | None:
        """Take a stream message of this call; returns what is wrong with it (a
        protocol violation), or None."""
        sid = message.sid
        if sid in self.chunked and isinstance(message, sc.Ack):
            self.chunked[sid] = max(self.chunked[sid], message.seq)
            return None
        if sid == 0:
            if isinstance(message, sc.Ack):
                if message.seq > self.sent:
                    return f"an ack of element {message.seq}; {self.sent} were sent"
                self.acked = max(self.acked, message.seq)
                return None
            if isinstance(message, sc.Cancel):
                self.cancelled = True
                return None
            return f"{type(message).__name__.lower()} of the result stream from the BEAM"
        if isinstance(message, sc.Ack):
            return f"an ack of stream {sid}, which the worker does not send"
        # the BEAM feeds every argument stream from the start: elements of one the
        # arguments have not been read up to yet wait for it
        feed = self.feeds.setdefault(sid, _Feed())
        if feed.end is not None or feed.aborted is not None:
            if isinstance(message, sc.Abort):
                return None  # the BEAM's abort (its caller exited) crossed the end
            return f"a message of argument stream {sid} after its end"
        if isinstance(message, sc.Element):
            expected = feed.taken + len(feed.queue) + 1
            if message.seq != expected or body is None:
                return f"element {message.seq} of argument stream {sid}; {expected} was due"
            feed.queue.append((message, body))
        elif isinstance(message, sc.Done):
            feed.end = message
        elif isinstance(message, sc.Abort):
            feed.aborted = message.message
        else:
            return f"{type(message).__name__.lower()} of an argument stream from the BEAM"
        return None

    # ---- chunked values ----------------------------------------------------------------

    def send_chunked(self, sid: int, view: memoryview, encode: Encode) -> None:
        """Send the bytes of ``view`` as the chunks of stream ``sid`` (a chunked
        result value, §8.6), at most `CHUNK_WINDOW` ahead of the BEAM's acks, then the
        stream's end."""
        self.chunked[sid] = 0
        seq = checksum = 0
        for at in range(0, view.nbytes, CHUNK):
            self._await_window(sid, seq)
            seq += 1
            checksum = self._send_part(sid, seq, checksum, *encode(view[at : at + CHUNK]))
        self.link.send(sc.done(self.call_id, sid, seq, checksum))

    def send_pieces(self, sid: int, values: list[Any], encode: EncodePiece) -> None:
        """Send ``values`` (a long list of typed-schema values of the result) as the
        pieces of stream ``sid`` (§8.6 "Pieces"), at most `CHUNK_WINDOW` ahead of the
        BEAM's acks, so the caller reads a piece while the next is written; then the
        stream's end. The first piece holds `PIECE_FIRST` values, each next one as many
        as the last one's size says fill about `PIECE_BYTES` (at most `PIECE_MAX`).
        ``encode(piece, first, count)`` gives the piece's message parts and its size in
        bytes."""
        self.chunked[sid] = 0
        seq = checksum = at = 0
        n = PIECE_FIRST
        while at < len(values):
            self._await_window(sid, seq)
            piece = values[at : at + n]
            *message, size = encode(piece, at, len(values))
            at += len(piece)
            del piece
            seq += 1
            checksum = self._send_part(sid, seq, checksum, *message)
            del message
            n = max(1, min(PIECE_MAX, PIECE_BYTES * n // max(size, 1)))
        self.link.send(sc.done(self.call_id, sid, seq, checksum))

    def _await_window(self, sid: int, seq: int) -> None:
        while seq - self.chunked[sid] >= CHUNK_WINDOW:
            self.link.pump(True)

    def _send_part(
        self, sid: int, seq: int, checksum: int, notices: list[Any], entries: Any, parts: list[Any]
    ) -> int:
        """Element ``seq`` of chunked stream ``sid``; returns the chain with it."""
        checksum = sc.chain(checksum, seq, sc.body_digest(parts))
        messages: list[tuple[Any, Any]] = [(n, None) for n in notices]
        messages.append((sc.element(self.call_id, sid, seq, None, entries), parts))
        self.link.send_frames(messages)
        return checksum

    # ---- the result stream -----------------------------------------------------------

    def produce(self, source: Producer, spec: StreamSpec, encode: Encode) -> tuple[int, int]:
        """Send the elements of ``source`` (what the handler returned) as the result
        stream; returns ``(count, checksum)`` for ``{:done, ...}``. Raises what the
        iterator or ``encode`` raised, after closing the iterator."""
        self.window = spec.window
        self.sent = self.acked = seq = spec.seq
        checksum, skip = spec.checksum, spec.skip
        failed = True
        try:
            while True:
                while seq - self.acked >= self.window and not self.cancelled:
                    self.link.pump(True)
                if self.cancelled:
                    break
                try:
                    item = source.next()
                except (StopIteration, Cancelled):
                    break
                if skip:
                    skip -= 1
                    continue
                token = None
                if type(item) is Checkpoint:
                    item, token = item.value, item.token
                notices, entries, parts = encode(item)
                del item
                seq += 1
                checksum = sc.chain(checksum, seq, sc.body_digest(parts))
                messages: list[tuple[Any, Any]] = [(n, None) for n in notices]
                messages.append((sc.element(self.call_id, 0, seq, token, entries), parts))
                self.link.send_frames(messages)
                del messages
                del parts
                self.sent = seq
                while self.link.pump(False):  # acks that came meanwhile, without waiting
                    pass
            failed = False
        finally:
            try:
                source.close()
            except BaseException:
                if not failed:
                    raise
        return seq, checksum


def spec_of(opts: dict[Any, Any], text: Callable[[bytes], Any]) -> StreamSpec | None:
    """The ``"stream"`` option of a call's ``opts`` (None when it has none);
    `BridgeError` ``bad_term`` when it is malformed. ``text`` converts the checkpoint
    token as the call's strings option says."""
    raw = opts.get(b"stream")
    if raw is None:
        return None
    if type(raw) is not dict:
        raise _bad(raw)
    fields = {k.decode("latin-1") if type(k) is bytes else k: v for k, v in raw.items()}
    window = fields.get("window")
    if type(window) is not int or not 1 <= window <= sc.MAX_WINDOW:
        raise _bad(raw, f"window is 1 to {sc.MAX_WINDOW}")
    seq, checksum, skip = (fields.get(k, 0) for k in ("seq", "checksum", "skip"))
    if not all(type(n) is int and 0 <= n < 2**64 for n in (seq, checksum, skip)):
        raise _bad(raw, "seq, checksum and skip are non-negative integers")
    point = fields.get("checkpoint")
    if point is not None and type(point) is not bytes:
        raise _bad(raw, "checkpoint is a binary or nil")
    resume = "checkpoint" in fields
    token = text(point) if point is not None else None
    return StreamSpec(window, seq, checksum, skip, resume, token)


def _bad(raw: Any, rule: str = "a map") -> BridgeError:
    return BridgeError(
        "bad_term", "stream", None, None, f"call option stream is {raw!r:.100}: {rule}"
    )
