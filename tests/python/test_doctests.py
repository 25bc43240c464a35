"""The examples in the package's docstrings run: every module of the package is listed
(a module added without being listed here fails `test_every_module_is_listed`)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import beambridge
import pytest

MODULES = [
    "beambridge",
    "beambridge.errors",
    "beambridge.registry",
    "beambridge.header",
    "beambridge.header.layout",
    "beambridge.header.builder",
    "beambridge.header.validator",
    "beambridge.frame",
    "beambridge.frame_writer",
    "beambridge.codecs",
    "beambridge.provenance",
    "beambridge.call_record",
    "beambridge.description",
    "beambridge.__main__",
    "beambridge.etf",
    "beambridge.etf.atom",
    "beambridge.etf.tags",
    "beambridge.etf.decoding",
    "beambridge.etf.encoding",
    "beambridge.objects",
    "beambridge.arena",
    "beambridge.leases",
    "beambridge.control",
    "beambridge.control_shortcuts",
    "beambridge.terms",
    "beambridge.stats",
    "beambridge.decoder",
    "beambridge.encoder",
    "beambridge.encoder_formats",
    "beambridge.result_slices",
    "beambridge.calls",
    "beambridge.cancel",
    "beambridge.callbacks",
    "beambridge.callback_control",
    "beambridge.elixir",
    "beambridge.kept",
    "beambridge.pid",
    "beambridge.call_parts",
    "beambridge.handlers",
    "beambridge.cpus",
    "beambridge.lane",
    "beambridge.spin",
    "beambridge.channel",
    "beambridge.strings",
    "beambridge.types",
    "beambridge.ssz",
    "beambridge.versions",
    "beambridge.ssz_batch",
    "beambridge.ssz_fast",
    "beambridge.ssz_columns",
    "beambridge.schema_tables",
    "beambridge.streams",
    "beambridge.stream_control",
    "beambridge.stream_run",
    "beambridge.worker",
    "beambridge.serializers",
    "beambridge.formats.tensor",
    "beambridge.formats.tensor.dtype",
    "beambridge.formats.tensor.wire",
    "beambridge.formats.tensor.frames",
    "beambridge.formats.tensor.bundle",
    "beambridge.formats.tensor.coo",
    "beambridge.formats.arrow",
    "beambridge.formats.arrow.descriptor",
    "beambridge.formats.arrow.messages",
    "beambridge.formats.arrow.validation",
    "beambridge.formats.arrow.writer",
    "beambridge.formats.arrow.reader",
    "beambridge.formats.selection",
    "beambridge.formats.packed",
    "beambridge.formats.records",
    "beambridge.formats.ssz",
]
#: Modules without examples: a package docstring.
WITHOUT_EXAMPLES = {"beambridge.formats"}
#: Modules in C (when built): tested in tests/python/test_ssz_batch.py.
COMPILED = {"beambridge._sszc", "beambridge._pyheap"}


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


def test_every_module_is_listed() -> None:
    found = {
        info.name for info in pkgutil.walk_packages(beambridge.__path__, prefix="beambridge.")
    } | {"beambridge"}
    assert found - COMPILED == set(MODULES) | WITHOUT_EXAMPLES


def test_the_package_exports_what_handler_authors_use() -> None:
    names = set(beambridge.__all__)
    assert {
        "Atom",
        "Bundle",
        "COO",
        "register",
        "format_stats",
        "BridgeError",
        "ArenaError",
        "HeaderError",
        "EtfError",
        "FormatError",
        "TensorError",
        "UnsupportedDtypeError",
        "__version__",
    } <= names
    assert all(hasattr(beambridge, name) for name in names)
    for internal in ("Region", "ArenaSet", "pack_header", "Format", "PeerObject"):
        assert internal not in names and not hasattr(beambridge, internal)
