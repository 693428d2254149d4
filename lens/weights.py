"""Stacked weight views of a whole model: ``W_Q[layer, head, d_model, d_head]``, ``QK``, ``OV``, ...

Why: circuit analysis reads weights across layers at once (e.g. the OV circuit of every head, or the
composition scores between layers). :class:`WeightsMixin` gives :class:`lens.HookedTransformer` the
TransformerLens-named properties, stacked over layers with a leading ``layer`` dimension.

Shapes (TransformerLens conventions):

- ``W_Q`` ``[layer, head, d_model, d_head]``, ``W_O`` ``[layer, head, d_head, d_model]``,
  ``b_Q`` ``[layer, head, d_head]``, ``b_O`` ``[layer, d_model]``.
- ``W_K`` / ``W_V`` / ``b_K`` / ``b_V``: under grouped-query attention (``n_key_value_heads <
  n_heads``) these are **expanded to n_heads**, query head ``h`` getting key/value head
  ``h // (n_heads // n_key_value_heads)`` (exactly how attention pairs them), as TransformerLens does.
  The raw, unrepeated ``[layer, kv_head, ...]`` weights are ``_W_K`` / ``_W_V`` / ``_b_K`` / ``_b_V``.
  (Per-block views ``model.blocks[i].attn.W_K`` stay raw ``[kv_head, d_model, d_head]``.)
- ``W_in`` / ``W_gate`` ``[layer, d_model, d_mlp]``, ``W_out`` ``[layer, d_mlp, d_model]``,
  ``b_in`` ``[layer, d_mlp]``, ``b_out`` ``[layer, d_model]`` (MLP properties raise on attn_only models).
- Missing biases (``qkv_bias=False`` etc.) read as zeros.
- ``QK`` = ``W_Q @ W_K^T`` and ``OV`` = ``W_V @ W_O`` as :class:`lens.FactoredMatrix`
  ``[layer, head, d_model, d_model]`` (no attention scale, no rotary: with rotary positions ``QK`` is
  the position-free bilinear form only).

Stacked properties are **copies** (``torch.stack``); edit weights through the per-block views
(``model.blocks[0].attn.W_Q``), which share storage with the parameters.

>>> model.W_Q.shape        # 2 layers, 4 heads, d_model 32, d_head 8
torch.Size([2, 4, 32, 8])
>>> model.OV[1, 3].AB.shape
torch.Size([32, 32])
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.factored_matrix import FactoredMatrix

__all__ = ["WeightsMixin"]


class WeightsMixin:
    """Adds layer-stacked weight properties to a model with ``cfg`` and ``blocks`` (see module docs)."""

    # -- helpers ------------------------------------------------------------------------------------
    def _stack_attn(self, name: str) -> Tensor:
        return torch.stack([getattr(block.attn, name) for block in self.blocks], dim=0)

    def _stack_mlp(self, name: str) -> Tensor:
        if self.cfg.attn_only:
            raise ValueError(f"{name}: this model is attn_only and has no MLP weights")
        return torch.stack([getattr(block.mlp, name) for block in self.blocks], dim=0)

    def _repeat_kv(self, t: Tensor) -> Tensor:
        n_rep = self.cfg.n_heads // self.cfg.n_key_value_heads
        return t if n_rep == 1 else t.repeat_interleave(n_rep, dim=1)

    # -- attention ----------------------------------------------------------------------------------
    @property
    def W_Q(self) -> Float[Tensor, "layer head d_model d_head"]:
        return self._stack_attn("W_Q")

    @property
    def _W_K(self) -> Float[Tensor, "layer kv_head d_model d_head"]:
        return self._stack_attn("W_K")

    @property
    def _W_V(self) -> Float[Tensor, "layer kv_head d_model d_head"]:
        return self._stack_attn("W_V")

    @property
    def W_K(self) -> Float[Tensor, "layer head d_model d_head"]:
        """Keys per query head (kv heads repeated under GQA); raw kv weights are ``_W_K``."""
        return self._repeat_kv(self._W_K)

    @property
    def W_V(self) -> Float[Tensor, "layer head d_model d_head"]:
        """Values per query head (kv heads repeated under GQA); raw kv weights are ``_W_V``."""
        return self._repeat_kv(self._W_V)

    @property
    def W_O(self) -> Float[Tensor, "layer head d_head d_model"]:
        return self._stack_attn("W_O")

    @property
    def b_Q(self) -> Float[Tensor, "layer head d_head"]:
        return self._stack_attn("b_Q")

    @property
    def _b_K(self) -> Float[Tensor, "layer kv_head d_head"]:
        return self._stack_attn("b_K")

    @property
    def _b_V(self) -> Float[Tensor, "layer kv_head d_head"]:
        return self._stack_attn("b_V")

    @property
    def b_K(self) -> Float[Tensor, "layer head d_head"]:
        return self._repeat_kv(self._b_K)

    @property
    def b_V(self) -> Float[Tensor, "layer head d_head"]:
        return self._repeat_kv(self._b_V)

    @property
    def b_O(self) -> Float[Tensor, "layer d_model"]:
        return self._stack_attn("b_O")

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per head, ``[layer, head, d_model, d_model]`` (query side on the left)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per head, ``[layer, head, d_model, d_model]``: residual in -> residual out."""
        return FactoredMatrix(self.W_V, self.W_O)

    # -- MLP ----------------------------------------------------------------------------------------
    @property
    def W_in(self) -> Float[Tensor, "layer d_model d_mlp"]:
        """Input weights (for gated MLPs: the linear branch, TransformerLens's ``W_in``)."""
        return self._stack_mlp("W_in")

    @property
    def W_gate(self) -> Float[Tensor, "layer d_model d_mlp"]:
        """Gate weights of gated MLPs (the branch the activation function reads)."""
        if not self.cfg.gated_mlp:
            raise ValueError("W_gate: this model's MLPs are not gated")
        return self._stack_mlp("W_gate")

    @property
    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"]:
        return self._stack_mlp("W_out")

    @property
    def b_in(self) -> Float[Tensor, "layer d_mlp"]:
        return self._stack_mlp("b_in")

    @property
    def b_out(self) -> Float[Tensor, "layer d_model"]:
        return self._stack_mlp("b_out")

    # -- embeddings ---------------------------------------------------------------------------------
    @property
    def W_E_pos(self) -> Float[Tensor, "d_vocab_plus_n_ctx d_model"]:
        """``W_E`` and ``W_pos`` concatenated (learned positions only), as in TransformerLens."""
        return torch.cat([self.W_E, self.W_pos], dim=0)

    # -- derived ------------------------------------------------------------------------------------
    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]``, layer-major: the labels of ``stack_head_results``."""
        return [f"L{layer}H{h}" for layer in range(self.cfg.n_layers) for h in range(self.cfg.n_heads)]

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, "d_model"]:
        """Sum of the output biases (``b_O``, and ``b_out`` unless excluded) written before ``layer``.

        ``layer`` is in ``[0, n_layers]`` (``n_layers`` = the input of the unembed). With
        ``mlp_input`` the attention bias of ``layer`` itself is included (its MLP reads resid_mid);
        for parallel attention+MLP blocks the MLP reads resid_pre, so it is not.

        >>> model.accumulated_bias(model.cfg.n_layers).shape
        torch.Size([32])
        """
        n = self.cfg.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= n:
            raise ValueError(f"layer={layer!r} must be an int in [0, n_layers={n}]")
        if mlp_input and layer == n:
            raise ValueError("mlp_input=True needs layer < n_layers (the unembed has no MLP)")
        w = self.embed.weight
        total = torch.zeros(self.cfg.d_model, dtype=w.dtype, device=w.device)
        for i in range(layer):
            total = total + self.blocks[i].attn.b_O
            if include_mlp_biases and not self.cfg.attn_only:
                total = total + self.blocks[i].mlp.b_out
        if mlp_input and not self.cfg.parallel_attn_mlp:
            total = total + self.blocks[layer].attn.b_O
        return total

    def tokens_to_residual_directions(self, tokens: int | str | Int[Tensor, "..."]) -> Float[Tensor, "... d_model"]:
        """The unembedding direction(s) ``W_U[:, token]`` of token id(s), shape ``[*tokens, d_model]``.

        A string is converted with ``to_single_token``. ``resid @ direction`` is that token's logit
        (before the unembedding bias).

        >>> model.tokens_to_residual_directions(torch.tensor([3, 5])).shape
        torch.Size([2, 32])
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        w = self.unembed.weight  # [d_vocab, d_model]
        tokens = torch.as_tensor(tokens, device=w.device)
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            raise ValueError(f"token ids must be in [0, d_vocab={self.cfg.d_vocab}), got {tokens.tolist()}")
        return w[tokens]
