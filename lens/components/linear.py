"""Input-major linear weights: the storage layout that makes batch-1 decoding fastest on CPU.

Every projection weight keeps the ``[out, in]`` *shape* of ``nn.Linear`` (so adapters, weight
processing and the TransformerLens-shaped views are unchanged), but is *stored* input-major: the
parameter is the transpose of a contiguous ``[in, out]`` tensor, the layout of GPT-2's ``Conv1D``
and of TransformerLens's ``W_in``. Decoding one token is a matrix-vector product that streams every
weight from memory, and on CPU BLAS streams an ``[in, out]`` matrix ``x @ W`` faster
than the ``[out, in]`` form ``F.linear`` uses (measured in docs/benchmarks.md). Weight loading and
processing write through ``copy_``, which keeps the strides; a weight given another layout (an
assignment, a tied embedding) still computes the same numbers, only not as fast.

>>> w = input_major(3, 2)           # shape [out=3, in=2], w.t() is contiguous
>>> w.shape, w.t().is_contiguous()
(torch.Size([3, 2]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn


def input_major(out_features: int, in_features: int, **kw) -> nn.Parameter:
    """An uninitialised ``[out, in]`` parameter stored as the transpose of a contiguous ``[in, out]``."""
    return nn.Parameter(torch.empty(in_features, out_features, **kw).t())


def linear(
    x: Float[Tensor, "... d_in"], weight: Float[Tensor, "d_out d_in"], bias: Float[Tensor, "d_out"] | None = None
) -> Float[Tensor, "... d_out"]:
    """``x @ weight.T + bias``: ``F.linear`` on a contiguous input.

    With an input-major ``weight``, ``weight.T`` is contiguous and ``F.linear`` on a contiguous input
    (of any rank) is one ``addmm(bias, x_2d, weight.T)``: the same call as GPT-2's ``Conv1D``, so on GPT-2
    weights lens and Hugging Face round identically, and the same numbers whatever the input's strides.
    """
    return F.linear(x.contiguous(), weight, bias)
