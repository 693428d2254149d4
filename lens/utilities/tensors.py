"""Small tensor helpers with TransformerLens's names and behaviour (``lens.utils.to_numpy`` & co.).

>>> to_numpy(torch.ones(2)).tolist()
[1.0, 1.0]
>>> get_corner(torch.arange(16).reshape(4, 4), n=2)
tensor([[0, 1],
        [4, 5]])
>>> is_lower_triangular(torch.tril(torch.ones(3, 3)))
True
"""

from __future__ import annotations

from typing import Any

import einops
import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

__all__ = [
    "check_structure",
    "composition_scores",
    "get_corner",
    "get_cumsum_along_dim",
    "is_lower_triangular",
    "is_square",
    "remove_batch_dim",
    "repeat_along_head_dimension",
    "to_numpy",
    "transpose",
]


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array from a tensor (detached, on CPU), a list/tuple, a number, a str or an array.

    numpy has no bfloat16: such tensors come back as float32.

    >>> to_numpy([1, 2]).shape
    (2,)
    """
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, (int, float, bool, str, np.generic)):
        return np.array(tensor)
    raise ValueError(f"Input to to_numpy has invalid type: {type(tensor)}")


def get_corner(tensor: Any, n: int = 3) -> Tensor:
    """The top-left ``n x n x ...`` corner (the first ``n`` along every dimension), to eyeball values.

    A ``FactoredMatrix`` gives the corner of its product, as a tensor.

    >>> get_corner(torch.zeros(5, 5, 5), n=2).shape
    torch.Size([2, 2, 2])
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    if isinstance(tensor, Tensor):
        return tensor[tuple(slice(n) for _ in range(tensor.ndim))]
    if hasattr(tensor, "AB") and hasattr(tensor, "ndim"):  # a FactoredMatrix
        return tensor[tuple(slice(n) for _ in range(tensor.ndim))].AB
    raise TypeError(f"get_corner takes a tensor or a FactoredMatrix, got {type(tensor).__name__}")


def transpose(tensor: Float[Tensor, "... a b"]) -> Float[Tensor, "... b a"]:
    """Swap the last two dimensions, whatever the leading ones.

    >>> transpose(torch.zeros(2, 3, 4)).shape
    torch.Size([2, 4, 3])
    """
    return tensor.transpose(-1, -2)


def is_square(x: Tensor) -> bool:
    """True for a 2-D tensor with as many rows as columns.

    >>> is_square(torch.zeros(3, 3)), is_square(torch.zeros(2, 3, 3))
    (True, False)
    """
    return x.ndim == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """True for a square matrix with only zeros above the diagonal.

    >>> is_lower_triangular(torch.ones(2, 2))
    False
    """
    return is_square(x) and bool(x.equal(x.tril()))


def check_structure(t1: Tensor, t2: Tensor, *, verbose: bool = False) -> None:
    """Print whether two matrices order their neighbouring rows and columns the same way (a debugging aid).

    For each pair of adjacent rows (then columns) compares ``t[i] >= t[i + 1]`` elementwise in both
    matrices; prints ``PASSED``, or the first kind of mismatch with its indices.

    >>> check_structure(torch.eye(2), 2 * torch.eye(2))
    PASSED
    """
    if t1.ndim != 2 or t1.shape != t2.shape:
        raise ValueError(
            f"check_structure needs two 2-D tensors of one shape, got {tuple(t1.shape)} and {tuple(t2.shape)}"
        )

    def mismatches(a: Tensor, b: Tensor, what: str) -> list[int]:
        if verbose:
            print(f"Checking {what}")
        out = []
        for i in range(a.shape[0] - 1):
            ra, rb = a[i].ge(a[i + 1]), b[i].ge(b[i + 1])
            if bool((ra != rb).any()):
                out.append(i)
                if verbose:
                    print(f"\t{what} {i}:{i + 1}")
                    print(f"\tt1: {ra.tolist()}")
                    print(f"\tt2: {rb.tolist()}")
        return out

    rows = mismatches(t1, t2, "rows")
    cols = mismatches(t1.T, t2.T, "columns")
    if rows:
        print(f"row mismatch: {rows}")
    elif cols:
        print(f"column mismatch: {cols}")
    else:
        print("PASSED")


def remove_batch_dim(tensor: Float[Tensor, "1 ..."]) -> Float[Tensor, "..."]:
    """Drop the first dimension if it has size 1; otherwise return the tensor unchanged.

    >>> remove_batch_dim(torch.zeros(1, 4)).shape, remove_batch_dim(torch.zeros(2, 4)).shape
    (torch.Size([4]), torch.Size([2, 4]))
    """
    return tensor.squeeze(0) if tensor.ndim and tensor.shape[0] == 1 else tensor


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along ``dim``; ``reverse=True`` sums from the end (``out[i] = sum(t[i:])``).

    >>> get_cumsum_along_dim(torch.tensor([1, 2, 3]), 0, reverse=True)
    tensor([6, 5, 3])
    """
    if reverse:
        return tensor.flip(dim).cumsum(dim).flip(dim)
    return tensor.cumsum(dim)


def repeat_along_head_dimension(
    tensor: Float[Tensor, "batch pos d_model"], n_heads: int, clone_tensor: bool = True
) -> Float[Tensor, "batch pos n_heads d_model"]:
    """``[batch, pos, d_model] -> [batch, pos, n_heads, d_model]`` (one copy per head).

    Without ``clone_tensor`` the result is an expanded view sharing storage (cheap, but in-place edits of
    one head would touch all of them).

    >>> repeat_along_head_dimension(torch.zeros(2, 3, 8), n_heads=4).shape
    torch.Size([2, 3, 4, 8])
    """
    if tensor.ndim != 3:
        raise ValueError(f"expected a [batch, pos, d_model] tensor, got shape {tuple(tensor.shape)}")
    out = einops.repeat(tensor, "batch pos d_model -> batch pos n_heads d_model", n_heads=n_heads)
    return out.clone() if clone_tensor else out


def composition_scores(left: Any, right: Any, broadcast_dims: bool = True) -> Float[Tensor, "..."]:
    """How much ``left @ right`` keeps of the two maps: ``|L R|_F / (|L|_F |R|_F)`` for two FactoredMatrix.

    With ``broadcast_dims`` the leading dims of ``left`` and of ``right`` are kept apart (the result has
    ``left``'s leading dims followed by ``right``'s), e.g. every head of one layer against every head of
    another; otherwise they broadcast together. See ``HookedTransformer.all_composition_scores``.

    >>> composition_scores(model.OV[0], model.QK[1].T).shape   # [n_heads, n_heads]  # doctest: +SKIP
    """
    if broadcast_dims:
        l_lead, r_lead = left.ndim - 2, right.ndim - 2
        for i in range(l_lead):
            right = right.unsqueeze(i)
        for i in range(r_lead):
            left = left.unsqueeze(i + l_lead)
    if left.rdim != right.ldim:
        raise ValueError(
            f"composition scores need left.rdim == right.ldim, got left {tuple(left.shape)} and right "
            f"{tuple(right.shape)}"
        )
    new_left, new_right = left.collapse_l(), right.collapse_r()
    l_norms = new_left.norm(dim=[-2, -1])
    r_norms = new_right.norm(dim=[-2, -1])
    return (new_left @ new_right).norm(dim=[-2, -1]) / r_norms / l_norms
