"""What can be learnt of a frame without reading its payload (protocol/SPEC.md §5): its
header, its metadata read as data, and its provenance block (§5.4), as a dict
(`build`), from a file or a live slice (`read_file`), and as the JSON text the inspect
commands print (`to_json`, the same from Elixir's ``mix beambridge.inspect``).

The payload is never read, so its checksum is never verified: ``checksum`` is
``"not_verified"`` (or ``"none"`` when the frame has no checksum).

>>> from beambridge.header import encode_frame
>>> d = describe_bytes(encode_frame(b"abc", metadata=b"m"))
>>> d["format"], d["lengths"]["payload"], d["checksum"]
('raw', 3, 'not_verified')
"""

from __future__ import annotations

import json
import mmap
import os
import re
import time
from typing import Any

from . import registry
from .errors import BridgeError, EtfError
from .etf import Atom
from .etf import decode as etf_decode
from .header import FLAG_PAYLOAD_CHECKSUM, Header, validate_header
from .provenance import Block, as_text, read_block

__all__ = ["build", "describe_bytes", "read_file", "to_json"]

_FORMAT_NAMES = {code: name for name, code in registry.FORMATS.items()}
_CODEC_NAMES = {code: name for name, code in registry.CODECS.items()}
_HANDLE = re.compile(r"^(.*)@(\d+)$")


def build(
    header: Header,
    metadata: bytes,
    block: Block | BridgeError | None,
    frame_size: int,
    handle: str | None = None,
) -> dict[str, Any]:
    """The description of a frame whose ``header`` passed header validation."""
    error = block if isinstance(block, BridgeError) else None
    prov = (Block() if not isinstance(block, Block) else block).describe()
    descriptor = _descriptor(metadata)
    return {
        "format": _FORMAT_NAMES.get(int(header.format), "unknown"),
        "codec": _CODEC_NAMES.get(int(header.codec), "unknown"),
        "version": f"{header.version_major}.{header.version_minor}",
        "schema": {
            "id": header.schema_id,
            "version": header.schema_version,
            "name": _schema_name(descriptor),
        },
        "descriptor": descriptor,
        "lengths": {
            "frame": frame_size,
            "metadata": header.metadata_length,
            "provenance": header.provenance_length,
            "payload": header.payload_length,
            "decoded": header.decoded_length,
        },
        "payload_offset": header.payload_offset,
        "generation": header.generation,
        "checksum": "not_verified" if header.flags & FLAG_PAYLOAD_CHECKSUM else "none",
        "payload_checksum": header.payload_checksum,
        "frame_id": header.frame_id,
        "created_at": header.created_at,
        "producer": prov["producer"],
        "meta": prov["meta"],
        "lineage": prov["lineage"],
        "summary": prov["summary"],
        "meta_ref": prov["meta_ref"],
        "provenance_error": None
        if error is None
        else {"reason": error.reason, "field": error.field},
        "handle": handle,
    }


def _block_or_error(header: Header, frame: Any) -> Block | BridgeError | None:
    try:
        block = read_block(header, frame)
        if block is not None:
            block.describe()  # every section's body is read now: its errors are the block's
        return block
    except BridgeError as err:
        return err


def describe_bytes(frame: Any, handle: str | None = None) -> dict[str, Any]:
    """The description of the frame that starts ``frame`` (bytes-like; the payload may
    be missing: only the header, metadata and provenance block are read)."""
    with memoryview(frame).cast("B") as view:
        header, metadata = validate_header(view, view.nbytes)
        block = _block_or_error(header, view)
        return build(header, metadata, block, view.nbytes, handle)


def read_file(path: str) -> dict[str, Any]:
    """The description of the frame in the file ``path`` (a dump), or of the live slice
    ``/proc/PID/fd/FD@OFFSET``: the file is mapped and only the header, the metadata and
    the provenance block are read, never the payload. `HeaderError` when the header does
    not validate; ``OSError`` when the file cannot be read."""
    match = _HANDLE.match(path)
    file, offset = (match.group(1), int(match.group(2))) if match else (path, 0)
    with open(file, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= offset:
            return describe_bytes(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)[offset:]
            try:
                return describe_bytes(view, path if match else None)
            finally:
                view.release()


def _descriptor(metadata: bytes) -> Any:
    """The format's metadata as data: ETF (Arrow counts, records, typed schemas) or JSON
    (tensor, custom types); None for anything else."""
    if not metadata:
        return None
    if metadata[0] == 131:
        try:
            return as_text(etf_decode(metadata))
        except EtfError:
            return None
    if metadata[:1] == b"{":
        try:
            return json.loads(metadata)
        except ValueError:
            return None
    return None


def _schema_name(descriptor: Any) -> str | None:
    if isinstance(descriptor, dict) and isinstance(descriptor.get("type"), str):
        return str(descriptor["type"])
    if (
        isinstance(descriptor, tuple)
        and len(descriptor) == 2
        and all(isinstance(x, str) for x in descriptor)
    ):
        return str(descriptor[0])
    return None


def to_json(description: dict[str, Any]) -> str:
    """The description as JSON (keys sorted, two-space indent), as the inspect commands
    print it: ``created_at`` in nanoseconds since the epoch, ``created_at_utc`` an ISO
    8601 time with nanoseconds, tuples as lists, atoms as strings, binaries that are not
    UTF-8 as ``{"hex": ...}``."""
    ns = description["created_at"]
    utc = None
    if ns:
        secs = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 1_000_000_000))
        utc = f"{secs}.{ns % 1_000_000_000:09d}Z"
    return json.dumps({**_jsonable(description), "created_at_utc": utc}, indent=2, sort_keys=True)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {_key(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, Atom):
        return str(v)
    if isinstance(v, (bytes, bytearray, memoryview)):
        return {"hex": bytes(v).hex()}
    return v


def _key(k: Any) -> str:
    if isinstance(k, (bytes, bytearray)):
        try:
            return bytes(k).decode()
        except UnicodeDecodeError:
            return bytes(k).hex().upper()
    return str(k)
