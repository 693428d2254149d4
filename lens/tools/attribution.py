"""Attribution patching: a first-order estimate of activation patching for every site at once.

Why: activation patching costs one (batched) forward per site; attribution patching (Nanda 2023)
approximates all of them from one corrupted forward and backward. Patching site ``s`` moves the
metric by about ``(clean_s - corrupted_s) . d metric / d act_s`` (gradient on the corrupted run),
so with the clean cache from one clean forward, every site's estimate is a product and a sum.
The estimate is good where the metric is close to linear in the activation (small patches,
attention outputs, later layers) and worst for large, nonlinear changes (e.g. the token embedding
through a saturated softmax); check the important sites with real activation patching.

Same index spaces, argument order and metric contract as :mod:`lens.patching` (a per-row metric is
averaged over the prompt batch before the backward pass). Values are the **estimated change** of the
metric; ``result.baseline`` is the corrupted metric, so ``baseline + values`` estimates the patched
metric that activation patching would return.

>>> _, clean_cache = model.run_with_cache(clean_tokens)
>>> attr = get_attr_patch_resid_pre(model, corrupted_tokens, clean_cache, logit_diff)   # [n_layers, pos]
>>> res = generic_attribution_patch(model, corrupted_tokens, clean_cache, logit_diff, "z", ("layer", "head"))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from lens.tools.patching import (
    SPECS,
    Metric,
    MetricRunner,
    PatchingResult,
    block_every,
    check_tokens,
    head_every,
    make_helper,
    make_plan,
)

__all__ = ["generic_attribution_patch"] + [
    f"get_attr_patch_{k}" for k in (*SPECS, "block_every", "attn_head_all_pos_every", "attn_head_by_pos_every")
]


def generic_attribution_patch(
    model: Any,
    corrupted_tokens: Int[Tensor, "batch pos"],
    clean_cache: Any,
    patching_metric: Metric,
    act_name: str | Sequence[str] = "resid_pre",
    index_axis_names: str | Sequence[str] = ("layer", "pos"),
    *,
    layers: Sequence[int] | None = None,
    positions: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    src_positions: Sequence[int] | None = None,
) -> PatchingResult:
    """Estimate the metric change of patching each site, from one corrupted forward + backward.

    Arguments as :func:`lens.patching.generic_activation_patch`. A site's score is
    ``sum((clean - corrupted) * grad)`` over the activation's batch and un-indexed dims, where
    ``grad`` is the gradient of the (batch-mean) metric on the corrupted run. The metric must be
    differentiable. Model parameters get no ``.grad``.

    >>> res = generic_attribution_patch(model, corrupted, clean_cache, metric, "resid_pre", ("layer", "pos"))
    >>> estimate = res.baseline + res.values      # ~ activation patching's result
    """
    tokens = check_tokens(model, corrupted_tokens)
    select = {"pos": positions, "head": heads, "neuron": neurons, "src_pos": src_positions}
    plan = make_plan(model, tokens, clean_cache, act_name, index_axis_names, layers, select, "attribution patching")
    runner = MetricRunner(patching_metric, tokens.shape[0])
    captured: dict[str, Tensor] = {}

    def capture(act: Tensor, hook: Any) -> Tensor:
        if not act.requires_grad:  # frozen parameters: make the activation a leaf we can differentiate
            act = act.detach().requires_grad_(True)
        captured[hook.name] = act
        return act

    with torch.enable_grad(), model.hooks([(name, capture) for name in plan.names]):
        logits = model(tokens)
        value = runner.probe(logits)
        if not value.requires_grad:
            raise ValueError("patching_metric is not differentiable with respect to the logits (no grad_fn)")
        acts = [captured[name] for name in plan.names]
        grads = torch.autograd.grad(value, acts, allow_unused=True)

    keep = plan.axes
    order = sorted(keep)
    perm = [order.index(ax) for ax in keep]
    scores = []
    for act, grad, clean in zip(acts, grads, plan.clean):
        act = act.detach()
        grad = torch.zeros_like(act) if grad is None else grad
        prod = (clean.to(act.dtype) - act) * grad
        reduced = prod.sum(dim=[d for d in range(prod.ndim) if d not in keep])
        reduced = reduced.permute(perm) if perm else reduced
        for j, vals in enumerate(plan.values):
            reduced = reduced.index_select(j, vals)
        scores.append(reduced)
    result = plan.result
    result.values = torch.stack(scores).float().cpu().reshape(result.values.shape)
    result.baseline = float(value.detach())
    return result


_HELPERS = {k: make_helper(generic_attribution_patch, "get_attr_patch_", k) for k in SPECS}
get_attr_patch_resid_pre = _HELPERS["resid_pre"]
get_attr_patch_resid_mid = _HELPERS["resid_mid"]
get_attr_patch_attn_out = _HELPERS["attn_out"]
get_attr_patch_mlp_out = _HELPERS["mlp_out"]
get_attr_patch_attn_head_out_all_pos = _HELPERS["attn_head_out_all_pos"]
get_attr_patch_attn_head_q_all_pos = _HELPERS["attn_head_q_all_pos"]
get_attr_patch_attn_head_k_all_pos = _HELPERS["attn_head_k_all_pos"]
get_attr_patch_attn_head_v_all_pos = _HELPERS["attn_head_v_all_pos"]
get_attr_patch_attn_head_pattern_all_pos = _HELPERS["attn_head_pattern_all_pos"]
get_attr_patch_attn_head_out_by_pos = _HELPERS["attn_head_out_by_pos"]
get_attr_patch_attn_head_q_by_pos = _HELPERS["attn_head_q_by_pos"]
get_attr_patch_attn_head_k_by_pos = _HELPERS["attn_head_k_by_pos"]
get_attr_patch_attn_head_v_by_pos = _HELPERS["attn_head_v_by_pos"]
get_attr_patch_attn_head_pattern_by_pos = _HELPERS["attn_head_pattern_by_pos"]
get_attr_patch_attn_head_pattern_dest_src_pos = _HELPERS["attn_head_pattern_dest_src_pos"]
get_attr_patch_mlp_post_all_pos = _HELPERS["mlp_post_all_pos"]
get_attr_patch_mlp_post_by_pos = _HELPERS["mlp_post_by_pos"]


def get_attr_patch_block_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[3, n_layers, pos]`` attribution estimates for resid_pre, attn_out, mlp_out (attn_only: mlp NaN).

    >>> get_attr_patch_block_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return block_every(generic_attribution_patch, model, corrupted_tokens, clean_cache, patching_metric, **kwargs)


def get_attr_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[5, n_layers, n_heads]`` estimates for out (z), q, k, v, pattern (k/v NaN-padded under GQA).

    >>> get_attr_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return head_every(_HELPERS, "all_pos", model, corrupted_tokens, clean_cache, patching_metric, **kwargs)


def get_attr_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, patching_metric, **kwargs) -> Tensor:
    """``[5, n_layers, pos, n_heads]`` estimates for out (z), q, k, v, pattern (pattern by destination).

    >>> get_attr_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric).shape
    """
    return head_every(_HELPERS, "by_pos", model, corrupted_tokens, clean_cache, patching_metric, **kwargs)
