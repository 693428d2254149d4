"""Activation functions by TransformerLens's names (``lens.utils.gelu_new``, ``solu``, ...).

These are the reference formulas, for use outside a model (lens's MLP picks its own kernels; for
``gelu_new`` / ``gelu_fast`` that is torch's tanh GELU, equal up to float rounding).

>>> gelu_new(torch.tensor([0.0, 1.0]))
tensor([0.0000, 0.8412])
>>> ACTIVATION_FN_DICT["solu"](torch.zeros(2))
tensor([0., 0.])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

__all__ = [
    "ACTIVATION_FN_DICT",
    "XIELU",
    "gelu_fast",
    "gelu_new",
    "gelu_pytorch_tanh",
    "solu",
    "xielu",
]


def gelu_new(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """GPT-2's GELU: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``."""
    return 0.5 * input * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (input + 0.044715 * input.pow(3.0))))


def gelu_fast(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """The same tanh approximation, constant rounded: ``0.5 x (1 + tanh(0.7978845608 x (1 + 0.044715 x^2)))``."""
    return 0.5 * input * (1.0 + torch.tanh(input * 0.7978845608 * (1.0 + 0.044715 * input * input)))


def gelu_pytorch_tanh(input: Tensor) -> Tensor:
    """``torch.nn.functional.gelu(x, approximate="tanh")``."""
    return F.gelu(input, approximate="tanh")


def solu(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """SoLU without its LayerNorm: ``x * softmax(x)`` over the last dim (https://transformer-circuits.pub/2022/solu)."""
    return input * F.softmax(input, dim=-1)


def _xielu(x: Tensor, alpha_p: Tensor | float, alpha_n: Tensor | float, beta: Tensor | float, eps: Tensor) -> Tensor:
    positive = alpha_p * x * x + beta * x
    negative = (torch.expm1(torch.minimum(x, eps)) - x) * alpha_n + beta * x
    return torch.where(x > 0, positive, negative)


def xielu(input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
    """xIELU (https://arxiv.org/abs/2411.13010) with fixed ``alpha_p = alpha_n = 0.8``, ``beta = 0.5``, ``eps = -1e-6``:
    ``alpha_p x^2 + beta x`` for ``x > 0``, else ``alpha_n (expm1(min(x, eps)) - x) + beta x``."""
    return _xielu(input, 0.8, 0.8, 0.5, torch.tensor(-1e-6, dtype=input.dtype, device=input.device))


class XIELU(nn.Module):
    """Trainable xIELU, parameterised as Hugging Face's ``XIELUActivation``.

    ``alpha_p`` and ``alpha_n`` are stored in softplus-inverse space: the effective values are
    ``softplus(alpha_p)`` and ``beta + softplus(alpha_n)``; ``beta`` and ``eps`` are buffers.
    ``XIELU()(x)`` equals :func:`xielu` ``(x)`` at the default parameters.
    """

    def __init__(
        self, alpha_p_init: float = 0.8, alpha_n_init: float = 0.8, beta_init: float = 0.5, eps: float = -1e-6
    ):
        super().__init__()
        if not alpha_n_init > beta_init or not alpha_p_init > 0:
            raise ValueError(
                f"XIELU needs alpha_p_init > 0 and alpha_n_init > beta_init, got {alpha_p_init}, {alpha_n_init}, "
                f"{beta_init}"
            )

        def softplus_inverse(v: float) -> Tensor:
            return torch.tensor(v, dtype=torch.float32).expm1().log()

        self.alpha_p = nn.Parameter(softplus_inverse(alpha_p_init))
        self.alpha_n = nn.Parameter(softplus_inverse(alpha_n_init - beta_init))
        self.beta: Tensor
        self.eps: Tensor
        self.register_buffer("beta", torch.tensor(beta_init, dtype=torch.float32))
        self.register_buffer("eps", torch.tensor(eps, dtype=torch.float32))

    def forward(self, input: Float[Tensor, "batch pos d_mlp"]) -> Float[Tensor, "batch pos d_mlp"]:
        alpha_p = F.softplus(self.alpha_p)
        alpha_n = self.beta + F.softplus(self.alpha_n)
        return _xielu(input, alpha_p, alpha_n, self.beta, self.eps.to(input.dtype))


ACTIVATION_FN_DICT: dict[str, Callable[..., Tensor]] = {
    "solu": solu,
    "solu_ln": solu,
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "xielu": xielu,
}
"""TransformerLens's ``act_fn`` names -> functions (``solu_ln`` is :func:`solu`; its LayerNorm lives in the MLP)."""
