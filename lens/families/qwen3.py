"""Qwen3: the Llama layout with a per-head RMSNorm on queries and keys (``use_qk_norm``), no q/k/v biases.

``head_dim`` is its own config key (Qwen3-0.6B: 16 heads of 128 over ``hidden_size`` 1024). Sliding windows
follow ``transformers`` as for Qwen2 (``use_sliding_window`` with ``layer_types`` / ``max_window_layers``).
Checkpoints: Qwen/Qwen3-0.6B, -1.7B, -4B, -8B, -14B, -32B (the dense models; the MoE ones are not here).

>>> ADAPTER.config({"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "head_dim": 32,
...                 "intermediate_size": 128, "vocab_size": 100})["use_qk_norm"]
True
"""

from __future__ import annotations

from lens.families.base import TINY_SHAPE, Adapter, qk_norm_weights
from lens.families.llama import llama_config, llama_weights
from lens.families.qwen2 import QWEN_KEYS, qwen_windows


def _config(hf: dict) -> dict:
    fields = llama_config(hf)
    fields.update(use_qk_norm=True, mlp_bias=False)
    fields.update(qwen_windows(hf, fields["n_layers"]))
    return fields


def _weights(cfg) -> dict:
    return {**llama_weights(cfg), **qk_norm_weights(cfg)}


ADAPTER = Adapter(
    name="qwen3",
    architectures=("Qwen3ForCausalLM",),
    model_types=("qwen3",),
    config=_config,
    weights=_weights,
    ignore=("rotary_emb.inv_freq",),
    handles=QWEN_KEYS,
    defaults={"use_mrope": False},
    tiny={
        # head_dim 16 != hidden_size / heads (8), grouped-query attention, untied
        "qwen3": ("Qwen3ForCausalLM", dict(TINY_SHAPE, num_key_value_heads=2, head_dim=16)),
        # tied embeddings, q/k/v and output biases, a sliding window on layer 1 only
        "qwen3_window": (
            "Qwen3ForCausalLM",
            dict(
                TINY_SHAPE,
                num_key_value_heads=2,
                head_dim=8,  # transformers' default is 128
                tie_word_embeddings=True,
                attention_bias=True,
                use_sliding_window=True,
                sliding_window=5,
                max_window_layers=1,
            ),
        ),
    },
)
