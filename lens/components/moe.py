"""Mixture-of-experts feed-forward layer (Mixtral, Qwen3-MoE): a router and ``num_experts`` gated MLPs.

Every token's ``ln2`` output goes through the router (``W_gate`` ``[d_model, num_experts]``, no bias); the
softmax of the router logits (in float32, as Hugging Face) gives each expert's probability, the
``experts_per_token`` most probable experts are kept, their probabilities renormalised to sum to one when
``cfg.moe_renormalize`` (Mixtral always; Qwen3-MoE's ``norm_topk_prob``), and the layer's output is the
weighted sum of those experts' outputs. Each expert is an ordinary gated :class:`~lens.components.mlp.MLP`
module, so its weights and hooks read like a dense MLP's.

Hooks (TransformerLens's names and shapes; the token axis is ``batch * pos``, flattened row-major):
    ``hook_expert_weights`` ``[batch*pos, num_experts]``: the router's softmax over all experts, before top-k;
    ``hook_expert_indices`` ``[batch*pos, experts_per_token]``: the chosen experts, most probable first;
    ``experts.{e}.hook_gate`` / ``hook_pre`` / ``hook_post`` ``[n_e, d_mlp]``: expert ``e``'s gate branch
    (``x @ W_gate``, before the activation), its linear branch (``x @ W_in``) and ``act(gate) * pre``, for only
    the ``n_e`` (token, slot) pairs routed to it. Rows come slot-major, as in TransformerLens and Hugging Face:
    the tokens that chose ``e`` first, in token order, then those that chose it second, ...; ``n_e`` may be 0.
    (TransformerLens's experts name their hooks so; note that a dense gated MLP's ``hook_pre`` is its gate
    branch, and its linear branch ``hook_pre_linear``.)

Editing ``hook_expert_weights`` changes the routing (top-k runs on the edited probabilities); editing
``hook_expert_indices`` reroutes tokens, with the weights then gathered from the (edited) probabilities at
the new indices and renormalised as usual.

Compute loops over experts, never over tokens: each expert runs once on the rows routed to it (gathered
with ``index_select``, scattered back with ``index_add_``).

>>> moe = MoE(cfg)                                   # cfg.num_experts=4, cfg.experts_per_token=2
>>> moe(torch.randn(2, 3, cfg.d_model)).shape
torch.Size([2, 3, 32])
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lens.components.linear import input_major, linear
from lens.components.mlp import MLP
from lens.config import TransformerConfig
from lens.hooks import HookPoint


class Expert(MLP):
    """One expert: a gated MLP whose hooks carry TransformerLens's expert names (``hook_gate``, ``hook_pre``)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__(cfg)
        del self.hook_pre_linear
        self.hook_gate = HookPoint()

    def forward(self, x: Float[Tensor, "tokens d_model"]) -> Float[Tensor, "tokens d_model"]:
        gate = self.hook_gate(linear(x, self.gate_weight, self.gate_bias))
        pre = self.hook_pre(linear(x, self.in_weight, self.in_bias))
        return linear(self.hook_post(self.act(gate) * pre), self.out_weight, self.out_bias)


class MoE(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        kw = dict(dtype=cfg.dtype, device=cfg.device)
        self.router_weight = input_major(cfg.num_experts, cfg.d_model, **kw)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.num_experts))
        self.hook_expert_weights = HookPoint()
        self.hook_expert_indices = HookPoint()

    @property
    def W_gate(self) -> Float[Tensor, "d_model num_experts"]:
        """The router, TransformerLens's name for it (the experts' own gates are ``experts[e].W_gate``)."""
        return self.router_weight.T

    def route(self, x: Float[Tensor, "tokens d_model"]) -> tuple[Float[Tensor, "tokens k"], Int[Tensor, "tokens k"]]:
        """(weights of the chosen experts in float32, their indices) for flattened tokens ``x``."""
        cfg = self.cfg
        logits = torch.nn.functional.linear(x, self.router_weight)
        probs = self.hook_expert_weights(torch.softmax(logits.float(), dim=-1))
        top, indices = torch.topk(probs, cfg.experts_per_token, dim=-1)
        indices = self.hook_expert_indices(indices)
        if self.hook_expert_indices.has_hooks:  # rerouted tokens take the probabilities of their new experts
            _check_indices(indices, cfg.num_experts)
            top = probs.gather(-1, indices)
        if cfg.moe_renormalize:
            top = top / top.sum(dim=-1, keepdim=True)
        return top, indices

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, indices = self.route(flat)
        out = torch.zeros_like(flat)
        # (slot, token) pairs numbered slot-major, grouped by expert with one stable sort (not a scan per expert)
        chosen, slot_weights = indices.T.flatten(), weights.T.flatten()
        order = chosen.argsort(stable=True)
        counts = torch.bincount(chosen, minlength=self.cfg.num_experts).tolist()
        n_tokens, start = flat.shape[0], 0
        for e, expert in enumerate(self.experts):
            n = counts[e]
            if n == 0 and not _expert_hooked(expert):
                continue
            pairs = order[start : start + n]
            start += n
            tokens = pairs % n_tokens
            y = expert(flat.index_select(0, tokens))
            # weighted in float32, as Hugging Face's Mixtral, then added in the model dtype
            out.index_add_(0, tokens, (y.float() * slot_weights.index_select(0, pairs)[:, None]).to(out.dtype))
        return out.view(shape)


def _check_indices(indices: Tensor, num_experts: int) -> None:
    if indices.dtype != torch.int64:
        raise TypeError(f"hook_expert_indices must stay int64 expert indices, got {indices.dtype}")
    if indices.numel() and not (0 <= int(indices.min()) and int(indices.max()) < num_experts):
        raise ValueError(
            f"hook_expert_indices returned expert {int(indices.min())}..{int(indices.max())}; "
            f"valid experts are 0..{num_experts - 1}"
        )
    if (indices.sort(dim=-1).values.diff(dim=-1) == 0).any():
        raise ValueError("hook_expert_indices chose the same expert twice for one token")


def _expert_hooked(expert: MLP) -> bool:
    return any(isinstance(m, HookPoint) and m.has_hooks for m in expert.modules())
