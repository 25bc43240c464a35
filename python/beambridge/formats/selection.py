"""Format selection (protocol/SPEC.md §10.1), what `beambridge.formats.packed` and
`beambridge.formats.records` share: the auto policy's minimums and `Unsuitable`, the
reason a value is no number list, record list or column map.

Two forms let plain lists and maps travel as columns instead of one ETF term per value;
the receiver rebuilds exactly the value ETF would give (invariant 7: neither size nor
form changes a type). The Python side of ``Bridge.Format``.

>>> Unsuitable("too_short", "a number list has at least 2 elements").code
'too_short'
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_PACKED_MIN", "DEFAULT_RECORDS_MIN", "Unsuitable"]

#: Auto policy: a number list of at least this many elements goes packed. Results only:
#: where bench/formats.exs measured packing faster than ETF from Python to Elixir (the
#: BEAM, sending arguments, packs from 128).
DEFAULT_PACKED_MIN = 256
#: Auto policy: a record list or column map of at least this many cells goes as records
#: (measured like DEFAULT_PACKED_MIN; the BEAM sends records from 256 cells).
DEFAULT_RECORDS_MIN = 1024


@dataclass(frozen=True)
class Unsuitable:
    """Why a value is not a number list / record list / column map: ``code`` (a short
    reason, one of the registry's ``unsuitable`` codes, counted by the format
    statistics) and ``message`` (for the error a forced format gives)."""

    code: str
    message: str
