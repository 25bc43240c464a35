"""Typed-schema lists in frames (protocol/formats/ssz.md, "Batches"): a slice of kind
``schema_list`` holds an ``ssz`` frame whose payload is the SSZ list, whose metadata is
the ETF of ``{name, version}`` and whose header says the same: ``schema_id`` is
``xxh3_64`` of the name, ``schema_version`` is ``major * 65536 + minor``.

>>> meta, schema_id, version_code = frame_fields(b"truthgpt.ModelConfig", b"2.1")
>>> version_code
131073
>>> parse_metadata(meta, schema_id, version_code, "slice 0")
(b'truthgpt.ModelConfig', b'2.1')
>>> parse_metadata(meta, schema_id, 65536, "slice 0")
Traceback (most recent call last):
...
beambridge.errors.FormatError: bad_metadata: the ssz frame of slice 0 names schema \
'truthgpt.ModelConfig' version 2.1 in its metadata, but its header has schema_id \
... and schema_version 65536
"""

from __future__ import annotations

from typing import Any

from .. import etf
from ..errors import EtfError, FormatError
from ..serializers import schema_id
from ..versions import parse

__all__ = ["frame_fields", "parse_metadata", "version_code"]


def version_code(version: bytes) -> int:
    """``"major.minor"`` as the header's ``schema_version``: ``major * 65536 + minor``."""
    major, minor = parse(version.decode("ascii", "replace"))
    return (major << 16) | minor


def frame_fields(name: bytes, version: bytes) -> tuple[bytes, int, int]:
    """The metadata, ``schema_id`` and ``schema_version`` of the frame of a list of
    values of schema ``name`` at ``version``."""
    return etf.encode((name, version)), schema_id(name), version_code(version)


def parse_metadata(metadata: Any, sid: int, code: int, where: str) -> tuple[bytes, bytes]:
    """The ``{name, version}`` of an ``ssz`` frame, checked against its header;
    `FormatError` ``bad_metadata`` otherwise."""
    try:
        term = etf.decode(bytes(metadata), max_depth=2)
    except EtfError:
        term = None
    ok = type(term) is tuple and len(term) == 2 and all(type(x) is bytes for x in term)
    if ok:
        try:
            expected = (schema_id(term[0]), version_code(term[1]))
        except ValueError:
            ok = False
    if not ok:
        raise FormatError(
            "bad_metadata",
            "metadata",
            repr(term)[:80],
            None,
            f"bad_metadata: the ssz frame of {where} has metadata {term!r:.80}, "
            "not {name, version}",
        )
    if (sid, code) != expected:
        name, version = term[0].decode("utf-8", "replace"), term[1].decode("utf-8", "replace")
        raise FormatError(
            "bad_metadata",
            "schema_id",
            (sid, code),
            expected,
            f"bad_metadata: the ssz frame of {where} names schema {name!r} version {version} "
            f"in its metadata, but its header has schema_id {sid} and schema_version {code}",
        )
    return term[0], term[1]
