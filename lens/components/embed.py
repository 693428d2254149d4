"""Token embedding, learned position embedding and unembedding.

``W_E`` is ``[d_vocab, d_model]``, ``W_pos`` ``[n_positions, d_model]`` (the trained table: learned
positions are weights, not a mask, so their size follows the checkpoint), ``W_U`` ``[d_model, d_vocab]``.
The unembedding stores its weight as ``[d_vocab, d_model]`` so tied embeddings share one tensor. An untied
unembedding is stored input-major like every projection (:mod:`lens.components.linear`); a tied one keeps
the embedding's row-major layout: input-major, each token's lookup touches ``d_model`` cache lines, which
cost a GPT-2-small forward of 8 x 128 tokens ~10% (measured). Decoding, which reads the whole
unembedding every step, uses an input-major copy instead (:mod:`lens.generation.decode_unembed`).

>>> emb = Embed(cfg); emb(torch.tensor([[1, 2]])).shape
torch.Size([1, 2, 64])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens.components.linear import input_major, linear
from lens.config import TransformerConfig


class Embed(nn.Module):
    """Token embedding; multiplies by ``cfg.embedding_multiplier`` when set (Gemma's sqrt(d_model))."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype, device=cfg.device))

    @property
    def W_E(self) -> Float[Tensor, "d_vocab d_model"]:
        return self.weight

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        x = F.embedding(tokens, self.weight)
        if self.cfg.embedding_multiplier is not None:
            x = x * torch.tensor(self.cfg.embedding_multiplier, dtype=x.dtype)
        return x


class PosEmbed(nn.Module):
    """Learned absolute position embedding, indexed by per-token positions (padding-aware)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        n_pos = cfg.n_ctx_trained or cfg.n_ctx
        self.weight = nn.Parameter(torch.empty(n_pos, cfg.d_model, dtype=cfg.dtype, device=cfg.device))

    @property
    def W_pos(self) -> Float[Tensor, "n_ctx d_model"]:
        return self.weight

    def forward(self, positions: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(positions, self.weight)


class Unembed(nn.Module):
    """Maps the final residual stream to logits: ``x @ W_U + b_U``."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = input_major(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype, device=cfg.device)
        self.bias = (
            nn.Parameter(torch.zeros(cfg.d_vocab, dtype=cfg.dtype, device=cfg.device)) if cfg.unembed_bias else None
        )

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self.weight.T

    @property
    def b_U(self) -> Float[Tensor, "d_vocab"]:
        if self.bias is None:
            return torch.zeros(self.cfg.d_vocab, dtype=self.weight.dtype, device=self.weight.device)
        return self.bias

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return linear(x, self.weight, self.bias)
