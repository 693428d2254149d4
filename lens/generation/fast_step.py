"""The hook-free decode step (embedding, blocks, final norm, unembedding) ``generate`` runs when nothing is hooked.

Why: decoding one token of a GPT-2-small-sized model on CPU is ~17 ms of weight streaming, and the
module path (``nn.Module`` calls, hook points, per-layer Python) added ~3 ms per step on top
(``benchmarks/decode_overhead.py``). When no hook point has a hook and none of the TransformerLens
input-splitting flags is set, the hook points are identities, so ``generate`` runs the same arithmetic
here as plain functions over the components' parameters: the same kernels in the same order, so
the logits are identical to the module path (tests/generation/test_fast_step.py checks every family).
The one exception is a tied unembedding in a long CPU call, read from an input-major copy
(:mod:`lens.generation.decode_unembed`): same values, another summation order (~1e-6).
Any hook (a ``run_with_hooks`` context, ``return_cache``, a permanent hook) sends ``generate`` back
through the modules, so hooks always fire.

>>> prepared = fast_step.Prepared(model)               # once per generate call
>>> if prepared.applies():                             # cheap: rescans only after a hook change
...     resid = fast_step.embed(prepared, tokens, ctx)
...     resid = fast_step.run_blocks(prepared, resid, ctx)
...     logits = fast_step.unembed_last(prepared, resid)
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lens.components.masking import AttentionContext
from lens.components.rotary import apply_rotary
from lens.generation import decode_unembed
from lens.hooks import hook_epoch


def _flags_off(cfg) -> bool:
    return not (cfg.use_attn_result or cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in)


def applies(model) -> bool:
    """True when no hook point is hooked and no flag adds hook-only inputs (the blocks are pure math)."""
    return _flags_off(model.cfg) and not any(hp.has_hooks for hp in model.hook_dict.values())


class _Layer:
    """One block's parameters, with projection weights already transposed to ``[in, out]`` views."""

    def __init__(self, block) -> None:
        attn, cfg = block.attn, block.cfg
        self.attn, self.idx, self.window = attn, attn.layer_idx, attn.window
        self.h, self.kv, self.dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
        self.sizes = [self.h * self.dh, self.kv * self.dh, self.kv * self.dh]
        self.rotary = cfg.positional == "rotary"
        self.stacked = not self.rotary and self.kv == self.h  # q, k, v as one [3, b, h, pos, dh] view
        self.ln1, self.ln2 = block.ln1, getattr(block, "ln2", None)
        self.qkv = (attn.qkv_weight.t(), attn.qkv_bias)
        self.o = (attn.o_weight.t(), attn.o_bias)
        self.has_mlp, self.parallel = block.has_mlp, cfg.parallel_attn_mlp
        if self.has_mlp:
            mlp = block.mlp
            self.act = mlp.act
            self.gate = (mlp.gate_weight.t(), mlp.gate_bias) if cfg.gated_mlp else None
            self.w_in, self.w_out = (mlp.in_weight.t(), mlp.in_bias), (mlp.out_weight.t(), mlp.out_bias)


def _norm(norm, x: Tensor) -> Tensor:
    return x if norm is None else norm.normalized(x)


def _lin(x: Tensor, wb: tuple[Tensor, Tensor | None]) -> Tensor:
    """``linear`` on a 2-D input with the weight already transposed (the same kernel call)."""
    wt, b = wb
    return torch.mm(x, wt) if b is None else torch.addmm(b, x, wt)


def _attention(L: _Layer, x: Float[Tensor, "n d_model"], ctx: AttentionContext, b: int) -> Tensor:
    q_len = ctx.q_len
    qkv = _lin(x, L.qkv)
    if L.stacked:  # three views in one: the same strides as splitting and transposing each (fewer ops)
        qh, kh, vh = qkv.view(b, q_len, 3, L.h, L.dh).permute(2, 0, 3, 1, 4).unbind(0)  # [b, h, pos, dh]
    else:
        q, k, v = torch.split_with_sizes(qkv, L.sizes, dim=-1)
        q, k, v = q.view(b, q_len, L.h, L.dh), k.view(b, q_len, L.kv, L.dh), v.view(b, q_len, L.kv, L.dh)
        if L.rotary:
            q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
        qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [b, head, pos, dh]
    key_pos = None
    if ctx.kv_cache is not None:
        kh, vh = ctx.kv_cache.update_heads(L.idx, kh, vh)
        if ctx.key_pos is not None:
            key_pos = ctx.key_pos.get(L.window)
    z = L.attn._fused_attention(qh, kh, vh, ctx, kh.shape[-2], key_pos)  # [b, h, pos, dh]
    z = z.reshape(b, L.h * L.dh) if q_len == 1 else z.transpose(1, 2).reshape(b * q_len, L.h * L.dh)
    return _lin(z, L.o)


def _mlp(L: _Layer, x: Tensor) -> Tensor:
    if L.gate is not None:
        return _lin(L.act(_lin(x, L.gate)) * _lin(x, L.w_in), L.w_out)
    return _lin(L.act(_lin(x, L.w_in)), L.w_out)


class Prepared:
    """A model's weights gathered once (per ``generate`` call) for :func:`embed`, :func:`run_blocks`
    and :func:`unembed_last`.

    Holds views of the parameters, so in-place weight edits show through; a parameter replaced by a
    new object after this was built is not seen (``generate`` builds one per call).
    """

    def __init__(self, model, rows: int = 0) -> None:
        """``rows``: how many rows (batch x new tokens) the call will decode, which decides whether a tied
        unembedding is read from an input-major copy (:mod:`lens.generation.decode_unembed`)."""
        self.model, self.cfg = model, model.cfg
        self.layers = [_Layer(block) for block in model.blocks]
        self.embed = model.embed
        self.pos_embed = model.pos_embed if model.cfg.positional == "learned" else None
        self.ln_final = model.ln_final
        self.rows, self._unembed = rows, None
        self._epoch: int | None = None
        self._hook_free = False

    @property
    def unembed(self) -> tuple[Tensor, Tensor | None]:
        """(``W_U`` in the layout to decode with, ``b_U``), gathered on first use (hooked calls never need it)."""
        if self._unembed is None:
            self._unembed = (decode_unembed.weight_for_decode(self.model, self.rows), self.model.unembed.bias)
        return self._unembed

    def applies(self) -> bool:
        """:func:`applies` for this model, rescanning the hook points only after some hook changed."""
        if not _flags_off(self.cfg):
            return False
        epoch = hook_epoch()
        if epoch != self._epoch:
            self._hook_free, self._epoch = applies(self.model), epoch
        return self._hook_free


def embed(
    prepared: Prepared, tokens: Int[Tensor, "batch pos"], ctx: AttentionContext
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream entering block 0, as ``HookedTransformer.embed_tokens`` computes it unhooked."""
    resid = prepared.embed.forward(tokens)
    if prepared.pos_embed is not None:
        resid = resid + prepared.pos_embed.forward(ctx.positions)
    return resid


def unembed_last(prepared: Prepared, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch vocab"]:
    """Logits at the last position: the final norm of that row only (norms are per row), then the unembedding."""
    x = resid[:, -1]
    if prepared.ln_final is not None:
        x = prepared.ln_final.normalized(x)
    return _lin(x, prepared.unembed)


def run_blocks(
    prepared: Prepared, resid: Float[Tensor, "batch pos d_model"], ctx: AttentionContext
) -> Float[Tensor, "batch pos d_model"]:
    """Every block over ``resid``, as ``TransformerBlock.forward`` computes it with no hooks attached."""
    shape, b = resid.shape, resid.shape[0]
    resid = resid.reshape(-1, shape[-1])  # [batch * pos, d_model]: 2-D GEMMs, no reshapes per projection
    for L in prepared.layers:
        # in-place adds into the fresh outputs: a + b == b + a exactly, so the sums equal the module path's
        attn_out = _attention(L, _norm(L.ln1, resid), ctx, b)
        if not L.has_mlp:
            resid = attn_out.add_(resid)
        elif L.parallel:
            resid = attn_out.add_(resid).add_(_mlp(L, _norm(L.ln2, resid)))
        else:
            resid = attn_out.add_(resid)
            resid = _mlp(L, _norm(L.ln2, resid)).add_(resid)
    return resid.view(shape)
