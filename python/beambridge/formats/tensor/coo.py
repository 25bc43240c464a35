"""`COO`: a sparse array in coordinate format (protocol/formats/tensor.md, schema 3),
the Python side of ``%Bridge.Tensor.COO{}``.

>>> c = COO(np.array([[0, 1], [2, 0]]), np.array([5.0, 7.0]), (2, 3))
>>> c.nnz, c.todense().tolist()
(2, [[0.0, 0.0, 5.0], [7.0, 0.0, 0.0]])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import TensorError
from .dtype import MAX_NDIM

__all__ = ["COO", "coo_from_parts"]


@dataclass(frozen=True, eq=False)
class COO:
    """A sparse array in coordinate format: ``indices`` (integers, shape ``(ndim,
    nnz)``), ``values`` (shape ``(nnz,)``) and the dense ``shape``. It crosses the
    bridge as Elixir's ``%Bridge.Tensor.COO{}``; both parts keep their dtypes.
    ``ValueError`` when the parts do not fit together.

    >>> COO(np.array([[0, 3]]), np.array([1.0, 2.0]), (3,))
    Traceback (most recent call last):
    ...
    ValueError: COO indices of axis 0 run from 0 to 3, outside 0..2
    """

    indices: np.ndarray[Any, Any]
    values: np.ndarray[Any, Any]
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        _check(self.indices, self.values, self.shape, ValueError)

    @property
    def nnz(self) -> int:
        """The number of stored values."""
        return int(self.values.shape[0])

    def todense(self) -> np.ndarray[Any, Any]:
        """The dense array (duplicates are summed for numbers, the last one wins
        otherwise)."""
        out = np.zeros(self.shape, dtype=self.values.dtype)
        where = tuple(self.indices.astype(np.intp))
        if self.values.dtype.kind in "biufc" and self.values.dtype.fields is None:
            np.add.at(out, where, self.values)
        else:
            out[where] = self.values
        return out

    @classmethod
    def from_dense(cls, arr: Any) -> COO:
        """The non-zero entries of ``arr`` (int64 indices).

        >>> COO.from_dense(np.array([[0, 3], [4, 0]])).indices.tolist()
        [[0, 1], [1, 0]]
        """
        a = np.asarray(arr)
        idx = np.nonzero(a)
        indices = np.array(idx, dtype=np.int64).reshape(a.ndim, -1)
        return cls(indices, a[idx], tuple(int(d) for d in a.shape))


def coo_from_parts(indices: Any, values: Any, shape: tuple[int, ...]) -> COO:
    """A `COO` from arrays received from the peer (`beambridge.errors.TensorError`
    ``bad_term``, field ``coo``, if they do not fit together)."""

    def error(message: str) -> Exception:
        return TensorError("bad_term", "coo", None, None, f"bad_term: {message}")

    _check(indices, values, shape, error)
    coo = object.__new__(COO)
    object.__setattr__(coo, "indices", indices)
    object.__setattr__(coo, "values", values)
    object.__setattr__(coo, "shape", shape)
    return coo


def _check(indices: Any, values: Any, shape: Any, error: Callable[[str], Exception]) -> None:
    if not isinstance(indices, np.ndarray) or not isinstance(values, np.ndarray):
        raise error("COO indices and values must be numpy arrays")
    if indices.dtype.kind not in "iu" or indices.ndim != 2:
        raise error(
            f"COO indices must be a 2-D integer array (ndim, nnz), got dtype {indices.dtype} "
            f"shape {indices.shape}"
        )
    if type(shape) is not tuple or not all(type(d) is int and d >= 0 for d in shape):
        raise error(f"COO shape must be a tuple of non-negative ints, got {shape!r}")
    if len(shape) > MAX_NDIM or indices.shape[0] != len(shape):
        raise error(
            f"COO indices have {indices.shape[0]} rows for a shape of {len(shape)} dimensions"
        )
    if values.ndim != 1 or values.shape[0] != indices.shape[1]:
        raise error(
            f"COO values must be 1-D with one value per index column ({indices.shape[1]}), "
            f"got shape {values.shape}"
        )
    if indices.size:
        low = indices.min(axis=1)
        high = indices.max(axis=1)
        for axis, dim in enumerate(shape):
            if int(low[axis]) < 0 or int(high[axis]) >= dim:
                raise error(
                    f"COO indices of axis {axis} run from {int(low[axis])} to "
                    f"{int(high[axis])}, outside 0..{dim - 1}"
                )
