"""Weight initialisation with TransformerLens's fan convention (``lens.utils.init_kaiming_uniform_`` & co.).

Why not ``torch.nn.init`` directly: torch reads fans from ``[d_out, d_in]`` weights, while TransformerLens-
shaped weights are ``[d_in, d_out]`` (``W_in``) or ``[n_heads, d_model, d_head]`` (``W_Q``). Here:

- 1-D ``[n]``: fan_in 1, fan_out n;
- 2-D ``[d_in, d_out]``: fan_in ``d_in``, fan_out ``d_out``;
- 3-D ``[n_heads, d_model, d_head]``: fan_in ``d_model``, fan_out ``n_heads * d_head``.

>>> calc_fan_in_and_fan_out(torch.empty(4, 32, 8))
(32, 32)
>>> w = init_xavier_uniform_(torch.empty(32, 64))     # in place, returns the tensor
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = [
    "calc_fan_in_and_fan_out",
    "init_kaiming_normal_",
    "init_kaiming_uniform_",
    "init_xavier_normal_",
    "init_xavier_uniform_",
]


def calc_fan_in_and_fan_out(tensor: torch.Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a TransformerLens-shaped weight (see the module docs); ValueError otherwise.

    >>> calc_fan_in_and_fan_out(torch.empty(8, 16))
    (8, 16)
    """
    shape = tuple(tensor.shape)
    if len(shape) == 0:
        raise ValueError("Fan in and fan out can not be computed for scalars.")
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(f"Fan in and fan out can not be computed for shape {shape} tensors (1-D to 3-D only).")


def _fan(param: torch.Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return fan_in if mode == "fan_in" else fan_out


def init_xavier_uniform_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Fill ``param`` in place from ``U(-b, b)``, ``b = gain * sqrt(6 / (fan_in + fan_out))``; returns it.

    >>> init_xavier_uniform_(torch.empty(3, 5)).abs().max() <= (6 / 8) ** 0.5
    tensor(True)
    """
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Fill ``param`` in place from ``N(0, std^2)``, ``std = gain * sqrt(2 / (fan_in + fan_out))``; returns it."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def init_kaiming_uniform_(
    param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0, mode: str = "fan_in"
) -> torch.Tensor:
    """Fill ``param`` in place from ``U(-b, b)``, ``b = gain * g * sqrt(3 / fan)``; returns it.

    ``g = torch.nn.init.calculate_gain(nonlinearity, a)`` (``sqrt(2)`` for relu), ``fan`` is ``fan_in`` or
    ``fan_out`` per ``mode``, so the std is ``gain * g / sqrt(fan)``.
    """
    fan = _fan(param, mode)
    bound = gain * nn.init.calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(
    param: torch.Tensor, a: float = 0, nonlinearity: str = "relu", gain: float = 1.0, mode: str = "fan_in"
) -> torch.Tensor:
    """Fill ``param`` in place from ``N(0, std^2)``, ``std = gain * g / sqrt(fan)`` (see ``init_kaiming_uniform_``)."""
    fan = _fan(param, mode)
    std = gain * nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return nn.init.normal_(param, mean=0.0, std=std)
