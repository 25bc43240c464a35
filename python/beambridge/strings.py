"""Arguments as text: the call option ``strings: :str`` (protocol/SPEC.md §10).

By default an Elixir binary reaches a handler as `bytes`. Under ``strings: :str``
every binary of the arguments, values and map keys alike, arrives as `str`, decoded as
strict UTF-8: a binary that is not UTF-8 is an error naming where it was
(``invalid_utf8``), never a guess. The rule never looks at the content. What is not a
plain binary is left alone: a `memoryview` (a ``Bridge.Buffer``: binary data stays
reachable), arrays, tables, values of registered types, atoms.

>>> to_str([b"abc", {b"score": 1.5}, (b"x", memoryview(b"raw"))])[:2]
['abc', {'score': 1.5}]
>>> to_str([b"ok", [b"\\xff"]])
Traceback (most recent call last):
beambridge.errors.BridgeError: invalid_utf8: argument 1 [0] is not UTF-8 (invalid ...
"""

from __future__ import annotations

from typing import Any

from .errors import BridgeError

__all__ = ["to_str"]


def to_str(args: list[Any]) -> list[Any]:
    """``args`` (a call's argument list) with every `bytes` decoded to `str`."""
    return [_text(a, f"argument {i}") for i, a in enumerate(args)]


def _text(value: Any, where: str) -> Any:
    t = type(value)
    if t is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BridgeError(
                "invalid_utf8",
                "strings",
                value[:64],
                "UTF-8",
                f"invalid_utf8: {where} is not UTF-8 ({err.reason} at byte {err.start}); "
                "send binary data as a Bridge.Buffer, or call with strings: :bytes",
            ) from None
    if t is list:
        return [_text(v, f"{where} [{i}]") for i, v in enumerate(value)]
    if t is tuple:
        return tuple(_text(v, f"{where} {{{i}}}") for i, v in enumerate(value))
    if t is dict:
        return {
            _text(k, f"{where}, a key"): _text(v, f"{where} [{_shown(k)}]")
            for k, v in value.items()
        }
    return value


def _shown(key: Any) -> str:
    text = key.decode("utf-8", "replace") if type(key) is bytes else key
    return f"{text!r:.40}"
