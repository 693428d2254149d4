"""LayerNorm and RMSNorm with TransformerLens's hooks.

``hook_scale`` is the divisor ``sqrt(mean(x_centered^2) + eps)`` of shape ``[..., 1]``;
``hook_normalized`` is the norm's output (after the learned weight and bias). When nobody hooks
``hook_scale``, LayerNorm takes torch's fused kernel; both paths agree to float rounding.

>>> ln = LayerNorm(64, eps=1e-5); ln(torch.randn(2, 3, 64)).shape
torch.Size([2, 3, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lens.config import TransformerConfig
from lens.hooks import HookPoint


class LayerNorm(nn.Module):
    """``(x - mean) / scale * w + b`` over the last dimension.

    ``affine=False``: no weight and no bias, ``(x - mean) / scale`` (TransformerLens's ``LayerNormPre``).
    """

    centered = True  # subtracts the mean before scaling (analysis reads this to replay the norm)

    def __init__(self, d: int, eps: float, bias: bool = True, dtype=torch.float32, device=None, affine: bool = True):
        super().__init__()
        self.d, self.eps = d, eps
        self.w = nn.Parameter(torch.ones(d, dtype=dtype, device=device)) if affine else None
        self.b = nn.Parameter(torch.zeros(d, dtype=dtype, device=device)) if bias and affine else None
        self.hook_scale = HookPoint()  # [..., 1]
        self.hook_scale.clone_for_edit = True  # sqrt keeps its output for backward
        self.hook_normalized = HookPoint()  # [..., d]

    def normalized(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The output without hooks (fused kernel); what ``forward`` gives when ``hook_scale`` is unhooked."""
        return torch.layer_norm(x, (self.d,), self.w, self.b, self.eps)  # F.layer_norm's kernel, fewer checks

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        if not self.hook_scale.has_hooks:
            return self.hook_normalized(self.normalized(x))
        if not self.hook_scale.may_edit:  # read-only observers (caching): fused kernel + reported scale
            if x.dtype in (torch.float32, torch.float64):  # the kernel's own 1/scale, at no extra pass
                out, _, rstd = torch.native_layer_norm(x, (self.d,), self.w, self.b, self.eps)
                self.hook_scale(rstd.reciprocal())
                return self.hook_normalized(out)
            out = F.layer_norm(x, (self.d,), self.w, self.b, self.eps)
            var = torch.var_mean(x.float(), dim=-1, keepdim=True, correction=0)[0]
            self.hook_scale((var + self.eps).sqrt().to(x.dtype if x.dtype == torch.float64 else torch.float32))
            return self.hook_normalized(out)
        dtype = x.dtype
        if dtype not in (torch.float32, torch.float64):
            x = x.float()
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        out = (x / scale).to(dtype)
        if self.w is not None:
            out = out * self.w
        if self.b is not None:
            out = out + self.b
        return self.hook_normalized(out)


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * w``, computed in float32 and cast back as Hugging Face does.

    A float32 input with ``hook_scale`` unhooked takes torch's fused ``rms_norm`` kernel (the same
    arithmetic in one pass; agrees to float rounding); other dtypes keep the cast-then-weight order that
    makes bfloat16 outputs equal Hugging Face's bit for bit.
    """

    centered = False

    def __init__(self, d: int, eps: float, dtype=torch.float32, device=None):
        super().__init__()
        self.d, self.eps = d, eps
        self.w = nn.Parameter(torch.ones(d, dtype=dtype, device=device))
        self.hook_scale = HookPoint()  # [..., 1]
        self.hook_scale.clone_for_edit = True  # sqrt keeps its output for backward
        self.hook_normalized = HookPoint()  # [..., d]

    def normalized(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """The output without hooks (``forward``'s arithmetic with ``hook_scale`` an identity)."""
        if x.dtype == torch.float32 and self.w.dtype == torch.float32:
            return torch.rms_norm(x, (self.d,), self.w, self.eps)
        return self._apply_scale(x, lambda scale: scale)

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        if not self.hook_scale.has_hooks:
            return self.hook_normalized(self.normalized(x))
        return self.hook_normalized(self._apply_scale(x, self.hook_scale))

    def _apply_scale(self, x: Tensor, scale_hook) -> Tensor:
        x32 = x.float()
        scale = scale_hook((x32.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.w * (x32 / scale).to(x.dtype)


def make_norm(cfg: TransformerConfig) -> nn.Module | None:
    """The normalisation layer ``cfg.normalization`` asks for, or None."""
    if cfg.normalization == "LN":
        return LayerNorm(cfg.d_model, cfg.eps, cfg.norm_bias, cfg.dtype, cfg.device)
    if cfg.normalization == "RMS":
        return RMSNorm(cfg.d_model, cfg.eps, cfg.dtype, cfg.device)
    return None
