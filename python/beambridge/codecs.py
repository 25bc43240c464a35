"""Payload compression (protocol/SPEC.md §5.1 ``codec``, §6 checks 14-15): `compress`
writes a payload in one of the registry's codecs, `decompress` reads one back.

``lz4_frame`` is an LZ4 frame that stores its content size and a content checksum,
``zstd`` a Zstandard frame with its content size and checksum, ``gzip`` one gzip member
(RFC 1952) whose trailer holds a CRC-32 and the length modulo 2^32; ``none`` is the
payload as is. A codec is a `Codec` or its code. The fast levels are the defaults:
LZ4's default, Zstandard 1, gzip 1. The packages ``lz4`` and ``zstandard`` (dependencies
of beambridge) are imported on first use; without them their codecs are
``unknown_codec``.

`decompress` reads what a peer wrote and trusts none of it. It refuses a
``decoded_length`` above ``max_decoded`` (``decoded_too_large``), and a payload whose own
declared size differs from ``decoded_length``, before it allocates anything; it then
decompresses into at most ``decoded_length + 1`` bytes and accepts only exactly
``decoded_length`` bytes from a stream that ends where the payload ends. Anything else (a
flipped bit, a cut, trailing bytes, a length that lies) is a `HeaderError` with reason
``bad_compressed_data``, never a library's own exception.

>>> packed = compress(Codec.ZSTD, b"abc" * 1000)
>>> len(packed) < 100, decompress(Codec.ZSTD, packed, 3000) == b"abc" * 1000
(True, True)
>>> decompress(Codec.GZIP, compress(Codec.GZIP, b"hello")[:-1], 5)
Traceback (most recent call last):
...
beambridge.errors.HeaderError: bad_compressed_data: the gzip payload of 24 bytes declares ...
>>> decompress(Codec.LZ4_FRAME, b"", 1 << 40)
Traceback (most recent call last):
...
beambridge.errors.HeaderError: decoded_too_large: field decoded_length is 1099511627776, ...
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import HeaderError
from .header import DEFAULT_MAX_DECODED_LENGTH, Codec
from .registry import CODECS

if TYPE_CHECKING:
    import numpy as np

__all__ = ["CODECS", "CODEC_NAMES", "compress", "decompress"]

#: Codec code -> the registry's name of it (``{0: "none", 1: "lz4_frame", ...}``).
CODEC_NAMES: Mapping[int, str] = MappingProxyType({code: name for name, code in CODECS.items()})
_NONE, _LZ4, _ZSTD, _GZIP = (CODECS[n] for n in ("none", "lz4_frame", "zstd", "gzip"))
_MODULES = {_LZ4: "lz4.frame", _ZSTD: "zstandard"}
#: The smallest gzip member: a 10-byte header and an 8-byte trailer (CRC-32, ISIZE).
_GZIP_MIN = 18
#: The largest Zstandard frame of no content: an 18-byte frame header, one 3-byte empty
#: block and a 4-byte checksum.
_ZSTD_EMPTY_MAX = 25


def compress(
    codec: Codec | int,
    data: bytes | bytearray | memoryview | np.ndarray[Any, Any],
    level: int | None = None,
) -> bytes:
    """``data`` (any C-contiguous buffer, read as bytes) compressed with ``codec`` at
    ``level`` (``None``: the codec's fast default); codec none returns a copy.

    >>> compress(Codec.NONE, memoryview(b"abc"))
    b'abc'
    >>> compress(7, b"")
    Traceback (most recent call last):
    ...
    beambridge.errors.HeaderError: unknown_codec: field codec is 7, expected 3
    """
    code = _code(codec)
    view = _bytes(data)
    if code == _NONE:
        return bytes(view)
    if code == _GZIP:
        packer = zlib.compressobj(1 if level is None else level, zlib.DEFLATED, 31)
        return packer.compress(view) + packer.flush()
    lib = _library(code)
    packed: bytes
    if code == _LZ4:
        level = 0 if level is None else level
        packed = lib.compress(view, compression_level=level, content_checksum=True, store_size=True)
    else:
        level = 1 if level is None else level
        zstd = lib.ZstdCompressor(level=level, write_content_size=True, write_checksum=True)
        packed = zstd.compress(view)
    return packed


def decompress(
    codec: Codec | int,
    data: bytes | bytearray | memoryview | np.ndarray[Any, Any],
    decoded_length: int,
    max_decoded: int = DEFAULT_MAX_DECODED_LENGTH,
) -> bytes:
    """The ``decoded_length`` bytes that payload ``data`` of ``codec`` holds; a
    `HeaderError` unless it holds exactly that (see the module's text).

    >>> decompress(Codec.NONE, b"abc", 4)
    Traceback (most recent call last):
    ...
    beambridge.errors.HeaderError: bad_decoded_length: field decoded_length is 4, expected 3
    """
    code = _code(codec)
    view = _bytes(data)
    if decoded_length < 0:
        raise ValueError(f"decoded_length is a u64, not {decoded_length}")
    if code == _NONE:
        if len(view) != decoded_length:
            raise HeaderError("bad_decoded_length", "decoded_length", decoded_length, len(view))
        return bytes(view)
    if decoded_length > max_decoded:
        raise HeaderError("decoded_too_large", "decoded_length", decoded_length, max_decoded)
    most = _MAX_EXPANSION[code](len(view))
    if decoded_length > most:  # before any library allocates the output
        raise _bad(code, view, decoded_length, None, f"could decode to {most} bytes at most")
    lib = zlib if code == _GZIP else _library(code)
    reader = {_LZ4: _lz4, _ZSTD: _zstd, _GZIP: _gzip}[code]
    try:
        return reader(lib, view, decoded_length)
    except (HeaderError, MemoryError):
        raise
    except Exception as exc:
        raise _bad(code, view, decoded_length, None, f"is refused by its decoder ({exc})") from None


#: The most bytes a payload of n bytes can decode to: an LZ4 sequence's length bytes add
#: 255 each, deflate makes at most 258 bytes of 2 bits (1032 a byte), a Zstandard block
#: of at least 3 bytes at most 128 KiB. A length above that lies, whatever the payload
#: declares, and is refused before anything is allocated (as the NIF does).
_MAX_EXPANSION = {
    _LZ4: lambda n: 255 * n,
    _ZSTD: lambda n: (n // 3 + 1) * 131072,
    _GZIP: lambda n: 1032 * n,
}


def _lz4(lib: Any, view: memoryview, n: int) -> bytes:
    # content_size 0 is also what a frame without one reports: it bounds the output too
    declared = lib.get_frame_info(view)["content_size"]
    if declared != n:
        raise _bad(_LZ4, view, n, declared, f"declares {declared} bytes in its frame header")
    reader = lib.LZ4FrameDecompressor()
    out = reader.decompress(view, max_length=n + 1)
    _check_end(_LZ4, view, n, out, reader.eof, reader.unused_data)
    return bytes(out)


def _zstd(lib: Any, view: memoryview, n: int) -> bytes:
    declared = lib.frame_content_size(view)
    if declared != n:
        said = "does not declare" if declared == -1 else f"declares {declared} bytes as"
        raise _bad(_ZSTD, view, n, declared, f"{said} its content size")
    if n:
        # the output buffer is the declared size; extra input is an error
        out = lib.ZstdDecompressor().decompress(view, allow_extra_data=False)
        _check_end(_ZSTD, view, n, out, True, b"")
        return bytes(out)
    # ZstdDecompressor.decompress returns b"" for a declared size of 0 without reading
    # the frame: the streaming reader reads it, and a short input bounds what it can make
    if len(view) > _ZSTD_EMPTY_MAX:
        raise _bad(
            _ZSTD, view, n, None, f"is longer than a frame of no content ({_ZSTD_EMPTY_MAX})"
        )
    reader = lib.ZstdDecompressor().decompressobj()
    out = reader.decompress(view)
    _check_end(_ZSTD, view, n, out, reader.eof, reader.unused_data)
    return bytes(out)


def _gzip(lib: Any, view: memoryview, n: int) -> bytes:
    if len(view) < _GZIP_MIN or view[0] != 0x1F or view[1] != 0x8B:
        raise _bad(_GZIP, view, n, None, "is not a gzip member (1f 8b, at least 18 bytes)")
    declared = int.from_bytes(view[-4:], "little")
    if declared != n % 2**32:
        raise _bad(_GZIP, view, n, declared, f"declares {declared} bytes (mod 2^32) as its size")
    reader = lib.decompressobj(31)
    out = reader.decompress(view, n + 1)
    _check_end(_GZIP, view, n, out, reader.eof, reader.unconsumed_tail or reader.unused_data)
    return bytes(out)


def _check_end(code: int, view: memoryview, n: int, out: Any, eof: bool, rest: Any) -> None:
    if len(out) != n:
        more = " or more" if len(out) > n else ""
        raise _bad(code, view, n, len(out), f"decodes to {len(out)} bytes{more}")
    if not eof:
        raise _bad(code, view, n, len(out), "stops before its end")
    if rest:
        raise _bad(code, view, n, len(out), f"leaves {len(rest)} byte(s) unread after its end")


def _bad(code: int, view: memoryview, n: int, found: Any, what: str) -> HeaderError:
    return HeaderError(
        "bad_compressed_data",
        "payload",
        found,
        n,
        f"bad_compressed_data: the {CODEC_NAMES[code]} payload of {len(view)} bytes {what}, "
        f"where decoded_length is {n}: the payload was corrupted or truncated on its way "
        "(a flipped bit, a cut, bytes added) or decoded_length lies",
    )


def _code(codec: Codec | int) -> int:
    code = int(codec)
    if code not in CODEC_NAMES:
        raise HeaderError("unknown_codec", "codec", code, max(CODEC_NAMES))
    return code


def _bytes(data: Any) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _library(code: int) -> Any:
    try:
        return importlib.import_module(_MODULES[code])
    except ImportError:
        package = _MODULES[code].split(".")[0]
        message = (
            f"unknown_codec: codec {CODEC_NAMES[code]} needs the Python package {package}, "
            f"which is not installed (pip install {package})"
        )
        raise HeaderError("unknown_codec", "codec", code, None, message) from None
