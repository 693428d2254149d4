"""Feed-forward layers: plain (GPT-2) and gated (Llama's SwiGLU, Gemma's GeGLU).

Hooks: ``hook_pre`` (input of the activation function; for gated MLPs the gate branch),
``hook_pre_linear`` (gated only: the linear branch), ``hook_post`` (what ``W_out`` reads), all
``[batch, pos, d_mlp]``. With ``act_fn="solu_ln"`` (TransformerLens's SoLU): ``hook_mid`` is
``x * softmax(x)`` of ``hook_pre``, then ``ln`` (a LayerNorm over ``d_mlp`` with its own ``ln.hook_scale``
and ``ln.hook_normalized``; weight and bias only when ``cfg.normalization == "LN"``) gives ``hook_post``.
TransformerLens-shaped views: ``W_in``/``W_gate`` ``[d_model, d_mlp]``,
``W_out`` ``[d_mlp, d_model]``, ``b_in``, ``b_out``.

>>> mlp(torch.randn(1, 3, 64)).shape
torch.Size([1, 3, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lens.components.linear import input_major, linear
from lens.components.norm import LayerNorm
from lens.config import TransformerConfig
from lens.hooks import HookPoint


def activation(name: str):
    """The activation function ``name`` (Hugging Face spelling)."""
    if name in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        return lambda x: F.gelu(x, approximate="tanh")
    if name == "gelu":
        return F.gelu
    if name == "silu":
        return F.silu
    if name == "relu":
        return F.relu
    if name == "quick_gelu":
        return lambda x: x * torch.sigmoid(1.702 * x)
    if name == "solu_ln":  # SoLU; its LayerNorm is the MLP's ``ln``
        return lambda x: x * torch.softmax(x, dim=-1)
    raise ValueError(f"unsupported activation {name!r}")


class MLP(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        kw = dict(dtype=cfg.dtype, device=cfg.device)
        self.act = activation(cfg.act_fn)
        self.in_weight = input_major(cfg.d_mlp, cfg.d_model, **kw)
        self.in_bias = nn.Parameter(torch.zeros(cfg.d_mlp, **kw)) if cfg.mlp_bias else None
        if cfg.gated_mlp:
            self.gate_weight = input_major(cfg.d_mlp, cfg.d_model, **kw)
            self.gate_bias = nn.Parameter(torch.zeros(cfg.d_mlp, **kw)) if cfg.mlp_bias else None
        self.out_weight = input_major(cfg.d_model, cfg.d_mlp, **kw)
        self.out_bias = nn.Parameter(torch.zeros(cfg.d_model, **kw)) if cfg.mlp_bias else None
        self.hook_pre = HookPoint()
        if cfg.gated_mlp:
            self.hook_pre_linear = HookPoint()
        self.ln = None
        if cfg.act_fn == "solu_ln":
            self.hook_mid = HookPoint()
            affine = cfg.normalization == "LN"
            self.ln = LayerNorm(cfg.d_mlp, cfg.eps, cfg.norm_bias, cfg.dtype, cfg.device, affine=affine)
        self.hook_post = HookPoint()
        self.hook_post.clone_for_edit = cfg.act_fn == "relu" and not cfg.gated_mlp  # relu keeps its output

    def _zeros(self, n: int) -> Tensor:
        return torch.zeros(n, dtype=self.in_weight.dtype, device=self.in_weight.device)

    @property
    def W_in(self) -> Float[Tensor, "d_model d_mlp"]:
        return self.in_weight.T

    @property
    def W_gate(self) -> Float[Tensor, "d_model d_mlp"] | None:
        return self.gate_weight.T if self.cfg.gated_mlp else None

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        return self.out_weight.T

    @property
    def b_in(self) -> Float[Tensor, "d_mlp"]:
        return self.in_bias if self.in_bias is not None else self._zeros(self.cfg.d_mlp)

    @property
    def b_out(self) -> Float[Tensor, "d_model"]:
        return self.out_bias if self.out_bias is not None else self._zeros(self.cfg.d_model)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if self.cfg.gated_mlp:
            pre = self.hook_pre(linear(x, self.gate_weight, self.gate_bias))
            pre_linear = self.hook_pre_linear(linear(x, self.in_weight, self.in_bias))
            post = self.hook_post(self.act(pre) * pre_linear)
        elif self.ln is not None:
            pre = self.hook_pre(linear(x, self.in_weight, self.in_bias))
            post = self.hook_post(self.ln(self.hook_mid(self.act(pre))))
        else:
            pre = self.hook_pre(linear(x, self.in_weight, self.in_bias))
            post = self.hook_post(self.act(pre))
        return linear(post, self.out_weight, self.out_bias)
