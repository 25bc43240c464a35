"""The parts of a call's answer that need no state (protocol/SPEC.md §8.3): the
`Reply`, a ``bad_call`` to send, the ``python_exception`` of what a handler raised, the
call options ``format`` and ``strings``, and the flush of what handlers printed.

>>> policy_option({b"format": b"packed"}), strings_option({b"strings": b"str"})
('packed', True)
>>> policy_option({b"format": b"csv"})
Traceback (most recent call last):
...
beambridge.call_parts.Refused: call option format is b'csv', not one of auto, etf, packed, arrow
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass
from typing import Any

from . import control
from .etf import encode_int
from .registry import CODECS
from .result_slices import ResultSlices
from .strings import to_str
from .terms import POLICIES

__all__ = [
    "BadCall",
    "Refused",
    "Reply",
    "exception_detail",
    "flush_handler_output",
    "policy_option",
    "same",
    "strings_option",
    "text",
    "token_str",
    "too_large",
]


class BadCall:
    """A ``{:bad_call, reason, message}`` to send (a value, never raised: nothing of the
    call may stay alive in a traceback)."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        self.message = message


@dataclass
class Reply:
    """What answers a call: the ``notices`` to send first (objects the answer names, or
    dropped), then ``envelope`` with ``body`` (the parts of the result's ETF) or
    without. ``head`` is the envelope's ETF when it was encoded already."""

    notices: list[Any]
    envelope: Any
    body: list[Any] | None
    head: bytes | None = None

    def timed(self, decode_us: int, run_us: int, encode_us: int) -> None:
        """Add the worker's timings to an ``{:ok, ...}`` or ``{:error, ...}`` answer
        (since 2.5, to a BEAM of 2.5 or later, §8.3): ``{decode, run, encode}`` in
        microseconds, the arguments read, the handler run, the result written.
        Other answers (a stream's ``{:done, ...}``) stay as they are."""
        envelope = self.envelope
        if envelope[0] not in (control.A_OK, control.A_ERROR) or len(envelope) != 4:
            return
        timings = (decode_us, run_us, encode_us)
        self.envelope = (*envelope, timings)
        if self.head is not None and self.head[:3] != b"\x83h\x04":
            self.head = None  # encoded from the envelope instead
        if self.head is not None:
            # {:ok, id, slices, released} becomes a 5-tuple: its arity byte, and the
            # timings after its last element
            tail: list[Any] = [b"h\x03"]
            for value in timings:
                encode_int(value, tail)
            self.head = b"\x83h\x05" + self.head[3:] + b"".join(tail)

    def frame(self) -> list[Any]:
        """The parts of the answer's frame (`control.join`)."""
        if self.head is None:
            return control.join(self.envelope, self.body)
        return control.join_encoded(self.head, self.body)


def text(value: object) -> bytes:
    """``str(value)`` as UTF-8, whatever ``__str__`` does."""
    try:
        shown = str(value)
    except Exception as exc:  # a __str__ that raises
        shown = f"<unprintable {type(value).__name__}: {type(exc).__name__}>"
    return shown.encode("utf-8", "backslashreplace")


def exception_type_name(exc: BaseException) -> str:
    cls = type(exc)
    module, name = cls.__module__, cls.__qualname__
    return name if module in ("builtins", "__main__") else f"{module}.{name}"


def flush_handler_output() -> None:
    """Push what handlers printed into fds 1 and 2 (forwarded before the answer)."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (contextlib.suppress costs a microsecond on every call)
            stream.flush()
        except Exception:  # a handler replaced or closed the stream
            pass


def exception_detail(exc: BaseException) -> Any:
    """``{:python_exception, type, message, traceback}`` of what a handler raised; the
    handler's frames are cleared (their locals may hold argument views)."""
    tb = exc.__traceback__
    formatted = "".join(traceback.format_exception(type(exc), exc, tb.tb_next if tb else None))
    detail = control.python_exception(
        exception_type_name(exc).encode(),
        text(exc),
        formatted.encode("utf-8", "backslashreplace"),
    )
    if tb is not None:
        traceback.clear_frames(tb)  # the handler's locals (argument views) go now
    return detail


def too_large(size: int, slices: ResultSlices) -> str:
    return (
        f"the result encodes to {size} bytes, over the control frame limit of "
        f"{control.MAX_CONTROL_FRAME} (MAX_CONTROL_FRAME), and its values at or above "
        f"the threshold could not all get a slice (raise the pool's :arena_limit, now "
        f"{slices.limit})"
    )


def same(value: Any) -> Any:
    return value


def token_str(token: bytes) -> Any:
    return to_str([token])[0]


class Refused(Exception):
    """Raised while a call is prepared (`CallPath`), and turned into a `BadCall` there."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def strings_option(opts: Any) -> bool:
    """Do the call's arguments arrive as `str` (``opts["strings"]``, SPEC §8.3)?"""
    value = opts.get(b"strings", b"bytes")
    if value not in (b"bytes", b"str"):
        raise Refused("bad_term", f"call option strings is {value!r:.100}, not bytes or str")
    return bool(value == b"str")


def codec_option(opts: dict[Any, Any]) -> int:
    """The codec the call's result slices are written in (``opts["compress"]``, since
    2.7, SPEC §15.3): a code of the registry's ``codecs``, 0 (none) by default."""
    value = opts.get(b"compress", b"none")
    code = CODECS.get(value.decode("ascii", "replace")) if type(value) is bytes else None
    if code is None:
        raise Refused(
            "bad_term", f"call option compress is {value!r:.100}, not one of {', '.join(CODECS)}"
        )
    return code


def session_option(opts: dict[Any, Any]) -> int | None:
    """The call's session (``opts["session"]``, since 2.8, SPEC §8.9), or None."""
    value = opts.get(b"session") if type(opts) is dict else None  # else policy_option says
    if value is not None and (type(value) is not int or value < 1):
        raise Refused("bad_term", f"call option session is {value!r:.100}, not a positive integer")
    return value


def meta_option(opts: dict[Any, Any]) -> dict[Any, Any] | None:
    """The call's user metadata (``opts["meta"]``, since 2.4, SPEC §5.4), or None."""
    value = opts.get(b"meta")
    if value is not None and type(value) is not dict:
        raise Refused("bad_term", f"call option meta is {value!r:.100}, not a map")
    return value


def policy_option(opts: Any) -> str:
    """The result format policy of a call's options (SPEC §8.3): ``opts["format"]``."""
    if type(opts) is not dict:
        raise Refused("bad_term", f"call options must be a map, got {opts!r:.200}")
    value = opts.get(b"format", POLICIES[0])  # the default policy first
    text = value.decode("utf-8", "replace") if type(value) is bytes else value
    if not isinstance(text, str) or text not in POLICIES:
        raise Refused(
            "bad_term", f"call option format is {value!r:.100}, not one of {', '.join(POLICIES)}"
        )
    return str(text)
