"""The examples in the package's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "beambridge",
    "beambridge.errors",
    "beambridge.header",
    "beambridge.control_block",
    "beambridge.region",
    "beambridge.frame",
    "beambridge.reaper",
    "beambridge.etf",
    "beambridge.objects",
    "beambridge.arena",
    "beambridge.leases",
    "beambridge.control",
    "beambridge.terms",
    "beambridge.stats",
    "beambridge.decoder",
    "beambridge.encoder",
    "beambridge.result_slices",
    "beambridge.calls",
    "beambridge.codecs",
    "beambridge.formats.tensor",
    "beambridge.formats.arrow",
    "beambridge.formats.records",
]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name == "beambridge.frame"


def test_the_package_exports_what_handler_authors_use() -> None:
    import beambridge

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
        "__version__",
    } <= names
    assert all(hasattr(beambridge, name) for name in names)
    for internal in ("Region", "ControlBlock", "pack_header", "Format", "reap_stale"):
        assert internal not in names and not hasattr(beambridge, internal)
