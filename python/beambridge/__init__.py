"""beambridge: call Python from Elixir and move data between them through shared memory,
zero-copy. This package is the Python side; ``protocol/SPEC.md`` and
``protocol/registry.json`` are the contract.

What a handler author uses is here: `Atom` (an Erlang atom), `Bundle` and `COO` (named
tensors and sparse arrays), `register` / `unregister` (custom types, see
`beambridge.serializers`), `format_stats`, streams (`checkpoint` marks a resumable
element of a stream handler, `Stream` is an argument the BEAM feeds, `StreamError`;
see `beambridge.streams`), typed schemas (`schema` declares a class of
`beambridge.types` fields, `to_ssz` and `from_ssz` give and read its SSZ bytes; see
`beambridge.ssz`), `keep` (a result object that stays in the worker for the session,
see `beambridge.kept`), `Pid` (an Elixir process; `beambridge.elixir` calls and sends
into Elixir), `CallCancelled` (raised in a handler whose call timed out), `meta` (the
user metadata of the call in flight, which its result frames carry; see
`beambridge.call_record`), and the error classes. The protocol's machinery
(frames, shared objects, the control channel) stays in its own modules.

>>> import beambridge
>>> beambridge.Atom("ok") == "ok", isinstance(beambridge.Atom("ok"), str)
(True, True)
>>> import numpy as np
>>> sorted(beambridge.Bundle({"w": np.ones(2), "b": np.zeros(2)}))
['b', 'w']
>>> issubclass(beambridge.TensorError, beambridge.EtfError)
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

# Nothing here imports NumPy: ``python -m beambridge.worker`` imports this package before
# it takes fds 1 and 2, and NumPy's import-time warnings must reach the BEAM's Logger.
from . import serializers as serializers
from .call_record import meta
from .cancel import CallCancelled
from .errors import (
    ArenaError,
    BridgeError,
    ChecksumError,
    EtfError,
    FormatError,
    FormatUnsuitableError,
    HeaderError,
    TensorError,
    UnsupportedDtypeError,
)
from .etf import Atom
from .kept import keep
from .pid import Pid
from .serializers import (
    SerializerError,
    SerializerFailedError,
    UnknownTypeError,
    UnsupportedVersionError,
    register,
    unregister,
)
from .ssz import from_ssz, schema, to_ssz
from .stats import format_stats, reset_format_stats
from .streams import Stream, StreamError, checkpoint
from .types import SchemaError

if TYPE_CHECKING:
    from .formats.tensor import COO, Bundle

__all__ = [
    "COO",
    "ArenaError",
    "Atom",
    "BridgeError",
    "Bundle",
    "CallCancelled",
    "ChecksumError",
    "EtfError",
    "FormatError",
    "FormatUnsuitableError",
    "HeaderError",
    "Pid",
    "SchemaError",
    "SerializerError",
    "SerializerFailedError",
    "Stream",
    "StreamError",
    "TensorError",
    "UnknownTypeError",
    "UnsupportedDtypeError",
    "UnsupportedVersionError",
    "__version__",
    "checkpoint",
    "format_stats",
    "from_ssz",
    "keep",
    "meta",
    "register",
    "reset_format_stats",
    "schema",
    "serializers",
    "to_ssz",
    "unregister",
]

__version__ = "0.1.0"

#: Names that need NumPy, imported on first use.
_TENSOR_NAMES = frozenset({"COO", "Bundle"})


def __getattr__(name: str) -> Any:
    if name in _TENSOR_NAMES:
        from .formats import tensor

        return getattr(tensor, name)
    raise AttributeError(f"module 'beambridge' has no attribute {name!r}")
