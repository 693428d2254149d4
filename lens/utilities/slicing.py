"""`Slice`: TransformerLens's slice object, the ``pos_slice=`` / ``batch_slice=`` / ``neuron_slice=`` argument.

Why a custom slice: Python and torch slices never drop a dimension, while analysis often wants "the last
position" as ``[batch, d_model]``. A :class:`Slice` is built from any :data:`SliceInput`:

- ``None``: everything (mode ``"identity"``; it never adds a dimension),
- an ``int``: that index, the dimension is dropped (mode ``"int"``),
- a ``tuple`` of ints: ``slice(*tuple)``, so ``(k,)`` is ``[:k]``, ``(a, b)`` is ``[a:b]``, ``(a, b, s)`` is
  ``[a:b:s]`` (mode ``"slice"``); a Python ``slice`` is taken as is,
- a ``list``, ``range``, ``torch.Tensor`` or ``numpy.ndarray``: those indices (or a boolean mask), in that
  order (mode ``"array"``).

>>> Slice(-1).apply(torch.zeros(2, 5, 3), dim=-2).shape
torch.Size([2, 3])
>>> Slice((1, 4)).apply(torch.arange(6))
tensor([1, 2, 3])
>>> Slice((-2, None)).indices(5)   # the indices it selects in an axis of length 5
array([3, 4])
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["Slice", "SliceInput", "apply_slice"]

SliceInput = (
    int
    | tuple[int]
    | tuple[int, int]
    | tuple[int, int, int]
    | slice
    | list[int]
    | range
    | torch.Tensor
    | np.ndarray
    | None
)
"""What :class:`Slice` accepts: None, an int, a tuple ``(stop,)`` / ``(start, stop[, step])``, a slice,
or a list / range / tensor / numpy array of indices (or a boolean mask)."""

_HELP = "None, an int, a tuple (start, stop[, step]), a slice, or a list/range/tensor/numpy array of indices"


def _as_index_array(value: list | range | torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(list(value) if isinstance(value, range) else value)
    if array.ndim != 1:
        raise ValueError(f"Invalid input_slice: indices must be 1-D, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64)
    if array.dtype != np.bool_ and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"Invalid input_slice: indices must be integers or booleans, got dtype {array.dtype}")
    return array


class Slice:
    """A slice that may drop a dimension (see the module docs for the accepted inputs).

    Attributes: ``slice`` (an int, a ``slice`` or a numpy array) and ``mode`` (``"int"``, ``"slice"``,
    ``"array"`` or ``"identity"``), as in TransformerLens.

    >>> Slice((None, None, 2)).apply(torch.arange(5))
    tensor([0, 2, 4])
    """

    slice: int | slice | np.ndarray

    def __init__(self, input_slice: SliceInput = None):
        if isinstance(input_slice, Slice):
            self.slice, self.mode = input_slice.slice, input_slice.mode
        elif input_slice is None:
            self.slice, self.mode = slice(None), "identity"
        elif isinstance(input_slice, (bool, np.bool_)):
            raise ValueError(f"Invalid input_slice {input_slice!r}: a bool is not an index; expected {_HELP}")
        elif isinstance(input_slice, (int, np.integer)):
            self.slice, self.mode = int(input_slice), "int"
        elif isinstance(input_slice, tuple):
            if not 1 <= len(input_slice) <= 3 or not all(
                v is None or (isinstance(v, (int, np.integer)) and not isinstance(v, bool)) for v in input_slice
            ):
                raise ValueError(
                    f"Invalid input_slice {input_slice!r}: a tuple means slice(*tuple) and needs 1 to 3 ints"
                )
            self.slice, self.mode = slice(*input_slice), "slice"
        elif isinstance(input_slice, slice):
            self.slice, self.mode = input_slice, "slice"
        elif isinstance(input_slice, (torch.Tensor, np.ndarray)) and input_slice.ndim == 0:
            value = input_slice.item()
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Invalid input_slice {input_slice!r}: a 0-d index must hold an int")
            self.slice, self.mode = value, "int"
        elif isinstance(input_slice, (list, range, torch.Tensor, np.ndarray)):
            self.slice, self.mode = _as_index_array(input_slice), "array"
        else:
            raise ValueError(f"Invalid input_slice {input_slice!r} ({type(input_slice).__name__}); expected {_HELP}")

    def apply(self, tensor: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Index ``tensor`` along ``dim`` (negative dims count from the end).

        Out-of-range ints and indices raise IndexError naming the index and the dimension's size.

        >>> Slice([2, 0]).apply(torch.arange(4))
        tensor([2, 0])
        """
        if self.mode == "identity":
            return tensor
        size = tensor.shape[dim]
        if self.mode == "int":
            if not -size <= self.slice < size:
                raise IndexError(f"index {self.slice} is out of range for a dimension of size {size}")
            return tensor.select(dim, self.slice)
        index: list = [slice(None)] * tensor.ndim
        if self.mode == "array":
            array = self.slice
            if array.dtype == np.bool_:
                if array.shape[0] != size:
                    raise IndexError(
                        f"a boolean mask of length {array.shape[0]} cannot index a dimension of size {size}"
                    )
                array = np.flatnonzero(array)
            elif array.size and (array.min() < -size or array.max() >= size):
                raise IndexError(f"indices {array.tolist()} are out of range for a dimension of size {size}")
            index[dim] = torch.as_tensor(array % size if size else array, dtype=torch.long, device=tensor.device)
        else:
            index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The indices this slice selects, as a numpy int64 array.

        An int gives ``[that int]`` (as given, not normalised); any other mode needs the axis length
        ``max_ctx`` (negative bounds are resolved against it).

        >>> Slice((1, None)).indices(4)
        array([1, 2, 3])
        """
        if self.mode == "int":
            return np.array([self.slice], dtype=np.int64)
        if max_ctx is None:
            raise ValueError("max_ctx must be specified if slice is not an integer")
        return np.arange(max_ctx, dtype=np.int64)[self.slice]

    def __repr__(self) -> str:
        return f"Slice: {self.slice} Mode: {self.mode} "

    @classmethod
    def unwrap(cls, slice_input: Slice | SliceInput) -> Slice:
        """A :class:`Slice` from a Slice-like input; an int becomes ``[int]`` so the dimension is kept.

        >>> Slice.unwrap(3).mode
        'array'
        """
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, (int, np.integer)) and not isinstance(slice_input, (bool, np.bool_)):
            slice_input = [int(slice_input)]
        return cls(slice_input)


def apply_slice(tensor: torch.Tensor, slice_input: Slice | SliceInput, dim: int) -> torch.Tensor:
    """``Slice(slice_input).apply(tensor, dim)`` (a :class:`Slice` is used as is).

    >>> apply_slice(torch.zeros(2, 5, 3), -1, dim=-2).shape
    torch.Size([2, 3])
    """
    sl = slice_input if isinstance(slice_input, Slice) else Slice(slice_input)
    return sl.apply(tensor, dim)
