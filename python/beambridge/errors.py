"""Typed errors of the Python side (protocol/SPEC.md §7).

Every failure a caller can meet is one of these classes; each carries ``reason`` (the
same string the Elixir side uses), ``field``, ``value`` and ``limit``.

>>> err = HeaderError("bad_magic", "magic", b"XXXX", b"BBFH")
>>> isinstance(err, ValueError), err.reason, err.field
(True, 'bad_magic', 'magic')
>>> print(err)
bad_magic: field magic is b'XXXX', expected b'BBFH'
"""

from __future__ import annotations

import errno as _errno
from typing import Any

__all__ = [
    "ArenaError",
    "BridgeError",
    "ChecksumError",
    "EtfError",
    "FormatError",
    "FormatUnsuitableError",
    "HeaderError",
    "LeaseError",
    "TensorError",
    "UnsupportedDtypeError",
    "os_failure",
]


class BridgeError(Exception):
    """Base class of every beambridge error.

    ``reason`` is the protocol reason string, ``field`` the field that failed (or
    ``None``), ``value`` the offending value and ``limit`` the bound it broke.
    """

    reason: str
    field: str | None
    value: Any
    limit: Any

    def __init__(
        self,
        reason: str,
        field: str | None = None,
        value: Any = None,
        limit: Any = None,
        message: str | None = None,
    ) -> None:
        self.reason = reason
        self.field = field
        self.value = value
        self.limit = limit
        self.message = (
            message if message is not None else _default_message(reason, field, value, limit)
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.reason, self.field, self.value, self.limit, self.message))


class HeaderError(BridgeError, ValueError):
    """A frame header (or payload, see `ChecksumError`) failed validation (§6)."""


class ChecksumError(HeaderError):
    """The payload does not match its ``payload_checksum`` (§6 check 17)."""

    def __init__(
        self,
        reason: str = "checksum_mismatch",
        field: str | None = "payload_checksum",
        value: Any = None,
        limit: Any = None,
        message: str | None = None,
    ) -> None:
        super().__init__(reason, field, value, limit, message)


class EtfError(BridgeError, ValueError):
    """An ETF term from the peer was refused (§8.2): a tag outside the allowed set, a
    length running past the frame, nesting too deep, an oversized big integer, an
    improper list, or a value Python cannot represent. ``reason`` is ``bad_term``,
    ``field`` names what was wrong (``tag``, ``length``, ``depth``...) and ``value``
    holds the offending value; the message gives the byte offset.
    """


class FormatError(BridgeError, ValueError):
    """A payload does not hold what its frame's ``format`` says, so a format reader
    (`beambridge.formats`) refuses it: ``wrong_format`` (another format code),
    ``unsupported_codec``, ``bad_metadata`` (the format's descriptor), or a
    format-specific reason such as ``bad_arrow_stream``. ``field`` names what failed.
    """


class FormatUnsuitableError(FormatError):
    """A forced format (``format: arrow``) met a list of maps or a map of lists that is
    not a record list / column map (SPEC §10.1): reason ``format_unsuitable``, ``field``
    ``format``, ``limit`` the code of the first reason (``different_keys``...); the
    message names the first reason and says to use ``format: auto`` or convert the
    value. The worker answers the call with a ``bad_call``."""


class LeaseError(BridgeError):
    """``leased``: views made from a payload are still alive where they must be gone: a
    frame released while they live (`beambridge.frame.Frame.release`; its lease then
    ends when they are gone), or a frame's payload area at the end of its write
    (`beambridge.frame_writer.write_frame`; no header is written)."""


class ArenaError(BridgeError, OSError):
    """A shared object of transport v2 (protocol/SPEC.md) could not be made,
    opened or used: ``too_large`` and ``arena_full`` (the limits of §3), ``no_space``,
    ``peer_open_failed``, ``size_mismatch``, ``not_sealed``, ``bad_object`` (§2),
    ``slice_out_of_bounds``, ``no_tickets``, or the lowercase errno name of an OS call
    that failed otherwise (``emfile``). ``errno`` holds the OS error number when an OS
    call failed, else ``None``.

    >>> err = ArenaError("no_space", "object_size", 1 << 30, None, errno=28)
    >>> isinstance(err, OSError), err.reason, err.errno
    (True, 'no_space', 28)
    """

    def __init__(
        self,
        reason: str,
        field: str | None = None,
        value: Any = None,
        limit: Any = None,
        message: str | None = None,
        errno: int | None = None,
    ) -> None:
        BridgeError.__init__(self, reason, field, value, limit, message)
        self.errno = errno

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            self.__class__,
            (self.reason, self.field, self.value, self.limit, self.message, self.errno),
        )


class TensorError(EtfError):
    """A tensor descriptor or payload from the peer was refused
    (`beambridge.formats.tensor`): an unknown schema or version, a dtype outside the
    grammar, a shape or offset that does not match the payload. ``reason`` is
    ``bad_term`` (what the worker reports in a ``bad_call``), ``field`` names what was
    wrong (``dtype``, ``shape``, ``order``, ``offset``, ``schema_id``...)."""


class UnsupportedDtypeError(BridgeError, TypeError):
    """An array whose dtype cannot be written as a tensor (object, variable-width
    strings, long double, titled fields...): reason ``unsupported_dtype``; the message
    says what to do instead."""


def _default_message(reason: str, field: str | None, value: Any, limit: Any) -> str:
    if field is None:
        return reason
    text = f"{reason}: field {field} is {value!r}"
    if limit is not None:
        text += f", expected {limit!r}"
    return text


def os_failure(exc: OSError, field: str, value: Any, doing: str, advice: str = "") -> ArenaError:
    """The `ArenaError` of an OS call on a shared object that failed with ``exc``. This
    is the one place where OS errors become reasons: ``ENOSPC`` and ``ENOMEM`` (the
    memory cannot be had) are ``no_space``, anything else is the lowercase errno name
    (``emfile``). ``doing`` says what failed, ``advice`` what to do about it.

    >>> err = os_failure(OSError(28, "No space left on device"), "object_size", 4096,
    ...                  "cannot reserve 4096 bytes of shared memory")
    >>> err.reason, err.errno
    ('no_space', 28)
    >>> print(err)
    no_space: cannot reserve 4096 bytes of shared memory: No space left on device
    >>> os_failure(OSError(24, "Too many open files"), "object", None, "memfd_create").reason
    'emfile'
    """
    code = exc.errno or 0
    no_space = code in (_errno.ENOSPC, _errno.ENOMEM)
    reason = "no_space" if no_space else _errno.errorcode.get(code, "eio").lower()
    text = f"{reason}: {doing}: {exc.strerror or exc}" + (f"; {advice}" if advice else "")
    return ArenaError(reason, field, value, None, text, exc.errno)
