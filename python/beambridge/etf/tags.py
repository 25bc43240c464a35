"""The tags and limits of the External Term Format as the control channel uses it
(protocol/SPEC.md §8.2), shared by `beambridge.etf.decoding` and
`beambridge.etf.encoding`.

>>> tag_name(SMALL_TUPLE), tag_name(NEW_PID), tag_name(250)
('SMALL_TUPLE', 'NEW_PID', 'tag 250')
"""

from __future__ import annotations

__all__ = [
    "ATOM",
    "ATOM_UTF8",
    "BINARY",
    "INTEGER",
    "LARGE_BIG",
    "LARGE_TUPLE",
    "LIST",
    "MAP",
    "MAX_ATOM_CHARS",
    "MAX_BIG_BYTES",
    "MAX_DEPTH",
    "NEW_FLOAT",
    "NEW_PID",
    "NIL",
    "SMALL_ATOM",
    "SMALL_ATOM_UTF8",
    "SMALL_BIG",
    "SMALL_INTEGER",
    "SMALL_TUPLE",
    "STRING",
    "VERSION",
    "tag_name",
]

#: The version byte every term starts with.
VERSION = 131
#: Deepest nesting of lists, tuples and maps either side accepts (§8.2).
MAX_DEPTH = 512
#: Most digit bytes of a LARGE_BIG either side accepts (§8.2: 8 KiB).
MAX_BIG_BYTES = 8192
#: The BEAM's limit on an atom's length, in characters.
MAX_ATOM_CHARS = 255

# The tags §8.2 allows.
SMALL_INTEGER = 97
INTEGER = 98
NEW_FLOAT = 70
ATOM_UTF8 = 118
SMALL_ATOM_UTF8 = 119
ATOM = 100
SMALL_ATOM = 115
SMALL_TUPLE = 104
LARGE_TUPLE = 105
MAP = 116
NIL = 106
STRING = 107
LIST = 108
BINARY = 109
SMALL_BIG = 110
LARGE_BIG = 111
#: One of the refused tags, named for the messages that refuse them.
NEW_PID = 88

_NAMES = {
    SMALL_INTEGER: "SMALL_INTEGER",
    INTEGER: "INTEGER",
    NEW_FLOAT: "NEW_FLOAT",
    ATOM_UTF8: "ATOM_UTF8",
    SMALL_ATOM_UTF8: "SMALL_ATOM_UTF8",
    ATOM: "ATOM",
    SMALL_ATOM: "SMALL_ATOM",
    SMALL_TUPLE: "SMALL_TUPLE",
    LARGE_TUPLE: "LARGE_TUPLE",
    MAP: "MAP",
    NIL: "NIL",
    STRING: "STRING",
    LIST: "LIST",
    BINARY: "BINARY",
    SMALL_BIG: "SMALL_BIG",
    LARGE_BIG: "LARGE_BIG",
    # refused
    77: "BIT_BINARY",
    99: "FLOAT",
    80: "COMPRESSED",
    NEW_PID: "NEW_PID",
    103: "PID",
    89: "NEW_PORT",
    102: "PORT",
    120: "V4_PORT",
    90: "NEWER_REFERENCE",
    114: "NEW_REFERENCE",
    101: "REFERENCE",
    112: "NEW_FUN",
    113: "EXPORT",
    117: "FUN",
    82: "ATOM_CACHE_REF",
    68: "DIST_HEADER",
    121: "LOCAL",
}


def tag_name(tag: int) -> str:
    """The name of an ETF tag (``SMALL_TUPLE``), for messages; ``tag <n>`` for a byte
    that is no tag."""
    return _NAMES.get(tag, f"tag {tag}")
