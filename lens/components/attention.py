"""Multi-head / grouped-query attention with every intermediate hookable.

Hooks (TransformerLens names and shapes):
    hook_q ``[batch, pos, head, d_head]``, hook_k / hook_v ``[batch, pos, kv_head, d_head]``,
    hook_rot_q / hook_rot_k (after rotary), hook_attn_scores and hook_pattern
    ``[batch, head, query_pos, key_pos]`` (scores are masked with -inf before the hook),
    hook_z ``[batch, pos, head, d_head]``, hook_result ``[batch, pos, head, d_model]`` (use_attn_result).
    With ``cfg.use_qk_norm``, ``q_norm`` / ``k_norm`` (per-head RMSNorm, with ``hook_scale`` and
    ``hook_normalized``) run between hook_q / hook_k and rotary; with ``cfg.qk_norm_scope="projection"``
    each normalises the whole projection instead (``[batch, pos, n * d_head]``, OLMo-2).
    With ``cfg.ungroup_grouped_query_attention`` hook_k / hook_v / hook_rot_k have ``head`` heads (each
    key/value head repeated for the query heads of its group, as TransformerLens); the numbers are the same.

Two paths give the same numbers: when neither ``hook_attn_scores`` nor ``hook_pattern`` is hooked
(or cached), attention runs through ``torch.nn.functional.scaled_dot_product_attention`` and never
materialises the ``query x key`` matrix; otherwise scores and pattern are computed explicitly so hooks
can read and edit them.

Weights are stored fused for speed (``qkv_weight`` ``[(n_heads + 2 n_kv) d_head, d_model]``, one GEMM);
TransformerLens-shaped views are properties: ``W_Q`` ``[head, d_model, d_head]``, ``W_O``
``[head, d_head, d_model]``, ``b_Q`` ``[head, d_head]``, ... Views share storage, so in-place edits
of ``attn.W_Q`` change the model.

>>> attn.W_Q.shape, attn.W_K.shape   # with GQA: n_key_value_heads on K and V
(torch.Size([8, 256, 32]), torch.Size([2, 256, 32]))
"""

from __future__ import annotations

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from lens.components.hook_flags import stale_flag_error
from lens.components.linear import input_major, linear
from lens.components.masking import AttentionContext
from lens.components.norm import RMSNorm
from lens.components.rotary import apply_rotary
from lens.config import TransformerConfig
from lens.factored_matrix import FactoredMatrix
from lens.hooks import HookPoint


class Attention(nn.Module):
    window_chunk: int = 1024  # query chunk size of the sliding-window path (see _windowed_attention)

    def __init__(self, cfg: TransformerConfig, layer_idx: int):
        super().__init__()
        self.cfg, self.layer_idx = cfg, layer_idx
        h, kv, dh, d = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head, cfg.d_model
        self.n_rep = h // kv
        self.window = cfg.layer_window(layer_idx)
        self.scale = cfg.attn_scale if cfg.attn_scale is not None else dh**-0.5
        kw = dict(dtype=cfg.dtype, device=cfg.device)
        self.qkv_weight = input_major((h + 2 * kv) * dh, d, **kw)
        self.qkv_bias = nn.Parameter(torch.zeros((h + 2 * kv) * dh, **kw)) if cfg.qkv_bias else None
        self.o_weight = input_major(d, h * dh, **kw)
        self.o_bias = nn.Parameter(torch.zeros(d, **kw)) if cfg.attn_out_bias else None

        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        if cfg.use_qk_norm:  # RMSNorm of queries and keys before rotary: per head, or over the whole projection
            whole = cfg.qk_norm_scope == "projection"
            self.q_norm = RMSNorm(h * dh if whole else dh, cfg.eps, cfg.dtype, cfg.device)
            self.k_norm = RMSNorm(kv * dh if whole else dh, cfg.eps, cfg.dtype, cfg.device)
        if cfg.positional == "rotary":
            self.hook_rot_q = HookPoint()
            self.hook_rot_k = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()
        # In-place edits under autograd: q/k/v are views of one split (a multi-output view torch refuses to
        # edit in place), softmax keeps the pattern and fused attention keeps z for their backward. Hooks that
        # may edit get a copy then (only with gradients on); the hook-free path is unchanged.
        for point in (self.hook_q, self.hook_k, self.hook_v, self.hook_pattern, self.hook_z):
            point.clone_for_edit = True
        self.sync_hooks()

    def sync_hooks(self) -> None:
        """Create or remove the optional hook points ``cfg`` asks for (``hook_result``: ``use_attn_result``).

        Called at construction and by the model's ``set_use_attn_result``; the model re-runs ``setup()``.
        """
        if self.cfg.use_attn_result and not hasattr(self, "hook_result"):
            self.hook_result = HookPoint()
        elif not self.cfg.use_attn_result and hasattr(self, "hook_result"):
            del self.hook_result

    # -- TransformerLens-shaped weight views ------------------------------------------------------
    def _split(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h, kv, dh = self.cfg.n_heads, self.cfg.n_key_value_heads, self.cfg.d_head
        return t.split([h * dh, kv * dh, kv * dh], dim=0)

    def _w_heads(self, w: Tensor, n: int) -> Float[Tensor, "head d_model d_head"]:
        return w.view(n, self.cfg.d_head, self.cfg.d_model).transpose(1, 2)

    @property
    def W_Q(self) -> Float[Tensor, "head d_model d_head"]:
        return self._w_heads(self._split(self.qkv_weight)[0], self.cfg.n_heads)

    @property
    def W_K(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._w_heads(self._split(self.qkv_weight)[1], self.cfg.n_key_value_heads)

    @property
    def W_V(self) -> Float[Tensor, "kv_head d_model d_head"]:
        return self._w_heads(self._split(self.qkv_weight)[2], self.cfg.n_key_value_heads)

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        return self.o_weight.T.view(self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model)

    def _bias(self, i: int, n: int) -> Tensor:
        if self.qkv_bias is None:
            return torch.zeros(n, self.cfg.d_head, dtype=self.qkv_weight.dtype, device=self.qkv_weight.device)
        return self._split(self.qkv_bias)[i].view(n, self.cfg.d_head)

    @property
    def b_Q(self) -> Float[Tensor, "head d_head"]:
        return self._bias(0, self.cfg.n_heads)

    @property
    def b_K(self) -> Float[Tensor, "kv_head d_head"]:
        return self._bias(1, self.cfg.n_key_value_heads)

    @property
    def b_V(self) -> Float[Tensor, "kv_head d_head"]:
        return self._bias(2, self.cfg.n_key_value_heads)

    @property
    def b_O(self) -> Float[Tensor, "d_model"]:
        if self.o_bias is None:
            return torch.zeros(self.cfg.d_model, dtype=self.o_weight.dtype, device=self.o_weight.device)
        return self.o_bias

    def _per_query_head(self, t: Tensor) -> Tensor:
        return t if self.n_rep == 1 else t.repeat_interleave(self.n_rep, dim=0)

    @property
    def QK(self) -> FactoredMatrix:
        """``W_Q @ W_K^T`` per query head, ``[head, d_model, d_model]`` (key heads repeated for GQA)."""
        return FactoredMatrix(self.W_Q, self._per_query_head(self.W_K).transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        """``W_V @ W_O`` per query head, ``[head, d_model, d_model]``: residual in -> residual out."""
        return FactoredMatrix(self._per_query_head(self.W_V), self.W_O)

    @property
    def explicit(self) -> bool:
        """True when scores/pattern must be materialised (someone hooks or caches them, or scores are capped)."""
        return (
            self.cfg.attn_scores_soft_cap is not None or self.hook_attn_scores.has_hooks or self.hook_pattern.has_hooks
        )

    # -- forward ------------------------------------------------------------------------------------
    def _project(self, x: Tensor, i: int, n: int) -> Float[Tensor, "batch pos n d_head"]:
        """Project a residual ``[b, p, d]`` or per-head input ``[b, p, n, d]`` to ``[b, p, n, d_head]``."""
        w = self._split(self.qkv_weight)[i]
        b = None if self.qkv_bias is None else self._split(self.qkv_bias)[i]
        if x.ndim == 3:
            return linear(x, w, b).unflatten(-1, (n, self.cfg.d_head))
        w, b = w.view(n, self.cfg.d_head, self.cfg.d_model), None if b is None else b.view(n, self.cfg.d_head)
        if x.shape[2] != n:  # ungrouped: one input per query head, each read by its group's key/value weights
            rep = x.shape[2] // n
            w, b = w.repeat_interleave(rep, 0), None if b is None else b.repeat_interleave(rep, 0)
        out = torch.einsum("bpnd,nkd->bpnk", x, w)
        return out if b is None else out + b

    @staticmethod
    def _norm_projection(x: Float[Tensor, "batch pos n d_head"], norm: RMSNorm, n: int) -> Tensor:
        """``norm`` over all ``n`` heads of a position at once (``qk_norm_scope="projection"``).

        Ungrouped keys (``x`` has ``n * rep`` heads, head ``g * rep + r`` a copy of key head ``g``) are
        normalised one copy ``r`` of the ``n`` key heads at a time: unedited copies give the grouped numbers.
        """
        b, p, heads, dh = x.shape
        if heads == n:
            return norm(x.flatten(2)).view(b, p, n, dh)
        rep = heads // n
        copies = x.view(b, p, n, rep, dh).transpose(2, 3).reshape(b, p, rep, n * dh)
        return norm(copies).view(b, p, rep, n, dh).transpose(2, 3).reshape(b, p, heads, dh)

    def forward(
        self,
        query_input: Float[Tensor, "batch pos d_model"] | Float[Tensor, "batch pos head d_model"],
        key_input: Tensor | None,
        value_input: Tensor | None,
        ctx: AttentionContext,
    ) -> Float[Tensor, "batch pos d_model"]:
        cfg = self.cfg
        h, kv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        if key_input is None and query_input.ndim == 3:
            b, p = query_input.shape[:2]
            qkv = linear(query_input, self.qkv_weight, self.qkv_bias).view(b, p, h + 2 * kv, dh)
            q, k, v = torch.split_with_sizes(qkv, (h, kv, kv), dim=2)
        else:
            key_input = query_input if key_input is None else key_input
            value_input = query_input if value_input is None else value_input
            q = self._project(query_input, 0, h)
            k = self._project(key_input, 1, kv)
            v = self._project(value_input, 2, kv)
        if cfg.ungroup_grouped_query_attention and k.shape[2] != h:  # one key/value head per query head
            k, v = k.repeat_interleave(h // k.shape[2], dim=2), v.repeat_interleave(h // v.shape[2], dim=2)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)
        if cfg.use_qk_norm:
            if cfg.qk_norm_scope == "projection":
                q, k = self._norm_projection(q, self.q_norm, h), self._norm_projection(k, self.k_norm, kv)
            else:
                q, k = self.q_norm(q), self.k_norm(k)
        if cfg.positional == "rotary":
            cos, sin = ctx.cos, ctx.sin
            if self.window is not None and ctx.cos_local is not None:  # a local layer with its own base
                cos, sin = ctx.cos_local, ctx.sin_local
            pairs = cfg.rotary_adjacent_pairs
            q = self.hook_rot_q(apply_rotary(q, cos, sin, pairs))
            k = self.hook_rot_k(apply_rotary(k, cos, sin, pairs))

        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, n, pos, dh]
        key_pos = None
        if ctx.kv_cache is not None:
            kh, vh = ctx.kv_cache.update_heads(self.layer_idx, kh, vh)
            if ctx.key_pos is not None:  # a sliding-window ring buffer, keys in slot order
                key_pos = ctx.key_pos.get(self.window)
        k_len = kh.shape[-2]
        if self.explicit:
            if key_pos is not None:  # hooks see keys in position order
                order = key_pos.argsort()
                kh, vh = kh[:, :, order], vh[:, :, order]
            z = self._explicit_attention(qh, kh, vh, ctx, k_len)
        else:
            z = self._fused_attention(qh, kh, vh, ctx, k_len, key_pos)
        z = self.hook_z(z.transpose(1, 2))  # [b, pos, head, dh]

        if cfg.use_attn_result:
            if "hook_result" not in self._modules:
                raise stale_flag_error("use_attn_result")
            result = self.hook_result(einops.einsum(z, self.W_O, "b p h k, h k d -> b p h d"))
            out = result.sum(dim=2)
            return out if self.o_bias is None else out + self.o_bias
        return linear(z.flatten(2), self.o_weight, self.o_bias)

    def _fused_attention(
        self, qh: Tensor, kh: Tensor, vh: Tensor, ctx: AttentionContext, k_len: int, key_pos: Tensor | None = None
    ) -> Tensor:
        gqa = kh.shape[1] != qh.shape[1]
        if ctx.is_plain_causal(k_len, self.window):
            return F.scaled_dot_product_attention(qh, kh, vh, is_causal=True, scale=self.scale, enable_gqa=gqa)
        if ctx.is_unmasked(k_len, self.window):  # a cached decode step that sees every key
            return F.scaled_dot_product_attention(qh, kh, vh, scale=self.scale, enable_gqa=gqa)
        if key_pos is None and self.window is not None and k_len > self.window + self.window_chunk:
            return self._windowed_attention(qh, kh, vh, ctx, k_len)
        mask = ctx.mask(k_len, self.window, key_pos)
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale, enable_gqa=gqa)

    def _windowed_attention(self, qh: Tensor, kh: Tensor, vh: Tensor, ctx: AttentionContext, k_len: int) -> Tensor:
        """Sliding-window attention in query chunks: each chunk reads only the keys its window can see.

        Exact (every query's softmax runs over the same keys as with the full mask) while never building a
        ``query x key`` mask: memory is O(chunk x (chunk + window)) and compute O(pos x (chunk + window)).
        """
        gqa, window, chunk = kh.shape[1] != qh.shape[1], self.window, self.window_chunk
        k0 = ctx.q_offset + ctx.q_len - k_len  # sequence index of the first key
        outs = []
        for s in range(0, ctx.q_len, chunk):
            e = min(s + chunk, ctx.q_len)
            q_lo, q_hi = ctx.q_offset + s, ctx.q_offset + e
            k_lo = max(k0, q_lo - window + 1)
            mask = ctx.range_mask(q_lo, q_hi, k_lo, q_hi, window)
            ks, vs = kh[:, :, k_lo - k0 : q_hi - k0], vh[:, :, k_lo - k0 : q_hi - k0]
            outs.append(
                F.scaled_dot_product_attention(qh[:, :, s:e], ks, vs, attn_mask=mask, scale=self.scale, enable_gqa=gqa)
            )
        return torch.cat(outs, dim=2)

    def _explicit_attention(self, qh: Tensor, kh: Tensor, vh: Tensor, ctx: AttentionContext, k_len: int) -> Tensor:
        if kh.shape[1] != qh.shape[1]:  # grouped keys/values (not ungrouped by cfg)
            kh = kh.repeat_interleave(self.n_rep, dim=1)
            vh = vh.repeat_interleave(self.n_rep, dim=1)
        scores = torch.matmul(qh, kh.transpose(-1, -2)).mul_(self.scale)
        cap = self.cfg.attn_scores_soft_cap
        if cap is not None:  # Gemma 2's soft cap, before the mask (as Hugging Face and TransformerLens)
            scores = torch.tanh(scores / cap) * cap
        scores = self.hook_attn_scores(scores.masked_fill_(ctx.blocked(k_len, self.window), float("-inf")))
        pattern = self.hook_pattern(torch.softmax(scores, dim=-1, dtype=torch.float32).to(qh.dtype))
        return torch.matmul(pattern, vh)
