"""beambridge: call Python from Elixir and move data between them through POSIX shared
memory, zero-copy. This package is the Python side; ``protocol/SPEC.md`` is the contract.

>>> import beambridge
>>> with beambridge.Region.create_for_frame(3, prefix="bbdoc") as region:
...     _ = region.write_frame(b"abc", format=beambridge.Format.RAW)
...     with region.read_frame() as frame:
...         bytes(frame.payload)
b'abc'
"""

from . import codecs as codecs
from .control import ControlBlock, WriterState
from .errors import BridgeError, ChecksumError, EtfError, HeaderError, LeaseError, RegionError
from .errors import FormatError as FormatError
from .etf import Atom
from .frame import Frame
from .header import (
    DEFAULT_MAX_DECODED_LENGTH,
    FLAG_PAYLOAD_CHECKSUM,
    HEADER_SIZE,
    MAGIC,
    MAX_METADATA,
    Codec,
    Format,
    Header,
    decode_frame,
    encode_frame,
    pack_header,
    payload_offset_for,
    validate_header,
)
from .reaper import reap_stale
from .region import Region

__all__ = [
    "DEFAULT_MAX_DECODED_LENGTH",
    "FLAG_PAYLOAD_CHECKSUM",
    "HEADER_SIZE",
    "MAGIC",
    "MAX_METADATA",
    "Atom",
    "BridgeError",
    "ChecksumError",
    "Codec",
    "ControlBlock",
    "EtfError",
    "Format",
    "Frame",
    "Header",
    "HeaderError",
    "LeaseError",
    "Region",
    "RegionError",
    "WriterState",
    "codecs",
    "decode_frame",
    "encode_frame",
    "pack_header",
    "payload_offset_for",
    "reap_stale",
    "validate_header",
]

__version__ = "0.1.0"
