"""The External Term Format encoder and decoder of the control channel (protocol/SPEC.md §8.2, §10).

`decode` (`beambridge.etf.decoding`) accepts only the tags §8.2 allows and refuses
everything else with `beambridge.errors.EtfError` (never another exception, never an
allocation the frame cannot justify); `encode` (`beambridge.etf.encoding`) turns the
Python values of §10 into ETF and refuses every other type with ``TypeError``. `Atom`
is the Python value of an Erlang atom; `beambridge.etf.tags` holds the tags and limits.

>>> encode((Atom("ok"), 1))
b'\\x83h\\x02w\\x02oka\\x01'
>>> decode(encode({Atom("a"): [1, -2**70], b"k": (True, 3.0)}))
{Atom('a'): [1, -1180591620717411303424], b'k': (True, 3.0)}
"""

from __future__ import annotations

from .atom import Atom
from .decoding import NOT_CACHED, cached_atom, decode
from .encoding import Encoder, encode, encode_binary, encode_int, encode_parts
from .tags import MAX_ATOM_CHARS, MAX_BIG_BYTES, MAX_DEPTH, VERSION

__all__ = [
    "MAX_ATOM_CHARS",
    "MAX_BIG_BYTES",
    "MAX_DEPTH",
    "NOT_CACHED",
    "VERSION",
    "Atom",
    "Encoder",
    "cached_atom",
    "decode",
    "encode",
    "encode_binary",
    "encode_int",
    "encode_parts",
]
