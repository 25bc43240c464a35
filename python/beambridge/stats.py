"""The format statistics of this process (protocol/SPEC.md §10.1): every decision about
how a value travels, counted per (direction, form, reason) and logged at debug level on
the ``beambridge.formats`` logger.

The keys are the registry's (`beambridge.registry`): `ARGUMENTS` and `RESULTS` are the
Python side's names of its two directions, `FORMS` and `REASONS` what it counts.

>>> reset_format_stats()
>>> note(RESULTS, "packed", "auto", 600, "300 elements <i2")
>>> format_stats()
{('to_elixir', 'packed', 'auto'): {'count': 1, 'bytes': 600}}
>>> reset_format_stats()
"""

from __future__ import annotations

import logging

from . import registry

__all__ = [
    "ARGUMENTS",
    "FORMS",
    "REASONS",
    "RESULTS",
    "format_stats",
    "note",
    "reset_format_stats",
]

#: The direction of a call's arguments, Elixir to Python (``from_elixir``).
ARGUMENTS = registry.STATS_DIRECTIONS["arguments"]
#: The direction of a call's result, Python to Elixir (``to_elixir``).
RESULTS = registry.STATS_DIRECTIONS["results"]
#: The forms this side counts (``packed``, ``records``, ``custom``, ``etf``...).
FORMS = registry.STATS_FORMS
#: The reasons this side counts a decision under (``auto``, ``forced``, ``inline``,
#: ``slice``..., and the code of what made a list unsuitable).
REASONS = registry.STATS_REASONS

log = logging.getLogger("beambridge.formats")

_stats: dict[tuple[str, str, str], dict[str, int]] = {}


def note(direction: str, form: str, reason: str, nbytes: int, what: str = "") -> None:
    """Count one decision (``direction`` `RESULTS` or `ARGUMENTS`) and log it at debug
    level on the ``beambridge.formats`` logger."""
    key = (direction, form, reason)
    entry = _stats.get(key)
    if entry is None:
        entry = _stats[key] = {"count": 0, "bytes": 0}
    entry["count"] += 1
    entry["bytes"] += nbytes
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "%s: %s (%s), %d bytes%s", direction, form, reason, nbytes, f": {what}" if what else ""
        )


def format_stats() -> dict[tuple[str, str, str], dict[str, int]]:
    """Decisions so far: ``{(direction, form, reason): {"count": n, "bytes": b}}``.

    ``direction`` is ``"to_elixir"`` (results) or ``"from_elixir"`` (arguments);
    ``form`` ``"packed"``, ``"records"``, ``"custom"``, ``"etf"`` (a candidate, or a
    list that looked like one, sent as ETF), ``"standard"`` (a custom type sent in its
    standard form because its serializer failed), or for a result that could not get a slice
    the form it went inline in (``"raw"``, ``"tensor"``, ``"arrow"``, ``"packed"``,
    ``"records"``, ``"custom"``); ``reason`` why: ``"auto"`` (the auto policy's minimum
    was reached), ``"forced"`` (``format: packed``/``arrow``), ``"registered"``,
    ``"encode_failed"``, the code of what made a list unsuitable (``"mixed_numbers"``,
    ``"different_keys"``...), ``"arena_full"``, ``"no_tickets"``, ``"no_space"`` or
    ``"too_large"`` (a result at or above the threshold sent inline), or for arguments
    ``"inline"``/``"slice"``. ``bytes``: the payload (packed data, Arrow stream, serializer
    bytes; the ETF size for ``"etf"``).

    In a worker, the BEAM reads them with an ordinary call:
    ``{:call, id, "beambridge", "format_stats", ...}``.
    """
    return {key: dict(entry) for key, entry in _stats.items()}


def reset_format_stats() -> None:
    """Forget every count (tests)."""
    _stats.clear()
