"""`Atom`: the Python value of an Erlang atom (protocol/SPEC.md §10).

>>> Atom("ok"), Atom("ok") == "ok", isinstance(Atom("ok"), str)
(Atom('ok'), True, True)
"""

from __future__ import annotations

__all__ = ["Atom"]


class Atom(str):
    """An Erlang atom other than ``true``, ``false`` and ``nil`` (which are Python's
    ``True``, ``False`` and ``None``). A ``str`` subclass: ``Atom("ok") == "ok"``.

    A Python ``str`` travels as a binary; wrap it in `Atom` to send an atom, which the
    BEAM accepts only when it already exists there.

    >>> repr(Atom("error")), str(Atom("error"))
    ("Atom('error')", 'error')
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Atom({str.__repr__(self)})"
