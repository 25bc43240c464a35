"""Typed errors of the Python side (protocol/SPEC.md §5).

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
import os
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
    "RegionError",
    "region_error",
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
    """A frame header (or payload, see `ChecksumError`) failed validation (§4)."""


class ChecksumError(HeaderError):
    """The payload does not match its ``payload_checksum`` (§4 check 17)."""

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
    """An ETF term from the peer was refused (§7.2): a tag outside the allowed set, a
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
    not a record list / column map (SPEC §8.1): reason ``format_unsuitable``, ``field``
    ``format``, ``limit`` the code of the first reason (``different_keys``...); the
    message names the first reason and says to use ``format: auto`` or convert the
    value. The worker answers the call with a ``bad_call``."""


class LeaseError(BridgeError):
    """The lease protocol refused an operation (§2.2): ``leased`` or ``not_published``."""


class _OSFailure(BridgeError, OSError):
    """A failure that may come from an OS call: ``errno`` holds its number, else
    ``None``."""

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


class RegionError(_OSFailure):
    """Creating, attaching, using or closing a region failed.

    ``errno`` holds the OS error number when an OS call failed, else ``None``.
    """


class ArenaError(_OSFailure):
    """A shared object of transport v2 (protocol/transport-v2.md) could not be made,
    opened or used: ``too_large`` and ``arena_full`` (the limits of §3), ``no_space``,
    ``peer_open_failed``, ``size_mismatch``, ``not_sealed``, ``bad_object`` (§2),
    ``slice_out_of_bounds``, ``no_tickets``. ``errno`` holds the OS error number when an
    OS call failed, else ``None``.
    """


def _default_message(reason: str, field: str | None, value: Any, limit: Any) -> str:
    if field is None:
        return reason
    text = f"{reason}: field {field} is {value!r}"
    if limit is not None:
        text += f", expected {limit!r}"
    return text


def region_error(
    err: int,
    *,
    name: str,
    op: str,
    asked: int | None = None,
    free: int | None = None,
) -> RegionError:
    """Map an OS error number met during ``op`` on region ``name`` to a `RegionError`.

    This is the one place where OS errors become region reasons: ``ENOSPC`` is
    ``no_space``, ``ENOENT`` is ``not_found``, ``EEXIST`` (after the creation retries)
    is ``name_collision``, anything else is the lowercase errno name (``eacces``).

    >>> region_error(2, name="/bb-1-0123456789abcdef", op="attach").reason
    'not_found'
    >>> region_error(13, name="/bb-1-0123456789abcdef", op="attach").reason
    'eacces'
    """
    if err == _errno.ENOSPC:
        free_text = "an unknown number of" if free is None else str(free)
        message = (
            f"no_space: cannot {op} region {name}: /dev/shm has {free_text} bytes free, "
            f"asked for {asked}; free space or raise the tmpfs size"
        )
        return RegionError("no_space", "size", asked, free, message, err)
    if err == _errno.ENOENT:
        message = (
            f"not_found: cannot {op} region {name}: no such region in /dev/shm "
            "(its owner closed it, died and was reaped, or the name is wrong)"
        )
        return RegionError("not_found", "name", name, None, message, err)
    if err == _errno.EEXIST:
        message = (
            f"name_collision: cannot {op} region {name}: every random name tried "
            "already existed; something is flooding /dev/shm with names of this prefix"
        )
        return RegionError("name_collision", "name", name, None, message, err)
    code = _errno.errorcode.get(err, f"errno{err}").lower()
    message = f"{code}: cannot {op} region {name}: [errno {err}] {os.strerror(err)}"
    return RegionError(code, "name", name, None, message, err)
