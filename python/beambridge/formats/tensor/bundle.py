"""`Bundle`: named tensors that cross the bridge together (protocol/formats/tensor.md,
schema 2), the Python side of ``%Bridge.Tensor.Bundle{}``.

>>> b = Bundle({"w": np.ones((2, 2)), "b": np.zeros(2)})
>>> isinstance(b, dict), sorted(b)
(True, ['b', 'w'])
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["Bundle"]


class Bundle(dict[str, np.ndarray[Any, Any]]):
    """Named tensors, name (``str``) -> ``ndarray``, like a model's state dict; they
    cross the bridge in one frame (one slice) with every tensor 64-byte aligned.

    Elixir's ``%Bridge.Tensor.Bundle{}`` arrives as a `Bundle` of read-only arrays;
    a handler returns one (``Bundle(model_state)``) to send ``%Bridge.Tensor.Bundle{}``
    back. A plain ``dict`` of arrays still travels as a plain map.

    >>> Bundle(step=np.array(7))["step"].item()
    7
    """

    __slots__ = ()
