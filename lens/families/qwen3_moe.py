"""Qwen3-MoE: Qwen3's attention (per-head q/k norms) with a mixture-of-experts MLP in every layer.

The router keeps the top ``num_experts_per_tok`` of ``num_experts`` experts and renormalises their
probabilities only when ``norm_topk_prob`` (``moe_renormalize``; true in the released checkpoints). Each
expert is a SwiGLU MLP of width ``moe_intermediate_size``. Checkpoints with dense layers between the
sparse ones (``mlp_only_layers``, ``decoder_sparse_step`` > 1) are refused. Checkpoints:
Qwen/Qwen3-30B-A3B, Qwen/Qwen3-235B-A22B (and their -Base / -Instruct variants).

>>> cfg = ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "head_dim": 16,
...                       "intermediate_size": 128, "moe_intermediate_size": 32, "vocab_size": 100,
...                       "num_experts": 8, "num_experts_per_tok": 2, "norm_topk_prob": True})
>>> cfg["num_experts"], cfg["d_mlp"], cfg["moe_renormalize"]
(8, 32, True)
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter
from lens.families.mixtral import fused_experts, with_experts
from lens.families.qwen3 import ADAPTER as QWEN3


def _config(hf: dict) -> dict:
    if hf.get("mlp_only_layers"):
        raise ValueError(
            f"mlp_only_layers={hf['mlp_only_layers']!r}: Qwen3-MoE checkpoints with dense MLP layers are not supported"
        )
    if hf.get("decoder_sparse_step", 1) != 1:
        raise ValueError(
            f"decoder_sparse_step={hf['decoder_sparse_step']!r}: lens supports a mixture of experts in every layer "
            "(decoder_sparse_step=1) only"
        )
    fields = QWEN3.config(hf)
    fields.update(
        d_mlp=hf["moe_intermediate_size"],
        num_experts=hf.get("num_experts", hf.get("num_local_experts")),
        experts_per_token=hf["num_experts_per_tok"],
        moe_renormalize=bool(hf.get("norm_topk_prob", False)),
    )
    return fields


def _weights(cfg) -> dict:
    return with_experts(QWEN3.weights(cfg), cfg, "mlp", "gate_proj", "up_proj", "down_proj")


ADAPTER = Adapter(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM",),
    model_types=("qwen3_moe",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    unpack=fused_experts("mlp", "gate_proj", "up_proj", "down_proj"),
    handles=QWEN3.handles
    + (
        "decoder_sparse_step",
        "mlp_only_layers",
        "moe_intermediate_size",
        "norm_topk_prob",
        "num_experts",
        "num_local_experts",
        "num_experts_per_tok",
    ),
    defaults=QWEN3.defaults,
    tiny={
        # top-2 of 4 experts renormalised, experts narrower than intermediate_size, q/k norms, GQA
        "qwen3_moe": (
            "Qwen3MoeForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                head_dim=16,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=24,
                norm_topk_prob=True,
            ),
        ),
        # without renormalisation (norm_topk_prob=False, transformers' default)
        "qwen3_moe_unnormalised": (
            "Qwen3MoeForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                head_dim=8,
                num_experts=4,
                num_experts_per_tok=2,
                moe_intermediate_size=24,
            ),
        ),
    },
)
