"""Rotary position embeddings, computed lazily for the positions in use.

Only the inverse frequencies (``rotary_dim / 2`` numbers) are stored; cos/sin are computed once per
forward for the batch's own position ids, so nothing scales with ``n_ctx`` and left-padded rows rotate
by their real positions. Rotation is the "rotate half" convention (Llama, Mistral, GPT-NeoX, Qwen2,
Gemma); with ``rotary_dim < d_head`` only the first ``rotary_dim`` features rotate (partial rotary).

>>> rot = Rotary(cfg)
>>> cos, sin = rot.cos_sin(torch.arange(5)[None], torch.float32)   # [1, 5, rotary_dim]
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens.config import TransformerConfig


def rotary_inv_freq(cfg: TransformerConfig) -> tuple[Float[Tensor, "half"], float]:
    """Inverse frequencies and the attention scaling factor, honouring ``cfg.rope_scaling``.

    Supported scalings: ``linear`` (positions divided by ``factor``) and ``llama3`` (Llama-3.1's
    wavelength-dependent smoothing). Unknown types raise ``ValueError``.
    """
    dim = cfg.rotary_dim
    inv = 1.0 / (cfg.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = cfg.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return inv, 1.0
    if kind == "linear":
        return inv / float(scaling["factor"]), 1.0
    if kind == "llama3":
        factor = float(scaling["factor"])
        low = float(scaling.get("low_freq_factor", 1.0))
        high = float(scaling.get("high_freq_factor", 4.0))
        old_ctx = float(scaling["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return torch.where(medium, smoothed, scaled), 1.0
    raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")


class Rotary(nn.Module):
    """Holds the inverse frequencies and turns position ids into cos/sin tables."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.adjacent_pairs = cfg.rotary_adjacent_pairs
        inv, self.attention_scaling = rotary_inv_freq(cfg)
        self.register_buffer("inv_freq", inv.to(cfg.device), persistent=False)

    def cos_sin(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos rot"], Float[Tensor, "batch pos rot"]]:
        freqs = positions.to(self.inv_freq.device).float()[..., None] * self.inv_freq.float()
        # rotate-half pairs feature i with i + rot/2; adjacent pairs (GPT-J) pair 2i with 2i + 1
        emb = freqs.repeat_interleave(2, dim=-1) if self.adjacent_pairs else torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.attention_scaling != 1.0:
            cos, sin = cos * self.attention_scaling, sin * self.attention_scaling
        return cos.to(dtype), sin.to(dtype)


def apply_rotary(
    x: Float[Tensor, "batch pos head d_head"],
    cos: Float[Tensor, "batch pos rot"],
    sin: Float[Tensor, "batch pos rot"],
    adjacent_pairs: bool = False,
) -> Float[Tensor, "batch pos head d_head"]:
    """Rotate the first ``rot`` features of every head by its position's angles.

    ``adjacent_pairs``: the tables came from a ``Rotary`` with ``cfg.rotary_adjacent_pairs`` (GPT-J).
    """
    rot = cos.shape[-1]
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
    turn = _rotate_pairs if adjacent_pairs else _rotate_half
    if rot == x.shape[-1]:
        return x * cos + turn(x) * sin
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    return torch.cat((x_rot * cos + turn(x_rot) * sin, x_pass), dim=-1)


def _rotate_pairs(x: Tensor) -> Tensor:
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)
