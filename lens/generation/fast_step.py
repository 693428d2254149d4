"""The hook-free block loop that ``generate`` runs when nothing is hooked.

Why: decoding one token of a GPT-2-small-sized model on CPU is ~18 ms of weight streaming, and the
module path (``nn.Module`` calls, hook points, per-layer Python) added ~3 ms per step on top
(``benchmarks/decode_overhead.py``). When no hook point has a hook and none of the TransformerLens
input-splitting flags is set, the hook points are identities, so ``generate`` runs the same arithmetic
here as plain functions over the components' parameters: the same kernels in the same order, so
the logits are identical to the module path (tests/generation/test_fast_step.py checks every family).
Any hook (a ``run_with_hooks`` context, ``return_cache``, a permanent hook) sends ``generate`` back
through the modules, so hooks always fire.

>>> if fast_step.applies(model):
...     resid = fast_step.run_blocks(model, resid, ctx)
"""

from __future__ import annotations

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from lens.components.attention import Attention
from lens.components.linear import linear
from lens.components.masking import AttentionContext
from lens.components.mlp import MLP
from lens.components.norm import LayerNorm
from lens.components.rotary import apply_rotary


def applies(model) -> bool:
    """True when no hook point is hooked and no flag adds hook-only inputs (the blocks are pure math)."""
    cfg = model.cfg
    if cfg.use_attn_result or cfg.use_split_qkv_input or cfg.use_attn_in or cfg.use_hook_mlp_in:
        return False
    return not any(hp.has_hooks for hp in model.hook_dict.values())


def _norm(norm, x: Tensor) -> Tensor:
    if norm is None:
        return x
    if isinstance(norm, LayerNorm):
        return F.layer_norm(x, (norm.d,), norm.w, norm.b, norm.eps)
    x32 = x.float()  # RMSNorm, as in RMSNorm.forward
    return norm.w * (x32 / (x32.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()).to(x.dtype)


def _mlp(mlp: MLP, x: Tensor) -> Tensor:
    if mlp.cfg.gated_mlp:
        post = mlp.act(linear(x, mlp.gate_weight, mlp.gate_bias)) * linear(x, mlp.in_weight, mlp.in_bias)
    else:
        post = mlp.act(linear(x, mlp.in_weight, mlp.in_bias))
    return linear(post, mlp.out_weight, mlp.out_bias)


def _attention(attn: Attention, x: Tensor, ctx: AttentionContext) -> Tensor:
    cfg = attn.cfg
    h, kv, dh = cfg.n_heads, cfg.n_key_value_heads, cfg.d_head
    q, k, v = linear(x, attn.qkv_weight, attn.qkv_bias).split([h * dh, kv * dh, kv * dh], dim=-1)
    q, k, v = q.unflatten(-1, (h, dh)), k.unflatten(-1, (kv, dh)), v.unflatten(-1, (kv, dh))
    if cfg.positional == "rotary":
        q, k = apply_rotary(q, ctx.cos, ctx.sin), apply_rotary(k, ctx.cos, ctx.sin)
    key_pos = None
    if ctx.kv_cache is not None:
        k, v = ctx.kv_cache.update(attn.layer_idx, k, v)
        if ctx.key_pos is not None:
            key_pos = ctx.key_pos.get(attn.window)
    kh = k.transpose(1, 2)
    z = attn._fused_attention(q.transpose(1, 2), kh, v.transpose(1, 2), ctx, kh.shape[-2], key_pos)
    z = z.transpose(1, 2)
    return linear(z.reshape(*z.shape[:2], h * dh), attn.o_weight, attn.o_bias)


def run_blocks(
    model, resid: Float[Tensor, "batch pos d_model"], ctx: AttentionContext
) -> Float[Tensor, "batch pos d_model"]:
    """Every block over ``resid``, as ``TransformerBlock.forward`` computes it with no hooks attached."""
    for block in model.blocks:
        attn_out = _attention(block.attn, _norm(block.ln1, resid), ctx)
        if not block.has_mlp:
            resid = resid + attn_out
        elif block.cfg.parallel_attn_mlp:
            resid = resid + attn_out + _mlp(block.mlp, _norm(block.ln2, resid))
        else:
            resid = resid + attn_out
            resid = resid + _mlp(block.mlp, _norm(block.ln2, resid))
    return resid
