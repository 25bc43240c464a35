"""The messages of callbacks into Elixir and of sessions on the control channel
(protocol/SPEC.md §8.8, §8.9).

While call ``id`` runs, its handler may ask the BEAM to run an allowed Elixir function,
``{:callback, id, cid, module, function, arity, slices}`` with the argument list as the
body, or to send a message, ``{:send, id, cid, dest, slices}`` with the message as the
body; ``cid`` is the worker's, unique per worker. The BEAM answers each with
``{:callback_ok, cid, slices}`` (the result as the body, a one-element list, its slices
lent as a call's are) or ``{:callback_error, cid, reason, type, message}``. The BEAM
tells the worker that refs of a session were dropped, ``{:refs_dropped, session,
[ref]}``, and that a session ended, ``{:session_end, session}``. `parse` checks a BEAM
envelope and returns its message, or None when it is none of these.

>>> parse((A_CALLBACK_ERROR, 3, Atom("not_allowed"), b"", b"no"), False)
CallbackReply(cid=3, ok=False, slices=[], reason='not_allowed', type=b'', message=b'no')
>>> parse((A_CALLBACK_OK, 3, []), True).ok
True
>>> parse((A_SESSION_END, 2), False)
SessionEnd(session=2)
>>> parse((A_CALLBACK_OK, 3, []), False) is None  # a result has a body
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .etf import Atom

__all__ = [
    "CallbackMessage",
    "CallbackReply",
    "RefsDropped",
    "SessionEnd",
    "callback",
    "parse",
    "send",
]

A_CALLBACK, A_SEND = Atom("callback"), Atom("send")
A_CALLBACK_OK, A_CALLBACK_ERROR = Atom("callback_ok"), Atom("callback_error")
A_REFS_DROPPED, A_SESSION_END = Atom("refs_dropped"), Atom("session_end")

_U64 = 2**64


@dataclass(frozen=True)
class CallbackReply:
    """The BEAM's answer to callback or send ``cid``: ``ok`` with the result in the
    body (its ``slices`` lent), or the error's ``reason``, ``type`` and ``message``."""

    cid: int
    ok: bool
    slices: Any = ()
    reason: str = ""
    type: bytes = b""
    message: bytes = b""


@dataclass(frozen=True)
class RefsDropped:
    """The BEAM holds none of these refs of ``session`` any more."""

    session: int
    refs: list[int]


@dataclass(frozen=True)
class SessionEnd:
    """``session`` ended: every object kept for it goes."""

    session: int


CallbackMessage = CallbackReply | RefsDropped | SessionEnd


def _uint(value: Any) -> bool:
    return type(value) is int and 0 <= value < _U64


def callback(
    call_id: int, cid: int, module: bytes, function: bytes, arity: int, slices: list[Any]
) -> tuple[Any, ...]:
    return (A_CALLBACK, call_id, cid, module, function, arity, slices)


def send(call_id: int, cid: int, dest: Any, slices: list[Any]) -> tuple[Any, ...]:
    return (A_SEND, call_id, cid, dest, slices)


def parse(envelope: Any, has_body: bool) -> CallbackMessage | None:
    """The message of ``envelope`` when it is one of these, else None (the caller then
    tries the other messages, and refuses what none of them is)."""
    if type(envelope) is not tuple or len(envelope) < 2 or not _uint(envelope[1]):
        return None
    tag, n, first = envelope[0], len(envelope), envelope[1]
    if has_body:
        ok = tag == A_CALLBACK_OK and n == 3 and type(envelope[2]) is list
        return CallbackReply(first, True, envelope[2]) if ok else None
    if tag == A_CALLBACK_ERROR and n == 5:
        _, cid, reason, kind, message = envelope
        ok = type(reason) is Atom and type(kind) is bytes and type(message) is bytes
        return CallbackReply(cid, False, [], str(reason), kind, message) if ok else None
    refs = envelope[2] if n == 3 else None
    if tag == A_REFS_DROPPED and type(refs) is list and all(_uint(r) for r in refs):
        return RefsDropped(first, refs)
    if tag == A_SESSION_END and n == 2:
        return SessionEnd(first)
    return None
