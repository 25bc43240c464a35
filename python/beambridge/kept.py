"""Python objects kept in a worker for Elixir (protocol/SPEC.md §8.9).

Inside a session (``Bridge.session/3``: every call of it runs on one worker) a handler
may return ``beambridge.keep(obj)``: the object stays in the worker and Elixir gets a
``%Bridge.Ref{}`` naming it, ``{:"$bb_ref", session, ref}`` on the wire. A call of the
same session that passes the ref back gets the object itself. The object goes when
Elixir drops the ref (garbage-collected: ``{:refs_dropped, session, [ref]}``) or the
session ends (``{:session_end, session}``), whichever comes first.

>>> store = RefStore()
>>> ref = store.put(7, ["model"])
>>> store.get(7, ref)
['model']
>>> store.drop(7, [ref])
>>> try:
...     store.get(7, ref)
... except BridgeError as err:
...     print(err.reason)
released_ref
"""

from __future__ import annotations

from typing import Any

from .errors import BridgeError
from .terms import TAG_REF

__all__ = ["Kept", "RefStore", "keep"]


class Kept:
    """What `keep` returns: a handler's result (or part of one) that stays here."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __repr__(self) -> str:
        return f"beambridge.keep({self.obj!r:.60})"


def keep(obj: Any) -> Kept:
    """Keep ``obj`` in this worker for the session of the call in flight; Elixir gets a
    ``%Bridge.Ref{}`` that gives this object back to the session's later calls. Only in
    a call of a session (else the call fails, ``no_session``)."""
    return Kept(obj)


class RefStore:
    """The objects kept for each session of one worker."""

    def __init__(self) -> None:
        self._sessions: dict[int, dict[int, Any]] = {}
        self._last = 0

    def put(self, session: int, obj: Any) -> int:
        self._last += 1
        self._sessions.setdefault(session, {})[self._last] = obj
        return self._last

    def get(self, session: int, ref: int) -> Any:
        objects = self._sessions.get(session)
        if objects is None or ref not in objects:
            raise BridgeError(
                "released_ref",
                "ref",
                ref,
                None,
                f"released_ref: ref {ref} of session {session} was released (its session "
                "ended, or Elixir dropped it)",
            )
        return objects[ref]

    def drop(self, session: int, refs: list[int]) -> None:
        objects = self._sessions.get(session)
        if objects is not None:
            for ref in refs:
                objects.pop(ref, None)
            if not objects:
                del self._sessions[session]

    def end(self, session: int) -> None:
        self._sessions.pop(session, None)

    def hooks(self, session: int | None) -> tuple[Any, Any]:
        """For a call of ``session``: how its result keeps an object (the ref term to
        send) and how its arguments read a ref; (None, None) outside a session."""
        if session is None:
            return None, None

        def keep(obj: Any) -> tuple[Any, ...]:
            return (TAG_REF, session, self.put(session, obj))

        def read(of: Any, ref: Any) -> Any:
            if of != session or type(ref) is not int:
                raise BridgeError(
                    "no_session",
                    message=f"no_session: a ref of session {of!r:.40} in a call of session "
                    f"{session}",
                )
            return self.get(session, ref)

        return keep, read

    def count(self, session: int | None = None) -> int:
        """Objects kept (for ``session``, or in all)."""
        if session is not None:
            return len(self._sessions.get(session, ()))
        return sum(map(len, self._sessions.values()))
