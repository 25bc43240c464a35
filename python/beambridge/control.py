"""The control channel, version 2 (protocol/SPEC.md §8): frames, message atoms,
and a function that builds and one that checks each message.

A frame (the bytes of one ``{packet, 4}`` packet) is ``envelope_size`` (u32
big-endian), the *envelope* (an ETF term saying what the frame is) and, for the
messages that carry data, the *body* (an ETF term: a call's argument list, a result).
`join` makes the parts of a frame, `split` takes one apart. `from_beam` and
`from_worker` check an envelope and return the message it is, as one of the
dataclasses below; anything else is a `ProtocolError` (the BEAM kills a worker that
sends one, ``:bad_frame``; a worker exits with status 3).

>>> parts = join(ok(7, [worker_slice(3, 64, 128, 9, 0)], []), [b"\\x83a\\x01"])
>>> envelope, body = split(b"".join(parts))
>>> answer = from_worker(envelope, body is not None)
>>> answer.call_id, answer.ok, answer.slices, answer.timings
(7, True, [(Atom('worker'), 3, 64, 128, 9, 0)], None)
>>> bytes(body)
b'\\x83a\\x01'
>>> from_beam((Atom("object_dropped"), 4), False)
ObjectDropped(object_id=4)
>>> from_beam((Atom("object_dropped"), -4), False)
Traceback (most recent call last):
...
beambridge.control.ProtocolError: bad_term: not a message of protocol/SPEC.md §8.3: ...
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import registry
from .callback_control import CallbackMessage
from .callback_control import parse as parse_callback
from .errors import BridgeError, EtfError
from .etf import Atom, decode, encode
from .stream_control import Abort, Cancel, StreamMessage
from .stream_control import parse as parse_stream

__all__ = [
    "KNOWN_REASONS",
    "MAX_CONTROL_FRAME",
    "PROTOCOL_VERSION",
    "SHUTDOWN",
    "Answer",
    "BeamMessage",
    "Call",
    "Fallbacks",
    "LaneRing",
    "Log",
    "ObjectAnnouncement",
    "ObjectDropped",
    "OtherMajor",
    "ProtocolError",
    "Ready",
    "Released",
    "SealedMapped",
    "Shutdown",
    "WorkerMessage",
    "bad_call",
    "beam_slice",
    "call",
    "error",
    "fallbacks",
    "from_beam",
    "from_worker",
    "join",
    "join_encoded",
    "lane_ring",
    "log",
    "object_announcement",
    "object_dropped",
    "ok",
    "python_exception",
    "ready",
    "released",
    "released_entries",
    "sealed_mapped",
    "sealed_slice",
    "slice_refs",
    "split",
    "worker_slice",
]

#: Largest frame either side accepts (§8.1); a longer one ends the worker (status 3).
MAX_CONTROL_FRAME = 64 * 1024 * 1024
#: The version the worker announces in ``{:ready, os_pid, version}``.
PROTOCOL_VERSION = (2, 8)


class OtherMajor(Exception):
    """The BEAM speaks another major version of the protocol (§8.4): the two cannot
    work together (other minors can: each side sends nothing newer than the other's)."""

    def __init__(self, beam: tuple[int, int]) -> None:
        ours = ".".join(map(str, PROTOCOL_VERSION))
        super().__init__(
            f"the BEAM speaks protocol {beam[0]}.{beam[1]} and this worker speaks {ours}: "
            "different majors do not work together; install the same beambridge release "
            "for Python and for Elixir"
        )


A_OBJECT, A_OBJECT_DROPPED, A_CALL = Atom("object"), Atom("object_dropped"), Atom("call")
A_SEALED_MAPPED, A_SHUTDOWN = Atom("sealed_mapped"), Atom("shutdown")
A_READY, A_OK, A_ERROR, A_RELEASED = Atom("ready"), Atom("ok"), Atom("error"), Atom("released")
A_LOG, A_STDOUT, A_STDERR = Atom("log"), Atom("stdout"), Atom("stderr")
A_FALLBACKS, A_LANE = Atom("fallbacks"), Atom("lane")
A_PYTHON_EXCEPTION, A_BAD_CALL = Atom("python_exception"), Atom("bad_call")
#: Object kinds (§1.1) and the owners of answer slices (§8.3).
A_ARENA, A_SEALED, A_LEASE_TABLE = Atom("arena"), Atom("sealed"), Atom("lease_table")
A_WORKER, A_BEAM = Atom("worker"), Atom("beam")
SHUTDOWN = A_SHUTDOWN

#: Reasons a ``bad_call`` may carry: the registry's wire reasons, atoms the BEAM is sure
#: to know (SPEC §3, §6, §8.3, §9). Anything else (an errno name) goes as
#: ``badarg``, named in the message.
KNOWN_REASONS: frozenset[str] = registry.WIRE_REASONS

_U32 = 2**32
_U64 = 2**64


class ProtocolError(BridgeError, ValueError):
    """A frame that is not a message of §8.3: its size fields run past it, its envelope
    does not decode or is no message the receiver knows. ``reason`` ``bad_term``; the
    channel cannot go on (the BEAM's ``:bad_frame``, the worker's exit status 3)."""


def _violation(what: str, term: Any = None) -> ProtocolError:
    shown = "" if term is None else f": {term!r:.200}"
    return ProtocolError("bad_term", "envelope", None, None, f"bad_term: {what}{shown}")


# ---- frames -----------------------------------------------------------------------------


def join(envelope: Any, body: list[Any] | None = None) -> list[Any]:
    """The parts of a frame (bytes-like, to be written in order): ``envelope_size``,
    the envelope's ETF, then ``body``, the parts of the body's ETF (`encode_parts`),
    when the message has one."""
    return join_encoded(encode(envelope), body)


def join_encoded(head: bytes, body: list[Any] | None = None) -> list[Any]:
    """`join` for an envelope already encoded (``head``, its ETF)."""
    return [len(head).to_bytes(4, "big"), head, *(body or ())]


def split(frame: bytes | bytearray | memoryview) -> tuple[Any, memoryview | None]:
    """``(envelope term, body bytes or None)`` of one frame; `ProtocolError` when the
    size field runs past the frame or the envelope does not decode (§8.1)."""
    view = memoryview(frame)
    if view.nbytes < 4:
        raise _violation(f"a frame of {view.nbytes} bytes has no envelope_size")
    size = int.from_bytes(view[:4], "big")
    if 4 + size > view.nbytes:
        raise _violation(f"envelope_size {size} runs past the frame of {view.nbytes} bytes")
    try:
        envelope = decode(view[4 : 4 + size], max_depth=8)
    except EtfError as err:
        raise _violation(f"the envelope does not decode ({err})") from None
    body = view[4 + size :]
    return envelope, (body if body.nbytes else None)


# ---- BEAM -> worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectAnnouncement:
    """``{:object, kind, owner_pid, fd, object_id, size, nonce}`` (§2, §8.3): ``kind``
    ``"arena"``, ``"lease_table"`` (from the BEAM) or ``"arena"``, ``"sealed"`` (from
    a worker). `args` is what `beambridge.objects.PeerObject.open` takes."""

    kind: str
    owner_pid: int
    fd: int
    object_id: int
    size: int
    nonce: int

    def args(self) -> tuple[str, int, int, int, int, int]:
        return (self.kind, self.owner_pid, self.fd, self.object_id, self.size, self.nonce)


@dataclass(frozen=True)
class ObjectDropped:
    """``{:object_dropped, object_id}``: the sender dropped this arena."""

    object_id: int


@dataclass(slots=True)
class Call:
    """``{:call, id, module, function, opts, slices}`` + the argument list. ``id`` is
    checked here; ``module``, ``function``, ``opts`` and ``slices`` are checked by the
    worker, which answers a wrong one with a ``bad_call`` (`slice_refs`)."""

    call_id: int
    module: Any
    function: Any
    opts: Any
    slices: Any
    has_body: bool


@dataclass(frozen=True)
class SealedMapped:
    """``{:sealed_mapped, [object_id]}``: the BEAM mapped these sealed objects (§11)."""

    object_ids: list[int]


@dataclass(frozen=True)
class Shutdown:
    """``:shutdown``: finish, exit 0."""


@dataclass(frozen=True)
class LaneRing:
    """``:lane``: a batch waits in the lane (§8.5)."""


def object_announcement(
    kind: str, owner_pid: int, fd: int, object_id: int, size: int, nonce: int
) -> tuple[Any, ...]:
    """``{:object, kind, owner_pid, fd, object_id, size, nonce}``."""
    return (A_OBJECT, Atom(kind), owner_pid, fd, object_id, size, nonce)


def object_dropped(object_id: int) -> tuple[Any, ...]:
    return (A_OBJECT_DROPPED, object_id)


def call(
    call_id: int, module: Any, function: Any, opts: dict[Any, Any], slices: list[Any]
) -> tuple[Any, ...]:
    """``{:call, id, module, function, opts, slices}``; ``slices`` entries are
    ``(object_id, offset, length, generation)``."""
    return (A_CALL, call_id, module, function, opts, slices)


def sealed_mapped(object_ids: list[int]) -> tuple[Any, ...]:
    return (A_SEALED_MAPPED, list(object_ids))


def _uint(value: Any, bits: int = 64) -> bool:
    return type(value) is int and 0 <= value < 2**bits


def _announcement(term: tuple[Any, ...], kinds: tuple[str, ...]) -> ObjectAnnouncement:
    sizes = (32, 32, 32, 64, 64)  # owner_pid, fd, object_id, size, nonce
    if (
        len(term) == 7
        and type(term[1]) is Atom
        and term[1] in kinds
        and all(_uint(v, b) for v, b in zip(term[2:], sizes, strict=True))
    ):
        return ObjectAnnouncement(str(term[1]), *term[2:])
    raise _violation("not a message of protocol/SPEC.md §8.3", term)


BeamMessage = (
    ObjectAnnouncement
    | ObjectDropped
    | Call
    | SealedMapped
    | Shutdown
    | LaneRing
    | StreamMessage
    | CallbackMessage
)


def from_beam(envelope: Any, has_body: bool) -> BeamMessage:
    """The BEAM's message of ``envelope`` (`ProtocolError` when it is none of §8.3's
    or §8.6's; only a call and an element have a body)."""
    stream = parse_stream(envelope, has_body)
    if stream is not None:
        return stream
    callback = parse_callback(envelope, has_body)
    if callback is not None:
        return callback
    if envelope == A_SHUTDOWN and not has_body:
        return Shutdown()
    if envelope == A_LANE and not has_body:
        return LaneRing()
    if type(envelope) is tuple and envelope and (not has_body or envelope[0] == A_CALL):
        tag = envelope[0]
        if tag == A_OBJECT:
            return _announcement(envelope, ("arena", "lease_table", "lane"))
        if tag == A_OBJECT_DROPPED and len(envelope) == 2 and _uint(envelope[1], 32):
            return ObjectDropped(envelope[1])
        if tag == A_CALL and len(envelope) == 6 and _uint(envelope[1]) and envelope[1] > 0:
            return Call(envelope[1], *envelope[2:], has_body=has_body)
        ids = envelope[1] if len(envelope) == 2 else None
        if tag == A_SEALED_MAPPED and type(ids) is list and all(_uint(i, 32) for i in ids):
            return SealedMapped(ids)
    raise _violation("not a message of protocol/SPEC.md §8.3", envelope)


def slice_refs(slices: Any) -> tuple[list[tuple[int, int, int, int]], EtfError | None]:
    """A call's ``slices`` checked: its well-formed ``{object_id, offset, length,
    generation}`` entries (non-negative integers), and the error of the call (``bad_term``,
    not of the channel) when the list or an entry is malformed, else None. The
    well-formed entries are returned either way: the BEAM lent them, so they are
    released either way."""
    entries = slices if type(slices) is list else []
    refs = [e for e in entries if type(e) is tuple and len(e) == 4 and all(map(_uint, e))]
    if type(slices) is list and len(refs) == len(entries):
        return refs, None
    return refs, EtfError(
        "bad_term",
        "slices",
        None,
        None,
        f"bad_term: a call's slices are a list of {{object_id, offset, length, generation}} "
        f"of non-negative integers, got {slices!r:.200}",
    )


# ---- worker -> BEAM ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    """``{:ready, os_pid, {major, minor}}``: the worker's first frame."""

    os_pid: int
    version: tuple[int, int]


@dataclass(frozen=True)
class Answer:
    """``{:ok, id, slices, released}`` + the result, or ``{:error, id, error,
    released}``; since 2.5 either may end with the worker's ``timings``, ``{decode,
    run, encode}`` in microseconds. ``slices`` entries: `worker_slice`, `sealed_slice`,
    `beam_slice`."""

    call_id: int
    ok: bool
    slices: list[tuple[Any, ...]]
    error: Any
    released: list[tuple[int, int, int]]
    timings: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Released:
    """``{:released, [{object_id, offset, generation}]}``."""

    entries: list[tuple[int, int, int]]


@dataclass(frozen=True)
class Fallbacks:
    """``{:fallbacks, [{form, reason, count, bytes}]}``: result values at or above the
    threshold that went inline, counted per form and reason (stats names, binaries)."""

    entries: list[tuple[bytes, bytes, int, int]]


@dataclass(frozen=True)
class Log:
    """``{:log, :stdout | :stderr, data}``."""

    stream: str
    data: bytes


def ready(os_pid: int) -> tuple[Any, ...]:
    return (A_READY, os_pid, PROTOCOL_VERSION)


def _timings(term: Any) -> tuple[int, int, int] | None:
    """An answer's ``{decode, run, encode}`` (§8.3), or None when it is not one."""
    if type(term) is tuple and len(term) == 3 and all(_uint(t, 64) for t in term):
        return term
    return None


def ok(call_id: int, slices: list[Any], released: list[Any]) -> tuple[Any, ...]:
    """``{:ok, id, slices, released}`` (the result goes in the body)."""
    return (A_OK, call_id, slices, released)


def error(call_id: int, detail: Any, released: list[Any]) -> tuple[Any, ...]:
    """``{:error, id, error, released}``; ``detail`` from `python_exception` or
    `bad_call`."""
    return (A_ERROR, call_id, detail, released)


def python_exception(type_name: bytes, message: bytes, traceback: bytes) -> tuple[Any, ...]:
    return (A_PYTHON_EXCEPTION, type_name, message, traceback)


def bad_call(reason: str, message: bytes) -> tuple[Any, ...]:
    """``{:bad_call, reason, message}``; a reason outside `KNOWN_REASONS` goes as
    ``badarg`` (the BEAM would refuse an atom it does not know)."""
    return (A_BAD_CALL, Atom(reason if reason in KNOWN_REASONS else "badarg"), message)


def released(entries: list[tuple[int, int, int]]) -> tuple[Any, ...]:
    return (A_RELEASED, entries)


def lane_ring() -> Atom:
    """``:lane``: the answer waits in the lane (§8.5)."""
    return A_LANE


def log(stream: Atom, data: bytes) -> tuple[Any, ...]:
    return (A_LOG, stream, data)


def fallbacks(counts: dict[tuple[str, str], list[int]]) -> tuple[Any, ...]:
    """``{:fallbacks, [{form, reason, count, bytes}]}`` from ``{(form, reason): [count,
    bytes]}`` (`beambridge.stats` names)."""
    return (A_FALLBACKS, [(f.encode(), r.encode(), c, b) for (f, r), (c, b) in counts.items()])


def _fallback_entry(term: Any) -> bool:
    return (
        type(term) is tuple
        and len(term) == 4
        and type(term[0]) is bytes
        and term[0].decode("latin-1") in registry.STATS_FORMS
        and type(term[1]) is bytes
        and term[1].decode("latin-1") in registry.STATS_REASONS
        and _uint(term[2])
        and _uint(term[3])
    )


def worker_slice(
    object_id: int, offset: int, length: int, generation: int, ticket: int
) -> tuple[Any, ...]:
    """``{:worker, object_id, offset, length, generation, ticket}``: a worker slice lent
    under ``ticket`` (§4)."""
    return (A_WORKER, object_id, offset, length, generation, ticket)


def sealed_slice(object_id: int, offset: int, length: int, generation: int) -> tuple[Any, ...]:
    """``{:sealed, object_id, offset, length, generation}``: the frame of a sealed
    object (§11)."""
    return (A_SEALED, object_id, offset, length, generation)


def beam_slice(
    object_id: int, offset: int, generation: int, start: int, length: int
) -> tuple[Any, ...]:
    """``{:beam, object_id, offset, generation, start, length}``: bytes ``[start, start +
    length)`` (from the slice's first byte) of a BEAM slice the worker holds."""
    return (A_BEAM, object_id, offset, generation, start, length)


def _entry(term: Any) -> bool:
    if type(term) is not tuple or not term:
        return False
    sizes = {A_WORKER: 6, A_SEALED: 5, A_BEAM: 6}
    return sizes.get(term[0]) == len(term) and all(_uint(v) for v in term[1:])


def released_entries(term: Any) -> list[tuple[int, int, int]]:
    """A ``released`` list, checked (`ProtocolError` otherwise)."""
    if type(term) is list and all(
        type(e) is tuple and len(e) == 3 and all(_uint(v) for v in e) for e in term
    ):
        return term
    raise _violation("a released list is [{object_id, offset, generation}]", term)


WorkerMessage = (
    Ready
    | ObjectAnnouncement
    | ObjectDropped
    | Answer
    | Released
    | Fallbacks
    | Log
    | LaneRing
    | StreamMessage
)


def from_worker(envelope: Any, has_body: bool) -> WorkerMessage:
    """The worker's message of ``envelope`` (`ProtocolError` when it is none of §8.3's
    or §8.6's; only ``ok`` and an element have a body)."""
    stream = parse_stream(envelope, has_body)
    if stream is not None and not isinstance(stream, (Cancel, Abort)):
        return stream
    if envelope == A_LANE and not has_body:
        return LaneRing()
    if type(envelope) is tuple and envelope and (not has_body or envelope[0] == A_OK):
        tag, n = envelope[0], len(envelope)
        if tag == A_READY and n == 3 and _uint(envelope[1], 32):
            version = envelope[2]
            if type(version) is tuple and len(version) == 2 and all(map(_uint, version)):
                return Ready(envelope[1], version)
        if tag == A_OBJECT:
            return _announcement(envelope, ("arena", "sealed"))
        if tag == A_OBJECT_DROPPED and n == 2 and _uint(envelope[1], 32):
            return ObjectDropped(envelope[1])
        timings = _timings(envelope[4]) if n == 5 and tag in (A_OK, A_ERROR) else None
        if tag == A_OK and (n == 4 or timings) and _uint(envelope[1]) and has_body:
            slices = envelope[2]
            if type(slices) is list and all(map(_entry, slices)):
                released = released_entries(envelope[3])
                return Answer(envelope[1], True, slices, None, released, timings)
        if (
            tag == A_ERROR
            and (n == 4 or timings)
            and _uint(envelope[1])
            and type(envelope[2]) is tuple
        ):
            released = released_entries(envelope[3])
            return Answer(envelope[1], False, [], envelope[2], released, timings)
        if tag == A_RELEASED and n == 2:
            return Released(released_entries(envelope[1]))
        if (
            tag == A_FALLBACKS
            and n == 2
            and type(envelope[1]) is list
            and all(map(_fallback_entry, envelope[1]))
        ):
            return Fallbacks(envelope[1])
        if (
            tag == A_LOG
            and n == 3
            and envelope[1] in (A_STDOUT, A_STDERR)
            and (type(envelope[2]) is bytes)
        ):
            return Log(str(envelope[1]), envelope[2])
    raise _violation("not a message of protocol/SPEC.md §8.3", envelope)
