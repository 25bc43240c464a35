"""Calling Elixir from a handler (protocol/SPEC.md §8.8).

A handler a worker runs may call the Elixir functions its pool allows (the pool's
``callbacks: [{MyApp.Repo, :get_user, 1}, ...]``) and send messages to processes::

    import beambridge.elixir as elixir

    def greet(user_id, reply_to):
        user = elixir.call("MyApp.Repo", "get_user", [user_id])
        elixir.send(reply_to, ("greeted", user["name"]))
        return user["name"]

`call` returns what the function returned, in the forms a call's arguments arrive in
(binaries as ``bytes``, large ones and tensors read in place from shared memory); the
arguments travel as a call's result does. The function runs in the Elixir process that
made the call, so it sees that process's state (a test's database sandbox, its
process dictionary). A function that is not on the pool's list raises
`CallbackRefused`; one that raises, throws or exits raises `ElixirError` with its
``elixir_type`` (``"ArgumentError"``, ``"exit"``) and message.

`send` delivers a message to a `Pid` (a pid that reached Python as an argument or a
callback's result: pids cannot be forged) or to a process registered under a name the
pool allows (``{:send, MyApp.Listener}`` in its ``callbacks``).

Outside a handler (no worker, or another thread than the one handlers run on) both
raise `ElixirError` ``no_call``:

>>> try:
...     call("MyApp.Repo", "get_user", [42])
... except ElixirError as err:
...     print(err.reason)
no_call
"""

from __future__ import annotations

from typing import Any

from .errors import BridgeError
from .pid import Pid

__all__ = ["CallbackRefused", "ElixirError", "Pid", "call", "send"]


class ElixirError(BridgeError):
    """A callback into Elixir failed. ``reason``: ``callback_raised`` (the function raised,
    threw or exited: ``elixir_type`` says what), ``not_allowed`` (`CallbackRefused`),
    ``bad_callback_value`` (an argument or the result could not cross), ``no_caller`` (the call
    is over: it timed out), ``no_call`` (no handler of a worker is running)."""

    def __init__(self, reason: str, message: str, elixir_type: str = "") -> None:
        super().__init__(reason, message=f"{reason}: {message}")
        self.elixir_type = elixir_type


class CallbackRefused(ElixirError):
    """The function (or name to send to) is not on the pool's ``callbacks`` list."""


#: The worker's callbacks (`beambridge.callbacks.Callbacks`), set when it starts.
_callbacks: Any = None


def attach(callbacks: Any) -> None:
    """The worker's callbacks: `call` and `send` go through them."""
    global _callbacks
    _callbacks = callbacks


def _current() -> Any:
    if _callbacks is None:
        raise ElixirError(
            "no_call", "beambridge.elixir works in a handler that a beambridge worker runs"
        )
    return _callbacks


def call(module: str, function: str, args: list[Any] | tuple[Any, ...] = ()) -> Any:
    """``module.function(*args)`` in Elixir (``"MyApp.Repo"``, ``"get_user"``); its
    result, or `ElixirError` / `CallbackRefused`."""
    return _current().call(module, function, args)


def send(dest: Pid | str, message: Any) -> None:
    """Send ``message`` to a `Pid`, or to the process registered as ``dest`` (a name
    the pool allows); returns once it is delivered."""
    _current().send(dest, message)
