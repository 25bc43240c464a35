"""The call path of a worker (protocol/SPEC.md §8): one ``{:call, ...}`` from its
envelope and body to its answer, and the shared objects calls use.

`CallPath` maps the objects the BEAM announces (its arenas, its lease table), decodes a
call's arguments (`beambridge.decoder.Decoder`), runs the handler, encodes the result
(`beambridge.encoder.ResultEncoder` into `beambridge.result_slices.ResultSlices`) and
builds the answer: ``{:ok, id, slices, released}`` with the result as its body, or
``{:error, id, error, released}``. The worker process around it (`beambridge.worker`)
reads and writes the frames.

>>> from beambridge.etf import encode
>>> path = CallPath(threshold=1 << 20)
>>> reply = path.run(control.Call(1, b"operator", b"add", {}, [], True), memoryview(
...     encode([2, 3])))
>>> reply.envelope, decode(b"".join(reply.body))
((Atom('ok'), 1, [], []), 5)
>>> path.close()
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable
from functools import partial
from time import perf_counter_ns
from typing import Any

from . import control, control_shortcuts
from .call_parts import (
    BadCall,
    Refused,
    Reply,
    codec_option,
    exception_detail,
    flush_handler_output,
    meta_option,
    policy_option,
    same,
    session_option,
    strings_option,
    text,
    token_str,
    too_large,
)
from .call_record import CallRecord
from .callbacks import Callbacks
from .cancel import CallCancelled, Canceller
from .decoder import Decoder
from .encoder import ResultEncoder
from .encoder_formats import Pieces
from .errors import BridgeError, EtfError
from .etf import decode, encode_parts
from .handlers import Handlers
from .kept import RefStore
from .leases import Key, LeaseBook, PeerObjects
from .objects import PeerObject
from .result_slices import ResultSlices, WorkerArenas
from .stream_control import done
from .stream_run import CallStreams, Link, StreamSpec, spec_of
from .streams import Stream, StreamError, producer
from .strings import to_str
from .terms import DEFAULT_THRESHOLD, TAG_PIECE

# what the worker's timings add to an answer's envelope at most (`Reply.timed`):
_TIMINGS_ROOM = 40  # h\x03 and three integers of at most 11 bytes each

__all__ = ["CallPath", "Reply"]

_MIB = 1 << 20
#: A result body smaller than this is joined into one bytes object before it is sent.
_JOIN_BELOW = 1 << 16


#: Objects made since the collector last ran past which a call's arguments are set aside.
_MANY_NEW_OBJECTS = 100_000


def _set_aside_new_objects() -> bool:
    """Keeps the cyclic collector off a call's arguments while it runs, when decoding
    them (with the collector off) made many objects (a batch of a million schema values
    makes two million or more, `beambridge.ssz_batch`): else the next collections of each
    generation walk them all, one after another (half a second a million), for values
    that hold no cycles and are freed by their reference counts when the call's answer
    is written. Every tracked object goes to the permanent generation (`gc.freeze`)
    until then (`CallPath.after_answer`); objects made meanwhile are collected as ever.
    Nothing is done when the application froze objects itself."""
    if gc.get_freeze_count() or gc.get_count()[0] < _MANY_NEW_OBJECTS:
        return False
    gc.freeze()
    return True


class CallPath:
    """Everything one worker's calls need: the BEAM's objects and the leases on them,
    the worker's own result slices, the handler lookup.

    ``threshold``: payloads of at least this many bytes travel in slices;
    ``arena_limit``, ``min_arena``: the bounds of the worker's arenas (§3);
    ``verify``: checksum result payloads and verify argument payloads; ``untrusted``:
    every result slice is a sealed object of its own (§11); ``report_fallbacks``: send
    ``{:fallbacks, ...}`` before answers (a BEAM of protocol 2.1 or later).
    """

    def __init__(
        self,
        *,
        threshold: int = DEFAULT_THRESHOLD,
        arena_limit: int = 1 << 30,
        min_arena: int = 8 * _MIB,
        verify: bool = False,
        untrusted: bool = False,
        report_fallbacks: bool = True,
    ) -> None:
        self.peers = PeerObjects()
        self.leases = LeaseBook()
        self.decoder = Decoder(self.peers, self.leases, verify=verify)
        self.arenas = (
            None
            if untrusted
            else WorkerArenas(limit=arena_limit, min_arena=min_arena, checksum=verify)
        )
        self.slices = ResultSlices(
            self.arenas,
            limit=arena_limit,
            sealed=untrusted,
            leases=self.leases,
            checksum=verify,
            report_fallbacks=report_fallbacks,
        )
        self.encoder = ResultEncoder(self.slices, threshold)
        self.lease_table: PeerObject | None = None
        self.handlers = Handlers()
        #: Cancelling the call in flight (§8.7): the worker installs its signal handler.
        self.cancel = Canceller()
        #: Callbacks into Elixir from the call in flight (§8.8).
        self.callbacks = Callbacks(self)
        #: Objects kept for sessions (§8.9).
        self.refs = RefStore()
        #: The worker, for streams (§8.6); without it a stream call is refused.
        self.link: Link | None = None
        #: The streams of the call in flight, made when it first needs one.
        self.streams: CallStreams | None = None
        self._call_id = 0
        #: The last call's arguments, freed once its answer is written.
        self._spent: list[Any] | None = None
        #: Whether the objects of the call in flight are set aside from the collector.
        self._frozen = False
        self.text = False
        #: Whether a long result list may go as pieces (§8.6): the BEAM reads them.
        self.pieces = False
        #: Whether answers carry the worker's timings (§8.3): the BEAM reads them (2.5).
        self.timings = False
        self._prepared = self._ran = 0
        self.decoder.streams = self._feed
        #: The provenance of the call in flight's frames (SPEC §5.4).
        self.record = CallRecord("python")
        self.decoder.on_frame = self.record.input
        self.slices.provenance = self.record.block

    # ---- objects -----------------------------------------------------------------------

    def map_object(self, message: control.ObjectAnnouncement) -> None:
        """Map an object the BEAM announced (§2): an arena, or its lease table.
        `ArenaError` when it cannot be (a slice naming the arena then gets that error)."""
        if message.kind == "lease_table":
            table = PeerObject.open(*message.args())
            if self.lease_table is not None:
                self.lease_table.close()
            self.lease_table = table
            if self.arenas is not None:
                self.arenas.set_lease_table(table)
        else:
            self.peers.open(*message.args())

    def drop_object(self, object_id: int) -> None:
        self.peers.drop(object_id)

    def sealed_mapped(self, object_ids: list[int]) -> None:
        self.slices.sealed_mapped(object_ids)

    def let_go(self, slices: Any) -> None:
        """Let go the BEAM slices of a frame no value will be read from."""
        with contextlib.suppress(BridgeError):
            self.decoder.decode([], slices)

    def take_released(self) -> list[Key]:
        """The BEAM slices let go since the last answer or ``released`` message."""
        return self.leases.take_released()

    def take_notices(self) -> list[Any]:
        """Arenas made or dropped since the last call, as messages."""
        return self.slices.take_notices()

    def idle(self, trim_after: float) -> None:
        """Take back the slices whose leases ended; drop arenas empty for at least
        ``trim_after`` seconds, keeping one of ``min_arena`` warm."""
        if self.arenas is not None:
            self.arenas.reclaim()
            self.arenas.trim(trim_after, self.arenas.min_arena)

    def close(self) -> None:
        self.slices.close()
        self.peers.close()
        if self.lease_table is not None:
            self.lease_table.close()

    # ---- one call ----------------------------------------------------------------------

    def run(self, call: control.Call, body: memoryview | None) -> Reply:
        """Run ``call`` and build its answer."""
        self._call_id = call.call_id
        self.cancel.begin(call.call_id)
        start = self._prepared = self._ran = perf_counter_ns()
        try:
            reply = self._run(call, body)
        finally:
            self.cancel.end()
            if self.streams is not None:
                self.streams.drop_queued(self.let_go)
            self.streams = None
            self.record.end()
        if self.timings:
            end = perf_counter_ns()
            ran = max(self._ran, self._prepared)
            reply.timed(
                (self._prepared - start) // 1000,
                (ran - self._prepared) // 1000,
                (end - ran) // 1000,
            )
        return reply

    def _run(self, call: control.Call, body: memoryview | None) -> Reply:
        collecting = gc.isenabled()
        gc.disable()  # see _set_aside_new_objects
        try:
            prepared = self._prepare(call, body)
        finally:
            self._frozen = collecting and _set_aside_new_objects()
            if collecting:
                gc.enable()
        self._prepared = perf_counter_ns()
        if isinstance(prepared, BadCall):
            return self._bad_call(call.call_id, prepared)
        fn, args, policy, spec = prepared
        del prepared  # `args` alone holds the argument values now
        self.encoder.policy = policy  # the result's, and callbacks' arguments' (§8.8)
        failure: Any = None
        if spec is not None and spec.resume:
            fn = partial(fn, checkpoint=spec.checkpoint)
        try:
            result = self.cancel.run(fn, args)
        except (Exception, CallCancelled) as exc:
            failure = exception_detail(exc)
        self._ran = perf_counter_ns()
        taken = [] if self.streams is None else self.streams.taken_slices
        if (spec is None or self.streams is None) and not self._leased(
            [*(call.slices or []), *taken]
        ):
            # values of their own (no view of a BEAM slice): freeing a large batch of
            # them (one that came in pieces, §8.6) waits until the answer is written
            # (after_answer)
            self._spent = args
        del args  # the worker's references to argument views end here (leases, §4)
        flush_handler_output()
        if failure is not None:
            return Reply([], control.error(call.call_id, failure, self.take_released()), None)
        if spec is not None:
            return self._stream(call.call_id, result, spec, policy)
        return self._answer(call.call_id, result, policy)

    def _prepare(
        self, call: control.Call, body: memoryview | None
    ) -> tuple[Callable[..., Any], list[Any], str, StreamSpec | None] | BadCall:
        """The handler, its arguments, the result's policy and stream option, or what
        is wrong. Every slice of the call is let go unless an argument holds it."""
        problem: BadCall | None = None
        text = False
        spec: StreamSpec | None = None
        try:
            self._session(session_option(call.opts))
            policy = policy_option(call.opts)
            self.slices.codec = codec_option(call.opts)
            self.record.begin(call.module, call.function, meta_option(call.opts))
            text = self.text = strings_option(call.opts)
            try:
                spec = spec_of(call.opts, token_str if text else same)
            except BridgeError as err:
                raise Refused(err.reason, err.message) from None
            if spec is not None and self.link is None:
                raise Refused("not_a_stream", "this worker runs no streams (no link)")
            fn = self.handlers.lookup(call.module, call.function)
            if body is None:
                raise Refused("bad_term", "a call frame without an argument list")
            try:
                terms = decode(body)
            except EtfError as err:
                raise Refused("bad_term", f"the call's arguments: {err}") from None
            if type(terms) is not list:
                raise Refused("bad_term", f"args must be a list, got {terms!r:.200}")
        except Refused as refused:
            problem = BadCall(refused.reason, refused.message)
        if problem is not None:
            self.let_go(call.slices)  # no handle will name them
            return problem
        try:
            args = self.decoder.decode(terms, call.slices)
        except BridgeError as err:
            problem = BadCall(err.reason, f"argument: {err}")
        except Exception as err:
            problem = BadCall("badarg", f"argument: {type(err).__name__}: {err}")
        if problem is None and text:
            try:
                args = to_str(args)
            except BridgeError as err:
                problem = BadCall(err.reason, err.message.removeprefix(f"{err.reason}: "))
        return (fn, args, policy, spec) if problem is None else problem

    def _session(self, session: int | None) -> None:
        """The call's session (§8.9): results may keep objects for it, arguments name
        them; outside one, neither."""
        self.encoder.keep, self.decoder.refs = self.refs.hooks(session)

    # ---- streams (§8.6) ----------------------------------------------------------------

    def _streams(self) -> CallStreams:
        if self.streams is None:
            assert self.link is not None
            self.streams = CallStreams(self._call_id, self.link, self._element_value)
        return self.streams

    def _feed(self, sid: int) -> Stream:
        """The iterator of argument stream ``sid`` of the call in flight."""
        if self.link is None:
            raise EtfError("bad_term", "stream", sid, None, "bad_term: no streams here")
        return self._streams().feed(sid)

    def _element_value(self, term: Any, slices: Any) -> Any:
        with self.cancel.shielded():  # leases are taken here (§8.7)
            value = self.decoder.decode(term, slices)
        return to_str([value])[0] if self.text else value

    def read_value(self, term: Any, slices: Any) -> Any:
        """A term the BEAM sent while the call runs (a callback's result), read as the
        call's arguments are."""
        return self._element_value(term, slices)

    def encode_value(self, value: Any) -> tuple[list[Any], int] | BadCall:
        """A value the handler sends while the call runs (a callback's arguments),
        written as a result is (see `_encode`)."""
        return self._encode(value)

    def _stream(self, call_id: int, result: Any, spec: StreamSpec, policy: str) -> Reply:
        """Send ``result`` (a stream handler's return value) as the result stream, and
        build the answer that ends it: ``{:done, id, 0, count, checksum}``, or the
        error that ended it (after the elements sent)."""
        try:
            source = producer(result, self.cancel)
        except StreamError as err:
            return self._bad_call(call_id, BadCall(err.reason, err.message))
        del result
        self.encoder.policy = policy
        checksum, self.slices.checksum = self.slices.checksum, True  # every element's payload
        failure: Any = None
        try:
            count, digest = self._streams().produce(source, spec, self._element)
        except _ElementRefused as refused:
            failure = control.bad_call(refused.bad.reason, text(refused.bad.message))
        except (Exception, CallCancelled) as exc:
            failure = exception_detail(exc)
        finally:
            self.slices.checksum = checksum
            del source
        flush_handler_output()
        self.slices.unpin()
        if failure is not None:
            return Reply(
                self.take_notices(), control.error(call_id, failure, self.take_released()), None
            )
        notices = self.take_notices()
        released = self.take_released()
        if released:
            notices.append(control.released(released))
        return Reply(notices, done(call_id, 0, count, digest), None)

    def _element(self, value: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """One element of a result stream: (notices, slices entries, body parts)."""
        self.slices.unpin()  # the last element is written
        return self._chunk(value)

    def _chunk(self, value: Any) -> tuple[list[Any], list[Any], list[Any]]:
        """One element of a stream the worker sends: (notices, slices entries, body
        parts)."""
        encoded = self._encode(value)
        if isinstance(encoded, BadCall):
            raise _ElementRefused(encoded)
        parts, body_size = encoded
        if body_size + 1024 > control.MAX_CONTROL_FRAME:
            fallbacks = self.slices.fallbacks
            self.slices.cancel()
            reason = fallbacks[-1] if fallbacks else "bad_term"
            raise _ElementRefused(BadCall(reason, too_large(body_size, self.slices)))
        entries = self.slices.entries
        return self.take_notices() + self.slices.commit(), entries, parts

    def _answer(self, call_id: int, result: Any, policy: str) -> Reply:
        self.encoder.policy = policy
        chunked: list[memoryview | Pieces] = []
        if self.link is not None:
            self.encoder.chunked = _collector(chunked)
            if self.pieces:
                self.encoder.pieces = _collector(chunked)
        try:
            encoded = self._encode(result)
        finally:
            self.encoder.chunked = self.encoder.pieces = None
        del result
        if isinstance(encoded, BadCall):
            return self._bad_call(call_id, encoded)
        parts, body_size = encoded
        if chunked:
            return self._chunked_answer(call_id, parts, chunked)
        released = self.take_released()
        entries = self.slices.entries
        head = control_shortcuts.answer_head(call_id, entries, released)
        size = 4 + len(head) + body_size + (_TIMINGS_ROOM if self.timings else 0)
        if size > control.MAX_CONTROL_FRAME:
            del parts
            fallbacks = self.slices.fallbacks
            reason = fallbacks[-1] if fallbacks else "bad_term"
            self.slices.cancel()
            detail = control.bad_call(reason, text(too_large(size, self.slices)))
            return Reply([], control.error(call_id, detail, released), None)
        notices = self.take_notices() + self.slices.commit()
        return Reply(notices, control.ok(call_id, entries, released), parts, head)

    def _chunked_answer(
        self, call_id: int, parts: list[Any], chunked: list[memoryview | Pieces]
    ) -> Reply:
        """The answer to a call whose result holds binaries or long lists sent as
        streams of chunks or pieces (§8.6): they go first, the answer's own slices set
        aside meanwhile, then the answer; or, when a piece cannot be sent, its error
        (the answer's slices taken back)."""
        answer = self.slices.suspend()
        streams = self._streams()
        try:
            for sid, item in enumerate(chunked, 1):
                if isinstance(item, Pieces):
                    streams.send_pieces(sid, item.values, self._piece)
                else:
                    streams.send_chunked(sid, item, self._chunk)
        except _ElementRefused as refused:
            self.slices.resume(answer)
            self.slices.cancel()
            return self._bad_call(call_id, refused.bad)
        finally:
            chunked.clear()
        self.slices.resume(answer)
        entries = self.slices.entries
        notices = self.take_notices() + self.slices.commit()
        released = self.take_released()
        head = control_shortcuts.answer_head(call_id, entries, released)
        return Reply(notices, control.ok(call_id, entries, released), parts, head)

    def _piece(
        self, values: list[Any], first: int, count: int
    ) -> tuple[list[Any], Any, list[Any], int]:
        """A piece of a long result list of ``count`` values, ``{:"$bb_piece", count,
        values}``: `_chunk`'s parts, and its size."""
        self.encoder.list_first = first
        try:
            return (*self._chunk((TAG_PIECE, count, values)), self.encoder.list_bytes)
        finally:
            self.encoder.list_first = 0

    def _encode(self, result: Any) -> tuple[list[Any], int] | BadCall:
        """The parts of ``result``'s ETF and their size, its values placed in slices
        (`ResultSlices`, committed or cancelled by the caller), or what is wrong."""
        self.slices.begin()
        problem: BadCall | None = None
        try:
            parts = encode_parts(result, self.encoder)
        except Exception as exc:  # TypeError, ValueError, ArenaError, a library's own
            # format_unsuitable, unsupported_dtype, a slice reason go as themselves
            reason = exc.reason if isinstance(exc, BridgeError) else "bad_term"
            kind = (
                ""
                if isinstance(exc, (TypeError, ValueError, BridgeError))
                else (f"{type(exc).__name__}: ")
            )
            what = str(exc).removeprefix(f"{reason}: ")  # the reason is said once
            problem = BadCall(reason, f"the result: {kind}{what}")
        del result
        if problem is not None:
            self.slices.cancel()
            return problem
        body_size = sum(map(len, parts))
        if body_size < _JOIN_BELOW:
            # one copy now, so argument views the parts point into are gone before the
            # released list is made: the answer itself reports them
            parts = [b"".join(parts)]
        return parts, body_size

    def _bad_call(self, call_id: int, bad: BadCall) -> Reply:
        detail = control.bad_call(bad.reason, text(bad.message))
        return Reply(
            self.take_notices(), control.error(call_id, detail, self.take_released()), None
        )

    def after_answer(self) -> None:
        """The answer is written: BEAM slices it echoed may be let go now, and the
        arguments that held none are freed."""
        self.slices.unpin()
        self._spent = None
        if self._frozen:
            self._frozen = False
            gc.unfreeze()

    def _leased(self, slices: Any) -> bool:
        """Whether a value read from one of a call's ``slices`` is still alive."""
        refs, _ = control.slice_refs(slices or [])
        self.leases.settle()  # frames read and dropped while decoding: no longer in use
        return any((o, off, g) in self.leases for o, off, _, g in refs)


def _collector(items: list[Any]) -> Callable[[Any], int]:
    """Collects the binaries and long lists of a result that go as streams of chunks
    or pieces; each one's stream id is its place in ``items``, from 1."""

    def take(item: Any) -> int:
        items.append(item)
        return len(items)

    return take


class _ElementRefused(Exception):
    """Raised by `CallPath._element` only: an element that cannot be sent."""

    def __init__(self, bad: BadCall) -> None:
        super().__init__(bad.message)
        self.bad = bad
