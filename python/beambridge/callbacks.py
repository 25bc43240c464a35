"""Callbacks into Elixir, on the worker's side (protocol/SPEC.md §8.8): what
`beambridge.elixir.call` and `beambridge.elixir.send` do while a handler runs.

The arguments (or the message) are written as a call's result is, by the call path's
encoder (values at or above the threshold into the worker's arenas, lent to the BEAM),
with the result being written set aside meanwhile; the frame goes out; the worker then
reads frames from the BEAM (`Link.pump`, shielded from the cancel signal) until the
answer to this callback comes. Its result is read as a call's arguments are (slices of
the BEAM read in place). An answer to a callback nobody waits for any more (the call
was cancelled while it waited) has its slices let go.

Module and function names go as UTF-8 binaries; the BEAM matches them against its
list, never making an atom of them:

>>> _name("MyApp.Repo", "module"), _name(Atom("get_user"), "function")
(b'MyApp.Repo', b'get_user')
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import callback_control as cc
from . import control
from .call_parts import BadCall
from .elixir import CallbackRefused, ElixirError
from .errors import BridgeError
from .etf import Atom, decode
from .pid import Pid
from .terms import TAG_PID

if TYPE_CHECKING:
    from .calls import CallPath

__all__ = ["Callbacks"]


class Callbacks:
    """The callbacks of one worker's calls."""

    def __init__(self, path: CallPath) -> None:
        self.path = path
        self._last = 0
        #: cid -> the value, or the exception, of an answer that came
        self._answers: dict[int, Any] = {}
        self._waiting: set[int] = set()

    # ---- from the handler --------------------------------------------------------------

    def call(self, module: str, function: str, args: Any) -> Any:
        if type(args) not in (list, tuple):
            raise TypeError(f"elixir.call takes a list of arguments, got {type(args).__name__}")
        mod, fun = _name(module, "module"), _name(function, "function")
        call_id = self._call_in_flight()
        cid = self._cid()
        self._write(lambda e: cc.callback(call_id, cid, mod, fun, len(args), e), list(args))
        return self._await(cid)

    def send(self, dest: Any, message: Any) -> None:
        if type(dest) is Pid:
            target: Any = (TAG_PID, dest.etf, dest.mac)
        elif isinstance(dest, (str, bytes)):
            target = _name(dest, "dest")
        else:
            raise TypeError(
                f"elixir.send sends to a beambridge.Pid or a registered name, got "
                f"{type(dest).__name__}"
            )
        call_id = self._call_in_flight()
        cid = self._cid()
        self._write(lambda e: cc.send(call_id, cid, target, e), [message])
        self._await(cid)

    def _call_in_flight(self) -> int:
        path = self.path
        if path.link is None or path.cancel.call_id is None:
            raise ElixirError("no_call", "no call is in flight: elixir.call works in a handler")
        if threading.current_thread() is not threading.main_thread():
            raise ElixirError(
                "no_call",
                "elixir.call and elixir.send work on the worker's main thread, where "
                "handlers run, not on a thread a handler started",
            )
        return path.cancel.call_id

    def _cid(self) -> int:
        self._last += 1
        return self._last

    def _write(self, envelope: Any, value: Any) -> None:
        """Encode ``value`` as a result is (the result being written set aside) and send
        ``envelope(slices)`` with it as the body, shielded from the cancel signal: slices
        placed and not announced would never come back (§8.7)."""
        with self.path.cancel.shielded():
            self._write_shielded(envelope, value)

    def _write_shielded(self, envelope: Any, value: Any) -> None:
        path = self.path
        aside = path.slices.suspend()
        try:
            encoded = path.encode_value(value)
            if isinstance(encoded, BadCall):
                raise ElixirError("bad_callback_value", f"{encoded.reason}: {encoded.message}")
            parts, size = encoded
            entries = path.slices.entries
            if size + 1024 > control.MAX_CONTROL_FRAME:
                path.slices.cancel()
                raise ElixirError(
                    "bad_callback_value",
                    f"the arguments encode to {size} bytes inline, over the control frame "
                    f"limit of {control.MAX_CONTROL_FRAME}: pass large values as bytes or "
                    "arrays, which travel in shared memory",
                )
            notices = path.take_notices() + path.slices.commit()
        finally:
            path.slices.resume(aside)
        frames: list[tuple[Any, Any]] = [(n, None) for n in notices]
        frames.append((envelope(entries), parts))
        assert path.link is not None
        path.link.send_frames(frames)

    def _await(self, cid: int) -> Any:
        path = self.path
        assert path.link is not None
        self._waiting.add(cid)
        try:
            while cid not in self._answers:
                if not path.link.pump(True) and path.cancel.requested:
                    # the call timed out while Elixir ran the callback (unarmed code:
                    # a generator's clean-up, say): leave as the handler would
                    raise path.cancel.cancelled()
            answer = self._answers.pop(cid)
        finally:
            self._waiting.discard(cid)
            self._answers.pop(cid, None)  # one that came as the cancel did: let go
        if isinstance(answer, BaseException):
            raise answer
        return answer

    # ---- from the BEAM -----------------------------------------------------------------

    def on_reply(self, reply: cc.CallbackReply, body: memoryview | None) -> None:
        """The BEAM's answer to callback ``reply.cid``: read now (the frame's memory is
        the channel's), kept for `_await`."""
        if reply.cid not in self._waiting:
            if reply.ok:
                self.path.let_go(reply.slices)
            return
        if not reply.ok:
            cls = CallbackRefused if reply.reason == "not_allowed" else ElixirError
            text = reply.message.decode("utf-8", "replace")
            self._answers[reply.cid] = cls(
                reply.reason, text, reply.type.decode("utf-8", "replace")
            )
            return
        try:
            assert body is not None
            terms = decode(body)
            if type(terms) is not list or len(terms) != 1:
                raise ElixirError(
                    "bad_callback_value", f"a callback result is a list of one, got {terms!r:.100}"
                )
            self._answers[reply.cid] = self.path.read_value(terms, reply.slices)[0]
        except BridgeError as err:
            self.path.let_go(reply.slices)
            self._answers[reply.cid] = err


def _name(value: Any, what: str) -> bytes:
    if isinstance(value, Atom | str):
        text = str(value)
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    else:
        raise TypeError(f"the {what} is a str, got {type(value).__name__}")
    if not text:
        raise ValueError(f"the {what} is empty")
    return text.encode("utf-8")
