"""The examples in the package's docstrings run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["beambridge", "beambridge.errors", "beambridge.header", "beambridge.control",
           "beambridge.region", "beambridge.frame", "beambridge.reaper", "beambridge.etf",
           "beambridge.convert", "beambridge.codecs", "beambridge.formats.tensor",
           "beambridge.formats.arrow", "beambridge.formats.records"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0 or name == "beambridge.frame"
