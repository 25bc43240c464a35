"""The handlers a worker runs (protocol/SPEC.md §8.3): ``module.function`` of a call,
imported on first use and kept.

>>> Handlers().lookup(b"math", b"sqrt")(16.0)
4.0
>>> Handlers().lookup(b"math", b"nope")
Traceback (most recent call last):
...
beambridge.call_parts.Refused: module 'math' has no attribute 'nope'
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from typing import Any

from .call_parts import Refused

__all__ = ["Handlers"]


class Handlers:
    """The functions calls name, by ``(module, function)`` as the calls name them."""

    def __init__(self) -> None:
        self._functions: dict[tuple[Any, Any], Callable[..., Any]] = {}

    def lookup(self, module: Any, function: Any) -> Callable[..., Any]:
        """The function ``module.function`` (atoms or binaries), imported once; `Refused`
        (``bad_term``, ``no_module``, ``no_function``) when there is none."""
        key = (module, function)
        cached = self._functions.get(key)
        if cached is not None:
            return cached
        module_name, function_name = _name(module), _name(function)
        if module_name is None or function_name is None:
            raise Refused(
                "bad_term",
                "module and function must be atoms or binaries, "
                f"got {module!r:.100} and {function!r:.100}",
            )
        try:
            mod = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name or module_name.startswith(f"{exc.name}."):
                raise Refused(
                    "no_module",
                    f"cannot import module {module_name!r}: {exc} (sys.path: {sys.path})",
                ) from None
            raise Refused(
                "no_module", f"importing module {module_name!r} failed:\n{traceback.format_exc()}"
            ) from None
        except Exception:
            raise Refused(
                "no_module", f"importing module {module_name!r} failed:\n{traceback.format_exc()}"
            ) from None
        fn: Callable[..., Any] | None = getattr(mod, function_name, None)
        if fn is None or not callable(fn):
            what = "no attribute" if fn is None else f"a non-callable {type(fn).__name__}"
            raise Refused("no_function", f"module {module_name!r} has {what} {function_name!r}")
        self._functions[key] = fn
        return fn


def _name(value: Any) -> str | None:
    if isinstance(value, str):
        return str(value)
    if type(value) is bytes:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None
